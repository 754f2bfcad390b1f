//! SOAP callouts end to end: the engine started through `server::start`, calling a real SOAP
//! service written with Python's spyne (`tests/peers/soap_server.py`, started by
//! `scripts/test`, which passes its URL in `SWITCHBOARD_SOAP_URL`), and a small upstream of
//! ours for hostile answers no real server would give.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::engine::TestServer;

/// How long any single callout may take to reach the status a test waits for.
const DEADLINE: Duration = Duration::from_secs(15);

/// The spyne server's base URL.
fn soap_url() -> String {
    std::env::var("SWITCHBOARD_SOAP_URL").expect(
        "SWITCHBOARD_SOAP_URL is not set: run scripts/test, which installs and starts the SOAP test server",
    )
}

/// The `crm` connection (SOAP `VERSION`) on the spyne server. `WS` is replaced by a
/// `ws_security` block or nothing.
const CRM: &str = r#"connection: crm
type: soap
endpoint: SOAP/soapPATH
soap_version: "VERSION"
allow_private_network: true
limits: { timeout: 5s, connect_timeout: 1s }
retry: { max_attempts: 3, initial_delay: 50ms, max_delay: 100ms }
WS
functions:
  greet:
    action: Greet
    body: |
      <c:Greet xmlns:c="urn:switchboard:test:crm"><c:name>{{ input.name }}</c:name><c:times>{{ input.times }}</c:times></c:Greet>
    input_schema:
      type: object
      required: [name, times]
      properties:
        name: { type: string }
        times: { type: integer }
    output:
      greeting: /GreetResponse/GreetResult
  create_order:
    action: CreateOrder
    body: |
      <c:CreateOrder xmlns:c="urn:switchboard:test:crm"><c:order>
        <c:customer>{{ input.customer }}</c:customer>
        <c:shipping><c:street>{{ input.street }}</c:street><c:city>{{ input.city }}</c:city><c:zip>{{ input.zip }}</c:zip></c:shipping>
        <c:lines>{% for line in input.lines %}<c:Line><c:sku>{{ line.sku }}</c:sku><c:quantity>{{ line.quantity }}</c:quantity><c:price>{{ line.price }}</c:price></c:Line>{% endfor %}</c:lines>
        <c:rush>{{ input.rush }}</c:rush>
      </c:order></c:CreateOrder>
    input_schema:
      type: object
      required: [customer, street, city, zip, lines, rush]
      properties:
        customer: { type: string }
        street: { type: string }
        city: { type: string }
        zip: { type: string }
        rush: { type: boolean }
        lines:
          type: array
          items:
            type: object
            properties:
              sku: { type: string }
              quantity: { type: integer }
              price: { type: number }
    output_schema:
      type: object
      required: [order_id, total, line_count, skus, rush]
      properties:
        order_id: { type: string }
        city: { type: string }
        total: { type: number }
        line_count: { type: integer }
        skus: { type: array, items: { type: string } }
        rush: { type: boolean }
    output:
      order_id: /CreateOrderResponse/CreateOrderResult/order_id
      city: /CreateOrderResponse/CreateOrderResult/city
      total: /CreateOrderResponse/CreateOrderResult/total
      line_count: /CreateOrderResponse/CreateOrderResult/line_count
      skus: /CreateOrderResponse/CreateOrderResult/skus/string
      rush: /CreateOrderResponse/CreateOrderResult/rush
  fail:
    action: Fail
    body: |
      <c:Fail xmlns:c="urn:switchboard:test:crm"><c:kind>{{ input.kind }}</c:kind></c:Fail>
    input_schema: { type: object, required: [kind], properties: { kind: { type: string } } }
  flaky:
    action: Flaky
    body: |
      <c:Flaky xmlns:c="urn:switchboard:test:crm"><c:key>{{ input.key }}</c:key></c:Flaky>
    input_schema: { type: object, required: [key], properties: { key: { type: string } } }
    output: { answer: /FlakyResponse/FlakyResult }
  whoami:
    action: Whoami
    body: <c:Whoami xmlns:c="urn:switchboard:test:crm"/>
    output: { user: /WhoamiResponse/WhoamiResult }
"#;

fn crm(version: &str, ws: &str) -> Vec<(&'static str, String)> {
    let path = if version == "1.2" { "12" } else { "11" };
    let text = CRM
        .replace("SOAP", &soap_url())
        .replace("PATH", path)
        .replace("VERSION", version)
        .replace("WS", ws);
    vec![
        ("crm.yaml", text),
        // The WS-Security password, read through a `${file:...}` reference.
        ("ws_password", "pa&ss<word>".to_string()),
    ]
}

async fn succeeded(sb: &TestServer, function: &str, input: Value) -> Value {
    let id = sb.api.enqueue(function, input).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_call_escapes_input_and_maps_the_answer_in_soap_1_1_and_1_2() {
    for version in ["1.1", "1.2"] {
        let sb = TestServer::start(&crm(version, "")).await;
        let done = succeeded(
            &sb,
            "crm.greet",
            json!({ "name": "Bob & <Co>", "times": 2 }),
        )
        .await;
        assert_eq!(
            done["result"]["data"],
            json!({ "greeting": "Hello, Bob & <Co>!; Hello, Bob & <Co>!" }),
            "SOAP {version}"
        );
        assert_eq!(done["result"]["meta"]["http_status"], 200);
        assert_eq!(done["attempts"], 1);
        sb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_types_and_arrays_round_trip_with_typed_output() {
    let sb = TestServer::start(&crm("1.1", "")).await;
    let done = succeeded(
        &sb,
        "crm.create_order",
        json!({
            "customer": "C-7", "street": "1 Main St", "city": "Zürich", "zip": "8001",
            "rush": true,
            "lines": [
                { "sku": "A-1", "quantity": 2, "price": 9.5 },
                { "sku": "B-2", "quantity": 1, "price": 20 },
            ],
        }),
    )
    .await;
    assert_eq!(
        done["result"]["data"],
        json!({
            "order_id": "SO-C-7-2",
            "city": "Zürich",
            "total": 39.0,
            "line_count": 2,
            "skus": ["A-1", "B-2"],
            "rush": true,
        })
    );

    // One line: XML cannot tell a list of one from a value; the output schema can.
    let done = succeeded(
        &sb,
        "crm.create_order",
        json!({
            "customer": "C-8", "street": "2 Side St", "city": "Basel", "zip": "4001",
            "rush": false,
            "lines": [{ "sku": "Z-9", "quantity": 3, "price": 1.25 }],
        }),
    )
    .await;
    assert_eq!(
        done["result"]["data"],
        json!({
            "order_id": "SO-C-8-1",
            "city": "Basel",
            "total": 3.75,
            "line_count": 1,
            "skus": ["Z-9"],
            "rush": false,
        })
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_fail_at_once_in_soap_1_1_and_1_2() {
    for (version, code) in [("1.1", "Client.BadInput"), ("1.2", "Sender (BadInput)")] {
        let sb = TestServer::start(&crm(version, "")).await;
        let id = sb
            .api
            .enqueue("crm.fail", json!({ "kind": "client" }))
            .await;
        let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
        assert_eq!(done["attempts"], 1, "SOAP {version}: {done:#}");
        assert_eq!(
            done["result"]["error"],
            json!({
                "kind": "rejected",
                "message": format!("`crm` answered with SOAP fault `{code}`: kind client is refused"),
                "retryable": false,
            }),
            "SOAP {version}"
        );
        assert_eq!(done["result"]["meta"]["http_status"], 500);
        sb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_faults_are_retried_in_soap_1_1_and_1_2() {
    for (version, code) in [("1.1", "Server.Busy"), ("1.2", "Receiver (Busy)")] {
        let sb = TestServer::start(&crm(version, "")).await;
        let id = sb
            .api
            .enqueue("crm.fail", json!({ "kind": "server" }))
            .await;
        let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
        assert_eq!(done["attempts"], 3, "retried up to max_attempts: {done:#}");
        assert_eq!(
            done["result"]["error"],
            json!({
                "kind": "unavailable",
                "message": format!("`crm` answered with SOAP fault `{code}`: the service is busy, try later"),
                "retryable": true,
            }),
            "SOAP {version}"
        );
        let journal = sb.api.attempts(&id).await;
        assert_eq!(journal.len(), 3, "{journal:#?}");
        assert!(
            journal.iter().all(|a| a["error_kind"] == "unavailable"),
            "{journal:#?}"
        );

        // A server fault that passes: the retry succeeds.
        let key = format!("flaky-{version}-{id}");
        let done = succeeded(&sb, "crm.flaky", json!({ "key": key })).await;
        assert_eq!(done["attempts"], 2, "{done:#}");
        assert_eq!(done["result"]["data"], json!({ "answer": "ok after 2" }));
        sb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_security_username_token_is_accepted_as_text_and_as_digest() {
    let cases = [
        ("1.1", "text", "crm-ws (text)"),
        ("1.1", "digest", "crm-ws (digest)"),
        ("1.2", "digest", "crm-ws (digest)"),
    ];
    for (version, kind, user) in cases {
        let ws = format!(
            "ws_security: {{ username: crm-ws, password: \"${{file:ws_password}}\", password_type: {kind} }}"
        );
        let sb = TestServer::start(&crm(version, &ws)).await;
        // Two calls: each carries a fresh nonce (the server refuses a replayed one).
        for _ in 0..2 {
            let done = succeeded(&sb, "crm.whoami", json!({})).await;
            assert_eq!(
                done["result"]["data"],
                json!({ "user": user }),
                "{version} {kind}"
            );
        }
        sb.stop().await;
    }

    // Without the header the service refuses the call: a client fault, not retried.
    let sb = TestServer::start(&crm("1.1", "")).await;
    let id = sb.api.enqueue("crm.whoami", json!({})).await;
    let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        done["result"]["error"]["message"],
        "`crm` answered with SOAP fault `Client.Authentication`: no wsse:Security header"
    );
    sb.stop().await;
}

/// An upstream of ours that answers every request with `body` as `text/xml`.
struct RawUpstream {
    url: String,
    stop: CancellationToken,
}

impl RawUpstream {
    async fn start(answers: Vec<(&'static str, Vec<u8>)>) -> RawUpstream {
        let answers = Arc::new(answers);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let app = Router::new().route(
            "/{case}",
            axum::routing::post(
                move |axum::extract::Path(case): axum::extract::Path<String>| {
                    let answers = answers.clone();
                    async move {
                        let body = answers
                            .iter()
                            .find(|(name, _)| *name == case)
                            .map(|(_, body)| body.clone())
                            .unwrap_or_default();
                        let mut headers = HeaderMap::new();
                        headers.insert("content-type", "text/xml".parse().expect("a value"));
                        (StatusCode::OK, headers, body)
                    }
                },
            ),
        );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        RawUpstream {
            url: format!("http://{addr}"),
            stop,
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_answers_fail_their_callout_and_the_engine_keeps_running() {
    let envelope = |inner: &str| {
        format!(
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>"
        )
    };
    let deep = envelope(&format!(
        "{}{}",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    ));
    let good = envelope("<R><Id>7</Id></R>");
    let truncated = good.replace("</R></s:Body></s:Envelope>", "");
    let cases: Vec<(&'static str, Vec<u8>, String)> = vec![
        (
            "xxe",
            br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><r>&x;</r></s:Body></s:Envelope>"#.to_vec(),
            "cannot read the answer of `hostile`: the answer declares a DOCTYPE, which is refused: no DTD or entity is ever read".into(),
        ),
        (
            "laughs",
            br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><lolz>&lol2;</lolz>"#.to_vec(),
            "cannot read the answer of `hostile`: the answer declares a DOCTYPE, which is refused: no DTD or entity is ever read".into(),
        ),
        (
            "deep",
            deep.into_bytes(),
            "cannot read the answer of `hostile`: the answer nests elements deeper than 128 levels".into(),
        ),
        (
            "truncated",
            truncated.into_bytes(),
            "cannot read the answer of `hostile`: the answer ends before element <R> is closed: the XML is truncated".into(),
        ),
        (
            "json",
            br#"{"ok": true}"#.to_vec(),
            "cannot read the answer of `hostile`: the answer is not XML: it starts with \"{\\\"ok\\\": true}\"".into(),
        ),
        (
            "html",
            b"<html><body>Gateway</body></html>".to_vec(),
            "the answer of `hostile` is not a SOAP envelope: its root element is <html>".into(),
        ),
    ];
    let upstream = RawUpstream::start(
        cases
            .iter()
            .map(|(name, body, _)| (*name, body.clone()))
            .chain([("good", good.clone().into_bytes())])
            .collect(),
    )
    .await;
    // One connection per case, each posting to its own path; `good` answers a valid envelope.
    let connection = |name: &str| {
        format!(
            "connection: hostile_{name}\ntype: soap\nendpoint: {}/{name}\nallow_private_network: true\nretry: {{ max_attempts: 2, initial_delay: 50ms }}\nfunctions:\n  {name}: {{ body: \"<Go/>\" }}\n",
            upstream.url
        )
    };
    let names: Vec<&str> = cases
        .iter()
        .map(|(name, _, _)| *name)
        .chain(["good"])
        .collect();
    let files: Vec<(String, String)> = names
        .iter()
        .map(|name| (format!("{name}.yaml"), connection(name)))
        .collect();
    let files: Vec<(&str, String)> = files
        .iter()
        .map(|(name, text)| (name.as_str(), text.clone()))
        .collect();
    let sb = TestServer::start(&files).await;
    for (name, _, message) in &cases {
        let id = sb
            .api
            .enqueue(&format!("hostile_{name}.{name}"), json!({}))
            .await;
        let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
        assert_eq!(done["attempts"], 1, "{name}: not retried: {done:#}");
        let expected = message.replace("`hostile`", &format!("`hostile_{name}`"));
        assert_eq!(
            done["result"]["error"],
            json!({ "kind": "invalid_response", "message": expected, "retryable": false }),
            "{name}"
        );
    }
    // The engine still serves: a good answer after all of that succeeds.
    let done = succeeded(&sb, "hostile_good.good", json!({})).await;
    assert_eq!(done["result"]["data"], json!({ "R": { "Id": "7" } }));
    sb.stop().await;
}
