//! The wrappers against a real upstream: an axum server on `127.0.0.1:0` that echoes what it
//! received, plus raw TCP servers for answers axum will not give (a dripping body, a chunked
//! body with no length). Metadata is loaded from YAML text, as in production.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_sdk::{BuildContext, Call, ConnectorType, ErrorKind, Issue, Outcome, Wrapper};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::oauth::TokenSources;
use super::{Wrappers, build_all};
use crate::metadata::{Loader, Metadata};

const TOKEN: &str = "canary-token-7f3a";
const PASSWORD: &str = "canary-password-91c2";
const API_KEY: &str = "canary-key-55e0";

fn env(name: &str) -> Option<String> {
    match name {
        "UP_TOKEN" => Some(TOKEN.to_string()),
        "UP_PASSWORD" => Some(PASSWORD.to_string()),
        "UP_KEY" => Some(API_KEY.to_string()),
        _ => None,
    }
}

/// An upstream that echoes each request as JSON, with a few special paths under `/base`.
struct Upstream {
    port: u16,
    requests: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            answer(req).await
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream { port, requests }
}

async fn answer(req: Request) -> Response {
    let path = req.uri().path().to_string();
    let route = path.strip_prefix("/base").unwrap_or(&path).to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let echo = json!({ "method": method, "uri": uri, "headers": headers, "body": body });
    if let Some(code) = route.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let text = format!("upstream says no\n\n  to {}", echo["headers"]);
        return (status, text).into_response();
    }
    if let Some(n) = route.strip_prefix("/redirect/") {
        let n: u32 = n.parse().unwrap_or(0);
        if n > 0 {
            let next = format!("/base/redirect/{}", n - 1);
            return (StatusCode::FOUND, [(header::LOCATION, next)]).into_response();
        }
        return axum::Json(echo).into_response();
    }
    match route.as_str() {
        "/away" => {
            // The same server under another name: another origin.
            let host = echo["headers"]["host"].as_str().unwrap_or_default();
            let next = format!(
                "http://{}/base/echo",
                host.replace("127.0.0.1", "localhost")
            );
            (StatusCode::FOUND, [(header::LOCATION, next)]).into_response()
        }
        "/throttled" => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("2"))],
            "slow down",
        )
            .into_response(),
        "/unavailable" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("86400"))],
        )
            .into_response(),
        "/big" => (StatusCode::OK, vec![b'x'; 10 * 1024 * 1024 + 1]).into_response(),
        "/text" => (StatusCode::OK, "plain words").into_response(),
        "/empty" => StatusCode::NO_CONTENT.into_response(),
        "/data" => {
            axum::Json(json!({ "data": { "id": "A-1", "n": 3, "tags": ["x"] } })).into_response()
        }
        _ => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(echo.to_string()))
            .unwrap_or_default(),
    }
}

/// A raw HTTP/1.1 server that answers every request with `head`, then each chunk of `body`
/// after waiting `pause`.
async fn raw_upstream(head: &'static str, body: Vec<Vec<u8>>, pause: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in body {
                    tokio::time::sleep(pause).await;
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Loads metadata from YAML documents (`{port}` replaced), one file each.
fn load(docs: &[&str], port: u16) -> Metadata {
    load_with(docs, port, &Loader::new())
}

fn load_with(docs: &[&str], port: u16, loader: &Loader) -> Metadata {
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, doc) in docs.iter().enumerate() {
        let text = doc.replace("{port}", &port.to_string());
        std::fs::write(dir.path().join(format!("c{i}.yaml")), text).expect("write");
    }
    match loader.load(dir.path()).expect("readable") {
        Ok(metadata) => metadata,
        Err(problems) => panic!(
            "metadata has problems:\n{}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn wrappers(docs: &[&str], port: u16) -> Wrappers {
    build_all(
        &load(docs, port),
        &Loader::new(),
        &env,
        &TokenSources::default(),
        None,
    )
}

fn wrapper(w: &Wrappers, connection: &str) -> Arc<dyn Wrapper> {
    w.by_connection
        .get(connection)
        .cloned()
        .unwrap_or_else(|| panic!("no wrapper for {connection}"))
}

async fn call_with(
    wrapper: &dyn Wrapper,
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
            idempotency_key: "idem-42",
            deadline,
            pace: &switchboard_sdk::Unpaced,
        })
        .await
}

async fn call(wrapper: &dyn Wrapper, function: &str, input: Value) -> Outcome {
    call_with(
        wrapper,
        function,
        input,
        Instant::now() + Duration::from_secs(10),
    )
    .await
}

fn data(outcome: &Outcome) -> &Value {
    match &outcome.result {
        Ok(data) => data,
        Err(err) => panic!("call failed: {err}"),
    }
}

fn error(outcome: &Outcome) -> &switchboard_sdk::CallError {
    match &outcome.result {
        Ok(data) => panic!("call succeeded: {data}"),
        Err(err) => err,
    }
}

const ECHO: &str = r#"
connection: echo
type: rest
endpoint: http://127.0.0.1:{port}/base
allow_private_network: true
headers:
  X-Client: switchboard-test
limits:
  timeout: 10s
functions:
  get_item:
    method: GET
    path: "/items/{{ input.id }}/details"
    query:
      q: "{{ input.q }}"
      page: "2"
    headers:
      X-Trace: "t-{{ input.trace }}"
    input_schema:
      type: object
      properties:
        id: { type: string }
        q: { type: string }
        trace: { type: string }
  create_order:
    method: POST
    path: /orders
    body:
      amount: "{{ input.amount }}"
      count: "{{ input.count }}"
      customer: "{{ input.customer }}"
      note: "Order for {{ input.customer.name }}"
      tags: ["{{ input.tag }}", "fixed", 7]
      attempt: "{{ callout.attempt }}"
    input_schema:
      type: object
      properties:
        amount: { type: number }
        count: { type: integer }
        customer: { type: object }
        tag: { type: string }
  status:
    path: "/status/{{ input.code }}"
    input_schema:
      type: object
      properties:
        code: { type: integer }
  throttled:
    path: /throttled
  unavailable:
    path: /unavailable
  big:
    path: /big
  text:
    path: /text
  empty:
    path: /empty
  mapped:
    path: /data
    output:
      id: /data/id
      n: /data/n
      missing: /data/missing
    output_schema:
      type: object
      required: [id]
      properties:
        id: { type: string }
        n: { type: integer }
  mapped_badly:
    path: /data
    output:
      id: /data/n
    output_schema:
      type: object
      properties:
        id: { type: string }
  redirect:
    path: "/redirect/{{ input.n }}"
    input_schema:
      type: object
      properties:
        n: { type: integer }
"#;

#[tokio::test]
async fn path_and_query_values_arrive_encoded() {
    let up = upstream().await;
    let w = wrappers(&[ECHO], up.port);
    assert!(w.warnings.is_empty(), "{:?}", w.warnings);
    let echo = wrapper(&w, "echo");
    let outcome = call(
        echo.as_ref(),
        "get_item",
        json!({
            "id": "../admin?x=1#frag@evil.example:81 a\r\nb/é%",
            "q": "a&b=c #d é",
            "trace": "x1",
        }),
    )
    .await;
    let seen = data(&outcome);
    assert_eq!(
        seen["uri"],
        "/base/items/..%2Fadmin%3Fx%3D1%23frag%40evil.example%3A81%20a%0D%0Ab%2F%C3%A9%25/details?page=2&q=a%26b%3Dc+%23d+%C3%A9"
    );
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["headers"]["x-trace"], "t-x1");
    assert_eq!(seen["headers"]["x-client"], "switchboard-test");
    assert_eq!(
        seen["headers"]["user-agent"],
        concat!("switchboard/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(seen["headers"]["idempotency-key"], "idem-42");
    assert_eq!(outcome.http_status, Some(200));
    assert!(outcome.response_bytes > 0);
}

#[tokio::test]
async fn hostile_path_values_never_reach_the_upstream() {
    let up = upstream().await;
    let echo = wrapper(&wrappers(&[ECHO], up.port), "echo");
    for id in ["..", "."] {
        let outcome = call(
            echo.as_ref(),
            "get_item",
            json!({ "id": id, "q": "", "trace": "" }),
        )
        .await;
        let err = error(&outcome);
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{err}");
        assert!(!err.retryable());
    }
    let outcome = call(
        echo.as_ref(),
        "get_item",
        json!({ "id": "1", "q": "", "trace": "a\r\nX-Evil: 1" }),
    )
    .await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert_eq!(
        err.message,
        "cannot build the request of `echo.get_item`: header `X-Trace` would contain a line break; expected a single line"
    );
    let outcome = call(echo.as_ref(), "get_item", json!({ "q": "", "trace": "" })).await;
    assert_eq!(
        error(&outcome).message,
        "cannot build the request of `echo.get_item`: cannot render `functions.get_item.path`: undefined value"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn json_body_keeps_types_and_escapes_text() {
    let up = upstream().await;
    let echo = wrapper(&wrappers(&[ECHO], up.port), "echo");
    let customer = json!({ "name": "Ann \"The\" O'Neil\n<b>", "vip": true, "ids": [1, 2] });
    let outcome = call(
        echo.as_ref(),
        "create_order",
        json!({ "amount": 12.5, "count": 3, "customer": customer, "tag": "t\"1" }),
    )
    .await;
    let seen = data(&outcome);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["headers"]["content-type"], "application/json");
    assert_eq!(
        seen["body"],
        json!({
            "amount": 12.5,
            "count": 3,
            "customer": customer,
            "note": "Order for Ann \"The\" O'Neil\n<b>",
            "tags": ["t\"1", "fixed", 7],
            "attempt": 1,
        })
    );
}

#[tokio::test]
async fn credentials_reach_the_upstream_and_never_a_message() {
    let up = upstream().await;
    let docs = [
        r#"
connection: basic
type: rest
endpoint: http://127.0.0.1:{port}/base
allow_private_network: true
idempotency_header: X-Idem
auth: { type: basic, username: crm, password: "${env:UP_PASSWORD}" }
functions:
  echo: { path: /echo }
  fail: { path: /status/401 }
"#,
        r#"
connection: bearer
type: rest
endpoint: http://127.0.0.1:{port}/base
allow_private_network: true
auth: { type: bearer, token: "${env:UP_TOKEN}" }
functions:
  echo: { path: /echo }
  fail: { path: /status/403 }
  away: { path: /away }
"#,
        r#"
connection: key_header
type: rest
endpoint: http://127.0.0.1:{port}/base
allow_private_network: true
auth: { type: api_key, in: header, name: X-Api-Key, value: "${env:UP_KEY}" }
functions:
  echo: { path: /echo }
  fail: { path: /status/400 }
  away: { path: /away }
"#,
        r#"
connection: key_query
type: rest
endpoint: http://127.0.0.1:{port}/base
allow_private_network: true
auth: { type: api_key, in: query, name: api_key, value: "${env:UP_KEY}" }
functions:
  echo: { path: /echo, query: { a: "1" } }
"#,
    ];
    let w = wrappers(&docs, up.port);
    assert!(w.warnings.is_empty(), "{:?}", w.warnings);

    let basic = wrapper(&w, "basic");
    let outcome = call(basic.as_ref(), "echo", json!({})).await;
    // base64 of `crm:canary-password-91c2`.
    let expected = "Basic Y3JtOmNhbmFyeS1wYXNzd29yZC05MWMy".to_string();
    assert_eq!(
        data(&outcome)["headers"]["authorization"],
        expected.as_str()
    );
    assert_eq!(data(&outcome)["headers"]["x-idem"], "idem-42");
    assert!(data(&outcome)["headers"].get("idempotency-key").is_none());

    let bearer = wrapper(&w, "bearer");
    let outcome = call(bearer.as_ref(), "echo", json!({})).await;
    assert_eq!(
        data(&outcome)["headers"]["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );

    let key_header = wrapper(&w, "key_header");
    let outcome = call(key_header.as_ref(), "echo", json!({})).await;
    assert_eq!(data(&outcome)["headers"]["x-api-key"], API_KEY);
    assert!(data(&outcome)["headers"].get("authorization").is_none());

    let key_query = wrapper(&w, "key_query");
    let outcome = call(key_query.as_ref(), "echo", json!({})).await;
    assert_eq!(
        data(&outcome)["uri"],
        format!("/base/echo?a=1&api_key={API_KEY}").as_str()
    );

    // A redirect to another origin: reqwest drops `Authorization`, but would keep an api key
    // header, so that redirect is refused.
    let outcome = call(bearer.as_ref(), "away", json!({})).await;
    assert_eq!(data(&outcome)["uri"], "/base/echo");
    assert!(data(&outcome)["headers"].get("authorization").is_none());
    let outcome = call(key_header.as_ref(), "away", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Refused);
    assert!(
        err.message
            .starts_with("redirect refused: it leads to another origin (`localhost`)"),
        "{}",
        err.message
    );

    // The upstream quotes the credentials it got in its error body; the message does not.
    for (name, status, kind) in [
        ("basic", 401, ErrorKind::Rejected),
        ("bearer", 403, ErrorKind::Rejected),
        ("key_header", 400, ErrorKind::Rejected),
    ] {
        let outcome = call(wrapper(&w, name).as_ref(), "fail", json!({})).await;
        let err = error(&outcome);
        assert_eq!((err.kind, outcome.http_status), (kind, Some(status)));
        assert!(err.message.contains("***"), "{}", err.message);
        for canary in [TOKEN, PASSWORD, API_KEY, expected.as_str()] {
            assert!(!err.message.contains(canary), "{}", err.message);
        }
    }
    for name in ["basic", "bearer", "key_header", "key_query"] {
        let debug = format!(
            "{:?}",
            super::RestWrapper::build(
                load(&docs, up.port)
                    .connections
                    .get(name)
                    .expect("connection"),
                &|r| r.resolve(&env, std::path::Path::new(".")),
                None,
            )
            .expect("builds")
        );
        for canary in [TOKEN, PASSWORD, API_KEY] {
            assert!(!debug.contains(canary), "{debug}");
        }
    }
}

#[tokio::test]
async fn error_statuses_are_classified_with_retry_after() {
    let up = upstream().await;
    let echo = wrapper(&wrappers(&[ECHO], up.port), "echo");

    let outcome = call(echo.as_ref(), "throttled", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Throttled);
    assert!(err.retryable());
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(
        err.message,
        "`echo` answered with status 429 Too Many Requests: slow down"
    );
    assert_eq!(outcome.http_status, Some(429));

    let outcome = call(echo.as_ref(), "unavailable", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.retryable());
    assert_eq!(
        err.retry_after,
        Some(Duration::from_secs(600)),
        "capped at 10 minutes"
    );
    assert_eq!(
        err.message,
        "`echo` answered with status 503 Service Unavailable"
    );

    let outcome = call(echo.as_ref(), "status", json!({ "code": 400 })).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Rejected);
    assert!(!err.retryable());
    assert_eq!(err.retry_after, None);
    assert!(
        err.message
            .starts_with("`echo` answered with status 400 Bad Request: upstream says no to {"),
        "{}",
        err.message
    );
    let excerpt = err
        .message
        .split_once(": ")
        .map(|(_, e)| e)
        .unwrap_or_default();
    assert!(excerpt.chars().count() <= 201, "{excerpt}");

    let outcome = call(echo.as_ref(), "status", json!({ "code": 500 })).await;
    assert_eq!(error(&outcome).kind, ErrorKind::Unavailable);
    let outcome = call(echo.as_ref(), "status", json!({ "code": 408 })).await;
    assert_eq!(error(&outcome).kind, ErrorKind::Unavailable);
    let outcome = call(echo.as_ref(), "status", json!({ "code": 404 })).await;
    assert_eq!(error(&outcome).kind, ErrorKind::Rejected);
}

#[tokio::test]
async fn bodies_over_ten_mib_are_refused() {
    let up = upstream().await;
    let echo = wrapper(&wrappers(&[ECHO], up.port), "echo");
    let outcome = call(echo.as_ref(), "big", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::ResponseTooLarge);
    assert!(!err.retryable());
    assert_eq!(err.message, "response body exceeds 10 MiB");
    assert_eq!(outcome.http_status, Some(200));

    // No Content-Length: the limit holds while reading.
    let chunk = |n: usize| {
        let mut c = format!("{n:x}\r\n").into_bytes();
        c.extend(std::iter::repeat_n(b'y', n));
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut chunks: Vec<Vec<u8>> = (0..11).map(|_| chunk(1024 * 1024)).collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    let port = raw_upstream(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunks,
        Duration::ZERO,
    )
    .await;
    let raw = wrapper(&wrappers(&[ECHO], port), "echo");
    let outcome = call(raw.as_ref(), "big", json!({})).await;
    assert_eq!(error(&outcome).message, "response body exceeds 10 MiB");
    assert!(outcome.response_bytes > 10 * 1024 * 1024);
    assert!(outcome.response_bytes <= 11 * 1024 * 1024);
}

#[tokio::test]
async fn unreadable_answers_fail_and_binary_ones_pass_as_base64() {
    // (head, body, message): a coding Switchboard does not decode (the body is not read at
    // all), and a JSON content type with a body that is not JSON.
    let cases: [(&'static str, &[u8], &str); 2] = [
        (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n",
            b"\x1f\x8b\x08\x00",
            "`echo` answered with `Content-Encoding: gzip`, which Switchboard does not decode (it asks for no encoding); the body was not read",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 9\r\n\r\n",
            b"{\"id\": 1,",
            "`echo` answered with content type `application/json` but a body that is not JSON (9 bytes; EOF while parsing a value at line 1 column 9): {\"id\": 1,",
        ),
    ];
    for (head, body, expected) in cases {
        let port = raw_upstream(head, vec![body.to_vec()], Duration::ZERO).await;
        let echo = wrapper(&wrappers(&[ECHO], port), "echo");
        let outcome = call(echo.as_ref(), "text", json!({})).await;
        let err = error(&outcome);
        assert_eq!(err.kind, ErrorKind::InvalidResponse, "{}", err.message);
        assert!(!err.retryable());
        assert_eq!(err.message, expected);
        assert_eq!(outcome.http_status, Some(200));
    }
    // Plain text stays a string; `identity` is no coding.
    let port = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: identity\r\nContent-Length: 5\r\n\r\n",
        vec![b"hello".to_vec()],
        Duration::ZERO,
    )
    .await;
    let echo = wrapper(&wrappers(&[ECHO], port), "echo");
    let outcome = call(echo.as_ref(), "text", json!({})).await;
    assert_eq!(data(&outcome), &json!("hello"));
    // Binary bytes are passed on as base64, never mangled into text.
    let port = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\n",
        vec![b"\xff\xfe\x00\x80".to_vec()],
        Duration::ZERO,
    )
    .await;
    let echo = wrapper(&wrappers(&[ECHO], port), "echo");
    let outcome = call(echo.as_ref(), "text", json!({})).await;
    assert_eq!(data(&outcome), &json!({ "base64": "//4AgA==" }));
    // A coding on an answer without a body is no reason to fail: there is nothing to decode.
    for head in [
        "HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n",
    ] {
        let port = raw_upstream(head, vec![], Duration::ZERO).await;
        let echo = wrapper(&wrappers(&[ECHO], port), "echo");
        let outcome = call(echo.as_ref(), "text", json!({})).await;
        assert!(outcome.result.is_ok(), "{head}: {:?}", outcome.result);
    }
}

#[tokio::test]
async fn a_dripping_body_times_out_at_the_deadline() {
    let drip: Vec<Vec<u8>> = (0..100).map(|_| b" ".to_vec()).collect();
    let port = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        drip,
        Duration::from_millis(50),
    )
    .await;
    let echo = wrapper(&wrappers(&[ECHO], port), "echo");
    let start = Instant::now();
    let outcome = call_with(
        echo.as_ref(),
        "text",
        json!({}),
        start + Duration::from_millis(400),
    )
    .await;
    let took = start.elapsed();
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.retryable());
    assert!(
        err.message.starts_with(
            "`echo` gave no complete answer before the attempt's deadline (status 200 received, "
        ),
        "{}",
        err.message
    );
    assert_eq!(outcome.http_status, Some(200));
    assert!(outcome.response_bytes > 0 && outcome.response_bytes < 100);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[tokio::test]
async fn output_is_mapped_then_checked() {
    let up = upstream().await;
    let echo = wrapper(&wrappers(&[ECHO], up.port), "echo");
    let outcome = call(echo.as_ref(), "mapped", json!({})).await;
    assert_eq!(
        data(&outcome),
        &json!({ "id": "A-1", "n": 3, "missing": null })
    );
    assert_eq!(
        outcome.response_bytes,
        json!({ "data": { "id": "A-1", "n": 3, "tags": ["x"] } })
            .to_string()
            .len() as u64
    );

    let outcome = call(echo.as_ref(), "mapped_badly", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::InvalidResponse);
    assert!(!err.retryable());
    assert!(
        err.message.starts_with(
            "the answer of `echo.mapped_badly` does not match its output_schema at `/id`: "
        ),
        "{}",
        err.message
    );

    let outcome = call(echo.as_ref(), "text", json!({})).await;
    assert_eq!(data(&outcome), &json!("plain words"));
    let outcome = call(echo.as_ref(), "empty", json!({})).await;
    assert_eq!(data(&outcome), &Value::Null);
    assert_eq!(outcome.http_status, Some(204));
}

#[tokio::test]
async fn redirects_are_followed_five_times_at_most() {
    let up = upstream().await;
    let echo = wrapper(&wrappers(&[ECHO], up.port), "echo");
    let outcome = call(echo.as_ref(), "redirect", json!({ "n": 5 })).await;
    assert_eq!(data(&outcome)["uri"], "/base/redirect/0");
    let outcome = call(echo.as_ref(), "redirect", json!({ "n": 6 })).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::InvalidResponse);
    assert!(
        err.message.ends_with("more than 5 redirects"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let up = upstream().await;
    let docs = [
        r#"
connection: literal
type: rest
endpoint: http://127.0.0.1:{port}/base
functions:
  echo: { path: /echo }
"#,
        r#"
connection: named
type: rest
endpoint: http://localhost:{port}/base
functions:
  echo: { path: /echo }
"#,
        r#"
connection: named_allowed
type: rest
endpoint: http://localhost:{port}/base
allow_private_network: true
functions:
  echo: { path: /echo }
"#,
    ];
    let w = wrappers(&docs, up.port);
    let outcome = call(wrapper(&w, "literal").as_ref(), "echo", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Refused);
    assert!(!err.retryable());
    assert_eq!(
        err.message,
        "host `127.0.0.1` is a private or reserved address; private addresses are refused unless the connection sets `allow_private_network: true`"
    );

    let outcome = call(wrapper(&w, "named").as_ref(), "echo", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Refused, "{err}");
    assert!(
        err.message
            .starts_with("host `localhost` resolves only to private or reserved addresses ("),
        "{}",
        err.message
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);

    let outcome = call(wrapper(&w, "named_allowed").as_ref(), "echo", json!({})).await;
    assert_eq!(data(&outcome)["uri"], "/base/echo");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let echo = wrapper(&wrappers(&[ECHO], port), "echo");
    let outcome = call(echo.as_ref(), "text", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Connect, "{err}");
    assert!(err.retryable());
    assert!(
        err.message
            .starts_with("cannot connect to `echo` (127.0.0.1): "),
        "{}",
        err.message
    );
    assert_eq!(outcome.http_status, None);
}

#[tokio::test]
async fn unknown_functions_and_unbuildable_connections_fail_with_config() {
    let up = upstream().await;
    let docs = [
        ECHO,
        r#"
connection: unresolved
type: rest
endpoint: http://127.0.0.1:{port}/base
allow_private_network: true
auth: { type: basic, username: "${env:UP_PASSWORD}", password: "${env:UP_MISSING}" }
functions:
  echo: { path: /echo }
"#,
        r#"
connection: ledger
type: soap
endpoint: https://erp.example.com/soap
ws_security: { username: crm, password: "${env:UP_WS_MISSING}" }
functions:
  post: { body: "<Post/>" }
"#,
        r#"
connection: files
type: s3
bucket: crm-files
auth: { type: aws, access_key_id: "${env:UP_S3_MISSING}", secret_access_key: "${env:UP_PASSWORD}" }
functions:
  list: { operation: list }
"#,
    ];
    let w = wrappers(&docs, up.port);
    let mut warnings = w.warnings.clone();
    warnings.sort();
    assert_eq!(
        warnings,
        vec![
            "connection `files`: secret reference `${env:UP_S3_MISSING}` cannot be resolved: environment variable UP_S3_MISSING is not set",
            "connection `ledger`: secret reference `${env:UP_WS_MISSING}` cannot be resolved: environment variable UP_WS_MISSING is not set",
            "connection `unresolved`: secret reference `${env:UP_MISSING}` cannot be resolved: environment variable UP_MISSING is not set",
        ]
    );
    for warning in &w.warnings {
        for canary in [TOKEN, PASSWORD, API_KEY] {
            assert!(!warning.contains(canary), "{warning}");
        }
    }
    for (name, warning) in [
        ("unresolved", &warnings[2]),
        ("ledger", &warnings[1]),
        ("files", &warnings[0]),
    ] {
        let outcome = call(wrapper(&w, name).as_ref(), "echo", json!({})).await;
        let err = error(&outcome);
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(!err.retryable());
        assert_eq!(&err.message, warning);
        assert_eq!((outcome.http_status, outcome.response_bytes), (None, 0));
    }

    let outcome = call(wrapper(&w, "echo").as_ref(), "nope", json!({})).await;
    let err = error(&outcome);
    assert_eq!(err.kind, ErrorKind::Config);
    assert_eq!(err.message, "connection `echo` has no function `nope`");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

/// A plugin type that runs callouts by answering what it was built with.
struct Ledger;

struct LedgerWrapper {
    cx: BuildContext,
}

#[async_trait::async_trait]
impl Wrapper for LedgerWrapper {
    async fn call(&self, call: Call<'_>) -> Outcome {
        let requests: serde_json::Map<String, Value> = self.cx.functions.iter().cloned().collect();
        Outcome::success(
            json!({
                "connection": self.cx.connection,
                "endpoint": self.cx.endpoint,
                "settings": self.cx.settings,
                "request": requests.get(call.function),
            }),
            None,
            0,
        )
    }
}

impl ConnectorType for Ledger {
    fn type_name(&self) -> &'static str {
        "ledger"
    }

    fn validate_settings(&self, _settings: &Value) -> Vec<Issue> {
        Vec::new()
    }

    fn validate_request(&self, _request: &Value) -> Vec<Issue> {
        Vec::new()
    }

    fn build(&self, cx: BuildContext) -> Result<Arc<dyn Wrapper>, String> {
        Ok(Arc::new(LedgerWrapper { cx }))
    }
}

/// A plugin type that only checks metadata.
struct CheckOnly;

impl ConnectorType for CheckOnly {
    fn type_name(&self) -> &'static str {
        "check_only"
    }

    fn validate_settings(&self, _settings: &Value) -> Vec<Issue> {
        Vec::new()
    }

    fn validate_request(&self, _request: &Value) -> Vec<Issue> {
        Vec::new()
    }
}

#[tokio::test]
async fn plugins_are_built_through_the_loader() {
    let mut loader = Loader::new();
    loader.register(Box::new(Ledger)).expect("registers");
    loader.register(Box::new(CheckOnly)).expect("registers");
    let docs = [
        r#"
connection: books
type: ledger
endpoint: https://ledger.example.com/api
settings: { book: main }
functions:
  post: { request: { account: 4711 } }
"#,
        r#"
connection: checked
type: check_only
functions:
  post: { request: {} }
"#,
    ];
    let metadata = load_with(&docs, 0, &loader);
    let w = build_all(&metadata, &loader, &env, &TokenSources::default(), None);
    assert_eq!(
        w.warnings,
        vec!["connection `checked`: type `check_only` cannot run callouts"]
    );
    let outcome = call(wrapper(&w, "books").as_ref(), "post", json!({})).await;
    assert_eq!(
        data(&outcome),
        &json!({
            "connection": "books",
            "endpoint": "https://ledger.example.com/api",
            "settings": { "book": "main" },
            "request": { "account": 4711 },
        })
    );
    let outcome = call(wrapper(&w, "checked").as_ref(), "post", json!({})).await;
    assert_eq!(error(&outcome).kind, ErrorKind::Config);
}
