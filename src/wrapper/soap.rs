//! The SOAP wrapper: renders a function's body into a SOAP 1.1 or 1.2 envelope, posts it, and
//! turns the answer (a result or a fault) into an [`Outcome`].
//!
//! One [`SoapWrapper`] per `soap` connection, built once: secrets read, body templates
//! compiled, the HTTP client made by [`super::net::http_client`] (the same network policy,
//! timeouts and redirect rules as REST). Each attempt goes through the module `wrapper::http`,
//! as REST's do: bounded by the call's deadline from connect to last byte and its answer by
//! [`MAX_BODY_BYTES`] (read whole whatever the status: a fault may come with any), a
//! `Retry-After` on 429 or 503 honoured up to [`MAX_RETRY_AFTER`], secrets (also
//! XML-escaped) kept out of every message.
//!
//! - Every value a body template prints is XML-escaped, so input is always character data: it
//!   can never add an element, an attribute or a CDATA section. A value XML cannot carry (a
//!   control character) fails the request.
//! - SOAP 1.1 posts `text/xml` with a `SOAPAction` header; SOAP 1.2 posts
//!   `application/soap+xml` with the action as the content type's `action` parameter.
//! - The answer is read by [`super::xml`]: no DOCTYPE, no entity expansion, bounded depth.
//!   A fault (1.1 `faultcode`/`faultstring`, 1.2 `Code`/`Reason`), whatever the HTTP status,
//!   becomes the error: `Server`/`Receiver` faults are retried (`unavailable`), every other
//!   code (`Client`, `Sender`, `VersionMismatch`, `MustUnderstand`) is not (`rejected`).
//! - A successful answer (a 2xx) over the connection's `offload_threshold`, when the metadata
//!   has a files bucket, is streamed into it unread, as the raw envelope, and the result is
//!   `{ "file": <reference> }` (no output mapping, no output schema). A fault belongs in an
//!   answer with an error status, which is always read whole.
//! - Otherwise the children of `<Body>` become JSON ([`xml::to_json`]), the output mapping
//!   picks from it, text is typed by the output schema ([`xml::typed`]) and the result is
//!   checked against it.
//! - With `ws_security`, each request carries a WS-Security `UsernameToken` with a fresh nonce
//!   and creation time, its password as text or as the digest
//!   `Base64(SHA-1(nonce + created + password))`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use minijinja::Environment;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome, Wrapper};

use super::files;
use super::http::{
    Answer, Credentials, EXCERPT_CHARS, ErrorBodies, Redactor, Upstream, base64,
    connection_headers, credentials, truncate,
};
use super::xml::{self, Element};
use crate::metadata::config::{SoapVersion, WsPasswordType};
use crate::metadata::helpers;
use crate::metadata::model::{Connection, JsonSchema, Protocol, Request, Settings, WsSecurity};
use crate::metadata::values::{Secret, SecretRef};
use crate::offload::Files;

pub use super::http::{MAX_BODY_BYTES, MAX_RETRY_AFTER};

/// The SOAP 1.1 envelope namespace.
pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The SOAP 1.2 envelope namespace.
pub const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Security 1.0 `wsse` namespace.
pub const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// WS-Security 1.0 utility (`wsu`) namespace.
pub const WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
const PASSWORD_TEXT: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";
const PASSWORD_DIGEST: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";
const BASE64_BINARY: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";

/// The header that carries the callout's idempotency key.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Runs the callouts of one `soap` connection.
pub struct SoapWrapper {
    upstream: Upstream,
    version: SoapVersion,
    templates: Environment<'static>,
    functions: HashMap<String, SoapFunction>,
    /// The connection's headers and its auth header, sent with every request.
    headers: HeaderMap,
    /// An api key that travels in the query.
    query_key: Option<(String, Secret)>,
    ws_security: Option<UsernameToken>,
    /// The connection's settings, which body templates read as `settings.NAME`.
    settings: Settings,
}

struct SoapFunction {
    /// The compiled body template's name.
    template: String,
    content_type: HeaderValue,
    /// The `SOAPAction` header (1.1 only).
    soap_action: Option<HeaderValue>,
    output: Vec<(String, String)>,
    output_schema: Option<JsonSchema>,
}

/// A WS-Security `UsernameToken`, ready to sign each request.
struct UsernameToken {
    username: String,
    password: Secret,
    digest: bool,
}

impl fmt::Debug for SoapWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut functions: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        functions.sort_unstable();
        f.debug_struct("SoapWrapper")
            .field("connection", &self.upstream.connection)
            .field("endpoint", &self.upstream.endpoint.as_str())
            .field("version", &self.version)
            .field("allow_private_network", &self.upstream.allow_private)
            .field("functions", &functions)
            .field(
                "ws_security",
                &self.ws_security.as_ref().map(|t| (&t.username, "***")),
            )
            .finish_non_exhaustive()
    }
}

impl SoapWrapper {
    /// Builds the wrapper of a `soap` connection. `secret` reads a secret reference; `files`
    /// is the metadata's files bucket, if it has one (large answers are offloaded there).
    ///
    /// # Errors
    /// A message naming the connection and what could not be built: a secret reference that
    /// cannot be read (the reference, never a value), an auth type not supported, a header or
    /// template that cannot be used, the HTTP client.
    pub fn build(
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
        files: Option<Arc<Files>>,
    ) -> Result<SoapWrapper, String> {
        let name = &connection.name;
        let fail = |message: String| format!("connection `{name}`: {message}");
        let Protocol::Soap {
            version,
            ws_security,
            settings,
        } = &connection.protocol
        else {
            return Err(fail("is not a soap connection".to_string()));
        };
        let endpoint = connection
            .endpoint
            .clone()
            .ok_or_else(|| fail("has no endpoint".to_string()))?;
        let mut headers = connection_headers(connection).map_err(&fail)?;
        let mut secrets = Vec::new();
        let query_key = match credentials(&connection.auth, secret, &mut secrets).map_err(&fail)? {
            Credentials::None => None,
            Credentials::Header(name, value) => {
                headers.insert(name, value);
                None
            }
            Credentials::Query(name, value) => Some((name, value)),
            Credentials::OAuth2(_) => {
                return Err(fail(
                    "OAuth2 auth is supported on rest connections only".to_string(),
                ));
            }
        };
        let ws_security = match ws_security {
            None => None,
            Some(ws) => Some(username_token(ws, secret, &mut secrets).map_err(&fail)?),
        };
        let mut templates = environment();
        let mut functions = HashMap::new();
        for (fname, f) in &connection.functions {
            let Request::Soap { action, body } = &f.request else {
                return Err(fail(format!("function `{fname}` is not a soap request")));
            };
            let template = format!("functions.{fname}.body");
            templates
                .add_template_owned(template.clone(), body.clone())
                .map_err(|err| fail(format!("`{template}` is not a valid template: {err}")))?;
            let (content_type, soap_action) = match version {
                SoapVersion::V1_1 => {
                    let action = format!("\"{}\"", action.as_deref().unwrap_or(""));
                    let value = HeaderValue::from_str(&action).map_err(|_| {
                        fail(format!(
                            "the action of `{fname}` cannot be sent in a header"
                        ))
                    })?;
                    (
                        HeaderValue::from_static("text/xml; charset=utf-8"),
                        Some(value),
                    )
                }
                SoapVersion::V1_2 => {
                    let content_type = match action {
                        Some(action) => format!(
                            "application/soap+xml; charset=utf-8; action=\"{}\"",
                            action.replace('\\', "\\\\").replace('"', "\\\"")
                        ),
                        None => "application/soap+xml; charset=utf-8".to_string(),
                    };
                    let value = HeaderValue::from_str(&content_type).map_err(|_| {
                        fail(format!(
                            "the action of `{fname}` cannot be sent in a header"
                        ))
                    })?;
                    (value, None)
                }
            };
            functions.insert(
                fname.clone(),
                SoapFunction {
                    template,
                    content_type,
                    soap_action,
                    output: f.output.clone(),
                    output_schema: f.output_schema.clone(),
                },
            );
        }
        Ok(SoapWrapper {
            upstream: Upstream::new(connection, endpoint, Redactor::with_xml_escapes(secrets))?
                .with_files(files),
            version: *version,
            templates,
            functions,
            headers,
            query_key,
            ws_security,
            settings: settings.clone(),
        })
    }

    /// The envelope of one call: the rendered body inside `<Body>`, the security header when
    /// the connection has one.
    fn envelope(&self, f: &SoapFunction, call: &Call<'_>) -> Result<String, String> {
        let cx = template_value(
            &json!({
                "input": call.input,
                "settings": self.settings,
                "connection": {
                    "name": self.upstream.connection,
                    "endpoint": self.upstream.endpoint.as_str(),
                },
                "callout": {
                    "id": call.callout_id,
                    "attempt": call.attempt,
                    "idempotency_key": call.idempotency_key,
                },
            }),
            0,
        )?;
        let body = self
            .templates
            .get_template(&f.template)
            .and_then(|t| t.render(cx))
            .map_err(|err| {
                format!(
                    "cannot render `{}`: {}",
                    f.template,
                    helpers::describe(&err)
                )
            })?;
        helpers::check_size(&body)
            .map_err(|why| format!("cannot render `{}`: {why}", f.template))?;
        let ns = match self.version {
            SoapVersion::V1_1 => SOAP11,
            SoapVersion::V1_2 => SOAP12,
        };
        let header = match &self.ws_security {
            Some(token) => format!(
                "<soap:Header>{}</soap:Header>",
                token.render(SystemTime::now(), &nonce())?
            ),
            None => String::new(),
        };
        Ok(format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{ns}\">{header}<soap:Body>{body}</soap:Body></soap:Envelope>"
        ))
    }

    /// The request of one call, ready to send.
    fn request(&self, f: &SoapFunction, call: &Call<'_>) -> Result<reqwest::Request, CallError> {
        let invalid = |message: String| self.upstream.invalid_request(call.function, message);
        let envelope = self.envelope(f, call).map_err(invalid)?;
        let mut url = self.upstream.endpoint.clone();
        if let Some((name, value)) = &self.query_key {
            url.query_pairs_mut().append_pair(name, value.expose());
        }
        self.upstream.check_url(&url)?;
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, f.content_type.clone());
        if let Some(action) = &f.soap_action {
            headers.insert(HeaderName::from_static("soapaction"), action.clone());
        }
        let key = HeaderValue::from_str(call.idempotency_key)
            .map_err(|_| invalid("the idempotency key cannot be sent in a header".to_string()))?;
        headers.insert(HeaderName::from_static(IDEMPOTENCY_HEADER), key);
        let mut request = reqwest::Request::new(Method::POST, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(envelope.into());
        Ok(request)
    }

    /// The outcome of a complete answer.
    fn outcome(&self, f: &SoapFunction, call: &Call<'_>, answer: Answer, bytes: u64) -> Outcome {
        let code = answer.status.as_u16();
        let status_kind = ErrorKind::from_status(code);
        let fail = |error: CallError| Outcome::failure(error, Some(code), bytes);
        if let Some(reference) = answer.stored {
            // The raw envelope, not read: no fault check, no output mapping, no output schema.
            return Outcome::success(files::data(reference), Some(code), bytes);
        }
        let reply = match xml::parse(&answer.body) {
            Ok(root) => self.body(&root),
            Err(why) => Err(format!(
                "cannot read the answer of `{}`: {why}",
                self.upstream.connection
            )),
        };
        let body = match reply {
            Ok(Reply::Fault(fault)) => {
                let mut error = fault.error(&self.upstream.connection, &self.upstream.redactor);
                error.retry_after = answer.retry_after;
                return fail(error);
            }
            // An error status without a fault: the status says what happened.
            _ if status_kind.is_some() => return fail(self.upstream.status_error(&answer)),
            Ok(Reply::Body(body)) => body,
            Err(message) => return fail(CallError::new(ErrorKind::InvalidResponse, message)),
        };
        let data = if f.output.is_empty() {
            body
        } else {
            Value::Object(
                f.output
                    .iter()
                    .map(|(field, pointer)| {
                        let value = xml::pointer(&body, pointer).cloned();
                        (field.clone(), value.unwrap_or(Value::Null))
                    })
                    .collect(),
            )
        };
        let Some(schema) = &f.output_schema else {
            return Outcome::success(data, Some(code), bytes);
        };
        let data = xml::typed(data, &schema.source);
        if let Some(error) = self.upstream.schema_mismatch(call.function, schema, &data) {
            return fail(error);
        }
        Outcome::success(data, Some(code), bytes)
    }

    /// The content of a SOAP envelope's `<Body>`: a fault, or its children as JSON.
    fn body(&self, root: &Element) -> Result<Reply, String> {
        let ns = root.namespace.as_deref();
        if root.name != "Envelope" || !matches!(ns, Some(SOAP11) | Some(SOAP12)) {
            let name = match ns {
                Some(ns) => format!("{{{ns}}}{}", root.name),
                None => root.name.clone(),
            };
            return Err(format!(
                "the answer of `{}` is not a SOAP envelope: its root element is <{name}>",
                self.upstream.connection
            ));
        }
        let Some(body) = root.child(ns, "Body") else {
            return Err(format!(
                "the answer of `{}` is a SOAP envelope without a Body",
                self.upstream.connection
            ));
        };
        if let Some(fault) = body.child(ns, "Fault") {
            return Ok(Reply::Fault(Fault::read(fault, ns == Some(SOAP12))));
        }
        Ok(Reply::Body(Value::Object(xml::children_json(body))))
    }
}

#[async_trait]
impl Wrapper for SoapWrapper {
    async fn call(&self, call: Call<'_>) -> Outcome {
        let Some(f) = self.functions.get(call.function) else {
            return self.upstream.no_function(call.function);
        };
        let request = match self.request(f, &call) {
            Ok(request) => request,
            Err(error) => return Outcome::failure(error, None, 0),
        };
        let sent = self.upstream.send(
            request,
            call.deadline,
            ErrorBodies::Whole,
            Some(call.callout_id),
        );
        match sent.await {
            Ok((answer, bytes)) => self.outcome(f, &call, answer, bytes),
            Err(outcome) => outcome,
        }
    }
}

/// The template environment of the body templates: strict, with the helpers and budget of
/// every template, and every printed value XML-escaped (`safe` cannot turn that off: input is
/// data, always).
fn environment() -> Environment<'static> {
    let mut env = helpers::environment();
    env.set_formatter(|out, _state, value| {
        // Booleans as XML Schema spells them (minijinja would print `True`), none as nothing.
        let text = if value.is_none() {
            String::new()
        } else if value.kind() == minijinja::value::ValueKind::Bool {
            value.is_true().to_string()
        } else if let Some(s) = value.as_str() {
            s.to_string()
        } else {
            value.to_string()
        };
        let mut escaped = String::with_capacity(text.len() + 8);
        xml::escape(&text, &mut escaped).map_err(|why| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("a printed value {why}"),
            )
        })?;
        out.write_str(&escaped).map_err(minijinja::Error::from)
    });
    env
}

/// Deepest input converted for the templates; deeper input is refused.
const MAX_INPUT_DEPTH: usize = 128;

/// A JSON value as a template value.
fn template_value(json: &Value, depth: usize) -> Result<minijinja::Value, String> {
    use minijinja::Value as V;
    if depth > MAX_INPUT_DEPTH {
        return Err(format!(
            "the input is nested deeper than {MAX_INPUT_DEPTH} levels"
        ));
    }
    Ok(match json {
        Value::Null => V::from(()),
        Value::Bool(b) => V::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => V::from(i),
            (None, Some(u)) => V::from(u),
            _ => V::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => V::from(s.as_str()),
        Value::Array(items) => V::from(
            items
                .iter()
                .map(|item| template_value(item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Value::Object(map) => V::from_pairs(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), template_value(v, depth + 1)?)))
                .collect::<Result<Vec<_>, String>>()?,
        ),
    })
}

/// What `<Body>` held.
enum Reply {
    Body(Value),
    Fault(Fault),
}

/// A SOAP fault, 1.1 or 1.2.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    /// The code's local name (`Client`, `Server.Database`, `Sender`, `Receiver`).
    code: String,
    /// The 1.2 subcode's local name, if any.
    subcode: Option<String>,
    reason: String,
}

impl Fault {
    fn read(fault: &Element, soap12: bool) -> Fault {
        let local = |qname: &str| {
            let qname = qname.trim();
            qname.rsplit_once(':').map_or(qname, |(_, l)| l).to_string()
        };
        if soap12 {
            let code = fault.child_named("Code");
            let value = code.and_then(|c| c.child_named("Value"));
            let subcode = code
                .and_then(|c| c.child_named("Subcode"))
                .and_then(|s| s.child_named("Value"))
                .map(|v| local(&v.text));
            let reason = fault
                .child_named("Reason")
                .and_then(|r| r.child_named("Text"))
                .map(|t| t.text.trim().to_string())
                .unwrap_or_default();
            Fault {
                code: value.map(|v| local(&v.text)).unwrap_or_default(),
                subcode,
                reason,
            }
        } else {
            Fault {
                code: fault
                    .child_named("faultcode")
                    .map(|c| local(&c.text))
                    .unwrap_or_default(),
                subcode: None,
                reason: fault
                    .child_named("faultstring")
                    .map(|s| s.text.trim().to_string())
                    .unwrap_or_default(),
            }
        }
    }

    /// `Server`/`Receiver` (and their dotted refinements like `Server.Database`) may pass;
    /// every other fault says the request itself is wrong.
    fn kind(&self) -> ErrorKind {
        let class = self.code.split('.').next().unwrap_or_default();
        match class {
            "Server" | "Receiver" => ErrorKind::Unavailable,
            _ => ErrorKind::Rejected,
        }
    }

    fn error(&self, connection: &str, redactor: &Redactor) -> CallError {
        let code = match &self.subcode {
            Some(sub) => format!("{} ({sub})", self.code),
            None => self.code.clone(),
        };
        let reason = truncate(&redactor.redact(&self.reason), EXCERPT_CHARS);
        CallError::new(
            self.kind(),
            format!("`{connection}` answered with SOAP fault `{code}`: {reason}"),
        )
    }
}

impl UsernameToken {
    /// The `<wsse:Security>` header with a `UsernameToken` created at `now` with `nonce`.
    fn render(&self, now: SystemTime, nonce: &[u8]) -> Result<String, String> {
        let created = time::OffsetDateTime::from(now)
            .replace_nanosecond(0)
            .map_err(|err| err.to_string())?
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|err| err.to_string())?;
        let mut username = String::new();
        xml::escape(&self.username, &mut username)?;
        let (kind, password) = if self.digest {
            let mut hasher = <sha1::Sha1 as sha1::Digest>::new();
            sha1::Digest::update(&mut hasher, nonce);
            sha1::Digest::update(&mut hasher, created.as_bytes());
            sha1::Digest::update(&mut hasher, self.password.expose().as_bytes());
            (PASSWORD_DIGEST, base64(&sha1::Digest::finalize(hasher)))
        } else {
            let mut escaped = String::new();
            xml::escape(self.password.expose(), &mut escaped)
                .map_err(|_| "the WS-Security password holds a character XML cannot carry")?;
            (PASSWORD_TEXT, escaped)
        };
        Ok(format!(
            "<wsse:Security xmlns:wsse=\"{WSSE}\" xmlns:wsu=\"{WSU}\" soap:mustUnderstand=\"1\">\
<wsse:UsernameToken><wsse:Username>{username}</wsse:Username>\
<wsse:Password Type=\"{kind}\">{password}</wsse:Password>\
<wsse:Nonce EncodingType=\"{BASE64_BINARY}\">{}</wsse:Nonce>\
<wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>",
            base64(nonce)
        ))
    }
}

/// 16 random bytes for a `UsernameToken`'s nonce.
fn nonce() -> [u8; 16] {
    rand::random()
}

fn username_token(
    ws: &WsSecurity,
    secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
    secrets: &mut Vec<Secret>,
) -> Result<UsernameToken, String> {
    let username = match SecretRef::parse(&ws.username) {
        Ok(r) if ws.username.starts_with("${") => secret(&r)?.expose().to_string(),
        _ => ws.username.clone(),
    };
    let password = secret(&ws.password)?;
    secrets.push(password.clone());
    Ok(UsernameToken {
        username,
        password,
        digest: ws.password_type == WsPasswordType::Digest,
    })
}

#[cfg(test)]
mod tests;
