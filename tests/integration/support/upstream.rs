//! A real HTTP upstream on `127.0.0.1:0` that records what the engine sends it.
//!
//! Every request is answered by the test's [`Behaviour`] (status, body, headers, and how long
//! to hold the call) and recorded as a [`Seen`]: when it arrived, its method, path, headers and
//! body, and how many requests with the same `Idempotency-Key` came before it. The upstream also
//! tracks the most requests it held in flight at once.

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

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<Seen>>,
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
