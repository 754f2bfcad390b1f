//! The S3 wrapper: each call is one operation on the bucket of an `s3` connection — `put`,
//! `get`, `presign`, `delete` or `list` — turned into an [`Outcome`].
//!
//! One [`S3Wrapper`] per `s3` connection, built once with its secrets read and its templates
//! compiled; the bucket's client ([`S3Bucket`]) is made on first use. Keys, prefixes and file
//! ids are rendered as plain text (the SDK encodes keys on the wire) and a rendered key is
//! checked by [`check_key`] before anything is sent. Every operation is bounded by the call's
//! deadline. A `get` of an object over the connection's offload threshold is streamed into the
//! files bucket and answered with its reference; a `put` copies a stored file (a reference of
//! the files bucket) into this bucket and checks its SHA-256. What a failure means for a retry
//! is decided in one place, [`storage_kind`]. Messages name the connection, the bucket and the
//! key, never a credential.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome, Wrapper};
use url::Url;

use super::http::{MAX_BODY_BYTES, base64};
use super::net;
use super::output::{map_output, schema_mismatch};
use super::template::{Templates, Text, Vars};
use crate::metadata::config::S3Operation;
use crate::metadata::model::{Connection, JsonSchema, Protocol, Request, Settings};
use crate::metadata::values::{Secret, SecretRef};
use crate::offload::{FileError, Files, Incoming, S3Bucket, S3Error, UploadError, UploadLimits};
use crate::queue::FileRecord;

/// Longest object key, in bytes (the S3 limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// Most objects a `list` returns.
pub const MAX_LISTED: usize = 1000;

/// Bytes per part when a `put` copies a stored file, unless the file needs larger parts.
const PUT_PART_SIZE: u64 = 8 * 1024 * 1024;

/// Most parts one multipart upload may have (S3's limit).
const MAX_PARTS: u64 = 10_000;

/// The part size of a `put` of `size` bytes: [`PUT_PART_SIZE`], or larger so that the file
/// fits in [`MAX_PARTS`] parts.
fn put_part_size(size: u64) -> u64 {
    PUT_PART_SIZE.max(size.div_ceil(MAX_PARTS))
}

/// Runs the callouts of one `s3` connection.
pub struct S3Wrapper {
    connection: String,
    bucket: S3Bucket,
    /// The S3-compatible endpoint, when not AWS: checked against the network policy.
    endpoint: Option<Url>,
    allow_private: bool,
    templates: Templates,
    functions: HashMap<String, S3Function>,
    offload_threshold: u64,
    /// The files bucket, when the metadata has one.
    files: Option<Arc<Files>>,
    /// Templates read `settings`, which `s3` connections do not have.
    settings: Settings,
}

struct S3Function {
    operation: S3Operation,
    key: Option<Text>,
    prefix: Option<Text>,
    /// For `put`: the id of the stored file whose bytes are put.
    file: Option<Text>,
    expires: Duration,
    content_type: Option<String>,
    output: Vec<(String, String)>,
    output_schema: Option<JsonSchema>,
}

impl fmt::Debug for S3Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut functions: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        functions.sort_unstable();
        f.debug_struct("S3Wrapper")
            .field("connection", &self.connection)
            .field("bucket", &self.bucket.bucket)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("functions", &functions)
            .field(
                "files",
                &self.files.as_ref().map(|files| files.connection()),
            )
            .finish_non_exhaustive()
    }
}

/// A failed operation: the outcome to report (with the bytes read so far).
type Failed = Box<Outcome>;

fn failed(error: CallError, bytes: u64) -> Failed {
    Box::new(Outcome::failure(error, None, bytes))
}

impl S3Wrapper {
    /// Builds the wrapper of an `s3` connection. `secret` reads its secret references;
    /// `files` is the metadata's files bucket, if it has one.
    ///
    /// # Errors
    /// A message naming the connection: not an `s3` connection, a secret reference that
    /// cannot be read (the reference, never a value), a template that does not compile.
    pub fn build(
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
        files: Option<&Arc<Files>>,
    ) -> Result<S3Wrapper, String> {
        let name = &connection.name;
        let fail = |message: String| format!("connection `{name}`: {message}");
        if !matches!(connection.protocol, Protocol::S3 { .. }) {
            return Err(fail("is not an s3 connection".to_string()));
        }
        let bucket = S3Bucket::new(connection, secret)?;
        let mut templates = Templates::new();
        let mut functions = HashMap::new();
        for (fname, f) in &connection.functions {
            let Request::S3 {
                operation,
                key,
                prefix,
                expires,
                content_type,
                file,
            } = &f.request
            else {
                return Err(fail(format!("function `{fname}` is not an s3 request")));
            };
            let mut compile = |field: &str, source: &Option<String>| {
                source
                    .as_deref()
                    .map(|s| templates.text_field(&format!("functions.{fname}.{field}"), s))
                    .transpose()
                    .map_err(&fail)
            };
            let function = S3Function {
                operation: *operation,
                key: compile("key", key)?,
                prefix: compile("prefix", prefix)?,
                file: compile("file", file)?,
                expires: *expires,
                content_type: content_type.clone(),
                output: f.output.clone(),
                output_schema: f.output_schema.clone(),
            };
            functions.insert(fname.clone(), function);
        }
        Ok(S3Wrapper {
            connection: name.clone(),
            bucket,
            endpoint: connection.endpoint.clone(),
            allow_private: connection.allow_private_network,
            templates,
            functions,
            offload_threshold: connection.offload_threshold,
            files: files.cloned(),
            settings: Settings::new(),
        })
    }

    /// `connection.function`, as messages name a function.
    fn function_name(&self, call: &Call<'_>) -> String {
        format!("{}.{}", self.connection, call.function)
    }

    fn invalid(&self, call: &Call<'_>, message: impl fmt::Display) -> Failed {
        failed(
            CallError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "cannot build the request of `{}`: {message}",
                    self.function_name(call)
                ),
            ),
            0,
        )
    }

    /// Renders one of the function's templates for `call`.
    fn render(&self, text: &Text, call: &Call<'_>) -> Result<String, Failed> {
        let vars = Vars {
            input: call.input,
            settings: &self.settings,
            connection: &self.connection,
            endpoint: self.endpoint.as_ref().map_or("", Url::as_str),
            callout_id: call.callout_id,
            attempt: call.attempt,
            idempotency_key: call.idempotency_key,
        };
        self.templates
            .render_field(text, &vars)
            .map_err(|why| self.invalid(call, why))
    }

    /// The function's object key for `call`, rendered and checked.
    fn key(&self, f: &S3Function, call: &Call<'_>) -> Result<String, Failed> {
        let Some(template) = &f.key else {
            return Err(failed(
                CallError::new(
                    ErrorKind::Config,
                    format!("s3 function `{}` has no `key`", self.function_name(call)),
                ),
                0,
            ));
        };
        let key = self.render(template, call)?;
        check_key(&key, false).map_err(|why| self.invalid(call, why))?;
        Ok(key)
    }

    /// One operation, up to its data and the bytes it read.
    async fn run(&self, f: &S3Function, call: &Call<'_>) -> Result<(Value, u64), Failed> {
        match f.operation {
            S3Operation::Put => {
                let key = self.key(f, call)?;
                self.put(f, call, &key).await
            }
            S3Operation::Get => {
                let key = self.key(f, call)?;
                self.get(call, &key).await
            }
            S3Operation::Presign => {
                let key = self.key(f, call)?;
                let url = self
                    .bucket
                    .presign_get(&key, f.expires, None)
                    .await
                    .map_err(|err| failed(storage_error(&err), 0))?;
                let expires_at = crate::engine::now_millis()
                    .saturating_add(i64::try_from(f.expires.as_millis()).unwrap_or(i64::MAX));
                Ok((presign_data(&url, expires_at), 0))
            }
            S3Operation::Delete => {
                let key = self.key(f, call)?;
                self.bucket
                    .delete(&key)
                    .await
                    .map_err(|err| failed(storage_error(&err), 0))?;
                Ok((json!({ "key": key, "deleted": true }), 0))
            }
            S3Operation::List => {
                let prefix = match &f.prefix {
                    Some(template) => self.render(template, call)?,
                    None => String::new(),
                };
                check_key(&prefix, true).map_err(|why| self.invalid(call, why))?;
                let (items, truncated) = self
                    .bucket
                    .list(&prefix, MAX_LISTED)
                    .await
                    .map_err(|err| failed(storage_error(&err), 0))?;
                Ok((json!({ "items": items, "truncated": truncated }), 0))
            }
        }
    }

    /// Copies the stored file the function's `file` names to `key`, checking its SHA-256.
    async fn put(
        &self,
        f: &S3Function,
        call: &Call<'_>,
        key: &str,
    ) -> Result<(Value, u64), Failed> {
        let name = self.function_name(call);
        let config = |message: String| failed(CallError::new(ErrorKind::Config, message), 0);
        let Some(files) = &self.files else {
            return Err(config(format!(
                "s3 function `{name}` stores a file reference, but no connection has a `files:` block"
            )));
        };
        let Some(file) = &f.file else {
            return Err(config(format!(
                "s3 function `{name}` has no `file`; expected the id of a stored file, like `file: \"{{{{ input.file_id }}}}\"`"
            )));
        };
        let id = self.render(file, call)?;
        let record = files
            .find(&id, crate::engine::now_millis())
            .await
            .map_err(|err| {
                failed(
                    CallError::new(
                        ErrorKind::Internal,
                        format!("finding file `{id}` failed: {err}"),
                    ),
                    0,
                )
            })?
            .ok_or_else(|| self.invalid(call, format!("no file `{}`", shorten(&id))))?;
        let download = files
            .open(&record)
            .await
            .map_err(|err| failed(storage_error(&err), 0))?;
        let content_type = f.content_type.as_deref().unwrap_or(&record.content_type);
        let limits = UploadLimits {
            max_size: record.size,
            part_size: put_part_size(record.size),
        };
        let uploaded = self
            .bucket
            .upload(key, content_type, &[], chunks(download.body), limits, None)
            .await
            .map_err(|err| {
                let error = match err {
                    UploadError::TooLarge { .. } => CallError::new(
                        ErrorKind::InvalidResponse,
                        format!(
                            "stored file `{id}` holds more than the {} bytes its reference says",
                            record.size
                        ),
                    ),
                    UploadError::Body(why) => CallError::new(
                        ErrorKind::Unavailable,
                        format!("reading stored file `{id}` broke off: {why}"),
                    ),
                    UploadError::Storage(err) => storage_error(&err),
                };
                failed(error, 0)
            })?;
        if uploaded.sha256 != record.sha256 || uploaded.size != record.size {
            if let Err(err) = self.bucket.delete(key).await {
                tracing::warn!(connection = %self.connection, key, error = %err, "an object put from a file that did not match its reference could not be deleted");
            }
            return Err(failed(
                CallError::new(
                    ErrorKind::InvalidResponse,
                    format!(
                        "the bytes of stored file `{id}` do not match its reference (sha256 {}, expected {}); `{key}` in bucket `{}` was deleted again",
                        uploaded.sha256, record.sha256, self.bucket.bucket
                    ),
                ),
                uploaded.size,
            ));
        }
        let data = json!({
            "bucket": self.bucket.bucket,
            "key": key,
            "size": uploaded.size,
            "sha256": uploaded.sha256,
        });
        Ok((data, uploaded.size))
    }

    /// Reads the object at `key`: into the result, or into the files bucket when it is over
    /// the offload threshold.
    async fn get(&self, call: &Call<'_>, key: &str) -> Result<(Value, u64), Failed> {
        let download = self
            .bucket
            .open(key)
            .await
            .map_err(|err| failed(storage_error(&err), 0))?;
        let content_type = download
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_string());
        if download.size > self.offload_threshold {
            if let Some(files) = &self.files {
                let record = self
                    .offload(files, call, key, &content_type, download.body)
                    .await?;
                let reference = files
                    .reference(&record, crate::engine::now_millis())
                    .await
                    .map_err(|err| failed(storage_error(&err), record.size))?;
                return Ok((json!({ "file": reference }), record.size));
            }
            if download.size > MAX_BODY_BYTES {
                return Err(failed(too_large(&self.connection, key), 0));
            }
        }
        let bytes = read_all(download.body, MAX_BODY_BYTES)
            .await
            .map_err(|(read, error)| match error {
                Some(why) => failed(
                    CallError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "reading `{key}` in bucket `{}` of `{}` broke off: {why}",
                            self.bucket.bucket, self.connection
                        ),
                    ),
                    read,
                ),
                None => failed(too_large(&self.connection, key), read),
            })?;
        let read = bytes.len() as u64;
        Ok((get_data(key, &content_type, bytes), read))
    }

    /// Streams an object being read into the files bucket.
    async fn offload(
        &self,
        files: &Files,
        call: &Call<'_>,
        key: &str,
        content_type: &str,
        body: ByteStream,
    ) -> Result<FileRecord, Failed> {
        let incoming = Incoming {
            name: key
                .rsplit('/')
                .next()
                .filter(|name| !name.is_empty())
                .map(str::to_string),
            content_type: content_type.to_string(),
            origin: format!("callout:{}", call.callout_id),
            untrusted: false,
        };
        files.store(incoming, chunks(body)).await.map_err(|err| {
            let error = match err {
                FileError::TooLarge { max } => CallError::new(
                    ErrorKind::ResponseTooLarge,
                    format!("`{key}` is larger than the files bucket takes ({max} bytes)"),
                ),
                FileError::Body(why) => CallError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "reading `{key}` in bucket `{}` of `{}` broke off: {why}",
                        self.bucket.bucket, self.connection
                    ),
                ),
                FileError::Storage(err) => storage_error(&err),
                other => CallError::new(
                    ErrorKind::Internal,
                    format!("`{key}` could not be kept in the files bucket: {other}"),
                ),
            };
            failed(error, 0)
        })
    }
}

#[async_trait]
impl Wrapper for S3Wrapper {
    async fn call(&self, call: Call<'_>) -> Outcome {
        let Some(f) = self.functions.get(call.function) else {
            return Outcome::failure(
                CallError::new(
                    ErrorKind::Config,
                    format!(
                        "connection `{}` has no function `{}`",
                        self.connection, call.function
                    ),
                ),
                None,
                0,
            );
        };
        if let Some(endpoint) = &self.endpoint
            && let Err(refused) = net::check_url(endpoint, self.allow_private)
        {
            return Outcome::failure(
                CallError::new(ErrorKind::Refused, refused.to_string()),
                None,
                0,
            );
        }
        // A multipart upload cut off here (a large `put`, or a `get` offloaded to the files
        // bucket) aborts itself when dropped, so no parts stay behind.
        let deadline = tokio::time::Instant::from_std(call.deadline);
        let ran = match tokio::time::timeout_at(deadline, self.run(f, &call)).await {
            Ok(ran) => ran,
            Err(_) => Err(failed(
                CallError::new(
                    ErrorKind::Timeout,
                    format!(
                        "the {} of `{}` on bucket `{}` did not finish before the attempt's deadline",
                        operation_name(f.operation),
                        self.function_name(&call),
                        self.bucket.bucket,
                    ),
                ),
                0,
            )),
        };
        let (data, bytes) = match ran {
            Ok(ran) => ran,
            Err(outcome) => return *outcome,
        };
        let data = map_output(&f.output, data);
        if let Some(schema) = &f.output_schema
            && let Some(error) = schema_mismatch(
                &self.connection,
                call.function,
                schema,
                &data,
                &|text: &str| text.to_string(),
            )
        {
            return Outcome::failure(error, None, bytes);
        }
        Outcome::success(data, None, bytes)
    }
}

/// Checks a rendered object key, or with `prefix` a key prefix (which may be empty): at most
/// [`MAX_KEY_BYTES`], relative (no leading `/`), no `.` or `..` segment (which URL handling
/// on the way could resolve into another key) and no control character.
///
/// # Errors
/// What is wrong, with the value.
pub fn check_key(key: &str, prefix: bool) -> Result<(), String> {
    let what = if prefix { "prefix" } else { "key" };
    if key.is_empty() {
        return if prefix {
            Ok(())
        } else {
            Err(
                "the rendered key is empty; expected an object key like \"invoices/17.pdf\""
                    .to_string(),
            )
        };
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the rendered {what} is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ));
    }
    let shown = shorten(key);
    if key.chars().any(char::is_control) {
        return Err(format!(
            "the rendered {what} {shown:?} contains a control character"
        ));
    }
    if key.starts_with('/') {
        return Err(format!(
            "the rendered {what} {shown:?} starts with `/`; expected a {what} relative to the bucket, like \"invoices/17.pdf\""
        ));
    }
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(format!(
            "the rendered {what} {shown:?} has a `.` or `..` segment; expected plain names between the slashes"
        ));
    }
    Ok(())
}

/// At most the first 100 characters of a value echoed in a message.
fn shorten(value: &str) -> String {
    super::http::truncate(value, 100)
}

/// The kind of a storage failure: the one place that decides whether it is retried.
pub fn storage_kind(err: &S3Error) -> ErrorKind {
    if err.refused {
        // The network policy refused the endpoint's address, as for REST and SOAP.
        return ErrorKind::Refused;
    }
    match err.code.as_deref() {
        // Like an HTTP 404: the request names something that is not there; trying again
        // would not help.
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound") => ErrorKind::Rejected,
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken",
        ) => ErrorKind::Auth,
        _ if err.transient => ErrorKind::Unavailable,
        _ => ErrorKind::Rejected,
    }
}

fn storage_error(err: &S3Error) -> CallError {
    CallError::new(storage_kind(err), err.message.clone())
}

fn too_large(connection: &str, key: &str) -> CallError {
    CallError::new(
        ErrorKind::ResponseTooLarge,
        format!(
            "`{key}` of `{connection}` is larger than the {MAX_BODY_BYTES} bytes a result holds, and there is no files bucket to keep it"
        ),
    )
}

fn operation_name(operation: S3Operation) -> &'static str {
    match operation {
        S3Operation::Put => "put",
        S3Operation::Get => "get",
        S3Operation::Presign => "presign",
        S3Operation::Delete => "delete",
        S3Operation::List => "list",
    }
}

/// The chunks of an object being read, as a stream.
fn chunks(body: ByteStream) -> impl Stream<Item = Result<Bytes, ByteStreamError>> + Unpin + Send {
    Box::pin(futures_util::stream::unfold(body, |mut body| async move {
        body.next().await.map(|chunk| (chunk, body))
    }))
}

/// Reads a whole body of at most `limit` bytes.
///
/// # Errors
/// The bytes read, and why the body broke off (`None`: it is over `limit`).
async fn read_all(mut body: ByteStream, limit: u64) -> Result<Vec<u8>, (u64, Option<String>)> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| (bytes.len() as u64, Some(err.to_string())))?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(((bytes.len() + chunk.len()) as u64, None));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The data of a `get` read into the result.
fn get_data(key: &str, content_type: &str, bytes: Vec<u8>) -> Value {
    let size = bytes.len();
    json!({
        "key": key,
        "size": size,
        "content_type": content_type,
        "body": body_value(content_type, bytes),
    })
}

/// An object's bytes as JSON: parsed when its content type is JSON and it parses, text when
/// it is UTF-8, else `{ "base64": ... }`.
fn body_value(content_type: &str, bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => {
            if is_json(content_type)
                && let Ok(parsed) = serde_json::from_str(&text)
            {
                return parsed;
            }
            Value::String(text)
        }
        Err(err) => json!({ "base64": base64(err.as_bytes()) }),
    }
}

/// Whether a content type is JSON: `application/json` or `*/*+json`, any parameters aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// The data of a `presign`.
fn presign_data(url: &str, expires_at: crate::queue::Millis) -> Value {
    json!({ "url": url, "expires_at": crate::controller::rfc3339(expires_at) })
}

#[cfg(test)]
mod tests;
