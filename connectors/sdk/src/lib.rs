//! The crate a Switchboard connector plugin depends on, and nothing else.
//!
//! A plugin adds a connection type that plain REST or SOAP metadata cannot express. It
//! registers under a type name; when metadata names that type, the engine hands the plugin the
//! connection's `settings` and each function's `request` to check, and reports the plugin's
//! [`Issue`]s with file, line, column and field path like its own. Then it asks the plugin to
//! [`ConnectorType::build`] a [`Wrapper`]: the one async trait every wrapper implements, the
//! built-in REST, SOAP and S3 wrappers included. A wrapper turns a [`Call`] into an
//! [`Outcome`]: data, or a [`CallError`] whose [`ErrorKind`] decides whether it is retried.
//!
//! ```
//! use switchboard_sdk::{ConnectorType, Issue, PathSegment};
//! use serde_json::Value;
//!
//! struct Ledger;
//!
//! impl ConnectorType for Ledger {
//!     fn type_name(&self) -> &'static str {
//!         "ledger"
//!     }
//!
//!     fn validate_settings(&self, settings: &Value) -> Vec<Issue> {
//!         match settings.get("book") {
//!             Some(Value::String(_)) => Vec::new(),
//!             _ => vec![Issue::new(vec![PathSegment::key("book")], "missing `book`; expected the ledger's book name")],
//!         }
//!     }
//!
//!     fn validate_request(&self, _request: &Value) -> Vec<Issue> {
//!         Vec::new()
//!     }
//! }
//!
//! let issues = Ledger.validate_settings(&serde_json::json!({}));
//! assert_eq!(issues[0].to_string(), "book: missing `book`; expected the ledger's book name");
//! ```

use std::fmt;

/// One step of a path inside the value a plugin checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

impl PathSegment {
    pub fn key(key: impl Into<String>) -> PathSegment {
        PathSegment::Key(key.into())
    }
}

/// A problem a plugin found, located by a path relative to the value it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: Vec<PathSegment>,
    /// What is wrong, then `; ` and what was expected.
    pub message: String,
}

impl Issue {
    pub fn new(path: Vec<PathSegment>, message: impl Into<String>) -> Issue {
        Issue {
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.path.iter().enumerate() {
            match seg {
                PathSegment::Key(k) if i == 0 => write!(f, "{k}")?,
                PathSegment::Key(k) => write!(f, ".{k}")?,
                PathSegment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        if !self.path.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// A connection type added by a plugin. Checks are pure: no network, files, environment or
/// clock, so `switchboard validate` gives the same answer everywhere.
pub trait ConnectorType: Send + Sync {
    /// The name metadata uses in `type:`. Lowercase letters, digits and underscores.
    fn type_name(&self) -> &'static str;

    /// Checks the connection's `settings` (JSON `null` when absent).
    fn validate_settings(&self, settings: &serde_json::Value) -> Vec<Issue>;

    /// Checks one function's `request` (JSON `null` when absent).
    fn validate_request(&self, request: &serde_json::Value) -> Vec<Issue>;

    /// Builds the wrapper that runs this connection's callouts. Called with settings and
    /// requests that [`ConnectorType::validate_settings`] and
    /// [`ConnectorType::validate_request`] accepted.
    ///
    /// # Errors
    /// A message naming what could not be built; the engine refuses to load the metadata.
    /// The default refuses: a type that only checks metadata cannot run callouts.
    fn build(&self, cx: BuildContext) -> Result<std::sync::Arc<dyn Wrapper>, String> {
        Err(format!(
            "connection `{}`: type `{}` cannot run callouts",
            cx.connection,
            self.type_name()
        ))
    }
}

mod call;

pub use call::{BuildContext, Call, CallError, ErrorKind, Outcome, Pace, Unpaced, Wrapper};
