//! The HTTP API: CRM triggers, flows and UI actions enqueue callouts here and read them back.
//!
//! Every `/v1` route needs `Authorization: Bearer KEY` (401 without a key, 403 with a wrong
//! one) unless the server runs in dev mode. Bodies are JSON, read with a size limit (413 past
//! it); every error is `{"error": {"code", "message", "details"}}`. Routes are listed in
//! `docs/api.md`.

mod callouts;
pub mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::engine::Engine;
pub use error::ApiError;

/// Default limit of a request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Who may call the API.
#[derive(Clone, Debug)]
pub enum CallerAuth {
    /// Only these keys.
    Keys(Arc<Vec<String>>),
    /// Anyone (dev mode).
    Open,
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: CallerAuth,
    pub body_limit: usize,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/callouts", post(callouts::create).get(callouts::list))
        .route("/callouts/batch", post(callouts::batch))
        .route("/callouts/{id}", get(callouts::get_one))
        .route("/callouts/{id}/attempts", get(callouts::attempts))
        .route("/callouts/{id}/replay", post(callouts::replay))
        .route("/callouts/{id}/cancel", post(callouts::cancel))
        .route("/functions", get(callouts::functions))
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

async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let CallerAuth::Keys(keys) = &state.auth else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
        });
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing caller key; send `Authorization: Bearer KEY`",
        )
        .into_response(),
        Some(key)
            if keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            next.run(request).await
        }
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

async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine.store().counts().await {
        Ok(_) => axum::Json(json!({ "status": "ready" })).into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let counts = state.engine.store().counts().await.unwrap_or_default();
    let text = state.engine.metrics().render(&counts);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A JSON body read within the server's size limit, with errors in the API's shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.body_limit;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|err| {
                let too_large = std::error::Error::source(&err)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_large {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("the request body is over the limit of {limit} bytes"),
                    )
                } else {
                    ApiError::bad_request(format!("the request body could not be read: {err}"))
                }
            })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("the body does not fit this route: {e}")))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The longest `wait` a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
