//! The REST wrapper: renders a function's request, sends it, and turns the answer into an
//! [`Outcome`].
//!
//! One [`RestWrapper`] per `rest` connection, built once with its secrets resolved, its
//! templates compiled and its HTTP client made (see [`super::net`]). Each attempt is bounded
//! by the call's deadline from connect to last byte, a response body by [`MAX_BODY_BYTES`],
//! and a `Retry-After` by [`MAX_RETRY_AFTER`]. A message never holds a secret: the request is
//! never logged, reqwest's errors are reduced to their root cause (their text can hold the
//! URL, and an api key may sit in its query), and every excerpt of an upstream's answer has
//! the connection's secret values replaced by `***`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome, Wrapper};
use url::Url;

use super::net;
use super::template::{RequestTemplate, Templates, Text, Vars};
use crate::metadata::config::ApiKeyLocation;
use crate::metadata::model::{Auth, Connection, JsonSchema, Protocol, Request};
use crate::metadata::values::{Secret, SecretRef};

/// Largest response body read.
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Longest wait a `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Most characters of an upstream's error body quoted in a message.
const EXCERPT_CHARS: usize = 200;

/// Bytes of an error body read for the excerpt; the rest is not waited for.
const ERROR_BODY_BYTES: usize = 4096;

/// Runs the callouts of one `rest` connection.
pub struct RestWrapper {
    connection: String,
    endpoint: Url,
    allow_private: bool,
    client: reqwest::Client,
    templates: Templates,
    functions: HashMap<String, RestFunction>,
    /// The connection's headers, sent with every request.
    headers: HeaderMap,
    idempotency_header: HeaderName,
    auth: Credentials,
    redactor: Redactor,
}

struct RestFunction {
    method: Method,
    request: RequestTemplate,
    /// The endpoint joined with the path, when the path is no template (the same every call).
    fixed_url: Option<Result<Url, String>>,
    output: Vec<(String, String)>,
    output_schema: Option<JsonSchema>,
}

/// Authentication, resolved and ready to send.
enum Credentials {
    None,
    /// A header (`Authorization` for basic and bearer, the api key's header), marked
    /// sensitive so that it never shows in `Debug`.
    Header(HeaderName, HeaderValue),
    /// An api key in the query.
    Query(String, Secret),
}

impl fmt::Debug for RestWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut functions: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        functions.sort_unstable();
        let auth = match &self.auth {
            Credentials::None => "none".to_string(),
            Credentials::Header(name, _) => format!("header {name}: ***"),
            Credentials::Query(name, _) => format!("query {name}=***"),
        };
        f.debug_struct("RestWrapper")
            .field("connection", &self.connection)
            .field("endpoint", &self.endpoint.as_str())
            .field("allow_private_network", &self.allow_private)
            .field("functions", &functions)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl RestWrapper {
    /// Builds the wrapper of a `rest` connection. `secret` reads a secret reference.
    ///
    /// # Errors
    /// A message naming the connection and what could not be built: a secret reference that
    /// cannot be read (the reference, never a value), an auth type not supported yet, a
    /// header or template that cannot be used, the HTTP client.
    pub fn build(
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
    ) -> Result<RestWrapper, String> {
        let name = &connection.name;
        let fail = |message: String| format!("connection `{name}`: {message}");
        let Protocol::Rest { idempotency_header } = &connection.protocol else {
            return Err(fail("is not a rest connection".to_string()));
        };
        let endpoint = connection
            .endpoint
            .clone()
            .ok_or_else(|| fail("has no endpoint".to_string()))?;
        let idempotency_header = header_name(idempotency_header).map_err(&fail)?;
        let mut headers = HeaderMap::new();
        for (k, v) in &connection.headers {
            let value = HeaderValue::from_str(v)
                .map_err(|_| fail(format!("header `{k}` has a value that cannot be sent")))?;
            headers.insert(header_name(k).map_err(&fail)?, value);
        }
        let mut secrets = Vec::new();
        let auth = credentials(&connection.auth, secret, &mut secrets).map_err(&fail)?;
        let mut templates = Templates::new();
        let mut functions = HashMap::new();
        for (fname, f) in &connection.functions {
            let Request::Rest {
                method,
                path,
                query,
                headers,
                body,
            } = &f.request
            else {
                return Err(fail(format!("function `{fname}` is not a rest request")));
            };
            for (k, _) in headers {
                header_name(k).map_err(&fail)?;
            }
            let request = templates
                .request(fname, path, query, headers, body.as_ref())
                .map_err(&fail)?;
            let method = Method::from_bytes(method.as_str().as_bytes())
                .map_err(|_| fail(format!("function `{fname}` has an unusable method")))?;
            let fixed_url = match &request.path {
                Text::Literal(path) => Some(super::template::join(&endpoint, path)),
                Text::Template(_) => None,
            };
            functions.insert(
                fname.clone(),
                RestFunction {
                    method,
                    request,
                    fixed_url,
                    output: f.output.clone(),
                    output_schema: f.output_schema.clone(),
                },
            );
        }
        Ok(RestWrapper {
            connection: name.clone(),
            endpoint,
            allow_private: connection.allow_private_network,
            client: net::http_client(connection)?,
            templates,
            functions,
            headers,
            idempotency_header,
            auth,
            redactor: Redactor { secrets },
        })
    }

    /// The request of one call, ready to send.
    fn request(&self, f: &RestFunction, call: &Call<'_>) -> Result<reqwest::Request, CallError> {
        let invalid = |message: String| {
            CallError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "cannot build the request of `{}.{}`: {message}",
                    self.connection, call.function
                ),
            )
        };
        let vars = Vars {
            input: call.input,
            connection: &self.connection,
            endpoint: self.endpoint.as_str(),
            callout_id: call.callout_id,
            attempt: call.attempt,
            idempotency_key: call.idempotency_key,
        };
        let rendered = self.templates.render(&f.request, &vars).map_err(invalid)?;
        let mut url = match &f.fixed_url {
            Some(fixed) => fixed.clone(),
            None => super::template::join(&self.endpoint, &rendered.path),
        }
        .map_err(invalid)?;
        let api_key = match &self.auth {
            Credentials::Query(name, value) => Some((name.as_str(), value.expose())),
            _ => None,
        };
        if !rendered.query.is_empty() || api_key.is_some() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &rendered.query {
                pairs.append_pair(k, v);
            }
            if let Some((k, v)) = api_key {
                pairs.append_pair(k, v);
            }
        }
        net::check_url(&url, self.allow_private)
            .map_err(|refused| CallError::new(ErrorKind::Refused, refused.to_string()))?;

        let mut headers = self.headers.clone();
        for (k, v) in &rendered.headers {
            let name = header_name(k).map_err(invalid)?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| invalid(format!("header `{k}` has a value that cannot be sent")))?;
            headers.insert(name, value);
        }
        let key = HeaderValue::from_str(call.idempotency_key)
            .map_err(|_| invalid("the idempotency key cannot be sent in a header".to_string()))?;
        headers.insert(self.idempotency_header.clone(), key);
        if let Credentials::Header(name, value) = &self.auth {
            headers.insert(name.clone(), value.clone());
        }
        let mut request = reqwest::Request::new(f.method.clone(), url);
        if let Some(body) = &rendered.body {
            let bytes = serde_json::to_vec(body)
                .map_err(|err| invalid(format!("the body cannot be written as JSON: {err}")))?;
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            *request.body_mut() = Some(bytes.into());
        }
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Sends the request and reads the answer, recording the status and the bytes read as
    /// they arrive, so that a caller who stops waiting still knows them.
    async fn exchange(
        &self,
        request: reqwest::Request,
        seen: &mut Seen,
    ) -> Result<Answer, CallError> {
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|err| self.transport_error(&err))?;
        let status = response.status();
        seen.status = Some(status.as_u16());
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, SystemTime::now())),
            _ => None,
        };
        let failed = ErrorKind::from_status(status.as_u16()).is_some();
        if !failed
            && response
                .content_length()
                .is_some_and(|n| n > MAX_BODY_BYTES)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|err| self.transport_error(&err))?;
            let Some(chunk) = chunk else { break };
            seen.bytes += chunk.len() as u64;
            if failed {
                // Enough for the excerpt; the rest is not worth waiting for.
                let room = ERROR_BODY_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= ERROR_BODY_BYTES {
                    break;
                }
                continue;
            }
            if seen.bytes > MAX_BODY_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// The outcome of an answer: an error for an error status, else the mapped, checked data.
    fn outcome(&self, f: &RestFunction, call: &Call<'_>, answer: Answer, bytes: u64) -> Outcome {
        let code = answer.status.as_u16();
        if let Some(kind) = ErrorKind::from_status(code) {
            // Redact the whole body first: a key cut in two by the excerpt would slip through.
            let excerpt = excerpt(
                self.redactor
                    .redact(&String::from_utf8_lossy(&answer.body))
                    .as_bytes(),
            );
            let status = match answer.status.canonical_reason() {
                Some(reason) => format!("{code} {reason}"),
                None => code.to_string(),
            };
            let message = if excerpt.is_empty() {
                format!("`{}` answered with status {status}", self.connection)
            } else {
                format!(
                    "`{}` answered with status {status}: {excerpt}",
                    self.connection
                )
            };
            let mut error = CallError::new(kind, message);
            error.retry_after = answer.retry_after;
            return Outcome::failure(error, Some(code), bytes);
        }
        let body = if answer.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&answer.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into()))
        };
        let data = if f.output.is_empty() {
            body
        } else {
            Value::Object(
                f.output
                    .iter()
                    .map(|(field, pointer)| {
                        (
                            field.clone(),
                            body.pointer(pointer).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect(),
            )
        };
        if let Some(schema) = &f.output_schema
            && !schema.validator.is_valid(&data)
            && let Err(err) = schema.validator.validate(&data)
        {
            let pointer = err.instance_path().as_str().to_string();
            let at = if pointer.is_empty() {
                "the root".to_string()
            } else {
                format!("`{pointer}`")
            };
            let detail = truncate(
                &self.redactor.redact(&err.masked().to_string()),
                EXCERPT_CHARS,
            );
            let message = format!(
                "the answer of `{}.{}` does not match its output_schema at {at}: {}",
                self.connection, call.function, detail
            );
            return Outcome::failure(
                CallError::new(ErrorKind::InvalidResponse, message),
                Some(code),
                bytes,
            );
        }
        Outcome::success(data, Some(code), bytes)
    }

    /// A transport failure as a call error, from reqwest's error kinds and the policy's
    /// [`net::Refused`]. The message names the host, never the URL (its query may hold an
    /// api key).
    fn transport_error(&self, err: &reqwest::Error) -> CallError {
        if let Some(refused) = net::find_refused(err) {
            return CallError::new(ErrorKind::Refused, refused.message());
        }
        let host = self.endpoint.host_str().unwrap_or_default();
        let cause = self.redactor.redact(&net::root_cause(err).to_string());
        let conn = &self.connection;
        let (kind, message) = if err.is_redirect() {
            (
                ErrorKind::InvalidResponse,
                format!("`{conn}` ({host}) answered with a redirect that is not followed: {cause}"),
            )
        } else if err.is_connect() {
            // Before `is_timeout`: a connect timeout is a connect error (nothing was sent).
            (
                ErrorKind::Connect,
                format!("cannot connect to `{conn}` ({host}): {cause}"),
            )
        } else if err.is_timeout() {
            (
                ErrorKind::Timeout,
                format!("timed out waiting for `{conn}` ({host}): {cause}"),
            )
        } else if err.is_builder() {
            (
                ErrorKind::InvalidRequest,
                format!("cannot build the request to `{conn}`: {cause}"),
            )
        } else {
            (
                ErrorKind::Unavailable,
                format!("the exchange with `{conn}` ({host}) failed: {cause}"),
            )
        };
        CallError::new(kind, message)
    }
}

#[async_trait]
impl Wrapper for RestWrapper {
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
        let request = match self.request(f, &call) {
            Ok(request) => request,
            Err(error) => return Outcome::failure(error, None, 0),
        };
        let mut seen = Seen::default();
        let deadline = tokio::time::Instant::from_std(call.deadline);
        let result = tokio::time::timeout_at(deadline, self.exchange(request, &mut seen)).await;
        match result {
            Ok(Ok(answer)) => self.outcome(f, &call, answer, seen.bytes),
            Ok(Err(error)) => Outcome::failure(error, seen.status, seen.bytes),
            Err(_elapsed) => {
                let progress = match seen.status {
                    Some(status) => format!(
                        " (status {status} received, {} bytes of the body read)",
                        seen.bytes
                    ),
                    None => String::new(),
                };
                Outcome::failure(
                    CallError::new(
                        ErrorKind::Timeout,
                        format!(
                            "`{}` gave no complete answer before the attempt's deadline{progress}",
                            self.connection
                        ),
                    ),
                    seen.status,
                    seen.bytes,
                )
            }
        }
    }
}

/// What the exchange has seen so far.
#[derive(Debug, Default)]
struct Seen {
    status: Option<u16>,
    bytes: u64,
}

/// A complete answer.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

fn too_big() -> CallError {
    CallError::new(ErrorKind::InvalidResponse, "response body exceeds 10 MiB")
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name that can be sent"))
}

/// Resolves the connection's auth. Every secret value read is added to `secrets`, for the
/// redactor.
fn credentials(
    auth: &Auth,
    secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
    secrets: &mut Vec<Secret>,
) -> Result<Credentials, String> {
    let mut read = |r: &SecretRef| {
        let value = secret(r)?;
        secrets.push(value.clone());
        Ok::<Secret, String>(value)
    };
    let sensitive = |text: String| {
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| "a credential cannot be sent in a header (it holds a line break or a control character)".to_string())?;
        value.set_sensitive(true);
        Ok::<HeaderValue, String>(value)
    };
    Ok(match auth {
        Auth::None => Credentials::None,
        Auth::Basic { username, password } => {
            let username = match SecretRef::parse(username) {
                Ok(r) if username.starts_with("${") => read(&r)?.expose().to_string(),
                _ => username.clone(),
            };
            let password = read(password)?;
            let encoded = base64(format!("{username}:{}", password.expose()).as_bytes());
            secrets.push(Secret::new(encoded.clone()));
            Credentials::Header(AUTHORIZATION, sensitive(format!("Basic {encoded}"))?)
        }
        Auth::Bearer { token } => {
            let token = read(token)?;
            Credentials::Header(
                AUTHORIZATION,
                sensitive(format!("Bearer {}", token.expose()))?,
            )
        }
        Auth::ApiKey {
            location,
            name,
            value,
        } => {
            let value = read(value)?;
            match location {
                ApiKeyLocation::Header => {
                    Credentials::Header(header_name(name)?, sensitive(value.expose().to_string())?)
                }
                ApiKeyLocation::Query => Credentials::Query(name.clone(), value),
            }
        }
        Auth::OAuth2ClientCredentials { .. } => {
            return Err("auth type `oauth2_client_credentials` is not supported yet; its callouts fail until a later version adds it".to_string());
        }
        Auth::OAuth2RefreshToken { .. } => {
            return Err("auth type `oauth2_refresh_token` is not supported yet; its callouts fail until a later version adds it".to_string());
        }
        Auth::Aws { .. } => {
            return Err("auth type `aws` applies to s3 connections only".to_string());
        }
    })
}

/// Replaces the connection's secret values in text that may quote them (an upstream's error
/// body, an error's cause).
struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    /// Replaces each secret, as it is and in the encoded forms a URL or a form gives it.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            let value = secret.expose();
            if value.is_empty() {
                continue;
            }
            let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let percent =
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            for form in [value, form.as_str(), percent.as_str()] {
                if out.contains(form) {
                    out = out.replace(form, "***");
                }
            }
        }
        out
    }
}

/// A short, single-line excerpt of a body: at most [`EXCERPT_CHARS`] characters.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&flat, EXCERPT_CHARS)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The wait a `Retry-After` value asks for, in seconds or as an HTTP date, capped at
/// [`MAX_RETRY_AFTER`]. `None` when it cannot be read.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Standard base64 with padding (RFC 4648), for the basic auth header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn excerpts_are_single_line_and_capped() {
        assert_eq!(excerpt(b"  bad\n\n request \t"), "bad request");
        let long = "é".repeat(300);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn redactor_replaces_encoded_secrets_and_keys_cut_by_the_excerpt() {
        let r = Redactor {
            secrets: vec![Secret::new("ab+/cd=CANARY")],
        };
        let echoed = "bad request to /x?api_key=ab%2B%2Fcd%3DCANARY or ab%2B%2Fcd%3DCANARY";
        assert!(!r.redact(echoed).contains("CANARY"), "{}", r.redact(echoed));
        let body = format!("{} ab+/cd=CANARY", "x".repeat(EXCERPT_CHARS - 5));
        let shown = excerpt(r.redact(&body).as_bytes());
        assert!(!shown.contains("ab+/"), "{shown}");
    }

    #[test]
    fn redactor_replaces_every_secret_value() {
        let r = Redactor {
            secrets: vec![Secret::new("canary-1"), Secret::new("")],
        };
        assert_eq!(
            r.redact("invalid key canary-1 (canary-1)"),
            "invalid key *** (***)"
        );
    }
}
