//! Request templates: the path, query, headers and JSON body of a REST function, rendered
//! from a callout's input.
//!
//! Each wrapper owns one [`Templates`] (one minijinja `Environment`); every template is
//! compiled when the wrapper is built, never per call. Rendering is strict: an undefined
//! variable is an error, never empty text. What a template prints is made safe for where it
//! lands, so input can only ever be data:
//!
//! - in a path, every printed value is percent-encoded as one path segment (all but
//!   `A-Z a-z 0-9 - . _ ~`), `.` and `..` become `%2E` and `%2E%2E`, and an empty value is
//!   refused, so a value cannot add or remove segments, or add a query, a fragment or
//!   userinfo; [`join`] then refuses dot segments and checks that scheme, host and port are
//!   still the endpoint's;
//! - query values are plain text, encoded by `Url::query_pairs_mut`;
//! - header values are plain text, and a line break in one is an error;
//! - in a JSON body, a string that is exactly one `{{ expression }}` becomes the expression's
//!   value (a number stays a number, an object an object), and any other string is rendered
//!   as text into a JSON string, so values are JSON-escaped by construction.
//!
//! Templates read `input`, `settings` (the connection's plain values), `connection` and
//! `callout`, and call the helpers of [`crate::metadata::helpers`] (dates, base64, URL
//! encoding). Every render runs on the budget `helpers::FUEL`, and a rendered text over
//! `helpers::MAX_RENDERED_BYTES` is refused.

use minijinja::{Environment, Value};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;
use url::Url;

use crate::metadata::helpers;
use crate::metadata::model::Settings;

/// What a path value may keep unencoded: the unreserved characters of RFC 3986.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Name prefix of path templates, whose printed values the formatter encodes.
const PATH: &str = "path:";
/// Name prefix of the other templates.
const TEXT: &str = "text:";
/// Name prefix of templates that capture one expression's value.
const VALUE: &str = "value:";
/// The variable a value template assigns.
const CAPTURED: &str = "_value";
/// Deepest JSON value converted; deeper input is refused rather than overflowing the stack.
const MAX_DEPTH: usize = 128;

/// The compiled templates of one wrapper.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

/// Text that may be a template: kept as is when it has no `{{`, `{%` or `{#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Literal(String),
    /// The name of a compiled template.
    Template(String),
}

/// A JSON body whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A value with no template in it.
    Literal(Json),
    /// A string rendered as text.
    Text(String),
    /// A string that is exactly one expression: replaced by the expression's value.
    Value {
        /// The name of the compiled template.
        template: String,
        /// The keys of an expression that only reads the input (`input.a.b`): when every key
        /// is there, the value is read without running the template (which gives the same
        /// value); else the template runs and words the error.
        input_keys: Option<Vec<String>>,
    },
    Array(Vec<Body>),
    Object(Vec<(String, Body)>),
}

/// One function's request, compiled.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub path: Text,
    pub query: Vec<(String, Text)>,
    pub headers: Vec<(String, Text)>,
    pub body: Option<Body>,
}

/// One function's request, rendered for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The path after the endpoint's, every printed value encoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Json>,
}

/// The variables a template sees.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub input: &'a Json,
    /// The connection's settings, read as `settings.NAME`.
    pub settings: &'a Settings,
    pub connection: &'a str,
    pub endpoint: &'a str,
    pub callout_id: &'a str,
    pub attempt: u32,
    pub idempotency_key: &'a str,
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = helpers::environment();
        env.set_formatter(|out, state, value| {
            if !state.name().starts_with(PATH) {
                return minijinja::escape_formatter(out, state, value);
            }
            let text = match value.as_str() {
                Some(s) => s.to_string(),
                None => value.to_string(),
            };
            let encoded = match text.as_str() {
                "" => {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        "a value printed into the path is empty",
                    ));
                }
                "." => "%2E".to_string(),
                ".." => "%2E%2E".to_string(),
                _ => utf8_percent_encode(&text, SEGMENT).to_string(),
            };
            out.write_str(&encoded).map_err(minijinja::Error::from)
        });
        Templates { env }
    }

    /// Compiles one function's request. `function` names the templates in errors.
    ///
    /// # Errors
    /// A template does not compile (validation has already checked them, so this is rare).
    pub fn request(
        &mut self,
        function: &str,
        path: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
        body: Option<&Json>,
    ) -> Result<RequestTemplate, String> {
        let path = self.text(PATH, &format!("functions.{function}.path"), path)?;
        let query = query
            .iter()
            .map(|(k, v)| {
                let name = format!("functions.{function}.query.{k}");
                Ok((k.clone(), self.text(TEXT, &name, v)?))
            })
            .collect::<Result<_, String>>()?;
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let name = format!("functions.{function}.headers.{k}");
                Ok((k.clone(), self.text(TEXT, &name, v)?))
            })
            .collect::<Result<_, String>>()?;
        let body = match body {
            Some(b) => Some(self.body(&format!("functions.{function}.body"), b)?),
            None => None,
        };
        Ok(RequestTemplate {
            path,
            query,
            headers,
            body,
        })
    }

    /// Compiles one plain text template (an S3 object key, prefix or file id): what it
    /// prints is kept as is, neither encoded nor escaped. `name` is the field path that errors
    /// name, like `functions.store.key`.
    ///
    /// # Errors
    /// The template does not compile.
    pub fn text_field(&mut self, name: &str, source: &str) -> Result<Text, String> {
        self.text(TEXT, name, source)
    }

    /// Renders one template of [`Templates::text_field`] for one call.
    ///
    /// # Errors
    /// As [`Templates::render`].
    pub fn render_field(&self, text: &Text, vars: &Vars<'_>) -> Result<String, String> {
        let cx = Context {
            vars,
            value: std::cell::OnceCell::new(),
        };
        if !within_depth(vars.input, 0) {
            cx.get()?;
        }
        self.render_text(text, &cx)
    }

    fn text(&mut self, prefix: &str, name: &str, source: &str) -> Result<Text, String> {
        if !is_template(source) {
            return Ok(Text::Literal(source.to_string()));
        }
        let full = format!("{prefix}{name}");
        self.add(&full, name, source.to_string())?;
        Ok(Text::Template(full))
    }

    fn add(&mut self, full: &str, name: &str, source: String) -> Result<(), String> {
        self.env
            .add_template_owned(full.to_string(), source)
            .map_err(|err| format!("`{name}` is not a valid template: {}", describe(&err)))
    }

    fn body(&mut self, name: &str, value: &Json) -> Result<Body, String> {
        Ok(match value {
            Json::String(s) if is_template(s) => match single_expression(s) {
                Some(expr) if self.env.compile_expression(expr).is_ok() => {
                    let full = format!("{VALUE}{name}");
                    self.add(&full, name, format!("{{% set {CAPTURED} = ({expr}) %}}"))?;
                    Body::Value {
                        template: full,
                        input_keys: input_keys(expr),
                    }
                }
                _ => match self.text(TEXT, name, s)? {
                    Text::Template(full) => Body::Text(full),
                    Text::Literal(s) => Body::Literal(Json::String(s)),
                },
            },
            Json::Array(items) => Body::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.body(&format!("{name}[{i}]"), item))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(map) => Body::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.body(&format!("{name}.{k}"), v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Body::Literal(other.clone()),
        })
    }

    /// Renders one request for one call.
    ///
    /// # Errors
    /// A template failed (an undefined variable, an empty path value, a filter error), or a
    /// header value would contain a line break. The message names the field, never a secret
    /// (templates see no secret).
    pub fn render(&self, request: &RequestTemplate, vars: &Vars<'_>) -> Result<Rendered, String> {
        // The context is built when a template first needs it (often none does); input too
        // deep to build it from is refused first, as always.
        let cx = Context {
            vars,
            value: std::cell::OnceCell::new(),
        };
        if !within_depth(vars.input, 0) {
            cx.get()?;
        }
        let path = self.render_text(&request.path, &cx)?;
        let query = request
            .query
            .iter()
            .map(|(k, t)| Ok((k.clone(), self.render_text(t, &cx)?)))
            .collect::<Result<_, String>>()?;
        let mut headers = Vec::with_capacity(request.headers.len());
        for (name, t) in &request.headers {
            let value = self.render_text(t, &cx)?;
            if value.contains(['\r', '\n']) {
                return Err(format!(
                    "header `{name}` would contain a line break; expected a single line"
                ));
            }
            headers.push((name.clone(), value));
        }
        let body = match &request.body {
            Some(b) => Some(self.render_body(b, &cx)?),
            None => None,
        };
        Ok(Rendered {
            path,
            query,
            headers,
            body,
        })
    }

    fn render_text(&self, text: &Text, cx: &Context<'_>) -> Result<String, String> {
        match text {
            Text::Literal(s) => Ok(s.clone()),
            Text::Template(name) => self.render_template(name, cx),
        }
    }

    fn render_template(&self, name: &str, cx: &Context<'_>) -> Result<String, String> {
        let cx = cx.get()?;
        let text = self
            .env
            .get_template(name)
            .and_then(|t| t.render(cx))
            .map_err(|err| render_error(name, &err))?;
        helpers::check_size(&text)
            .map_err(|why| format!("cannot render `{}`: {why}", bare(name)))?;
        Ok(text)
    }

    fn render_body(&self, body: &Body, cx: &Context<'_>) -> Result<Json, String> {
        Ok(match body {
            Body::Literal(v) => v.clone(),
            Body::Text(name) => Json::String(self.render_template(name, cx)?),
            Body::Value {
                template,
                input_keys,
            } => {
                let found = input_keys.as_deref().and_then(|keys| {
                    let value = keys
                        .iter()
                        .try_fold(cx.vars.input, |v, k| v.as_object()?.get(k))?;
                    Some((value, keys.len()))
                });
                let value = match found {
                    // What the template would assign: the input's value, as the context holds it.
                    Some((value, depth)) => from_json(value, depth)?,
                    None => {
                        let cx = cx.get()?;
                        let captured = self
                            .env
                            .get_template(template)
                            .and_then(|t| t.render_captured(cx))
                            .map_err(|err| render_error(template, &err))?;
                        captured.state().lookup(CAPTURED).unwrap_or_default()
                    }
                };
                to_json(&value, 0)
                    .map_err(|why| format!("cannot render `{}`: {why}", bare(template)))?
            }
            Body::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|item| self.render_body(item, cx))
                    .collect::<Result<_, _>>()?,
            ),
            Body::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_body(v, cx)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// Joins the endpoint and a rendered path: the endpoint's path, then `path`; the endpoint's
/// query is kept.
///
/// # Errors
/// The path has a `.` or `..` segment (in any spelling URL parsers accept, such as `%2E%2E`,
/// which they resolve like `..`), or the result's scheme, host or port differ from the
/// endpoint's.
pub fn join(endpoint: &Url, path: &str) -> Result<Url, String> {
    for segment in path.split('/') {
        let lower = segment.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "." | "%2e" | ".." | ".%2e" | "%2e." | "%2e%2e"
        ) {
            return Err(format!(
                "the path has a `{segment}` segment, which would move to another path; a value of `.` or `..` cannot be sent in the path"
            ));
        }
    }
    let mut url = endpoint.clone();
    let base = endpoint.path().trim_end_matches('/');
    url.set_path(&format!("{base}{path}"));
    if url.scheme() != endpoint.scheme()
        || url.host() != endpoint.host()
        || url.port_or_known_default() != endpoint.port_or_known_default()
        || url.username() != endpoint.username()
        || url.password() != endpoint.password()
    {
        return Err(
            "the rendered path would change the endpoint's scheme, host or port".to_string(),
        );
    }
    Ok(url)
}

/// Whether text holds template syntax.
fn is_template(source: &str) -> bool {
    source.contains("{{") || source.contains("{%") || source.contains("{#")
}

/// The expression of a string that is exactly `{{ expression }}` (whitespace control marks
/// allowed), if it may be one; the caller compiles it to be sure.
fn single_expression(source: &str) -> Option<&str> {
    let inner = source.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    (!inner.trim().is_empty()).then_some(inner)
}

/// The template's name without its kind prefix, as the field path an admin knows.
fn bare(name: &str) -> &str {
    [PATH, TEXT, VALUE]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

fn describe(err: &minijinja::Error) -> String {
    helpers::describe(err)
}

fn render_error(name: &str, err: &minijinja::Error) -> String {
    format!("cannot render `{}`: {}", bare(name), describe(err))
}

/// The keys of an expression that reads the input and nothing else: `input` then one or more
/// `.name` attributes (plain ASCII names, as minijinja reads them).
fn input_keys(expr: &str) -> Option<Vec<String>> {
    let mut parts = expr.trim().split('.');
    if parts.next() != Some("input") {
        return None;
    }
    let keys: Vec<String> = parts
        .map(|part| {
            let mut chars = part.chars();
            let head = chars.next()?;
            let name = (head.is_ascii_alphabetic() || head == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            name.then(|| part.to_string())
        })
        .collect::<Option<_>>()?;
    (!keys.is_empty()).then_some(keys)
}

/// The template context of one call, built on first use.
struct Context<'a> {
    vars: &'a Vars<'a>,
    value: std::cell::OnceCell<Value>,
}

impl Context<'_> {
    fn get(&self) -> Result<&Value, String> {
        if let Some(value) = self.value.get() {
            return Ok(value);
        }
        let value = context(self.vars)?;
        Ok(self.value.get_or_init(|| value))
    }
}

/// Whether [`from_json`] can convert `json` (no deeper than [`MAX_DEPTH`]).
fn within_depth(json: &Json, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match json {
        Json::Array(items) => items.iter().all(|item| within_depth(item, depth + 1)),
        Json::Object(map) => map.values().all(|v| within_depth(v, depth + 1)),
        _ => true,
    }
}

/// The template context: `input`, `settings`, `connection` and `callout`.
fn context(vars: &Vars<'_>) -> Result<Value, String> {
    let input = from_json(vars.input, 0)?;
    let settings = Value::from_pairs(
        vars.settings
            .iter()
            .map(|(name, value)| Ok((name.clone(), from_json(value, 1)?)))
            .collect::<Result<Vec<_>, String>>()?,
    );
    let connection = Value::from_pairs([
        ("name", Value::from(vars.connection)),
        ("endpoint", Value::from(vars.endpoint)),
    ]);
    let callout = Value::from_pairs([
        ("id", Value::from(vars.callout_id)),
        ("attempt", Value::from(vars.attempt)),
        ("idempotency_key", Value::from(vars.idempotency_key)),
    ]);
    Ok(Value::from_pairs([
        ("input", input),
        ("settings", settings),
        ("connection", connection),
        ("callout", callout),
    ]))
}

fn from_json(json: &Json, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "the input is nested deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(
            items
                .iter()
                .map(|item| from_json(item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Json::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v, depth + 1)?)))
                .collect::<Result<Vec<_>, String>>()?,
        ),
    })
}

fn to_json(value: &Value, depth: usize) -> Result<Json, String> {
    use minijinja::value::ValueKind;
    if depth > MAX_DEPTH {
        return Err(format!(
            "the value is nested deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(match value.kind() {
        ValueKind::Undefined => return Err("undefined value".to_string()),
        ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                Json::from(i)
            } else if let Ok(u) = u64::try_from(value.clone()) {
                Json::from(u)
            } else {
                let f = f64::try_from(value.clone()).map_err(|err| describe(&err))?;
                serde_json::Number::from_f64(f)
                    .map(Json::Number)
                    .ok_or_else(|| format!("{f} is not a JSON number"))?
            }
        }
        ValueKind::String => Json::String(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Bytes => Json::Array(
            value
                .as_bytes()
                .unwrap_or_default()
                .iter()
                .map(|b| Json::from(*b))
                .collect(),
        ),
        ValueKind::Seq | ValueKind::Iterable => Json::Array(
            value
                .try_iter()
                .map_err(|err| describe(&err))?
                .map(|item| to_json(&item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            for key in value.try_iter().map_err(|err| describe(&err))? {
                let item = value.get_item(&key).map_err(|err| describe(&err))?;
                let key = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                map.insert(key, to_json(&item, depth + 1)?);
            }
            Json::Object(map)
        }
        ValueKind::Plain => Json::String(value.to_string()),
        ValueKind::Invalid => return Err(value.to_string()),
        _ => Json::String(value.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The settings every test's connection has.
    fn settings() -> &'static Settings {
        static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();
        SETTINGS.get_or_init(|| {
            [
                ("account_id", json!("A-17")),
                ("api_version", json!("2024-01")),
                ("page_size", json!(50)),
                ("sandbox", json!(false)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        })
    }

    fn vars(input: &Json) -> Vars<'_> {
        Vars {
            input,
            settings: settings(),
            connection: "crm",
            endpoint: "https://api.example.com/v1",
            callout_id: "c-1",
            attempt: 2,
            idempotency_key: "key-1",
        }
    }

    fn path(template: &str, input: Json) -> Result<String, String> {
        let mut t = Templates::new();
        let request = t.request("f", template, &[], &[], None)?;
        t.render(&request, &vars(&input)).map(|r| r.path)
    }

    fn body(template: Json, input: Json) -> Result<Json, String> {
        let mut t = Templates::new();
        let request = t.request("f", "/", &[], &[], Some(&template))?;
        t.render(&request, &vars(&input))
            .map(|r| r.body.expect("a body"))
    }

    #[test]
    fn path_values_are_encoded_as_one_segment() {
        let cases = [
            ("plain-Value_1.2~", "plain-Value_1.2~"),
            ("../admin", "..%2Fadmin"),
            ("a/b", "a%2Fb"),
            ("a?b=1", "a%3Fb%3D1"),
            ("a#frag", "a%23frag"),
            ("100%", "100%25"),
            ("user@evil.example", "user%40evil.example"),
            ("host:80", "host%3A80"),
            ("two words", "two%20words"),
            ("line\r\nbreak", "line%0D%0Abreak"),
            ("back\\slash", "back%5Cslash"),
            ("Zoë", "Zo%C3%AB"),
            ("%2e%2e", "%252e%252e"),
            (".", "%2E"),
            ("..", "%2E%2E"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                path("/items/{{ input.id }}/x", json!({ "id": value })),
                Ok(format!("/items/{expected}/x")),
                "value {value:?}"
            );
        }
        assert_eq!(
            path("/items/{{ input.n }}", json!({ "n": 42 })),
            Ok("/items/42".into())
        );
    }

    #[test]
    fn dot_values_cannot_climb_the_path() {
        let endpoint = Url::parse("https://api.example.com/v1/").expect("a URL");
        for value in [".", ".."] {
            let rendered = path("/items/{{ input.id }}", json!({ "id": value })).expect("renders");
            let err = join(&endpoint, &rendered).expect_err("dot segment");
            assert!(err.starts_with("the path has a `%2E"), "{err}");
        }
        let rendered = path("/items/{{ input.id }}.json", json!({ "id": ".." })).expect("renders");
        assert_eq!(
            join(&endpoint, &rendered).map(|u| u.to_string()),
            Ok("https://api.example.com/v1/items/%2E%2E.json".into())
        );
    }

    #[test]
    fn empty_and_undefined_path_values_are_errors() {
        assert_eq!(
            path("/items/{{ input.id }}", json!({ "id": "" })),
            Err("cannot render `functions.f.path`: invalid operation: a value printed into the path is empty".into())
        );
        assert_eq!(
            path("/items/{{ input.id }}", json!({})),
            Err("cannot render `functions.f.path`: undefined value".into())
        );
    }

    #[test]
    fn join_keeps_the_endpoint_path_and_query() {
        let endpoint = Url::parse("https://api.example.com/v1?tenant=7").expect("a URL");
        let url = join(&endpoint, "/items/a%2Fb").expect("joins");
        assert_eq!(
            url.as_str(),
            "https://api.example.com/v1/items/a%2Fb?tenant=7"
        );
        let root = Url::parse("http://127.0.0.1:8080").expect("a URL");
        assert_eq!(
            join(&root, "//evil.example/x").map(|u| u.to_string()),
            Ok("http://127.0.0.1:8080//evil.example/x".into())
        );
        assert!(join(&root, "/a/%2e%2E/b").is_err());
    }

    #[test]
    fn context_has_connection_and_callout() {
        assert_eq!(
            path(
                "/{{ connection.name }}/{{ callout.id }}/{{ callout.attempt }}/{{ callout.idempotency_key }}",
                json!({})
            ),
            Ok("/crm/c-1/2/key-1".into())
        );
        assert_eq!(
            path("/{{ connection.missing }}", json!({})),
            Err("cannot render `functions.f.path`: undefined value".into())
        );
    }

    #[test]
    fn query_and_headers_render_as_text_and_headers_refuse_line_breaks() {
        let mut t = Templates::new();
        let request = t
            .request(
                "f",
                "/search",
                &[
                    ("q".into(), "{{ input.q }}".into()),
                    ("size".into(), "100".into()),
                    ("cur".into(), "{{ input.cur | default('EUR') }}".into()),
                ],
                &[("X-Tag".into(), "tag-{{ input.tag }}".into())],
                None,
            )
            .expect("compiles");
        let input = json!({ "q": "a&b=c <d>", "tag": "t1" });
        let rendered = t.render(&request, &vars(&input)).expect("renders");
        assert_eq!(
            rendered.query,
            vec![
                ("q".into(), "a&b=c <d>".into()),
                ("size".into(), "100".into()),
                ("cur".into(), "EUR".into()),
            ]
        );
        assert_eq!(rendered.headers, vec![("X-Tag".into(), "tag-t1".into())]);
        let input = json!({ "q": "", "tag": "x\r\nSet-Cookie: a=b" });
        assert_eq!(
            t.render(&request, &vars(&input)),
            Err("header `X-Tag` would contain a line break; expected a single line".into())
        );
    }

    #[test]
    fn body_expressions_keep_their_json_type() {
        let input = json!({
            "amount": 12.5,
            "count": 3,
            "big": 18446744073709551615u64,
            "flag": true,
            "none": null,
            "customer": { "name": "Ann \"A\" <a@example.com>", "tags": ["x", "y"] },
            "note": "line1\nline2 \"quoted\"",
        });
        let template = json!({
            "amount": "{{ input.amount }}",
            "count": "{{input.count}}",
            "big": "{{ input.big }}",
            "flag": "{{- input.flag -}}",
            "none": "{{ input.none }}",
            "customer": "{{ input.customer }}",
            "sum": "{{ input.count + 1 }}",
            "label": "Invoice {{ input.count }} for {{ input.customer.name }}",
            "note": "{{ input.note }}",
            "two": "{{ input.count }}{{ input.count }}",
            "fixed": ["literal", 7, false, null, { "k": "{{ connection.name }}" }],
        });
        assert_eq!(
            body(template, input),
            Ok(json!({
                "amount": 12.5,
                "count": 3,
                "big": 18446744073709551615u64,
                "flag": true,
                "none": null,
                "customer": { "name": "Ann \"A\" <a@example.com>", "tags": ["x", "y"] },
                "sum": 4,
                "label": "Invoice 3 for Ann \"A\" <a@example.com>",
                "note": "line1\nline2 \"quoted\"",
                "two": "33",
                "fixed": ["literal", 7, false, null, { "k": "crm" }],
            }))
        );
    }

    #[test]
    fn body_with_an_undefined_value_is_an_error() {
        assert_eq!(
            body(json!({ "a": ["{{ input.missing }}"] }), json!({})),
            Err("cannot render `functions.f.body.a[0]`: undefined value".into())
        );
        assert_eq!(
            body(json!({ "a": "x {{ input.missing }}" }), json!({})),
            Err("cannot render `functions.f.body.a`: undefined value".into())
        );
    }

    #[test]
    fn strings_that_only_look_like_one_expression_render_as_text() {
        assert_eq!(
            body(
                json!("{{ input.a }} and {{ input.b }}"),
                json!({ "a": 1, "b": 2 })
            ),
            Ok(json!("1 and 2"))
        );
        assert_eq!(body(json!("{{ '%}' }}"), json!({})), Ok(json!("%}")));
    }

    /// The same body with every expression run as a template.
    fn always_run(body: &Body) -> Body {
        match body {
            Body::Value { template, .. } => Body::Value {
                template: template.clone(),
                input_keys: None,
            },
            Body::Array(items) => Body::Array(items.iter().map(always_run).collect()),
            Body::Object(fields) => Body::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), always_run(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    #[test]
    fn input_reads_give_what_running_the_template_gives() {
        let mut t = Templates::new();
        let template = json!({
            "a": "{{ input.a }}",
            "b": "{{ input.a.b }}",
            "c": ["{{- input.none -}}", "{{input.true}}", "{{ input._x9 }}"],
            "d": "{{ input.a.b.c }}",
        });
        let request = t
            .request("f", "/", &[], &[], Some(&template))
            .expect("compiles");
        let Some(Body::Object(fields)) = &request.body else {
            panic!("an object body");
        };
        let shortcuts = fields
            .iter()
            .filter(|(_, v)| {
                matches!(
                    v,
                    Body::Value {
                        input_keys: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(shortcuts, 3, "{fields:?}");
        let slow = RequestTemplate {
            body: request.body.as_ref().map(always_run),
            ..request.clone()
        };
        // At `input.a.b.c` (depth 3): a number at the deepest level the context takes, and
        // one level deeper.
        let mut deepest = json!(1);
        for _ in 3..MAX_DEPTH {
            deepest = json!([deepest]);
        }
        let too_deep = json!([deepest]);
        let inputs = [
            json!({"a": {"b": {"c": 1}}, "none": null, "true": false, "_x9": "x"}),
            json!({"a": {"b": {"c": 2.0}}, "none": 1, "true": -0.0, "_x9": 1e20}),
            json!({"a": {"b": {"c": [1.5, -2, 18446744073709551615u64, "é"]}}, "none": {}, "true": [], "_x9": {"k": [null]}}),
            json!({"a": {"b": 7}, "none": 0, "true": 0, "_x9": 0}),
            json!({"a": [1], "none": 0, "true": 0, "_x9": 0}),
            json!({"a": {"b": {"c": 1}}}),
            json!({"a": {"b": {"c": deepest}}, "none": 0, "true": 0, "_x9": 0}),
            json!({"a": {"b": {"c": too_deep}}, "none": 0, "true": 0, "_x9": 0}),
        ];
        for input in &inputs {
            assert_eq!(
                t.render(&request, &vars(input)),
                t.render(&slow, &vars(input)),
                "{input}"
            );
        }
        assert!(t.render(&request, &vars(&inputs[0])).is_ok());
        assert!(t.render(&request, &vars(&inputs[6])).is_ok());
        assert_eq!(
            t.render(&request, &vars(&inputs[7])),
            Err(format!(
                "the input is nested deeper than {MAX_DEPTH} levels"
            ))
        );
    }

    #[test]
    fn only_plain_input_attributes_are_read_without_the_template() {
        assert_eq!(input_keys(" input.a "), Some(vec!["a".to_string()]));
        assert_eq!(
            input_keys("input.a_1.B"),
            Some(vec!["a_1".to_string(), "B".to_string()])
        );
        for expr in [
            "input",
            "input.0",
            "input.a|upper",
            "input..a",
            "input.a b",
            "input['a']",
            "input.a + 1",
            "inputs.a",
            "connection.name",
            "input.é",
            "input.1a",
        ] {
            assert_eq!(input_keys(expr), None, "{expr}");
        }
    }

    /// Renders `template` as one JSON body string (text or a single expression).
    fn text(template: &str, input: Json) -> Result<Json, String> {
        body(json!(template), input)
    }

    #[test]
    fn settings_are_read_by_name_and_keep_their_type() {
        let mut t = Templates::new();
        let request = t
            .request(
                "f",
                "/accounts/{{ settings.account_id }}/orders",
                &[("version".into(), "{{ settings.api_version }}".into())],
                &[("X-Account".into(), "acct-{{ settings.account_id }}".into())],
                Some(&json!({
                    "size": "{{ settings.page_size }}",
                    "sandbox": "{{ settings.sandbox }}",
                    "label": "{{ settings.account_id | lower }}/{{ input.n }}",
                })),
            )
            .expect("compiles");
        let input = json!({ "n": 3 });
        assert_eq!(
            t.render(&request, &vars(&input)),
            Ok(Rendered {
                path: "/accounts/A-17/orders".into(),
                query: vec![("version".into(), "2024-01".into())],
                headers: vec![("X-Account".into(), "acct-A-17".into())],
                body: Some(json!({ "size": 50, "sandbox": false, "label": "a-17/3" })),
            })
        );
    }

    #[test]
    fn an_undefined_setting_is_an_error() {
        assert_eq!(
            path("/{{ settings.acount_id }}", json!({})),
            Err("cannot render `functions.f.path`: undefined value".into())
        );
        assert_eq!(
            text("{{ settings.missing }}", json!({})),
            Err("cannot render `functions.f.body`: undefined value".into())
        );
    }

    #[test]
    fn dates_are_formatted_with_strftime_formats() {
        assert_eq!(
            text(
                "{{ input.at | datetimeformat(format='%Y-%m-%dT%H:%M:%SZ') }}",
                json!({ "at": 1_700_000_000 })
            ),
            Ok(json!("2023-11-14T22:13:20Z"))
        );
        assert_eq!(
            text(
                "{{ input.at | datetimeformat(format='iso') }}",
                json!({ "at": "2024-03-05T14:07:09+01:00" })
            ),
            Ok(json!("2024-03-05T14:07:09+01:00"))
        );
        assert_eq!(
            text(
                "{{ input.day | dateformat(format='%d.%m.%Y') }}",
                json!({ "day": "2024-03-05" })
            ),
            Ok(json!("05.03.2024"))
        );
        assert_eq!(
            text(
                "{{ input.at | timeformat(format='%H:%M') }}",
                json!({ "at": "2024-03-05T14:07:09Z" })
            ),
            Ok(json!("14:07"))
        );
        assert_eq!(
            text("{{ input.day | datetimeformat }}", json!({ "day": "5 March" })),
            Err("cannot render `functions.f.body`: invalid operation: not a valid date or timestamp".into())
        );
    }

    #[test]
    fn now_is_the_current_time() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let rendered =
            text("{{ now() | datetimeformat(format='%s') }}", json!({})).expect("renders");
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let seconds: u64 = rendered
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a number of seconds: {rendered}"));
        assert!(
            (before..=after).contains(&seconds),
            "{seconds} not in {before}..={after}"
        );
        let year = text("{{ now() | dateformat(format='%Y') }}", json!({})).expect("renders");
        assert_eq!(
            year,
            json!(time::OffsetDateTime::now_utc().year().to_string())
        );
    }

    #[test]
    fn base64_encodes_and_decodes_text() {
        assert_eq!(
            text(
                "{{ input.user ~ ':' ~ input.key | b64encode }}",
                json!({ "user": "crm", "key": "pa ss" })
            ),
            Ok(json!("crm:cGEgc3M="))
        );
        assert_eq!(
            text(
                "{{ (input.user ~ ':' ~ input.key) | b64encode }}",
                json!({ "user": "crm", "key": "pa ss" })
            ),
            Ok(json!("Y3JtOnBhIHNz"))
        );
        assert_eq!(
            text("{{ 'Zoë' | b64encode }}", json!({})),
            Ok(json!("Wm/Dqw=="))
        );
        for encoded in ["Wm/Dqw==", "Wm/Dqw", " Wm/Dqw==\n"] {
            assert_eq!(
                text("{{ input.e | b64decode }}", json!({ "e": encoded })),
                Ok(json!("Zoë")),
                "{encoded:?}"
            );
        }
        assert_eq!(
            text("{{ input.e | b64decode }}", json!({ "e": "not base64!" })),
            Err("cannot render `functions.f.body`: invalid operation: b64decode: the text is not base64 (Invalid symbol 32, offset 3.)".into())
        );
        assert_eq!(
            text("{{ input.e | b64decode }}", json!({ "e": "/w==" })),
            Err("cannot render `functions.f.body`: invalid operation: b64decode: the decoded bytes are not UTF-8 text".into())
        );
        assert_eq!(
            text("{{ input.e | b64encode }}", json!({ "e": { "a": 1 } })),
            Err("cannot render `functions.f.body`: invalid operation: b64encode expects text, not map".into())
        );
    }

    #[test]
    fn urlencode_encodes_text_and_mappings() {
        assert_eq!(
            text("{{ input.q | urlencode }}", json!({ "q": "a b&c=d/é?" })),
            Ok(json!("a%20b%26c%3Dd/%C3%A9%3F"))
        );
        assert_eq!(
            text(
                "https://crm.example.com/back?{{ {'case': input.id, 'to': 'a b'} | urlencode }}",
                json!({ "id": "C&1" })
            ),
            Ok(json!("https://crm.example.com/back?case=C%261&to=a%20b"))
        );
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let spent = Err(format!(
            "cannot render `functions.f.body`: the template used up its budget of {} steps (a loop too long or a text too large)",
            helpers::FUEL
        ));
        assert_eq!(
            text(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                json!({})
            ),
            spent
        );
        assert_eq!(text("{{ 'x' * 1000000000 }}", json!({})), spent);
        assert_eq!(
            text(
                "{% for i in range(100000) %}{{ input.s }}{% endfor %}",
                json!({ "s": "y".repeat(1000) })
            ),
            spent
        );
        // A short loop is well within the budget.
        assert_eq!(
            text(
                "{% for i in range(1000) %}{{ i % 10 }}{% endfor %}",
                json!({})
            )
            .map(|v| v.as_str().map(str::len)),
            Ok(Some(1000))
        );
    }

    #[test]
    fn a_rendered_text_over_the_size_limit_is_refused() {
        let big = "x".repeat(helpers::MAX_RENDERED_BYTES);
        assert_eq!(
            text("<{{ input.big }}>", json!({ "big": big })),
            Err(format!(
                "cannot render `functions.f.body`: the rendered text is {} bytes, more than the 8 MiB a template may produce",
                helpers::MAX_RENDERED_BYTES + 2
            ))
        );
    }

    #[test]
    fn templates_reach_no_file_and_no_environment() {
        assert_eq!(
            text("{% include '/etc/passwd' %}", json!({})),
            Err("cannot render `functions.f.body`: template not found: tried to include non-existing template '/etc/passwd'".into())
        );
        assert_eq!(
            text("{{ env('HOME') }}", json!({})),
            Err("cannot render `functions.f.body`: unknown function: env is unknown".into())
        );
    }

    #[test]
    fn templates_are_compiled_once_at_build() {
        let mut t = Templates::new();
        let err = t
            .request("f", "/{{ input.a ", &[], &[], None)
            .expect_err("syntax error");
        assert!(
            err.starts_with("`functions.f.path` is not a valid template: syntax error"),
            "{err}"
        );
    }
}
