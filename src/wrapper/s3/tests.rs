//! The S3 wrapper without a storage server: key checks, the shape of each operation's data,
//! what each storage failure means for a retry, and the calls that fail before anything is
//! sent. The operations against a real server are in `tests/integration/s3.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome, Wrapper};
use tokio::net::TcpListener;

use super::*;
use crate::metadata::{Loader, Metadata};
use crate::wrapper::registry::secret_reader;

const KEY_ID: &str = "AKIA-canary-3e1d";
const SECRET_KEY: &str = "canary-secret-8b7f";

fn env(name: &str) -> Option<String> {
    match name {
        "S3_KEY_ID" => Some(KEY_ID.to_string()),
        "S3_SECRET" => Some(SECRET_KEY.to_string()),
        _ => None,
    }
}

/// The connection `docs` with `endpoint_lines` (the endpoint and network lines) and its
/// functions.
fn docs_yaml(endpoint_lines: &str) -> String {
    format!(
        r#"connection: docs
type: s3
bucket: crm-docs
{endpoint_lines}
path_style: true
auth: {{ type: aws, access_key_id: "${{env:S3_KEY_ID}}", secret_access_key: "${{env:S3_SECRET}}" }}
limits: {{ timeout: 30s, connect_timeout: 5s }}
functions:
  fetch:
    operation: get
    key: "records/{{{{ input.name }}}}"
    input_schema:
      type: object
      required: [name]
      properties:
        name: {{ type: string }}
  store:
    operation: put
    key: "records/{{{{ input.name }}}}"
    file: "{{{{ input.file_id }}}}"
    input_schema:
      type: object
      required: [name, file_id]
      properties:
        name: {{ type: string }}
        file_id: {{ type: string }}
  under:
    operation: list
    prefix: "{{{{ input.prefix }}}}"
    input_schema:
      type: object
      required: [prefix]
      properties:
        prefix: {{ type: string }}
"#
    )
}

fn load(yaml: &str) -> Metadata {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("docs.yaml"), yaml).expect("write");
    match Loader::new().load(dir.path()).expect("readable") {
        Ok(metadata) => metadata,
        Err(problems) => panic!("metadata has problems: {problems:?}"),
    }
}

fn build(yaml: &str) -> S3Wrapper {
    let metadata = load(yaml);
    let connection = metadata.connections.get("docs").expect("docs");
    let secret = secret_reader(connection, &env);
    S3Wrapper::build(connection, &secret, None).expect("the wrapper builds")
}

async fn call_with(
    wrapper: &S3Wrapper,
    function: &str,
    input: Value,
    deadline: Instant,
) -> Outcome {
    wrapper
        .call(Call {
            callout_id: "co-1",
            function,
            input: &input,
            attempt: 1,
            idempotency_key: "idem-1",
            deadline,
            pace: &switchboard_sdk::Unpaced,
        })
        .await
}

async fn call(wrapper: &S3Wrapper, function: &str, input: Value) -> Outcome {
    call_with(
        wrapper,
        function,
        input,
        Instant::now() + Duration::from_secs(10),
    )
    .await
}

fn error(outcome: &Outcome) -> &CallError {
    match &outcome.result {
        Ok(data) => panic!("call succeeded: {data}"),
        Err(err) => err,
    }
}

/// An endpoint on loopback that accepts connections and never answers.
async fn silent_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

#[test]
fn ordinary_keys_and_an_empty_prefix_pass() {
    for key in [
        "invoices/2024/17.pdf",
        "a b/ü ñ/счёт.pdf",
        "dots..inside/name...txt",
        "trailing/",
        "x",
    ] {
        assert_eq!(check_key(key, false), Ok(()), "{key}");
    }
    assert_eq!(check_key("", true), Ok(()));
    assert_eq!(check_key("records/17/", true), Ok(()));
    assert_eq!(check_key(&"k".repeat(MAX_KEY_BYTES), false), Ok(()));
}

#[test]
fn unsafe_keys_are_refused_with_the_reason() {
    let cases = [
        (
            String::new(),
            "the rendered key is empty; expected an object key like \"invoices/17.pdf\"",
        ),
        (
            "é".repeat(513),
            "the rendered key is 1026 bytes long; at most 1024 are allowed",
        ),
        (
            "/etc/passwd".to_string(),
            "the rendered key \"/etc/passwd\" starts with `/`; expected a key relative to the bucket, like \"invoices/17.pdf\"",
        ),
        (
            "records/../secrets".to_string(),
            "the rendered key \"records/../secrets\" has a `.` or `..` segment; expected plain names between the slashes",
        ),
        (
            "..".to_string(),
            "the rendered key \"..\" has a `.` or `..` segment; expected plain names between the slashes",
        ),
        (
            "records/./a".to_string(),
            "the rendered key \"records/./a\" has a `.` or `..` segment; expected plain names between the slashes",
        ),
        (
            "a\nb".to_string(),
            "the rendered key \"a\\nb\" contains a control character",
        ),
        (
            "a\u{7f}b".to_string(),
            "the rendered key \"a\\u{7f}b\" contains a control character",
        ),
    ];
    for (key, expected) in cases {
        assert_eq!(check_key(&key, false), Err(expected.to_string()), "{key:?}");
    }
    assert_eq!(
        check_key("/records", true),
        Err("the rendered prefix \"/records\" starts with `/`; expected a prefix relative to the bucket, like \"invoices/17.pdf\"".to_string())
    );
}

#[test]
fn a_json_object_is_parsed_and_other_text_stays_text() {
    let json_text = br#"{"id": 7, "tags": ["a"]}"#.to_vec();
    assert_eq!(
        body_value("application/json", json_text.clone()),
        json!({ "id": 7, "tags": ["a"] })
    );
    assert_eq!(
        body_value("Application/JSON; charset=utf-8", json_text.clone()),
        json!({ "id": 7, "tags": ["a"] })
    );
    assert_eq!(
        body_value("application/problem+json", b"[1, 2]".to_vec()),
        json!([1, 2])
    );
    // JSON text under another content type, and broken JSON, stay text.
    assert_eq!(
        body_value("text/plain", json_text),
        json!(r#"{"id": 7, "tags": ["a"]}"#)
    );
    assert_eq!(
        body_value("application/json", b"{\"id\":".to_vec()),
        json!("{\"id\":")
    );
    assert_eq!(body_value("text/plain", Vec::new()), json!(""));
}

#[test]
fn bytes_that_are_not_utf8_come_as_base64() {
    assert_eq!(
        body_value("application/octet-stream", vec![0xff, 0x00, 0xfe]),
        json!({ "base64": "/wD+" })
    );
    assert_eq!(
        body_value("application/json", vec![0xc3, 0x28]),
        json!({ "base64": "wyg=" })
    );
}

#[test]
fn a_get_result_names_key_size_and_content_type() {
    assert_eq!(
        get_data(
            "records/a.json",
            "application/json",
            br#"{"ok":true}"#.to_vec()
        ),
        json!({
            "key": "records/a.json",
            "size": 11,
            "content_type": "application/json",
            "body": { "ok": true },
        })
    );
}

#[test]
fn a_presign_result_has_the_link_and_its_expiry_in_rfc_3339() {
    assert_eq!(
        presign_data(
            "https://s3.example.com/b/k?X-Amz-Signature=abc",
            1_795_744_553_000
        ),
        json!({
            "url": "https://s3.example.com/b/k?X-Amz-Signature=abc",
            "expires_at": "2026-11-27T01:55:53Z",
        })
    );
}

#[test]
fn storage_failures_are_classified_in_one_place() {
    let failure = |code: Option<&str>, transient: bool| S3Error {
        message: "m".into(),
        code: code.map(str::to_string),
        transient,
        refused: false,
    };
    let cases = [
        (Some("NoSuchKey"), false, ErrorKind::Rejected),
        (Some("NoSuchBucket"), false, ErrorKind::Rejected),
        (Some("AccessDenied"), false, ErrorKind::Auth),
        (Some("InvalidAccessKeyId"), false, ErrorKind::Auth),
        (Some("SignatureDoesNotMatch"), false, ErrorKind::Auth),
        (Some("SlowDown"), true, ErrorKind::Unavailable),
        (Some("InternalError"), true, ErrorKind::Unavailable),
        (None, true, ErrorKind::Unavailable),
        (Some("InvalidArgument"), false, ErrorKind::Rejected),
    ];
    for (code, transient, kind) in cases {
        let err = failure(code, transient);
        assert_eq!(storage_kind(&err), kind, "{code:?}");
        assert_eq!(storage_kind(&err).retryable(), transient, "{code:?}");
    }
    let refused = S3Error {
        refused: true,
        ..failure(None, false)
    };
    assert_eq!(storage_kind(&refused), ErrorKind::Refused);
    assert!(!storage_kind(&refused).retryable());
}

#[tokio::test]
async fn a_rendered_key_with_a_dot_dot_segment_is_refused_before_sending() {
    let wrapper = build(&docs_yaml(
        "endpoint: http://127.0.0.1:9\nallow_private_network: true",
    ));
    let outcome = call(&wrapper, "fetch", json!({ "name": "../../other" })).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(!err.retryable());
    assert_eq!(
        err.message,
        "cannot build the request of `docs.fetch`: the rendered key \"records/../../other\" has a `.` or `..` segment; expected plain names between the slashes"
    );
    assert_eq!((outcome.http_status, outcome.response_bytes), (None, 0));

    let outcome = call(&wrapper, "under", json!({ "prefix": "/abs" })).await;
    assert_eq!(error(&outcome).kind, ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn a_put_without_a_files_bucket_is_a_config_error() {
    let wrapper = build(&docs_yaml(
        "endpoint: http://127.0.0.1:9\nallow_private_network: true",
    ));
    let outcome = call(
        &wrapper,
        "store",
        json!({ "name": "a.pdf", "file_id": "f1" }),
    )
    .await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Config);
    assert_eq!(
        err.message,
        "s3 function `docs.store` stores a file reference, but no connection has a `files:` block"
    );
}

#[tokio::test]
async fn a_private_endpoint_is_refused_unless_allowed() {
    let wrapper = build(&docs_yaml("endpoint: http://127.0.0.1:9"));
    let outcome = call(&wrapper, "fetch", json!({ "name": "a" })).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Refused);
    assert!(err.message.contains("127.0.0.1"), "{}", err.message);
}

/// A fake S3 on loopback that answers every request with the object `{"ok":true}` and counts
/// the connections it accepted.
async fn counting_endpoint() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = br#"{"ok":true}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn an_endpoint_named_by_host_that_resolves_to_loopback_is_refused_unless_allowed() {
    use std::sync::atomic::Ordering;
    let (port, accepted) = counting_endpoint().await;
    let endpoint = format!("endpoint: http://localhost:{port}");
    let wrapper = build(&docs_yaml(&endpoint));
    let outcome = call(&wrapper, "fetch", json!({ "name": "a" })).await;
    let err = error(&outcome);
    let listed: Vec<String> = tokio::net::lookup_host(("localhost", 0))
        .await
        .expect("localhost resolves")
        .map(|a| a.ip().to_string())
        .collect();
    assert_eq!(err.kind, ErrorKind::Refused, "{}", err.message);
    assert!(!err.retryable());
    assert_eq!(
        err.message,
        format!(
            "reading `records/a` in bucket `crm-docs` of `docs` failed: host `localhost` resolves only to private or reserved addresses ({}); private addresses are refused unless the connection sets `allow_private_network: true`",
            listed.join(", ")
        )
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );

    let wrapper = build(&docs_yaml(&format!(
        "{endpoint}\nallow_private_network: true"
    )));
    let outcome = call(&wrapper, "fetch", json!({ "name": "a" })).await;
    match &outcome.result {
        Ok(data) => assert_eq!(data["body"], json!({ "ok": true }), "{data}"),
        Err(err) => panic!("the allowed connection failed: {err:?}"),
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unknown_function_is_a_config_error() {
    let wrapper = build(&docs_yaml("endpoint: http://127.0.0.1:9"));
    let outcome = call(&wrapper, "nope", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Config);
    assert_eq!(err.message, "connection `docs` has no function `nope`");
}

#[tokio::test]
async fn a_silent_server_ends_the_call_at_its_deadline() {
    let endpoint = silent_endpoint().await;
    let wrapper = build(&docs_yaml(&format!(
        "endpoint: {endpoint}\nallow_private_network: true"
    )));
    let started = Instant::now();
    let outcome = call_with(
        &wrapper,
        "fetch",
        json!({ "name": "a" }),
        started + Duration::from_millis(300),
    )
    .await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.retryable());
    assert_eq!(
        err.message,
        "the get of `docs.fetch` on bucket `crm-docs` did not finish before the attempt's deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn debug_shows_no_credential() {
    let wrapper = build(&docs_yaml("endpoint: http://127.0.0.1:9"));
    let debug = format!("{wrapper:?}");
    assert!(debug.contains("crm-docs"), "{debug}");
    for canary in [KEY_ID, SECRET_KEY] {
        assert!(!debug.contains(canary), "{debug}");
    }
}

#[test]
fn a_put_of_a_huge_file_takes_parts_large_enough_for_the_part_limit() {
    assert_eq!(put_part_size(0), PUT_PART_SIZE);
    assert_eq!(put_part_size(50 * 1024 * 1024), PUT_PART_SIZE);
    let huge = 100 * 1024 * 1024 * 1024; // 100 GiB: 12,800 parts of 8 MiB
    let part = put_part_size(huge);
    assert!(part > PUT_PART_SIZE);
    assert!(huge.div_ceil(part) <= MAX_PARTS);
}
