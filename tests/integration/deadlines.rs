//! Deadlines and limits through the engine: an upstream that drips its answer cannot hold a
//! worker past the attempt's deadline, and an answer over 10 MiB fails with
//! `response_too_large` without the engine reading (or holding) the rest.
//!
//! The upstreams are raw TCP servers on loopback, because an HTTP framework will not drip or
//! pour on demand. Each counts the bytes its socket accepted and notes when the engine hung
//! up, so the tests see from the server's side that the engine stopped reading. Real time on
//! purpose: the point is real sockets and a real deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::support::engine::{POLL, TestServer, pointed};
use crate::support::upstream::Upstream;

/// The engine's response limit.
const MAX_BODY: u64 = 10 * 1024 * 1024;

/// What the raw server sends after the status line and headers.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// `bytes` single bytes, one every `every`.
    Drip { bytes: usize, every: Duration },
    /// `total` bytes in pieces of `piece`, as chunks of the chunked coding when `chunked`.
    Pour {
        total: u64,
        piece: usize,
        chunked: bool,
    },
}

/// A raw HTTP/1.1 server that answers every request with `head` and then its [`Body`].
struct RawServer {
    addr: SocketAddr,
    /// Body bytes (with the chunked coding's framing) the sockets accepted.
    written: Arc<AtomicU64>,
    /// Whether a connection's answer ended because the engine hung up.
    hung_up: Arc<AtomicBool>,
    /// Whether a connection's whole body was written.
    completed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl RawServer {
    async fn start(head: &'static str, body: Body) -> RawServer {
        let socket = TcpSocket::new_v4().expect("a socket");
        // A small send buffer (inherited by accepted sockets), so that what the server counts
        // as written is close to what the engine was sent.
        socket
            .set_send_buffer_size(64 * 1024)
            .expect("set the send buffer");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind loopback");
        let listener = socket.listen(16).expect("listen");
        let addr = listener.local_addr().expect("local address");
        let written = Arc::new(AtomicU64::new(0));
        let hung_up = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicBool::new(false));
        let (w, h, c) = (written.clone(), hung_up.clone(), completed.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (w, h, c) = (w.clone(), h.clone(), c.clone());
                tokio::spawn(async move {
                    match answer(socket, head, body, &w).await {
                        Ok(()) => c.store(true, Ordering::SeqCst),
                        Err(_) => h.store(true, Ordering::SeqCst),
                    }
                });
            }
        });
        RawServer {
            addr,
            written,
            hung_up,
            completed,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until a connection's answer ended because the engine hung up; panics after
    /// `within`, or when the server wrote a whole body instead.
    async fn wait_for_hang_up(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.hung_up.load(Ordering::SeqCst) {
            assert!(
                !self.completed.load(Ordering::SeqCst),
                "the server wrote its whole body ({} bytes): the engine kept reading",
                self.written()
            );
            assert!(
                Instant::now() < deadline,
                "the engine did not hang up within {within:?} ({} bytes written)",
                self.written()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head, then writes `head` and the body, counting what was written.
async fn answer(
    mut socket: TcpStream,
    head: &str,
    body: Body,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => seen.extend_from_slice(&buf[..n]),
        }
    }
    socket.write_all(head.as_bytes()).await?;
    match body {
        Body::Drip { bytes, every } => {
            for _ in 0..bytes {
                // The drip itself is what is under test: a byte, then a pause.
                tokio::time::sleep(every).await;
                socket.write_all(b" ").await?;
                socket.flush().await?;
                written.fetch_add(1, Ordering::SeqCst);
            }
        }
        Body::Pour {
            total,
            piece,
            chunked,
        } => {
            let data = vec![b'x'; piece];
            let mut sent = 0u64;
            while sent < total {
                let n = usize::try_from(total - sent).map_or(piece, |left| left.min(piece));
                let mut frame = Vec::with_capacity(n + 16);
                if chunked {
                    frame.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                }
                frame.extend_from_slice(&data[..n]);
                if chunked {
                    frame.extend_from_slice(b"\r\n");
                }
                socket.write_all(&frame).await?;
                written.fetch_add(frame.len() as u64, Ordering::SeqCst);
                sent += n as u64;
            }
            if chunked {
                socket.write_all(b"0\r\n\r\n").await?;
            }
        }
    }
    socket.flush().await?;
    Ok(())
}

/// A connection `name` to `server` with one function `read` (`GET /read`), one attempt only.
fn connection(name: &str, url: &str, limits: &str) -> (String, String) {
    let text = format!(
        r#"connection: {name}
type: rest
endpoint: UPSTREAM
allow_private_network: true
limits: {limits}
retry: {{ max_attempts: 1 }}
functions:
  read: {{ path: /read }}
"#
    );
    (format!("{name}.yaml"), pointed(&text, url))
}

/// A healthy connection `ok` to an axum upstream, to show the engine still serves.
fn healthy(upstream: &Upstream) -> (String, String) {
    connection("ok", &upstream.url(), "{ timeout: 5s }")
}

/// Runs `ok.read` to success, and checks the probes.
async fn still_serves(sb: &TestServer) {
    assert!(sb.api.healthy().await, "the engine answers /healthz");
    let id = sb.api.enqueue("ok.read", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded"], Duration::from_secs(10))
        .await;
    assert_eq!(done["result"]["data"], json!({ "ok": true }), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_upstream_ends_the_attempt_at_its_deadline_with_a_timeout() {
    let timeout = Duration::from_millis(1500);
    let server = RawServer::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        Body::Drip {
            bytes: 100,
            every: Duration::from_secs(1),
        },
    )
    .await;
    let ok = Upstream::ok().await;
    let files = [
        connection(
            "drip",
            &server.url(),
            "{ timeout: 1500ms, connect_timeout: 1s }",
        ),
        healthy(&ok),
    ];
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let sb = TestServer::start(&files).await;

    let id = sb.api.enqueue("drip.read", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["failed"], Duration::from_secs(15))
        .await;
    let error = &done["result"]["error"];
    assert_eq!(error["kind"], "timeout", "{done}");
    assert_eq!(error["retryable"], true, "{done}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "`drip` gave no complete answer before the attempt's deadline (status 200 received, "
        ),
        "the wrapper's own deadline ended it, not the dispatcher's backstop: {message}"
    );

    let journal = sb.api.attempts(&id).await;
    assert_eq!(journal.len(), 1, "{journal:#?}");
    let attempt = &journal[0];
    assert_eq!(
        (&attempt["error_kind"], &attempt["http_status"]),
        (&json!("timeout"), &json!(200)),
        "{attempt:#}"
    );
    let took = Duration::from_millis(attempt["duration_ms"].as_u64().expect("duration_ms"));
    assert!(took >= timeout, "ended before its deadline: {took:?}");
    assert!(
        took < timeout + Duration::from_secs(3),
        "ended long after its deadline (the drip takes 100 s): {took:?}"
    );
    let read = attempt["response_bytes"].as_u64().expect("response_bytes");
    assert!(read < 10, "read {read} of the 100 dripped bytes");

    // The engine hung up rather than keep the socket (and a worker) waiting for the rest.
    server.wait_for_hang_up(Duration::from_secs(10)).await;
    still_serves(&sb).await;
    sb.stop().await;
}

/// Runs `big.read` against `server` and checks the failure, the journal and that the engine
/// stopped reading. Returns the bytes the journal says were read.
async fn too_large(server: &RawServer) -> u64 {
    let ok = Upstream::ok().await;
    let files = [
        connection("big", &server.url(), "{ timeout: 30s }"),
        healthy(&ok),
    ];
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let sb = TestServer::start(&files).await;

    let id = sb.api.enqueue("big.read", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["failed"], Duration::from_secs(30))
        .await;
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "response_too_large",
            "message": "response body exceeds 10 MiB",
            "retryable": false,
        }),
        "{done}"
    );
    assert_eq!(done["result"]["data"], serde_json::Value::Null);
    let journal = sb.api.attempts(&id).await;
    assert_eq!(journal.len(), 1, "{journal:#?}");
    assert_eq!(journal[0]["error_kind"], "response_too_large");
    assert_eq!(journal[0]["http_status"], 200);

    // From the server's side: the engine hung up long before 50 MB, so it neither read nor
    // buffered the rest (socket buffers hold a few MiB more than it read).
    server.wait_for_hang_up(Duration::from_secs(20)).await;
    let written = server.written();
    assert!(
        written < 16 * 1024 * 1024,
        "the server wrote {written} bytes before the engine hung up"
    );
    still_serves(&sb).await;
    sb.stop().await;
    journal[0]["response_bytes"]
        .as_u64()
        .expect("response_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_chunked_answer_fails_as_response_too_large_after_10_mib() {
    const PIECE: usize = 64 * 1024;
    let server = RawServer::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        Body::Pour {
            total: 50_000_000,
            piece: PIECE,
            chunked: true,
        },
    )
    .await;
    let read = too_large(&server).await;
    assert!(
        read > MAX_BODY && read <= MAX_BODY + PIECE as u64,
        "read {read} bytes; expected just over 10 MiB, at most one chunk more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_content_length_is_refused_before_reading_the_body() {
    let server = RawServer::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n",
        Body::Pour {
            total: 50_000_000,
            piece: 64 * 1024,
            chunked: false,
        },
    )
    .await;
    let read = too_large(&server).await;
    assert_eq!(
        read, 0,
        "the declared length is refused before any of the body is read"
    );
}
