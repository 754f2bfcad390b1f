//! What the YAML says: one document is one connection.
//!
//! These types mirror the file format exactly (`deny_unknown_fields` everywhere), and their doc
//! comments become the descriptions of the editor schema (`docs/metadata.schema.json`). They
//! hold text as written; [`super::validate`] proves it and builds the settings the engine runs on.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::values::{ByteSize, HumanDuration, Rate, SecretRef, SettingValue};

/// A REST connection: an HTTP API reached at `endpoint`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rest connection")]
pub struct RestConnectionConfig {
    /// Name of the connection, used in function references like `billing.create_invoice`.
    /// Lowercase letters, digits and underscores, starting with a letter.
    pub connection: String,
    /// Connection type.
    #[schemars(extend("const" = "rest"))]
    pub r#type: String,
    /// What this connection is for, shown in listings.
    pub description: Option<String>,
    /// Base URL every function's `path` is appended to, like `https://api.example.com/v1`.
    pub endpoint: String,
    /// Allow calls to loopback, private and link-local addresses. Default `false`: such
    /// addresses are refused, so metadata cannot be turned against the internal network.
    pub allow_private_network: Option<bool>,
    /// How Switchboard authenticates to the service. Default: no authentication.
    pub auth: Option<AuthConfig>,
    /// Headers sent with every request of this connection.
    pub headers: Option<BTreeMap<String, String>>,
    /// Header carrying the stable per-callout idempotency key. Default `Idempotency-Key`.
    pub idempotency_header: Option<String>,
    /// Plain, non-secret values the templates read as `settings.NAME`, like
    /// `{ account_id: A-17, api_version: "2024-01" }`. Secrets belong under `auth`.
    pub settings: Option<BTreeMap<String, SettingValue>>,
    /// A successful answer's body larger than this is streamed to the files bucket (the `s3`
    /// connection with `files:`) and the result holds a reference to it, like `4MB`; at least
    /// `1KB`. Without a files bucket, bodies stay in the store. Default `1MB`.
    pub offload_threshold: Option<ByteSize>,
    /// Rate, concurrency and time limits.
    pub limits: Option<LimitsConfig>,
    /// How failed calls are retried.
    pub retry: Option<RetryConfig>,
    /// The circuit breaker: stops calling the connection while it keeps failing. On by default.
    pub breaker: Option<BreakerConfig>,
    /// Named operations on this connection.
    pub functions: Option<BTreeMap<String, RestFunctionConfig>>,
}

/// A SOAP connection: a SOAP 1.1 or 1.2 service reached at `endpoint`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "soap connection")]
pub struct SoapConnectionConfig {
    /// Name of the connection, used in function references like `billing.create_invoice`.
    pub connection: String,
    /// Connection type.
    #[schemars(extend("const" = "soap"))]
    pub r#type: String,
    /// What this connection is for, shown in listings.
    pub description: Option<String>,
    /// URL of the SOAP service, like `https://erp.example.com/InvoiceService`.
    pub endpoint: String,
    /// SOAP version: `"1.1"` (default) or `"1.2"`.
    pub soap_version: Option<SoapVersion>,
    /// A WS-Security `UsernameToken` in the SOAP header of every request. Default: none.
    pub ws_security: Option<WsSecurityConfig>,
    /// Allow calls to loopback, private and link-local addresses. Default `false`.
    pub allow_private_network: Option<bool>,
    /// How Switchboard authenticates to the service. Default: no authentication.
    pub auth: Option<AuthConfig>,
    /// HTTP headers sent with every request of this connection.
    pub headers: Option<BTreeMap<String, String>>,
    /// Plain, non-secret values the body template reads as `settings.NAME`, like
    /// `{ company_code: "1000" }`. Secrets belong under `auth` or `ws_security`.
    pub settings: Option<BTreeMap<String, SettingValue>>,
    /// A successful answer's body larger than this is streamed to the files bucket (the `s3`
    /// connection with `files:`) and the result holds a reference to it, like `4MB`; at least
    /// `1KB`. Without a files bucket, bodies stay in the store. Default `1MB`.
    pub offload_threshold: Option<ByteSize>,
    /// Rate, concurrency and time limits.
    pub limits: Option<LimitsConfig>,
    /// How failed calls are retried.
    pub retry: Option<RetryConfig>,
    /// The circuit breaker: stops calling the connection while it keeps failing. On by default.
    pub breaker: Option<BreakerConfig>,
    /// Named operations on this connection.
    pub functions: Option<BTreeMap<String, SoapFunctionConfig>>,
}

/// An S3 connection: a bucket on AWS S3 or any S3-compatible storage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "s3 connection")]
pub struct S3ConnectionConfig {
    /// Name of the connection, used in function references like `crm_files.put`.
    pub connection: String,
    /// Connection type.
    #[schemars(extend("const" = "s3"))]
    pub r#type: String,
    /// What this connection is for, shown in listings.
    pub description: Option<String>,
    /// Endpoint of an S3-compatible server, like `http://127.0.0.1:9000`. Default: AWS S3 for
    /// the region.
    pub endpoint: Option<String>,
    /// Region, like `eu-central-1`. Default `us-east-1`.
    pub region: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) rather than the host name;
    /// most S3-compatible servers need this. Default `false`.
    pub path_style: Option<bool>,
    /// Server-side encryption: `AES256` or `aws:kms`. Default: the bucket's setting.
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// KMS key id, with `server_side_encryption: aws:kms`.
    pub kms_key_id: Option<String>,
    /// When request checksums are sent: `when_supported` (default: on every request that
    /// supports one) or `when_required` (only where the operation needs one, for S3-compatible
    /// servers that refuse the newer checksum headers).
    pub checksums: Option<S3Checksums>,
    /// Makes this bucket the files bucket: the one that takes `POST /v1/files` uploads and the
    /// bodies offloaded from results. At most one connection may have it. Default: none.
    pub files: Option<FilesConfig>,
    /// Allow an endpoint on loopback, private and link-local addresses. Default `false`.
    pub allow_private_network: Option<bool>,
    /// Credentials: `type: aws` with static keys by secret reference, or without keys to use
    /// the standard AWS credential chain. Default: the standard chain.
    pub auth: Option<AuthConfig>,
    /// Rate, concurrency and time limits.
    pub limits: Option<LimitsConfig>,
    /// How failed calls are retried.
    pub retry: Option<RetryConfig>,
    /// The circuit breaker: stops calling the connection while it keeps failing. On by default.
    pub breaker: Option<BreakerConfig>,
    /// Named operations on the bucket.
    pub functions: Option<BTreeMap<String, S3FunctionConfig>>,
}

/// A connection of a type added by a connector plugin. `settings` and each function's
/// `request` are checked by the plugin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "plugin connection")]
pub struct PluginConnectionConfig {
    /// Name of the connection.
    pub connection: String,
    /// The type name the plugin registered.
    pub r#type: String,
    /// What this connection is for, shown in listings.
    pub description: Option<String>,
    /// Base URL of the service, when it has one.
    pub endpoint: Option<String>,
    /// Allow calls to loopback, private and link-local addresses. Default `false`.
    pub allow_private_network: Option<bool>,
    /// How Switchboard authenticates to the service.
    pub auth: Option<AuthConfig>,
    /// Settings of the plugin, checked by it.
    pub settings: Option<serde_json::Value>,
    /// Rate, concurrency and time limits.
    pub limits: Option<LimitsConfig>,
    /// How failed calls are retried.
    pub retry: Option<RetryConfig>,
    /// The circuit breaker: stops calling the connection while it keeps failing. On by default.
    pub breaker: Option<BreakerConfig>,
    /// Named operations.
    pub functions: Option<BTreeMap<String, PluginFunctionConfig>>,
}

/// One REST operation: the request to build and how to read the answer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestFunctionConfig {
    /// What the function does, shown in listings.
    pub description: Option<String>,
    /// Connections that serve this function when its own connection cannot: on a connect
    /// error, a 5xx, or an open circuit breaker, the next one in the list is tried. Each entry
    /// is a connection name (its function of the same name) or `connection.function`.
    pub fallback: Option<Vec<String>>,
    /// HTTP method. Default `GET`.
    pub method: Option<HttpMethod>,
    /// Path after the endpoint, a template: `/invoices/{{ input.invoice_id }}`. Input values are
    /// percent-encoded and can never change the host.
    pub path: String,
    /// Query parameters; each value is a template.
    pub query: Option<BTreeMap<String, String>>,
    /// Request headers; each value is a template.
    pub headers: Option<BTreeMap<String, String>>,
    /// JSON body; every string in it is a template (`"{{ input.amount }}"`).
    pub body: Option<serde_json::Value>,
    /// The id of a stored file to send as the body, a template like `"{{ input.file_id }}"`:
    /// its bytes are streamed from the files bucket with its content type. Instead of `body`;
    /// not with `GET`, `HEAD` or `pagination`.
    pub body_file: Option<String>,
    /// JSON Schema the callout's input must satisfy. Every `input.X` a template uses must be
    /// declared in its `properties`. Default: an object with no declared fields.
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema the mapped result must satisfy.
    pub output_schema: Option<serde_json::Value>,
    /// Output mapping: result field → JSON Pointer into the response body, like
    /// `{ invoice_id: /data/id }`. Default: the whole body. With `pagination`, it applies to
    /// each item.
    pub output: Option<BTreeMap<String, String>>,
    /// Reads a list spread over several pages (a `GET` function): every page is requested in
    /// turn and the items of all of them make one result, `{ items, pages, truncated }`.
    /// Default: one request, one answer.
    pub pagination: Option<PaginationConfig>,
}

/// How a REST function pages through a list. `type` decides which other keys apply.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaginationConfig {
    /// How the next page is found: `cursor` (a cursor in the body, sent back in the query),
    /// `next_url` (the next page's URL in the body), `link_header` (an RFC 8288
    /// `Link: <...>; rel="next"` header), `page` (a page number in the query) or `offset` (an
    /// item offset in the query).
    pub r#type: PaginationKind,
    /// JSON Pointer to each page's list of items, like `/data`; `""` when the body is the list.
    pub items: String,
    /// `cursor`: JSON Pointer to the next page's cursor in the body, like `/meta/next_cursor`.
    /// No value, `null` or `""` there ends the list.
    pub cursor: Option<String>,
    /// `cursor`: the query parameter that carries the cursor, like `cursor` or
    /// `starting_after`.
    pub cursor_param: Option<String>,
    /// `next_url`: JSON Pointer to the next page's URL in the body, like `/links/next`. No
    /// value, `null` or `""` there ends the list.
    pub next_url: Option<String>,
    /// `page`: the query parameter that carries the page number. Default `page`.
    pub page_param: Option<String>,
    /// `page`: the number of the first page. Default `1`.
    pub first_page: Option<u64>,
    /// `offset`: the query parameter that carries the offset of the page's first item
    /// (0 for the first page). Default `offset`.
    pub offset_param: Option<String>,
    /// The query parameter that asks for `page_size` items a page, like `limit` or
    /// `per_page`; needs `page_size`. With `next_url` and `link_header` it is sent with the
    /// first request only (the next URLs are followed as given).
    pub limit_param: Option<String>,
    /// Items asked for a page, like `100`. With `page` and `offset`, a page with fewer items
    /// is the last.
    pub page_size: Option<u32>,
    /// JSON Pointer to a boolean in each page that says whether more pages follow, like
    /// `/has_more`; `false` ends the list. Every page must have it.
    pub has_more: Option<String>,
    /// Most pages read in one attempt, 1 to 10000. More pages left unread make the result
    /// `truncated: true`. Default `100`.
    pub max_pages: Option<u32>,
}

/// Ways a REST function's list is paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaginationKind {
    Cursor,
    NextUrl,
    LinkHeader,
    Page,
    Offset,
}

impl PaginationKind {
    pub fn name(self) -> &'static str {
        match self {
            PaginationKind::Cursor => "cursor",
            PaginationKind::NextUrl => "next_url",
            PaginationKind::LinkHeader => "link_header",
            PaginationKind::Page => "page",
            PaginationKind::Offset => "offset",
        }
    }
}

/// One SOAP operation.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoapFunctionConfig {
    /// What the function does, shown in listings.
    pub description: Option<String>,
    /// Connections that serve this function when its own connection cannot: on a connect
    /// error, a 5xx, or an open circuit breaker, the next one in the list is tried. Each entry
    /// is a connection name (its function of the same name) or `connection.function`.
    pub fallback: Option<Vec<String>>,
    /// The SOAP action (`SOAPAction` header in 1.1, `action` parameter in 1.2).
    pub action: Option<String>,
    /// The body inside `<soap:Body>`, a template; input values are XML-escaped.
    pub body: String,
    /// JSON Schema the callout's input must satisfy.
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema the mapped result must satisfy.
    pub output_schema: Option<serde_json::Value>,
    /// Output mapping: result field → JSON Pointer into the response turned into JSON, like
    /// `{ invoice_id: /CreateInvoiceResponse/InvoiceId }`.
    pub output: Option<BTreeMap<String, String>>,
}

/// One operation on an S3 bucket.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3FunctionConfig {
    /// What the function does, shown in listings.
    pub description: Option<String>,
    /// `put`, `get`, `presign`, `delete` or `list`.
    pub operation: S3Operation,
    /// Object key, a template: `invoices/{{ input.invoice_id }}.pdf`. Required except for `list`.
    pub key: Option<String>,
    /// Key prefix for `list`, a template.
    pub prefix: Option<String>,
    /// Lifetime of a presigned URL. Default `15m`.
    pub expires: Option<HumanDuration>,
    /// Content type for `put`.
    pub content_type: Option<String>,
    /// For `put`, and required there: the id of the stored file whose bytes are put, a
    /// template like `"{{ input.file_id }}"`.
    pub file: Option<String>,
    /// JSON Schema the callout's input must satisfy.
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema the mapped result must satisfy.
    pub output_schema: Option<serde_json::Value>,
    /// Output mapping: result field → JSON Pointer into the operation's result.
    pub output: Option<BTreeMap<String, String>>,
}

/// The `files:` block of an `s3` connection: how its bucket takes uploads and keeps the
/// references it hands out. Object keys are generated (`<key_prefix><yyyy>/<mm>/<dd>/<id>`),
/// never taken from a file's name.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Prefix of every generated key: empty, or ending with `/`; letters, digits and
    /// `!_.*'()/-`, like `crm/files/`. Default `files/`.
    pub key_prefix: Option<String>,
    /// Largest file taken, like `100MB`; at most `5120GB` (5 TiB). Default `5GB`.
    pub max_size: Option<ByteSize>,
    /// Bytes a part of a multipart upload, and the size above which one is used: `5MB` to
    /// `512MB`. Default `8MB`.
    pub part_size: Option<ByteSize>,
    /// Content types an upload may have, in lowercase: `type/subtype`, `type/*`, a subtype
    /// family like `application/vnd.oasis.opendocument.*`, or `*/*` for any, like
    /// `[application/pdf, image/*]`. Default: common document, image, text and archive types.
    pub content_types: Option<Vec<String>>,
    /// Lifetime of a presigned download link, `1s` to `7d`. Default `15m`.
    pub link_ttl: Option<HumanDuration>,
    /// How long a stored file's reference lives; then the object is deleted. At least `1m`.
    /// Default `30d`.
    pub retention: Option<HumanDuration>,
}

/// One operation of a plugin connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginFunctionConfig {
    /// What the function does, shown in listings.
    pub description: Option<String>,
    /// Connections that serve this function when its own connection cannot: on a connect
    /// error, a 5xx, or an open circuit breaker, the next one in the list is tried. Each entry
    /// is a connection name (its function of the same name) or `connection.function`.
    pub fallback: Option<Vec<String>>,
    /// The request, in the plugin's own shape.
    pub request: Option<serde_json::Value>,
    /// JSON Schema the callout's input must satisfy.
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema the mapped result must satisfy.
    pub output_schema: Option<serde_json::Value>,
    /// Output mapping: result field → JSON Pointer into the plugin's result.
    pub output: Option<BTreeMap<String, String>>,
}

/// How Switchboard authenticates. `type` decides which other keys apply.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `basic`, `bearer`, `api_key`, `oauth2_client_credentials`,
    /// `oauth2_refresh_token` or `aws`.
    pub r#type: AuthKind,
    /// `basic`: user name (plain text or a secret reference).
    pub username: Option<String>,
    /// `basic`: password, a secret reference.
    pub password: Option<SecretRef>,
    /// `bearer`: token, a secret reference.
    pub token: Option<SecretRef>,
    /// `api_key`: where the key goes, `header` or `query`.
    pub r#in: Option<ApiKeyLocation>,
    /// `api_key`: header or query parameter name, like `X-Api-Key`.
    pub name: Option<String>,
    /// `api_key`: the key, a secret reference.
    pub value: Option<SecretRef>,
    /// `oauth2_*`: token endpoint URL.
    pub token_url: Option<String>,
    /// `oauth2_*`: client id.
    pub client_id: Option<String>,
    /// `oauth2_*`: client secret, a secret reference (optional for `oauth2_refresh_token`).
    pub client_secret: Option<SecretRef>,
    /// `oauth2_refresh_token`: the refresh token, a secret reference.
    pub refresh_token: Option<SecretRef>,
    /// `oauth2_*`: scopes to ask for.
    pub scopes: Option<Vec<String>>,
    /// `oauth2_client_credentials`: audience, for providers that want one.
    pub audience: Option<String>,
    /// `oauth2_*`: how the client authenticates to the token endpoint: `basic` (default: the
    /// client id and secret in an `Authorization: Basic` header, RFC 6749 section 2.3.1) or
    /// `body` (`client_id` and `client_secret` as form fields).
    pub client_auth: Option<OAuth2ClientAuth>,
    /// `oauth2_*`: an answer that means "the access token expired" although its status is not
    /// 401 (some services answer 200 with an error in the body). Such an answer is handled
    /// like a 401: one token refresh, one retry.
    pub expired_when: Option<ExpiredWhenConfig>,
    /// `aws`: access key id, a secret reference. Leave out both keys for the standard chain.
    pub access_key_id: Option<SecretRef>,
    /// `aws`: secret access key, a secret reference.
    pub secret_access_key: Option<SecretRef>,
    /// `aws`: session token for temporary credentials, a secret reference.
    pub session_token: Option<SecretRef>,
}

/// Kinds of outbound authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    None,
    Basic,
    Bearer,
    ApiKey,
    #[serde(rename = "oauth2_client_credentials")]
    #[schemars(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials,
    #[serde(rename = "oauth2_refresh_token")]
    #[schemars(rename = "oauth2_refresh_token")]
    OAuth2RefreshToken,
    Aws,
}

impl AuthKind {
    pub fn name(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::Basic => "basic",
            AuthKind::Bearer => "bearer",
            AuthKind::ApiKey => "api_key",
            AuthKind::OAuth2ClientCredentials => "oauth2_client_credentials",
            AuthKind::OAuth2RefreshToken => "oauth2_refresh_token",
            AuthKind::Aws => "aws",
        }
    }
}

/// How an OAuth2 client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2ClientAuth {
    Basic,
    Body,
}

/// A rule that recognises an answer meaning "the access token expired". `status` and a body
/// test (`pointer` with `equals`, or `contains`) must all match.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpiredWhenConfig {
    /// The answer's HTTP status, like `200`. Default: any status.
    pub status: Option<u16>,
    /// JSON Pointer into the answer's JSON body, like `/error/code`; with `equals`.
    pub pointer: Option<String>,
    /// The value at `pointer` that means "expired", like `"INVALID_SESSION_ID"`.
    pub equals: Option<serde_json::Value>,
    /// Text the answer's body contains when the token expired, like `token expired`.
    pub contains: Option<String>,
}

/// Where an API key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyLocation {
    Header,
    Query,
}

/// HTTP methods a REST function may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Head => "HEAD",
        }
    }
}

/// A WS-Security `UsernameToken` (OASIS Username Token Profile 1.0), sent in the SOAP header
/// of every request with a fresh nonce and creation time.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WsSecurityConfig {
    /// User name, plain text or a secret reference, like `crm-integration`.
    pub username: String,
    /// Password, a secret reference, like `${env:ERP_WS_PASSWORD}`.
    pub password: SecretRef,
    /// How the password travels: `text` (default: as it is, for TLS endpoints) or `digest`
    /// (`Base64(SHA-1(nonce + created + password))`, the password itself never sent).
    pub password_type: Option<WsPasswordType>,
}

/// How a WS-Security `UsernameToken` carries its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WsPasswordType {
    Text,
    Digest,
}

/// SOAP protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum SoapVersion {
    #[serde(rename = "1.1")]
    #[schemars(rename = "1.1")]
    V1_1,
    #[serde(rename = "1.2")]
    #[schemars(rename = "1.2")]
    V1_2,
}

/// S3 server-side encryption modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ServerSideEncryption {
    #[serde(rename = "AES256")]
    #[schemars(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    #[schemars(rename = "aws:kms")]
    AwsKms,
}

/// When an S3 connection sends request checksums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum S3Checksums {
    /// On every request that supports one (the AWS SDK's default).
    #[default]
    WhenSupported,
    /// Only where the operation requires one: for S3-compatible servers that refuse the
    /// newer checksum headers.
    WhenRequired,
}

/// Operations an S3 function performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum S3Operation {
    Put,
    Get,
    Presign,
    Delete,
    List,
}

/// Limits on how hard Switchboard calls the connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls per second, minute or hour, like `10/s` or `600/min`. Default: unlimited.
    pub rate: Option<Rate>,
    /// Calls allowed at once above the steady rate. Default: the rate's count, rounded up
    /// (`10/s` → 10).
    pub burst: Option<u32>,
    /// Calls in flight at once to this connection. Default: only the global cap applies.
    pub concurrency: Option<u32>,
    /// Total deadline of one attempt, connect to last byte. Default `30s`.
    pub timeout: Option<HumanDuration>,
    /// Deadline for opening the connection. Default `10s`.
    pub connect_timeout: Option<HumanDuration>,
}

/// How failed calls are retried: exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included. `1` means no retry. Default `5`.
    pub max_attempts: Option<u32>,
    /// Delay before the first retry; it doubles each time. Default `1s`.
    pub initial_delay: Option<HumanDuration>,
    /// Longest delay between attempts. Default `5m`.
    pub max_delay: Option<HumanDuration>,
    /// Give up once a callout is this old. Default `24h`.
    pub max_age: Option<HumanDuration>,
}

/// The circuit breaker of a connection. It opens when, over the last `window`, at least
/// `min_calls` calls ended and at least `failure_ratio` of them failed (connect errors, timeouts,
/// `5xx` and `408` answers); callouts then wait, none is called, for `open_for`. Then it lets
/// `half_open_probes` calls through: the first to end decides, closed again on a success, open
/// again on a failure.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether the breaker is on. Default `true`.
    pub enabled: Option<bool>,
    /// The share of the calls in the window that must have failed for the breaker to open:
    /// above 0 and at most 1, like `0.5` (half of them). Default `0.5`.
    pub failure_ratio: Option<f64>,
    /// The sliding window the ratio is computed over, like `60s`. Default `60s`.
    pub window: Option<HumanDuration>,
    /// Calls that must have ended in the window before the ratio counts; 1 or more. Default `5`.
    pub min_calls: Option<u32>,
    /// How long the breaker stays open before it lets probe calls through, like `30s`.
    /// Default `30s`.
    pub open_for: Option<HumanDuration>,
    /// Calls let through at once while half-open; 1 or more. Default `1`.
    pub half_open_probes: Option<u32>,
}
