//! The metadata loader embedded as a library, with a plugin connection type.
//!
//! Shows how a host program (or a connector crate's tests) loads a metadata folder, adds a
//! connection type of its own, and reads the validated model.
//!
//! Run: `cargo run --example embed_loader -- metadata/`
//! Prints one line per function (`connection.function (type): inputs`), or every problem of
//! the folder and exit status 1.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;
use switchboard::metadata::Loader;
use switchboard_sdk::{ConnectorType, Issue, PathSegment};

/// A made-up plugin type: an internal ledger whose functions post debit or credit entries.
struct Ledger;

impl ConnectorType for Ledger {
    fn type_name(&self) -> &'static str {
        "ledger"
    }

    fn validate_settings(&self, settings: &Value) -> Vec<Issue> {
        match settings.get("book") {
            Some(Value::String(_)) => Vec::new(),
            _ => vec![Issue::new(
                vec![PathSegment::key("book")],
                "missing `book`; expected the ledger's book name",
            )],
        }
    }

    fn validate_request(&self, request: &Value) -> Vec<Issue> {
        match request.get("entry").and_then(Value::as_str) {
            Some("debit" | "credit") => Vec::new(),
            _ => vec![Issue::new(
                vec![PathSegment::key("entry")],
                "expected `debit` or `credit`",
            )],
        }
    }
}

fn main() -> ExitCode {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("metadata"), PathBuf::from);
    let mut loader = Loader::new();
    if let Err(err) = loader.register(Box::new(Ledger)) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    match loader.load(&dir) {
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Ok(Err(problems)) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            ExitCode::from(1)
        }
        Ok(Ok(metadata)) => {
            for (reference, connection, function) in metadata.functions() {
                let inputs: Vec<String> = function.inputs().into_iter().map(|i| i.name).collect();
                println!(
                    "{reference} ({}): {}",
                    connection.type_name,
                    inputs.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
    }
}
