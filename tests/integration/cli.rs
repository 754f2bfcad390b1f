//! `switchboard validate` and `switchboard functions`, run as a user runs them.

use serde_json::Value;
use switchboard::metadata::Loader;
use switchboard_sdk::{ConnectorType, Issue, PathSegment};

use crate::support;

const BROKEN_A: &str = "connection: billing\ntype: rest\nendpoint: https://billing.example.com\nlimits:\n  rate: ten per second\n  timeout: 10 minutes\n";
const BROKEN_B: &str = "connection: mail\ntype: rest\nendpoint: https://mail.example.com\nretyr: { max_attempts: 3 }\n";

#[test]
fn broken_folder_prints_every_error_and_exits_1() {
    let dir = support::folder(&[
        ("a.yaml", BROKEN_A),
        ("sub/b.yml", BROKEN_B),
        (".hidden.yaml", "not: [valid"),
    ]);
    let out = support::switchboard(&["validate", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("sub/b.yml").display().to_string();
    let expected = format!(
        "error: {a}:5:9: connections.billing.limits.rate: \"ten per second\" is not a rate; expected <number>/<s|min|h>, like \"10/s\"\n\
         error: {a}:6:12: connections.billing.limits.timeout: \"10 minutes\" is not a duration; expected <number><ms|s|m|h|d>, like \"30s\" or \"10m\"\n\
         error: {b}:4:1: connections.mail: unknown key `retyr`; did you mean `retry`?\n\
         3 problems in 2 files\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn json_format_lists_problems_for_machines() {
    let dir = support::folder(&[("a.yaml", BROKEN_A)]);
    let out = support::switchboard(&[
        "validate",
        "--format",
        "json",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json["valid"], false);
    let problems = json["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[0]["line"], 5);
    assert_eq!(problems[0]["column"], 9);
    assert_eq!(problems[0]["path"], "connections.billing.limits.rate");
    assert_eq!(
        problems[0]["file"],
        dir.path().join("a.yaml").display().to_string()
    );
}

#[test]
fn valid_folder_exits_0_and_counts() {
    let dir = support::folder(&[(
        "ok.yaml",
        "connection: crm\ntype: rest\nendpoint: https://crm.example.com\nfunctions:\n  get_account:\n    path: /accounts/{{ input.id }}\n    input_schema: { type: object, required: [id], properties: { id: { type: string } } }\n",
    )]);
    let out = support::switchboard(&["validate", &dir.path().display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "ok: {} holds 1 connection and 1 function; no problems found\n",
            dir.path().display()
        )
    );

    let out = support::switchboard(&[
        "functions",
        "--format",
        "json",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json[0]["function"], "crm.get_account");
    assert_eq!(json[0]["request"], "GET /accounts/{{ input.id }}");
    assert_eq!(
        json[0]["inputs"][0],
        serde_json::json!({"name": "id", "type": "string", "required": true})
    );

    let out = support::switchboard(&["functions", &dir.path().display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("crm.get_account  [GET /accounts/{{ input.id }}]"),
        "{text}"
    );
    assert!(text.contains("inputs: id (string, required)"), "{text}");
}

#[test]
fn unusable_arguments_exit_2() {
    let out = support::switchboard(&["validate", "/no/such/folder"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: /no/such/folder: no such file or folder\n"
    );
    let out = support::switchboard(&["validate", "--format", "xml", "metadata"]);
    assert_eq!(out.status.code(), Some(2));
    let out = support::switchboard(&["validate", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A plugin type: a ledger with a `book` setting and requests naming an `entry` kind.
struct Ledger;

impl ConnectorType for Ledger {
    fn type_name(&self) -> &'static str {
        "ledger"
    }

    fn validate_settings(&self, settings: &Value) -> Vec<Issue> {
        match settings.get("book") {
            Some(Value::String(_)) => Vec::new(),
            _ => vec![Issue::new(
                vec![],
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

#[test]
fn plugin_types_are_registered_by_name_and_checked_by_the_plugin() {
    let text = "connection: books\ntype: ledger\nsettings: { book: main }\nfunctions:\n  post:\n    request: { entry: debit }\n  bad:\n    request: { entry: sideways }\n";
    let dir = support::folder(&[("books.yaml", text)]);
    let file = dir.path().join("books.yaml").display().to_string();

    // Without the plugin, the type is unknown.
    assert_eq!(
        support::problems(dir.path()),
        vec![format!(
            "{file}:2:7: connections.books.type: unknown connection type `ledger`; expected one of `rest`, `soap`, `s3`"
        )]
    );

    let mut loader = Loader::new();
    loader.register(Box::new(Ledger)).expect("registers");
    assert!(
        loader.register(Box::new(Ledger)).is_err(),
        "a type name is unique"
    );
    let problems: Vec<String> = match loader.load(dir.path()).expect("readable") {
        Ok(_) => Vec::new(),
        Err(p) => p.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(
        problems,
        vec![format!(
            "{file}:8:23: connections.books.functions.bad.request.entry: expected `debit` or `credit`"
        )]
    );

    let ok = support::folder(&[(
        "books.yaml",
        "connection: books\ntype: ledger\nsettings: { book: main }\nfunctions:\n  post:\n    request: { entry: debit }\n",
    )]);
    let metadata = loader.load(ok.path()).expect("readable").expect("valid");
    let (conn, _) = metadata.function("books.post").expect("function");
    assert_eq!(conn.type_name, "ledger");
}
