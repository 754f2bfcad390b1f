//! OAuth2 access tokens for REST connections: the client-credentials and refresh-token grants
//! (RFC 6749 sections 4.4 and 6).
//!
//! One [`TokenSource`] per connection caches the access token and fetches a new one ahead of
//! its expiry. However many callouts need a token at once, one fetch runs at a time per
//! connection and the others wait for it ([`TokenSource::token`] fetches under an async lock
//! and looks again once it holds it). A fetch that failed is not repeated for
//! [`FAILURE_HOLD`]: callouts arriving meanwhile get the same error, so a token endpoint that
//! is down is not hammered by every waiting callout.
//!
//! A fetch runs in a task of its own: a callout that stops waiting (its deadline, a shutdown)
//! does not cut it short, so a refresh token the provider has just rotated is never lost
//! half-way. When the provider rotates refresh tokens, the newest one is kept in the store's
//! engine state (`oauth2.refresh_token:<connection>`) with the origin it grew from (token URL,
//! client id, the metadata's refresh token); after a restart, or a reload that changed other
//! settings, the engine goes on with it, unless the metadata names a new refresh token (then
//! that one is used).
//!
//! Sources live in [`TokenSources`], which the engine keeps across metadata reloads: a reload
//! that leaves a connection's OAuth2 settings as they were keeps its token. A refresh that
//! fails while the cached token has not expired yet leaves the callouts on the cached token.
//!
//! Failures: the token endpoint unreachable, failing (5xx) or throttling (429) fails the
//! attempt with a retried kind, so the callout waits and retries; the endpoint refusing the
//! client or the grant (`invalid_client`, `invalid_grant`, any other 4xx) fails it with
//! [`ErrorKind::Auth`], not retried, naming the connection. No message holds a token or a
//! secret: token values join the connection's redactor as they arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_sdk::{CallError, ErrorKind};
use url::Url;

use super::http::{Redactor, base64, excerpt};
use super::net;
use crate::metadata::config::OAuth2ClientAuth;
use crate::metadata::model::{Auth, Connection, ExpiredWhen};
use crate::metadata::values::{Secret, SecretRef};
use crate::queue::Store;

/// How long a failed fetch answers for the next ones, instead of a new request.
pub const FAILURE_HOLD: Duration = Duration::from_secs(2);

/// The most a token is refreshed ahead of its expiry (less for short-lived tokens: half
/// their lifetime).
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Token values remembered for redaction: the current ones and a few before them.
const REMEMBERED: usize = 6;

/// The engine-state key of a connection's newest refresh token.
pub fn state_key(connection: &str) -> String {
    format!("oauth2.refresh_token:{connection}")
}

/// The token sources of every OAuth2 connection, kept across metadata reloads.
#[derive(Default)]
pub struct TokenSources {
    /// Where rotated refresh tokens are kept; `None` keeps them in memory only (tools, tests).
    store: Option<Arc<dyn Store>>,
    sources: Mutex<HashMap<String, Arc<TokenSource>>>,
}

impl TokenSources {
    /// Sources that keep rotated refresh tokens in `store`.
    pub fn new(store: Arc<dyn Store>) -> TokenSources {
        TokenSources {
            store: Some(store),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The token source of `connection` (whose auth is an OAuth2 grant), reused when the
    /// connection's OAuth2 settings and secrets are the ones it was made with.
    ///
    /// # Errors
    /// A secret reference that cannot be read, a token URL the network policy refuses, the
    /// HTTP client. `None` when the connection's auth is no OAuth2 grant.
    pub(super) fn source(
        &self,
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
    ) -> Option<Result<Arc<TokenSource>, String>> {
        let grant = match Grant::read(&connection.auth, secret)? {
            Ok(grant) => grant,
            Err(err) => return Some(Err(err)),
        };
        let fingerprint = grant.fingerprint(connection);
        let origin = grant.origin(connection);
        let Ok(mut sources) = self.sources.lock() else {
            return Some(Err("the token cache is unusable".to_string()));
        };
        if let Some(found) = sources.get(&connection.name)
            && found.fingerprint == fingerprint
        {
            return Some(Ok(found.clone()));
        }
        let made = TokenSource::new(connection, grant, fingerprint, origin, self.store.clone());
        if let Ok(source) = &made {
            sources.insert(connection.name.clone(), source.clone());
        }
        Some(made)
    }
}

/// The client credentials of a token request's `Authorization: Basic` header: client id and
/// secret, each form-encoded, joined by `:`, in base64 (RFC 6749 section 2.3.1). A secret
/// itself: a token endpoint that quotes the header it got must not reveal it.
fn basic_credentials(client_id: &str, secret: &Secret) -> Secret {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose()));
    Secret::new(base64(pair.as_bytes()))
}

/// An OAuth2 grant with its secrets read.
struct Grant {
    token_url: Url,
    client_id: String,
    client_secret: Option<Secret>,
    /// For the refresh-token grant: the refresh token the metadata names.
    refresh_token: Option<Secret>,
    scopes: Vec<String>,
    audience: Option<String>,
    client_auth: OAuth2ClientAuth,
    expired_when: Option<ExpiredWhen>,
}

impl Grant {
    /// The configured values every message hides: the client secret, also as the basic
    /// credentials it is sent in, and the configured refresh token.
    fn hidden(&self) -> Vec<Secret> {
        let mut hidden = Vec::new();
        if let Some(secret) = &self.client_secret {
            hidden.push(secret.clone());
            if self.client_auth == OAuth2ClientAuth::Basic {
                hidden.push(basic_credentials(&self.client_id, secret));
            }
        }
        hidden.extend(self.refresh_token.iter().cloned());
        hidden
    }

    /// The grant of an OAuth2 auth, its secrets read; `None` for other auth types.
    fn read(
        auth: &Auth,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
    ) -> Option<Result<Grant, String>> {
        Some(match auth {
            Auth::OAuth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
                options,
            } => secret(client_secret).map(|client_secret| Grant {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: Some(client_secret),
                refresh_token: None,
                scopes: scopes.clone(),
                audience: audience.clone(),
                client_auth: options.client_auth,
                expired_when: options.expired_when.clone(),
            }),
            Auth::OAuth2RefreshToken {
                token_url,
                client_id,
                client_secret,
                refresh_token,
                scopes,
                options,
            } => (|| {
                Ok(Grant {
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                    client_secret: client_secret.as_ref().map(secret).transpose()?,
                    refresh_token: Some(secret(refresh_token)?),
                    scopes: scopes.clone(),
                    audience: None,
                    client_auth: options.client_auth,
                    expired_when: options.expired_when.clone(),
                })
            })(),
            _ => return None,
        })
    }

    /// SHA-256 (hex) over everything the source is built from, secrets included (hashed,
    /// never kept): a source is reused across reloads only while this stays the same.
    fn fingerprint(&self, connection: &Connection) -> String {
        let secret =
            |s: &Option<Secret>| s.as_ref().map_or(String::new(), |s| s.expose().to_string());
        digest(&[
            connection.name.as_bytes(),
            self.token_url.as_str().as_bytes(),
            self.client_id.as_bytes(),
            secret(&self.client_secret).as_bytes(),
            secret(&self.refresh_token).as_bytes(),
            self.scopes.join(" ").as_bytes(),
            self.audience.as_deref().unwrap_or_default().as_bytes(),
            format!("{:?} {:?}", self.client_auth, self.expired_when).as_bytes(),
            format!(
                "{} {:?} {:?}",
                connection.allow_private_network,
                connection.limits.timeout,
                connection.limits.connect_timeout
            )
            .as_bytes(),
        ])
    }

    /// SHA-256 (hex) over where a refresh token comes from: the connection, the token URL,
    /// the client id and the refresh token the metadata names. A stored (rotated) refresh
    /// token is used only while this stays the same, whatever else changes (a rotated client
    /// secret, new scopes).
    fn origin(&self, connection: &Connection) -> String {
        let refresh = self
            .refresh_token
            .as_ref()
            .map_or(String::new(), |s| s.expose().to_string());
        digest(&[
            connection.name.as_bytes(),
            self.token_url.as_str().as_bytes(),
            self.client_id.as_bytes(),
            refresh.as_bytes(),
        ])
    }
}

/// SHA-256 (lowercase hex) of the parts, each prefixed with its length.
fn digest(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One access token.
pub struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// Which fetch gave it (1 for the first): a caller that saw it refused asks for a newer one.
    pub generation: u64,
    /// When to fetch the next one; `None` when the provider gave no lifetime.
    refresh_at: Option<Instant>,
    /// When it expires; `None` when the provider gave no lifetime.
    expires_at: Option<Instant>,
}

/// What only the fetching side touches, under the single-flight lock.
struct Fetching {
    /// The refresh token in use: the configured one, or the newest the provider gave.
    refresh_token: Option<Secret>,
    /// Whether the store has been asked for a newer refresh token.
    loaded: bool,
    /// The last failed fetch and when it happened.
    failed: Option<(Instant, CallError)>,
    generation: u64,
}

/// The access tokens of one OAuth2 connection.
pub struct TokenSource {
    connection: String,
    grant: Grant,
    fingerprint: String,
    /// Which stored refresh token this source may use (see `Grant::origin`).
    origin: String,
    client: reqwest::Client,
    store: Option<Arc<dyn Store>>,
    current: Mutex<Option<Arc<Token>>>,
    fetching: Arc<tokio::sync::Mutex<Fetching>>,
    /// Token values to hide, for the connection's redactor: the configured secrets and the
    /// refresh token in use, then the latest access tokens.
    seen: Arc<Mutex<Vec<Secret>>>,
    /// The refresh token in use when it is not the configured one, and the latest access
    /// tokens, newest last (at most [`REMEMBERED`]).
    learned: Mutex<(Option<Secret>, Vec<Secret>)>,
    /// Token requests made, for tests and metrics.
    requests: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    fn new(
        connection: &Connection,
        grant: Grant,
        fingerprint: String,
        origin: String,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Arc<TokenSource>, String> {
        net::check_url(&grant.token_url, connection.allow_private_network)
            .map_err(|refused| format!("auth.token_url: {refused}"))?;
        let seen = grant.hidden();
        Ok(Arc::new(TokenSource {
            connection: connection.name.clone(),
            client: net::http_client_without_redirects(connection)?,
            fetching: Arc::new(tokio::sync::Mutex::new(Fetching {
                refresh_token: grant.refresh_token.clone(),
                loaded: false,
                failed: None,
                generation: 0,
            })),
            grant,
            fingerprint,
            origin,
            store,
            current: Mutex::new(None),
            seen: Arc::new(Mutex::new(seen)),
            learned: Mutex::new((None, Vec::new())),
            requests: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The values a redactor of this connection must hide, as they become known.
    pub(super) fn secrets(&self) -> Arc<Mutex<Vec<Secret>>> {
        self.seen.clone()
    }

    /// Token requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether an answer means the access token was refused or expired: a 401, or what the
    /// connection's `expired_when` rule recognises.
    pub fn refused(&self, status: u16, body: &[u8]) -> bool {
        status == 401
            || self
                .grant
                .expired_when
                .as_ref()
                .is_some_and(|rule| rule.matches(status, body))
    }

    /// A valid access token: the cached one, or a new one fetched before `deadline`. With
    /// `refused`, the token of that generation was refused upstream, so only a newer one will
    /// do.
    ///
    /// # Errors
    /// The token endpoint failed (retried kinds), refused the credentials
    /// ([`ErrorKind::Auth`]), or `deadline` passed ([`ErrorKind::Timeout`]).
    pub async fn token(
        self: &Arc<Self>,
        deadline: Instant,
        refused: Option<u64>,
    ) -> Result<Arc<Token>, CallError> {
        if let Some(token) = self.cached(refused) {
            return Ok(token);
        }
        let until = tokio::time::Instant::from_std(deadline);
        let Ok(fetching) = tokio::time::timeout_at(until, self.fetching.clone().lock_owned()).await
        else {
            return Err(self.late());
        };
        // Another caller may have fetched while this one waited.
        if let Some(token) = self.cached(refused) {
            return Ok(token);
        }
        if let Some((at, error)) = &fetching.failed
            && at.elapsed() < FAILURE_HOLD
        {
            return self.still_valid(refused).ok_or_else(|| error.clone());
        }
        // The fetch runs on its own, holding the lock: a caller that stops waiting leaves it
        // to finish (and keep a rotated refresh token), and the next caller waits for it.
        let source = self.clone();
        let fetch = tokio::spawn(async move {
            let mut fetching = fetching;
            let result = source.fetch(&mut fetching).await;
            fetching.failed = match &result {
                Ok(_) => None,
                Err(error) => Some((Instant::now(), error.clone())),
            };
            result
        });
        match tokio::time::timeout_at(until, fetch).await {
            Ok(Ok(Ok(token))) => Ok(token),
            Ok(Ok(Err(error))) => self.still_valid(refused).ok_or(error),
            Ok(Err(_panicked)) => Err(self.error(
                ErrorKind::Internal,
                "the token request failed unexpectedly".to_string(),
            )),
            Err(_) => self.still_valid(refused).ok_or_else(|| self.late()),
        }
    }

    /// The cached token, due for refresh or not, while it has not expired and was not
    /// refused: what serves when an early refresh fails.
    fn still_valid(&self, refused: Option<u64>) -> Option<Arc<Token>> {
        let current = self.current.lock().ok()?.clone()?;
        let expired = current.expires_at.is_none_or(|at| at <= Instant::now());
        (!expired && Some(current.generation) != refused).then_some(current)
    }

    /// The cached token, if it is not due for refresh and not the refused generation.
    fn cached(&self, refused: Option<u64>) -> Option<Arc<Token>> {
        let current = self.current.lock().ok()?.clone()?;
        let due = current.refresh_at.is_some_and(|at| at <= Instant::now());
        (!due && Some(current.generation) != refused).then_some(current)
    }

    fn late(&self) -> CallError {
        CallError::new(
            ErrorKind::Timeout,
            format!(
                "no access token for `{}` before the attempt's deadline",
                self.connection
            ),
        )
    }

    /// Asks the token endpoint for a new access token, and keeps a rotated refresh token.
    async fn fetch(&self, fetching: &mut Fetching) -> Result<Arc<Token>, CallError> {
        if self.grant.refresh_token.is_some() && !fetching.loaded {
            if let Some(newer) = self.stored_refresh_token().await {
                self.pin(&newer);
                fetching.refresh_token = Some(newer);
            }
            fetching.loaded = true;
        }
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = self.request(fetching.refresh_token.as_ref())?;
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|err| self.transport_error(&err))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(&err))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_TOKEN_ANSWER {
                return Err(self.error(
                    ErrorKind::Auth,
                    format!("the token endpoint's answer is over {MAX_TOKEN_ANSWER} bytes"),
                ));
            }
        }
        if !(200..300).contains(&status) {
            return Err(self.refusal(status, &body, retry_after));
        }
        // A success's body holds tokens the redactor does not know yet: it is never quoted.
        let answer: Value = serde_json::from_slice(&body).map_err(|_| {
            self.error(
                ErrorKind::Auth,
                format!(
                    "the token endpoint answered {status} with a body that is not JSON ({} bytes); expected a JSON object with `access_token`",
                    body.len()
                ),
            )
        })?;
        let Some(access) = answer.get("access_token").and_then(Value::as_str) else {
            return Err(self.error(
                ErrorKind::Auth,
                "the token endpoint's answer has no `access_token`".to_string(),
            ));
        };
        if let Some(kind) = answer.get("token_type").and_then(Value::as_str)
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(self.error(
                ErrorKind::Auth,
                format!("the token endpoint gave a token of type `{kind}`; only `Bearer` tokens can be used"),
            ));
        }
        let access = Secret::new(access.to_string());
        self.remember(&access);
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", access.expose())).map_err(|_| {
                self.error(
                    ErrorKind::Auth,
                    "the access token cannot be sent in a header".to_string(),
                )
            })?;
        header.set_sensitive(true);
        let lifetime = match answer.get("expires_in") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        // A token said to last under a second would be fetched again for every call.
        .map(|secs| Duration::from_secs_f64(secs.clamp(1.0, 10.0 * 365.0 * 86_400.0)));
        let fetched = Instant::now();
        let refresh_at = lifetime.map(|life| fetched + life - REFRESH_AHEAD.min(life / 2));
        let expires_at = lifetime.map(|life| fetched + life);
        if let Some(rotated) = answer.get("refresh_token").and_then(Value::as_str)
            && self.grant.refresh_token.is_some()
            && fetching.refresh_token.as_ref().map(Secret::expose) != Some(rotated)
        {
            // In memory first: the old token is dead from now on, whatever the store does.
            let rotated = Secret::new(rotated.to_string());
            self.pin(&rotated);
            fetching.refresh_token = Some(rotated.clone());
            self.keep_refresh_token(&rotated).await;
        }
        fetching.generation += 1;
        let token = Arc::new(Token {
            header,
            generation: fetching.generation,
            refresh_at,
            expires_at,
        });
        if let Ok(mut current) = self.current.lock() {
            *current = Some(token.clone());
        }
        Ok(token)
    }

    /// The token request: a form POST with the grant, the scopes, and the client's
    /// credentials in a basic header or in the form.
    fn request(&self, refresh_token: Option<&Secret>) -> Result<reqwest::Request, CallError> {
        let grant = &self.grant;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        match refresh_token {
            Some(token) => {
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("refresh_token", token.expose());
            }
            None => {
                form.append_pair("grant_type", "client_credentials");
            }
        }
        if !grant.scopes.is_empty() {
            form.append_pair("scope", &grant.scopes.join(" "));
        }
        if let Some(audience) = &grant.audience {
            form.append_pair("audience", audience);
        }
        let mut request = reqwest::Request::new(reqwest::Method::POST, grant.token_url.clone());
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        match (grant.client_auth, &grant.client_secret) {
            (OAuth2ClientAuth::Basic, Some(secret)) => {
                let credentials = basic_credentials(&grant.client_id, secret);
                let mut value = HeaderValue::from_str(&format!("Basic {}", credentials.expose()))
                    .map_err(|_| {
                    self.error(
                        ErrorKind::Auth,
                        "the client credentials cannot be sent in a header".to_string(),
                    )
                })?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            (_, secret) => {
                form.append_pair("client_id", &grant.client_id);
                if let Some(secret) = secret {
                    form.append_pair("client_secret", secret.expose());
                }
            }
        }
        *request.body_mut() = Some(form.finish().into());
        Ok(request)
    }

    /// The error of a token endpoint's answer with an error status.
    fn refusal(&self, status: u16, body: &[u8], retry_after: Option<Duration>) -> CallError {
        let answer: Option<Value> = serde_json::from_slice(body).ok();
        let code = answer
            .as_ref()
            .and_then(|a| a.get("error"))
            .and_then(Value::as_str)
            .map(|c| self.redactor().redact(c));
        let description = answer
            .as_ref()
            .and_then(|a| a.get("error_description"))
            .and_then(Value::as_str)
            .map(|d| self.redactor().redact(d));
        let said = match (&code, &description) {
            (Some(code), Some(text)) => format!("{code}: {text}"),
            (Some(code), None) => code.clone(),
            _ => self.redacted_excerpt(body),
        };
        let (kind, what) = match status {
            429 => (ErrorKind::Throttled, "is throttling token requests"),
            500.. | 408 => (ErrorKind::Unavailable, "failed"),
            _ => (
                ErrorKind::Auth,
                match code.as_deref() {
                    Some("invalid_client" | "unauthorized_client") => {
                        "refused the client credentials"
                    }
                    Some("invalid_grant") => {
                        "refused the grant (the refresh token is invalid, expired or revoked)"
                    }
                    _ => "refused the token request",
                },
            ),
        };
        let fix = if kind == ErrorKind::Auth {
            "; fix the connection's auth and replay the callout"
        } else {
            ""
        };
        let mut error = self.error(
            kind,
            format!("the token endpoint {what} (status {status}): {said}{fix}"),
        );
        error.retry_after = retry_after;
        error
    }

    fn transport_error(&self, err: &reqwest::Error) -> CallError {
        if let Some(refused) = net::find_refused(err) {
            return CallError::new(ErrorKind::Refused, refused.message());
        }
        let host = self.grant.token_url.host_str().unwrap_or_default();
        let cause = self.redactor().redact(&net::root_cause(err).to_string());
        let kind = if err.is_connect() {
            ErrorKind::Connect
        } else if err.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Unavailable
        };
        self.error(
            kind,
            format!("cannot get an access token from the token endpoint ({host}): {cause}"),
        )
    }

    fn error(&self, kind: ErrorKind, message: String) -> CallError {
        CallError::new(kind, format!("connection `{}`: {message}", self.connection))
    }

    fn redactor(&self) -> Redactor {
        Redactor::new(self.seen.lock().map(|s| s.clone()).unwrap_or_default())
    }

    fn redacted_excerpt(&self, body: &[u8]) -> String {
        excerpt(
            self.redactor()
                .redact(&String::from_utf8_lossy(body))
                .as_bytes(),
        )
    }

    /// Adds an access token to those every message of this connection hides (the latest
    /// [`REMEMBERED`]).
    fn remember(&self, value: &Secret) {
        self.learn(|(_, recent)| {
            recent.push(value.clone());
            if recent.len() > REMEMBERED {
                recent.remove(0);
            }
        });
    }

    /// Makes `refresh_token` the refresh token hidden besides the configured secrets.
    fn pin(&self, refresh_token: &Secret) {
        self.learn(|(pinned, _)| *pinned = Some(refresh_token.clone()));
    }

    /// Changes what was learned, then rebuilds the values to hide: the configured secrets,
    /// the refresh token in use, the latest access tokens.
    fn learn(&self, change: impl FnOnce(&mut (Option<Secret>, Vec<Secret>))) {
        let Ok(mut learned) = self.learned.lock() else {
            return;
        };
        change(&mut learned);
        let mut next = self.grant.hidden();
        next.extend(learned.0.iter().chain(&learned.1).cloned());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = next;
        }
    }

    /// The newest refresh token the store kept for this connection's configuration.
    async fn stored_refresh_token(&self) -> Option<Secret> {
        let store = self.store.as_ref()?;
        let key = state_key(&self.connection);
        let text = match store.state(&key).await {
            Ok(text) => text?,
            Err(err) => {
                tracing::warn!(connection = %self.connection, error = %err, "cannot read the stored refresh token; using the configured one");
                return None;
            }
        };
        let kept: Value = serde_json::from_str(&text).ok()?;
        if kept.get("origin").and_then(Value::as_str) != Some(self.origin.as_str()) {
            // The metadata names another refresh token (or client) since: it wins.
            return None;
        }
        kept.get("refresh_token")
            .and_then(Value::as_str)
            .map(|t| Secret::new(t.to_string()))
    }

    /// Keeps a rotated refresh token in the store, for the next start. A failure is logged:
    /// the token still serves this run.
    async fn keep_refresh_token(&self, token: &Secret) {
        let Some(store) = &self.store else { return };
        let value = serde_json::json!({
            "origin": self.origin,
            "refresh_token": token.expose(),
        })
        .to_string();
        let now = crate::engine::now_millis();
        let key = state_key(&self.connection);
        let mut delay = Duration::from_millis(50);
        for _ in 0..5 {
            match store.set_state(&key, &value, now).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(connection = %self.connection, error = %err, "keeping the rotated refresh token failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        tracing::error!(connection = %self.connection, "the rotated refresh token could not be kept; after a restart the connection may need a new refresh token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        status: Option<u16>,
        equals: Option<(&str, Value)>,
        contains: Option<&str>,
    ) -> ExpiredWhen {
        ExpiredWhen {
            status,
            equals: equals.map(|(p, v)| (p.to_string(), v)),
            contains: contains.map(str::to_string),
        }
    }

    #[test]
    fn expired_rules_need_every_part_to_match() {
        let code = rule(
            Some(200),
            Some(("/error/code", Value::from("TOKEN_EXPIRED"))),
            None,
        );
        assert!(code.matches(200, br#"{"error":{"code":"TOKEN_EXPIRED"}}"#));
        assert!(!code.matches(500, br#"{"error":{"code":"TOKEN_EXPIRED"}}"#));
        assert!(!code.matches(200, br#"{"error":{"code":"OTHER"}}"#));
        assert!(!code.matches(200, b"not json"));
        let text = rule(None, None, Some("token expired"));
        assert!(text.matches(200, b"sorry: token expired, log in again"));
        assert!(text.matches(400, b"token expired"));
        assert!(!text.matches(200, b"all good"));
    }
}
