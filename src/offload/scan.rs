//! The scan hook: every uploaded file is streamed through a scanner (a command, or a ClamAV
//! daemon) while it is stored; the reference is handed out only when the scan passed.
//!
//! [`Scanner::start`] spawns one task per file that feeds the scanner the bytes as they come
//! (never the whole file at once) and ends in a verdict. Two promises bound it in time: the
//! sender is never held up for longer than the timeout (a scanner that stops reading is given
//! up, and the task keeps draining the channel so that the upload goes on at full speed), and
//! the verdict comes within the timeout after the last byte was handed in. A scan that did not
//! see the whole file never passes. A command runs without a shell and is killed when its scan
//! is cancelled or given up.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks queued between the upload and the scanner.
const QUEUED_CHUNKS: usize = 4;

/// Bytes of a scanner's output (each of stdout and stderr) kept for the message.
const OUTPUT_KEPT: usize = 4096;

/// Characters of a scanner's line kept in a message.
const LINE_KEPT: usize = 200;

/// Largest chunk sent to clamd by `INSTREAM` (its own default `StreamMaxLength` is far larger).
const CLAMD_CHUNK: usize = 64 * 1024;

/// Longest a scanner's output is waited for once it exited (a child it left behind may hold
/// the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The message of a scan that did not see the whole file.
const STOPPED_EARLY: &str = "the scanner stopped before the end of the file";

/// Where files are scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanHook {
    /// A program and its arguments; the file comes on its standard input. Exit status 0:
    /// clean; 1: infected; anything else: the scan failed.
    Command(Vec<String>),
    /// A ClamAV daemon (`clamd`): a Unix socket path, or `host:port`; the file goes by
    /// `INSTREAM`.
    Clamd(String),
}

/// Why a scan did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanRejection {
    #[error("the scanner found {0}")]
    Infected(String),
    #[error("the scan failed: {0}")]
    Failed(String),
    #[error("the scan took longer than {0:?}")]
    TimedOut(Duration),
}

/// Runs scans with one hook.
#[derive(Debug, Clone)]
pub struct Scanner {
    pub hook: ScanHook,
    pub timeout: Duration,
}

/// A scan under way. Dropping it (or [`ScanHandle::cancel`]) stops the scan and kills a
/// scanning command.
pub struct ScanHandle {
    task: Option<JoinHandle<Result<(), ScanRejection>>>,
    timeout: Duration,
}

impl Scanner {
    pub fn new(hook: ScanHook, timeout: Duration) -> Scanner {
        Scanner { hook, timeout }
    }

    /// Starts a scan. The file's bytes are sent in order on the sender; dropping it ends the
    /// file. The scanner never holds the sender up for longer than the timeout.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn start(&self) -> (mpsc::Sender<Bytes>, ScanHandle) {
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let timeout = self.timeout;
        let task = match &self.hook {
            ScanHook::Command(argv) => tokio::spawn(run_command(argv.clone(), rx, timeout)),
            ScanHook::Clamd(addr) => tokio::spawn(run_clamd(addr.clone(), rx, timeout)),
        };
        (
            tx,
            ScanHandle {
                task: Some(task),
                timeout,
            },
        )
    }
}

impl ScanHandle {
    /// The verdict, after the sender was dropped.
    ///
    /// # Errors
    /// The file is infected, or the scan failed or timed out.
    ///
    /// # Cancel safety
    /// Dropping the future stops the scan.
    pub async fn verdict(mut self) -> Result<(), ScanRejection> {
        let Some(task) = self.task.take() else {
            return Err(ScanRejection::Failed("the scan was cancelled".into()));
        };
        // The task keeps its own deadlines; this one holds even if it is stuck where none
        // reaches (it is aborted then, which kills a command).
        let guard = AbortOnDrop(task.abort_handle());
        let verdict = match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(join)) => Err(ScanRejection::Failed(format!(
                "the scan stopped unexpectedly: {join}"
            ))),
            Err(_) => Err(ScanRejection::TimedOut(self.timeout)),
        };
        drop(guard);
        verdict
    }

    /// Stops the scan (the upload failed).
    pub fn cancel(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Receives and drops the rest of the file, so that the sender is never held up.
async fn drain(rx: &mut mpsc::Receiver<Bytes>) {
    while rx.recv().await.is_some() {}
}

/// Scans with a program: the file on its standard input, the verdict in its exit status.
async fn run_command(
    argv: Vec<String>,
    mut rx: mpsc::Receiver<Bytes>,
    timeout: Duration,
) -> Result<(), ScanRejection> {
    let Some((program, args)) = argv.split_first() else {
        drain(&mut rx).await;
        return Err(ScanRejection::Failed("no scan command is set".into()));
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            drain(&mut rx).await;
            return Err(ScanRejection::Failed(format!(
                "the scanner `{program}` could not be started: {err}"
            )));
        }
    };
    let stdout = child.stdout.take().map(|out| tokio::spawn(capture(out)));
    let stderr = child.stderr.take().map(|err| tokio::spawn(capture(err)));
    let mut stdin = child.stdin.take();
    let mut stopped_early = false;
    let mut stalled = false;
    while let Some(chunk) = rx.recv().await {
        let Some(pipe) = stdin.as_mut() else {
            continue;
        };
        match tokio::time::timeout(timeout, pipe.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // A closed pipe: the program exited or closed its input.
                stopped_early = true;
                stdin = None;
            }
            Err(_) => {
                stalled = true;
                stdin = None;
                let _ = child.start_kill();
            }
        }
    }
    // The end of the file.
    drop(stdin);
    let waited = if stalled {
        None
    } else {
        tokio::time::timeout(timeout, child.wait()).await.ok()
    };
    let status = match waited {
        Some(Ok(status)) => status,
        Some(Err(err)) => {
            return Err(ScanRejection::Failed(format!(
                "the scanner `{program}` could not be waited for: {err}"
            )));
        }
        None => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ScanRejection::TimedOut(timeout));
        }
    };
    let output = first_line(&[collect(stdout).await, collect(stderr).await]);
    match status.code() {
        Some(0) if stopped_early => Err(ScanRejection::Failed(STOPPED_EARLY.into())),
        Some(0) => Ok(()),
        Some(1) => Err(ScanRejection::Infected(
            output.unwrap_or_else(|| "a threat".into()),
        )),
        Some(code) => Err(ScanRejection::Failed(match output {
            Some(line) => format!("the scanner `{program}` exited with status {code}: {line}"),
            None => format!("the scanner `{program}` exited with status {code}"),
        })),
        None => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status
                .signal()
                .map_or_else(|| "a signal".to_string(), |s| format!("signal {s}"));
            Err(ScanRejection::Failed(format!(
                "the scanner `{program}` was ended by {signal}"
            )))
        }
    }
}

/// Reads a pipe to its end, keeping its first [`OUTPUT_KEPT`] bytes.
async fn capture(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// What a capture kept, waiting at most [`OUTPUT_GRACE`].
async fn collect(capture: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(task) = capture else {
        return Vec::new();
    };
    let guard = AbortOnDrop(task.abort_handle());
    let kept = tokio::time::timeout(OUTPUT_GRACE, task).await;
    drop(guard);
    match kept {
        Ok(Ok(kept)) => kept,
        _ => Vec::new(),
    }
}

/// The first line with text of the first output that has one, without control characters,
/// cut to [`LINE_KEPT`] characters.
fn first_line(outputs: &[Vec<u8>]) -> Option<String> {
    outputs.iter().find_map(|output| {
        String::from_utf8_lossy(output)
            .lines()
            .map(|line| {
                line.chars()
                    .filter(|c| !c.is_control())
                    .take(LINE_KEPT)
                    .collect::<String>()
                    .trim()
                    .to_string()
            })
            .find(|line| !line.is_empty())
    })
}

/// Scans with a ClamAV daemon.
async fn run_clamd(
    addr: String,
    mut rx: mpsc::Receiver<Bytes>,
    timeout: Duration,
) -> Result<(), ScanRejection> {
    let unreachable = |err: std::io::Error| {
        ScanRejection::Failed(format!("the scanner at {addr} could not be reached: {err}"))
    };
    let connect_timeout = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        )
    };
    if addr.starts_with('/') {
        let connected = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&addr))
            .await
            .unwrap_or_else(|_| Err(connect_timeout()));
        match connected {
            Ok(stream) => instream(stream, rx, timeout).await,
            Err(err) => {
                drain(&mut rx).await;
                Err(unreachable(err))
            }
        }
    } else {
        let connected = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
            .await
            .unwrap_or_else(|_| Err(connect_timeout()));
        match connected {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                instream(stream, rx, timeout).await
            }
            Err(err) => {
                drain(&mut rx).await;
                Err(unreachable(err))
            }
        }
    }
}

/// Sends the file by clamd's `INSTREAM` (`zINSTREAM\0`, chunks of a 4-byte big-endian length
/// and the bytes, a zero length at the end) and reads its answer.
async fn instream<S>(
    mut stream: S,
    mut rx: mpsc::Receiver<Bytes>,
    timeout: Duration,
) -> Result<(), ScanRejection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // `Some(false)`: the daemon stopped reading (closed); `Some(true)`: it stalled.
    let mut given_up: Option<bool> = None;
    match tokio::time::timeout(timeout, stream.write_all(b"zINSTREAM\0")).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => given_up = Some(false),
        Err(_) => given_up = Some(true),
    }
    while let Some(chunk) = rx.recv().await {
        if given_up.is_some() {
            continue;
        }
        let sent = tokio::time::timeout(timeout, async {
            for piece in chunk.chunks(CLAMD_CHUNK) {
                let len = u32::try_from(piece.len()).unwrap_or(u32::MAX);
                stream.write_all(&len.to_be_bytes()).await?;
                stream.write_all(piece).await?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => given_up = Some(false),
            Err(_) => given_up = Some(true),
        }
    }
    if given_up == Some(true) {
        return Err(ScanRejection::TimedOut(timeout));
    }
    let answer = tokio::time::timeout(timeout, async {
        if given_up.is_none() {
            stream.write_all(&0u32.to_be_bytes()).await?;
            stream.flush().await?;
        }
        read_reply(&mut stream).await
    })
    .await;
    let reply = match answer {
        Err(_) => return Err(ScanRejection::TimedOut(timeout)),
        Ok(Err(_)) if given_up.is_some() => String::new(),
        Ok(Err(err)) => {
            return Err(ScanRejection::Failed(format!(
                "the scanner's answer could not be read: {err}"
            )));
        }
        Ok(Ok(reply)) => reply,
    };
    match parse_clamd_reply(&reply) {
        Ok(()) if given_up.is_some() => Err(ScanRejection::Failed(STOPPED_EARLY.into())),
        Err(ScanRejection::Failed(_)) if given_up.is_some() && reply.is_empty() => {
            Err(ScanRejection::Failed(STOPPED_EARLY.into()))
        }
        verdict => verdict,
    }
}

/// Reads clamd's answer: up to a NUL (the `z` form), the end of the stream, or
/// [`OUTPUT_KEPT`] bytes.
async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(end) = buf[..n].iter().position(|b| *b == 0) {
            reply.extend_from_slice(&buf[..end]);
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() >= OUTPUT_KEPT {
            reply.truncate(OUTPUT_KEPT);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_string())
}

/// clamd's answer to a stream: `stream: OK`, `stream: SIGNATURE FOUND`, or an error such as
/// `INSTREAM size limit exceeded. ERROR`.
fn parse_clamd_reply(reply: &str) -> Result<(), ScanRejection> {
    let body = reply.strip_prefix("stream:").map(str::trim);
    if body == Some("OK") {
        return Ok(());
    }
    if let Some(signature) = body.and_then(|b| b.strip_suffix("FOUND")) {
        let signature: String = signature
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(LINE_KEPT)
            .collect();
        return Err(ScanRejection::Infected(if signature.is_empty() {
            "a threat".into()
        } else {
            signature
        }));
    }
    let shown: String = reply
        .chars()
        .filter(|c| !c.is_control())
        .take(LINE_KEPT)
        .collect();
    Err(ScanRejection::Failed(if shown.is_empty() {
        "the scanner closed the connection without an answer".into()
    } else {
        format!("the scanner answered {shown:?}")
    }))
}

#[cfg(test)]
mod tests;
