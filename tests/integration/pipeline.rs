//! The callout pipeline end to end: the HTTP API, the queue, the dispatcher and the REST
//! wrapper, started through `server::start` against real HTTP upstreams on loopback.
//!
//! Real time on purpose: these tests are about sockets, a real SQLite file and the limits as
//! the upstream sees them. Retry delays in the metadata are short so that the suite stays fast.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::engine::{Api, KEY, TestServer, pointed, rfc3339_in};
use crate::support::upstream::{Reply, Upstream};

/// How long any single callout may take to reach the status a test waits for.
const DEADLINE: Duration = Duration::from_secs(10);

/// The `shop` connection: `create_order` maps and checks its output, `ping` returns the body.
/// `LIMITS` is replaced by the connection's limits, `EXTRA` by more functions.
const SHOP: &str = r#"connection: shop
type: rest
endpoint: UPSTREAM/shop
allow_private_network: true
limits: LIMITS
retry: { max_attempts: 4, initial_delay: 50ms, max_delay: 200ms }
functions:
  create_order:
    method: POST
    path: /orders
    body:
      customer: "{{ input.customer_id }}"
      quantity: "{{ input.quantity }}"
    input_schema:
      type: object
      required: [customer_id, quantity]
      properties:
        customer_id: { type: string }
        quantity: { type: integer }
    output_schema:
      type: object
      required: [order_id, status]
      properties:
        order_id: { type: string }
        status: { type: string }
    output:
      order_id: /order/id
      status: /order/status
  ping:
    method: POST
    path: /ping
EXTRA"#;

const DEFAULT_LIMITS: &str = "{ timeout: 5s, connect_timeout: 1s }";

/// `shop.yaml` pointed at `upstream`, with `limits` and `extra` functions.
fn shop_with(upstream: &Upstream, limits: &str, extra: &str) -> (&'static str, String) {
    let text = SHOP.replace("LIMITS", limits).replace("EXTRA", extra);
    ("shop.yaml", pointed(&text, &upstream.url()))
}

fn shop(upstream: &Upstream) -> (&'static str, String) {
    shop_with(upstream, DEFAULT_LIMITS, "")
}

/// What the shop answers an order: the order inside noise the mapping leaves out. Customer
/// `C-BAD` gets a numeric order id, which the output schema refuses.
fn order_reply(seen: &crate::support::upstream::Seen) -> Reply {
    let body = seen.json();
    let customer = body["customer"].as_str().unwrap_or_default().to_string();
    let id = if customer == "C-BAD" {
        json!(42)
    } else {
        json!(format!("SO-{customer}"))
    };
    Reply::ok(json!({ "order": { "id": id, "status": "accepted", "internal": "x" }, "trace": 7 }))
}

async fn post_status(api: &Api, path: &str) -> (StatusCode, Value) {
    api.post_raw(path, Vec::new(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_callout_holds_mapped_data_and_upstream_got_a_stable_idempotency_key() {
    let upstream = Upstream::start(order_reply).await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let keyed = sb
        .api
        .enqueue_body(&json!({
            "function": "shop.create_order",
            "input": { "customer_id": "C-1", "quantity": 2 },
            "idempotency_key": "order:quote-1",
        }))
        .await;
    let unkeyed = sb
        .api
        .enqueue(
            "shop.create_order",
            json!({ "customer_id": "C-2", "quantity": 1 }),
        )
        .await;

    let done = sb
        .api
        .wait_for_status(&keyed, &["succeeded"], DEADLINE)
        .await;
    assert_eq!(
        done["result"],
        json!({
            "status": "succeeded",
            "data": { "order_id": "SO-C-1", "status": "accepted" },
            "error": null,
            "meta": {
                "attempt": 1,
                "connection": "shop",
                "http_status": 200,
                "duration_ms": done["result"]["meta"]["duration_ms"],
            },
        })
    );
    assert!(done["result"]["meta"]["duration_ms"].is_u64(), "{done}");
    let other = sb
        .api
        .wait_for_status(&unkeyed, &["succeeded"], DEADLINE)
        .await;
    assert_eq!(
        other["result"]["data"],
        json!({ "order_id": "SO-C-2", "status": "accepted" })
    );

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let to = |customer: &str| {
        requests
            .iter()
            .find(|r| r.json()["customer"] == customer)
            .unwrap_or_else(|| panic!("no request for {customer}"))
            .clone()
    };
    let first = to("C-1");
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/shop/orders")
    );
    assert_eq!(first.json(), json!({ "customer": "C-1", "quantity": 2 }));
    assert_eq!(
        first.key(),
        Some("order:quote-1"),
        "the caller's key when given"
    );
    assert_eq!(
        to("C-2").key(),
        Some(unkeyed.as_str()),
        "the callout's id without a key"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_failing_the_output_schema_ends_failed_with_invalid_response() {
    let upstream = Upstream::start(order_reply).await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let id = sb
        .api
        .enqueue(
            "shop.create_order",
            json!({ "customer_id": "C-BAD", "quantity": 1 }),
        )
        .await;
    let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
    assert_eq!(
        done["attempts"], 1,
        "invalid_response is not retried: {done}"
    );
    assert_eq!(done["result"]["data"], Value::Null);
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "invalid_response",
            "message": "the answer of `shop.create_order` does not match its output_schema at `/order_id`: value is not of type \"string\"",
            "retryable": false,
        })
    );
    assert_eq!(done["result"]["meta"]["http_status"], 200);
    assert_eq!(upstream.count(), 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_upstream_is_retried_until_it_succeeds() {
    // 503 to the first request of each callout, 200 to the next.
    let upstream = Upstream::start(|seen| {
        if seen.earlier_with_key == 0 {
            Reply::json(503, json!({ "error": "busy" }))
        } else {
            Reply::ok(json!({ "pong": true }))
        }
    })
    .await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let id = sb.api.enqueue("shop.ping", json!({})).await;
    let done = sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["data"], json!({ "pong": true }));

    let journal = sb.api.attempts(&id).await;
    let summary: Vec<(u64, u64, Value, Value)> = journal
        .iter()
        .map(|a| {
            let n = a["attempt"].as_u64().expect("attempt");
            let series = a["series"].as_u64().expect("series");
            (n, series, a["http_status"].clone(), a["error_kind"].clone())
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 0, json!(503), json!("unavailable")),
            (2, 0, json!(200), Value::Null)
        ],
        "{journal:#?}"
    );
    assert_eq!(
        journal[0]["error_message"],
        "`shop` answered with status 503 Service Unavailable: {\"error\":\"busy\"}"
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].key(),
        requests[1].key(),
        "every attempt sends the same key"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_the_whole_connection() {
    // The very first request gets 429 with `Retry-After: 2`; every other one succeeds.
    let throttle = Arc::new(AtomicBool::new(true));
    let upstream = Upstream::start(move |_| {
        if throttle.swap(false, Ordering::SeqCst) {
            Reply::json(429, json!({ "error": "slow down" })).header("retry-after", "2")
        } else {
            Reply::ok(json!({ "pong": true }))
        }
    })
    .await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let first = sb.api.enqueue("shop.ping", json!({})).await;
    let retrying = sb
        .api
        .wait_for_status(&first, &["retrying"], DEADLINE)
        .await;
    assert_eq!(
        retrying["result"]["error"]["kind"], "throttled",
        "{retrying}"
    );
    let throttled_at = upstream.requests()[0].at;

    // Callouts of the same connection enqueued during the pause wait for its end too.
    let mut ids = vec![first.clone()];
    for _ in 0..3 {
        ids.push(sb.api.enqueue("shop.ping", json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..2 {
        ids.push(sb.api.enqueue("shop.ping", json!({})).await);
    }
    assert!(
        upstream.count() == 1,
        "a request reached the paused connection"
    );

    sb.api.wait_all(&ids, "succeeded", DEADLINE).await;
    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        ids.len() + 1,
        "one 429, then one request per callout"
    );
    let earliest = requests[1..]
        .iter()
        .map(|r| r.at.duration_since(throttled_at))
        .min();
    let earliest = earliest.expect("requests after the 429");
    assert!(
        earliest >= Duration::from_secs(2),
        "a request reached the connection {earliest:?} after its 429 with Retry-After: 2"
    );
    let journal = sb.api.attempts(&first).await;
    assert_eq!(journal.len(), 2, "{journal:#?}");
    assert_eq!(
        (&journal[0]["http_status"], &journal[0]["error_kind"]),
        (&json!(429), &json!("throttled"))
    );
    assert_eq!(
        (&journal[1]["http_status"], &journal[1]["error_kind"]),
        (&json!(200), &Value::Null)
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_request_fails_at_once_without_retry() {
    let upstream =
        Upstream::start(|_| Reply::json(400, json!({ "error": "quantity must be at least 1" })))
            .await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let id = sb.api.enqueue("shop.ping", json!({})).await;
    let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "rejected",
            "message": "`shop` answered with status 400 Bad Request: {\"error\":\"quantity must be at least 1\"}",
            "retryable": false,
        })
    );
    assert_eq!(done["next_attempt_at"], Value::Null);
    let journal = sb.api.attempts(&id).await;
    assert_eq!(journal.len(), 1, "{journal:#?}");
    assert_eq!(journal[0]["error_kind"], "rejected");
    assert_eq!(journal[0]["http_status"], 400);
    assert_eq!(upstream.count(), 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_a_failed_callout_again_as_a_new_series_and_keeps_the_journal() {
    // 400 to the first request of each callout, 200 afterwards.
    let upstream = Upstream::start(|seen| {
        if seen.earlier_with_key == 0 {
            Reply::json(400, json!({ "error": "not yet" }))
        } else {
            Reply::ok(json!({ "pong": true }))
        }
    })
    .await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let id = sb.api.enqueue("shop.ping", json!({})).await;
    sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;

    let (status, replayed) = post_status(&sb.api, &format!("/v1/callouts/{id}/replay")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    assert_eq!(replayed["id"], id.as_str());
    assert!(
        replayed["result"].is_null(),
        "a replay clears the result: {replayed}"
    );
    let done = sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["meta"]["attempt"], 2);

    let journal = sb.api.attempts(&id).await;
    let summary: Vec<(Value, Value, Value, Value)> = journal
        .iter()
        .map(|a| {
            (
                a["attempt"].clone(),
                a["series"].clone(),
                a["http_status"].clone(),
                a["error_kind"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(1), json!(0), json!(400), json!("rejected")),
            (json!(2), json!(1), json!(200), Value::Null),
        ],
        "{journal:#?}"
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].key(),
        Some(id.as_str()),
        "a replay sends the same key"
    );

    let (status, body) = post_status(&sb.api, &format!("/v1/callouts/{id}/replay")).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a succeeded callout can be replayed: {body}"
    );
    sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(sb.api.attempts(&id).await.len(), 3);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_queued_callout_but_not_a_succeeded_one() {
    let upstream = Upstream::ok().await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let later = sb
        .api
        .enqueue_body(&json!({
            "function": "shop.ping",
            "run_at": rfc3339_in(Duration::from_secs(60)),
        }))
        .await;
    assert_eq!(sb.api.callout(&later).await["status"], "queued");
    let (status, cancelled) = post_status(&sb.api, &format!("/v1/callouts/{later}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["next_attempt_at"], Value::Null);
    assert_eq!(sb.api.callout(&later).await["status"], "cancelled");

    let now = sb.api.enqueue("shop.ping", json!({})).await;
    sb.api.wait_for_status(&now, &["succeeded"], DEADLINE).await;
    let (status, body) = post_status(&sb.api, &format!("/v1/callouts/{now}/cancel")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({ "error": {
            "code": "wrong_status",
            "message": "a succeeded callout cannot be cancelled (only queued and retrying ones can)",
            "details": null,
        }})
    );
    let (status, body) = post_status(&sb.api, &format!("/v1/callouts/{later}/replay")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a cancelled callout cannot be replayed: {body}"
    );
    assert_eq!(body["error"]["code"], "wrong_status");
    assert_eq!(upstream.count(), 1, "the cancelled callout never ran");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_finds_the_original_and_other_input_conflicts() {
    let upstream = Upstream::start(order_reply).await;
    let sb = TestServer::start(&[shop(&upstream)]).await;
    let order = |quantity: u32| {
        json!({
            "function": "shop.create_order",
            "input": { "customer_id": "C-7", "quantity": quantity },
            "idempotency_key": "order:quote-7",
        })
    };

    let (status, created) = sb.api.post("/v1/callouts", &order(1)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;

    let (status, again) = sb.api.post("/v1/callouts", &order(1)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], id.as_str());
    assert_eq!(
        again["status"], "succeeded",
        "the original, in its current state"
    );

    let (status, conflict) = sb.api.post("/v1/callouts", &order(2)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        conflict,
        json!({ "error": {
            "code": "idempotency_conflict",
            "message": "this idempotency key was used with another function or input",
            "details": { "existing_id": id },
        }})
    );
    assert_eq!(upstream.count(), 1, "the repeat did not run again");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_header_works_like_the_body_field() {
    let upstream = Upstream::start(order_reply).await;
    let sb = TestServer::start(&[shop(&upstream)]).await;
    let body = |quantity: u32| {
        json!({ "function": "shop.create_order", "input": { "customer_id": "C-8", "quantity": quantity } })
            .to_string()
    };
    let header = [
        ("idempotency-key", "order:quote-8"),
        ("content-type", "application/json"),
    ];

    let (status, created) = sb.api.post_raw("/v1/callouts", body(1), &header).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["idempotency_key"], "order:quote-8");
    let id = created["id"].as_str().expect("id").to_string();

    let (status, again) = sb.api.post_raw("/v1/callouts", body(1), &header).await;
    assert_eq!(
        (status, &again["id"]),
        (StatusCode::OK, &json!(id)),
        "{again}"
    );
    // The same key in the body finds the same callout.
    let in_body = json!({
        "function": "shop.create_order",
        "input": { "customer_id": "C-8", "quantity": 1 },
        "idempotency_key": "order:quote-8",
    });
    let (status, again) = sb.api.post("/v1/callouts", &in_body).await;
    assert_eq!(
        (status, &again["id"]),
        (StatusCode::OK, &json!(id)),
        "{again}"
    );

    let (status, conflict) = sb.api.post_raw("/v1/callouts", body(3), &header).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    assert_eq!(conflict["error"]["details"]["existing_id"], id.as_str());

    sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(upstream.requests()[0].key(), Some("order:quote-8"));
    assert_eq!(upstream.count(), 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cap_bounds_the_calls_in_flight() {
    const CALLOUTS: usize = 300;
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "pong": true })).hold(Duration::from_millis(200)))
            .await;
    let sb = TestServer::start(&[shop(&upstream)]).await;
    assert_eq!(
        sb.server.engine.config().max_concurrent_callouts,
        25,
        "the default cap"
    );

    let items: Vec<Value> = (0..CALLOUTS)
        .map(|_| json!({ "function": "shop.ping" }))
        .collect();
    let ids = sb.api.enqueue_batch(items).await;
    assert_eq!(ids.len(), CALLOUTS);
    wait_for_succeeded(&sb.api, CALLOUTS, Duration::from_secs(60)).await;

    let all = sb.api.list_all(2).await;
    assert_eq!(all.len(), CALLOUTS);
    assert!(
        all.iter().all(|c| c["status"] == "succeeded"),
        "every callout succeeded"
    );
    assert_eq!(upstream.count(), CALLOUTS, "one request per callout");
    let peak = upstream.peak_inflight();
    assert!(
        peak <= 25,
        "the upstream held {peak} calls at once, over the cap of 25"
    );
    assert!(
        peak >= 20,
        "the upstream held at most {peak} calls at once; the cap of 25 was not used"
    );
    sb.stop().await;
}

/// Waits until the metrics count `n` succeeded callouts.
async fn wait_for_succeeded(api: &Api, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = api
            .metric("switchboard_callouts{status=\"succeeded\"}")
            .await
            .unwrap_or(0.0);
        if done as usize >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} callouts succeeded within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_limit_bounds_requests_in_every_second() {
    const CALLOUTS: usize = 40;
    let upstream = Upstream::ok().await;
    let limits = "{ rate: 10/s, burst: 5, timeout: 5s, connect_timeout: 1s }";
    let sb = TestServer::start(&[shop_with(&upstream, limits, "")]).await;

    let items: Vec<Value> = (0..CALLOUTS)
        .map(|_| json!({ "function": "shop.ping" }))
        .collect();
    let ids = sb.api.enqueue_batch(items).await;
    sb.api
        .wait_all(&ids, "succeeded", Duration::from_secs(30))
        .await;

    let arrivals: Vec<Instant> = upstream.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), CALLOUTS);
    let busiest = crate::support::upstream::most_within_a_second(&arrivals);
    assert!(
        busiest <= 15,
        "{busiest} requests within one second; the limit is 10/s with a burst of 5"
    );
    let span = arrivals[CALLOUTS - 1].duration_since(arrivals[0]);
    assert!(
        span >= Duration::from_millis(3000),
        "{CALLOUTS} requests took only {span:?}; at 10/s after a burst of 5 they need about 3.5 s"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_each_item_in_order_and_runs_the_valid_ones() {
    let upstream = Upstream::start(order_reply).await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let batch = json!({ "callouts": [
        { "function": "shop.create_order", "input": { "customer_id": "C-1", "quantity": 1 }, "idempotency_key": "batch-1" },
        { "function": "shop.create_ordr", "input": {} },
        { "function": "shop.create_order", "input": { "customer_id": "C-2" } },
        { "function": "shop.ping", "inpt": {} },
        { "function": "shop.ping" },
        42,
        { "function": "shop.create_order", "input": { "quantity": 1, "customer_id": "C-1" }, "idempotency_key": "batch-1" },
        { "function": "shop.create_order", "input": { "customer_id": "C-1", "quantity": 5 }, "idempotency_key": "batch-1" },
    ]});
    let (status, answer) = sb.api.post("/v1/callouts/batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 8, "{answer:#}");
    assert_eq!(results[0]["callout"]["idempotency_key"], "batch-1");
    assert_eq!(results[0]["callout"]["status"], "queued");
    assert_eq!(
        results[1],
        json!({ "error": {
            "code": "unknown_function",
            "message": "no function `shop.create_ordr`; GET /v1/functions lists them",
            "details": null,
        }})
    );
    assert_eq!(results[2]["error"]["code"], "invalid_input");
    assert_eq!(
        results[2]["error"]["details"],
        json!([{ "pointer": "/input", "message": "\"quantity\" is a required property" }])
    );
    assert_eq!(
        results[3],
        json!({ "error": {
            "code": "invalid_request",
            "message": "item 3 does not fit: unknown field `inpt`, expected one of `function`, `input`, `idempotency_key`, `wait`, `run_at`",
            "details": null,
        }})
    );
    assert_eq!(results[4]["callout"]["function"], "shop.ping");
    assert_eq!(
        results[5],
        json!({ "error": {
            "code": "invalid_request",
            "message": "item 5 is not a JSON object",
            "details": null,
        }})
    );
    // The same key within one batch: the same input finds item 0, another input conflicts.
    assert_eq!(results[6]["callout"]["id"], results[0]["callout"]["id"]);
    assert_eq!(
        results[7],
        json!({ "error": {
            "code": "idempotency_conflict",
            "message": "this idempotency key was used with another function or input",
            "details": { "existing_id": results[0]["callout"]["id"] },
        }})
    );

    let ids: Vec<String> = [&results[0], &results[4]]
        .iter()
        .map(|r| r["callout"]["id"].as_str().expect("id").to_string())
        .collect();
    sb.api.wait_all(&ids, "succeeded", DEADLINE).await;
    let all = sb.api.list_all(1).await;
    assert_eq!(all.len(), 2, "only the valid items were stored: {all:#?}");
    assert_eq!(upstream.count(), 2);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    const BODY_LIMIT: usize = 4096;
    let upstream = Upstream::start(order_reply).await;
    let sb =
        TestServer::start_with(&[shop(&upstream)], |config| config.body_limit = BODY_LIMIT).await;
    let api = &sb.api;
    let error = |code: &str, message: &str, details: Value| json!({ "error": { "code": code, "message": message, "details": details } });

    let (status, body) = api
        .post_raw("/v1/callouts", "{\"function\": \"shop.ping\"", &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        error(
            "invalid_json",
            "the body is not valid JSON: EOF while parsing an object at line 1 column 24",
            Value::Null
        )
    );

    let (status, body) = api
        .post(
            "/v1/callouts",
            &json!({ "function": "shop.ping", "wait": 10 }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        error(
            "invalid_request",
            "the body does not fit this route: invalid type: integer `10`, expected a string",
            Value::Null
        )
    );

    let (status, body) = api
        .post("/v1/callouts", &json!({ "function": "shop.nope" }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        error(
            "unknown_function",
            "no function `shop.nope`; GET /v1/functions lists them",
            Value::Null
        )
    );

    let bad_input = json!({ "function": "shop.create_order", "input": { "customer_id": 7, "quantity": "two" } });
    let (status, body) = api.post("/v1/callouts", &bad_input).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid_input");
    assert_eq!(
        body["error"]["details"],
        json!([
            { "pointer": "/input/customer_id", "message": "7 is not of type \"string\"" },
            { "pointer": "/input/quantity", "message": "\"two\" is not of type \"integer\"" },
        ])
    );
    assert_eq!(
        body["error"]["message"],
        "the input does not match the function's input schema (2 problem(s); first: /input/customer_id: 7 is not of type \"string\")"
    );

    let big = json!({ "function": "shop.ping", "input": { "note": "x".repeat(BODY_LIMIT) } });
    let (status, body) = api.post("/v1/callouts", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body,
        error(
            "body_too_large",
            "the request body is over the limit of 4096 bytes",
            Value::Null
        )
    );

    let anonymous = Api::new(api.base.clone(), None);
    let (status, body) = anonymous
        .post("/v1/callouts", &json!({ "function": "shop.ping" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        error(
            "unauthenticated",
            "missing caller key; send `Authorization: Bearer KEY`",
            Value::Null
        )
    );
    let stranger = Api::new(api.base.clone(), Some("not-the-key"));
    let (status, body) = stranger.get("/v1/functions").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        error("forbidden", "the caller key is not accepted", Value::Null)
    );
    assert_ne!(KEY, "not-the-key");

    assert_eq!(upstream.count(), 0, "nothing refused reached the upstream");
    assert!(
        api.list_all(1).await.is_empty(),
        "nothing refused was stored"
    );
    let id = api
        .enqueue(
            "shop.create_order",
            json!({ "customer_id": "C-9", "quantity": 1 }),
        )
        .await;
    let done = api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    assert_eq!(done["result"]["data"]["order_id"], "SO-C-9");
    sb.stop().await;
}

/// A function that a later version of the metadata removes.
const RETIRED: &str = "  retired:\n    method: POST\n    path: /retired\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_is_refused_with_its_problems_and_the_old_metadata_keeps_running() {
    let upstream = Upstream::ok().await;
    let sb = TestServer::start(&[shop(&upstream)]).await;

    let broken = "connection: broken\ntype: rest\nendpoint: https://broken.example.com\nlimits:\n  rate: ten per second\n";
    sb.rewrite_metadata(&[
        shop_with(&upstream, DEFAULT_LIMITS, RETIRED),
        ("broken.yaml", broken.to_string()),
    ]);
    let (status, body) = post_status(&sb.api, "/v1/admin/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let file = sb.metadata_file("broken.yaml").display().to_string();
    assert_eq!(
        body,
        json!({ "error": {
            "code": "invalid_metadata",
            "message": "the metadata has 1 problem(s); the engine keeps running on the last good version",
            "details": [format!(
                "{file}:5:9: connections.broken.limits.rate: \"ten per second\" is not a rate; expected <number>/<s|min|h>, like \"10/s\""
            )],
        }})
    );

    // Still the old version: its functions run, the new file's function is unknown.
    let id = sb.api.enqueue("shop.ping", json!({})).await;
    sb.api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    let (status, body) = sb
        .api
        .post("/v1/callouts", &json!({ "function": "shop.retired" }))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("unknown_function"))
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_callout_of_a_function_removed_by_reload_fails_with_a_config_error() {
    let upstream = Upstream::ok().await;
    let sb = TestServer::start(&[shop_with(&upstream, DEFAULT_LIMITS, RETIRED)]).await;

    let id = sb
        .api
        .enqueue_body(
            &json!({ "function": "shop.retired", "run_at": rfc3339_in(Duration::from_secs(2)) }),
        )
        .await;
    sb.rewrite_metadata(&[shop(&upstream)]);
    let (status, body) = post_status(&sb.api, "/v1/admin/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "status": "reloaded", "connections": 1 }));
    assert_eq!(
        sb.api.callout(&id).await["status"],
        "queued",
        "still queued at the reload"
    );

    let done = sb.api.wait_for_status(&id, &["failed"], DEADLINE).await;
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "config",
            "message": "function `shop.retired` no longer exists in the metadata; restore it and replay the callout",
            "retryable": false,
        })
    );
    assert_eq!(done["attempts"], 1);
    assert_eq!(upstream.count(), 0);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_metrics_count_callouts() {
    let upstream = Upstream::ok().await;
    let sb = TestServer::start(&[shop(&upstream)]).await;
    let anonymous = Api::new(sb.api.base.clone(), None);

    let (status, body) = anonymous.get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
    let (status, body) = anonymous.get("/readyz").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "status": "ready" }))
    );

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(sb.api.enqueue("shop.ping", json!({})).await);
    }
    sb.api.wait_all(&ids, "succeeded", DEADLINE).await;
    let (status, text) = anonymous.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let value = |series: &str| crate::support::engine::metric_value(&text, series);
    assert_eq!(
        value("switchboard_callouts_total{function=\"shop.ping\",status=\"succeeded\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(value("switchboard_inflight"), Some(0.0), "{text}");
    assert_eq!(
        value("switchboard_callouts{status=\"succeeded\"}"),
        Some(3.0),
        "{text}"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_backlog_leaves_the_global_cap_to_other_connections() {
    let upstream = Upstream::start(|seen| {
        let reply = Reply::ok(json!({ "pong": true }));
        if seen.path.starts_with("/fast") {
            reply.hold(Duration::from_millis(300))
        } else {
            reply
        }
    })
    .await;
    let slow = shop_with(
        &upstream,
        "{ rate: 0.5/s, burst: 1, timeout: 5s, connect_timeout: 1s }",
        "",
    );
    let fast = shop(&upstream)
        .1
        .replace("connection: shop", "connection: fast")
        .replace("/shop", "/fast");
    let sb = TestServer::start(&[slow, ("fast.yaml", fast)]).await;

    // A backlog on `shop`, which may make one call every 2 s.
    let backlog: Vec<Value> = (0..30)
        .map(|_| json!({ "function": "shop.ping" }))
        .collect();
    sb.api.enqueue_batch(backlog).await;
    let items: Vec<Value> = (0..20)
        .map(|_| json!({ "function": "fast.ping" }))
        .collect();
    let started = Instant::now();
    let ids = sb.api.enqueue_batch(items).await;
    sb.api
        .wait_all(&ids, "succeeded", Duration::from_secs(60))
        .await;
    let took = started.elapsed();
    // With the cap free for calls (not for callouts waiting for a token), the 20 calls of 300 ms
    // to `fast` run at once.
    assert!(
        took < Duration::from_secs(2),
        "20 callouts of an unlimited connection took {took:?} beside a rate-limited backlog; \
         the upstream held at most {} calls at once",
        upstream.peak_inflight()
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_keeps_running_after_a_claim_outwaits_its_lease() {
    use switchboard::engine::{Accepted, CalloutRequest, Engine, EngineConfig};
    use switchboard::metadata::Loader;
    use switchboard::queue::{SqliteStore, Store};

    // The first request gets 429 with `Retry-After: 1`. The other callout, claimed beside it
    // and waiting for the connection's single slot and then for the pause, waits longer than
    // its lease and is reclaimed; its task is then fenced.
    let throttle = Arc::new(AtomicBool::new(true));
    let upstream = Upstream::start(move |_| {
        if throttle.swap(false, Ordering::SeqCst) {
            Reply::json(429, json!({ "error": "slow down" })).header("retry-after", "1")
        } else {
            Reply::ok(json!({ "pong": true }))
        }
    })
    .await;
    let metadata = tempfile::tempdir().expect("temp folder");
    let limits = "{ concurrency: 1, timeout: 100ms, connect_timeout: 100ms }";
    let (name, text) = shop_with(&upstream, limits, "");
    std::fs::write(metadata.path().join(name), text).expect("write metadata");
    let data = tempfile::tempdir().expect("temp folder");
    let store = SqliteStore::open(&format!("sqlite://{}", data.path().join("sb.db").display()))
        .await
        .expect("open the store");
    let store: Arc<dyn Store> = Arc::new(store);
    // `server::start` has no lease setting; the engine's own config shortens the lease (60 s
    // by default) so that the test takes seconds. A wait of over a minute does the same.
    let config = EngineConfig {
        metadata_dir: metadata.path().to_path_buf(),
        min_lease: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, store, Loader::new())
        .await
        .expect("the engine starts");
    let request = CalloutRequest {
        function: "shop.ping".to_string(),
        input: json!({}),
        idempotency_key: None,
        run_at: None,
    };
    let answers = engine
        .enqueue(vec![request.clone(), request])
        .await
        .expect("enqueue");
    let ids: Vec<String> = answers
        .into_iter()
        .map(|a| match a {
            Ok(Accepted::Created(c)) => c.id,
            other => panic!("not created: {other:?}"),
        })
        .collect();
    let mut report = Vec::new();
    for id in &ids {
        let callout = engine
            .wait(id, Duration::from_secs(5))
            .await
            .expect("read")
            .expect("stored");
        let journal = engine.store().attempts(id).await.expect("journal");
        let kinds: Vec<Option<String>> = journal.into_iter().map(|a| a.error_kind).collect();
        report.push((callout.status.as_str(), kinds));
    }
    engine.shutdown().await;
    assert!(
        report.iter().all(|(status, _)| *status == "succeeded"),
        "(status, journal error kinds) of each callout: {report:?}; the upstream saw {} request(s)",
        upstream.count()
    );
}
