//! Failover to fallback connections, against real local upstreams: the primary down, failing,
//! or slow, and a mail provider backing another.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::engine::TestServer;
use crate::support::upstream::{Reply, Upstream};

const DEADLINE: Duration = Duration::from_secs(15);

/// A URL on 127.0.0.1 where nothing listens.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{addr}")
}

/// Two mail providers: `mail` (primary, with `fallback: [mail_backup]`) and `mail_backup`,
/// each with `send_email` (POST) and `status` (GET).
fn mail(primary: &str, backup: &str, primary_limits: &str) -> Vec<(&'static str, String)> {
    let function = |fallback: &str| {
        format!(
            r#"
functions:
  send_email:
    method: POST
    path: /messages
    {fallback}
    body: {{ to: "{{{{ input.to }}}}" }}
    input_schema:
      type: object
      required: [to]
      properties: {{ to: {{ type: string }} }}
  status:
    method: GET
    path: /status
    {fallback}
"#
        )
    };
    let primary = format!(
        "connection: mail\ntype: rest\nendpoint: {primary}\nallow_private_network: true\nlimits: {{ {primary_limits} }}\nretry: {{ max_attempts: 1 }}\n{}",
        function("fallback: [mail_backup]")
    );
    let backup = format!(
        "connection: mail_backup\ntype: rest\nendpoint: {backup}\nallow_private_network: true\nretry: {{ max_attempts: 1 }}\n{}",
        function("")
    );
    vec![("mail.yaml", primary), ("mail_backup.yaml", backup)]
}

fn entries(journal: &[Value]) -> Vec<(u64, &str, Option<&str>)> {
    journal
        .iter()
        .map(|e| {
            (
                e["route"].as_u64().expect("a route"),
                e["connection"].as_str().expect("a connection"),
                e["error_kind"].as_str(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_primary_that_is_down_is_served_by_the_fallback_and_the_journal_names_both() {
    let backup = Upstream::start(|_| Reply::ok(json!({ "id": "msg-1" }))).await;
    let sb = TestServer::start(&mail(&closed_port().await, &backup.url(), "")).await;
    let id = sb
        .api
        .enqueue("mail.send_email", json!({ "to": "ana@example.com" }))
        .await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["data"], json!({ "id": "msg-1" }));
    assert_eq!(done["result"]["meta"]["connection"], "mail_backup");
    let journal = sb.api.attempts(&id).await;
    assert_eq!(
        entries(&journal),
        [(0, "mail", Some("connect")), (1, "mail_backup", None)],
        "{journal:#?}"
    );
    assert!(journal.iter().all(|e| e["attempt"] == 1));
    assert_eq!(backup.count(), 1);
    assert_eq!(
        backup.requests()[0].json(),
        json!({ "to": "ana@example.com" })
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_5xx_fails_over_but_a_4xx_does_not() {
    let primary = Upstream::start(|seen| {
        if seen.path.starts_with("/status") {
            Reply::json(503, json!({ "error": "maintenance" }))
        } else {
            Reply::json(422, json!({ "error": "bad address" }))
        }
    })
    .await;
    let backup = Upstream::start(|_| Reply::ok(json!({ "ok": true }))).await;
    let sb = TestServer::start(&mail(&primary.url(), &backup.url(), "")).await;

    let id = sb.api.enqueue("mail.status", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let journal = sb.api.attempts(&id).await;
    assert_eq!(
        entries(&journal),
        [(0, "mail", Some("unavailable")), (1, "mail_backup", None)]
    );
    assert_eq!(journal[0]["http_status"], 503);

    let id = sb
        .api
        .enqueue("mail.send_email", json!({ "to": "not-an-address" }))
        .await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["result"]["error"]["kind"], "rejected");
    assert_eq!(done["result"]["meta"]["connection"], "mail");
    let journal = sb.api.attempts(&id).await;
    assert_eq!(entries(&journal), [(0, "mail", Some("rejected"))]);
    assert_eq!(backup.count(), 1, "only the 503 went to the backup");
    sb.stop().await;
}

#[tokio::test]
async fn a_post_that_timed_out_fails_over_only_with_an_idempotency_key() {
    let primary =
        Upstream::start(|_| Reply::ok(json!({ "late": true })).hold(Duration::from_secs(3))).await;
    let backup = Upstream::start(|_| Reply::ok(json!({ "id": "msg-2" }))).await;
    let sb = TestServer::start(&mail(&primary.url(), &backup.url(), "timeout: 300ms")).await;

    // Without a key, the primary may have sent the mail: no second provider gets it.
    let id = sb
        .api
        .enqueue("mail.send_email", json!({ "to": "ana@example.com" }))
        .await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["result"]["error"]["kind"], "timeout");
    let journal = sb.api.attempts(&id).await;
    assert_eq!(entries(&journal), [(0, "mail", Some("timeout"))]);
    assert_eq!(backup.count(), 0);

    // With the caller's key, the backup can be trusted to deduplicate.
    let id = sb
        .api
        .enqueue_body(&json!({
            "function": "mail.send_email",
            "input": { "to": "ana@example.com" },
            "idempotency_key": "welcome-ana",
        }))
        .await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let journal = sb.api.attempts(&id).await;
    assert_eq!(
        entries(&journal),
        [(0, "mail", Some("timeout")), (1, "mail_backup", None)]
    );
    assert_eq!(backup.requests()[0].key(), Some("welcome-ana"));

    // A GET is safe to repeat: it fails over without a key.
    let id = sb.api.enqueue("mail.status", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["meta"]["connection"], "mail_backup");
    sb.stop().await;
}

#[tokio::test]
async fn a_fallback_to_an_unknown_connection_or_function_is_a_metadata_problem() {
    let dir = crate::support::folder(&[(
        "mail.yaml",
        "connection: mail\ntype: rest\nendpoint: https://mail.example.com\nfunctions:\n  send_email:\n    method: POST\n    path: /messages\n    fallback: [mail_backup, mail, crm.send, \"no way\"]\n---\nconnection: crm\ntype: rest\nendpoint: https://crm.example.com\nfunctions:\n  notify:\n    path: /notify\n",
    )]);
    let problems = crate::support::problems(dir.path());
    let file = dir.path().join("mail.yaml");
    let at =
        |line: usize, col: usize, rest: &str| format!("{}:{line}:{col}: {rest}", file.display());
    assert_eq!(
        problems,
        [
            at(
                8,
                16,
                "connections.mail.functions.send_email.fallback[0]: no connection `mail_backup`; expected one of: crm, mail"
            ),
            at(
                8,
                29,
                "connections.mail.functions.send_email.fallback[1]: `mail.send_email` is on the function's own connection; expected another connection to fall back to"
            ),
            at(
                8,
                35,
                "connections.mail.functions.send_email.fallback[2]: connection `crm` has no function `send`; expected one of: notify"
            ),
            at(
                8,
                45,
                "connections.mail.functions.send_email.fallback[3]: \"no way\" is not a fallback; expected a connection name, like \"mail_backup\", or `connection.function`, like \"mail_backup.send_email\""
            ),
        ]
    );
}

#[tokio::test]
async fn an_open_breaker_sends_callouts_to_the_fallback_without_calling_the_primary() {
    let primary = Upstream::start(|_| Reply::json(500, json!({ "error": "down" }))).await;
    let backup = Upstream::start(|_| Reply::ok(json!({ "ok": true }))).await;
    let mut files = mail(&primary.url(), &backup.url(), "concurrency: 1");
    files[0].1 = files[0].1.replace(
        "retry: { max_attempts: 1 }",
        "retry: { max_attempts: 1 }\nbreaker: { min_calls: 2, failure_ratio: 0.5, open_for: 1h }",
    );
    let sb = TestServer::start(&files).await;
    // Two failures open the primary's breaker; both callouts are still served.
    for _ in 0..2 {
        let id = sb.api.enqueue("mail.status", json!({})).await;
        let done = sb
            .api
            .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
            .await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    assert_eq!(primary.count(), 2);
    // Now the primary is not called at all, and nothing waits for it.
    let ids = sb
        .api
        .enqueue_batch(
            (0..5)
                .map(|_| json!({ "function": "mail.status", "input": {} }))
                .collect(),
        )
        .await;
    let done = sb.api.wait_all(&ids, "succeeded", DEADLINE).await;
    assert_eq!(primary.count(), 2);
    assert_eq!(backup.count(), 7);
    let journal = sb.api.attempts(done[0]["id"].as_str().unwrap()).await;
    assert_eq!(
        entries(&journal),
        [(0, "mail", Some("unavailable")), (1, "mail_backup", None)]
    );
    assert_eq!(
        journal[0]["error_message"],
        "`mail` was not called: its circuit breaker is open"
    );
    assert_eq!(journal[0]["duration_ms"], 0);
    sb.stop().await;
}

#[tokio::test]
async fn a_retry_after_pause_sends_the_next_callouts_to_the_fallback() {
    let primary = Upstream::start(|_| {
        Reply::json(503, json!({ "error": "busy" })).header("retry-after", "60")
    })
    .await;
    let backup = Upstream::start(|_| Reply::ok(json!({ "ok": true }))).await;
    let sb = TestServer::start(&mail(&primary.url(), &backup.url(), "")).await;
    let first = sb.api.enqueue("mail.status", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&first, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The primary asked for a minute: the next callouts go to the backup at once, and the
    // primary is not called again.
    let ids = sb
        .api
        .enqueue_batch(
            (0..5)
                .map(|_| json!({ "function": "mail.status", "input": {} }))
                .collect(),
        )
        .await;
    let done = sb.api.wait_all(&ids, "succeeded", DEADLINE).await;
    assert_eq!(primary.count(), 1);
    assert_eq!(backup.count(), 6);
    let journal = sb
        .api
        .attempts(done[0]["id"].as_str().expect("an id"))
        .await;
    assert_eq!(
        journal[0]["error_message"],
        "`mail` was not called: it asked to wait (Retry-After)"
    );
    sb.stop().await;
}
