//! Stopping and failing without losing or repeating work: a stop ends long polls and claims
//! nothing new, the grace period starts no new call, and a panicking wrapper ends as a dead
//! letter after its attempts instead of running forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::engine::{Accepted, CalloutRequest, Engine, EngineConfig};
use switchboard::metadata::Loader;
use switchboard::queue::{SqliteStore, Status, Store};

use crate::support::engine::{TestServer, pointed, rfc3339_in};
use crate::support::upstream::{Reply, Upstream};

const SINK: &str = r#"connection: sink
type: rest
endpoint: UPSTREAM/sink
allow_private_network: true
limits: { timeout: 5s, connect_timeout: 1s }
functions:
  put:
    method: POST
    path: /put
"#;

/// Polls `check` every 20 ms until it holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_long_polls_and_claims_nothing_new() {
    let upstream = Upstream::start(|_| Reply::ok(json!({})).hold(Duration::from_millis(200))).await;
    let sb = TestServer::start_with(&[("sink.yaml", pointed(SINK, &upstream.url()))], |c| {
        c.max_concurrent_callouts = 2;
    })
    .await;
    // A long poll on a callout scheduled an hour ahead, stored before the stop.
    let api = sb.api.clone();
    let waiter = tokio::spawn(async move {
        let body = json!({"function": "sink.put", "wait": "60s", "run_at": rfc3339_in(Duration::from_secs(3600))});
        api.post("/v1/callouts", &body).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sb.api.list_all(1).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the long poll's callout was not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let items: Vec<_> = (0..60)
        .map(|n| json!({"function": "sink.put", "input": {"n": n}}))
        .collect();
    sb.api.enqueue_batch(items).await;
    eventually(Duration::from_secs(10), "first calls", || {
        upstream.count() >= 2
    })
    .await;
    let at_stop = upstream.count();
    let began = Instant::now();
    sb.stop().await;
    let took = began.elapsed();
    let after = upstream.count();
    let (status, body) = waiter.await.expect("the long poll ends");
    assert_eq!(status.as_u16(), 202, "{body}");
    assert_eq!(body["status"], "queued");
    // At most the two calls already claimed at the stop were still to arrive.
    assert!(
        after <= at_stop + 2,
        "calls kept starting after the stop: {at_stop} -> {after}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the stop waited for the long poll: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_starts_no_new_call() {
    let upstream = Upstream::start(|_| Reply::ok(json!({}))).await;
    let text = SINK.replace(
        "{ timeout: 5s, connect_timeout: 1s }",
        "{ rate: 4/s, burst: 1, timeout: 5s, connect_timeout: 1s }",
    );
    let sb = TestServer::start_with(&[("sink.yaml", pointed(&text, &upstream.url()))], |c| {
        c.shutdown_grace = Duration::from_secs(3);
    })
    .await;
    let items: Vec<_> = (0..40)
        .map(|n| json!({"function": "sink.put", "input": {"n": n}}))
        .collect();
    sb.api.enqueue_batch(items).await;
    eventually(Duration::from_secs(10), "rate-limited calls", || {
        upstream.count() >= 3
    })
    .await;
    let at_stop = upstream.count();
    sb.stop().await;
    let after = upstream.count();
    assert!(
        after <= at_stop + 1,
        "new calls started during the grace period: {at_stop} -> {after}"
    );
}

/// A connector plugin whose wrapper panics on every call.
struct Boom;
struct BoomWrapper;

#[async_trait::async_trait]
impl switchboard_sdk::Wrapper for BoomWrapper {
    async fn call(&self, _call: switchboard_sdk::Call<'_>) -> switchboard_sdk::Outcome {
        panic!("a plugin bug met a hostile answer");
    }
}

impl switchboard_sdk::ConnectorType for Boom {
    fn type_name(&self) -> &'static str {
        "boom"
    }
    fn validate_settings(&self, _: &serde_json::Value) -> Vec<switchboard_sdk::Issue> {
        Vec::new()
    }
    fn validate_request(&self, _: &serde_json::Value) -> Vec<switchboard_sdk::Issue> {
        Vec::new()
    }
    fn build(
        &self,
        _cx: switchboard_sdk::BuildContext,
    ) -> Result<Arc<dyn switchboard_sdk::Wrapper>, String> {
        Ok(Arc::new(BoomWrapper))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_wrapper_ends_as_a_dead_letter_after_its_attempts() {
    let metadata = tempfile::tempdir().expect("temp");
    std::fs::write(
        metadata.path().join("b.yaml"),
        "connection: b\ntype: boom\nretry: { max_attempts: 2, initial_delay: 50ms, max_delay: 100ms }\nfunctions:\n  go:\n    request: {}\n",
    )
    .expect("write");
    let data = tempfile::tempdir().expect("temp");
    let url = format!("sqlite://{}", data.path().join("q.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("store"));
    let mut loader = Loader::new();
    loader.register(Box::new(Boom)).expect("registers");
    let config = EngineConfig {
        metadata_dir: metadata.path().into(),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, store, loader).await.expect("starts");
    let request = CalloutRequest {
        function: "b.go".into(),
        input: json!({}),
        idempotency_key: None,
        run_at: None,
    };
    let answer = engine.enqueue(vec![request]).await.expect("enqueued");
    let Some(Ok(Accepted::Created(callout))) = answer.into_iter().next() else {
        panic!("expected a created callout");
    };
    let done = engine
        .wait(&callout.id, Duration::from_secs(10))
        .await
        .expect("store");
    let done = done.expect("the callout exists");
    let journal = engine.store().attempts(&callout.id).await.expect("journal");
    engine.shutdown().await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.attempts, 2);
    let kinds: Vec<_> = journal.iter().map(|a| a.error_kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![Some("internal".to_string()), Some("internal".to_string())]
    );
    assert_eq!(
        done.result.expect("result")["error"]["message"],
        "the `boom` wrapper failed unexpectedly"
    );
}
