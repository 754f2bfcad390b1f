//! OAuth2 against real local servers: a token endpoint that counts and checks the grants it
//! gets, and an API that accepts only the token it considers current.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::engine::TestServer;
use crate::support::upstream::{Reply, Seen, Upstream};

const DEADLINE: Duration = Duration::from_secs(15);
const CLIENT_SECRET: &str = "cs-CANARY-4471";

/// The form fields of a token request.
fn form(seen: &Seen) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&seen.body)
        .into_owned()
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn bearer(seen: &Seen) -> Option<String> {
    seen.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

/// An API that accepts only `valid` and holds each call a little, so that calls overlap.
async fn api(valid: Arc<Mutex<String>>) -> Upstream {
    Upstream::start(move |seen| {
        let ok = bearer(seen).as_deref() == valid.lock().ok().as_deref().map(String::as_str);
        if ok {
            Reply::ok(json!({ "ok": true })).hold(Duration::from_millis(150))
        } else {
            Reply::json(401, json!({ "error": "invalid_token" })).hold(Duration::from_millis(50))
        }
    })
    .await
}

/// A client-credentials token endpoint issuing `tok-1`, `tok-2`, … for the right secret.
async fn client_credentials_endpoint() -> Upstream {
    let issued = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |seen| {
        let fields = form(seen);
        let basic = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // `crm-client:cs-CANARY-4471`, base64.
        let expected = "Basic Y3JtLWNsaWVudDpjcy1DQU5BUlktNDQ3MQ==";
        if field(&fields, "grant_type") != Some("client_credentials") || basic != expected {
            return Reply::json(401, json!({ "error": "invalid_client", "error_description": "unknown client" }));
        }
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(json!({ "access_token": format!("tok-{n}"), "token_type": "bearer", "expires_in": 3600 }))
            .hold(Duration::from_millis(100))
    })
    .await
}

fn client_credentials_metadata(
    token: &Upstream,
    api: &Upstream,
    extra: &str,
) -> Vec<(&'static str, String)> {
    let yaml = format!(
        r#"
connection: crm
type: rest
endpoint: {api}
allow_private_network: true
auth:
  type: oauth2_client_credentials
  token_url: {token}/oauth/token
  client_id: crm-client
  client_secret: "${{file:client.secret}}"
  scopes: [api]
{extra}
retry: {{ max_attempts: 5, initial_delay: 50ms, max_delay: 200ms }}
functions:
  ping:
    method: POST
    path: /ping
"#,
        api = api.url(),
        token = token.url(),
    );
    vec![
        ("crm.yaml", yaml),
        ("client.secret", CLIENT_SECRET.to_string()),
    ]
}

async fn run_batch(sb: &TestServer, n: usize) -> Vec<Value> {
    let ids = sb
        .api
        .enqueue_batch(
            (0..n)
                .map(|_| json!({ "function": "crm.ping", "input": {} }))
                .collect(),
        )
        .await;
    sb.api.wait_all(&ids, "succeeded", DEADLINE).await
}

#[tokio::test]
async fn twenty_five_callouts_with_an_expired_token_make_one_token_request() {
    let token = client_credentials_endpoint().await;
    let valid = Arc::new(Mutex::new("tok-1".to_string()));
    let api = api(valid.clone()).await;
    let sb = TestServer::start(&client_credentials_metadata(&token, &api, "")).await;

    // No token yet: 25 callouts at once share the first one.
    run_batch(&sb, 25).await;
    assert_eq!(token.count(), 1, "{:#?}", token.requests());
    let scope = form(&token.requests()[0]);
    assert_eq!(field(&scope, "scope"), Some("api"));
    assert!(api.peak_inflight() > 1, "the calls should overlap");

    // The API now takes `tok-1` for expired: 25 callouts meet a 401, and one refresh serves
    // them all.
    *valid.lock().unwrap() = "tok-2".to_string();
    let before = api.count();
    run_batch(&sb, 25).await;
    assert_eq!(token.count(), 2, "{:#?}", token.requests());
    let refused = api.requests()[before..]
        .iter()
        .filter(|s| bearer(s).as_deref() == Some("tok-1"))
        .count();
    assert!(refused >= 1, "some calls should have met the expired token");
    let served = api.requests()[before..]
        .iter()
        .filter(|s| bearer(s).as_deref() == Some("tok-2"))
        .count();
    assert_eq!(served, 25);
    sb.stop().await;
}

#[tokio::test]
async fn a_200_that_says_the_token_expired_gets_one_refresh_and_one_retry() {
    let token = client_credentials_endpoint().await;
    let valid = Arc::new(Mutex::new("tok-2".to_string()));
    let seen_valid = valid.clone();
    let api = Upstream::start(move |seen| {
        if bearer(seen).as_deref() == seen_valid.lock().ok().as_deref().map(String::as_str) {
            Reply::ok(json!({ "ok": true }))
        } else {
            Reply::ok(json!({ "error": { "code": "TOKEN_EXPIRED" } }))
        }
    })
    .await;
    let rule = "  expired_when: { status: 200, pointer: /error/code, equals: TOKEN_EXPIRED }";
    let sb = TestServer::start(&client_credentials_metadata(&token, &api, rule)).await;
    let done = run_batch(&sb, 1).await;
    assert_eq!(done[0]["result"]["data"], json!({ "ok": true }));
    assert_eq!(token.count(), 2);
    assert_eq!(api.count(), 2);
    let journal = sb.api.attempts(done[0]["id"].as_str().unwrap()).await;
    assert_eq!(journal.len(), 1, "one attempt: {journal:#?}");

    // A token that is refused again after the refresh fails the callout with `auth`.
    *valid.lock().unwrap() = "never".to_string();
    let id = sb.api.enqueue("crm.ping", json!({})).await;
    let failed = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
    let error = &failed["result"]["error"];
    assert_eq!(error["kind"], "auth", "{failed}");
    assert_eq!(error["retryable"], false);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`crm` refused a freshly fetched access token"),
        "{error}"
    );
    assert_eq!(failed["attempts"], 1);
    sb.stop().await;
}

#[tokio::test]
async fn rejected_client_credentials_fail_at_once_naming_the_connection() {
    let token = client_credentials_endpoint().await;
    let api = api(Arc::new(Mutex::new("tok-1".to_string()))).await;
    let mut files = client_credentials_metadata(&token, &api, "");
    files[1].1 = "wrong-secret-CANARY".to_string();
    let sb = TestServer::start(&files).await;
    let id = sb.api.enqueue("crm.ping", json!({})).await;
    let failed = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
    let error = &failed["result"]["error"];
    assert_eq!(error["kind"], "auth", "{failed}");
    assert_eq!(error["retryable"], false);
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("connection `crm`: the token endpoint refused the client credentials (status 401): invalid_client: unknown client"), "{message}");
    assert!(!message.contains("CANARY"), "{message}");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(api.count(), 0, "no call without a token");
    sb.stop().await;
}

#[tokio::test]
async fn a_failing_token_endpoint_makes_the_callout_wait_and_retry() {
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    let token = Upstream::start(move |_| {
        if is_down.load(Ordering::SeqCst) {
            Reply::json(503, json!({ "error": "temporarily_unavailable" }))
        } else {
            Reply::ok(json!({ "access_token": "tok-1", "token_type": "Bearer" }))
        }
    })
    .await;
    let api = api(Arc::new(Mutex::new("tok-1".to_string()))).await;
    let mut files = client_credentials_metadata(&token, &api, "  client_auth: body");
    // The failing token endpoint also opens the connection's breaker: keep its pause short.
    files[0].1 = files[0].1.replace(
        "retry: { max_attempts: 5",
        "breaker: { open_for: 100ms }\nretry: { max_attempts: 50",
    );
    let sb = TestServer::start(&files).await;
    let id = sb.api.enqueue("crm.ping", json!({})).await;
    sb.api.wait_for_status(&id, &["retrying"], DEADLINE).await;
    let journal = sb.api.attempts(&id).await;
    assert_eq!(journal[0]["error_kind"], "unavailable", "{journal:#?}");
    assert!(
        journal[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("the token endpoint failed (status 503)"),
        "{journal:#?}"
    );
    down.store(false, Ordering::SeqCst);
    let done = sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(done["result"]["data"], json!({ "ok": true }));
    // `client_auth: body` puts the client's credentials in the form.
    let last = token.requests().pop().unwrap();
    let fields = form(&last);
    assert_eq!(field(&fields, "client_id"), Some("crm-client"));
    assert_eq!(field(&fields, "client_secret"), Some(CLIENT_SECRET));
    assert!(last.headers.get("authorization").is_none());
    sb.stop().await;
}

#[tokio::test]
async fn a_rotated_refresh_token_survives_a_restart() {
    // The provider accepts only the newest refresh token and rotates it on every use.
    let current = Arc::new(Mutex::new("rt-0".to_string()));
    let issued = Arc::new(AtomicUsize::new(0));
    let (now, count) = (current.clone(), issued.clone());
    let token = Upstream::start(move |seen| {
        let fields = form(seen);
        let mut valid = now.lock().unwrap();
        if field(&fields, "grant_type") != Some("refresh_token")
            || field(&fields, "refresh_token") != Some(valid.as_str())
        {
            return Reply::json(400, json!({ "error": "invalid_grant" }));
        }
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        *valid = format!("rt-{n}");
        Reply::ok(json!({ "access_token": format!("at-{n}"), "token_type": "Bearer", "expires_in": 3600, "refresh_token": format!("rt-{n}") }))
    })
    .await;
    let api = Upstream::start(|seen| match bearer(seen) {
        Some(t) if t.starts_with("at-") => Reply::ok(json!({ "token": t })),
        _ => Reply::json(401, json!({})),
    })
    .await;
    let yaml = format!(
        r#"
connection: crm
type: rest
endpoint: {api}
allow_private_network: true
auth:
  type: oauth2_refresh_token
  token_url: {token}/token
  client_id: crm-app
  refresh_token: "${{file:refresh.token}}"
retry: {{ max_attempts: 1 }}
functions:
  me:
    path: /me
"#,
        api = api.url(),
        token = token.url()
    );
    let files = vec![("crm.yaml", yaml), ("refresh.token", "rt-0".to_string())];
    let sb = TestServer::start(&files).await;
    let id = sb.api.enqueue("crm.me", json!({})).await;
    let done = sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(done["result"]["data"], json!({ "token": "at-1" }));

    // The metadata still names rt-0, which the provider no longer accepts.
    let sb = sb.restart().await;
    let id = sb.api.enqueue("crm.me", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["result"]["data"], json!({ "token": "at-2" }), "{done}");

    // Other OAuth2 settings change (new scopes) and the metadata is reloaded: the newest
    // refresh token still serves.
    let mut files = files;
    files[0].1 = files[0].1.replace(
        "  client_id: crm-app",
        "  client_id: crm-app\n  scopes: [profile]",
    );
    sb.rewrite_metadata(&files);
    let (status, body) = sb.api.post("/v1/admin/reload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let id = sb.api.enqueue("crm.me", json!({})).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["result"]["data"], json!({ "token": "at-3" }), "{done}");
    let sent: Vec<String> = token
        .requests()
        .iter()
        .map(|s| {
            field(&form(s), "refresh_token")
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(sent, ["rt-0", "rt-1", "rt-2"]);
    sb.stop().await;
}
