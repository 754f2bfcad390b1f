//! The scan hook against real programs (`sh -c` scripts) and a small in-test clamd that
//! speaks the `INSTREAM` protocol.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::*;

const MIB: usize = 1024 * 1024;

fn sh(script: &str) -> ScanHook {
    ScanHook::Command(vec!["sh".into(), "-c".into(), script.into()])
}

/// `len` bytes of text, with `marker` at `at` when given.
fn text(len: usize, marker: Option<(usize, &str)>) -> Vec<u8> {
    let mut data: Vec<u8> = b"lorem ipsum dolor sit amet\n"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect();
    if let Some((at, marker)) = marker {
        data[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    data
}

/// Scans `data`, sent in chunks of 64 KiB; returns the verdict, the longest a send was held
/// up, and how long the verdict took after the last byte was handed in.
async fn scan(
    hook: ScanHook,
    timeout: Duration,
    data: &[u8],
) -> (Result<(), ScanRejection>, Duration, Duration) {
    let (tx, handle) = Scanner::new(hook, timeout).start();
    let mut longest = Duration::ZERO;
    for chunk in data.chunks(64 * 1024) {
        let started = Instant::now();
        tx.send(Bytes::copy_from_slice(chunk))
            .await
            .expect("the scan keeps taking bytes");
        longest = longest.max(started.elapsed());
    }
    drop(tx);
    let ended = Instant::now();
    let verdict = handle.verdict().await;
    (verdict, longest, ended.elapsed())
}

#[tokio::test]
async fn a_command_that_reads_everything_and_exits_0_passes() {
    let (verdict, _, _) = scan(
        sh("cat >/dev/null; exit 0"),
        Duration::from_secs(10),
        &text(3 * MIB, None),
    )
    .await;
    assert_eq!(verdict, Ok(()));
}

#[tokio::test]
async fn an_empty_file_is_scanned_too() {
    let (verdict, _, _) = scan(sh("cat >/dev/null; exit 0"), Duration::from_secs(10), b"").await;
    assert_eq!(verdict, Ok(()));
    let (verdict, _, _) = scan(sh("cat >/dev/null; exit 1"), Duration::from_secs(10), b"").await;
    assert_eq!(verdict, Err(ScanRejection::Infected("a threat".into())));
}

/// Exits 1 with a line naming the threat when the input holds the marker; reads to the end.
const MARKER_SCANNER: &str = "if grep -q EICAR-MARKER; then cat >/dev/null; \
     echo 'stdin: Eicar-Test-Signature FOUND'; echo 'second line'; exit 1; fi; exit 0";

#[tokio::test]
async fn exit_1_is_infected_with_the_first_line_of_the_output() {
    let data = text(2 * MIB, Some((MIB + 17, "EICAR-MARKER")));
    let (verdict, _, _) = scan(sh(MARKER_SCANNER), Duration::from_secs(10), &data).await;
    assert_eq!(
        verdict,
        Err(ScanRejection::Infected(
            "stdin: Eicar-Test-Signature FOUND".into()
        ))
    );
    let (verdict, _, _) = scan(
        sh(MARKER_SCANNER),
        Duration::from_secs(10),
        &text(2 * MIB, None),
    )
    .await;
    assert_eq!(verdict, Ok(()));
}

#[tokio::test]
async fn exit_1_before_the_end_is_still_infected() {
    // `grep -q` stops reading at the marker, near the start of 4 MiB.
    let script = "if grep -q EICAR-MARKER; then echo found it >&2; exit 1; fi; exit 0";
    let data = text(4 * MIB, Some((100, "EICAR-MARKER")));
    let (verdict, _, _) = scan(sh(script), Duration::from_secs(10), &data).await;
    assert_eq!(verdict, Err(ScanRejection::Infected("found it".into())));
}

#[tokio::test]
async fn another_exit_status_fails_the_scan_with_its_message() {
    let (verdict, _, _) = scan(
        sh("cat >/dev/null; echo 'cannot open the signature database' >&2; exit 2"),
        Duration::from_secs(10),
        &text(100_000, None),
    )
    .await;
    assert_eq!(
        verdict,
        Err(ScanRejection::Failed(
            "the scanner `sh` exited with status 2: cannot open the signature database".into()
        ))
    );
}

#[tokio::test]
async fn a_signal_fails_the_scan() {
    let (verdict, _, _) = scan(
        sh("cat >/dev/null; kill -9 $$"),
        Duration::from_secs(10),
        &text(1000, None),
    )
    .await;
    assert_eq!(
        verdict,
        Err(ScanRejection::Failed(
            "the scanner `sh` was ended by signal 9".into()
        ))
    );
}

#[tokio::test]
async fn a_command_that_exits_0_without_reading_a_large_file_fails() {
    let (verdict, _, _) = scan(sh("exit 0"), Duration::from_secs(10), &text(4 * MIB, None)).await;
    assert_eq!(verdict, Err(ScanRejection::Failed(STOPPED_EARLY.into())));
}

#[tokio::test]
async fn a_command_that_cannot_start_fails_the_scan_without_holding_the_sender() {
    let hook = ScanHook::Command(vec!["/nonexistent/scanner".into(), "-".into()]);
    let (verdict, _, _) = scan(hook, Duration::from_secs(10), &text(MIB, None)).await;
    match verdict {
        Err(ScanRejection::Failed(message)) => assert!(
            message.starts_with("the scanner `/nonexistent/scanner` could not be started: "),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_scanner_that_stops_reading_times_out_and_never_holds_the_sender_longer() {
    let timeout = Duration::from_millis(400);
    let (verdict, longest, after) = scan(sh("exec sleep 30"), timeout, &text(4 * MIB, None)).await;
    assert_eq!(verdict, Err(ScanRejection::TimedOut(timeout)));
    assert!(
        longest < timeout + Duration::from_millis(300),
        "{longest:?}"
    );
    assert!(after < timeout + Duration::from_millis(300), "{after:?}");
}

#[tokio::test]
async fn a_verdict_that_does_not_come_after_the_end_times_out() {
    let timeout = Duration::from_millis(400);
    let (verdict, _, after) = scan(
        sh("cat >/dev/null; exec sleep 30"),
        timeout,
        &text(1000, None),
    )
    .await;
    assert_eq!(verdict, Err(ScanRejection::TimedOut(timeout)));
    assert!(after < timeout + Duration::from_millis(300), "{after:?}");
}

/// Whether process `pid` is gone (or a zombie about to be reaped).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_cancelled_scan_kills_its_command() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
    let (tx, handle) = Scanner::new(sh(&script), Duration::from_secs(10)).start();
    tx.send(Bytes::from_static(b"some bytes"))
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            && !pid.trim().is_empty()
        {
            break pid.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the command did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!gone(&pid));
    handle.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(&pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The sender learns that nobody listens any more.
    assert!(tx.send(Bytes::from_static(b"more")).await.is_err());
}

/// How the in-test clamd behaves.
#[derive(Clone, Copy)]
enum Clamd {
    /// Reads the whole stream; answers FOUND if it holds `EICAR-MARKER`, OK otherwise.
    Scans,
    /// Answers `INSTREAM size limit exceeded. ERROR` and closes after this many bytes.
    Limit(usize),
    /// Accepts the connection and never reads.
    Stuck,
}

/// Serves one connection as clamd would; sends what it received (its `INSTREAM` bytes) on
/// the returned channel.
async fn clamd(behaviour: Clamd) -> (String, oneshot::Receiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address").to_string();
    let (done, received) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        if let Clamd::Stuck = behaviour {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        let mut command = [0u8; 10];
        socket.read_exact(&mut command).await.expect("the command");
        assert_eq!(&command, b"zINSTREAM\0");
        let mut data = Vec::new();
        loop {
            let len = socket.read_u32().await.expect("a chunk length") as usize;
            if len == 0 {
                break;
            }
            let mut chunk = vec![0u8; len];
            socket.read_exact(&mut chunk).await.expect("a chunk");
            data.extend_from_slice(&chunk);
            if let Clamd::Limit(max) = behaviour
                && data.len() > max
            {
                let _ = socket
                    .write_all(b"INSTREAM size limit exceeded. ERROR\0")
                    .await;
                let _ = done.send(data);
                return;
            }
        }
        let found = data.windows(12).any(|w| w == b"EICAR-MARKER");
        let reply: &[u8] = if found {
            b"stream: Eicar-Test-Signature FOUND\0"
        } else {
            b"stream: OK\0"
        };
        socket.write_all(reply).await.expect("the answer");
        let _ = done.send(data);
    });
    (addr, received)
}

#[tokio::test]
async fn clamd_gets_every_byte_by_instream_and_its_ok_passes() {
    let (addr, received) = clamd(Clamd::Scans).await;
    let data = text(MIB + 12_345, None);
    let (verdict, _, _) = scan(ScanHook::Clamd(addr), Duration::from_secs(10), &data).await;
    assert_eq!(verdict, Ok(()));
    assert!(received.await.expect("the bytes") == data);
}

#[tokio::test]
async fn clamd_found_is_infected_with_the_signature() {
    let (addr, _) = clamd(Clamd::Scans).await;
    let data = text(300_000, Some((200_000, "EICAR-MARKER")));
    let (verdict, _, _) = scan(ScanHook::Clamd(addr), Duration::from_secs(10), &data).await;
    assert_eq!(
        verdict,
        Err(ScanRejection::Infected("Eicar-Test-Signature".into()))
    );
}

#[tokio::test]
async fn a_clamd_error_fails_the_scan() {
    let (addr, _) = clamd(Clamd::Limit(100_000)).await;
    let (verdict, _, _) = scan(
        ScanHook::Clamd(addr),
        Duration::from_secs(10),
        &text(300_000, None),
    )
    .await;
    match verdict {
        Err(ScanRejection::Failed(message)) => assert!(
            message == "the scanner answered \"INSTREAM size limit exceeded. ERROR\""
                || message == STOPPED_EARLY,
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stuck_clamd_times_out_without_holding_the_sender() {
    let (addr, _) = clamd(Clamd::Stuck).await;
    let timeout = Duration::from_millis(400);
    let (verdict, longest, after) =
        scan(ScanHook::Clamd(addr), timeout, &text(16 * MIB, None)).await;
    assert_eq!(verdict, Err(ScanRejection::TimedOut(timeout)));
    assert!(
        longest < timeout + Duration::from_millis(300),
        "{longest:?}"
    );
    assert!(after < timeout + Duration::from_millis(300), "{after:?}");
}

#[tokio::test]
async fn an_unreachable_clamd_fails_the_scan() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("an address").to_string();
    drop(listener);
    let (verdict, _, _) = scan(
        ScanHook::Clamd(addr.clone()),
        Duration::from_secs(5),
        &text(1000, None),
    )
    .await;
    match verdict {
        Err(ScanRejection::Failed(message)) => assert!(
            message.starts_with(&format!("the scanner at {addr} could not be reached: ")),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn clamd_on_a_unix_socket() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("clamd.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut command = [0u8; 10];
        socket.read_exact(&mut command).await.expect("the command");
        loop {
            let len = socket.read_u32().await.expect("a length") as usize;
            if len == 0 {
                break;
            }
            let mut chunk = vec![0u8; len];
            socket.read_exact(&mut chunk).await.expect("a chunk");
        }
        socket.write_all(b"stream: OK\0").await.expect("answer");
    });
    let (verdict, _, _) = scan(
        ScanHook::Clamd(path.display().to_string()),
        Duration::from_secs(5),
        &text(200_000, None),
    )
    .await;
    assert_eq!(verdict, Ok(()));
}

#[test]
fn clamd_replies_are_read() {
    assert_eq!(parse_clamd_reply("stream: OK"), Ok(()));
    assert_eq!(
        parse_clamd_reply("stream: Win.Test.EICAR_HDB-1 FOUND"),
        Err(ScanRejection::Infected("Win.Test.EICAR_HDB-1".into()))
    );
    assert_eq!(
        parse_clamd_reply("INSTREAM size limit exceeded. ERROR"),
        Err(ScanRejection::Failed(
            "the scanner answered \"INSTREAM size limit exceeded. ERROR\"".into()
        ))
    );
    assert_eq!(
        parse_clamd_reply(""),
        Err(ScanRejection::Failed(
            "the scanner closed the connection without an answer".into()
        ))
    );
}
