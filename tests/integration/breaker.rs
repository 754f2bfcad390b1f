//! The circuit breaker end to end: an upstream that fails every call opens it after the
//! configured minimum, callouts wait (none fails, none reaches the upstream), a probe goes
//! through after `open_for`, and when the upstream has recovered the breaker closes and the
//! waiting callouts succeed. The state shows in `GET /v1/connections` and in `/metrics`.
//!
//! Real time on purpose: the point is what a real upstream sees. `open_for` and the retry
//! delays are short so that the test takes about a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::engine::{Api, POLL, TestServer, pointed};
use crate::support::upstream::{Reply, Upstream};

/// The longest any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(10);

const MIN_CALLS: usize = 3;
const OPEN_FOR: Duration = Duration::from_millis(300);

/// One call at a time, so the upstream sees exactly `min_calls` requests before the breaker
/// opens; retries soon and often, so callouts are ready while it is open.
const FLAKY: &str = r#"connection: flaky
type: rest
description: A service that goes down and comes back
endpoint: UPSTREAM/flaky?tenant=secret-tenant-key
allow_private_network: true
limits: { concurrency: 1, timeout: 5s, connect_timeout: 1s }
retry: { max_attempts: 100, initial_delay: 10ms, max_delay: 30ms }
breaker:
  failure_ratio: 0.5
  window: 60s
  min_calls: 3
  open_for: 300ms
  half_open_probes: 1
functions:
  ping:
    method: POST
    path: /ping
"#;

/// The `flaky` entry of `GET /v1/connections`.
async fn connection(api: &Api) -> Value {
    let (status, body) = api.get("/v1/connections").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["connections"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == "flaky"))
        .cloned()
        .unwrap_or_else(|| panic!("no `flaky` in {body:#}"))
}

/// Polls `GET /v1/connections` until the breaker of `flaky` satisfies `want`; returns that
/// entry. Panics with the last entry after [`DEADLINE`].
async fn breaker_until(api: &Api, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let entry = connection(api).await;
        if want(&entry["breaker"]) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker did not become {what} within {DEADLINE:?}: {entry:#}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `/metrics` until `series` has the value `want`.
async fn metric_until(api: &Api, series: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = api.metric(series).await;
        if value == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} was {value:?}, not {want}, for {DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn transitions(to: &str) -> String {
    format!("switchboard_breaker_transitions_total{{connection=\"flaky\",to=\"{to}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_min_calls_holds_callouts_and_closes_on_recovery() {
    let healthy = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let (up, failures) = (healthy.clone(), failed.clone());
    let upstream = Upstream::start(move |_| {
        if up.load(Ordering::SeqCst) {
            Reply::ok(json!({ "pong": true }))
        } else {
            failures.fetch_add(1, Ordering::SeqCst);
            Reply::json(500, json!({ "error": "down" }))
        }
    })
    .await;
    let sb = TestServer::start(&[("flaky.yaml", pointed(FLAKY, &upstream.url()))]).await;

    // Before any call: closed, nothing counted, and the listing shows no secret.
    let before = connection(&sb.api).await;
    assert_eq!(
        before,
        json!({
            "name": "flaky",
            "type": "rest",
            "description": "A service that goes down and comes back",
            "endpoint": format!("{}/flaky", upstream.url()),
            "functions": ["ping"],
            "limits": {
                "rate": null,
                "burst": 1,
                "concurrency": 1,
                "timeout": "5s",
                "connect_timeout": "1s",
            },
            "breaker": {
                "enabled": true,
                "state": "closed",
                "calls": 0,
                "failures": 0,
                "opened_at": null,
                "retry_at": null,
                "transitions": 0,
            },
        })
    );
    let (status, _) = Api::new(sb.api.base.clone(), None)
        .get("/v1/connections")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the listing needs a key");

    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(sb.api.enqueue("flaky.ping", json!({})).await);
    }

    // Three failed calls of three: open.
    let open = breaker_until(&sb.api, "open", |b| b["state"] == "open").await;
    let breaker = &open["breaker"];
    assert_eq!(
        (&breaker["calls"], &breaker["failures"]),
        (&json!(3), &json!(3)),
        "{open:#}"
    );
    let opened_at = time(&breaker["opened_at"]);
    let retry_at = time(&breaker["retry_at"]);
    assert_eq!(
        retry_at - opened_at,
        time::Duration::milliseconds(OPEN_FOR.as_millis() as i64),
        "{open:#}"
    );
    metric_until(
        &sb.api,
        "switchboard_breaker_state{connection=\"flaky\"}",
        2.0,
    )
    .await;

    // While it stays down, the breaker opens again after each failed probe; callouts wait.
    breaker_until(&sb.api, "open a second time", |b| {
        b["state"] == "open" && b["transitions"].as_u64() >= Some(3)
    })
    .await;
    for id in &ids {
        let callout = sb.api.callout(id).await;
        assert_ne!(callout["status"], "failed", "{callout:#}");
    }
    healthy.store(true, Ordering::SeqCst);

    // Recovered: the next probe closes the breaker and every callout succeeds.
    let closed = breaker_until(&sb.api, "closed", |b| b["state"] == "closed").await;
    let breaker = &closed["breaker"];
    assert_eq!(
        (
            &breaker["failures"],
            &breaker["opened_at"],
            &breaker["retry_at"]
        ),
        (&json!(0), &Value::Null, &Value::Null),
        "{closed:#}"
    );
    sb.api.wait_all(&ids, "succeeded", DEADLINE).await;

    // What the upstream saw, one request at a time: `min_calls` failures, then only probes
    // (each `open_for` after the request before it, the breaker open in between) up to the
    // first success, then the other callouts.
    let requests = upstream.requests();
    let failed = failed.load(Ordering::SeqCst);
    assert!(failed > MIN_CALLS, "no probe failed: {failed} failures");
    assert!(requests.len() > failed, "no request succeeded");
    for probe in MIN_CALLS..=failed {
        let gap = requests[probe].at.duration_since(requests[probe - 1].at);
        assert!(
            gap >= OPEN_FOR,
            "request {} reached the upstream {gap:?} after the one before, while the breaker was open",
            probe + 1
        );
    }
    assert_eq!(
        requests.len(),
        failed + ids.len(),
        "one successful call per callout after the failures"
    );

    // The transitions in the metrics and in the listing agree: as many half-open spells as
    // open ones, and one close.
    metric_until(
        &sb.api,
        "switchboard_breaker_state{connection=\"flaky\"}",
        0.0,
    )
    .await;
    let opened = sb.api.metric(&transitions("open")).await.unwrap_or(0.0);
    let half_opened = sb.api.metric(&transitions("half_open")).await;
    let closed_count = sb.api.metric(&transitions("closed")).await;
    assert_eq!(
        opened,
        (failed - MIN_CALLS + 1) as f64,
        "once after the first failures, once after each failed probe"
    );
    assert_eq!(half_opened, Some(opened));
    assert_eq!(closed_count, Some(1.0));
    let after = connection(&sb.api).await;
    assert_eq!(
        after["breaker"]["transitions"].as_f64(),
        Some(2.0 * opened + 1.0),
        "{after:#}"
    );
    sb.stop().await;
}

fn time(value: &Value) -> time::OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}
