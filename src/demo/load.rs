//! The demo's load: which callouts it asks for, and enqueueing them over the HTTP API.
//!
//! [`plan`] is pure: a repeating pattern of 20 callouts over the four demo services (orders,
//! stock look-ups, flaky shipments, throttled loyalty credits, and one order with quantity 0
//! that the shop refuses). [`enqueue`] sends the first callouts as one batch POST and the rest
//! as single POSTs, over a fixed number of client connections. Every loop is bounded by the
//! number of callouts, every request by a timeout, and retries of a busy API by a count.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Longest wait for one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one request the API answered `503 unavailable` (the queue was busy).
const TRIES: u32 = 3;
/// Pause before trying a request the API answered 503 again, times the try number.
const BUSY_BACKOFF: Duration = Duration::from_millis(200);
/// The most callouts the batch POST carries.
const MAX_BATCH: usize = 50;

/// What a planned callout is meant to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An order the shop accepts.
    Order,
    /// A stock look-up, through the warehouse's rate limit.
    Stock,
    /// A shipment: the carrier answers 503 once, then books it.
    Shipment,
    /// Loyalty points: the service answers 429 with `Retry-After: 1` once, then credits them.
    Points,
    /// An order with quantity 0: the shop answers 400, the callout ends as a dead letter.
    BadOrder,
}

/// The repeating pattern of the load: most calls succeed at once, some are retried, one in
/// twenty fails.
const PATTERN: [Kind; 20] = {
    use Kind::*;
    [
        Order, Stock, Order, Shipment, Order, Stock, Points, Order, Stock, Shipment, Order,
        BadOrder, Stock, Order, Shipment, Order, Stock, Points, Order, Order,
    ]
};

const SKUS: [&str; 6] = [
    "TSHIRT-M",
    "HOODIE-L",
    "MUG-350",
    "CAP-BLK",
    "SOCKS-42",
    "POSTER-A2",
];

/// One callout the demo enqueues.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub kind: Kind,
    /// `connection.function`.
    pub function: &'static str,
    pub input: Value,
    pub idempotency_key: String,
}

impl Planned {
    /// The body of `POST /v1/callouts`, and of one item of a batch.
    pub fn body(&self) -> Value {
        json!({
            "function": self.function,
            "input": self.input,
            "idempotency_key": self.idempotency_key,
        })
    }
}

/// `n` callouts in the demo's pattern, each with its own idempotency key.
pub fn plan(n: usize) -> Vec<Planned> {
    (0..n)
        .map(|i| {
            let kind = PATTERN[i % PATTERN.len()];
            let customer = format!("C-{:05}", 10_000 + (i * 7) % 90_000);
            let sku = SKUS[i % SKUS.len()];
            let (function, input) = match kind {
                Kind::Order | Kind::BadOrder => {
                    let quantity = if kind == Kind::BadOrder { 0 } else { 1 + i % 4 };
                    (
                        "webshop.create_order",
                        json!({ "customer_id": customer, "sku": sku, "quantity": quantity }),
                    )
                }
                Kind::Stock => {
                    let warehouse = if i % 2 == 0 { "BER-1" } else { "HAM-2" };
                    (
                        "warehouse.check_stock",
                        json!({ "sku": sku, "warehouse": warehouse }),
                    )
                }
                Kind::Shipment => (
                    "shipping.create_shipment",
                    json!({ "order_ref": format!("CRM-Q-{:05}", i), "service": "standard" }),
                ),
                Kind::Points => (
                    "loyalty.award_points",
                    json!({ "customer_id": customer, "points": 10 + i % 90 }),
                ),
            };
            Planned {
                kind,
                function,
                input,
                idempotency_key: format!("demo-{i:05}"),
            }
        })
        .collect()
}

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
enum Work {
    Batch(Range<usize>),
    Single(usize),
}

/// How the callouts were sent, and what the API answered for each.
#[derive(Debug, Default)]
pub struct Sent {
    /// By position in the plan: the callout's id, or why it was not enqueued.
    pub ids: Vec<Result<String, String>>,
    /// Callouts sent in the batch POST.
    pub batched: usize,
    /// Callouts sent one per POST.
    pub single: usize,
    /// Requests the API answered `503 unavailable` and were sent again.
    pub busy_retries: usize,
}

/// Where to send, as whom.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    /// Like `http://127.0.0.1:8080`.
    pub base: String,
    pub key: String,
}

impl Api {
    /// A client for up to `connections` connections at once, each request bounded in time.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(base: String, key: String, connections: usize) -> Result<Api, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(connections)
            .build()?;
        Ok(Api { client, base, key })
    }

    /// POSTs `body` to `path`, trying again (a bounded number of times) while the API says it
    /// is busy. Returns the answer's status and JSON body.
    async fn post(
        &self,
        path: &str,
        body: &Value,
        busy: &AtomicUsize,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let mut tries = 0;
        loop {
            tries += 1;
            let response = self
                .client
                .post(&url)
                .bearer_auth(&self.key)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("POST {path} failed: {e}"))?;
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .map_err(|e| format!("POST {path}: reading the answer failed: {e}"))?;
            if status == 503 && tries < TRIES {
                busy.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(BUSY_BACKOFF * tries).await;
                continue;
            }
            let json = serde_json::from_str(&text).map_err(|_| {
                format!("POST {path} answered {status} with a body that is not JSON: {text:.200}")
            })?;
            return Ok((status, json));
        }
    }
}

/// The API's error body as one line: `HTTP 422 invalid_input: ...`.
fn api_error(status: u16, body: &Value) -> String {
    let error = &body["error"];
    format!(
        "HTTP {status} {}: {}",
        error["code"].as_str().unwrap_or("?"),
        error["message"].as_str().unwrap_or("(no message)")
    )
}

/// The id of a callout in an answer, or why there is none.
fn callout_id(status: u16, callout: &Value, whole: &Value) -> Result<String, String> {
    match callout["id"].as_str() {
        Some(id) if (200..300).contains(&status) => Ok(id.to_string()),
        _ => Err(api_error(status, whole)),
    }
}

async fn send(
    api: &Api,
    plan: &[Planned],
    work: Work,
    busy: &AtomicUsize,
) -> Vec<(usize, Result<String, String>)> {
    match work {
        Work::Single(i) => {
            let answer = match api.post("/v1/callouts", &plan[i].body(), busy).await {
                Ok((status, body)) => callout_id(status, &body, &body),
                Err(e) => Err(e),
            };
            vec![(i, answer)]
        }
        Work::Batch(range) => {
            let items: Vec<Value> = plan[range.clone()].iter().map(Planned::body).collect();
            let answer = api
                .post("/v1/callouts/batch", &json!({ "callouts": items }), busy)
                .await;
            let results = match answer {
                Ok((200, body)) => body["results"].as_array().cloned().unwrap_or_default(),
                Ok((status, body)) => {
                    let why = api_error(status, &body);
                    return range.map(|i| (i, Err(why.clone()))).collect();
                }
                Err(why) => return range.map(|i| (i, Err(why.clone()))).collect(),
            };
            range
                .enumerate()
                .map(|(n, i)| {
                    let item = results.get(n).cloned().unwrap_or(Value::Null);
                    let answer = if item.get("callout").is_some() {
                        callout_id(200, &item["callout"], &item)
                    } else if item.get("error").is_some() {
                        Err(api_error(200, &item))
                    } else {
                        Err(format!("the batch answer has no result for item {n}"))
                    };
                    (i, answer)
                })
                .collect()
        }
    }
}

/// Enqueues `plan` over `connections` client connections: the first callouts (up to 50, a
/// fifth of the plan) in one batch POST, the others one per POST. `sent` counts the callouts
/// answered so far, for progress.
pub async fn enqueue(
    api: Api,
    plan: Arc<Vec<Planned>>,
    connections: usize,
    sent: Arc<AtomicUsize>,
) -> Sent {
    let batched = (plan.len() / 5).min(MAX_BATCH);
    let mut queue: VecDeque<Work> = VecDeque::with_capacity(plan.len() - batched + 1);
    if batched > 0 {
        queue.push_back(Work::Batch(0..batched));
    }
    queue.extend((batched..plan.len()).map(Work::Single));
    let queue = Arc::new(Mutex::new(queue));
    let busy = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..connections.max(1) {
        let (api, plan, queue, busy, sent) = (
            api.clone(),
            plan.clone(),
            queue.clone(),
            busy.clone(),
            sent.clone(),
        );
        workers.spawn(async move {
            let mut answers = Vec::new();
            // Each turn takes one item off a queue nothing adds to: bounded by its length.
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(work) = next else { break };
                let done = send(&api, &plan, work, &busy).await;
                sent.fetch_add(done.len(), Ordering::SeqCst);
                answers.extend(done);
            }
            answers
        });
    }
    let mut ids: Vec<Result<String, String>> =
        vec![Err("never sent (a client task failed)".to_string()); plan.len()];
    while let Some(joined) = workers.join_next().await {
        if let Ok(answers) = joined {
            for (i, answer) in answers {
                ids[i] = answer;
            }
        }
    }
    Sent {
        ids,
        batched,
        single: plan.len() - batched,
        busy_retries: busy.load(Ordering::SeqCst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_mixes_every_kind_in_the_pattern_s_proportions() {
        let plan = plan(300);
        let count = |kind| plan.iter().filter(|p| p.kind == kind).count();
        assert_eq!(count(Kind::Order), 135);
        assert_eq!(count(Kind::Stock), 75);
        assert_eq!(count(Kind::Shipment), 45);
        assert_eq!(count(Kind::Points), 30);
        assert_eq!(count(Kind::BadOrder), 15);
    }

    #[test]
    fn even_a_small_plan_has_a_retry_and_a_dead_letter() {
        let plan = plan(20);
        assert!(plan.iter().any(|p| p.kind == Kind::Shipment));
        assert!(plan.iter().any(|p| p.kind == Kind::Points));
        assert!(plan.iter().any(|p| p.kind == Kind::BadOrder));
    }

    #[test]
    fn idempotency_keys_are_unique() {
        let plan = plan(1000);
        let keys: std::collections::HashSet<&str> =
            plan.iter().map(|p| p.idempotency_key.as_str()).collect();
        assert_eq!(keys.len(), 1000);
    }

    #[test]
    fn a_bad_order_has_quantity_zero() {
        let plan = plan(20);
        let bad = plan
            .iter()
            .find(|p| p.kind == Kind::BadOrder)
            .expect("a bad order");
        assert_eq!(bad.function, "webshop.create_order");
        assert_eq!(bad.input["quantity"], 0);
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let body =
            json!({ "error": { "code": "invalid_input", "message": "no good", "details": null } });
        assert_eq!(api_error(422, &body), "HTTP 422 invalid_input: no good");
        assert_eq!(api_error(502, &json!({})), "HTTP 502 ?: (no message)");
    }
}
