//! The connection types that run callouts, in one list, and building a wrapper for every
//! connection of a metadata version.
//!
//! [`BUILT_IN`] names each built-in kind once; any other type name is a plugin's, built
//! through [`Loader::plugin`] and [`ConnectorType::build`](switchboard_sdk::ConnectorType::build).
//! Every connection gets a wrapper: one that cannot be built (a secret that cannot be read, a
//! plugin type no plugin registers) gets a [`FailingWrapper`] whose every call fails with
//! `ErrorKind::Config` and the reason, and the reason goes into [`Wrappers::warnings`].
//! Reasons name secret references, never their values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use switchboard_sdk::{BuildContext, Call, CallError, ErrorKind, Outcome, Wrapper};

use super::net;
use super::oauth::TokenSources;
use super::rest::RestWrapper;
use super::s3::S3Wrapper;
use super::soap::SoapWrapper;
use crate::metadata::model::{Connection, Protocol, Request};
use crate::metadata::values::{Secret, SecretRef};
use crate::metadata::{Loader, Metadata};
use crate::offload::Files;

/// What building a wrapper may use besides its connection.
pub struct Shared<'a> {
    /// Reads a secret reference of the connection.
    pub secret: &'a dyn Fn(&SecretRef) -> Result<Secret, String>,
    /// OAuth2 tokens, kept across builds.
    pub tokens: &'a TokenSources,
    /// The files bucket, when the metadata has one (offload, file bodies, `put`).
    pub files: Option<&'a Arc<Files>>,
}

/// Builds the wrapper of one connection. An error names the connection.
type Build = fn(&Connection, &Shared<'_>) -> Built;

type Built = Result<Arc<dyn Wrapper>, String>;

/// The built-in connection types, one line each.
#[rustfmt::skip]
pub const BUILT_IN: &[(&str, Build)] = &[
    ("rest", |c, shared| Ok(Arc::new(RestWrapper::build_with(c, shared.secret, shared.tokens, shared.files.cloned())?))),
    ("soap", |c, shared| Ok(Arc::new(SoapWrapper::build(c, shared.secret, shared.files.cloned())?))),
    ("s3", |c, shared| Ok(Arc::new(S3Wrapper::build(c, shared.secret, shared.files)?))),
];

/// The wrappers of one metadata version.
pub struct Wrappers {
    /// One wrapper per connection, by connection name.
    pub by_connection: HashMap<String, Arc<dyn Wrapper>>,
    /// Why some connections cannot run callouts, for the engine to log at start.
    pub warnings: Vec<String>,
}

/// Builds a wrapper for every connection. `env` reads environment variables for secret
/// references; `loader` knows the plugins' types; `tokens` keeps OAuth2 tokens across builds;
/// `files` is the metadata's files bucket, if it has one.
pub fn build_all(
    metadata: &Metadata,
    loader: &Loader,
    env: &dyn Fn(&str) -> Option<String>,
    tokens: &TokenSources,
    files: Option<&Arc<Files>>,
) -> Wrappers {
    let mut wrappers = Wrappers {
        by_connection: HashMap::with_capacity(metadata.connections.len()),
        warnings: Vec::new(),
    };
    for (name, connection) in &metadata.connections {
        let wrapper = match build(connection, loader, env, tokens, files) {
            Ok(wrapper) => wrapper,
            Err(reason) => {
                wrappers.warnings.push(reason.clone());
                Arc::new(FailingWrapper::new(reason)) as Arc<dyn Wrapper>
            }
        };
        wrappers.by_connection.insert(name.clone(), wrapper);
    }
    wrappers
}

fn build(
    connection: &Connection,
    loader: &Loader,
    env: &dyn Fn(&str) -> Option<String>,
    tokens: &TokenSources,
    files: Option<&Arc<Files>>,
) -> Built {
    let name = &connection.name;
    let secret = secret_reader(connection, env);
    if let Some((_, build)) = BUILT_IN
        .iter()
        .find(|(kind, _)| *kind == connection.type_name)
    {
        let shared = Shared {
            secret: &secret,
            tokens,
            files,
        };
        return build(connection, &shared);
    }
    let Some(kind) = loader.plugin(&connection.type_name) else {
        return Err(format!(
            "connection `{name}`: type `{}` is neither built in nor registered by a plugin",
            connection.type_name
        ));
    };
    let settings = match &connection.protocol {
        Protocol::Plugin { settings } => settings.clone(),
        _ => serde_json::Value::Null,
    };
    let functions = connection
        .functions
        .iter()
        .map(|(fname, f)| {
            let request = match &f.request {
                Request::Plugin { request } => request.clone(),
                _ => serde_json::Value::Null,
            };
            (fname.clone(), request)
        })
        .collect();
    // The client's resolver refuses names with private addresses, but an IP literal never
    // meets it: refuse a private endpoint here, as the built-in wrappers do before each call.
    if let Some(endpoint) = &connection.endpoint {
        net::check_url(endpoint, connection.allow_private_network)
            .map_err(|refused| format!("connection `{name}`: endpoint: {refused}"))?;
    }
    let cx = BuildContext {
        connection: name.clone(),
        endpoint: connection.endpoint.as_ref().map(|u| u.to_string()),
        settings,
        functions,
        http: net::http_client(connection)?,
    };
    kind.build(cx).map_err(|why| {
        let prefix = format!("connection `{name}`: ");
        if why.starts_with(&prefix) {
            why
        } else {
            format!("{prefix}{why}")
        }
    })
}

/// Reads the secret references of `connection` (a `${file:…}` path is relative to its file).
pub fn secret_reader<'a>(
    connection: &'a Connection,
    env: &'a dyn Fn(&str) -> Option<String>,
) -> impl Fn(&SecretRef) -> Result<Secret, String> + 'a {
    let base = connection.source.file.parent().unwrap_or(Path::new("."));
    move |r: &SecretRef| r.resolve(env, base)
}

/// A wrapper for a connection that cannot run callouts: every call fails with
/// `ErrorKind::Config` and the reason.
#[derive(Debug, Clone)]
pub struct FailingWrapper {
    reason: String,
}

impl FailingWrapper {
    pub fn new(reason: impl Into<String>) -> FailingWrapper {
        FailingWrapper {
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl Wrapper for FailingWrapper {
    async fn call(&self, _call: Call<'_>) -> Outcome {
        Outcome::failure(
            CallError::new(ErrorKind::Config, self.reason.clone()),
            None,
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::metadata::validate::BUILT_IN_TYPES;

    #[test]
    fn every_kind_name_is_unique() {
        let names: Vec<&str> = BUILT_IN.iter().map(|(name, _)| *name).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
    }

    /// A plugin type whose calls succeed without touching the network.
    struct Offline;

    struct OfflineWrapper;

    #[async_trait]
    impl Wrapper for OfflineWrapper {
        async fn call(&self, _call: Call<'_>) -> Outcome {
            Outcome::success(serde_json::json!({}), None, 0)
        }
    }

    impl switchboard_sdk::ConnectorType for Offline {
        fn type_name(&self) -> &'static str {
            "offline"
        }

        fn validate_settings(&self, _settings: &serde_json::Value) -> Vec<switchboard_sdk::Issue> {
            Vec::new()
        }

        fn validate_request(&self, _request: &serde_json::Value) -> Vec<switchboard_sdk::Issue> {
            Vec::new()
        }

        fn build(&self, _cx: BuildContext) -> Result<Arc<dyn Wrapper>, String> {
            Ok(Arc::new(OfflineWrapper))
        }
    }

    #[test]
    fn a_plugin_connection_on_a_private_endpoint_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().expect("a temp folder");
        for (name, endpoint, allow) in [
            ("metadata", "http://169.254.169.254/latest", false),
            ("local", "http://0x7f000001:8080/", true),
            ("public", "https://ledger.example.com/api", false),
        ] {
            let yaml = format!(
                "connection: {name}\ntype: offline\nendpoint: {endpoint}\nallow_private_network: {allow}\nfunctions:\n  post: {{ request: {{}} }}\n"
            );
            std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).expect("write");
        }
        let mut loader = Loader::new();
        loader.register(Box::new(Offline)).expect("registers");
        let metadata = match loader.load(dir.path()).expect("readable") {
            Ok(metadata) => metadata,
            Err(problems) => panic!("{problems:?}"),
        };
        let w = build_all(
            &metadata,
            &loader,
            &|_| None,
            &TokenSources::default(),
            None,
        );
        assert_eq!(
            w.warnings,
            vec![
                "connection `metadata`: endpoint: host `169.254.169.254` is a private or reserved address; private addresses are refused unless the connection sets `allow_private_network: true`"
            ]
        );
        assert_eq!(w.by_connection.len(), 3);
    }

    #[test]
    fn every_type_the_metadata_accepts_is_registered() {
        let registered: BTreeSet<&str> = BUILT_IN.iter().map(|(name, _)| *name).collect();
        let accepted: BTreeSet<&str> = BUILT_IN_TYPES.into_iter().collect();
        assert_eq!(registered, accepted);
    }
}
