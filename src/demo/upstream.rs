//! The demo's upstream: one small HTTP server on loopback that plays the four demo services.
//!
//! Paths follow the endpoints in `metadata/demo/`: `/shop` (orders, 400 for a quantity below
//! 1), `/warehouse` (stock), `/shipping` (flaky: 503 to the first attempt of each callout) and
//! `/loyalty` (throttled: 429 with `Retry-After: 1` to the first attempt of each callout). A
//! callout's attempts are recognised by the `Idempotency-Key` header, the same on every attempt;
//! a request without one is refused with a 400, so a wrapper that forgot the header shows up.
//! Every answer comes after a short random latency. The server counts requests by status and
//! the most it had in flight at once; it only ever binds a loopback address.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`Upstream::stop`] waits for open requests before it drops them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the upstream saw, for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamReport {
    /// Requests answered, of every service.
    pub requests: u64,
    /// Requests answered by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// The most requests in progress at once.
    pub peak_inflight: usize,
}

/// Counters shared by the handlers.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// Idempotency keys the flaky carrier has seen (and answered 503 to once).
    shipping_seen: Mutex<HashSet<String>>,
    /// Idempotency keys the throttled loyalty service has seen (and answered 429 to once).
    loyalty_seen: Mutex<HashSet<String>>,
    next_order: AtomicU64,
}

impl Stats {
    /// Whether `key` is new to `seen` (and remembers it).
    fn first_sight(seen: &Mutex<HashSet<String>>, key: &str) -> bool {
        match seen.lock() {
            Ok(mut seen) => seen.insert(key.to_string()),
            // A poisoned set means a handler panicked; treat the key as seen, answer 200.
            Err(_) => false,
        }
    }
}

/// Why the upstream did not start.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the demo upstream may only listen on loopback; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("the demo upstream cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The running demo upstream.
pub struct Upstream {
    /// Where it listens (always loopback).
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Upstream {
    /// Starts the upstream on `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// `addr` is not a loopback address, or cannot be bound.
    pub async fn start(addr: SocketAddr) -> Result<Upstream, UpstreamError> {
        if !addr.ip().is_loopback() {
            return Err(UpstreamError::NotLoopback(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| UpstreamError::Listen { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let app = router(stats.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
        });
        Ok(Upstream {
            addr,
            stats,
            stop,
            task,
        })
    }

    /// What it saw so far.
    pub fn report(&self) -> UpstreamReport {
        UpstreamReport {
            requests: self.stats.requests.load(Ordering::SeqCst),
            by_status: self
                .stats
                .by_status
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            peak_inflight: self.stats.peak.load(Ordering::SeqCst),
        }
    }

    /// Stops serving: open requests get [`STOP_GRACE`] to finish, then are dropped.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

fn router(stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/shop/orders", post(create_order))
        .route("/warehouse/stock/{sku}", get(check_stock))
        .route("/shipping/shipments", post(create_shipment))
        .route("/loyalty/members/{customer}/points", post(award_points))
        .layer(middleware::from_fn_with_state(stats.clone(), count))
        .with_state(stats)
}

/// Counts every request, its answer's status, and how many were in progress at once.
async fn count(State(stats): State<Arc<Stats>>, request: Request, next: Next) -> Response {
    let now = stats.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak.fetch_max(now, Ordering::SeqCst);
    let response = next.run(request).await;
    stats.inflight.fetch_sub(1, Ordering::SeqCst);
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut by_status) = stats.by_status.lock() {
        *by_status.entry(response.status().as_u16()).or_default() += 1;
    }
    response
}

/// The simulated work of a service: a random pause between `min_ms` and `max_ms`.
async fn latency(min_ms: u64, max_ms: u64) {
    let ms = rand::random_range(min_ms..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "message": message.into() } })),
    )
        .into_response()
}

/// A JSON number, or a string holding one (templates render input values as text).
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
}

fn missing_key() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "no Idempotency-Key header; this service needs one to recognise a retried request",
    )
}

/// `POST /shop/orders`: `{"customer", "lines": [{"sku", "quantity"}]}`.
async fn create_order(State(stats): State<Arc<Stats>>, body: Bytes) -> Response {
    latency(10, 40).await;
    let Ok(order) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let Some(lines) = order
        .get("lines")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
    else {
        return error(StatusCode::BAD_REQUEST, "an order needs at least one line");
    };
    for line in lines {
        match line.get("quantity").and_then(integer) {
            Some(q) if q >= 1 => {}
            Some(q) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("quantity must be at least 1, got {q}"),
                );
            }
            None => return error(StatusCode::BAD_REQUEST, "each line needs a whole quantity"),
        }
    }
    let number = 100_000 + stats.next_order.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({ "order": { "id": format!("SO-{number}"), "status": "accepted" } }))
        .into_response()
}

/// `GET /warehouse/stock/{sku}?warehouse=...`.
async fn check_stock(
    Path(sku): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    latency(5, 20).await;
    // A stable, made-up stock level per SKU.
    let available = sku
        .bytes()
        .fold(7u64, |acc, b| (acc * 31 + u64::from(b)) % 500);
    let warehouse = query.get("warehouse").map_or("BER-1", String::as_str);
    axum::Json(json!({ "sku": sku, "available": available, "warehouse": warehouse }))
        .into_response()
}

/// `POST /shipping/shipments`: 503 to the first attempt of each callout, then booked.
async fn create_shipment(State(stats): State<Arc<Stats>>, headers: HeaderMap) -> Response {
    latency(10, 40).await;
    let Some(key) = idempotency_key(&headers) else {
        return missing_key();
    };
    if Stats::first_sight(&stats.shipping_seen, key) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the booking system is busy; try again",
        );
    }
    let number = 1_000_000 + stats.next_order.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({ "tracking_number": format!("1Z{number}") })).into_response()
}

/// `POST /loyalty/members/{customer}/points`: 429 with `Retry-After: 1` to the first attempt
/// of each callout, then credited.
async fn award_points(
    State(stats): State<Arc<Stats>>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    latency(10, 40).await;
    let Some(key) = idempotency_key(&headers) else {
        return missing_key();
    };
    if Stats::first_sight(&stats.loyalty_seen, key) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; slow down",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let points = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("points").and_then(integer))
        .unwrap_or(0);
    axum::Json(json!({ "customer": customer, "balance": 1_000 + points })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_reads_numbers_and_numeric_text() {
        assert_eq!(integer(&json!(3)), Some(3));
        assert_eq!(integer(&json!("0")), Some(0));
        assert_eq!(integer(&json!(" 12 ")), Some(12));
        assert_eq!(integer(&json!("two")), None);
        assert_eq!(integer(&json!(1.5)), None);
    }

    async fn post(
        client: &reqwest::Client,
        url: String,
        key: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let mut request = client.post(url).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("the upstream answers")
    }

    #[tokio::test]
    async fn each_service_answers_as_the_demo_metadata_expects() {
        let upstream = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("starts");
        let base = format!("http://{}", upstream.addr);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");

        let order = |q: Value| json!({ "customer": "C-10001", "lines": [{ "sku": "MUG-350", "quantity": q }] });
        let ok = post(
            &client,
            format!("{base}/shop/orders"),
            None,
            order(json!("2")),
        )
        .await;
        assert_eq!(ok.status(), 200);
        let ok: Value = ok.json().await.expect("json");
        assert_eq!(ok["order"]["status"], "accepted");
        let bad = post(
            &client,
            format!("{base}/shop/orders"),
            None,
            order(json!(0)),
        )
        .await;
        assert_eq!(bad.status(), 400);
        let bad: Value = bad.json().await.expect("json");
        assert_eq!(
            bad["error"]["message"],
            "quantity must be at least 1, got 0"
        );

        let stock = client
            .get(format!("{base}/warehouse/stock/MUG-350?warehouse=HAM-2"))
            .send()
            .await
            .expect("answer");
        assert_eq!(stock.status(), 200);
        let stock: Value = stock.json().await.expect("json");
        assert_eq!(
            (stock["sku"].as_str(), stock["warehouse"].as_str()),
            (Some("MUG-350"), Some("HAM-2"))
        );

        let shipments = format!("{base}/shipping/shipments");
        let body = json!({ "reference": "CRM-Q-1" });
        assert_eq!(
            post(&client, shipments.clone(), Some("k1"), body.clone())
                .await
                .status(),
            503
        );
        assert_eq!(
            post(&client, shipments.clone(), Some("k1"), body.clone())
                .await
                .status(),
            200
        );
        assert_eq!(
            post(&client, shipments.clone(), Some("k2"), body.clone())
                .await
                .status(),
            503
        );
        assert_eq!(post(&client, shipments, None, body).await.status(), 400);

        let points = format!("{base}/loyalty/members/C-10001/points");
        let throttled = post(
            &client,
            points.clone(),
            Some("k1"),
            json!({ "points": "5" }),
        )
        .await;
        assert_eq!(throttled.status(), 429);
        assert_eq!(
            throttled
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let credited = post(&client, points, Some("k1"), json!({ "points": "5" })).await;
        assert_eq!(credited.status(), 200);
        assert_eq!(
            credited.json::<Value>().await.expect("json")["balance"],
            1_005
        );

        let report = upstream.report();
        assert_eq!(report.requests, 9);
        assert_eq!(
            report.by_status,
            [(200, 4), (400, 2), (429, 1), (503, 2)]
                .into_iter()
                .collect::<BTreeMap<u16, u64>>()
        );
        assert_eq!(report.peak_inflight, 1);
        upstream.stop().await;
    }

    #[tokio::test]
    async fn refuses_an_address_that_is_not_loopback() {
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        assert!(matches!(
            Upstream::start(addr).await,
            Err(UpstreamError::NotLoopback(_))
        ));
    }
}
