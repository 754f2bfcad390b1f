//! The HTTP API: CRM triggers, flows and UI actions enqueue callouts here and read them back.
//!
//! Every `/v1` route needs `Authorization: Bearer KEY` (401 without a key, 403 with a wrong
//! one) unless the server runs in dev mode. Bodies are JSON, read with a size limit (413 past
//! it), except uploads to `POST /v1/files`, which stream into the files bucket under its own
//! `max_size`; every error is `{"error": {"code", "message", "details"}}`. Routes are listed in
//! `docs/api.md`.

mod callouts;
mod connections;
pub mod error;
mod files;
mod listen;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::engine::Engine;
pub use callouts::rfc3339;
pub use error::ApiError;
pub use listen::{
    ConnectionLimits, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};

/// Default limit of a request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Who may call the API.
#[derive(Clone)]
pub enum CallerAuth {
    /// Only these keys.
    Keys(Arc<Vec<String>>),
    /// Only the keys the ring holds now (replaced while serving: `serve` re-reads its key file
    /// on SIGHUP, so a key removed from it is refused from then on).
    Ring(KeyRing),
    /// Anyone (dev mode).
    Open,
}

impl CallerAuth {
    /// Whether `key` is accepted, compared in constant time with every key.
    fn accepts(&self, key: &str) -> bool {
        let matches = |keys: &[String]| {
            keys.iter().fold(false, |found, k| {
                found | constant_time_eq(k.as_bytes(), key.as_bytes())
            })
        };
        match self {
            CallerAuth::Keys(keys) => matches(keys),
            CallerAuth::Ring(ring) => matches(&ring.0.load()),
            CallerAuth::Open => true,
        }
    }
}

/// Prints how many keys, never a key.
impl std::fmt::Debug for CallerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerAuth::Keys(keys) => write!(f, "Keys({} keys: ***)", keys.len()),
            CallerAuth::Ring(ring) => write!(f, "Ring({} keys: ***)", ring.len()),
            CallerAuth::Open => f.write_str("Open"),
        }
    }
}

/// Caller keys that can be replaced while the server runs; clones share the keys.
#[derive(Clone, Default)]
pub struct KeyRing(Arc<ArcSwap<Vec<String>>>);

impl KeyRing {
    pub fn new(keys: Vec<String>) -> KeyRing {
        KeyRing(Arc::new(ArcSwap::from_pointee(keys)))
    }

    /// Replaces every key at once: requests checked from now on see only `keys`.
    pub fn replace(&self, keys: Vec<String>) {
        self.0.store(Arc::new(keys));
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Prints how many keys, never a key.
impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys: ***)", self.len())
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: CallerAuth,
    pub body_limit: usize,
    /// Places for uploads to `POST /v1/files` at once (each holds up to three parts in
    /// memory); an upload that finds none is answered `503` with `Retry-After`.
    pub uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads to `POST /v1/files` at once, by default.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 16;

/// The API's routes.
pub fn router(state: AppState) -> Router {
    // Shared behind one `Arc`: axum clones the state for every request (the key check and each
    // extractor), and one reference count is cheaper than the three `AppState` holds.
    let state = Arc::new(state);
    let v1 = Router::new()
        .route("/callouts", post(callouts::create).get(callouts::list))
        .route("/callouts/batch", post(callouts::batch))
        .route("/callouts/{id}", get(callouts::get_one))
        .route("/callouts/{id}/attempts", get(callouts::attempts))
        .route("/callouts/{id}/replay", post(callouts::replay))
        .route("/callouts/{id}/cancel", post(callouts::cancel))
        .route("/functions", get(callouts::functions))
        .route("/connections", get(connections::list))
        // Uploads stream into the files bucket under its own `max_size`, not the JSON body
        // limit (which `Multipart` would otherwise apply).
        .route(
            "/files",
            post(files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/{id}", get(files::get_one))
        .route("/admin/reload", post(callouts::reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .nest("/v1", v1)
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see docs/api.md",
            )
        })
        .with_state(state)
}

async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if matches!(state.auth, CallerAuth::Open) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            let key = key.trim();
            // An empty key is no key (401), as docs/api.md says.
            (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
        });
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing caller key; send `Authorization: Bearer KEY`",
        )
        .into_response(),
        Some(key) if state.auth.accepts(key) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the caller key is not accepted",
        )
        .into_response(),
    }
}

/// Compares without stopping at the first difference, so timing does not tell a key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.store().ready().await {
        Ok(()) => axum::Json(json!({ "status": "ready" })).into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let counts = state.engine.store().counts().await.unwrap_or_default();
    for (conn, breaker) in state.engine.breakers() {
        let by_state: Vec<(&str, u64)> = breaker
            .transitions_to
            .iter()
            .map(|(to, n)| (to.as_str(), *n))
            .collect();
        state
            .engine
            .metrics()
            .breaker(&conn.name, breaker.state.index() as u8, &by_state);
    }
    let text = state.engine.metrics().render(&counts);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A JSON body read within the server's size limit, with errors in the API's shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let limit = state.body_limit;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over the limit of {limit} bytes"),
            )
        };
        // A declared length over the limit is refused at once: reading would only wait for
        // bytes that are refused anyway, and a client that never sends them holds the request.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|err| {
                let over = std::error::Error::source(&err)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if over {
                    too_large()
                } else if listen::body_timed_out(&err) {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the request body stopped arriving for longer than the server's body timeout",
                    )
                } else {
                    ApiError::bad_request(format!("the request body could not be read: {err}"))
                }
            })?;
        read_json(&bytes).map(JsonBody)
    }
}

/// Reads a body into `T`: at once when that works, for then the body is one JSON object (`T`
/// takes no array) with no key twice, and [`read_json_via_value`] would give the same `T`;
/// through it otherwise, for its refusals.
fn read_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if starts_an_object(bytes)
        && let Ok(body) = serde_json::from_slice::<T>(bytes)
    {
        return Ok(body);
    }
    read_json_via_value(bytes)
}

/// Reads a body into `T` through a `Value`, which tells invalid JSON, a body that is not an
/// object, and an object that does not fit apart (and takes the last of a key given twice).
fn read_json_via_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(format!("the body does not fit this route: {e}")))
}

/// Whether the first byte after JSON whitespace opens an object.
fn starts_an_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves, then lets the
/// connections finish their requests (see [`listen::serve`]).
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, router(state), limits, shutdown).await
}

/// The longest `wait` a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::callouts::{BatchBody, NewCalloutBody};
    use super::*;

    fn shown<T: std::fmt::Debug>(read: Result<T, ApiError>) -> String {
        match read {
            Ok(body) => format!("{body:?}"),
            Err(err) => format!("{} {}", err.status, err.body()),
        }
    }

    #[test]
    fn a_key_ring_accepts_only_the_keys_it_holds_now() {
        let ring = KeyRing::new(vec!["key-ann".into(), "key-bob".into()]);
        let auth = CallerAuth::Ring(ring.clone());
        assert!(auth.accepts("key-ann") && auth.accepts("key-bob"));
        assert!(!auth.accepts("key-an") && !auth.accepts(""));
        ring.replace(vec!["key-bob".into()]);
        assert!(!auth.accepts("key-ann"), "a removed key is refused");
        assert!(auth.accepts("key-bob"));
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn caller_keys_are_not_printed_by_debug() {
        let keys = vec!["canary-key-7f3a".to_string(), "other".to_string()];
        let printed = [
            format!("{:?}", CallerAuth::Keys(Arc::new(keys.clone()))),
            format!("{:?}", CallerAuth::Ring(KeyRing::new(keys))),
        ];
        assert_eq!(printed, ["Keys(2 keys: ***)", "Ring(2 keys: ***)"]);
    }

    #[test]
    fn a_body_read_at_once_is_read_as_through_a_value() {
        let bodies = [
            r#"{"function": "shop.create_order", "input": {"customer_id": "C-1", "quantity": 1}}"#,
            r#" {"function":"f.g","input":{"a":[1,2.5,-3,1e400,18446744073709551615]},"idempotency_key":"k","run_at":null}"#,
            r#"{"function": "f.g", "function": "f.h"}"#,
            r#"{"function": "f.g", "input": {"a": 1, "a": 2}}"#,
            r#"{"function": "f.g", "inpt": {}}"#,
            r#"{"function": "f.g"} {}"#,
            r#"{"function": "f.g""#,
            r#"["f.g", {}, null, null, null]"#,
            r#""f.g""#,
            "",
            r#"{"function": 1}"#,
            r#"{"input": {}}"#,
            "\u{feff}{\"function\": \"f.g\"}",
            r#"{"function": "f.g", "input": "not an object", "wait": "5s"}"#,
        ];
        for body in bodies {
            assert_eq!(
                shown(read_json::<NewCalloutBody>(body.as_bytes())),
                shown(read_json_via_value::<NewCalloutBody>(body.as_bytes())),
                "{body}"
            );
        }
        let batches = [
            r#"{"callouts": [{"function": "f.g"}, 7, [], {"function": "f.g", "function": "f.h"}]}"#,
            r#"{"callouts": []}"#,
            r#"{"callouts": {}}"#,
            r#"{"callouts": [], "callouts": [1]}"#,
        ];
        for body in batches {
            assert_eq!(
                shown(read_json::<BatchBody>(body.as_bytes())),
                shown(read_json_via_value::<BatchBody>(body.as_bytes())),
                "{body}"
            );
        }
    }
}
