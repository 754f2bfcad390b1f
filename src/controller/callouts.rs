//! The callout routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
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

/// RFC 3339 text for a time in milliseconds, or `null` for a time that has none.
pub fn rfc3339(ms: Millis) -> Value {
    let mut buf = [0u8; RFC3339_MAX];
    match write_rfc3339(ms, &mut buf) {
        Some(text) => Value::String(text.to_owned()),
        None => Value::Null,
    }
}

/// The longest text [`write_rfc3339`] writes: `9999-12-31T23:59:59.999Z`.
const RFC3339_MAX: usize = 24;

/// Writes a time in milliseconds as the `time` crate's RFC 3339 format writes it in UTC: the
/// fraction of a second without trailing zeros (none when it is zero), then `Z`. `None` for a
/// time outside the years 0 to 9999, which that format cannot write.
fn write_rfc3339(ms: Millis, buf: &mut [u8; RFC3339_MAX]) -> Option<&str> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let (year, month, day) = t.to_calendar_date();
    let year = u16::try_from(year).ok().filter(|y| *y < 10_000)?;
    let (hour, minute, second, milli) = t.to_hms_milli();
    fn two(out: &mut [u8], n: u8) {
        out[0] = b'0' + n / 10;
        out[1] = b'0' + n % 10;
    }
    buf[0] = b'0' + (year / 1000) as u8;
    buf[1] = b'0' + (year / 100 % 10) as u8;
    two(&mut buf[2..4], (year % 100) as u8);
    buf[4] = b'-';
    two(&mut buf[5..7], u8::from(month));
    buf[7] = b'-';
    two(&mut buf[8..10], day);
    buf[10] = b'T';
    two(&mut buf[11..13], hour);
    buf[13] = b':';
    two(&mut buf[14..16], minute);
    buf[16] = b':';
    two(&mut buf[17..19], second);
    let mut len = 19;
    if milli != 0 {
        let digits = [milli / 100, milli / 10 % 10, milli % 10];
        let kept = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        buf[len] = b'.';
        for (k, d) in digits.iter().take(kept).enumerate() {
            buf[len + 1 + k] = b'0' + *d as u8;
        }
        len += 1 + kept;
    }
    buf[len] = b'Z';
    std::str::from_utf8(&buf[..=len]).ok()
}

/// A time as the API shows it: RFC 3339 text, or `null` (see [`rfc3339`]).
#[derive(Debug, Clone, Copy)]
struct Rfc3339(Millis);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; RFC3339_MAX];
        match write_rfc3339(self.0, &mut buf) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_unit(),
        }
    }
}

/// A callout as the API shows it, written straight from the stored callout (no `Value` built,
/// the input not copied). The fields come in the order `serde_json` keeps an object's keys
/// (sorted), so the text is byte for byte what a `Value` of the same fields writes.
#[derive(Debug, Serialize)]
struct CalloutView<'a> {
    attempts: u32,
    created_at: Rfc3339,
    function: &'a str,
    id: &'a str,
    idempotency_key: Option<&'a str>,
    input: &'a Value,
    next_attempt_at: Option<Rfc3339>,
    result: Option<&'a Value>,
    status: Status,
    updated_at: Rfc3339,
}

impl<'a> CalloutView<'a> {
    fn of(c: &'a Callout) -> CalloutView<'a> {
        CalloutView {
            attempts: c.attempts,
            created_at: Rfc3339(c.created_at),
            function: &c.function,
            id: &c.id,
            idempotency_key: c.idempotency_key.as_deref(),
            input: &c.input,
            next_attempt_at: c.next_attempt_at.map(Rfc3339),
            result: c.result.as_ref(),
            status: c.status,
            updated_at: Rfc3339(c.updated_at),
        }
    }
}

/// The JSON answer showing one callout.
fn callout_answer(status: StatusCode, c: &Callout) -> Response {
    (status, axum::Json(CalloutView::of(c))).into_response()
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "attempt": a.attempt,
        "route": a.route,
        "connection": a.connection,
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

/// The `Idempotency-Key` header as text, if there is one (`Err` when it is not visible ASCII),
/// read without copying the other headers as a `HeaderMap` extractor would.
pub struct KeyHeader(Option<Result<String, ()>>);

impl<S: Send + Sync> FromRequestParts<S> for KeyHeader {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<KeyHeader, Infallible> {
        let value = parts.headers.get("idempotency-key");
        Ok(KeyHeader(
            value.map(|v| v.to_str().map(str::to_string).map_err(|_| ())),
        ))
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    KeyHeader(header_key): KeyHeader,
    JsonBody(body): JsonBody<NewCalloutBody>,
) -> Result<Response, ApiError> {
    // Checked after the body, as ever: a body that cannot be read is the first refusal.
    let header_key = header_key.transpose().map_err(|()| bad_idempotency_key())?;
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
            return Ok(callout_answer(code, &latest));
        }
    }
    Ok(callout_answer(status, &callout))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    callouts: Vec<Value>,
}

/// The most items one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// One item of a batch's answer: the callout, or the error body.
#[derive(Debug)]
enum BatchItem {
    Callout(Box<Callout>),
    Error(Value),
}

impl Serialize for BatchItem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchItem::Callout(c) => {
                let mut item = serializer.serialize_struct("BatchItem", 1)?;
                item.serialize_field("callout", &CalloutView::of(c))?;
                item.end()
            }
            BatchItem::Error(body) => body.serialize(serializer),
        }
    }
}

/// The answer to a batch.
#[derive(Debug, Serialize)]
struct BatchAnswer {
    results: Vec<BatchItem>,
}

pub async fn batch(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Response, ApiError> {
    if body.callouts.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "a batch holds at most {MAX_BATCH} callouts; this one has {}",
            body.callouts.len()
        )));
    }
    let mut results: Vec<Option<BatchItem>> = Vec::with_capacity(body.callouts.len());
    let mut requests = Vec::with_capacity(body.callouts.len());
    let mut slots = Vec::with_capacity(body.callouts.len());
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
            Err(err) => results.push(Some(BatchItem::Error(err.body()))),
        }
    }
    let answers = state.engine.enqueue(requests).await?;
    for (slot, answer) in slots.into_iter().zip(answers) {
        results[slot] = Some(match answer {
            Ok(Accepted::Created(c)) | Ok(Accepted::Existing(c)) => BatchItem::Callout(Box::new(c)),
            Err(refusal) => BatchItem::Error(refusal_error(refusal).body()),
        });
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or(BatchItem::Error(Value::Null)))
        .collect();
    Ok(axum::Json(BatchAnswer { results }).into_response())
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let callout = state
        .engine
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("callout", &id))?;
    Ok(callout_answer(StatusCode::OK, &callout))
}

pub async fn attempts(
    State(state): State<Arc<AppState>>,
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

/// A page of callouts.
#[derive(Debug, Serialize)]
struct Page<'a> {
    callouts: Vec<CalloutView<'a>>,
    next_cursor: Option<&'a str>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
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
        callouts.last().map(|c| c.id.as_str())
    } else {
        None
    };
    let page = Page {
        callouts: callouts.iter().map(CalloutView::of).collect(),
        next_cursor,
    };
    Ok(axum::Json(page).into_response())
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
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = state
        .engine
        .store()
        .replay(&id, crate::engine::now_millis())
        .await?;
    let callout = transition(result, &id, "replayed (only succeeded and failed ones can)")?;
    state.engine.wake();
    Ok(callout_answer(StatusCode::ACCEPTED, &callout))
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = state
        .engine
        .store()
        .cancel(&id, crate::engine::now_millis())
        .await?;
    let callout = transition(result, &id, "cancelled (only queued and retrying ones can)")?;
    Ok(callout_answer(StatusCode::OK, &callout))
}

pub async fn functions(State(state): State<Arc<AppState>>) -> Response {
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

pub async fn reload(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A callout as the first version showed it, through a `Value`.
    fn callout_value(c: &Callout) -> Value {
        fn time(ms: Millis) -> Value {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(Value::Null, Value::String)
        }
        let mut out = json!({
            "id": c.id,
            "function": c.function,
            "status": c.status,
            "attempts": c.attempts,
            "input": c.input,
            "created_at": time(c.created_at),
            "updated_at": time(c.updated_at),
            "next_attempt_at": c.next_attempt_at.map_or(Value::Null, time),
            "idempotency_key": c.idempotency_key,
        });
        out["result"] = c.result.clone().unwrap_or(Value::Null);
        out
    }

    fn callout(created_at: Millis) -> Callout {
        Callout {
            id: "0199f1c2-7a1b-7c3d-8e4f-5a6b7c8d9e0f".to_owned(),
            function: "shop.create_order".to_owned(),
            connection: "shop".to_owned(),
            status: Status::Queued,
            input: json!({"customer": "C-1", "quantity": 1, "note": "quote \" é 😀"}),
            attempts: 0,
            series_attempts: 0,
            series_started_at: created_at,
            created_at,
            updated_at: created_at,
            next_attempt_at: Some(created_at),
            idempotency_key: None,
            request_hash: String::new(),
            result: None,
        }
    }

    #[test]
    fn times_are_written_as_the_time_crate_writes_rfc_3339() {
        let mut times: Vec<Millis> = vec![
            0,
            1,
            10,
            100,
            120,
            123,
            999,
            1_000,
            -1,
            -999,
            -1_000,
            1_764_158_400_000,
            1_764_158_400_010,
            1_764_158_400_123,
            951_782_400_000,     // 2000-02-29
            -62_167_219_200_000, // 0000-01-01T00:00:00Z
            -62_167_219_200_001,
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            253_402_300_800_000,
            Millis::MIN,
            Millis::MAX,
        ];
        // A spread of times over the years 0 to 9999.
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(x.rem_euclid(315_537_897_600_000) - 62_167_219_200_000);
        }
        for ms in times {
            let expected =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .map_or(Value::Null, Value::String);
            assert_eq!(rfc3339(ms), expected, "{ms}");
            assert_eq!(
                serde_json::to_value(Rfc3339(ms)).ok(),
                Some(expected),
                "{ms}"
            );
        }
    }

    #[test]
    fn callout_view_writes_what_the_value_of_its_fields_writes() {
        let plain = callout(1_764_158_400_120);
        let mut done = callout(1_764_158_400_000);
        done.status = Status::Failed;
        done.attempts = 3;
        done.next_attempt_at = None;
        done.idempotency_key = Some("order:quote-1".to_owned());
        done.result =
            Some(json!({"status": "failed", "data": null, "error": {"kind": "rejected"}}));
        let mut odd = callout(Millis::MAX);
        odd.next_attempt_at = Some(-1);
        odd.input = json!({});
        odd.result = Some(Value::Null);
        for c in [plain, done, odd] {
            let view = serde_json::to_string(&CalloutView::of(&c)).ok();
            let value = serde_json::to_string(&callout_value(&c)).ok();
            assert_eq!(view, value);
        }
    }

    #[test]
    fn batch_and_page_answers_write_what_their_values_write() {
        let c = callout(1_764_158_400_001);
        let error = ApiError::invalid("item 1 is not a JSON object").body();
        let answer = BatchAnswer {
            results: vec![
                BatchItem::Callout(Box::new(c.clone())),
                BatchItem::Error(error.clone()),
            ],
        };
        let expected = json!({"results": [{"callout": callout_value(&c)}, error]});
        assert_eq!(
            serde_json::to_string(&answer).ok(),
            serde_json::to_string(&expected).ok()
        );
        for next_cursor in [None, Some(c.id.as_str())] {
            let page = Page {
                callouts: vec![CalloutView::of(&c), CalloutView::of(&c)],
                next_cursor,
            };
            let expected = json!({
                "callouts": [callout_value(&c), callout_value(&c)],
                "next_cursor": next_cursor,
            });
            assert_eq!(
                serde_json::to_string(&page).ok(),
                serde_json::to_string(&expected).ok()
            );
        }
    }
}
