//! What validation proved: the metadata the engine runs on.
//!
//! Every value here has been checked: URLs parsed, rates and durations read, JSON Schemas
//! compiled, templates parsed and their fields declared. Defaults are filled in, so a reader
//! never has to know them. Secrets are still references; they are read when the engine builds
//! its clients ([`Metadata::check_secrets`] tries them all without keeping any value).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::config::{
    ApiKeyLocation, HttpMethod, OAuth2ClientAuth, S3Checksums, S3Operation, ServerSideEncryption,
    SoapVersion, WsPasswordType,
};
use super::problem::Problem;
use super::values::{Rate, SecretRef};
use super::yaml::Pos;

/// All connections of a metadata folder, by name.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub connections: BTreeMap<String, Arc<Connection>>,
}

impl Metadata {
    /// The function `connection.function`, if both exist.
    pub fn function(&self, reference: &str) -> Option<(&Arc<Connection>, &Function)> {
        let (conn, func) = reference.split_once('.')?;
        let connection = self.connections.get(conn)?;
        Some((connection, connection.functions.get(func)?))
    }

    /// Every function, as (`connection.function`, connection, function), sorted.
    pub fn functions(&self) -> impl Iterator<Item = (String, &Arc<Connection>, &Function)> {
        self.connections.iter().flat_map(|(cname, conn)| {
            conn.functions
                .iter()
                .map(move |(fname, f)| (format!("{cname}.{fname}"), conn, f))
        })
    }

    /// Tries every secret reference with `env` for environment variables, and reports each
    /// one that cannot be read. Values are dropped at once.
    pub fn check_secrets(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut problems = Vec::new();
        for conn in self.connections.values() {
            let base = conn.source.file.parent().unwrap_or(Path::new("."));
            for used in &conn.secrets {
                if let Err(message) = used.reference.resolve(env, base) {
                    problems.push(Problem {
                        file: conn.source.file.clone(),
                        line: used.pos.line,
                        column: used.pos.col,
                        path: used.path.clone(),
                        message,
                    });
                }
            }
        }
        problems
    }
}

/// Where something was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub pos: Pos,
}

/// A place a secret reference is used, for reporting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    pub path: String,
    pub pos: Pos,
    pub reference: SecretRef,
}

/// One validated connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    /// `rest`, `soap`, `s3` or a plugin's type name.
    pub type_name: String,
    pub description: Option<String>,
    pub source: Source,
    /// Base URL (REST, SOAP, plugins that have one; S3 when not AWS).
    pub endpoint: Option<Url>,
    pub allow_private_network: bool,
    pub auth: Auth,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    /// A successful answer's body larger than this many bytes is streamed to the files
    /// bucket (the `s3` connection with `files:`) and the result holds its reference
    /// (REST and SOAP; default 1 MiB). Without a files bucket, bodies stay in the store.
    pub offload_threshold: u64,
    pub protocol: Protocol,
    pub functions: BTreeMap<String, Function>,
    /// Every secret reference of the connection, with where it is written.
    pub secrets: Vec<SecretUse>,
}

/// What is particular to each connection type.
#[derive(Debug, Clone)]
pub enum Protocol {
    Rest {
        idempotency_header: String,
        /// Plain values the templates read as `settings.NAME` (text, numbers, booleans).
        settings: Settings,
    },
    Soap {
        version: SoapVersion,
        /// The WS-Security `UsernameToken` every request carries, if any.
        ws_security: Option<WsSecurity>,
        /// Plain values the body templates read as `settings.NAME`.
        settings: Settings,
    },
    S3 {
        bucket: String,
        region: String,
        path_style: bool,
        server_side_encryption: Option<ServerSideEncryption>,
        kms_key_id: Option<String>,
        /// When request checksums are sent (`when_required` for servers that refuse them).
        checksums: S3Checksums,
        /// Present on the one connection whose bucket holds `POST /v1/files` uploads and
        /// offloaded bodies.
        files: Option<FilesPolicy>,
    },
    Plugin {
        settings: serde_json::Value,
    },
}

/// How the files bucket takes uploads and keeps references (the `files:` block of an `s3`
/// connection), with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesPolicy {
    /// Prefix of every generated key (default `files/`).
    pub key_prefix: String,
    /// Largest file taken, in bytes (default 5 GiB).
    pub max_size: u64,
    /// Bytes per part of a multipart upload, and the size above which one is used
    /// (default 8 MiB; 5 MiB to 512 MiB).
    pub part_size: u64,
    /// Content types an upload may have: `type/subtype` or `type/*` (default: common
    /// document, image, text and archive types).
    pub content_types: Vec<String>,
    /// Lifetime of a presigned link (default 15m, at most 7 days).
    pub link_ttl: Duration,
    /// How long a reference lives; then its object is deleted (default 30 days).
    pub retention: Duration,
}

/// The content types a files bucket takes when its `content_types` is not given.
pub const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "application/pdf",
    "application/json",
    "application/xml",
    "application/zip",
    "application/gzip",
    "application/octet-stream",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.oasis.opendocument.*",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/tiff",
    "text/plain",
    "text/csv",
    "text/xml",
];

impl Default for FilesPolicy {
    fn default() -> Self {
        FilesPolicy {
            key_prefix: "files/".into(),
            max_size: 5 * 1024 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            content_types: DEFAULT_CONTENT_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            link_ttl: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Default [`Connection::offload_threshold`]: 1 MiB.
pub const DEFAULT_OFFLOAD_THRESHOLD: u64 = 1024 * 1024;

/// A connection's settings: name → text, number or boolean, never a secret.
pub type Settings = BTreeMap<String, serde_json::Value>;

/// A WS-Security `UsernameToken`, its password a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct WsSecurity {
    /// Plain text, or a secret reference (`${env:NAME}`).
    pub username: String,
    pub password: SecretRef,
    pub password_type: WsPasswordType,
}

/// Outbound authentication, with secrets as references.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Basic {
        username: String,
        password: SecretRef,
    },
    Bearer {
        token: SecretRef,
    },
    ApiKey {
        location: ApiKeyLocation,
        name: String,
        value: SecretRef,
    },
    OAuth2ClientCredentials {
        token_url: Url,
        client_id: String,
        client_secret: SecretRef,
        scopes: Vec<String>,
        audience: Option<String>,
        options: OAuth2Options,
    },
    OAuth2RefreshToken {
        token_url: Url,
        client_id: String,
        client_secret: Option<SecretRef>,
        refresh_token: SecretRef,
        scopes: Vec<String>,
        options: OAuth2Options,
    },
    /// Static keys, or `None` for the standard AWS credential chain.
    Aws {
        keys: Option<AwsKeys>,
    },
}

/// What both OAuth2 grants share besides their credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2Options {
    pub client_auth: OAuth2ClientAuth,
    pub expired_when: Option<ExpiredWhen>,
}

/// Recognises an answer that means "the access token expired" (see the config's
/// `expired_when`). Every part given must match.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredWhen {
    pub status: Option<u16>,
    /// A JSON Pointer and the value there that means "expired".
    pub equals: Option<(String, serde_json::Value)>,
    pub contains: Option<String>,
}

impl ExpiredWhen {
    /// Whether an answer with `status` and `body` means the token expired.
    pub fn matches(&self, status: u16, body: &[u8]) -> bool {
        if self.status.is_some_and(|s| s != status) {
            return false;
        }
        if let Some(text) = &self.contains
            && !String::from_utf8_lossy(body).contains(text.as_str())
        {
            return false;
        }
        if let Some((pointer, value)) = &self.equals {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
                return false;
            };
            if json.pointer(pointer) != Some(value) {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwsKeys {
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    pub session_token: Option<SecretRef>,
}

/// Limits with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub rate: Option<Rate>,
    pub burst: u32,
    pub concurrency: Option<u32>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Limits {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Retry policy with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
        }
    }
}

/// Circuit breaker policy with defaults filled in (see [`super::config::BreakerConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub enabled: bool,
    /// Above 0, at most 1.
    pub failure_ratio: f64,
    /// Above zero.
    pub window: Duration,
    /// 1 or more.
    pub min_calls: u32,
    /// Above zero.
    pub open_for: Duration,
    /// 1 or more.
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            enabled: true,
            failure_ratio: 0.5,
            window: Duration::from_secs(60),
            min_calls: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// One validated function.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    pub request: Request,
    pub input_schema: JsonSchema,
    pub output_schema: Option<JsonSchema>,
    /// Result field → JSON Pointer; empty means the whole body.
    pub output: Vec<(String, String)>,
    /// Functions that serve a callout when this one's connection cannot, in order (checked
    /// to exist when the metadata is loaded).
    pub fallback: Vec<FunctionRef>,
}

/// A function named from another: `connection.function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub connection: String,
    pub function: String,
}

impl std::fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.connection, self.function)
    }
}

impl Function {
    /// The top-level input fields: name, JSON type (if declared), whether required.
    pub fn inputs(&self) -> Vec<InputField> {
        let schema = &self.input_schema.source;
        let required: Vec<&str> = schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
            return Vec::new();
        };
        props
            .iter()
            .map(|(name, prop)| InputField {
                name: name.clone(),
                kind: match prop.get("type") {
                    Some(serde_json::Value::String(t)) => t.clone(),
                    Some(serde_json::Value::Array(ts)) => ts
                        .iter()
                        .filter_map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join("|"),
                    _ => "any".to_string(),
                },
                required: required.contains(&name.as_str()),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputField {
    pub name: String,
    pub kind: String,
    pub required: bool,
}

/// A request template, by connection type. Template strings are parsed and checked.
#[derive(Debug, Clone)]
pub enum Request {
    Rest {
        method: HttpMethod,
        path: String,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Option<serde_json::Value>,
        /// How the answer's list is paged; `None` for one request, one answer.
        pagination: Option<Pagination>,
        /// A template giving the id of a stored file sent as the body, streamed from the
        /// files bucket (instead of `body`).
        body_file: Option<String>,
    },
    Soap {
        action: Option<String>,
        body: String,
    },
    S3 {
        operation: S3Operation,
        key: Option<String>,
        prefix: Option<String>,
        expires: Duration,
        content_type: Option<String>,
        /// For `put`: a template giving the id of the stored file whose bytes are put.
        file: Option<String>,
    },
    Plugin {
        request: serde_json::Value,
    },
}

/// How a REST function pages through a list (see [`super::config::PaginationConfig`]), with
/// defaults filled in. Only `GET` functions page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    /// JSON Pointer to each page's array of items (`""`: the body is the array).
    pub items: String,
    pub next: PageLink,
    /// The query parameter asking for `page_size` items, sent with the first request (and
    /// with every request for `cursor`, `page` and `offset`).
    pub limit_param: Option<String>,
    /// Items asked for a page; with `page` and `offset`, a shorter page is the last.
    pub page_size: Option<u32>,
    /// JSON Pointer to a boolean in each page: `false` ends the list.
    pub has_more: Option<String>,
    /// 1 to [`Pagination::MAX_PAGES`].
    pub max_pages: u32,
}

impl Pagination {
    pub const DEFAULT_MAX_PAGES: u32 = 100;
    pub const MAX_PAGES: u32 = 10_000;
}

/// How the request of the next page is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageLink {
    /// The cursor at `pointer` in the body, sent back as the query parameter `param`.
    Cursor { pointer: String, param: String },
    /// The URL at `pointer` in the body.
    NextUrl { pointer: String },
    /// The `Link` header's `rel="next"` URL (RFC 8288).
    LinkHeader,
    /// The page number in the query parameter `param`, from `first`.
    Page { param: String, first: u64 },
    /// The offset of the page's first item in the query parameter `param`, from 0.
    Offset { param: String },
}

/// A JSON Schema with its compiled validator.
#[derive(Clone)]
pub struct JsonSchema {
    pub source: serde_json::Value,
    pub validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonSchema({})", self.source)
    }
}
