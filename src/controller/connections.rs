//! `GET /v1/connections`: every connection of the loaded metadata with its limits and the
//! state of its circuit breaker. Shows no secret: no credentials, no headers, and endpoints
//! without their query.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::callouts::rfc3339;
use crate::dispatch::BreakerView;
use crate::metadata::Connection;
use crate::metadata::values::HumanDuration;

pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> = state
        .engine
        .breakers()
        .iter()
        .map(|(conn, breaker)| connection_json(conn, breaker))
        .collect();
    axum::Json(json!({ "connections": list })).into_response()
}

fn connection_json(conn: &Connection, breaker: &BreakerView) -> Value {
    let limits = &conn.limits;
    json!({
        "name": conn.name,
        "type": conn.type_name,
        "description": conn.description,
        "endpoint": conn.endpoint.as_ref().map(|url| {
            // A query could carry a key: leave it out.
            let mut shown = url.clone();
            shown.set_query(None);
            shown.to_string()
        }),
        "functions": conn.functions.keys().collect::<Vec<_>>(),
        "limits": {
            "rate": limits.rate.map(|r| r.to_string()),
            "burst": limits.burst,
            "concurrency": limits.concurrency,
            "timeout": HumanDuration(limits.timeout).to_string(),
            "connect_timeout": HumanDuration(limits.connect_timeout).to_string(),
        },
        "breaker": {
            "enabled": breaker.enabled,
            "state": breaker.state.as_str(),
            "calls": breaker.calls,
            "failures": breaker.failures,
            "opened_at": breaker.opened_at.map_or(Value::Null, rfc3339),
            "retry_at": breaker.retry_at.map_or(Value::Null, rfc3339),
            "transitions": breaker.transitions(),
        },
    })
}
