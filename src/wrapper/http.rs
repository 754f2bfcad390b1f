//! What the HTTP wrappers (REST and SOAP) share: credentials, redaction, and one attempt's
//! exchange with the upstream, from sending the request to the messages of its failures.
//!
//! An [`Upstream`] is one connection's HTTP side: its name, endpoint, client (made by
//! [`net::http_client`]) and [`Redactor`]. [`Upstream::send`] bounds an attempt by the call's
//! deadline from connect to last byte, a response body by [`MAX_BODY_BYTES`] (a successful
//! one over the connection's offload threshold goes to the files bucket instead, when there is
//! one), and a `Retry-After` by [`MAX_RETRY_AFTER`]. A message never holds a secret: the
//! request is never logged, reqwest's errors are reduced to their root cause (their text can
//! hold the URL, and an api key may sit in its query), and every excerpt of an upstream's
//! answer has the connection's secret values replaced by `***`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use switchboard_sdk::{CallError, ErrorKind, Outcome};
use url::Url;

use super::{files, net, xml};
use crate::metadata::config::ApiKeyLocation;
use crate::metadata::model::{Auth, Connection, JsonSchema};
use crate::metadata::values::{Secret, SecretRef};
use crate::offload::Files;

/// Largest response body read.
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Longest wait a `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Most characters of an upstream's answer quoted in a message.
pub(super) const EXCERPT_CHARS: usize = 200;

/// Bytes of an error body read for the excerpt when only the excerpt is wanted; the rest is
/// not waited for.
const ERROR_BODY_BYTES: usize = 4096;

/// One connection's HTTP side, shared by the wrappers that speak HTTP.
pub(super) struct Upstream {
    pub connection: String,
    pub endpoint: Url,
    pub allow_private: bool,
    pub client: reqwest::Client,
    pub redactor: Redactor,
    /// The files bucket, when the metadata has one: large answers go there (see
    /// [`Upstream::send`]), and REST's `body_file` comes from there.
    pub files: Option<Arc<Files>>,
    /// A successful answer's body over this many bytes is offloaded to `files`.
    pub offload_threshold: u64,
}

/// How much of an answer with an error status [`Upstream::send`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorBodies {
    /// Enough for the excerpt ([`ERROR_BODY_BYTES`]); the status says what happened.
    Excerpt,
    /// The whole body, bounded like any other (a SOAP fault comes with an error status).
    Whole,
}

/// A complete answer.
pub(super) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    /// The answer's headers (a paginated function reads its `Link` header).
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The reference of a body offloaded to the files bucket; `body` is then empty.
    pub stored: Option<Value>,
}

/// What the exchange has seen so far.
#[derive(Debug, Default)]
struct Seen {
    status: Option<u16>,
    bytes: u64,
    /// Bytes of a body being offloaded, counted by the store's feed.
    offloaded: Arc<AtomicU64>,
}

impl Seen {
    fn bytes(&self) -> u64 {
        self.bytes + self.offloaded.load(Ordering::Relaxed)
    }
}

impl Upstream {
    /// The HTTP side of `connection`, whose endpoint is `endpoint` and whose secret values
    /// `redactor` hides.
    ///
    /// # Errors
    /// The HTTP client cannot be built (see [`net::http_client`]).
    pub fn new(
        connection: &Connection,
        endpoint: Url,
        redactor: Redactor,
    ) -> Result<Upstream, String> {
        Ok(Upstream {
            connection: connection.name.clone(),
            endpoint,
            allow_private: connection.allow_private_network,
            client: net::http_client(connection)?,
            redactor,
            files: None,
            offload_threshold: connection.offload_threshold,
        })
    }

    /// This upstream, offloading large answers to `files` (see [`Upstream::send`]).
    pub fn with_files(self, files: Option<Arc<Files>>) -> Upstream {
        Upstream { files, ..self }
    }

    /// The failure of a call to a function the connection does not have.
    pub fn no_function(&self, function: &str) -> Outcome {
        Outcome::failure(
            CallError::new(
                ErrorKind::Config,
                format!(
                    "connection `{}` has no function `{function}`",
                    self.connection
                ),
            ),
            None,
            0,
        )
    }

    /// A request of `function` that cannot be built, and why.
    pub fn invalid_request(&self, function: &str, message: String) -> CallError {
        CallError::new(
            ErrorKind::InvalidRequest,
            format!(
                "cannot build the request of `{}.{function}`: {message}",
                self.connection
            ),
        )
    }

    /// Checks the URL of a request against the network policy ([`net::check_url`]).
    ///
    /// # Errors
    /// The policy refuses the URL's host.
    pub fn check_url(&self, url: &Url) -> Result<(), CallError> {
        net::check_url(url, self.allow_private)
            .map_err(|refused| CallError::new(ErrorKind::Refused, refused.to_string()))
    }

    /// Sends the request and reads the answer before `deadline`. The answer comes with the
    /// bytes of the body read.
    ///
    /// With `offload_for` (the callout's id) and a files bucket, a successful answer whose body
    /// is over the connection's offload threshold (or over [`MAX_BODY_BYTES`], whichever is
    /// less) is not held: what was read and the rest of the body are streamed into the files
    /// bucket (see [`files::offload`]), bounded by the bucket's `max_size` instead, and the
    /// answer comes with the file's reference in `stored`. Without it (each page of a
    /// paginated function), every body is bounded by [`MAX_BODY_BYTES`].
    ///
    /// # Errors
    /// The failed attempt's outcome, with the status and the bytes read when it got that far:
    /// a transport failure, a body over its limit, a failure of the files bucket, or no
    /// complete answer before the deadline.
    pub async fn send(
        &self,
        request: reqwest::Request,
        deadline: std::time::Instant,
        error_bodies: ErrorBodies,
        offload_for: Option<&str>,
    ) -> Result<(Answer, u64), Outcome> {
        let mut seen = Seen::default();
        let deadline = tokio::time::Instant::from_std(deadline);
        let exchange = self.exchange(request, error_bodies, offload_for, &mut seen);
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => Ok((answer, seen.bytes())),
            Ok(Err(error)) => Err(Outcome::failure(error, seen.status, seen.bytes())),
            Err(_elapsed) => {
                let progress = match seen.status {
                    Some(status) => format!(
                        " (status {status} received, {} bytes of the body read)",
                        seen.bytes()
                    ),
                    None => String::new(),
                };
                Err(Outcome::failure(
                    CallError::new(
                        ErrorKind::Timeout,
                        format!(
                            "`{}` gave no complete answer before the attempt's deadline{progress}",
                            self.connection
                        ),
                    ),
                    seen.status,
                    seen.bytes(),
                ))
            }
        }
    }

    /// Sends the request and reads the answer, recording the status and the bytes read as
    /// they arrive, so that a caller who stops waiting still knows them.
    async fn exchange(
        &self,
        request: reqwest::Request,
        error_bodies: ErrorBodies,
        offload_for: Option<&str>,
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
        let headers = response.headers().clone();
        let failed = ErrorKind::from_status(status.as_u16()).is_some();
        // An answer without a body (204, 304, `Content-Length: 0`) has nothing to decode.
        let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
            || response.content_length() == Some(0);
        if !failed
            && !bodiless
            && let Some(coding) = self.content_coding(&headers)
        {
            // Switchboard asks for no coding and decodes none: such a body is unreadable (and
            // a compressed one may inflate a thousandfold), so it is not read at all.
            return Err(CallError::new(
                ErrorKind::InvalidResponse,
                format!(
                    "`{}` answered with `Content-Encoding: {coding}`, which Switchboard does not \
                     decode (it asks for no encoding); the body was not read",
                    self.connection
                ),
            ));
        }
        let excerpt_only = error_bodies == ErrorBodies::Excerpt && failed;
        let offload = match (&self.files, offload_for) {
            (Some(files), Some(callout_id)) if !failed => Some((files, callout_id)),
            _ => None,
        };
        // Most bytes held: past it, a body is offloaded when it may be, else refused.
        let most = match offload {
            Some(_) => self.offload_threshold.min(MAX_BODY_BYTES),
            None => MAX_BODY_BYTES,
        };
        let answer = |body: Vec<u8>, stored: Option<Value>| Answer {
            status,
            retry_after,
            headers: headers.clone(),
            body,
            stored,
        };
        let mut body = Vec::new();
        if !excerpt_only && response.content_length().is_some_and(|n| n > most) {
            let Some((files, callout_id)) = offload else {
                return Err(too_big());
            };
            let stored = self
                .offload(files, callout_id, body, response, seen)
                .await?;
            return Ok(answer(Vec::new(), Some(stored)));
        }
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(&err))?
        {
            seen.bytes += chunk.len() as u64;
            if excerpt_only {
                // Enough for the excerpt; the rest is not worth waiting for.
                let room = ERROR_BODY_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= ERROR_BODY_BYTES {
                    break;
                }
                continue;
            }
            body.extend_from_slice(&chunk);
            if seen.bytes > most {
                let Some((files, callout_id)) = offload else {
                    return Err(too_big());
                };
                let stored = self
                    .offload(files, callout_id, body, response, seen)
                    .await?;
                return Ok(answer(Vec::new(), Some(stored)));
            }
        }
        Ok(answer(body, None))
    }

    /// The content coding of an answer (`gzip`, `br`, …) when it has one other than
    /// `identity`, redacted and cut short for a message.
    fn content_coding(&self, headers: &HeaderMap) -> Option<String> {
        let codings: Vec<String> = headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .filter(|c| !c.is_empty() && c != "identity")
            .collect();
        (!codings.is_empty()).then(|| truncate(&self.redactor.redact(&codings.join(", ")), 40))
    }

    /// Streams the rest of a successful answer, after the bytes in `read`, into `files` (see
    /// [`files::offload`]) and returns the file's reference.
    async fn offload(
        &self,
        files: &Arc<Files>,
        callout_id: &str,
        read: Vec<u8>,
        response: reqwest::Response,
        seen: &Seen,
    ) -> Result<Value, CallError> {
        let offloaded = &seen.offloaded;
        files::offload(
            files,
            &self.connection,
            callout_id,
            read,
            response,
            offloaded,
        )
        .await
        .map_err(|err| match err {
            files::OffloadError::Broke(err) => self.transport_error(&err),
            files::OffloadError::Failed(error) => error,
        })
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

    /// The error of an answer with an HTTP error status: the status and a redacted excerpt
    /// of the body, with the answer's `Retry-After`.
    pub fn status_error(&self, answer: &Answer) -> CallError {
        let code = answer.status.as_u16();
        let kind = ErrorKind::from_status(code).unwrap_or(ErrorKind::InvalidResponse);
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
        error
    }

    /// The error of data from the answer of `function` that does not match the function's
    /// output schema; `None` when it matches (see [`super::output::schema_mismatch`]).
    pub fn schema_mismatch(
        &self,
        function: &str,
        schema: &JsonSchema,
        data: &Value,
    ) -> Option<CallError> {
        let redact = |text: &str| self.redactor.redact(text);
        super::output::schema_mismatch(&self.connection, function, schema, data, &redact)
    }
}

fn too_big() -> CallError {
    CallError::new(ErrorKind::ResponseTooLarge, "response body exceeds 10 MiB")
}

pub(super) fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name that can be sent"))
}

/// The connection's headers, sent with every request.
///
/// # Errors
/// A header whose name or value cannot be sent.
pub(super) fn connection_headers(connection: &Connection) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &connection.headers {
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("header `{k}` has a value that cannot be sent"))?;
        headers.insert(header_name(k)?, value);
    }
    Ok(headers)
}

/// Authentication, resolved and ready to send.
pub(super) enum Credentials {
    None,
    /// A header (`Authorization` for basic and bearer, the api key's header), marked
    /// sensitive so that it never shows in `Debug`.
    Header(HeaderName, HeaderValue),
    /// An api key in the query.
    Query(String, Secret),
    /// An OAuth2 access token, fetched and refreshed as needed.
    OAuth2(std::sync::Arc<super::oauth::TokenSource>),
}

/// Resolves the connection's auth. Every secret value read is added to `secrets`, for the
/// redactor.
///
/// # Errors
/// A secret reference that cannot be read, a credential that cannot be sent, an auth type
/// not supported.
pub(super) fn credentials(
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
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            "a credential cannot be sent in a header (it holds a line break or a control character)"
                .to_string()
        })?;
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
        Auth::OAuth2ClientCredentials { .. } | Auth::OAuth2RefreshToken { .. } => {
            return Err("OAuth2 auth is supported on rest connections only".to_string());
        }
        Auth::Aws { .. } => {
            return Err("auth type `aws` applies to s3 connections only".to_string());
        }
    })
}

/// Replaces the connection's secret values in text that may quote them (an upstream's error
/// body, an error's cause, a SOAP fault).
pub(super) struct Redactor {
    secrets: Vec<Secret>,
    /// Secrets that become known while the wrapper runs (OAuth2 access and refresh tokens),
    /// shared with what fetches them.
    later: Option<std::sync::Arc<std::sync::Mutex<Vec<Secret>>>>,
    /// Whether the XML-escaped form of each secret is replaced too (an XML answer may quote
    /// a secret escaped).
    xml_escaped: bool,
}

impl Redactor {
    /// A redactor of `secrets` as they are and in the encoded forms a URL or a form gives
    /// them.
    pub fn new(secrets: Vec<Secret>) -> Redactor {
        Redactor {
            secrets,
            later: None,
            xml_escaped: false,
        }
    }

    /// This redactor, also hiding every secret `later` holds when it redacts.
    pub fn with_later(self, later: std::sync::Arc<std::sync::Mutex<Vec<Secret>>>) -> Redactor {
        Redactor {
            later: Some(later),
            ..self
        }
    }

    /// A redactor of `secrets` as [`Redactor::new`] makes it, and of their XML-escaped forms.
    pub fn with_xml_escapes(secrets: Vec<Secret>) -> Redactor {
        Redactor {
            secrets,
            later: None,
            xml_escaped: true,
        }
    }

    /// Replaces each secret, as it is and in its encoded forms.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let later = match &self.later {
            Some(later) => later.lock().map(|l| l.clone()).unwrap_or_default(),
            None => Vec::new(),
        };
        for secret in self.secrets.iter().chain(&later) {
            let value = secret.expose();
            if value.is_empty() {
                continue;
            }
            let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let percent =
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let mut forms = vec![value, form.as_str(), percent.as_str()];
            let mut escaped = String::new();
            if self.xml_escaped {
                if xml::escape(value, &mut escaped).is_err() {
                    escaped = value.to_string();
                }
                forms.push(escaped.as_str());
            }
            for form in forms {
                if out.contains(form) {
                    out = out.replace(form, "***");
                }
            }
        }
        out
    }
}

/// A short, single-line excerpt of a body: at most [`EXCERPT_CHARS`] characters.
pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&flat, EXCERPT_CHARS)
}

/// The first `max_chars` characters of `text`, with `…` when it was cut.
pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The wait a `Retry-After` value asks for, in seconds or as an HTTP date, capped at
/// [`MAX_RETRY_AFTER`]. `None` when it cannot be read. Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Standard base64 with padding (RFC 4648), for the basic auth header and WS-Security.
pub(super) fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
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
        let r = Redactor::new(vec![Secret::new("ab+/cd=CANARY")]);
        let echoed = "bad request to /x?api_key=ab%2B%2Fcd%3DCANARY or ab%2B%2Fcd%3DCANARY";
        assert!(!r.redact(echoed).contains("CANARY"), "{}", r.redact(echoed));
        let body = format!("{} ab+/cd=CANARY", "x".repeat(EXCERPT_CHARS - 5));
        let shown = excerpt(r.redact(&body).as_bytes());
        assert!(!shown.contains("ab+/"), "{shown}");
    }

    #[test]
    fn redactor_replaces_every_secret_value() {
        let r = Redactor::new(vec![Secret::new("canary-1"), Secret::new("")]);
        assert_eq!(
            r.redact("invalid key canary-1 (canary-1)"),
            "invalid key *** (***)"
        );
    }

    #[test]
    fn redactor_replaces_xml_escaped_secrets_only_when_asked() {
        let secrets = || vec![Secret::new("pa&ss<CANARY>")];
        let fault = "bad password pa&amp;ss&lt;CANARY&gt;";
        assert_eq!(
            Redactor::with_xml_escapes(secrets()).redact(fault),
            "bad password ***"
        );
        assert_eq!(Redactor::new(secrets()).redact(fault), fault);
    }
}
