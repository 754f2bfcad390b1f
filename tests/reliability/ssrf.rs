//! Item 4, SSRF: metadata cannot turn the engine against the network it runs in.
//!
//! Every callout here is enqueued over the engine's API and dispatched by the engine as in
//! production, to a connection whose endpoint (or a redirect, or a DNS answer) is hostile.
//! Unless the connection sets `allow_private_network: true`, each must fail with the error
//! kind `refused` and a message naming the host and the setting, and nothing may reach the
//! server listening behind the hostile address; with the setting, the same endpoint is reached
//! (the positive control, which proves the server was there to be reached).
//!
//! The tests that need addresses other than loopback (a "public" 11.1.1.1, live servers on
//! 10.0.0.1 or 169.254.169.254, a DNS server on port 53) run in a network and mount namespace
//! of their own ([`harness::private_network`]), whose one interface is `lo`: nothing leaves the
//! machine. 11.0.0.0/8 is neither private nor reserved, so the policy treats it as public.
//!
//! `s3` connections go through the AWS SDK's HTTP client, built with the same resolver: a
//! name that resolves to a private address is refused there too, and the SDK follows no
//! redirect ([`s3_endpoints_named_by_host_go_through_the_same_resolver`]).

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::support::engine::TestServer;

/// How long a callout may take to reach its final status.
const DEADLINE: Duration = Duration::from_secs(20);

/// The address that stands for a public server: on `lo`, inside the test's namespace only.
const PUBLIC: &str = "11.1.1.1";

/// The suite's item for [`harness::figure`].
const ITEM: &str = "4 SSRF";

/// The policy's sentence after what it refused.
const UNLESS: &str =
    "private addresses are refused unless the connection sets `allow_private_network: true`";

/// A runtime built inside the namespace, so that its threads are there too.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// An HTTP server on one address that records the `Host` header and path of every request and
/// answers each with `reply(path)`; stopped when dropped.
struct Listener {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

type ReplyFn = Arc<dyn Fn(&str) -> Response + Send + Sync>;

impl Listener {
    async fn start(
        addr: SocketAddr,
        reply: impl Fn(&str) -> Response + Send + Sync + 'static,
    ) -> Listener {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("bind {addr}: {err}"));
        let addr = listener.local_addr().expect("local address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply: ReplyFn = Arc::new(reply);
        let app = Router::new()
            .fallback(record)
            .with_state((seen.clone(), reply));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Listener { addr, seen, task }
    }

    /// A server that answers every request `200 {"ok": true}`: what a hostile address hides.
    async fn sentinel(addr: SocketAddr) -> Listener {
        Listener::start(addr, |_| ok(json!({ "ok": true }))).await
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `host path` of every request so far.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen lock").clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("seen lock").len()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State((seen, reply)): State<(Arc<Mutex<Vec<String>>>, ReplyFn)>,
    request: Request,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let path = request.uri().path().to_string();
    seen.lock()
        .expect("seen lock")
        .push(format!("{host} {path}"));
    reply(&path)
}

/// `200` with `body`, closing the connection: the next request opens (and resolves) anew.
fn ok(body: Value) -> Response {
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A `302` to `location`.
fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(location).expect("a valid location"),
    );
    response
}

/// A REST connection `name` on `endpoint` with one function, `ping` (`GET /ping`); one attempt.
fn rest(name: &str, endpoint: &str, allow_private: bool) -> String {
    format!(
        r#"connection: {name}
type: rest
endpoint: {endpoint}
allow_private_network: {allow_private}
limits: {{ timeout: 5s, connect_timeout: 2s }}
retry: {{ max_attempts: 1 }}
functions:
  ping: {{ path: /ping }}
"#
    )
}

/// A SOAP connection `name` on `endpoint` with one function, `ping`; one attempt.
fn soap(name: &str, endpoint: &str, allow_private: bool) -> String {
    format!(
        r#"connection: {name}
type: soap
endpoint: {endpoint}
allow_private_network: {allow_private}
limits: {{ timeout: 5s, connect_timeout: 2s }}
retry: {{ max_attempts: 1 }}
functions:
  ping: {{ body: "<Ping/>" }}
"#
    )
}

/// An `s3` connection `name` on `endpoint`, bucket `sb-bucket`, with static keys (files in the
/// metadata folder) and two functions: `fetch` (`GetObject` of `ok`) and `bounce` (of
/// `redirect`); one attempt.
fn s3(name: &str, endpoint: &str, path_style: bool, allow_private: bool) -> String {
    format!(
        r#"connection: {name}
type: s3
endpoint: {endpoint}
region: us-east-1
bucket: sb-bucket
path_style: {path_style}
allow_private_network: {allow_private}
checksums: when_required
auth: {{ type: aws, access_key_id: "${{file:s3.key}}", secret_access_key: "${{file:s3.secret}}" }}
limits: {{ timeout: 5s, connect_timeout: 2s }}
retry: {{ max_attempts: 1 }}
functions:
  fetch: {{ operation: get, key: ok }}
  bounce: {{ operation: get, key: redirect }}
"#
    )
}

/// Runs `function` once through the engine and returns the callout once it is final.
async fn run(sb: &TestServer, function: &str) -> Value {
    let id = sb.api.enqueue(function, json!({})).await;
    sb.api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await
}

/// Asserts the callout failed at its one attempt with `refused` (not retried) and `message`.
fn assert_refused(callout: &Value, what: &str, message: &str) {
    let error = &callout["result"]["error"];
    assert_eq!(callout["status"], "failed", "{what}: {callout:#}");
    assert_eq!(error["kind"], "refused", "{what}: {callout:#}");
    assert_eq!(error["retryable"], false, "{what}: {callout:#}");
    assert_eq!(error["message"], message, "{what}");
    assert_eq!(callout["attempts"], 1, "{what}: {callout:#}");
}

/// Asserts the callout failed with `refused` because `localhost` resolves to loopback only
/// (the addresses listed depend on /etc/hosts: 127.0.0.1, maybe ::1).
fn assert_localhost_refused(callout: &Value, what: &str) {
    let text = callout["result"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    let listed = text
        .strip_prefix("host `localhost` resolves only to private or reserved addresses (")
        .and_then(|rest| rest.strip_suffix(&format!("); {UNLESS}")));
    let loopback = listed.is_some_and(|list| {
        list.split(", ")
            .all(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    });
    assert!(loopback, "{what}: {callout:#}");
    assert_refused(callout, what, text);
}

/// The refusal of a host name whose every address is forbidden (`listed`, comma-separated).
fn name_refusal(host: &str, listed: &str) -> String {
    format!("host `{host}` resolves only to private or reserved addresses ({listed}); {UNLESS}")
}

/// The refusal of an IP-literal host, as the URL normalised it (`[::1]`, `127.0.0.1`).
fn literal_refusal(host: &str) -> String {
    format!("host `{host}` is a private or reserved address; {UNLESS}")
}

/// Hostile endpoints, each as written in the metadata, the host the URL turns it into, and
/// whether a server can be reached there inside the namespace (for the positive control).
const HOSTILE: &[(&str, &str, bool)] = &[
    // RFC 1918 private networks, CGNAT, cloud metadata (IPv4 and AWS's IPv6).
    ("10.0.0.1", "10.0.0.1", true),
    ("172.16.0.1", "172.16.0.1", true),
    ("192.168.0.1", "192.168.0.1", true),
    ("100.64.0.1", "100.64.0.1", true),
    ("169.254.169.254", "169.254.169.254", true),
    ("[fd00:ec2::254]", "[fd00:ec2::254]", true),
    // Loopback, in every spelling the URL parser accepts.
    ("127.0.0.1", "127.0.0.1", true),
    ("127.1.2.3", "127.1.2.3", true),
    ("127.1", "127.0.0.1", true),
    ("[::1]", "[::1]", true),
    ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]", true),
    ("[::ffff:7f00:1]", "[::ffff:7f00:1]", true),
    ("0.0.0.0", "0.0.0.0", true),
    ("2130706433", "127.0.0.1", true),
    ("0177.0.0.1", "127.0.0.1", true),
    ("017700000001", "127.0.0.1", true),
    ("0x7f000001", "127.0.0.1", true),
    ("0x7f.0.0.1", "127.0.0.1", true),
    ("0x7f.1", "127.0.0.1", true),
    ("127.0.0.1.", "127.0.0.1", true),
    ("%31%32%37.0.0.1", "127.0.0.1", true),
    ("\u{2460}\u{2461}\u{2466}.0.0.1", "127.0.0.1", true), // circled digits, NFKC to 127
    ("0", "0.0.0.0", true),
    ("[::]", "[::]", true),
    // Link-local IPv6: no URL can name its interface, so no server can be reached there.
    ("[fe80::1]", "[fe80::1]", false),
];

/// Private addresses, written any way a URL can, and a name that resolves to loopback: each is
/// refused before a byte is sent, while a server listens behind every reachable one.
///
/// Attack: a connection's endpoint names a private, loopback, link-local or metadata address
/// (decimal, octal, hex, short and IPv4-mapped spellings included), or `localhost`.
/// Expected: every callout fails once with `refused` and a message naming the host and
/// `allow_private_network`; the server listening on all of the namespace's addresses (IPv4
/// and IPv6, one port) counts 0 requests; with `allow_private_network: true` every reachable
/// one succeeds and the server counts one request each.
/// Figure: hostile endpoints refused, requests that reached the server, positive controls.
#[test]
fn private_addresses_in_every_spelling_are_refused_end_to_end() {
    let test = "private_addresses_in_every_spelling_are_refused_end_to_end";
    let private = [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "fd00:ec2::254",
    ];
    if !harness::private_network(test, &private) {
        return;
    }
    runtime().block_on(every_spelling());
}

/// The body of [`private_addresses_in_every_spelling_are_refused_end_to_end`], in its namespace.
async fn every_spelling() {
    // `[::]` takes IPv4 too: one server behind every address of the namespace.
    let sentinel = Listener::sentinel(([0u16; 8], 0).into()).await;
    let port = sentinel.port();
    let mut cases: Vec<(String, Option<String>, bool)> = HOSTILE
        .iter()
        .map(|(host, normal, reachable)| {
            (
                format!("http://{host}:{port}/base"),
                Some(literal_refusal(normal)),
                *reachable,
            )
        })
        .collect();
    // A name: the resolver finds 127.0.0.1 in /etc/hosts and refuses it.
    let by_name = format!("http://localhost:{port}/base");
    cases.push((by_name, None, true));

    let mut files = Vec::new();
    for (i, (endpoint, _, reachable)) in cases.iter().enumerate() {
        files.push((
            format!("hostile_{i}.yaml"),
            rest(&format!("hostile_{i}"), endpoint, false),
        ));
        if *reachable {
            let name = format!("control_{i}");
            files.push((format!("{name}.yaml"), rest(&name, endpoint, true)));
        }
    }
    // The SOAP wrapper shares the policy: a metadata address and a name.
    let soap_cases = [
        (
            format!("http://169.254.169.254:{port}/soap"),
            Some(literal_refusal("169.254.169.254")),
        ),
        (format!("http://localhost:{port}/soap"), None),
    ];
    for (i, (endpoint, _)) in soap_cases.iter().enumerate() {
        for (name, allow) in [
            (format!("soap_hostile_{i}"), false),
            (format!("soap_control_{i}"), true),
        ] {
            files.push((format!("{name}.yaml"), soap(&name, endpoint, allow)));
        }
    }
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let sb = TestServer::start(&files).await;

    for (i, (endpoint, message, _)) in cases.iter().enumerate() {
        let callout = run(&sb, &format!("hostile_{i}.ping")).await;
        match message {
            Some(message) => assert_refused(&callout, endpoint, message),
            None => assert_localhost_refused(&callout, endpoint),
        }
    }
    for (i, (endpoint, message)) in soap_cases.iter().enumerate() {
        let callout = run(&sb, &format!("soap_hostile_{i}.ping")).await;
        match message {
            Some(message) => assert_refused(&callout, endpoint, message),
            None => assert_localhost_refused(&callout, endpoint),
        }
    }
    let reached = sentinel.count();
    assert_eq!(
        reached,
        0,
        "hostile requests arrived: {:?}",
        sentinel.seen()
    );

    let controls: Vec<usize> = (0..cases.len()).filter(|i| cases[*i].2).collect();
    for i in &controls {
        let callout = run(&sb, &format!("control_{i}.ping")).await;
        assert_eq!(
            callout["status"], "succeeded",
            "{}: {callout:#}",
            cases[*i].0
        );
        assert_eq!(callout["result"]["data"], json!({ "ok": true }));
    }
    let seen = sentinel.seen();
    assert_eq!(
        seen.len(),
        controls.len(),
        "one request a control: {seen:?}"
    );
    assert!(seen.iter().all(|s| s.ends_with(" /base/ping")), "{seen:?}");
    // The sentinel's JSON is no SOAP envelope, so these fail; what counts is the arrival.
    for i in 0..soap_cases.len() {
        run(&sb, &format!("soap_control_{i}.ping")).await;
    }
    let soap_seen = sentinel.count() - seen.len();
    assert_eq!(soap_seen, soap_cases.len(), "{:?}", sentinel.seen());
    sb.stop().await;

    harness::figure(
        ITEM,
        "private, loopback, link-local and metadata endpoints in every spelling, and `localhost`, are refused",
        &format!(
            "{} hostile endpoints (REST {}, SOAP {}): {} refused, {reached} requests reached the server behind them; {} positive controls reached it with allow_private_network",
            cases.len() + soap_cases.len(),
            cases.len(),
            soap_cases.len(),
            cases.len() + soap_cases.len(),
            controls.len() + soap_cases.len()
        ),
    );
}

/// A public server that redirects to a private address cannot relay the engine there.
///
/// Attack: the endpoint is a public server (11.1.1.1 in the namespace, allowed by the policy)
/// that answers `302` to a loopback, private, metadata or IPv4-mapped address, or to
/// `localhost`; and an OAuth2 `token_url` on a private address, which would receive the
/// client secret.
/// Expected: the public server is reached (a function without a redirect succeeds), every
/// redirect (absolute, scheme-relative, or the second hop of a chain) fails the callout with
/// `refused` naming the target; a literal `token_url` fails the call with `config` and a named
/// one with `refused`, before any token request; the private server counts 0 requests; with
/// `allow_private_network: true` every redirect is followed to it.
/// Figure: redirects refused, requests that reached the private server, controls followed.
#[test]
fn a_redirect_from_a_public_server_to_a_private_address_is_refused() {
    let test = "a_redirect_from_a_public_server_to_a_private_address_is_refused";
    if !harness::private_network(test, &[PUBLIC, "10.0.0.1", "169.254.169.254"]) {
        return;
    }
    runtime().block_on(redirects());
}

/// The body of [`a_redirect_from_a_public_server_to_a_private_address_is_refused`], in its
/// namespace.
async fn redirects() {
    let private = Listener::sentinel(([0u16; 8], 0).into()).await;
    let p = private.port();
    let targets: Vec<(String, Option<String>)> = [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]"),
        ("10.0.0.1", "10.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
    ]
    .iter()
    .map(|(host, normal)| {
        (
            format!("http://{host}:{p}/latest/meta-data/"),
            Some(format!("redirect refused: {}", literal_refusal(normal))),
        )
    })
    .chain([
        (format!("http://localhost:{p}/latest/meta-data/"), None),
        // Scheme-relative, then a second hop: each target is checked, not just the first.
        (
            format!("//127.0.0.1:{p}/latest/meta-data/"),
            Some(format!(
                "redirect refused: {}",
                literal_refusal("127.0.0.1")
            )),
        ),
        (
            "/api/go0".to_string(),
            Some(format!(
                "redirect refused: {}",
                literal_refusal("127.0.0.1")
            )),
        ),
    ])
    .collect();
    let locations: HashMap<String, String> = targets
        .iter()
        .enumerate()
        .map(|(i, (url, _))| (format!("/api/go{i}"), url.clone()))
        .collect();
    let public = Listener::start(
        SocketAddr::new(PUBLIC.parse().expect("an address"), 0),
        move |path| match locations.get(path) {
            Some(location) => redirect(location),
            None => ok(json!({ "public": true })),
        },
    )
    .await;
    let endpoint = format!("http://{PUBLIC}:{}/api", public.port());

    let functions: String = (0..targets.len())
        .map(|i| format!("  go{i}: {{ path: /go{i} }}\n"))
        .collect();
    let connection = |name: &str, allow: bool| {
        format!(
            r#"connection: {name}
type: rest
endpoint: {endpoint}
allow_private_network: {allow}
retry: {{ max_attempts: 1 }}
functions:
  direct: {{ path: /direct }}
{functions}"#
        )
    };
    // OAuth2 whose token endpoint is private: the client secret must not go there.
    let oauth = |name: &str, token_host: &str| {
        format!(
            r#"connection: {name}
type: rest
endpoint: {endpoint}
retry: {{ max_attempts: 1 }}
auth:
  type: oauth2_client_credentials
  token_url: http://{token_host}:{p}/token
  client_id: switchboard
  client_secret: "${{file:client.secret}}"
functions:
  direct: {{ path: /direct }}
"#
        )
    };
    let files = [
        ("public.yaml", connection("public", false)),
        ("allowed.yaml", connection("allowed", true)),
        (
            "metadata_token.yaml",
            oauth("metadata_token", "169.254.169.254"),
        ),
        ("local_token.yaml", oauth("local_token", "localhost")),
        ("client.secret", "secret-CANARY".to_string()),
    ];
    let sb = TestServer::start(&files).await;

    let direct = run(&sb, "public.direct").await;
    assert_eq!(direct["status"], "succeeded", "{direct:#}");
    assert_eq!(direct["result"]["data"], json!({ "public": true }));

    for (i, (target, message)) in targets.iter().enumerate() {
        let callout = run(&sb, &format!("public.go{i}")).await;
        match message {
            Some(message) => assert_refused(&callout, target, message),
            None => assert_localhost_refused(&callout, target),
        }
    }
    // A literal token URL is refused when the connection is built, so its calls fail with
    // `config`; a name is refused by the resolver when the token is fetched.
    let token = run(&sb, "metadata_token.direct").await;
    let error = &token["result"]["error"];
    assert_eq!(token["status"], "failed", "{token:#}");
    assert_eq!(error["kind"], "config", "{token:#}");
    assert_eq!(
        error["message"],
        format!(
            "connection `metadata_token`: auth.token_url: {}",
            literal_refusal("169.254.169.254")
        )
    );
    let token = run(&sb, "local_token.direct").await;
    assert_localhost_refused(&token, "token_url localhost");
    // Each callout once, and the two-hop one twice.
    let public_seen = public.count();
    assert_eq!(public_seen, 2 + targets.len(), "{:?}", public.seen());
    let reached = private.count();
    assert_eq!(
        reached,
        0,
        "requests reached the private server: {:?}",
        private.seen()
    );

    for (i, (target, _)) in targets.iter().enumerate() {
        let callout = run(&sb, &format!("allowed.go{i}")).await;
        assert_eq!(callout["status"], "succeeded", "{target}: {callout:#}");
    }
    assert_eq!(private.count(), targets.len(), "{:?}", private.seen());
    sb.stop().await;

    harness::figure(
        ITEM,
        "a public server cannot redirect the engine to a private address; an OAuth2 token_url there is refused",
        &format!(
            "{} redirects from 11.1.1.1 to private targets: {} refused; OAuth2 token_url on 169.254.169.254 and localhost refused; {reached} requests reached the private server; {} controls followed with allow_private_network",
            targets.len(),
            targets.len(),
            targets.len()
        ),
    );
}

/// A DNS server for the test, on UDP `127.0.0.1:53` of the namespace. A query for a name gets
/// the addresses of `answer(name, n)` of its type (A or AAAA) at TTL 0, where `n` counts that
/// name's queries of that type from 0; a name `answer` does not know gets NXDOMAIN. Stopped
/// when dropped.
struct Dns {
    /// Name and type (1 A, 28 AAAA) of every query, in order.
    queries: Arc<Mutex<Vec<(String, u16)>>>,
    task: JoinHandle<()>,
}

type AnswerFn = dyn Fn(&str, usize) -> Option<Vec<IpAddr>> + Send + Sync;

impl Dns {
    async fn start(
        answer: impl Fn(&str, usize) -> Option<Vec<IpAddr>> + Send + Sync + 'static,
    ) -> Dns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:53")
            .await
            .expect("bind 127.0.0.1:53 in the namespace");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        let answer: Arc<AnswerFn> = Arc::new(answer);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Some(reply) = Dns::reply(&buf[..n], &seen, answer.as_ref()) else {
                    continue;
                };
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Dns { queries, task }
    }

    /// A queries for `name` so far.
    fn count(&self, name: &str) -> usize {
        let queries = self.queries.lock().expect("queries lock");
        queries.iter().filter(|(n, t)| n == name && *t == 1).count()
    }

    /// The answer to `query` (RFC 1035 §4.1), or `None` for a packet that is no query.
    fn reply(query: &[u8], seen: &Mutex<Vec<(String, u16)>>, answer: &AnswerFn) -> Option<Vec<u8>> {
        let header = query.get(..12)?;
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*query.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            let label = std::str::from_utf8(query.get(at..at + len)?).ok()?;
            labels.push(label.to_ascii_lowercase());
            at += len;
        }
        let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
        let question = query.get(12..at + 4)?;
        let name = labels.join(".");
        let found = {
            let mut seen = seen.lock().expect("queries lock");
            let n = seen
                .iter()
                .filter(|(n, t)| *n == name && *t == qtype)
                .count();
            seen.push((name.clone(), qtype));
            answer(&name, n)
        };
        let rcode = if found.is_some() { 0 } else { 3 }; // NXDOMAIN
        // (type, data) of each record of the query's type.
        let records: Vec<(u16, Vec<u8>)> = found
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) if qtype == 1 => Some((1, v4.octets().to_vec())),
                IpAddr::V6(v6) if qtype == 28 => Some((28, v6.octets().to_vec())),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(question.len() + 12 + 28 * records.len());
        out.extend_from_slice(&header[..2]); // the id
        out.push(0x84 | (header[2] & 0x01)); // a response, authoritative, RD copied
        out.push(0x80 | rcode); // recursion available
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&u16::try_from(records.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(question);
        for (rtype, data) in records {
            // The name by pointer to the question, the type, class IN, TTL 0, the data.
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
            out.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
            out.extend_from_slice(&data);
        }
        Some(out)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// DNS rebinding: the engine connects to the address it checked, never to a later answer.
///
/// Attack: the endpoint is a name whose DNS answer (TTL 0) is public the first time and
/// loopback afterwards, so an engine that resolved once to check and again to connect would
/// reach the loopback server on the same port; also a name whose one answer lists loopback
/// first and the public address second, and names that resolve to loopback only (an A record,
/// or an AAAA record that maps 127.0.0.1 into IPv6). The test's namespace has its own DNS
/// server and `resolv.conf`, and an `/etc/hosts` without these names.
/// Expected: the first call to the rebinding name reaches the public server (one A query, the
/// address checked is the address used); the next, answered with loopback, fails `refused`;
/// the mixed name always reaches the public server; the loopback names fail `refused`; the
/// loopback server counts 0 requests, and 2 once the connections allow private networks; a
/// client without the guard, resolving the rebinding name again, lands on it (the attack is
/// live).
/// Figure: calls, DNS queries, requests at the public and at the loopback server.
#[test]
fn dns_rebinding_connects_only_to_the_checked_address() {
    let test = "dns_rebinding_connects_only_to_the_checked_address";
    if !harness::private_network(test, &[PUBLIC]) {
        return;
    }
    let etc = tempfile::tempdir().expect("a temp folder");
    harness::mount_file_over("/etc/resolv.conf", "nameserver 127.0.0.1\n", etc.path());
    harness::mount_file_over("/etc/hosts", "127.0.0.1 localhost\n", etc.path());
    runtime().block_on(rebinding());
}

/// The body of [`dns_rebinding_connects_only_to_the_checked_address`], in its namespace.
async fn rebinding() {
    let public_ip: Ipv4Addr = PUBLIC.parse().expect("an address");
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("an address");
    let dns = Dns::start(move |name, n| match name {
        "rebind.test" if n == 0 => Some(vec![public_ip.into()]),
        "rebind.test" | "loopback.test" => Some(vec![loopback]),
        "mixed.test" => Some(vec![loopback, public_ip.into()]),
        // An AAAA record that carries 127.0.0.1, and no A record.
        "mapped.test" => Some(vec![mapped]),
        _ => None,
    })
    .await;
    let public = Listener::start((public_ip, 0).into(), |_| ok(json!({ "public": true }))).await;
    let port = public.port();
    // The loopback server listens on the public server's port: a second resolution would
    // send the request there.
    let local = Listener::sentinel((Ipv4Addr::LOCALHOST, port).into()).await;
    let files = [
        (
            "rebind.yaml",
            rest("rebind", &format!("http://rebind.test:{port}/api"), false),
        ),
        (
            "mixed.yaml",
            rest("mixed", &format!("http://mixed.test:{port}/api"), false),
        ),
        (
            "loopback.yaml",
            rest(
                "loopback",
                &format!("http://loopback.test:{port}/api"),
                false,
            ),
        ),
        (
            "loopback_allowed.yaml",
            rest(
                "loopback_allowed",
                &format!("http://loopback.test:{port}/api"),
                true,
            ),
        ),
        (
            "mapped.yaml",
            rest("mapped", &format!("http://mapped.test:{port}/api"), false),
        ),
        (
            "mapped_allowed.yaml",
            rest(
                "mapped_allowed",
                &format!("http://mapped.test:{port}/api"),
                true,
            ),
        ),
    ];
    let sb = TestServer::start(&files).await;

    let first = run(&sb, "rebind.ping").await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    assert_eq!(first["result"]["data"], json!({ "public": true }));
    assert_eq!(
        dns.count("rebind.test"),
        1,
        "one resolution for one connection"
    );
    assert_eq!(public.count(), 1);

    let second = run(&sb, "rebind.ping").await;
    assert_refused(
        &second,
        "rebind.test, answered 127.0.0.1",
        &name_refusal("rebind.test", "127.0.0.1"),
    );
    assert_eq!(dns.count("rebind.test"), 2);

    let mixed_calls = 3;
    for _ in 0..mixed_calls {
        let callout = run(&sb, "mixed.ping").await;
        assert_eq!(callout["status"], "succeeded", "{callout:#}");
        assert_eq!(callout["result"]["data"], json!({ "public": true }));
    }
    assert_eq!(public.count(), 1 + mixed_calls);

    for (name, listed) in [("loopback", "127.0.0.1"), ("mapped", "::ffff:127.0.0.1")] {
        let callout = run(&sb, &format!("{name}.ping")).await;
        assert_refused(
            &callout,
            name,
            &name_refusal(&format!("{name}.test"), listed),
        );
    }
    let reached = local.count();
    assert_eq!(reached, 0, "requests reached loopback: {:?}", local.seen());

    for name in ["loopback_allowed", "mapped_allowed"] {
        let control = run(&sb, &format!("{name}.ping")).await;
        assert_eq!(control["status"], "succeeded", "{name}: {control:#}");
    }
    assert_eq!(local.count(), 2, "{:?}", local.seen());

    // The attack is live: a client that resolves the name again, without the guard, now
    // lands on the loopback server.
    let unguarded = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let probe = unguarded
        .get(format!("http://rebind.test:{port}/probe"))
        .send()
        .await
        .expect("the unguarded client connects");
    assert_eq!(probe.status(), reqwest::StatusCode::OK);
    let seen = local.seen();
    assert_eq!(
        seen.last().map(String::as_str),
        Some(format!("rebind.test:{port} /probe").as_str())
    );
    let queries = dns.queries.lock().expect("queries lock").len();
    sb.stop().await;

    harness::figure(
        ITEM,
        "DNS rebinding: the engine connects to the address it checked; loopback answers are refused",
        &format!(
            "rebinding name (11.1.1.1, then 127.0.0.1 at TTL 0): 1 call reached 11.1.1.1, 1 refused; mixed answer (127.0.0.1 + 11.1.1.1): {mixed_calls}/{mixed_calls} calls to 11.1.1.1; names answering only 127.0.0.1 (A) or ::ffff:127.0.0.1 (AAAA) refused; {queries} DNS queries answered; {reached} requests reached the loopback server on the same port (2 with allow_private_network; 1 from an unguarded client resolving again)"
        ),
    );
}

/// `s3` connections: the AWS SDK's HTTP client resolves names through the policy too.
///
/// Attack: an `s3` connection's endpoint is a name that resolves to loopback (from the test's
/// DNS server, or `localhost` from `/etc/hosts`), or a public name whose virtual-hosted bucket
/// name (`sb-bucket.s3-public.test`) resolves to loopback; a name with a loopback and a
/// public answer; and a public fake S3 that answers a `GetObject` with `307` to loopback.
/// Expected: each loopback one fails once with `refused`, the message naming the operation,
/// key, bucket, connection, host and `allow_private_network`, after one DNS lookup (the SDK
/// does not retry a refusal); the mixed name reaches the public server only; the `307` is not
/// followed (the SDK follows no redirect); the fake S3 on loopback counts 0 requests, and one
/// per control once the connections allow private networks.
/// Figure: S3 endpoints refused, requests that reached loopback, controls.
#[test]
fn s3_endpoints_named_by_host_go_through_the_same_resolver() {
    let test = "s3_endpoints_named_by_host_go_through_the_same_resolver";
    if !harness::private_network(test, &[PUBLIC]) {
        return;
    }
    let etc = tempfile::tempdir().expect("a temp folder");
    harness::mount_file_over("/etc/resolv.conf", "nameserver 127.0.0.1\n", etc.path());
    harness::mount_file_over("/etc/hosts", "127.0.0.1 localhost\n", etc.path());
    runtime().block_on(s3_by_name());
}

/// The body of [`s3_endpoints_named_by_host_go_through_the_same_resolver`], in its namespace.
async fn s3_by_name() {
    let public_ip: Ipv4Addr = PUBLIC.parse().expect("an address");
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dns = Dns::start(move |name, _| match name {
        "s3-loopback.test" | "sb-bucket.s3-public.test" => Some(vec![loopback]),
        "s3-public.test" => Some(vec![public_ip.into()]),
        "s3-mixed.test" => Some(vec![loopback, public_ip.into()]),
        _ => None,
    })
    .await;
    // A fake S3 on loopback answers every `GetObject` with `{"ok": true}`; the public one on
    // the same port with `{"public": true}`, and `redirect` with a `307` to the loopback one.
    let local = Listener::sentinel((Ipv4Addr::LOCALHOST, 0).into()).await;
    let port = local.port();
    let stolen = format!("http://127.0.0.1:{port}/sb-bucket/stolen");
    let public = Listener::start((public_ip, port).into(), move |path| {
        if path.ends_with("/redirect") {
            let mut response = redirect(&stolen);
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            return response;
        }
        ok(json!({ "public": true }))
    })
    .await;

    let loopback_url = format!("http://s3-loopback.test:{port}");
    let localhost_url = format!("http://localhost:{port}");
    let virtual_url = format!("http://s3-public.test:{port}");
    // (connection, endpoint, path style, the host refused)
    let hostile = [
        ("s3_loopback", &loopback_url, true, "s3-loopback.test"),
        ("s3_localhost", &localhost_url, true, "localhost"),
        (
            "s3_virtual",
            &virtual_url,
            false,
            "sb-bucket.s3-public.test",
        ),
    ];
    let mut files = vec![
        ("s3.key".to_string(), "AKIDEXAMPLE".to_string()),
        ("s3.secret".to_string(), "secret-example".to_string()),
        (
            "s3_mixed.yaml".to_string(),
            s3(
                "s3_mixed",
                &format!("http://s3-mixed.test:{port}"),
                true,
                false,
            ),
        ),
    ];
    for (name, endpoint, path_style, _) in &hostile {
        files.push((
            format!("{name}.yaml"),
            s3(name, endpoint, *path_style, false),
        ));
        let control = format!("{name}_allowed");
        files.push((
            format!("{control}.yaml"),
            s3(&control, endpoint, *path_style, true),
        ));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let sb = TestServer::start(&files).await;

    for (name, _, _, host) in &hostile {
        let callout = run(&sb, &format!("{name}.fetch")).await;
        assert_refused(
            &callout,
            name,
            &format!(
                "reading `ok` in bucket `sb-bucket` of `{name}` failed: {}",
                name_refusal(host, "127.0.0.1")
            ),
        );
    }
    for name in ["s3-loopback.test", "sb-bucket.s3-public.test"] {
        assert_eq!(
            dns.count(name),
            1,
            "{name}: a refusal is not retried by the SDK"
        );
    }

    let mixed = run(&sb, "s3_mixed.fetch").await;
    assert_eq!(mixed["status"], "succeeded", "{mixed:#}");
    assert_eq!(mixed["result"]["data"]["body"], json!({ "public": true }));
    let bounced = run(&sb, "s3_mixed.bounce").await;
    assert_eq!(bounced["status"], "failed", "{bounced:#}");
    assert_eq!(
        public.seen(),
        [
            format!("s3-mixed.test:{port} /sb-bucket/ok"),
            format!("s3-mixed.test:{port} /sb-bucket/redirect"),
        ]
    );
    let reached = local.count();
    assert_eq!(reached, 0, "requests reached loopback: {:?}", local.seen());

    for (name, _, _, _) in &hostile {
        let control = run(&sb, &format!("{name}_allowed.fetch")).await;
        assert_eq!(control["status"], "succeeded", "{name}: {control:#}");
        assert_eq!(control["result"]["data"]["body"], json!({ "ok": true }));
    }
    assert_eq!(
        local.seen(),
        [
            format!("s3-loopback.test:{port} /sb-bucket/ok"),
            format!("localhost:{port} /sb-bucket/ok"),
            format!("sb-bucket.s3-public.test:{port} /ok"),
        ]
    );
    sb.stop().await;

    harness::figure(
        ITEM,
        "s3 endpoints named by host are resolved through the policy; the SDK follows no redirect",
        &format!(
            "{} s3 endpoints whose names resolve to 127.0.0.1 (DNS, /etc/hosts, a virtual-hosted bucket name): {} refused after 1 DNS lookup each; a mixed answer (127.0.0.1 + 11.1.1.1) reached 11.1.1.1; a 307 to 127.0.0.1 not followed; {reached} requests reached the fake S3 on loopback; {} controls reached it with allow_private_network",
            hostile.len(),
            hostile.len(),
            hostile.len()
        ),
    );
}

/// What `switchboard validate` and metadata loading say about private endpoints.
///
/// Attack: metadata names the cloud metadata address as a REST endpoint, a private address as
/// an OAuth2 `token_url`, and `localhost` as a SOAP endpoint, without `allow_private_network`.
/// Expected (as the engine stands): the metadata is valid. Validation is pure (no DNS), and
/// the policy is enforced where the network is used: a literal endpoint fails each call with
/// `refused`, a literal `token_url` fails each call with `config` (the token source refuses it
/// when the connection is built), a name is refused by the resolver when called (the tests
/// above). Nothing warns at load time that such a connection can never work.
/// Figure: what validate prints and its exit code.
#[test]
fn validate_accepts_private_endpoints_and_leaves_the_refusal_to_each_call() {
    let dir = support::folder(&[
        (
            "metadata.yaml",
            r#"connection: metadata
type: rest
endpoint: http://169.254.169.254/latest
functions:
  creds: { path: /meta-data/iam/security-credentials/ }
"#,
        ),
        (
            "tokens.yaml",
            r#"connection: tokens
type: rest
endpoint: https://api.example.com
auth:
  type: oauth2_client_credentials
  token_url: http://10.0.0.1/token
  client_id: switchboard
  client_secret: "${file:client.secret}"
functions:
  ping: { path: /ping }
"#,
        ),
        (
            "local.yaml",
            r#"connection: local
type: soap
endpoint: http://localhost:8080/soap
functions:
  ping: { body: "<Ping/>" }
"#,
        ),
        ("client.secret", "secret-CANARY"),
    ]);
    let path = dir.path().display().to_string();
    let out = support::switchboard(&["validate", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim_end(),
        format!("ok: {path} holds 3 connections and 3 functions; no problems found")
    );
    assert_eq!(stderr, "");
    assert_eq!(support::problems(dir.path()), Vec::<String>::new());

    harness::figure(
        ITEM,
        "validate accepts private endpoints; the policy refuses them per call",
        "`switchboard validate` exits 0, \"no problems found\", for endpoints on 169.254.169.254 and localhost and a token_url on 10.0.0.1",
    );
}
