//! A real HTTP upstream on `127.0.0.1:0` that records what the engine sends it.
//!
//! Every request is answered by the test's [`Behaviour`] (status, body, headers, and how long
//! to hold the call) and recorded as a [`Seen`]: when it arrived, its method, path, headers and
//! body, and how many requests with the same `Idempotency-Key` came before it. The upstream also
//! tracks the most requests it held in flight at once.
//!
//! [`Upstream::bulk`] serves large bodies instead, never holding one whole: `GET /bytes/N`
//! answers N bytes of [`content`], and `/sink` takes a body of any size and keeps only its size
//! and SHA-256 ([`Sunk`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The header that carries a callout's idempotency key (the REST wrapper's default).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    /// Path and query, like `/shop/orders?x=1`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Requests with the same idempotency key before this one (0 for the first).
    pub earlier_with_key: usize,
}

impl Seen {
    /// The idempotency key header, if sent.
    pub fn key(&self) -> Option<&str> {
        self.headers
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How the upstream answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
    /// How long the call is held before the answer.
    pub hold: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
            hold: Duration::ZERO,
        }
    }

    pub fn ok(body: Value) -> Reply {
        Reply::json(200, body)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn hold(mut self, hold: Duration) -> Reply {
        self.hold = hold;
        self
    }
}

/// The test's answer to each request.
pub type Behaviour = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// What `/sink` of [`Upstream::bulk`] received: one body's size and SHA-256, and its framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sunk {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    pub content_type: Option<String>,
    /// The `Content-Length` header, when the body came with one (not chunked).
    pub content_length: Option<u64>,
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<Seen>>,
    sunk: Mutex<Vec<Sunk>>,
    per_key: Mutex<HashMap<String, usize>>,
    inflight: AtomicUsize,
    peak: AtomicUsize,
}

/// Leaves the in-flight count when the call is answered or dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running upstream; stopped when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream that answers every request with `behaviour`.
    pub async fn start(behaviour: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        let behaviour: Behaviour = Arc::new(behaviour);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(handle)
            .with_state((shared.clone(), behaviour));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Upstream {
            addr,
            shared,
            stop,
            task,
        }
    }

    /// An upstream of large bodies, streamed both ways:
    ///
    /// - `/bytes/N` (any method) answers `N` bytes of [`content`] with `Content-Length`, in 64 KiB
    ///   chunks; query `type` sets the `Content-Type` (default `application/octet-stream`),
    ///   `chunked=true` (any case) leaves `Content-Length` out (the chunked coding), and `stall_after=M`
    ///   stops sending for a minute after `M` bytes;
    /// - any method on `/sink` reads the body as it comes, keeps its [`Sunk`] and answers
    ///   `200 {"size": .., "sha256": ..}`; with query `accept=TOKEN`, a request without
    ///   `Authorization: Bearer TOKEN` is read to its end, kept nowhere and answered `401`.
    ///
    /// Every request is recorded as a [`Seen`] without its body.
    pub async fn bulk() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/bytes/{n}", axum::routing::any(bytes))
            .route("/sink", axum::routing::any(sink))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Upstream {
            addr,
            shared,
            stop,
            task,
        }
    }

    /// What `/sink` received so far, in order.
    pub fn sunk(&self) -> Vec<Sunk> {
        self.shared.sunk.lock().expect("sink lock").clone()
    }

    /// An upstream that answers `200 {"ok": true}` at once.
    pub async fn ok() -> Upstream {
        Upstream::start(|_| Reply::ok(serde_json::json!({ "ok": true }))).await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().expect("log lock").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.log.lock().expect("log lock").len()
    }

    /// The most requests held at once.
    pub fn peak_inflight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Requests held right now.
    pub fn inflight(&self) -> usize {
        self.shared.inflight.load(Ordering::SeqCst)
    }

    /// Different idempotency keys seen.
    pub fn distinct_keys(&self) -> usize {
        self.shared.per_key.lock().expect("key lock").len()
    }

    /// Requests beyond the first for each idempotency key.
    pub fn duplicates(&self) -> usize {
        let log = self.shared.log.lock().expect("log lock");
        let keys: HashSet<&str> = log.iter().filter_map(Seen::key).collect();
        log.iter().filter(|s| s.key().is_some()).count() - keys.len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

async fn handle(
    State((shared, behaviour)): State<(Arc<Shared>, Behaviour)>,
    request: Request,
) -> Response {
    let at = Instant::now();
    let _inflight = InFlight::enter(&shared);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let key = parts
        .headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let earlier_with_key = match &key {
        Some(key) => {
            let mut per_key = shared.per_key.lock().expect("key lock");
            let n = per_key.entry(key.clone()).or_insert(0);
            *n += 1;
            *n - 1
        }
        None => 0,
    };
    let seen = Seen {
        at,
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body,
        earlier_with_key,
    };
    let reply = behaviour(&seen);
    shared.log.lock().expect("log lock").push(seen);
    if !reply.hold.is_zero() {
        tokio::time::sleep(reply.hold).await;
    }
    let status = StatusCode::from_u16(reply.status).expect("a valid status");
    let mut response = (status, axum::Json(reply.body)).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("a valid header value"),
        );
    }
    response
}

/// The most of `arrivals` that fall within any one second (each arrival starting a window).
///
/// # Panics
/// `arrivals` is empty.
pub fn most_within_a_second(arrivals: &[Instant]) -> usize {
    arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|at| **at >= *start && at.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .expect("requests")
}

/// Byte `i` of the deterministic content [`Upstream::bulk`] serves (a Weyl sequence's top byte:
/// no short period, so a chunk read twice or skipped changes the hash).
pub fn content_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Bytes `from..to` of the content.
pub fn content(from: u64, to: u64) -> Vec<u8> {
    (from..to).map(content_byte).collect()
}

/// The lowercase hex SHA-256 of the first `n` bytes of the content, computed in pieces.
pub fn content_sha256(n: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut at = 0;
    while at < n {
        let to = (at + CHUNK).min(n);
        hasher.update(content(at, to));
        at = to;
    }
    hex::encode(hasher.finalize())
}

/// Bytes per chunk [`Upstream::bulk`] sends.
const CHUNK: u64 = 64 * 1024;

/// Records a request of [`Upstream::bulk`] (its body is not kept).
fn record(shared: &Shared, parts: &axum::http::request::Parts) {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    shared.log.lock().expect("log lock").push(Seen {
        at: Instant::now(),
        method: parts.method.to_string(),
        path,
        headers: parts.headers.clone(),
        body: Bytes::new(),
        earlier_with_key: 0,
    });
}

async fn bytes(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    record(&shared, &parts);
    let content_type = query
        .get("type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".to_string());
    let chunked = query
        .get("chunked")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let stall_after = query.get("stall_after").and_then(|v| v.parse::<u64>().ok());
    let chunks = futures_util::stream::unfold(0u64, move |at| async move {
        if at >= n {
            return None;
        }
        if stall_after.is_some_and(|m| at >= m) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let to = (at + CHUNK).min(n);
        let to = match stall_after {
            Some(m) if at < m => to.min(m),
            _ => to,
        };
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(content(at, to))),
            to,
        ))
    });
    let mut response = Response::new(axum::body::Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).expect("a valid content type"),
    );
    if !chunked {
        headers.insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    response
}

async fn sink(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    use futures_util::StreamExt;
    use sha2::{Digest, Sha256};
    let (parts, body) = request.into_parts();
    record(&shared, &parts);
    let refused = query.get("accept").is_some_and(|token| {
        let bearer = format!("Bearer {token}");
        parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some(bearer.as_str())
    });
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if refused {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": "invalid_token" })),
        )
            .into_response();
    }
    let sunk = Sunk {
        size,
        sha256: hex::encode(hasher.finalize()),
        content_type: header(axum::http::header::CONTENT_TYPE),
        content_length: header(axum::http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
    };
    let answer = serde_json::json!({ "size": sunk.size, "sha256": sunk.sha256 });
    shared.sunk.lock().expect("sink lock").push(sunk);
    (StatusCode::OK, axum::Json(answer)).into_response()
}
