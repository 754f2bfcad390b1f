//! A CRM trigger calling Switchboard over HTTP: enqueue one callout, poll it to its end.
//!
//! Shows what a trigger on a CRM record does (an Apex trigger, a Dynamics plug-in, a Bitrix24
//! webhook handler): it enqueues a callout with an idempotency key derived from the record id
//! and the function, so the trigger firing twice for the same change — or retrying after a lost
//! answer — cannot create a second callout. It retries the enqueue itself only when that is
//! safe (no answer, or `503`), with the same key. Then it polls `GET /v1/callouts/{id}` a
//! bounded number of times, a short interval apart, until the status is final.
//!
//! Run: start a server, then run the trigger against it.
//!
//! ```text
//! cargo run -- demo --keep-running      # prints the API's address and a caller key
//! cargo run --example crm_trigger -- --server http://127.0.0.1:PORT --key KEY \
//!     --function webshop.create_order \
//!     --input '{"customer_id": "C-10042", "sku": "CHAIR-OAK-01", "quantity": 2}' \
//!     --record-id 0Q05g00000AbCdE
//! ```
//!
//! `switchboard serve --dev --metadata metadata/demo` works too (no `--key` needed), but
//! nothing answers at the demo services' placeholder address there, so the callout retries
//! connect errors and ends `failed`. Other functions of the demo: `shipping.create_shipment`
//! (`{"order_ref": "SO-100042"}`; its flaky carrier needs one retry), `warehouse.check_stock`
//! (`{"sku": "CHAIR-OAK-01"}`), `loyalty.award_points`
//! (`{"customer_id": "C-10042", "points": 40}`; throttled once with `Retry-After: 1`). A
//! `quantity` of 0 for `webshop.create_order` passes the input schema but the shop answers 400:
//! a dead letter. `--help` lists every flag (the key may also come from `SWITCHBOARD_API_KEY`).
//!
//! Prints the idempotency key, whether the callout is new (`202`) or was enqueued before with
//! the same key and input (`200`), each status it is seen in, then the final callout as JSON:
//!
//! ```text
//! enqueueing webshop.create_order with idempotency key webshop.create_order:0Q05g00000AbCdE
//! new callout 019ac0f4-6e2b-7d41-8a3c-5b9e2f1d7c60 (202 Accepted)
//! poll 1: queued
//! poll 2: succeeded after 1 attempt(s)
//! {
//!   "attempts": 1,
//!   ...
//! }
//! ```
//!
//! Exits 0 when the callout succeeded, 1 otherwise: it failed or was cancelled, it had not
//! ended after the last poll, the server refused the request, or it could not be reached.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Enqueue one callout as a CRM trigger would, then poll it until it ends.
#[derive(Parser)]
struct Args {
    /// The Switchboard server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Caller key (not needed when the server runs with --dev).
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// `connection.function` to call.
    #[arg(long, default_value = "webshop.create_order")]
    function: String,
    /// The input, a JSON object.
    #[arg(
        long,
        default_value = r#"{"customer_id": "C-10042", "sku": "CHAIR-OAK-01", "quantity": 2}"#
    )]
    input: String,
    /// The id of the CRM record whose change fired the trigger.
    #[arg(long, default_value = "0Q05g00000AbCdE")]
    record_id: String,
    /// How many times to read the callout before giving up.
    #[arg(long, default_value_t = 40)]
    polls: u32,
    /// Pause between reads, in milliseconds.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
}

/// Attempts at enqueueing, when the server could not answer or asked to retry.
const ENQUEUE_TRIES: u32 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // `--help` and `--version` are not failures; bad arguments are.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Enqueues, polls and prints; `Ok(true)` when the callout succeeded.
async fn run(args: &Args) -> Result<bool, String> {
    let input: Value =
        serde_json::from_str(&args.input).map_err(|e| format!("--input is not valid JSON: {e}"))?;
    let base = args.server.trim_end_matches('/');
    // Bounded like any call a trigger makes: a hung server must not hang the CRM transaction.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;

    // One key per record and function: the same change enqueued twice is one callout.
    let key = format!("{}:{}", args.function, args.record_id);
    println!("enqueueing {} with idempotency key {key}", args.function);
    let body = json!({ "function": args.function, "input": input, "idempotency_key": key });
    let callout = enqueue(&client, base, args.key.as_deref(), &body).await?;
    let id = text_field(&callout, "id")?;

    let mut last_status = String::new();
    for poll in 1..=args.polls {
        let callout = get_callout(&client, base, args.key.as_deref(), &id).await?;
        let status = text_field(&callout, "status")?;
        let is_final = matches!(status.as_str(), "succeeded" | "failed" | "cancelled");
        if is_final {
            let attempts = callout.get("attempts").and_then(Value::as_u64).unwrap_or(0);
            println!("poll {poll}: {status} after {attempts} attempt(s)");
            println!("{}", pretty(&callout));
            return Ok(status == "succeeded");
        }
        if status != last_status {
            println!("poll {poll}: {status}");
            last_status = status;
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    println!(
        "callout {id} had not ended after {} polls; read it later with GET {base}/v1/callouts/{id}",
        args.polls
    );
    Ok(false)
}

/// `POST /v1/callouts`, retried with the same idempotency key when the server could not answer
/// or answered 503. Returns the callout (new or existing).
async fn enqueue(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
    body: &Value,
) -> Result<Value, String> {
    let url = format!("{base}/v1/callouts");
    let mut tries = 0;
    loop {
        tries += 1;
        let mut request = client.post(&url).json(body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if tries < ENQUEUE_TRIES => {
                // The callout may or may not be stored; the key makes sending it again safe.
                eprintln!("no answer from {url} ({err}); trying again with the same key");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(format!("cannot reach {url}: {err}")),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .min(10);
        let answer = read_json(response).await?;
        match status {
            StatusCode::ACCEPTED => {
                println!("new callout {} (202 Accepted)", text_field(&answer, "id")?);
                return Ok(answer);
            }
            StatusCode::OK => {
                println!(
                    "callout {} was enqueued before with this key and input (200 OK)",
                    text_field(&answer, "id")?
                );
                return Ok(answer);
            }
            StatusCode::SERVICE_UNAVAILABLE if tries < ENQUEUE_TRIES => {
                eprintln!("the server is busy (503); trying again in {retry_after} s");
                tokio::time::sleep(Duration::from_secs(retry_after)).await;
            }
            _ => return Err(api_error(status, &answer)),
        }
    }
}

/// `GET /v1/callouts/{id}`.
async fn get_callout(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
    id: &str,
) -> Result<Value, String> {
    let url = format!("{base}/v1/callouts/{id}");
    let mut request = client.get(&url);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let answer = read_json(response).await?;
    if status == StatusCode::OK {
        Ok(answer)
    } else {
        Err(api_error(status, &answer))
    }
}

/// The body as JSON, or `null` when it is empty or not JSON (a proxy's error page, a 405).
async fn read_json(response: reqwest::Response) -> Result<Value, String> {
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The API's error (`{"error": {"code", "message", "details"}}`) as one line.
fn api_error(status: StatusCode, answer: &Value) -> String {
    let error = answer.get("error");
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let details = match error.and_then(|e| e.get("details")) {
        Some(Value::Null) | None => String::new(),
        Some(details) => format!("; details: {details}"),
    };
    format!("the server answered {status}: {code}: {message}{details}")
}

/// A string field of an answer, or why the answer is not what the API promises.
fn text_field(value: &Value, field: &str) -> Result<String, String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("the answer has no `{field}`: {value}"))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
