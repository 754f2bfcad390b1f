//! The wrapper contract: one call in, one standard outcome out.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

/// Everything one attempt of a callout needs. The wrapper was built for one connection, so it
/// already holds its endpoint, credentials and HTTP client.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// The callout's id, stable across attempts.
    pub callout_id: &'a str,
    /// The function's name within the connection (`create_invoice`).
    pub function: &'a str,
    /// The callout's input, already checked against the function's input schema.
    pub input: &'a Value,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The key the upstream can deduplicate retries on: the same for every attempt.
    pub idempotency_key: &'a str,
    /// When this attempt must be over, connect to last byte. A wrapper stops waiting then.
    pub deadline: Instant,
    /// Paces the requests of this attempt after its first (the pages of a paginated
    /// function) by the connection's limits. The first request has already been paced.
    pub pace: &'a dyn Pace,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("callout_id", &self.callout_id)
            .field("function", &self.function)
            .field("input", &self.input)
            .field("attempt", &self.attempt)
            .field("idempotency_key", &self.idempotency_key)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Waits until the connection may take one more request of an attempt: a rate token, the end
/// of a pause the connection asked for. A wrapper that makes several requests in one attempt
/// awaits [`Pace::next_request`] before each one after the first.
#[async_trait]
pub trait Pace: Send + Sync {
    async fn next_request(&self);
}

/// A pace that never waits: for tools and tests that call a wrapper outside the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpaced;

#[async_trait]
impl Pace for Unpaced {
    async fn next_request(&self) {}
}

/// What a wrapper needs to be built: the connection as the plugin declared it.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The connection's name.
    pub connection: String,
    /// The endpoint, if the connection has one.
    pub endpoint: Option<String>,
    /// The connection's `settings`, as accepted by the plugin.
    pub settings: Value,
    /// Each function's name and `request`.
    pub functions: Vec<(String, Value)>,
    /// An HTTP client with the connection's timeouts and network policy; use it rather than
    /// building one, so that limits and the private-network rule hold. The rule holds for host
    /// names (checked when resolved), redirects and the `endpoint` (a private one fails the
    /// connection's calls with `config` unless `allow_private_network` is set); a URL with an
    /// IP-literal host that the plugin builds from anything else is not checked by the client.
    pub http: reqwest::Client,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The data (after the function's output mapping), or why the attempt failed.
    pub result: Result<Value, CallError>,
    /// The upstream's HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// Size of the response body read.
    pub response_bytes: u64,
}

impl Outcome {
    pub fn success(data: Value, http_status: Option<u16>, response_bytes: u64) -> Outcome {
        Outcome {
            result: Ok(data),
            http_status,
            response_bytes,
        }
    }

    pub fn failure(error: CallError, http_status: Option<u16>, response_bytes: u64) -> Outcome {
        Outcome {
            result: Err(error),
            http_status,
            response_bytes,
        }
    }
}

/// Why an attempt failed. The message must never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallError {
    pub kind: ErrorKind,
    pub message: String,
    /// How long the upstream asked us to wait (`Retry-After`), if it did.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CallError {
        CallError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Kinds of failure, each with its retry disposition.
///
/// ```
/// use switchboard_sdk::ErrorKind;
/// assert!(ErrorKind::Throttled.retryable());
/// assert!(!ErrorKind::Rejected.retryable());
/// assert_eq!(ErrorKind::from_status(503), Some(ErrorKind::Unavailable));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The connection could not be opened (refused, reset, DNS failure).
    Connect,
    /// The attempt's deadline passed (connect, send or read).
    Timeout,
    /// The upstream said to slow down (429).
    Throttled,
    /// The upstream failed or is unavailable (5xx, 408).
    Unavailable,
    /// The upstream refused the request (other 4xx): retrying would not help.
    Rejected,
    /// The response could not be read or is not what the function declares.
    InvalidResponse,
    /// The response body is larger than the engine reads (10 MiB by default).
    ResponseTooLarge,
    /// The credentials were refused: the token endpoint rejected the client or the refresh
    /// token, or the upstream still answered 401 with a fresh token. Retrying would not help
    /// until an administrator fixes them.
    Auth,
    /// The request could not be built from the input and the metadata.
    InvalidRequest,
    /// The network policy refused the address (private networks not allowed).
    Refused,
    /// The metadata no longer has this function, or the connection cannot run it.
    Config,
    /// The engine itself failed; retried in case it was passing.
    Internal,
}

impl ErrorKind {
    /// Connect errors, timeouts, 408, 429 and 5xx are retried; other failures are not.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Throttled
                | ErrorKind::Unavailable
                | ErrorKind::Internal
        )
    }

    /// The kind an HTTP error status maps to; `None` for success statuses.
    pub fn from_status(status: u16) -> Option<ErrorKind> {
        match status {
            100..=399 => None,
            408 => Some(ErrorKind::Unavailable),
            429 => Some(ErrorKind::Throttled),
            400..=499 => Some(ErrorKind::Rejected),
            _ => Some(ErrorKind::Unavailable),
        }
    }

    /// The stable snake_case name used in results and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Rejected => "rejected",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::Auth => "auth",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Refused => "refused",
            ErrorKind::Config => "config",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Runs callouts for one connection. Built once per connection (and again on reload); called
/// concurrently, so keep per-call state in the call.
#[async_trait]
pub trait Wrapper: Send + Sync {
    /// Makes one attempt. Never panics on bad input or a hostile upstream: every failure is an
    /// [`Outcome`] with a [`CallError`].
    async fn call(&self, call: Call<'_>) -> Outcome;
}
