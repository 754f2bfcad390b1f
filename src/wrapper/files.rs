//! The HTTP wrappers and the files bucket: a successful answer over the connection's offload
//! threshold streamed into it ([`offload`]), and a stored file streamed out of it as a request
//! body ([`stored_file`], [`attach`]). Neither body is ever held whole.
//!
//! An answer being offloaded is stored by a task of its own, fed the bytes already read and
//! then the rest of the response, while the attempt waits for it under its deadline. When the
//! attempt stops waiting (its deadline passed, or its task was aborted), the body fed to the
//! store ends with an error, so that the store aborts its multipart upload and deletes what it
//! wrote; a store that completes after that is discarded (object and reference). The task
//! outlives the attempt only for that clean-up, which the storage's own timeouts bound; it is
//! a task of its own precisely so that an attempt cut short cannot cut the clean-up short too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use switchboard_sdk::{CallError, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::engine::now_millis;
use crate::offload::{FileError, Files, Incoming};
use crate::queue::FileRecord;

/// Why an answer was not offloaded.
pub(super) enum OffloadError {
    /// The upstream's answer broke off: a transport failure, for the caller to word.
    Broke(reqwest::Error),
    /// The answer is over the files bucket's limit, or the bucket failed.
    Failed(CallError),
}

/// Why the body fed to the store ended early.
#[derive(Debug, thiserror::Error)]
enum Cut {
    #[error("the upstream's answer broke off")]
    Broke,
    #[error("the attempt stopped waiting for the answer to be stored")]
    Abandoned,
}

/// The result data of an offloaded answer: `{ "file": <reference> }`.
pub(super) fn data(reference: Value) -> Value {
    json!({ "file": reference })
}

/// Streams `response` (after the bytes in `read`, already taken from it) into `files` as the
/// answer of callout `callout_id` to `connection`, and returns the file's reference. Bytes taken
/// from `response` are added to `counted` as they arrive, so that an attempt cut short still
/// knows how many it read.
///
/// # Errors
/// The answer broke off ([`OffloadError::Broke`]); it is over the bucket's `max_size`
/// ([`ErrorKind::ResponseTooLarge`]); the bucket or the store failed
/// ([`ErrorKind::Unavailable`], naming the files bucket). Nothing stays in the bucket.
///
/// # Cancel safety
/// Dropping the future stops the store, which then removes what it wrote (see the module).
pub(super) async fn offload(
    files: &Arc<Files>,
    connection: &str,
    callout_id: &str,
    read: Vec<u8>,
    response: reqwest::Response,
    counted: &Arc<AtomicU64>,
) -> Result<Value, OffloadError> {
    let max = files.policy.max_size;
    let too_large = || {
        OffloadError::Failed(CallError::new(
            ErrorKind::ResponseTooLarge,
            format!(
                "the answer of `{connection}` is larger than the {max} bytes the files bucket (`{}`) takes",
                files.connection()
            ),
        ))
    };
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let incoming = Incoming {
        name: None,
        content_type,
        origin: format!("callout:{callout_id}"),
        untrusted: false,
    };
    let stop = CancellationToken::new();
    // Dropped when this future is (the deadline, an aborted attempt): the store stops.
    let _stop_when_dropped = stop.clone().drop_guard();
    let broke = Arc::new(Mutex::new(None));
    let body = feed(read, response, stop.clone(), broke.clone(), counted.clone());
    let storing = files.clone();
    let task = tokio::spawn(async move {
        let stored = storing.store(incoming, body).await;
        match stored {
            Ok(record) if stop.is_cancelled() => {
                // Stored just as the attempt gave up: nothing will hand out the reference.
                storing.discard(&record).await;
                Err(FileError::Body(Cut::Abandoned.to_string()))
            }
            other => other,
        }
    });
    let stored = task.await.map_err(|join| {
        OffloadError::Failed(CallError::new(
            ErrorKind::Internal,
            format!("storing the answer of `{connection}` failed unexpectedly: {join}"),
        ))
    })?;
    let failed = |what: String| {
        OffloadError::Failed(CallError::new(
            ErrorKind::Unavailable,
            format!(
                "the answer of `{connection}` could not be stored in the files bucket (`{}`): {what}",
                files.connection()
            ),
        ))
    };
    let record = match stored {
        Ok(record) => record,
        Err(FileError::TooLarge { .. }) => return Err(too_large()),
        Err(err) => {
            let upstream = broke.lock().ok().and_then(|mut slot| slot.take());
            return Err(match upstream {
                Some(err) => OffloadError::Broke(err),
                None => failed(err.to_string()),
            });
        }
    };
    let reference = files
        .reference(&record, now_millis())
        .await
        .map_err(|err| failed(err.to_string()))?;
    Ok(reference)
}

/// The body fed to the store: `read`, then the rest of `response`, until `stop`. A failure of
/// the response is kept in `broke` (its text may hold the URL, so it is worded by the caller,
/// never by the store).
fn feed(
    read: Vec<u8>,
    response: reqwest::Response,
    stop: CancellationToken,
    broke: Arc<Mutex<Option<reqwest::Error>>>,
    counted: Arc<AtomicU64>,
) -> impl Stream<Item = Result<Bytes, Cut>> + Unpin + Send + 'static {
    let first = (!read.is_empty()).then(|| Ok(Bytes::from(read)));
    let rest = stream::unfold(Some(Box::pin(response.bytes_stream())), move |body| {
        let (stop, broke, counted) = (stop.clone(), broke.clone(), counted.clone());
        async move {
            let mut body = body?;
            tokio::select! {
                biased;
                () = stop.cancelled() => Some((Err(Cut::Abandoned), None)),
                next = body.next() => match next? {
                    Ok(chunk) => {
                        counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        Some((Ok(chunk), Some(body)))
                    }
                    Err(err) => {
                        if let Ok(mut slot) = broke.lock() {
                            *slot = Some(err);
                        }
                        Some((Err(Cut::Broke), None))
                    }
                },
            }
        }
    });
    Box::pin(stream::iter(first).chain(rest))
}

/// The stored file with id `id` that function `function` of `connection` sends as its body.
///
/// # Errors
/// No files bucket ([`ErrorKind::Config`]); no such file, or it expired
/// ([`ErrorKind::InvalidRequest`], from `invalid`); the store failed
/// ([`ErrorKind::Unavailable`]).
pub(super) async fn stored_file(
    files: Option<&Arc<Files>>,
    connection: &str,
    function: &str,
    id: &str,
    invalid: impl Fn(String) -> CallError,
) -> Result<FileRecord, CallError> {
    let Some(files) = files else {
        return Err(CallError::new(
            ErrorKind::Config,
            format!(
                "function `{connection}.{function}` sends a stored file (`body_file`), but no connection has a `files:` block"
            ),
        ));
    };
    match files.find(id, now_millis()).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(invalid(format!("no file `{id}`"))),
        Err(err) => Err(CallError::new(
            ErrorKind::Unavailable,
            format!("the file `{id}` could not be looked up: {err}"),
        )),
    }
}

/// Makes the bytes of `record` the body of `request`, streamed from the files bucket as they
/// are sent: `Content-Length` is the file's size and `Content-Type`, unless the request has
/// one, the file's. Each call opens the file anew (a streamed body cannot be sent twice).
///
/// # Errors
/// The object is gone ([`ErrorKind::InvalidRequest`]), the bucket failed
/// ([`ErrorKind::Unavailable`]) or did not answer before `deadline` ([`ErrorKind::Timeout`]).
pub(super) async fn attach(
    files: &Files,
    record: &FileRecord,
    request: &mut reqwest::Request,
    deadline: Instant,
) -> Result<(), CallError> {
    let id = &record.id;
    let opening = files.open(record);
    let download = match tokio::time::timeout_at(deadline.into(), opening).await {
        Ok(Ok(download)) => download,
        Ok(Err(err)) if err.code.as_deref() == Some("NoSuchKey") => {
            return Err(CallError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "the file `{id}` is no longer in the files bucket (`{}`)",
                    files.connection()
                ),
            ));
        }
        Ok(Err(err)) => {
            return Err(CallError::new(
                ErrorKind::Unavailable,
                format!("the file `{id}` could not be read: {err}"),
            ));
        }
        Err(_elapsed) => {
            return Err(CallError::new(
                ErrorKind::Timeout,
                format!("the file `{id}` could not be opened before the attempt's deadline"),
            ));
        }
    };
    let headers = request.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(record.size));
    if !headers.contains_key(CONTENT_TYPE)
        && let Ok(value) = HeaderValue::from_str(&record.content_type)
    {
        headers.insert(CONTENT_TYPE, value);
    }
    *request.body_mut() = Some(reqwest::Body::wrap_stream(chunks(download.body)));
    Ok(())
}

/// The chunks of an object being read, as a stream.
fn chunks(
    body: ByteStream,
) -> impl Stream<Item = Result<Bytes, ByteStreamError>> + Unpin + Send + 'static {
    Box::pin(stream::unfold(body, |mut body| async move {
        body.next().await.map(|chunk| (chunk, body))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response whose body is `chunks` (`Err` items fail it).
    fn response(chunks: Vec<Result<&'static [u8], std::io::Error>>) -> reqwest::Response {
        let body = stream::iter(chunks.into_iter().map(|c| c.map(Bytes::from_static)))
            .chain(stream::pending());
        reqwest::Response::from(axum::http::Response::new(reqwest::Body::wrap_stream(body)))
    }

    fn slots() -> (
        CancellationToken,
        Arc<Mutex<Option<reqwest::Error>>>,
        Arc<AtomicU64>,
    ) {
        (CancellationToken::new(), Arc::default(), Arc::default())
    }

    #[tokio::test]
    async fn the_store_is_fed_what_was_read_then_the_rest_until_the_attempt_stops_waiting() {
        let (stop, broke, counted) = slots();
        let mut body = feed(
            b"head".to_vec(),
            response(vec![Ok(b"tail")]),
            stop.clone(),
            broke,
            counted.clone(),
        );
        assert_eq!(
            body.next().await.map(|c| c.ok()),
            Some(Some(Bytes::from("head")))
        );
        assert_eq!(
            body.next().await.map(|c| c.ok()),
            Some(Some(Bytes::from("tail")))
        );
        assert_eq!(
            counted.load(Ordering::Relaxed),
            4,
            "only what came after `read`"
        );
        // The upstream sends nothing more; the attempt gives up.
        stop.cancel();
        let cut = body
            .next()
            .await
            .and_then(Result::err)
            .map(|e| e.to_string());
        assert_eq!(
            cut.as_deref(),
            Some("the attempt stopped waiting for the answer to be stored")
        );
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn an_answer_that_breaks_off_is_kept_for_the_caller_to_word() {
        let (stop, broke, counted) = slots();
        let failure = std::io::Error::other("connection reset");
        let mut body = feed(
            Vec::new(),
            response(vec![Ok(b"abc"), Err(failure)]),
            stop,
            broke.clone(),
            counted,
        );
        assert_eq!(
            body.next().await.map(|c| c.ok()),
            Some(Some(Bytes::from("abc")))
        );
        let cut = body
            .next()
            .await
            .and_then(Result::err)
            .map(|e| e.to_string());
        assert_eq!(cut.as_deref(), Some("the upstream's answer broke off"));
        assert!(body.next().await.is_none());
        let kept = broke.lock().expect("lock").take();
        assert!(
            kept.is_some_and(|err| err.is_body() || err.is_decode()),
            "a body error is kept"
        );
    }
}
