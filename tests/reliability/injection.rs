//! Reliability and security suite, item 5: hostile input values in a REST function's path,
//! query, headers and JSON body reach the upstream only as data — percent-encoded, refused or
//! JSON-escaped — and never change where the request goes. The upstream here is a raw TCP
//! recorder that keeps the request line and header lines byte for byte (an HTTP server library
//! would normalise them). See tests/reliability/harness for the helpers.

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use harness::figure;
use support::engine::TestServer;

const ITEM: &str = "5 injection";

/// One request as it arrived, byte for byte.
#[derive(Debug, Clone)]
struct RawRequest {
    /// Like `GET /api/items/x HTTP/1.1`.
    line: String,
    /// Every header line, name and value as sent (the value without the space after `:`).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl RawRequest {
    /// The request target (path and query) of the request line.
    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    /// The values of every header named `name` (any case).
    fn header(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn key(&self) -> String {
        self.header("idempotency-key")
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// A raw HTTP/1.1 server on `127.0.0.1:0` that records each request and answers `200 {}`,
/// closing every connection after one answer.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    /// Connections accepted, whether or not a request could be read from them.
    accepted: Arc<Mutex<usize>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("an address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let (log, count) = (seen.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                *count.lock().expect("the count") += 1;
                let log = log.clone();
                connections.spawn(async move {
                    if let Some(request) = read_request(stream).await {
                        log.lock().expect("the log").push(request);
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Recorder {
            port,
            seen,
            accepted,
            _task: task,
        }
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.seen.lock().expect("the log").clone()
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().expect("the count")
    }
}

/// Reads one request (head up to 64 KiB, a `content-length` body up to 1 MiB) within 10 s,
/// answers `200 {}` and closes.
async fn read_request(mut stream: TcpStream) -> Option<RawRequest> {
    let read = async {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 8192];
        let head_end = loop {
            if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if bytes.len() > 64 * 1024 {
                return None;
            }
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                return None;
            }
            bytes.extend_from_slice(&buffer[..n]);
        };
        let head = bytes[..head_end].to_vec();
        let mut body = bytes[head_end + 4..].to_vec();
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let line = String::from_utf8_lossy(lines.next()?).into_owned();
        let headers: Vec<(String, Vec<u8>)> = lines
            .map(|l| {
                let colon = l.iter().position(|b| *b == b':').unwrap_or(l.len());
                let value = l.get(colon + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (
                    String::from_utf8_lossy(&l[..colon]).into_owned(),
                    value.to_vec(),
                )
            })
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(1024 * 1024);
        while body.len() < length {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buffer[..n]);
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        Some(RawRequest {
            line,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// The places a value goes, one function each.
const PLACES: [&str; 4] = ["path", "query", "header", "body"];

/// A connection whose four functions print `input.v` into the path, the query, a header and
/// the JSON body.
fn metadata(port: u16) -> String {
    format!(
        r#"connection: shop
type: rest
endpoint: http://127.0.0.1:{port}/api
allow_private_network: true
retry: {{ max_attempts: 1 }}
functions:
  path:
    method: GET
    path: "/items/{{{{ input.v }}}}/detail"
    input_schema: {{ type: object, required: [v], properties: {{ v: {{ type: string }} }} }}
  query:
    method: GET
    path: /search
    query:
      q: "{{{{ input.v }}}}"
      page: "1"
    input_schema: {{ type: object, required: [v], properties: {{ v: {{ type: string }} }} }}
  header:
    method: GET
    path: /head
    headers:
      X-Value: "v={{{{ input.v }}}}"
    input_schema: {{ type: object, required: [v], properties: {{ v: {{ type: string }} }} }}
  body:
    method: POST
    path: /body
    body:
      value: "{{{{ input.v }}}}"
      text: "prefix {{{{ input.v }}}} suffix"
    input_schema: {{ type: object, required: [v], properties: {{ v: {{ type: string }} }} }}
"#
    )
}

/// The hostile values; `evil` is the address of a second server that must never be reached.
fn hostile(evil: &str) -> Vec<String> {
    [
        "a\r\nX-Injected: 1",
        "a\nX-Injected: 1",
        "a\rX-Injected: 1",
        "../../admin",
        "..%2f..%2fadmin",
        "..",
        "a?admin=1&x=2",
        "a#fragment",
        "user@EVIL",
        "a%00b",
        "a\0b",
        "EVIL",
        "//EVIL/x",
        "http://EVIL/x",
        "\\\\EVIL\\x",
        "é Zoë",
        "😀",
        "\u{202e}txt.exe\u{202c}",
        "a\"b\\c}{",
    ]
    .iter()
    .map(|v| v.replace("EVIL", evil))
    .collect()
}

/// Percent-decodes `text` into bytes.
fn decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

/// What became of one value in one place.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Arrived, encoded or escaped, and decodes to the value exactly.
    Encoded,
    /// Not sent: the callout failed with `invalid_request` and this message.
    Refused(String),
}

/// Checks what the upstream got for `value` in `place` and says which fate it had; panics on
/// anything else (a split header, an extra segment, a changed query, a wrong host).
fn judge(
    place: &str,
    value: &str,
    request: Option<&RawRequest>,
    callout: &Value,
    port: u16,
) -> Fate {
    let what = format!("{place} {value:?}");
    let Some(request) = request else {
        assert_eq!(
            callout["status"], "failed",
            "{what}: not sent, yet {callout:#}"
        );
        let error = &callout["result"]["error"];
        assert_eq!(error["kind"], "invalid_request", "{what}: {callout:#}");
        return Fate::Refused(error["message"].as_str().unwrap_or_default().to_string());
    };
    assert_eq!(callout["status"], "succeeded", "{what}: {callout:#}");
    // Always the expected server, host and path prefix.
    assert_eq!(
        request.header("host"),
        [format!("127.0.0.1:{port}").as_bytes()],
        "{what}"
    );
    assert!(
        request.target().starts_with("/api/"),
        "{what}: {}",
        request.line
    );
    assert!(
        request.header("x-injected").is_empty(),
        "{what}: a header was injected"
    );
    assert!(
        request.line.ends_with(" HTTP/1.1") && request.line.is_ascii(),
        "{what}: {:?}",
        request.line
    );
    let target = request.target();
    match place {
        "path" => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            assert_eq!(query, "", "{what}: a query was added: {target}");
            assert!(!target.contains('#'), "{what}: {target}");
            let segment = path
                .strip_prefix("/api/items/")
                .and_then(|p| p.strip_suffix("/detail"))
                .unwrap_or_else(|| panic!("{what}: the path changed: {target}"));
            assert!(
                !segment.contains('/'),
                "{what}: segments were added: {target}"
            );
            assert_eq!(decode(segment), value.as_bytes(), "{what}: {target}");
        }
        "query" => {
            let query = target
                .strip_prefix("/api/search?")
                .unwrap_or_else(|| panic!("{what}: the path changed: {target}"));
            let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            pairs.sort();
            assert_eq!(
                pairs,
                [
                    ("page".to_string(), "1".to_string()),
                    ("q".into(), value.to_string())
                ],
                "{what}: {target}"
            );
        }
        "header" => {
            assert_eq!(target, "/api/head", "{what}");
            assert_eq!(
                request.header("x-value"),
                [format!("v={value}").as_bytes()],
                "{what}"
            );
        }
        "body" => {
            assert_eq!(target, "/api/body", "{what}");
            let body: Value = serde_json::from_slice(&request.body)
                .unwrap_or_else(|e| panic!("{what}: the body is not JSON: {e}"));
            assert_eq!(
                body,
                json!({ "value": value, "text": format!("prefix {value} suffix") }),
                "{what}"
            );
        }
        _ => unreachable!("no place {place}"),
    }
    Fate::Encoded
}

/// Hostile input values — CR/LF (and bare CR, bare LF), `../` and `..%2f`, `..`, `?`, `#`,
/// `user@host`, `%00` and a NUL byte, `host:port`, `//host`, `http://host`, `\\host`,
/// non-ASCII (accents, an emoji, right-to-left override), quotes and braces — printed by a
/// function into its path (one segment), query, a header and its JSON body, against a raw
/// recorder. Each value is percent-encoded as one path segment (never a new segment, query or
/// fragment; a bare `..` is refused), encoded as exactly one query value, sent as one header
/// value or refused (CR, LF and NUL: `invalid_request`, nothing sent, never a split header),
/// and JSON-escaped in the body; every request arrives at the expected server with the
/// expected `Host` and path prefix, and a second server named in the values gets 0
/// connections. Figure: values × places, encoded, refused, misdirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_are_encoded_or_refused_and_never_redirect() {
    let upstream = Recorder::start().await;
    let evil = Recorder::start().await;
    let evil_host = format!("127.0.0.1:{}", evil.port);
    let values = hostile(&evil_host);
    let sb = TestServer::start(&[("shop.yaml", metadata(upstream.port))]).await;

    let mut items = Vec::new();
    for place in PLACES {
        for (i, value) in values.iter().enumerate() {
            items.push(json!({
                "function": format!("shop.{place}"),
                "input": { "v": value },
                "idempotency_key": format!("{place}-{i}"),
            }));
        }
    }
    let ids = sb.api.enqueue_batch(items).await;
    let mut callouts = Vec::with_capacity(ids.len());
    for id in &ids {
        callouts.push(
            sb.api
                .wait_for_status(id, &["succeeded", "failed"], Duration::from_secs(30))
                .await,
        );
    }

    let requests = upstream.requests();
    assert_eq!(evil.accepted(), 0, "the evil server was reached");
    let (mut encoded, mut refused) = (0, 0);
    let mut refusals = Vec::new();
    let mut callout = callouts.iter();
    for place in PLACES {
        for (i, value) in values.iter().enumerate() {
            let key = format!("{place}-{i}");
            let arrived: Vec<&RawRequest> = requests.iter().filter(|r| r.key() == key).collect();
            assert!(arrived.len() <= 1, "{key} arrived {} times", arrived.len());
            let this = callout.next().expect("a callout per value");
            match judge(place, value, arrived.first().copied(), this, upstream.port) {
                Fate::Encoded => encoded += 1,
                Fate::Refused(message) => {
                    refused += 1;
                    refusals.push((place, value.clone(), message));
                }
            }
        }
    }
    // Exactly these were refused, each with a message that says why.
    let refused_values: Vec<(&str, &str)> =
        refusals.iter().map(|(p, v, _)| (*p, v.as_str())).collect();
    assert_eq!(
        refused_values,
        [
            ("path", ".."),
            ("header", "a\r\nX-Injected: 1"),
            ("header", "a\nX-Injected: 1"),
            ("header", "a\rX-Injected: 1"),
            ("header", "a\0b"),
        ],
        "{refusals:#?}"
    );
    for (place, value, message) in &refusals {
        let why = match (*place, value.as_str()) {
            ("path", _) => {
                "the path has a `%2E%2E` segment, which would move to another path; a value of `.` or `..` cannot be sent in the path"
            }
            ("header", "a\0b") => "header `X-Value` has a value that cannot be sent",
            _ => "header `X-Value` would contain a line break; expected a single line",
        };
        let expected = format!("cannot build the request of `shop.{place}`: {why}");
        assert_eq!(message, &expected, "{place} {value:?}");
    }
    assert_eq!(requests.len(), encoded, "a request arrived for no callout");
    let total = values.len() * PLACES.len();
    figure(
        ITEM,
        "hostile input in path, query, headers and body is encoded, escaped or refused and never changes the target",
        &format!(
            "{} hostile values × 4 places = {total} callouts: {encoded} encoded or escaped as data, {refused} refused (path `..`; header CR, LF, CRLF, NUL), 0 reached another host or path (evil server: 0 connections)",
            values.len()
        ),
    );
    sb.stop().await;
}
