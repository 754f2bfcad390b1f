//! `POST /v1/files` (an upload into the files bucket) and `GET /v1/files/{id}` (a fresh
//! download link to it).
//!
//! An upload is streamed straight into [`Files::store`]: never held whole, never under the
//! server's JSON body limit (`--max-body-bytes`), only under the bucket's `max_size`. It is
//! answered `201` only once the object is complete, scanned and recorded; every refusal leaves
//! nothing behind. After a refusal the answer goes out at once and the rest of the body is read
//! and dropped in the background for a moment ([`DRAIN_TIME`], [`DRAIN_BYTES`]), so that a
//! client still sending reads the answer rather than a reset connection. A client that waits
//! for `100 Continue` is refused before it sends anything.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::engine::now_millis;
use crate::offload::{FileError, Files, Incoming, S3Error, ScanRejection};
use crate::queue::{FileRecord, StoreError};

/// The header that may carry an upload's name (percent-encoded UTF-8).
const FILE_NAME_HEADER: &str = "x-file-name";

/// The form part that carries the file.
const FILE_PART: &str = "file";

/// Longest the rest of a refused upload is read and dropped.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Most bytes of a refused upload read and dropped.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// The query of `POST /v1/files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    name: Option<String>,
}

/// The query of `GET /v1/files/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    format: Option<String>,
}

/// `POST /v1/files`: stores the body (raw, or the `file` part of a form) and answers its
/// reference.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let files = files_bucket(&state)?;
    let Ok(_place) = state.uploads.clone().try_acquire_owned() else {
        state.engine.metrics().file_rejected("busy");
        let mut busy = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_uploads",
            "the most uploads this server takes at once are under way (--max-concurrent-uploads); try again shortly",
        )
        .into_response();
        let waits_to_send = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits_to_send {
            drain_later(request.into_body().into_data_stream());
        }
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(busy);
    };
    let Query(params) = params.map_err(|e| {
        ApiError::invalid(format!(
            "the query does not fit: {}; expected only `name`",
            e.body_text()
        ))
    })?;
    let headers = request.headers();
    let given_name = params.name.or_else(|| header_name(headers));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_form = content_type
        .as_deref()
        .and_then(crate::offload::normalise_content_type)
        .is_some_and(|ct| ct == "multipart/form-data");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // A form carries its boundaries and other parts besides the file: allow for them.
    let slack = if is_form { state.body_limit as u64 } else { 0 };
    // Whether the client waits for `100 Continue` (sent when the body is first read) before
    // it sends the body: then a refusal before reading needs no draining.
    let waits_to_send = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if let Some(length) = declared
        && length > files.policy.max_size.saturating_add(slack)
    {
        state.engine.metrics().file_rejected("too_large");
        if !waits_to_send {
            drain_later(request.into_body().into_data_stream());
        }
        return Err(refusal(FileError::TooLarge {
            max: files.policy.max_size,
        }));
    }
    let stored = if is_form {
        upload_form(&state, &files, given_name, request).await?
    } else {
        let incoming = Incoming {
            name: given_name,
            content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
            origin: "upload".into(),
            untrusted: true,
        };
        let mut body = request.into_body().into_data_stream();
        match files.store(incoming, &mut body).await {
            Ok(record) => record,
            Err(err) => {
                state.engine.metrics().file_rejected(reason(&err));
                // A refused content type is refused before the body is read.
                if !(waits_to_send && matches!(err, FileError::ContentType(..))) {
                    drain_later(body);
                }
                return Err(refusal(err));
            }
        }
    };
    state.engine.metrics().file_stored(stored.size);
    tracing::info!(file = %stored.id, size = stored.size, content_type = %stored.content_type, "file uploaded");
    let reference = files
        .reference(&stored, now_millis())
        .await
        .map_err(|err| link_failed(&stored, err))?;
    let mut response = (StatusCode::CREATED, axum::Json(reference)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/files/{}", stored.id)) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Stores the one `file` part of a `multipart/form-data` body; other parts are read and
/// dropped (at most `--max-body-bytes` of them), and a second `file` part refuses the upload.
async fn upload_form(
    state: &AppState,
    files: &Files,
    given_name: Option<String>,
    request: Request,
) -> Result<FileRecord, ApiError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| invalid_upload(format!("the form cannot be read: {}", e.body_text())))?;
    let mut stored: Option<FileRecord> = None;
    let mut other_bytes = 0usize;
    let refused = loop {
        let mut field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break None,
            Err(e) => break Some(invalid_upload(format!("the form cannot be read: {e}"))),
        };
        if field.name() != Some(FILE_PART) {
            let mut failed = None;
            while let Some(chunk) = field.next().await {
                match chunk {
                    Ok(chunk) => other_bytes += chunk.len(),
                    Err(e) => {
                        failed = Some(invalid_upload(format!("the form cannot be read: {e}")));
                        break;
                    }
                }
                if other_bytes > state.body_limit {
                    failed = Some(invalid_upload(format!(
                        "the form's parts other than `{FILE_PART}` hold more than {} bytes",
                        state.body_limit
                    )));
                    break;
                }
            }
            match failed {
                Some(refused) => break Some(refused),
                None => continue,
            }
        }
        if stored.is_some() {
            break Some(invalid_upload(format!(
                "the form has more than one `{FILE_PART}` part; send one file per request"
            )));
        }
        let incoming = Incoming {
            name: field
                .file_name()
                .map(str::to_string)
                .or_else(|| given_name.clone()),
            content_type: field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_string(),
            origin: "upload".into(),
            untrusted: true,
        };
        match files.store(incoming, &mut field).await {
            Ok(record) => stored = Some(record),
            Err(err) => {
                state.engine.metrics().file_rejected(reason(&err));
                drop(field);
                drain_form_later(form);
                return Err(refusal(err));
            }
        }
    };
    match (stored, refused) {
        (Some(record), None) => Ok(record),
        (stored, Some(refused)) => {
            if let Some(record) = stored {
                files.discard(&record).await;
            }
            state.engine.metrics().file_rejected("invalid_upload");
            drain_form_later(form);
            Err(refused)
        }
        (None, None) => {
            state.engine.metrics().file_rejected("invalid_upload");
            Err(invalid_upload(format!(
                "the form has no `{FILE_PART}` part; send the file as a part named `{FILE_PART}`, like `curl -F {FILE_PART}=@invoice.pdf`"
            )))
        }
    }
}

/// `GET /v1/files/{id}`: a redirect to a fresh download link, or with `?format=json` (or
/// `Accept: application/json`) the reference.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let files = files_bucket(&state)?;
    let Query(params) = params.map_err(|e| {
        ApiError::invalid(format!(
            "the query does not fit: {}; expected only `format`",
            e.body_text()
        ))
    })?;
    let as_json = match params.format.as_deref() {
        Some("json") => true,
        Some("redirect") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown format {other:?}; expected `json` (the reference) or `redirect` (the default)"
            )));
        }
        None => wants_json(&headers),
    };
    let now = now_millis();
    let record = files
        .find(&id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("file", &id))?;
    let no_store = (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if as_json {
        let reference = files
            .reference(&record, now)
            .await
            .map_err(|err| link_failed(&record, err))?;
        return Ok(([no_store], axum::Json(reference)).into_response());
    }
    let (url, _) = files
        .link(&record, now)
        .await
        .map_err(|err| link_failed(&record, err))?;
    let location = HeaderValue::from_str(&url).map_err(|err| ApiError {
        internal: Some(format!("the link is not a header value: {err}")),
        ..ApiError::new(
            StatusCode::BAD_GATEWAY,
            "storage_failed",
            format!("no download link to file `{}` could be made", record.id),
        )
    })?;
    Ok((
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location), no_store],
    )
        .into_response())
}

/// The files bucket of the metadata loaded now.
fn files_bucket(state: &AppState) -> Result<Arc<Files>, ApiError> {
    state.engine.version().files.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_files_bucket",
            "no files bucket is configured: give one `s3` connection a `files:` block in the metadata (see docs/metadata.md)",
        )
    })
}

/// The name in [`FILE_NAME_HEADER`], percent-decoded.
fn header_name(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(FILE_NAME_HEADER)?.as_bytes();
    Some(
        percent_encoding::percent_decode(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// Whether `Accept` asks for JSON rather than the file.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
}

fn invalid_upload(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_upload", message)
}

/// The label of `switchboard_files_rejected_total` for `err`.
fn reason(err: &FileError) -> &'static str {
    match err {
        FileError::ContentType(..) => "content_type",
        FileError::TooLarge { .. } => "too_large",
        FileError::Rejected(ScanRejection::Infected(_)) => "infected",
        FileError::Rejected(_) => "scan_failed",
        FileError::Body(_) => "invalid_upload",
        FileError::Storage(_) => "storage_failed",
        FileError::Store(_) => "unavailable",
    }
}

/// The answer to an upload that was not stored.
fn refusal(err: FileError) -> ApiError {
    let message = err.to_string();
    match err {
        FileError::ContentType(..) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type_not_allowed",
            message,
        ),
        FileError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", message)
        }
        FileError::Rejected(ScanRejection::Infected(_)) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "file_infected", message)
        }
        FileError::Rejected(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "scan_failed", message)
        }
        FileError::Body(why) => invalid_upload(format!(
            "the upload could not be read: {why}; the file was not stored"
        )),
        FileError::Storage(err) => ApiError {
            internal: Some(err.message),
            ..ApiError::new(
                StatusCode::BAD_GATEWAY,
                "storage_failed",
                "the file was not stored: the storage service failed or could not be reached; retry later",
            )
        },
        FileError::Store(err) => store_failed(err),
    }
}

fn store_failed(err: StoreError) -> ApiError {
    ApiError {
        internal: Some(err.to_string()),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the file was not stored: its reference cannot be recorded right now; retry shortly",
        )
    }
}

fn link_failed(record: &FileRecord, err: S3Error) -> ApiError {
    ApiError {
        internal: Some(err.message),
        ..ApiError::new(
            StatusCode::BAD_GATEWAY,
            "storage_failed",
            format!("no download link to file `{}` could be made", record.id),
        )
    }
}

/// Reads and drops what is left of a refused body in the background, for [`DRAIN_TIME`] and
/// [`DRAIN_BYTES`] at most. The task owns nothing but the body and ends on its own within
/// [`DRAIN_TIME`].
fn drain_later<S, E>(mut body: S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut read = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len() as u64;
                if read > DRAIN_BYTES {
                    return;
                }
            }
        })
        .await;
    });
}

/// [`drain_later`] for a form: the rest of its parts.
fn drain_form_later(mut form: Multipart) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut read = 0u64;
            while let Ok(Some(mut field)) = form.next_field().await {
                while let Some(Ok(chunk)) = field.next().await {
                    read += chunk.len() as u64;
                    if read > DRAIN_BYTES {
                        return;
                    }
                }
            }
        })
        .await;
    });
}
