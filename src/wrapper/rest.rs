//! The REST wrapper: renders a function's request, sends it, and turns the answer into an
//! [`Outcome`].
//!
//! One [`RestWrapper`] per `rest` connection, built once with its secrets resolved, its
//! templates compiled and its HTTP client made (see [`super::net`]). Each attempt goes through
//! the module `wrapper::http`, shared with SOAP, which bounds it by the call's deadline from
//! connect to last byte, a response body by [`MAX_BODY_BYTES`] and a `Retry-After` by
//! [`MAX_RETRY_AFTER`], and keeps every secret out of its messages. Of an answer with an error
//! status only the start is read, for the excerpt in the message.
//!
//! With a files bucket in the metadata, a successful answer over the connection's
//! `offload_threshold` is streamed into it and the result is `{ "file": <reference> }`, with
//! neither output mapping nor output schema applied (a paginated function's pages are never
//! offloaded); and a function with `body_file` sends a stored file's bytes as its body,
//! streamed from the bucket (see the module `wrapper::files`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome, Wrapper};
use url::Url;

use super::files;
use super::http::{
    Answer, Credentials, ErrorBodies, Redactor, Upstream, connection_headers, credentials, excerpt,
    header_name, truncate,
};
use super::oauth::TokenSources;
use super::output::map_output;
use super::paginate::Pager;
use super::template::{RequestTemplate, Templates, Text, Vars};
use crate::metadata::model::{Connection, JsonSchema, Pagination, Protocol, Request, Settings};
use crate::metadata::values::{Secret, SecretRef};
use crate::offload::Files;
use crate::queue::FileRecord;

pub use super::http::{MAX_BODY_BYTES, MAX_RETRY_AFTER};

/// Runs the callouts of one `rest` connection.
pub struct RestWrapper {
    upstream: Upstream,
    templates: Templates,
    functions: HashMap<String, RestFunction>,
    /// The connection's headers, sent with every request.
    headers: HeaderMap,
    idempotency_header: HeaderName,
    /// The connection's settings, which templates read as `settings.NAME`.
    settings: Settings,
    auth: Credentials,
}

struct RestFunction {
    method: Method,
    request: RequestTemplate,
    /// The endpoint joined with the path, when the path is no template (the same every call).
    fixed_url: Option<Result<Url, String>>,
    output: Vec<(String, String)>,
    output_schema: Option<JsonSchema>,
    /// How the answer's list is paged (see [`super::paginate`]).
    pagination: Option<Pagination>,
    /// The id of the stored file sent as the body (`body_file`), compiled.
    body_file: Option<Text>,
}

impl fmt::Debug for RestWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut functions: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        functions.sort_unstable();
        let auth = match &self.auth {
            Credentials::None => "none".to_string(),
            Credentials::Header(name, _) => format!("header {name}: ***"),
            Credentials::Query(name, _) => format!("query {name}=***"),
            Credentials::OAuth2(_) => "oauth2 bearer ***".to_string(),
        };
        f.debug_struct("RestWrapper")
            .field("connection", &self.upstream.connection)
            .field("endpoint", &self.upstream.endpoint.as_str())
            .field("allow_private_network", &self.upstream.allow_private)
            .field("functions", &functions)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl RestWrapper {
    /// Builds the wrapper of a `rest` connection. `secret` reads a secret reference; `files`
    /// is the metadata's files bucket, if it has one (large answers are offloaded there, and
    /// `body_file` reads from there).
    ///
    /// # Errors
    /// A message naming the connection and what could not be built: a secret reference that
    /// cannot be read (the reference, never a value), an auth type not supported yet, a
    /// header or template that cannot be used, the HTTP client.
    pub fn build(
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
        files: Option<Arc<Files>>,
    ) -> Result<RestWrapper, String> {
        RestWrapper::build_with(connection, secret, &TokenSources::default(), files)
    }

    /// [`RestWrapper::build`], taking an OAuth2 connection's token source from `tokens` (so
    /// that its token outlives a metadata reload).
    ///
    /// # Errors
    /// As [`RestWrapper::build`].
    pub fn build_with(
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
        tokens: &TokenSources,
        files: Option<Arc<Files>>,
    ) -> Result<RestWrapper, String> {
        let name = &connection.name;
        let fail = |message: String| format!("connection `{name}`: {message}");
        let Protocol::Rest {
            idempotency_header,
            settings,
        } = &connection.protocol
        else {
            return Err(fail("is not a rest connection".to_string()));
        };
        let endpoint = connection
            .endpoint
            .clone()
            .ok_or_else(|| fail("has no endpoint".to_string()))?;
        let idempotency_header = header_name(idempotency_header).map_err(&fail)?;
        let headers = connection_headers(connection).map_err(&fail)?;
        let mut secrets = Vec::new();
        let auth = match tokens.source(connection, secret) {
            Some(source) => Credentials::OAuth2(source.map_err(&fail)?),
            None => credentials(&connection.auth, secret, &mut secrets).map_err(&fail)?,
        };
        let mut redactor = Redactor::new(secrets);
        if let Credentials::OAuth2(source) = &auth {
            redactor = redactor.with_later(source.secrets());
        }
        let mut templates = Templates::new();
        let mut functions = HashMap::new();
        for (fname, f) in &connection.functions {
            let Request::Rest {
                method,
                path,
                query,
                headers,
                body,
                pagination,
                body_file,
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
            let body_file = match body_file {
                Some(source) => Some(
                    templates
                        .text_field(&format!("functions.{fname}.body_file"), source)
                        .map_err(&fail)?,
                ),
                None => None,
            };
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
                    pagination: pagination.clone(),
                    body_file,
                },
            );
        }
        Ok(RestWrapper {
            upstream: Upstream::new(connection, endpoint, redactor)?.with_files(files),
            templates,
            functions,
            headers,
            idempotency_header,
            settings: settings.clone(),
            auth,
        })
    }

    /// The variables the templates of one call see.
    fn vars<'a>(&'a self, call: &Call<'a>) -> Vars<'a> {
        Vars {
            input: call.input,
            settings: &self.settings,
            connection: &self.upstream.connection,
            endpoint: self.upstream.endpoint.as_str(),
            callout_id: call.callout_id,
            attempt: call.attempt,
            idempotency_key: call.idempotency_key,
        }
    }

    /// The stored file a `body_file` function sends: its id rendered, then looked up.
    ///
    /// # Errors
    /// See [`files::stored_file`]; the id's template failed ([`ErrorKind::InvalidRequest`]).
    async fn body_file(&self, id: &Text, call: &Call<'_>) -> Result<FileRecord, CallError> {
        let invalid = |message: String| self.upstream.invalid_request(call.function, message);
        let id = self
            .templates
            .render_field(id, &self.vars(call))
            .map_err(invalid)?;
        let files = self.upstream.files.as_ref();
        files::stored_file(
            files,
            &self.upstream.connection,
            call.function,
            &id,
            invalid,
        )
        .await
    }

    /// Makes the stored file `file`, if any, the body of `request` (opened anew each time).
    async fn attach(
        &self,
        request: &mut reqwest::Request,
        file: Option<&FileRecord>,
        call: &Call<'_>,
    ) -> Result<(), CallError> {
        match (file, &self.upstream.files) {
            (Some(file), Some(files)) => files::attach(files, file, request, call.deadline).await,
            _ => Ok(()),
        }
    }

    /// The request of one call, ready to send (without its body when that is a stored file:
    /// see [`RestWrapper::attach`]).
    fn request(&self, f: &RestFunction, call: &Call<'_>) -> Result<reqwest::Request, CallError> {
        let invalid = |message: String| self.upstream.invalid_request(call.function, message);
        let vars = self.vars(call);
        let rendered = self.templates.render(&f.request, &vars).map_err(invalid)?;
        let mut url = match &f.fixed_url {
            Some(fixed) => fixed.clone(),
            None => super::template::join(&self.upstream.endpoint, &rendered.path),
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
        self.upstream.check_url(&url)?;

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

    /// Sends one request of an attempt and reads its answer before the call's deadline. Every
    /// request of an attempt goes through here (each page of a paginated function too), so
    /// that credentials are applied the same way to each.
    ///
    /// `file` is the stored file sent as the body (`body_file`), attached to each request as
    /// it goes. With `offload`, a large successful answer goes to the files bucket (see
    /// `Upstream::send`); pages are never offloaded.
    ///
    /// # Errors
    /// The failed attempt's outcome (see `Upstream::send`), or the stored file could not be
    /// opened (see [`files::attach`]).
    ///
    /// With OAuth2, the request carries the connection's access token; an answer that says the
    /// token was refused (a 401, or the connection's `expired_when` rule) gets one new token
    /// and one more try, and a second refusal fails with [`ErrorKind::Auth`]. An offloaded
    /// answer is never taken for a refusal.
    async fn send(
        &self,
        mut request: reqwest::Request,
        file: Option<&FileRecord>,
        call: &Call<'_>,
        offload: bool,
    ) -> Result<(Answer, u64), Outcome> {
        let offload_for = offload.then_some(call.callout_id);
        let not_sent = |error: CallError| Outcome::failure(error, None, 0);
        let Credentials::OAuth2(source) = &self.auth else {
            self.attach(&mut request, file, call)
                .await
                .map_err(not_sent)?;
            return self
                .upstream
                .send(request, call.deadline, ErrorBodies::Excerpt, offload_for)
                .await;
        };
        // Cloned before a stored file is attached: a streamed body cannot be cloned, so the
        // second try opens the file anew.
        let again = request.try_clone();
        let token = source.token(call.deadline, None).await.map_err(not_sent)?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, token.header.clone());
        self.attach(&mut request, file, call)
            .await
            .map_err(not_sent)?;
        let (answer, bytes) = self
            .upstream
            .send(request, call.deadline, ErrorBodies::Excerpt, offload_for)
            .await?;
        let refused = |answer: &Answer| {
            answer.stored.is_none() && source.refused(answer.status.as_u16(), &answer.body)
        };
        let (true, Some(mut again)) = (refused(&answer), again) else {
            return Ok((answer, bytes));
        };
        let token = source
            .token(call.deadline, Some(token.generation))
            .await
            .map_err(|error| Outcome::failure(error, None, bytes))?;
        again
            .headers_mut()
            .insert(AUTHORIZATION, token.header.clone());
        self.attach(&mut again, file, call)
            .await
            .map_err(|error| Outcome::failure(error, None, bytes))?;
        let (answer, more) = self
            .upstream
            .send(again, call.deadline, ErrorBodies::Excerpt, offload_for)
            .await?;
        let bytes = bytes + more;
        if refused(&answer) {
            let refused = self.upstream.status_error(&answer);
            let mut error = CallError::new(
                ErrorKind::Auth,
                format!(
                    "`{}` refused a freshly fetched access token; {}",
                    self.upstream.connection, refused.message
                ),
            );
            error.retry_after = None;
            return Err(Outcome::failure(error, Some(answer.status.as_u16()), bytes));
        }
        Ok((answer, bytes))
    }

    /// The body of a successful answer as a value: `null` when empty, the JSON it holds, else
    /// its text when it is UTF-8, else `{ "base64": … }`.
    ///
    /// # Errors
    /// A message naming the connection when its content type says JSON and the body is not.
    fn body_value(&self, answer: &Answer) -> Result<Value, String> {
        let body = &answer.body;
        if body.is_empty() {
            return Ok(Value::Null);
        }
        let json_error = match serde_json::from_slice(body) {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let conn = &self.upstream.connection;
        let content_type = answer
            .headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let essence = content_type
            .as_deref()
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if essence == "application/json" || essence.ends_with("+json") {
            let essence = truncate(&self.upstream.redactor.redact(&essence), 80);
            let size = body.len();
            // Text is quoted (redacted, cut short); bytes that are not text are not.
            return Err(match std::str::from_utf8(body) {
                Ok(text) => format!(
                    "`{conn}` answered with content type `{essence}` but a body that is not JSON ({size} bytes; {json_error}): {}",
                    excerpt(self.upstream.redactor.redact(text).as_bytes())
                ),
                Err(_) => format!(
                    "`{conn}` answered with content type `{essence}` but a body that is not JSON ({size} bytes, not even UTF-8 text)"
                ),
            });
        }
        Ok(match std::str::from_utf8(body) {
            Ok(text) => Value::String(text.to_string()),
            // As an S3 `get` gives them: bytes never passed on mangled.
            Err(_) => serde_json::json!({ "base64": super::http::base64(body) }),
        })
    }

    /// The outcome of an answer: an error for an error status, else the mapped, checked data.
    fn outcome(&self, f: &RestFunction, call: &Call<'_>, answer: Answer, bytes: u64) -> Outcome {
        let code = answer.status.as_u16();
        if ErrorKind::from_status(code).is_some() {
            return Outcome::failure(self.upstream.status_error(&answer), Some(code), bytes);
        }
        if let Some(reference) = answer.stored {
            // Not read: neither the output mapping nor the output schema applies.
            return Outcome::success(files::data(reference), Some(code), bytes);
        }
        let body = match self.body_value(&answer) {
            Ok(body) => body,
            Err(message) => {
                let error = CallError::new(ErrorKind::InvalidResponse, message);
                return Outcome::failure(error, Some(code), bytes);
            }
        };
        let data = map_output(&f.output, body);
        if let Some(schema) = &f.output_schema
            && let Some(error) = self.upstream.schema_mismatch(call.function, schema, &data)
        {
            return Outcome::failure(error, Some(code), bytes);
        }
        Outcome::success(data, Some(code), bytes)
    }
}

#[async_trait]
impl Wrapper for RestWrapper {
    async fn call(&self, call: Call<'_>) -> Outcome {
        let Some(f) = self.functions.get(call.function) else {
            return self.upstream.no_function(call.function);
        };
        let request = match self.request(f, &call) {
            Ok(request) => request,
            Err(error) => return Outcome::failure(error, None, 0),
        };
        if let Some(pagination) = &f.pagination {
            return self.paginated(f, pagination, &call, request).await;
        }
        let file = match &f.body_file {
            Some(id) => match self.body_file(id, &call).await {
                Ok(file) => Some(file),
                Err(error) => return Outcome::failure(error, None, 0),
            },
            None => None,
        };
        match self.send(request, file.as_ref(), &call, true).await {
            Ok((answer, bytes)) => self.outcome(f, &call, answer, bytes),
            Err(outcome) => outcome,
        }
    }
}

impl RestWrapper {
    /// One attempt of a paginated function: every page sent by [`RestWrapper::send`], the
    /// items of all of them mapped one by one, as `{ items, pages, truncated }`.
    async fn paginated(
        &self,
        f: &RestFunction,
        pagination: &Pagination,
        call: &Call<'_>,
        first: reqwest::Request,
    ) -> Outcome {
        let pager = Pager {
            upstream: &self.upstream,
            function: call.function,
            pagination,
            api_key: match &self.auth {
                Credentials::Query(name, value) => Some((name.as_str(), value.expose())),
                _ => None,
            },
        };
        let collected = match pager
            .collect(first, call, |r| self.send(r, None, call, false))
            .await
        {
            Ok(collected) => collected,
            Err(outcome) => return outcome,
        };
        let items = collected
            .items
            .into_iter()
            .map(|item| map_output(&f.output, item))
            .collect();
        let data = serde_json::json!({
            "items": Value::Array(items),
            "pages": collected.pages,
            "truncated": collected.truncated,
        });
        let (status, bytes) = (Some(collected.status), collected.bytes);
        if let Some(schema) = &f.output_schema
            && let Some(error) = self.upstream.schema_mismatch(call.function, schema, &data)
        {
            return Outcome::failure(error, status, bytes);
        }
        Outcome::success(data, status, bytes)
    }
}
