//! The callout routes.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, JsonBody, MAX_WAIT};
use crate::engine::{Accepted, CalloutRequest, Refusal};
use crate::metadata::values::HumanDuration;
use crate::queue::{Attempt, Callout, ListQuery, Millis, Status, Transition};

/// The body of `POST /v1/callouts` (and of each batch item).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCalloutBody {
    function: String,
    #[serde(default = "empty_object")]
    input: Value,
    idempotency_key: Option<String>,
    wait: Option<String>,
    run_at: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// RFC 3339 text for a time in milliseconds.
pub fn rfc3339(ms: Millis) -> Value {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }) {
        Some(text) => Value::String(text),
        None => Value::Null,
    }
}

/// A callout as the API shows it.
pub fn callout_json(c: &Callout) -> Value {
    let mut out = json!({
        "id": c.id,
        "function": c.function,
        "status": c.status,
        "attempts": c.attempts,
        "input": c.input,
        "created_at": rfc3339(c.created_at),
        "updated_at": rfc3339(c.updated_at),
        "next_attempt_at": c.next_attempt_at.map_or(Value::Null, rfc3339),
        "idempotency_key": c.idempotency_key,
    });
    out["result"] = c.result.clone().unwrap_or(Value::Null);
    out
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "attempt": a.attempt,
        "series": a.series,
        "started_at": rfc3339(a.started_at),
        "duration_ms": a.duration_ms,
        "http_status": a.http_status,
        "error_kind": a.error_kind,
        "error_message": a.error_message,
        "response_bytes": a.response_bytes,
    })
}

/// Checks one body into a request and its wait.
fn parse_request(
    body: NewCalloutBody,
    header_key: Option<String>,
) -> Result<(CalloutRequest, Option<std::time::Duration>), ApiError> {
    let wait = match &body.wait {
        None => None,
        Some(text) => {
            let d = HumanDuration::parse(text).map_err(|m| {
                ApiError::invalid(format!("`wait`: {m}"))
                    .with_details(json!([{"pointer": "/wait", "message": m}]))
            })?;
            if d.0 > MAX_WAIT {
                return Err(ApiError::invalid(format!(
                    "`wait` of {d} is too long; expected at most 120s"
                )));
            }
            Some(d.0)
        }
    };
    let run_at = match &body.run_at {
        None => None,
        Some(text) => {
            let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    ApiError::invalid(format!(
                        "`run_at` {text:?} is not an RFC 3339 time; expected one like \"2026-11-26T12:00:00Z\""
                    ))
                })?;
            Some((t.unix_timestamp_nanos() / 1_000_000) as Millis)
        }
    };
    if !body.input.is_object() {
        return Err(ApiError::invalid("`input` must be a JSON object")
            .with_details(json!([{"pointer": "/input", "message": "expected an object"}])));
    }
    let idempotency_key = body.idempotency_key.or(header_key);
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)))
    {
        return Err(bad_idempotency_key());
    }
    Ok((
        CalloutRequest {
            function: body.function,
            input: body.input,
            idempotency_key,
            run_at,
        },
        wait,
    ))
}

/// The answer to an idempotency key (body or header) that cannot be used.
fn bad_idempotency_key() -> ApiError {
    ApiError::invalid(
        "an idempotency key must be 1 to 255 visible ASCII characters (no spaces or control characters)",
    )
    .with_details(json!([{"pointer": "/idempotency_key", "message": "expected 1 to 255 visible ASCII characters"}]))
}

fn refusal_error(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::UnknownFunction(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_function",
            format!("no function `{name}`; GET /v1/functions lists them"),
        ),
        Refusal::InvalidInput(failures) => {
            let details: Vec<Value> = failures
                .iter()
                .map(|(pointer, message)| json!({ "pointer": format!("/input{pointer}"), "message": message }))
                .collect();
            let first = failures
                .first()
                .map(|(p, m)| format!("/input{p}: {m}"))
                .unwrap_or_default();
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("the input does not match the function's input schema ({} problem(s); first: {first})", failures.len()),
            )
            .with_details(Value::Array(details))
        }
        Refusal::NotRunnable(message) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "function_not_runnable",
            message,
        ),
        Refusal::Conflict { existing_id } => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this idempotency key was used with another function or input",
        )
        .with_details(json!({ "existing_id": existing_id })),
    }
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewCalloutBody>,
) -> Result<Response, ApiError> {
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map(str::to_string)
                .map_err(|_| bad_idempotency_key())?,
        ),
    };
    let (request, wait) = parse_request(body, header_key)?;
    let mut answers = state.engine.enqueue(vec![request]).await?;
    let answer = answers
        .pop()
        .ok_or_else(|| ApiError::invalid("nothing to enqueue"))?;
    let (callout, status) = match answer.map_err(refusal_error)? {
        Accepted::Created(c) => (c, StatusCode::ACCEPTED),
        Accepted::Existing(c) => (c, StatusCode::OK),
    };
    if let Some(wait) = wait
        && !callout.status.is_final()
    {
        let latest = state.engine.wait(&callout.id, wait).await?;
        if let Some(latest) = latest {
            let code = if latest.status.is_final() {
                StatusCode::OK
            } else {
                status
            };
            return Ok((code, axum::Json(callout_json(&latest))).into_response());
        }
    }
    Ok((status, axum::Json(callout_json(&callout))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    callouts: Vec<Value>,
}

/// The most items one batch may hold.
pub const MAX_BATCH: usize = 1000;

pub async fn batch(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Response, ApiError> {
    if body.callouts.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "a batch holds at most {MAX_BATCH} callouts; this one has {}",
            body.callouts.len()
        )));
    }
    let mut results: Vec<Option<Value>> = Vec::with_capacity(body.callouts.len());
    let mut requests = Vec::new();
    let mut slots = Vec::new();
    for (i, item) in body.callouts.into_iter().enumerate() {
        let parsed = if item.is_object() {
            serde_json::from_value::<NewCalloutBody>(item)
                .map_err(|e| ApiError::invalid(format!("item {i} does not fit: {e}")))
        } else {
            Err(ApiError::invalid(format!("item {i} is not a JSON object")))
        }
        .and_then(|b| {
            if b.wait.is_some() {
                return Err(ApiError::invalid(format!(
                    "item {i}: `wait` applies to single callouts, not to batch items"
                )));
            }
            parse_request(b, None)
        });
        match parsed {
            Ok((request, _)) => {
                results.push(None);
                slots.push(i);
                requests.push(request);
            }
            Err(err) => results.push(Some(err.body())),
        }
    }
    let answers = state.engine.enqueue(requests).await?;
    for (slot, answer) in slots.into_iter().zip(answers) {
        results[slot] = Some(match answer {
            Ok(Accepted::Created(c)) | Ok(Accepted::Existing(c)) => {
                json!({ "callout": callout_json(&c) })
            }
            Err(refusal) => refusal_error(refusal).body(),
        });
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| r.unwrap_or(Value::Null))
        .collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let callout = state
        .engine
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("callout", &id))?;
    Ok(axum::Json(callout_json(&callout)).into_response())
}

pub async fn attempts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.engine.store().get(&id).await?.is_none() {
        return Err(ApiError::not_found("callout", &id));
    }
    let attempts = state.engine.store().attempts(&id).await?;
    let list: Vec<Value> = attempts.iter().map(attempt_json).collect();
    Ok(axum::Json(json!({ "attempts": list })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    function: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::invalid(format!(
            "the query does not fit: {}; expected status, function, limit and cursor",
            e.body_text()
        ))
    })?;
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown status {text:?}; expected one of queued, running, retrying, succeeded, failed, cancelled"
            ))
        })?),
    };
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::invalid("`limit` must be between 1 and 500"));
    }
    let query = ListQuery {
        status,
        function: params.function,
        limit,
        before_id: params.cursor,
    };
    let callouts = state.engine.store().list(&query).await?;
    let next_cursor = if callouts.len() as u32 == limit {
        callouts
            .last()
            .map(|c| Value::String(c.id.clone()))
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let list: Vec<Value> = callouts.iter().map(callout_json).collect();
    Ok(axum::Json(json!({ "callouts": list, "next_cursor": next_cursor })).into_response())
}

fn transition(result: Transition, id: &str, verb: &str) -> Result<Callout, ApiError> {
    match result {
        Transition::Done(c) => Ok(*c),
        Transition::NotFound => Err(ApiError::not_found("callout", id)),
        Transition::WrongStatus(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_status",
            format!("a {} callout cannot be {verb}", status.as_str()),
        )),
    }
}

pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = state
        .engine
        .store()
        .replay(&id, crate::engine::now_millis())
        .await?;
    let callout = transition(result, &id, "replayed (only succeeded and failed ones can)")?;
    state.engine.wake();
    Ok((StatusCode::ACCEPTED, axum::Json(callout_json(&callout))).into_response())
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = state
        .engine
        .store()
        .cancel(&id, crate::engine::now_millis())
        .await?;
    let callout = transition(result, &id, "cancelled (only queued and retrying ones can)")?;
    Ok(axum::Json(callout_json(&callout)).into_response())
}

pub async fn functions(State(state): State<AppState>) -> Response {
    let version = state.engine.version();
    let list: Vec<Value> = version
        .metadata
        .functions()
        .map(|(reference, conn, f)| {
            json!({
                "function": reference,
                "connection": conn.name,
                "type": conn.type_name,
                "description": f.description,
                "inputs": f.inputs().iter().map(|i| json!({"name": i.name, "type": i.kind, "required": i.required})).collect::<Vec<_>>(),
                "input_schema": f.input_schema.source,
            })
        })
        .collect();
    axum::Json(json!({ "functions": list })).into_response()
}

pub async fn reload(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.engine.reload() {
        Ok(count) => {
            Ok(axum::Json(json!({ "status": "reloaded", "connections": count })).into_response())
        }
        Err(problems) => {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_metadata",
                format!("the metadata has {} problem(s); the engine keeps running on the last good version", lines.len()),
            )
            .with_details(json!(lines)))
        }
    }
}
