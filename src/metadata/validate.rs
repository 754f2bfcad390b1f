//! Checks one connection document and builds its [`Connection`].
//!
//! Pure: no network, files, environment or clock. Every problem is collected, each with a
//! field path relative to the document; the loader turns paths into file positions.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::de::DeserializeOwned;
use switchboard_sdk::{ConnectorType, PathSegment};
use url::Url;

use super::config::{
    AuthConfig, AuthKind, BreakerConfig, ExpiredWhenConfig, FilesConfig, HttpMethod, LimitsConfig,
    OAuth2ClientAuth, PaginationConfig, PaginationKind, PluginConnectionConfig,
    RestConnectionConfig, RetryConfig, S3ConnectionConfig, S3Operation, SoapConnectionConfig,
    SoapVersion, WsPasswordType,
};
use super::de::{self, DeError};
use super::helpers;
use super::model::Settings;
use super::model::{
    Auth, AwsKeys, BreakerPolicy, Connection, DEFAULT_OFFLOAD_THRESHOLD, ExpiredWhen, FilesPolicy,
    Function, FunctionRef, JsonSchema, Limits, OAuth2Options, PageLink, Pagination, Protocol,
    Request, RetryPolicy, SecretUse, Source, WsSecurity,
};
use super::problem::{FieldPath, FieldProblem, Seg, list, suggestion};
use super::values::{ByteSize, HumanDuration, SecretRef, SettingValue};
use super::yaml::{Node, Pos, Value, quote};

/// The connection types built into the engine.
pub const BUILT_IN_TYPES: [&str; 3] = ["rest", "soap", "s3"];

/// The types a JSON Schema `type` may name.
const JSON_TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "null",
];

/// The filters templates add to minijinja's own, for suggestions.
const HELPER_FILTERS: [&str; 6] = [
    "b64decode",
    "b64encode",
    "dateformat",
    "datetimeformat",
    "timeformat",
    "urlencode",
];

/// The smallest `offload_threshold`: below it, nearly every answer would be offloaded.
pub const MIN_OFFLOAD_THRESHOLD: u64 = ByteSize::KIB;

/// The largest object S3 stores, and so the largest `files.max_size`.
const MAX_OBJECT_SIZE: u64 = 5 * ByteSize::TIB;

/// Bounds of `files.part_size`: S3's smallest part, and what Switchboard holds in memory.
const MIN_PART_SIZE: u64 = 5 * ByteSize::MIB;
const MAX_PART_SIZE: u64 = 512 * ByteSize::MIB;

/// Parts one S3 multipart upload may have.
const MAX_PARTS: u64 = 10_000;

/// Bounds of `files.link_ttl` (S3 signs links for at most 7 days) and of `files.retention`.
const MIN_LINK_TTL: Duration = Duration::from_secs(1);
const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const MIN_RETENTION: Duration = Duration::from_secs(60);

/// The message for an empty `body_file` or `file`.
const FILE_ID_EMPTY: &str =
    "an empty template gives no file id; expected a template like \"{{ input.file_id }}\"";

/// Looks up connection types added by plugins.
pub trait TypeLookup {
    fn get(&self, name: &str) -> Option<&dyn ConnectorType>;
    fn names(&self) -> Vec<&str>;
}

/// The outcome of checking one document.
pub struct Checked {
    pub connection: Option<Connection>,
    pub problems: Vec<FieldProblem>,
}

/// Checks one document (`node`, a connection) read from `source`.
pub fn check_document(node: &mut Node, source: Source, types: &dyn TypeLookup) -> Checked {
    let mut problems = Vec::new();
    let root = FieldPath::root();
    if !matches!(node.value, Value::Map(_)) {
        problems.push(FieldProblem::at(
            root,
            format!(
                "found {}; expected a mapping that starts with `connection:` and `type:`",
                node.describe()
            ),
        ));
        return Checked {
            connection: None,
            problems,
        };
    }
    let mut type_names: Vec<&str> = BUILT_IN_TYPES.to_vec();
    type_names.extend(types.names());
    let type_name = match node.get("type").map(|e| &e.value) {
        None => {
            problems.push(FieldProblem::missing(
                root,
                "type",
                format!(
                    "missing required key `type`; expected one of {}",
                    list(&type_names)
                ),
            ));
            return Checked {
                connection: None,
                problems,
            };
        }
        Some(Node {
            value: Value::String(s),
            ..
        }) if type_names.contains(&s.as_str()) => s.clone(),
        Some(Node {
            value: Value::String(s),
            ..
        }) => {
            problems.push(FieldProblem::at(
                root.key("type"),
                format!(
                    "unknown connection type `{s}`; {}",
                    suggestion(s, &type_names)
                ),
            ));
            return Checked {
                connection: None,
                problems,
            };
        }
        Some(other) => {
            problems.push(FieldProblem::at(
                root.key("type"),
                format!(
                    "found {}; expected one of {}",
                    other.describe(),
                    list(&type_names)
                ),
            ));
            return Checked {
                connection: None,
                problems,
            };
        }
    };
    let mut cx = Cx {
        problems,
        secrets: Vec::new(),
        settings: None,
    };
    let connection = match type_name.as_str() {
        "rest" => cx
            .typed::<RestConnectionConfig>(node)
            .and_then(|c| cx.rest(c, source)),
        "soap" => cx
            .typed::<SoapConnectionConfig>(node)
            .and_then(|c| cx.soap(c, source)),
        "s3" => cx
            .typed::<S3ConnectionConfig>(node)
            .and_then(|c| cx.s3(c, source)),
        plugin => match types.get(plugin) {
            Some(kind) => cx
                .typed::<PluginConnectionConfig>(node)
                .and_then(|c| cx.plugin(c, kind, source)),
            None => None,
        },
    };
    let connection = connection.map(|mut c| {
        let prefix = FieldPath::root().key("connections").key(&c.name);
        c.secrets = cx
            .secrets
            .iter()
            .map(|(path, reference)| SecretUse {
                path: prefix.join(path).to_string(),
                pos: locate(node, path, false),
                reference: reference.clone(),
            })
            .collect();
        c
    });
    Checked {
        connection,
        problems: cx.problems,
    }
}

/// Collects problems and secret uses while checking one connection.
struct Cx {
    problems: Vec<FieldProblem>,
    secrets: Vec<(FieldPath, SecretRef)>,
    /// The settings of a connection type that has them (REST, SOAP), which its templates may
    /// read; `None` for the others.
    settings: Option<Settings>,
}

/// What every connection type shares, checked.
struct Common {
    name: String,
    endpoint: Option<Url>,
    auth: Auth,
    limits: Limits,
    retry: RetryPolicy,
    breaker: BreakerPolicy,
    headers: Vec<(String, String)>,
}

impl Cx {
    /// Whether serde already reported the value at `path` (it was set aside, so checks that
    /// depend on it would only echo that problem).
    fn reported(&self, path: &FieldPath) -> bool {
        self.problems
            .iter()
            .any(|p| p.pos.is_some() && &p.path == path)
    }

    fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.problems.push(FieldProblem::at(path, message));
    }

    /// Deserializes the document, turning serde's errors into problems.
    fn typed<T: DeserializeOwned>(&mut self, node: &mut Node) -> Option<T> {
        let (value, errors): (Option<T>, Vec<DeError>) = de::from_node(node);
        for err in errors {
            self.problems.push(FieldProblem {
                path: err.path(),
                at_key: false,
                pos: err.pos,
                missing_key: None,
                suggested: err.suggested,
                message: err.message,
            });
        }
        value
    }

    fn rest(&mut self, c: RestConnectionConfig, source: Source) -> Option<Connection> {
        let root = FieldPath::root();
        let common = self.common(
            "rest",
            &c.connection,
            Some(&c.endpoint),
            c.auth.as_ref(),
            c.limits.as_ref(),
            c.retry.as_ref(),
            c.breaker.as_ref(),
            c.headers.as_ref(),
        );
        self.settings = Some(self.settings(c.settings.as_ref()));
        let offload_threshold = self.offload_threshold(c.offload_threshold);
        let idempotency_header = c
            .idempotency_header
            .unwrap_or_else(|| "Idempotency-Key".to_string());
        if !is_header_name(&idempotency_header) {
            self.push(
                root.key("idempotency_header"),
                format!("{} is not a header name; expected letters, digits and dashes, like \"Idempotency-Key\"", quote(&idempotency_header)),
            );
        }
        let mut functions = BTreeMap::new();
        for (fname, f) in c.functions.unwrap_or_default() {
            let at = root.key("functions").key(&fname);
            self.function_name(&at, &fname);
            let input = self.schema(&at.key("input_schema"), f.input_schema.as_ref(), true);
            let output = f
                .output_schema
                .as_ref()
                .and_then(|s| self.schema(&at.key("output_schema"), Some(s), false));
            let mut templates: Vec<(FieldPath, &str)> = vec![(at.key("path"), f.path.as_str())];
            if !f.path.starts_with('/') {
                self.push(at.key("path"), format!("{} does not start with `/`; expected a path like \"/invoices/{{{{ input.id }}}}\"", quote(&f.path)));
            }
            for (k, v) in f.query.iter().flatten() {
                templates.push((at.key("query").key(k), v));
            }
            for (k, v) in f.headers.iter().flatten() {
                if !is_header_name(k) {
                    self.problems.push(FieldProblem::at_key(
                        at.key("headers").key(k),
                        format!("`{k}` is not a header name; expected letters, digits and dashes, like \"X-Request-Id\""),
                    ));
                }
                templates.push((at.key("headers").key(k), v));
            }
            if let Some(body) = &f.body {
                collect_strings(body, &at.key("body"), &mut templates);
            }
            if let Some(file) = &f.body_file {
                let here = at.key("body_file");
                if f.body.is_some() {
                    self.push(
                        here.clone(),
                        "`body_file` and `body` both give the request body; expected one of them",
                    );
                }
                let method = f.method.unwrap_or(HttpMethod::Get);
                if f.pagination.is_some() {
                    self.push(here.clone(), "`body_file` does not go with `pagination`: each page is a `GET` without a body; expected one of them");
                } else if matches!(method, HttpMethod::Get | HttpMethod::Head) {
                    let default = if f.method.is_none() {
                        " (the default)"
                    } else {
                        ""
                    };
                    self.push(
                        here.clone(),
                        format!("a `{}` request{default} has no body to send a file in; expected `method: POST`, `PUT` or `PATCH` with `body_file`", method.as_str()),
                    );
                }
                if file.trim().is_empty() {
                    self.push(here, FILE_ID_EMPTY);
                } else {
                    templates.push((here, file.as_str()));
                }
            }
            self.templates(&templates, input.as_ref());
            let fallback = self.fallback(&at.key("fallback"), &fname, f.fallback.as_deref());
            let output_map = self.output_map(&at.key("output"), f.output.as_ref());
            let pagination = f.pagination.as_ref().and_then(|p| {
                self.pagination(
                    &at,
                    p,
                    f.method.unwrap_or(HttpMethod::Get),
                    f.query.as_ref(),
                )
            });
            if let Some(input) = input {
                functions.insert(
                    fname.clone(),
                    Function {
                        name: fname,
                        description: f.description,
                        request: Request::Rest {
                            method: f.method.unwrap_or(HttpMethod::Get),
                            path: f.path,
                            query: f.query.unwrap_or_default().into_iter().collect(),
                            headers: f.headers.unwrap_or_default().into_iter().collect(),
                            body: f.body,
                            pagination,
                            body_file: f.body_file,
                        },
                        input_schema: input,
                        output_schema: output,
                        output: output_map,
                        fallback,
                    },
                );
            }
        }
        let common = common?;
        Some(Connection {
            name: common.name,
            type_name: "rest".into(),
            description: c.description,
            source,
            endpoint: common.endpoint,
            allow_private_network: c.allow_private_network.unwrap_or(false),
            auth: common.auth,
            headers: common.headers,
            limits: common.limits,
            retry: common.retry,
            breaker: common.breaker,
            offload_threshold,
            protocol: Protocol::Rest {
                idempotency_header,
                settings: self.settings.take().unwrap_or_default(),
            },
            functions,
            secrets: Vec::new(),
        })
    }

    fn soap(&mut self, c: SoapConnectionConfig, source: Source) -> Option<Connection> {
        let root = FieldPath::root();
        let common = self.common(
            "soap",
            &c.connection,
            Some(&c.endpoint),
            c.auth.as_ref(),
            c.limits.as_ref(),
            c.retry.as_ref(),
            c.breaker.as_ref(),
            c.headers.as_ref(),
        );
        self.settings = Some(self.settings(c.settings.as_ref()));
        let offload_threshold = self.offload_threshold(c.offload_threshold);
        let ws_security = c.ws_security.as_ref().map(|ws| {
            let at = root.key("ws_security");
            if ws.username.starts_with("${") {
                match SecretRef::parse(&ws.username) {
                    Ok(r) => {
                        self.secret(at.key("username"), &r);
                    }
                    Err(message) => self.push(at.key("username"), message),
                }
            }
            WsSecurity {
                username: ws.username.clone(),
                password: self.secret(at.key("password"), &ws.password),
                password_type: ws.password_type.unwrap_or(WsPasswordType::Text),
            }
        });
        let mut functions = BTreeMap::new();
        for (fname, f) in c.functions.unwrap_or_default() {
            let at = root.key("functions").key(&fname);
            self.function_name(&at, &fname);
            let input = self.schema(&at.key("input_schema"), f.input_schema.as_ref(), true);
            let output = f
                .output_schema
                .as_ref()
                .and_then(|s| self.schema(&at.key("output_schema"), Some(s), false));
            self.templates(&[(at.key("body"), f.body.as_str())], input.as_ref());
            let fallback = self.fallback(&at.key("fallback"), &fname, f.fallback.as_deref());
            let output_map = self.output_map(&at.key("output"), f.output.as_ref());
            if let Some(input) = input {
                functions.insert(
                    fname.clone(),
                    Function {
                        name: fname,
                        description: f.description,
                        request: Request::Soap {
                            action: f.action,
                            body: f.body,
                        },
                        input_schema: input,
                        output_schema: output,
                        output: output_map,
                        fallback,
                    },
                );
            }
        }
        let common = common?;
        Some(Connection {
            name: common.name,
            type_name: "soap".into(),
            description: c.description,
            source,
            endpoint: common.endpoint,
            allow_private_network: c.allow_private_network.unwrap_or(false),
            auth: common.auth,
            headers: common.headers,
            limits: common.limits,
            retry: common.retry,
            breaker: common.breaker,
            offload_threshold,
            protocol: Protocol::Soap {
                version: c.soap_version.unwrap_or(SoapVersion::V1_1),
                ws_security,
                settings: self.settings.take().unwrap_or_default(),
            },
            functions,
            secrets: Vec::new(),
        })
    }

    fn s3(&mut self, c: S3ConnectionConfig, source: Source) -> Option<Connection> {
        let root = FieldPath::root();
        let common = self.common(
            "s3",
            &c.connection,
            c.endpoint.as_ref(),
            c.auth.as_ref(),
            c.limits.as_ref(),
            c.retry.as_ref(),
            c.breaker.as_ref(),
            None,
        );
        if !is_bucket_name(&c.bucket) {
            self.push(
                root.key("bucket"),
                format!("{} is not a bucket name; expected 3 to 63 lowercase letters, digits, dots and dashes, like \"crm-attachments\"", quote(&c.bucket)),
            );
        }
        if c.kms_key_id.is_some()
            && c.server_side_encryption != Some(super::config::ServerSideEncryption::AwsKms)
        {
            self.push(root.key("kms_key_id"), "`kms_key_id` applies only with `server_side_encryption: aws:kms`; expected that setting too");
        }
        let files = c
            .files
            .as_ref()
            .and_then(|f| self.files(&root.key("files"), f));
        let mut functions = BTreeMap::new();
        for (fname, f) in c.functions.unwrap_or_default() {
            let at = root.key("functions").key(&fname);
            self.function_name(&at, &fname);
            let input = self.schema(&at.key("input_schema"), f.input_schema.as_ref(), true);
            let output = f
                .output_schema
                .as_ref()
                .and_then(|s| self.schema(&at.key("output_schema"), Some(s), false));
            let mut templates = Vec::new();
            match (&f.key, f.operation) {
                (None, op) if op != S3Operation::List => self.problems.push(FieldProblem::missing(
                    at.clone(),
                    "key",
                    format!("missing required key `key` for operation `{}`; expected an object key template like \"invoices/{{{{ input.id }}}}.pdf\"", s3_op_name(op)),
                )),
                (Some(key), _) => templates.push((at.key("key"), key.as_str())),
                _ => {}
            }
            if let Some(prefix) = &f.prefix {
                templates.push((at.key("prefix"), prefix.as_str()));
            }
            match (&f.file, f.operation) {
                (None, S3Operation::Put) => self.problems.push(FieldProblem::missing(
                    at.clone(),
                    "file",
                    "missing required key `file` for operation `put`; expected the id of a stored file, a template like \"{{ input.file_id }}\"",
                )),
                (Some(file), S3Operation::Put) if file.trim().is_empty() => {
                    self.push(at.key("file"), FILE_ID_EMPTY);
                }
                (Some(file), S3Operation::Put) => templates.push((at.key("file"), file.as_str())),
                (Some(_), op) => self.problems.push(FieldProblem::at_key(
                    at.key("file"),
                    format!(
                        "`file` applies to operation `put` only; expected no `file` for operation `{}`",
                        s3_op_name(op)
                    ),
                )),
                (None, _) => {}
            }
            self.templates(&templates, input.as_ref());
            let fallback = Vec::new();
            let output_map = self.output_map(&at.key("output"), f.output.as_ref());
            if let Some(input) = input {
                functions.insert(
                    fname.clone(),
                    Function {
                        name: fname,
                        description: f.description,
                        request: Request::S3 {
                            operation: f.operation,
                            key: f.key,
                            prefix: f.prefix,
                            expires: f
                                .expires
                                .map_or(std::time::Duration::from_secs(900), |d| d.0),
                            content_type: f.content_type,
                            file: f.file,
                        },
                        input_schema: input,
                        output_schema: output,
                        output: output_map,
                        fallback,
                    },
                );
            }
        }
        let common = common?;
        Some(Connection {
            name: common.name,
            type_name: "s3".into(),
            description: c.description,
            source,
            endpoint: common.endpoint,
            allow_private_network: c.allow_private_network.unwrap_or(false),
            auth: common.auth,
            headers: Vec::new(),
            limits: common.limits,
            retry: common.retry,
            breaker: common.breaker,
            offload_threshold: DEFAULT_OFFLOAD_THRESHOLD,
            protocol: Protocol::S3 {
                bucket: c.bucket,
                region: c.region.unwrap_or_else(|| "us-east-1".to_string()),
                path_style: c.path_style.unwrap_or(false),
                server_side_encryption: c.server_side_encryption,
                kms_key_id: c.kms_key_id,
                checksums: c.checksums.unwrap_or_default(),
                files,
            },
            functions,
            secrets: Vec::new(),
        })
    }

    fn plugin(
        &mut self,
        c: PluginConnectionConfig,
        kind: &dyn ConnectorType,
        source: Source,
    ) -> Option<Connection> {
        let root = FieldPath::root();
        let common = self.common(
            kind.type_name(),
            &c.connection,
            c.endpoint.as_ref(),
            c.auth.as_ref(),
            c.limits.as_ref(),
            c.retry.as_ref(),
            c.breaker.as_ref(),
            None,
        );
        let settings = c.settings.unwrap_or(serde_json::Value::Null);
        for issue in kind.validate_settings(&settings) {
            self.push(
                plugin_path(&root.key("settings"), &issue.path),
                issue.message,
            );
        }
        let mut functions = BTreeMap::new();
        for (fname, f) in c.functions.unwrap_or_default() {
            let at = root.key("functions").key(&fname);
            self.function_name(&at, &fname);
            let input = self.schema(&at.key("input_schema"), f.input_schema.as_ref(), true);
            let output = f
                .output_schema
                .as_ref()
                .and_then(|s| self.schema(&at.key("output_schema"), Some(s), false));
            let request = f.request.unwrap_or(serde_json::Value::Null);
            for issue in kind.validate_request(&request) {
                self.push(plugin_path(&at.key("request"), &issue.path), issue.message);
            }
            let fallback = self.fallback(&at.key("fallback"), &fname, f.fallback.as_deref());
            let output_map = self.output_map(&at.key("output"), f.output.as_ref());
            if let Some(input) = input {
                functions.insert(
                    fname.clone(),
                    Function {
                        name: fname,
                        description: f.description,
                        request: Request::Plugin { request },
                        input_schema: input,
                        output_schema: output,
                        output: output_map,
                        fallback,
                    },
                );
            }
        }
        let common = common?;
        Some(Connection {
            name: common.name,
            type_name: kind.type_name().to_string(),
            description: c.description,
            source,
            endpoint: common.endpoint,
            allow_private_network: c.allow_private_network.unwrap_or(false),
            auth: common.auth,
            headers: Vec::new(),
            limits: common.limits,
            retry: common.retry,
            breaker: common.breaker,
            offload_threshold: DEFAULT_OFFLOAD_THRESHOLD,
            protocol: Protocol::Plugin { settings },
            functions,
            secrets: Vec::new(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn common(
        &mut self,
        type_name: &str,
        name: &str,
        endpoint: Option<&String>,
        auth: Option<&AuthConfig>,
        limits: Option<&LimitsConfig>,
        retry: Option<&RetryConfig>,
        breaker: Option<&BreakerConfig>,
        headers: Option<&BTreeMap<String, String>>,
    ) -> Option<Common> {
        let root = FieldPath::root();
        let before = self.problems.len();
        if !is_name(name) {
            self.push(
                root.key("connection"),
                format!("{} is not a valid connection name; expected lowercase letters, digits and underscores, starting with a letter, like \"billing_v2\"", quote(name)),
            );
        }
        let endpoint =
            endpoint.and_then(|e| self.url(&root.key("endpoint"), e, "https://api.example.com/v1"));
        let auth = self.auth(type_name, auth);
        let limits = self.limits(limits);
        let retry = self.retry(retry);
        let breaker = self.breaker(breaker);
        let mut header_list = Vec::new();
        for (k, v) in headers.into_iter().flatten() {
            if !is_header_name(k) {
                self.problems.push(FieldProblem::at_key(
                    root.key("headers").key(k),
                    format!("`{k}` is not a header name; expected letters, digits and dashes, like \"X-Request-Id\""),
                ));
            } else if v.contains(['\r', '\n']) {
                self.push(
                    root.key("headers").key(k),
                    "header value contains a line break; expected a single line",
                );
            } else {
                header_list.push((k.clone(), v.clone()));
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(Common {
            name: name.to_string(),
            endpoint,
            auth: auth?,
            limits: limits?,
            retry: retry?,
            breaker: breaker?,
            headers: header_list,
        })
    }

    /// A REST or SOAP connection's `offload_threshold`, at least [`MIN_OFFLOAD_THRESHOLD`].
    fn offload_threshold(&mut self, size: Option<ByteSize>) -> u64 {
        let threshold = size.map_or(DEFAULT_OFFLOAD_THRESHOLD, |s| s.0);
        if threshold < MIN_OFFLOAD_THRESHOLD {
            self.push(
                FieldPath::root().key("offload_threshold"),
                format!(
                    "an offload threshold of {} would send nearly every answer to the files bucket; expected at least {}, like \"1MB\"",
                    ByteSize(threshold),
                    ByteSize(MIN_OFFLOAD_THRESHOLD)
                ),
            );
        }
        threshold
    }

    /// Checks the `files:` block of an S3 connection (at `at`) and fills in its defaults.
    fn files(&mut self, at: &FieldPath, f: &FilesConfig) -> Option<FilesPolicy> {
        let before = self.problems.len();
        let d = FilesPolicy::default();
        if let Some(prefix) = &f.key_prefix
            && let Some(message) = key_prefix_problem(prefix)
        {
            self.push(at.key("key_prefix"), message);
        }
        let max_size = f.max_size.map_or(d.max_size, |s| s.0);
        if max_size == 0 {
            self.push(
                at.key("max_size"),
                "a largest file of 0B takes no file; expected at least 1 byte, like \"100MB\"",
            );
        } else if max_size > MAX_OBJECT_SIZE {
            self.push(
                at.key("max_size"),
                format!(
                    "{} is more than S3 keeps in one object; expected at most {} (5 TiB), like \"5GB\"",
                    ByteSize(max_size),
                    ByteSize(MAX_OBJECT_SIZE)
                ),
            );
        }
        let part_size = f.part_size.map_or(d.part_size, |s| s.0);
        let part_sizes = MIN_PART_SIZE..=MAX_PART_SIZE;
        if !part_sizes.contains(&part_size) {
            self.push(
                at.key("part_size"),
                format!(
                    "{} is not a part size Switchboard uses: S3 takes parts of 5MB or more, and a few parts are held in memory at once; expected {} to {}, like \"8MB\"",
                    ByteSize(part_size),
                    ByteSize(MIN_PART_SIZE),
                    ByteSize(MAX_PART_SIZE)
                ),
            );
        } else if (1..=MAX_OBJECT_SIZE).contains(&max_size)
            && max_size.div_ceil(part_size) > MAX_PARTS
        {
            let key = if f.max_size.is_some() {
                "max_size"
            } else {
                "part_size"
            };
            self.push(
                at.key(key),
                format!(
                    "a file of `max_size` ({}) takes more than {MAX_PARTS} parts of `part_size` ({}), the most one S3 upload may have; expected a `max_size` of at most {}, or a larger `part_size`",
                    ByteSize(max_size),
                    ByteSize(part_size),
                    ByteSize(part_size * MAX_PARTS)
                ),
            );
        }
        if let Some(types) = &f.content_types {
            if types.is_empty() {
                self.push(
                    at.key("content_types"),
                    "an empty list takes no upload; expected content types like `[application/pdf, image/*]`, or `[\"*/*\"]` for any",
                );
            }
            for (i, pattern) in types.iter().enumerate() {
                if let Some(message) = content_type_problem(pattern) {
                    self.push(at.key("content_types").index(i), message);
                }
            }
        }
        let link_ttl = f.link_ttl.map_or(d.link_ttl, |t| t.0);
        if !(MIN_LINK_TTL..=MAX_LINK_TTL).contains(&link_ttl) {
            self.push(
                at.key("link_ttl"),
                format!(
                    "a link lifetime of {} is not one S3 signs; expected 1s to 7d, like \"15m\"",
                    HumanDuration(link_ttl)
                ),
            );
        }
        let retention = f.retention.map_or(d.retention, |t| t.0);
        if retention < MIN_RETENTION {
            self.push(
                at.key("retention"),
                format!(
                    "a retention of {} would delete files before they can be read; expected at least 1m, like \"30d\"",
                    HumanDuration(retention)
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(FilesPolicy {
            key_prefix: f.key_prefix.clone().unwrap_or(d.key_prefix),
            max_size,
            part_size,
            content_types: f.content_types.clone().unwrap_or(d.content_types),
            link_ttl,
            retention,
        })
    }

    fn url(&mut self, path: &FieldPath, text: &str, example: &str) -> Option<Url> {
        let url = match Url::parse(text) {
            Ok(url) => url,
            Err(err) => {
                self.push(
                    path.clone(),
                    format!("{} is not a URL ({err}); expected an absolute http or https URL, like \"{example}\"", quote(text)),
                );
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            // The URL holds a credential: do not repeat it.
            self.push(
                path.clone(),
                "the URL contains credentials; expected them under `auth`, as secret references",
            );
            return None;
        }
        if url.scheme() != "http" && url.scheme() != "https" {
            self.push(
                path.clone(),
                format!(
                    "{} uses the scheme `{}`; expected an http or https URL, like \"{example}\"",
                    quote(text),
                    url.scheme()
                ),
            );
            return None;
        }
        if url.fragment().is_some() {
            self.push(
                path.clone(),
                format!(
                    "{} has a `#fragment`; expected a URL without one",
                    quote(text)
                ),
            );
            return None;
        }
        Some(url)
    }

    fn secret(&mut self, path: FieldPath, reference: &SecretRef) -> SecretRef {
        self.secrets.push((path, reference.clone()));
        reference.clone()
    }

    fn auth(&mut self, type_name: &str, auth: Option<&AuthConfig>) -> Option<Auth> {
        let Some(a) = auth else {
            return Some(if type_name == "s3" {
                Auth::Aws { keys: None }
            } else {
                Auth::None
            });
        };
        let at = FieldPath::root().key("auth");
        let present: Vec<&str> = [
            ("username", a.username.is_some()),
            ("password", a.password.is_some()),
            ("token", a.token.is_some()),
            ("in", a.r#in.is_some()),
            ("name", a.name.is_some()),
            ("value", a.value.is_some()),
            ("token_url", a.token_url.is_some()),
            ("client_id", a.client_id.is_some()),
            ("client_secret", a.client_secret.is_some()),
            ("refresh_token", a.refresh_token.is_some()),
            ("scopes", a.scopes.is_some()),
            ("audience", a.audience.is_some()),
            ("client_auth", a.client_auth.is_some()),
            ("expired_when", a.expired_when.is_some()),
            ("access_key_id", a.access_key_id.is_some()),
            ("secret_access_key", a.secret_access_key.is_some()),
            ("session_token", a.session_token.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.then_some(k))
        .collect();
        let (required, optional): (&[&str], &[&str]) = match a.r#type {
            AuthKind::None => (&[], &[]),
            AuthKind::Basic => (&["username", "password"], &[]),
            AuthKind::Bearer => (&["token"], &[]),
            AuthKind::ApiKey => (&["in", "name", "value"], &[]),
            AuthKind::OAuth2ClientCredentials => (
                &["token_url", "client_id", "client_secret"],
                &["scopes", "audience", "client_auth", "expired_when"],
            ),
            AuthKind::OAuth2RefreshToken => (
                &["token_url", "client_id", "refresh_token"],
                &["client_secret", "scopes", "client_auth", "expired_when"],
            ),
            AuthKind::Aws => (
                &[],
                &["access_key_id", "secret_access_key", "session_token"],
            ),
        };
        let kind = a.r#type.name();
        let before = self.problems.len();
        let allowed: Vec<&str> = required.iter().chain(optional).copied().collect();
        for key in &present {
            if !allowed.contains(key) {
                let expected = if allowed.is_empty() {
                    "expected no other keys".to_string()
                } else {
                    format!("expected only {}", list(&allowed))
                };
                self.problems.push(FieldProblem::at_key(
                    at.key(key),
                    format!("`{key}` does not apply to auth type `{kind}`; {expected}"),
                ));
            }
        }
        for key in required {
            if !present.contains(key) {
                self.problems.push(FieldProblem::missing(
                    at.clone(),
                    key,
                    format!(
                        "missing required key `{key}` for auth type `{kind}`; expected {}",
                        auth_key_example(key)
                    ),
                ));
            }
        }
        let s3 = type_name == "s3";
        if s3 && !matches!(a.r#type, AuthKind::Aws | AuthKind::None) {
            self.push(
                at.key("type"),
                format!("auth type `{kind}` does not apply to s3 connections; expected `aws`"),
            );
        }
        if !s3 && a.r#type == AuthKind::Aws && BUILT_IN_TYPES.contains(&type_name) {
            self.push(at.key("type"), format!("auth type `aws` applies to s3 connections only; expected one of `none`, `basic`, `bearer`, `api_key`, `oauth2_client_credentials`, `oauth2_refresh_token` for a {type_name} connection"));
        }
        if type_name == "soap"
            && matches!(
                a.r#type,
                AuthKind::OAuth2ClientCredentials | AuthKind::OAuth2RefreshToken
            )
        {
            self.push(at.key("type"), format!("auth type `{kind}` applies to rest connections only; expected one of `none`, `basic`, `bearer`, `api_key` for a soap connection"));
        }
        if a.r#type == AuthKind::Aws && a.access_key_id.is_some() != a.secret_access_key.is_some() {
            self.push(at.clone(), "`access_key_id` and `secret_access_key` go together; expected both, or neither for the standard AWS credential chain");
        }
        if let Some(name) = &a.name
            && a.r#in == Some(super::config::ApiKeyLocation::Header)
            && !is_header_name(name)
        {
            self.push(at.key("name"), format!("{} is not a header name; expected letters, digits and dashes, like \"X-Api-Key\"", quote(name)));
        }
        if let Some(user) = &a.username
            && user.starts_with("${")
            && let Err(message) = SecretRef::parse(user)
        {
            self.push(at.key("username"), message);
        }
        let token_url = a.token_url.as_ref().and_then(|u| {
            self.url(
                &at.key("token_url"),
                u,
                "https://login.example.com/oauth2/token",
            )
        });
        let expired_when = a
            .expired_when
            .as_ref()
            .and_then(|rule| self.expired_when(&at.key("expired_when"), rule));
        if self.problems.len() > before {
            return None;
        }
        let options = OAuth2Options {
            client_auth: a.client_auth.unwrap_or(OAuth2ClientAuth::Basic),
            expired_when,
        };
        // Every required key is present from here on.
        let secret = |cx: &mut Cx, key: &str, r: &Option<SecretRef>| {
            r.as_ref().map(|r| cx.secret(at.key(key), r))
        };
        let username = a.username.clone().unwrap_or_default();
        if username.starts_with("${")
            && let Ok(r) = SecretRef::parse(&username)
        {
            self.secret(at.key("username"), &r);
        }
        Some(match a.r#type {
            AuthKind::None => Auth::None,
            AuthKind::Basic => Auth::Basic {
                username,
                password: secret(self, "password", &a.password)?,
            },
            AuthKind::Bearer => Auth::Bearer {
                token: secret(self, "token", &a.token)?,
            },
            AuthKind::ApiKey => Auth::ApiKey {
                location: a.r#in?,
                name: a.name.clone()?,
                value: secret(self, "value", &a.value)?,
            },
            AuthKind::OAuth2ClientCredentials => Auth::OAuth2ClientCredentials {
                token_url: token_url?,
                client_id: a.client_id.clone()?,
                client_secret: secret(self, "client_secret", &a.client_secret)?,
                scopes: a.scopes.clone().unwrap_or_default(),
                audience: a.audience.clone(),
                options,
            },
            AuthKind::OAuth2RefreshToken => Auth::OAuth2RefreshToken {
                token_url: token_url?,
                client_id: a.client_id.clone()?,
                client_secret: secret(self, "client_secret", &a.client_secret),
                refresh_token: secret(self, "refresh_token", &a.refresh_token)?,
                scopes: a.scopes.clone().unwrap_or_default(),
                options,
            },
            AuthKind::Aws => Auth::Aws {
                keys: match (&a.access_key_id, &a.secret_access_key) {
                    (Some(_), Some(_)) => Some(AwsKeys {
                        access_key_id: secret(self, "access_key_id", &a.access_key_id)?,
                        secret_access_key: secret(self, "secret_access_key", &a.secret_access_key)?,
                        session_token: secret(self, "session_token", &a.session_token),
                    }),
                    _ => None,
                },
            },
        })
    }

    /// Checks an OAuth2 `expired_when` rule: a body test (`pointer` with `equals`, or
    /// `contains`) is required, and `pointer` and `equals` go together.
    fn expired_when(&mut self, at: &FieldPath, rule: &ExpiredWhenConfig) -> Option<ExpiredWhen> {
        let before = self.problems.len();
        if let Some(status) = rule.status
            && !(100..=599).contains(&status)
        {
            self.push(
                at.key("status"),
                format!("{status} is not an HTTP status; expected 100 to 599, like 200"),
            );
        }
        if let Some(pointer) = &rule.pointer
            && !(pointer.is_empty() || pointer.starts_with('/'))
        {
            self.push(at.key("pointer"), format!("{} is not a JSON Pointer; expected one starting with `/`, like \"/error/code\"", quote(pointer)));
        }
        match (&rule.pointer, &rule.equals) {
            (Some(_), None) => self.push(at.clone(), "`pointer` needs `equals`; expected the value that means \"expired\", like `equals: INVALID_SESSION_ID`"),
            (None, Some(_)) => self.push(at.clone(), "`equals` needs `pointer`; expected where in the body to look, like `pointer: /error/code`"),
            (None, None) if rule.contains.is_none() => self.push(at.clone(), "a rule without a body test would take every answer for an expired token; expected `pointer` with `equals`, or `contains`"),
            _ => {}
        }
        if rule.contains.as_deref() == Some("") {
            self.push(at.key("contains"), "empty text is in every body; expected the words that mean \"expired\", like \"token expired\"");
        }
        if self.problems.len() > before {
            return None;
        }
        Some(ExpiredWhen {
            status: rule.status,
            equals: rule.pointer.clone().zip(rule.equals.clone()),
            contains: rule.contains.clone(),
        })
    }

    fn limits(&mut self, limits: Option<&LimitsConfig>) -> Option<Limits> {
        let at = FieldPath::root().key("limits");
        let before = self.problems.len();
        let l = limits.cloned().unwrap_or(LimitsConfig {
            rate: None,
            burst: None,
            concurrency: None,
            timeout: None,
            connect_timeout: None,
        });
        if l.burst == Some(0) {
            self.push(at.key("burst"), "0 is not a burst; expected 1 or more");
        }
        if l.burst.is_some() && l.rate.is_none() && !self.reported(&at.key("rate")) {
            self.push(
                at.key("burst"),
                "`burst` needs a `rate`; expected `rate` beside it, like `rate: 10/s`",
            );
        }
        if l.concurrency == Some(0) {
            self.push(
                at.key("concurrency"),
                "0 is not a concurrency; expected 1 or more",
            );
        }
        let timeout = l.timeout.map_or(Limits::DEFAULT_TIMEOUT, |d| d.0);
        let connect_timeout = l
            .connect_timeout
            .map_or(Limits::DEFAULT_CONNECT_TIMEOUT.min(timeout), |d| d.0);
        if timeout.is_zero() {
            self.push(at.key("timeout"), "a timeout of zero lets no call finish; expected a duration above zero, like \"30s\"");
        }
        if connect_timeout.is_zero() {
            self.push(at.key("connect_timeout"), "a timeout of zero lets no call connect; expected a duration above zero, like \"5s\"");
        } else if connect_timeout > timeout {
            self.push(at.key("connect_timeout"), format!(
                "`connect_timeout` ({}) is longer than `timeout` ({}); expected at most the total deadline",
                super::values::HumanDuration(connect_timeout),
                super::values::HumanDuration(timeout)
            ));
        }
        if self.problems.len() > before {
            return None;
        }
        let burst = l
            .burst
            .unwrap_or_else(|| l.rate.map_or(1, |r| (r.count.ceil() as u32).max(1)));
        Some(Limits {
            rate: l.rate,
            burst,
            concurrency: l.concurrency,
            timeout,
            connect_timeout,
        })
    }

    fn retry(&mut self, retry: Option<&RetryConfig>) -> Option<RetryPolicy> {
        let at = FieldPath::root().key("retry");
        let before = self.problems.len();
        let d = RetryPolicy::default();
        let Some(r) = retry else { return Some(d) };
        let policy = RetryPolicy {
            max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
            initial_delay: r.initial_delay.map_or(d.initial_delay, |x| x.0),
            max_delay: r.max_delay.map_or(
                d.max_delay
                    .max(r.initial_delay.map_or(d.max_delay, |x| x.0)),
                |x| x.0,
            ),
            max_age: r.max_age.map_or(d.max_age, |x| x.0),
        };
        if policy.max_attempts == 0 {
            self.push(
                at.key("max_attempts"),
                "0 attempts would never call; expected 1 or more (1 means no retry)",
            );
        }
        if policy.initial_delay.is_zero() {
            self.push(
                at.key("initial_delay"),
                "a delay of zero retries at once; expected a duration above zero, like \"1s\"",
            );
        }
        if policy.max_delay < policy.initial_delay {
            self.push(at.key("max_delay"), format!(
                "`max_delay` ({}) is shorter than `initial_delay` ({}); expected at least the initial delay",
                super::values::HumanDuration(policy.max_delay),
                super::values::HumanDuration(policy.initial_delay)
            ));
        }
        if policy.max_age.is_zero() {
            self.push(at.key("max_age"), "a maximum age of zero gives up at once; expected a duration above zero, like \"24h\"");
        }
        (self.problems.len() == before).then_some(policy)
    }

    /// Reads a function's `fallback` list: each entry a connection name (its function of the
    /// same name) or `connection.function`. That they exist is checked once every document is
    /// read (see the loader).
    fn fallback(
        &mut self,
        at: &FieldPath,
        function: &str,
        entries: Option<&[String]>,
    ) -> Vec<FunctionRef> {
        let mut refs: Vec<FunctionRef> = Vec::new();
        for (i, entry) in entries.unwrap_or_default().iter().enumerate() {
            let (connection, target) = match entry.split_once('.') {
                Some((c, f)) => (c, f),
                None => (entry.as_str(), function),
            };
            if !is_name(connection) || !is_name(target) {
                self.push(
                    at.index(i),
                    format!("{} is not a fallback; expected a connection name, like \"mail_backup\", or `connection.function`, like \"mail_backup.send_email\"", quote(entry)),
                );
                continue;
            }
            let r = FunctionRef {
                connection: connection.to_string(),
                function: target.to_string(),
            };
            if refs.contains(&r) {
                self.push(
                    at.index(i),
                    format!("`{r}` is named twice; expected each fallback once"),
                );
                continue;
            }
            refs.push(r);
        }
        refs
    }

    fn breaker(&mut self, breaker: Option<&BreakerConfig>) -> Option<BreakerPolicy> {
        let at = FieldPath::root().key("breaker");
        let before = self.problems.len();
        let d = BreakerPolicy::default();
        let Some(b) = breaker else { return Some(d) };
        let policy = BreakerPolicy {
            enabled: b.enabled.unwrap_or(d.enabled),
            failure_ratio: b.failure_ratio.unwrap_or(d.failure_ratio),
            window: b.window.map_or(d.window, |x| x.0),
            min_calls: b.min_calls.unwrap_or(d.min_calls),
            open_for: b.open_for.map_or(d.open_for, |x| x.0),
            half_open_probes: b.half_open_probes.unwrap_or(d.half_open_probes),
        };
        let ratio = policy.failure_ratio;
        if ratio.is_nan() || ratio <= 0.0 || ratio > 1.0 {
            self.push(
                at.key("failure_ratio"),
                format!("{ratio} is not a share of the calls; expected a number above 0 and at most 1, like 0.5 (half of them)"),
            );
        }
        if policy.window.is_zero() {
            self.push(
                at.key("window"),
                "a window of zero holds no calls; expected a duration above zero, like \"60s\"",
            );
        }
        if policy.min_calls == 0 {
            self.push(
                at.key("min_calls"),
                "0 is not a number of calls; expected 1 or more, like 5",
            );
        }
        if policy.open_for.is_zero() {
            self.push(at.key("open_for"), "a breaker open for zero never holds a call back; expected a duration above zero, like \"30s\"");
        }
        if policy.half_open_probes == 0 {
            self.push(
                at.key("half_open_probes"),
                "0 probes would never close the breaker; expected 1 or more",
            );
        }
        (self.problems.len() == before).then_some(policy)
    }

    fn function_name(&mut self, at: &FieldPath, name: &str) {
        if !is_name(name) {
            self.problems.push(FieldProblem::at_key(
                at.clone(),
                format!("{} is not a valid function name; expected lowercase letters, digits and underscores, starting with a letter, like \"create_invoice\"", quote(name)),
            ));
        }
    }

    /// Checks a JSON Schema and compiles it. An absent input schema means an object with no
    /// declared fields.
    fn schema(
        &mut self,
        at: &FieldPath,
        schema: Option<&serde_json::Value>,
        is_input: bool,
    ) -> Option<JsonSchema> {
        let source = schema
            .cloned()
            .unwrap_or_else(|| serde_json::json!({ "type": "object" }));
        let before = self.problems.len();
        if !source.is_object() && !source.is_boolean() {
            self.push(at.clone(), "found a value that is not a schema; expected a JSON Schema, a mapping like `{ type: object, properties: {...} }`");
            return None;
        }
        match jsonschema::meta::validator_for(&source) {
            Ok(meta) => {
                for err in meta.iter_errors(&source) {
                    let pointer = err.instance_path().as_str();
                    let path = at.join(&pointer_to_path(pointer, &source));
                    let message = match source.pointer(pointer) {
                        Some(serde_json::Value::String(t)) if pointer.ends_with("/type") => {
                            let hint = suggestion(t, &JSON_TYPES);
                            format!("{} is not a JSON Schema type; {hint}", quote(t))
                        }
                        _ => format!(
                            "not a valid JSON Schema: {err}; expected a JSON Schema (draft 2020-12)"
                        ),
                    };
                    self.push(path, message);
                }
            }
            Err(err) => {
                self.push(
                    at.clone(),
                    format!(
                        "not a valid JSON Schema: {}; expected a known `$schema` draft",
                        err.masked()
                    ),
                );
            }
        }
        if is_input {
            match source.get("type") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(t)) if t == "object" => {}
                Some(other) => self.push(
                    at.key("type"),
                    format!("an input schema of type {other} cannot describe a callout's input; expected `type: object`"),
                ),
            }
        }
        if self.problems.len() > before {
            return None;
        }
        match jsonschema::options()
            .should_validate_formats(true)
            .build(&source)
        {
            Ok(validator) => Some(JsonSchema {
                source,
                validator: std::sync::Arc::new(validator),
            }),
            Err(err) => {
                let path = at.join(&pointer_to_path(err.instance_path().as_str(), &source));
                self.push(
                    path,
                    format!(
                        "not a usable JSON Schema: {}; expected a schema that compiles",
                        err.masked()
                    ),
                );
                None
            }
        }
    }

    /// Parses each template and checks every variable it uses (against the input schema and
    /// the connection's settings) and every filter and test it names.
    fn templates(&mut self, templates: &[(FieldPath, &str)], input: Option<&JsonSchema>) {
        let env = helpers::environment();
        for (path, source) in templates {
            if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
                continue;
            }
            let template = match env.template_from_str(source) {
                Ok(t) => t,
                Err(err) => {
                    let detail = err.detail().unwrap_or("syntax error");
                    let line = err
                        .line()
                        .map(|l| format!(" (line {l} of the template)"))
                        .unwrap_or_default();
                    self.push(path.clone(), format!("invalid template: {detail}{line}; expected placeholders like `{{{{ input.field }}}}`"));
                    continue;
                }
            };
            for (kind, name) in helpers::unknown_helpers(&env, source) {
                let hint = match super::problem::did_you_mean(name, HELPER_FILTERS) {
                    Some(best) if kind == "filter" => format!("did you mean `{best}`?"),
                    _ if kind == "filter" => format!(
                        "expected a helper ({}) or a minijinja filter, like `upper` or `default`",
                        list(&HELPER_FILTERS)
                    ),
                    _ => "expected a minijinja test, like `defined` or `number`".to_string(),
                };
                self.push(
                    path.clone(),
                    format!("template uses unknown {kind} `{name}`; {hint}"),
                );
            }
            let mut used: Vec<String> = template.undeclared_variables(true).into_iter().collect();
            used.sort();
            for var in used {
                let mut parts = var.split('.');
                let root = parts.next().unwrap_or_default();
                let fields: Vec<&str> = parts.collect();
                let checked = match (root, &self.settings) {
                    ("input", _) => match input {
                        Some(schema) => declared(&schema.source, &fields),
                        None => Ok(()),
                    },
                    ("settings", Some(settings)) => setting_declared(settings, &fields),
                    ("connection", _) => {
                        field_of("connection", &helpers::CONNECTION_FIELDS, &fields)
                    }
                    ("callout", _) => field_of("callout", &helpers::CALLOUT_FIELDS, &fields),
                    _ if helpers::is_function(&env, root) => Ok(()),
                    (_, settings) => Err(unknown_variable(root, settings.is_some())),
                };
                if let Err(message) = checked {
                    self.push(path.clone(), message);
                }
            }
        }
    }

    /// Checks the names of a connection's settings (values were checked as they were read)
    /// and returns them.
    fn settings(&mut self, settings: Option<&BTreeMap<String, SettingValue>>) -> Settings {
        let at = FieldPath::root().key("settings");
        let mut checked = Settings::new();
        for (name, value) in settings.into_iter().flatten() {
            let mut chars = name.chars();
            let usable = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !usable {
                self.problems.push(FieldProblem::at_key(
                    at.key(name),
                    format!("{} is not a setting name; expected letters, digits and underscores, starting with a letter, like \"account_id\", so that templates can read it as `settings.account_id`", quote(name)),
                ));
                continue;
            }
            checked.insert(name.clone(), value.0.clone());
        }
        checked
    }

    fn output_map(
        &mut self,
        at: &FieldPath,
        output: Option<&BTreeMap<String, String>>,
    ) -> Vec<(String, String)> {
        let mut map = Vec::new();
        for (field, pointer) in output.into_iter().flatten() {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                self.push(at.key(field), format!("{} is not a JSON Pointer; expected a path into the response like \"/data/id\"", quote(pointer)));
                continue;
            }
            map.push((field.clone(), pointer.clone()));
        }
        map
    }

    /// Checks the `pagination` of the REST function at `function` (whose method is `method`
    /// and whose query is `query`): the keys its `type` needs and allows, the pointers, the
    /// query parameters and the bounds.
    fn pagination(
        &mut self,
        function: &FieldPath,
        p: &PaginationConfig,
        method: HttpMethod,
        query: Option<&BTreeMap<String, String>>,
    ) -> Option<Pagination> {
        let at = function.key("pagination");
        let before = self.problems.len();
        let kind = p.r#type.name();
        if method != HttpMethod::Get {
            self.push(
                function.key("method"),
                format!("a function with `pagination` must use `GET`, found `{}`: each page is a new request, and the upstream could take a repeated {} for a retry; expected `method: GET`, or no `pagination`", method.as_str(), method.as_str()),
            );
        }
        let present: Vec<&str> = [
            ("cursor", p.cursor.is_some()),
            ("cursor_param", p.cursor_param.is_some()),
            ("next_url", p.next_url.is_some()),
            ("page_param", p.page_param.is_some()),
            ("first_page", p.first_page.is_some()),
            ("offset_param", p.offset_param.is_some()),
            ("limit_param", p.limit_param.is_some()),
            ("page_size", p.page_size.is_some()),
            ("has_more", p.has_more.is_some()),
            ("max_pages", p.max_pages.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
        let shared = ["limit_param", "page_size", "has_more", "max_pages"];
        let (required, own): (&[&str], &[&str]) = match p.r#type {
            PaginationKind::Cursor => (&["cursor", "cursor_param"], &[]),
            PaginationKind::NextUrl => (&["next_url"], &[]),
            PaginationKind::LinkHeader => (&[], &[]),
            PaginationKind::Page => (&[], &["page_param", "first_page"]),
            PaginationKind::Offset => (&[], &["offset_param"]),
        };
        let allowed: Vec<&str> = ["type", "items"]
            .iter()
            .chain(required)
            .chain(own)
            .chain(&shared)
            .copied()
            .collect();
        for key in &present {
            if !allowed.contains(key) {
                self.problems.push(FieldProblem::at_key(
                    at.key(key),
                    format!(
                        "`{key}` does not apply to pagination type `{kind}`; expected only {}",
                        list(&allowed)
                    ),
                ));
            }
        }
        for key in required {
            if !present.contains(key) {
                let example = match *key {
                    "cursor" => {
                        "a JSON Pointer to the next cursor in the body, like `cursor: /meta/next_cursor`"
                    }
                    "cursor_param" => {
                        "the query parameter that sends the cursor back, like `cursor_param: cursor`"
                    }
                    _ => {
                        "a JSON Pointer to the next page's URL in the body, like `next_url: /links/next`"
                    }
                };
                self.problems.push(FieldProblem::missing(
                    at.clone(),
                    key,
                    format!("missing required key `{key}` for pagination type `{kind}`; expected {example}"),
                ));
            }
        }
        let pointers = [
            ("items", Some(&p.items), "/data", "the list"),
            ("cursor", p.cursor.as_ref(), "/meta/next_cursor", "a cursor"),
            ("next_url", p.next_url.as_ref(), "/links/next", "a URL"),
            ("has_more", p.has_more.as_ref(), "/has_more", "a boolean"),
        ];
        for (key, pointer, example, role) in pointers {
            let Some(pointer) = pointer else { continue };
            // The whole body may be the list of items (a bare JSON array), never a cursor, a
            // URL or a boolean.
            let whole_allowed = key == "items";
            if pointer.starts_with('/') || (whole_allowed && pointer.is_empty()) {
                continue;
            }
            let message = if pointer.is_empty() {
                format!(
                    "\"\" points at the whole page, which is not {role}; expected a JSON Pointer into each page like \"{example}\""
                )
            } else if whole_allowed {
                format!(
                    "{} is not a JSON Pointer; expected a JSON Pointer into each page like \"{example}\", or \"\" when the body is the list",
                    quote(pointer)
                )
            } else {
                format!(
                    "{} is not a JSON Pointer; expected a JSON Pointer into each page like \"{example}\"",
                    quote(pointer)
                )
            };
            self.push(at.key(key), message);
        }
        let page_param = p.page_param.clone().unwrap_or_else(|| "page".to_string());
        let offset_param = p
            .offset_param
            .clone()
            .unwrap_or_else(|| "offset".to_string());
        // The parameter the pagination itself moves on each page, if any.
        let moving = match p.r#type {
            PaginationKind::Cursor => p.cursor_param.as_ref().map(|c| ("cursor_param", c.clone())),
            PaginationKind::Page => Some(("page_param", page_param.clone())),
            PaginationKind::Offset => Some(("offset_param", offset_param.clone())),
            PaginationKind::NextUrl | PaginationKind::LinkHeader => None,
        };
        let params = [
            ("cursor_param", p.cursor_param.as_ref()),
            ("page_param", p.page_param.as_ref()),
            ("offset_param", p.offset_param.as_ref()),
            ("limit_param", p.limit_param.as_ref()),
        ];
        for (key, name) in params {
            let Some(name) = name else { continue };
            if name.trim().is_empty() {
                self.push(at.key(key), "an empty query parameter name; expected a name like \"cursor\", \"page\" or \"limit\"");
                continue;
            }
            if query.is_some_and(|q| q.contains_key(name)) {
                self.push(
                    at.key(key),
                    format!("the query parameter `{name}` is also in the function's `query`; the pagination sets it on each page, so expected it only here"),
                );
            }
        }
        if let (Some((key, name)), Some(limit)) = (&moving, &p.limit_param)
            && name == limit
        {
            self.push(
                at.key("limit_param"),
                format!("`limit_param` and `{key}` are both `{limit}`; expected two different query parameters"),
            );
        }
        match (&p.limit_param, p.page_size) {
            (Some(_), None) => self.push(
                at.clone(),
                "`limit_param` needs `page_size`; expected the number of items to ask for a page, like `page_size: 100`",
            ),
            (None, Some(_)) if !matches!(p.r#type, PaginationKind::Page | PaginationKind::Offset) => {
                self.push(
                    at.key("page_size"),
                    format!("`page_size` needs `limit_param` with pagination type `{kind}` (only `page` and `offset` read a short page as the last); expected the query parameter that asks for it, like `limit_param: limit`"),
                );
            }
            _ => {}
        }
        if p.page_size == Some(0) {
            self.push(
                at.key("page_size"),
                "0 items a page would never read a list; expected 1 or more, like 100",
            );
        }
        let max_pages = p.max_pages.unwrap_or(Pagination::DEFAULT_MAX_PAGES);
        if !(1..=Pagination::MAX_PAGES).contains(&max_pages) {
            self.push(
                at.key("max_pages"),
                format!(
                    "{max_pages} is not a number of pages to read; expected 1 to {}, like 100",
                    Pagination::MAX_PAGES
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        let next = match p.r#type {
            PaginationKind::Cursor => PageLink::Cursor {
                pointer: p.cursor.clone()?,
                param: p.cursor_param.clone()?,
            },
            PaginationKind::NextUrl => PageLink::NextUrl {
                pointer: p.next_url.clone()?,
            },
            PaginationKind::LinkHeader => PageLink::LinkHeader,
            PaginationKind::Page => PageLink::Page {
                param: page_param,
                first: p.first_page.unwrap_or(1),
            },
            PaginationKind::Offset => PageLink::Offset {
                param: offset_param,
            },
        };
        Some(Pagination {
            items: p.items.clone(),
            next,
            limit_param: p.limit_param.clone(),
            page_size: p.page_size,
            has_more: p.has_more.clone(),
            max_pages,
        })
    }
}

/// Whether `input.a.b` is declared by `schema`: each step must be in `properties` of a schema
/// that declares properties. A schema without `properties` accepts any field below it.
fn declared(schema: &serde_json::Value, fields: &[&str]) -> Result<(), String> {
    let mut current = schema;
    let mut walked = String::from("input");
    // Where, in the schema, the next field would be declared.
    let mut props_at = String::from("input_schema.properties");
    for field in fields {
        let Some(props) = current.get("properties").and_then(|p| p.as_object()) else {
            let kind = current.get("type").and_then(|t| t.as_str());
            if let Some(kind) = kind.filter(|k| *k != "object") {
                return Err(format!(
                    "template uses `{walked}.{field}`, but `{walked}` is declared as {kind}, which has no fields; expected `{walked}` alone, or `type: object` with `{field}` in its `properties`"
                ));
            }
            if current.get("additionalProperties") == Some(&serde_json::Value::Bool(false))
                || walked == "input"
            {
                return Err(format!(
                    "template uses `{walked}.{field}`, which `input_schema` does not declare; expected `{field}` under `{props_at}`"
                ));
            }
            return Ok(());
        };
        match props.get(*field) {
            Some(sub) => {
                current = sub;
                walked.push('.');
                walked.push_str(field);
                props_at = format!("{props_at}.{field}.properties");
            }
            None => {
                let names: Vec<&str> = props.keys().map(String::as_str).collect();
                let hint = match super::problem::did_you_mean(field, names.iter().copied()) {
                    Some(best) => format!("did you mean `{walked}.{best}`?"),
                    None if names.is_empty() => format!("expected `{field}` under `{props_at}`"),
                    None => format!(
                        "expected one of {} or a new entry in `{props_at}`",
                        list(&names)
                    ),
                };
                return Err(format!(
                    "template uses `{walked}.{field}`, which `input_schema` does not declare; {hint}"
                ));
            }
        }
    }
    Ok(())
}

/// The message for a template variable that is none of the roots nor a function.
/// `has_settings`: whether the connection type has settings.
fn unknown_variable(root: &str, has_settings: bool) -> String {
    let mut known: Vec<&str> = helpers::ROOTS.to_vec();
    if !has_settings {
        known.retain(|r| *r != "settings");
    }
    let hint = match super::problem::did_you_mean(root, known.iter().copied().chain(["now"])) {
        Some("now") => "did you mean `now()`?".to_string(),
        Some(best) => format!("did you mean `{best}`?"),
        None => {
            let fields: Vec<String> = known
                .iter()
                .map(|r| match *r {
                    "settings" => "`settings.<name>`".to_string(),
                    r => format!("`{r}.<field>`"),
                })
                .collect();
            format!("expected {} or a helper like `now()`", fields.join(", "))
        }
    };
    format!("template uses unknown variable `{root}`; {hint}")
}

/// Whether `settings.NAME` is defined: a setting by that name, read as it is (a setting is a
/// plain value, which has no fields).
fn setting_declared(settings: &Settings, fields: &[&str]) -> Result<(), String> {
    let Some((name, rest)) = fields.split_first() else {
        return Ok(());
    };
    if !settings.contains_key(*name) {
        let names: Vec<&str> = settings.keys().map(String::as_str).collect();
        let hint = match super::problem::did_you_mean(name, names.iter().copied()) {
            Some(best) => format!("did you mean `settings.{best}`?"),
            None if names.is_empty() => {
                format!(
                    "expected `{name}` under the connection's `settings`, like `settings: {{ {name}: ... }}`"
                )
            }
            None => format!(
                "expected one of {} or a new entry in `settings`",
                list(&names)
            ),
        };
        return Err(format!(
            "template uses `settings.{name}`, which the connection does not define under `settings`; {hint}"
        ));
    }
    if let Some(field) = rest.first() {
        return Err(format!(
            "template uses `settings.{name}.{field}`, but `settings.{name}` is a plain value, which has no fields; expected `settings.{name}` alone"
        ));
    }
    Ok(())
}

/// Whether `root.FIELD` is one of `known` (the fields of `connection` or `callout`).
fn field_of(root: &str, known: &[&str], fields: &[&str]) -> Result<(), String> {
    match fields.first() {
        Some(field) if !known.contains(field) => {
            let full: Vec<String> = known.iter().map(|k| format!("{root}.{k}")).collect();
            let full: Vec<&str> = full.iter().map(String::as_str).collect();
            Err(format!(
                "template uses `{root}.{field}`, which is not a field of `{root}`; {}",
                suggestion(&format!("{root}.{field}"), &full)
            ))
        }
        _ => Ok(()),
    }
}

fn collect_strings<'a>(
    value: &'a serde_json::Value,
    at: &FieldPath,
    out: &mut Vec<(FieldPath, &'a str)>,
) {
    match value {
        serde_json::Value::String(s) => out.push((at.clone(), s)),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_strings(item, &at.index(i), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                collect_strings(v, &at.key(k), out);
            }
        }
        _ => {}
    }
}

/// A JSON Pointer into `json` as a field path.
fn pointer_to_path(pointer: &str, json: &serde_json::Value) -> FieldPath {
    let mut path = FieldPath::root();
    let mut current = Some(json);
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        match current {
            Some(serde_json::Value::Array(items)) => {
                let i: usize = token.parse().unwrap_or(0);
                current = items.get(i);
                path = path.index(i);
            }
            Some(serde_json::Value::Object(map)) => {
                current = map.get(&token);
                path = path.key(&token);
            }
            _ => path = path.key(&token),
        }
    }
    path
}

fn plugin_path(base: &FieldPath, segs: &[PathSegment]) -> FieldPath {
    let mut path = base.clone();
    for seg in segs {
        path = match seg {
            PathSegment::Key(k) => path.key(k),
            PathSegment::Index(i) => path.index(*i),
        };
    }
    path
}

/// What an auth key holds, for a message about it missing.
fn auth_key_example(key: &str) -> &'static str {
    match key {
        "username" | "client_id" => "plain text, like \"crm-integration\"",
        "in" => "`header` or `query`",
        "name" => "a header or query parameter name, like \"X-Api-Key\"",
        "token_url" => "a URL, like \"https://login.example.com/oauth2/token\"",
        _ => "a secret reference, like \"${env:NAME}\"",
    }
}

/// What is wrong with a files bucket's `key_prefix`, if anything: it must be empty or end with
/// `/`, hold only characters safe in S3 keys, and neither start with `/` nor contain `..`.
fn key_prefix_problem(prefix: &str) -> Option<String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "!_.*'()/-".contains(c);
    if let Some(c) = prefix.chars().find(|c| !safe(*c)) {
        return Some(format!(
            "{} holds the character {c:?}, which is not safe in an S3 key; expected letters, digits and `!_.*'()/-`, like \"crm/files/\"",
            quote(prefix)
        ));
    }
    if prefix.starts_with('/') {
        return Some(format!(
            "{} starts with `/`, which gives every key an empty first segment; expected a prefix without it, like \"files/\"",
            quote(prefix)
        ));
    }
    if prefix.contains("..") {
        return Some(format!(
            "{} contains `..`; expected a prefix without it, like \"files/\"",
            quote(prefix)
        ));
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return Some(format!(
            "{} does not end with `/`; expected \"{prefix}/\", or \"\" for keys without a prefix",
            quote(prefix)
        ));
    }
    None
}

/// What is wrong with an entry of a files bucket's `content_types`, if anything: it must be
/// `*/*`, or a lowercase `type/subtype`, `type/*` or `type/family.*`.
fn content_type_problem(pattern: &str) -> Option<String> {
    if pattern == "*/*" {
        return None;
    }
    let token = |s: &str| {
        s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&^_.+-".contains(&b))
    };
    let subtype = |s: &str| s == "*" || token(s) || s.strip_suffix(".*").is_some_and(&token);
    let usable = |p: &str| {
        p.split_once('/')
            .is_some_and(|(t, s)| token(t) && subtype(s))
    };
    if usable(pattern) {
        return None;
    }
    let lower = pattern.to_ascii_lowercase();
    if usable(&lower) {
        return Some(format!(
            "{} is not lowercase; expected {}",
            quote(pattern),
            quote(&lower)
        ));
    }
    Some(format!(
        "{} is not a content type; expected `type/subtype`, `type/*` or \"*/*\", like \"application/pdf\" or \"image/*\"",
        quote(pattern)
    ))
}

fn s3_op_name(op: S3Operation) -> &'static str {
    match op {
        S3Operation::Put => "put",
        S3Operation::Get => "get",
        S3Operation::Presign => "presign",
        S3Operation::Delete => "delete",
        S3Operation::List => "list",
    }
}

/// Connection and function names: `^[a-z][a-z0-9_]{0,63}$`.
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Finds where `path` points in `node`: the value (or, with `at_key`, the key) of the last
/// step, or the deepest node that exists when the path goes further than the document.
pub fn locate(node: &Node, path: &FieldPath, at_key: bool) -> Pos {
    let mut current = node;
    let mut pos = node.pos;
    let last = path.0.len().saturating_sub(1);
    for (i, seg) in path.0.iter().enumerate() {
        match (seg, &current.value) {
            (Seg::Key(k), Value::Map(entries)) => match entries.iter().find(|e| &e.key == k) {
                Some(e) => {
                    pos = if at_key && i == last {
                        e.key_pos
                    } else {
                        e.value.pos
                    };
                    current = &e.value;
                }
                None => break,
            },
            (Seg::Index(n), Value::Seq(items)) => match items.get(*n) {
                Some(item) => {
                    pos = item.pos;
                    current = item;
                }
                None => break,
            },
            _ => break,
        }
    }
    pos
}

/// Keeps the order problems were found in but drops a "missing" problem for a key that had
/// a bad value (it was set aside and is already reported) or for the key a misspelt one was
/// meant to be (the unknown key's message already suggests it).
pub fn drop_echoes(problems: Vec<FieldProblem>) -> Vec<FieldProblem> {
    let reported: HashSet<FieldPath> = problems
        .iter()
        .filter(|p| p.pos.is_some())
        .map(|p| p.path.clone())
        .collect();
    let typos: HashSet<FieldPath> = problems
        .iter()
        .filter_map(|p| p.suggested.as_ref().map(|s| p.path.key(s)))
        .collect();
    problems
        .into_iter()
        .filter(|p| match &p.missing_key {
            Some(key) => {
                let target = p.path.key(key);
                !reported.contains(&target) && !typos.contains(&target)
            }
            None => true,
        })
        .collect()
}
