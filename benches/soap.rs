//! SOAP callouts through the engine against a plain client posting the same envelopes.
//!
//! Run: `cargo bench --bench soap` (a full run: about a minute on 2 cores), or
//! `cargo bench --bench soap -- --quick` (a smoke run: N=200, one run; nothing asserted but
//! that every callout succeeds). Options after `--`: `--n N` (default 3000), `--runs R`
//! (default 3; the table shows medians). The runs go to `target/bench-soap.json`.
//!
//! Everything stays on loopback and every wait is bounded by a deadline. For each latency:
//!
//! - the upstream, in this process (axum on 127.0.0.1), answers `POST /soap` with one fixed
//!   SOAP 1.1 response envelope after the latency, reading nothing of the request but its
//!   `SOAPAction` and `Idempotency-Key` headers (a Python server would be the bottleneck for
//!   both sides and measure Python); it also answers `POST /orders` with fixed JSON, for the
//!   REST comparison;
//! - **ceiling**: one reqwest client with exactly 25 requests in flight posts N envelopes —
//!   the bytes and headers (`Content-Type`, `SOAPAction`, `Idempotency-Key`) the SOAP wrapper
//!   sends — and reads nothing of the answer but its status;
//! - **soap**: a Switchboard started through `server::start` (the serve path: HTTP API,
//!   durable SQLite queue on a fresh file under `target/bench-soap-tmp/`, dispatcher with the
//!   global cap of 25, the SOAP wrapper with a body template, an output mapping and an output
//!   schema) receives N single `POST /v1/callouts` from a client with 25 connections; the
//!   clock runs from the first POST until the store says all N are over. All N must have
//!   succeeded, the upstream must have seen N requests, and one result is checked;
//! - **rest**: the same with a REST connection of the same shape (JSON body template, the same
//!   output mapping), so the difference in CPU per callout is the SOAP path's own cost.
//!
//! Unlike `benches/pipeline.rs`, Switchboard runs in this process (a bench cannot import
//! another bench's child-process harness), on a Tokio runtime of its own whose threads are
//! named `sb-worker`; the load client and upstream run on `bench-worker` threads. CPU time per
//! callout comes from `/proc/self/task/*/schedstat`, grouped by those names (plus the SQLite
//! writer and reader threads), and the cores other processes kept busy are reported as noise.
//! Then the response envelope is parsed and turned into JSON (`wrapper::xml`) in a tight loop,
//! for the share of XML parsing in the SOAP path's cost.
//!
//! With `SWITCHBOARD_SOAP_URL` set (the spyne server `scripts/test` starts), a last phase runs
//! the ceiling and the soap phase against spyne's `Greet` operation (N/3 calls, no latency
//! added) and reports them apart: that measures spyne, not Switchboard.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use switchboard::controller::CallerAuth;
use switchboard::metadata::Loader;
use switchboard::server::{self, ServerConfig};
use switchboard::wrapper::xml;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use support::{CONCURRENCY, KEY, LOOPBACK, http_client, median, with_runtimes, workers};

mod support;

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const ACTION: &str = "\"CreateOrder\"";
/// Upstream latencies, ms.
const LATENCIES: [u64; 2] = [0, 50];

/// The answer of `POST /soap`, the same for every call.
const RESPONSE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><tns:CreateOrderResponse xmlns:tns="urn:switchboard:bench"><tns:CreateOrderResult><tns:order_id>SO-1</tns:order_id><tns:status>accepted</tns:status><tns:total>12.50</tns:total></tns:CreateOrderResult></tns:CreateOrderResponse></soap:Body></soap:Envelope>"#;

/// The body the SOAP function's template renders for callout `i` (kept on one line so the
/// template and this function agree byte for byte).
fn soap_body(i: usize) -> String {
    format!(
        r#"<o:CreateOrder xmlns:o="urn:switchboard:bench"><o:customer>C-{i}</o:customer><o:quantity>1</o:quantity></o:CreateOrder>"#
    )
}

/// The envelope the SOAP wrapper posts for callout `i` (SOAP 1.1, no WS-Security).
fn envelope(i: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body>{}</soap:Body></soap:Envelope>",
        soap_body(i)
    )
}

/// The envelope the spyne connection's template renders for callout `i`.
fn greet_envelope(i: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:Greet xmlns:c=\"urn:switchboard:test:crm\"><c:name>C-{i}</c:name><c:times>1</c:times></c:Greet></soap:Body></soap:Envelope>"
    )
}

/// The `bench` connection: `soap` or `rest`, the same function on the same upstream.
fn metadata(kind: &str, upstream: &str) -> String {
    let shape = r#"    input_schema:
      type: object
      required: [customer, quantity]
      properties:
        customer: { type: string }
        quantity: { type: integer, minimum: 1 }
    output_schema:
      type: object
      required: [order_id, status, total]
      properties:
        order_id: { type: string }
        status: { type: string }
        total: { type: number }
"#;
    if kind == "soap" {
        format!(
            r#"connection: bench
type: soap
endpoint: {upstream}/soap
allow_private_network: true
limits: {{ timeout: 10s, connect_timeout: 1s }}
functions:
  create_order:
    action: CreateOrder
    body: '<o:CreateOrder xmlns:o="urn:switchboard:bench"><o:customer>{{{{ input.customer }}}}</o:customer><o:quantity>{{{{ input.quantity }}}}</o:quantity></o:CreateOrder>'
{shape}    output:
      order_id: /CreateOrderResponse/CreateOrderResult/order_id
      status: /CreateOrderResponse/CreateOrderResult/status
      total: /CreateOrderResponse/CreateOrderResult/total
"#
        )
    } else {
        format!(
            r#"connection: bench
type: rest
endpoint: {upstream}
allow_private_network: true
limits: {{ timeout: 10s, connect_timeout: 1s }}
functions:
  create_order:
    method: POST
    path: /orders
    body:
      customer: "{{{{ input.customer }}}}"
      quantity: "{{{{ input.quantity }}}}"
{shape}    output:
      order_id: /order/id
      status: /order/status
      total: /order/total
"#
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream

#[derive(Default)]
struct Stats {
    latency_ms: AtomicU64,
    hits: AtomicU64,
    /// Calls without the expected `SOAPAction` (SOAP) or without an `Idempotency-Key`.
    bad: AtomicU64,
}

async fn soap(
    State(s): State<Arc<Stats>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, &'static str) {
    let good = headers.get("soapaction").is_some_and(|v| v == ACTION)
        && headers.contains_key("idempotency-key");
    answer(&s, good).await;
    let mut out = HeaderMap::new();
    out.insert(
        "content-type",
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    (StatusCode::OK, out, RESPONSE)
}

async fn rest(State(s): State<Arc<Stats>>, headers: HeaderMap) -> axum::Json<Value> {
    answer(&s, headers.contains_key("idempotency-key")).await;
    axum::Json(json!({ "order": { "id": "SO-1", "status": "accepted", "total": 12.5 } }))
}

async fn answer(s: &Stats, good: bool) {
    if !good {
        s.bad.fetch_add(1, Ordering::SeqCst);
    }
    let latency = s.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    s.hits.fetch_add(1, Ordering::SeqCst);
}

struct Upstream {
    url: String,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Upstream {
    async fn start() -> Result<Upstream, String> {
        let stats = Arc::new(Stats::default());
        let app = Router::new()
            .route("/soap", post(soap))
            .route("/orders", post(rest))
            .with_state(stats.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
            .await
            .map_err(|e| format!("the upstream cannot listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let shutdown = async move { stopped.cancelled().await };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("the upstream failed: {err}");
            }
        });
        Ok(Upstream {
            url: format!("http://{addr}"),
            stats,
            stop,
        })
    }

    fn reset(&self, latency_ms: u64) {
        self.stats.latency_ms.store(latency_ms, Ordering::SeqCst);
        self.stats.hits.store(0, Ordering::SeqCst);
        self.stats.bad.store(0, Ordering::SeqCst);
    }

    fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::SeqCst)
    }

    fn check(&self, n: usize) -> Result<(), String> {
        let (hits, bad) = (self.hits(), self.stats.bad.load(Ordering::SeqCst));
        if hits != n as u64 || bad != 0 {
            return Err(format!(
                "the upstream saw {hits} calls ({bad} malformed); expected {n}"
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Load

fn deadline(n: usize, latency_ms: u64) -> Instant {
    let ideal = n as u64 * (latency_ms + 2) / CONCURRENCY as u64;
    Instant::now() + Duration::from_secs(60) + Duration::from_millis(ideal * 5)
}

/// The ceiling: `n` envelopes posted to `url` with 25 in flight. Adds to `row` the calls per
/// second and the CPU per call under `name`.
async fn ceiling(
    url: &str,
    (action, envelope): (&'static str, fn(usize) -> String),
    n: usize,
    latency: u64,
    (row, name): (&mut Row, &str),
) -> Result<(), String> {
    let client = http_client()?;
    let url = url.to_string();
    let cpu = Cpu::mark();
    let began = Instant::now();
    workers(n, CONCURRENCY, deadline(n, latency), move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client
                .post(&url)
                .header("content-type", "text/xml; charset=utf-8")
                .header("soapaction", action)
                .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                .body(envelope(i))
                .send()
                .await
                .map_err(|e| format!("the ceiling's call failed: {e}"))?;
            let status = response.status();
            response.bytes().await.map_err(|e| e.to_string())?;
            if status != StatusCode::OK {
                return Err(format!("the upstream answered {status}"));
            }
            Ok(())
        }
    })
    .await?;
    row.insert(
        format!("{name}_rate"),
        n as f64 / began.elapsed().as_secs_f64(),
    );
    cpu.record(row, name, n);
    Ok(())
}

/// What a Switchboard phase calls: its metadata file, the function, the i-th input, and a
/// check of one result's data.
struct Calls {
    metadata: String,
    function: &'static str,
    input: fn(usize) -> Value,
    expect: fn(&Value) -> bool,
}

/// A Switchboard started through `server::start` on `server_rt`, enqueued `n` callouts; waits
/// until all are over and checks they all succeeded and one result. `hits` reads the
/// upstream's call count, if this process can see it. Adds to `row` the callouts per second
/// and the CPU per callout (server start-up and shutdown left out) under `name`.
async fn through_switchboard(
    server_rt: &Handle,
    calls: Calls,
    n: usize,
    latency: u64,
    hits: Option<&(dyn Fn() -> u64 + Sync)>,
    (row, name): (&mut Row, &str),
) -> Result<(), String> {
    let Calls {
        function,
        input,
        expect,
        ..
    } = calls;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-soap-tmp");
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let dir = tempfile::tempdir_in(&root).map_err(|e| format!("a temp folder: {e}"))?;
    let meta = dir.path().join("metadata");
    std::fs::create_dir(&meta).map_err(|e| format!("create the metadata folder: {e}"))?;
    std::fs::write(meta.join("bench.yaml"), calls.metadata).map_err(|e| e.to_string())?;
    let db = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let mut config = ServerConfig::new(&meta, db);
    config.listen = SocketAddr::from((LOOPBACK, 0));
    config.auth = CallerAuth::Keys(Arc::new(vec![KEY.to_string()]));
    config.shutdown_grace = Duration::from_secs(5);
    config.max_concurrent_callouts = CONCURRENCY;
    // `server::start`'s future is not `Send`, so it runs on a blocking thread driving the
    // server's runtime; every task it spawns lands on that runtime.
    let rt = server_rt.clone();
    let server =
        tokio::task::spawn_blocking(move || rt.block_on(server::start(config, Loader::new())))
            .await
            .map_err(|e| format!("the server task failed: {e}"))?
            .map_err(|e| format!("the server does not start: {e}"))?;
    let base = format!("http://{}", server.addr);
    let store = server.engine.store().clone();
    let deadline = deadline(n, latency);
    let client = http_client()?;
    let first_id = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu = Cpu::mark();
    let began = Instant::now();
    let (url, noted) = (format!("{base}/v1/callouts"), first_id.clone());
    let enqueued = workers(n, CONCURRENCY, deadline, move |i| {
        let (client, url, noted) = (client.clone(), url.clone(), noted.clone());
        async move {
            let response = client
                .post(&url)
                .bearer_auth(KEY)
                .json(&json!({ "function": function, "input": input(i) }))
                .send()
                .await
                .map_err(|e| format!("POST /v1/callouts: {e}"))?;
            let status = response.status();
            let body: Value = response.json().await.map_err(|e| e.to_string())?;
            if status != StatusCode::ACCEPTED {
                return Err(format!("POST /v1/callouts answered {status}: {body}"));
            }
            if i == 0
                && let Ok(mut id) = noted.lock()
            {
                *id = body["id"].as_str().map(str::to_string);
            }
            Ok(())
        }
    })
    .await
    .map(drop);
    let mut outcome = enqueued;
    if outcome.is_ok() {
        outcome = async {
            while hits.is_some_and(|h| h() < n as u64) {
                if Instant::now() > deadline {
                    return Err(format!("deadline passed at the upstream: {n} not reached"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let counts = loop {
                let counts: BTreeMap<&str, u64> = store
                    .counts()
                    .await
                    .map_err(|e| format!("counting callouts: {e}"))?
                    .into_iter()
                    .map(|(s, c)| (s.as_str(), c))
                    .collect();
                let over: u64 = ["succeeded", "failed", "cancelled"]
                    .iter()
                    .filter_map(|s| counts.get(*s))
                    .sum();
                if over >= n as u64 {
                    break counts;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "deadline passed with {over} of {n} over: {counts:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let rate = n as f64 / began.elapsed().as_secs_f64();
            cpu.record(row, name, n);
            if counts.get("succeeded").copied() != Some(n as u64) {
                return Err(format!("not all {n} callouts succeeded: {counts:?}"));
            }
            let id = first_id
                .lock()
                .map_err(|_| "poisoned")?
                .clone()
                .ok_or("no id")?;
            let one = http_client()?
                .get(format!("{base}/v1/callouts/{id}"))
                .bearer_auth(KEY)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let one: Value = one.json().await.map_err(|e| e.to_string())?;
            if !expect(&one["result"]["data"]) {
                return Err(format!("an unexpected result: {one}"));
            }
            row.insert(format!("{name}_rate"), rate);
            Ok(())
        }
        .await;
    }
    let rt = server_rt.clone();
    let stopping = tokio::task::spawn_blocking(move || rt.block_on(server.stop()));
    let _ = tokio::time::timeout(Duration::from_secs(10), stopping).await;
    outcome
}

fn order_input(i: usize) -> Value {
    json!({ "customer": format!("C-{i}"), "quantity": 1 })
}

fn order_result(data: &Value) -> bool {
    *data == json!({ "order_id": "SO-1", "status": "accepted", "total": 12.5 })
}

// ---------------------------------------------------------------------------------------------
// CPU time

type Row = BTreeMap<String, f64>;

/// This process's threads' on-CPU time and the machine's busy time at the start of a phase.
struct Cpu {
    at: Instant,
    busy_ns: u64,
    before: BTreeMap<u32, u64>,
}

/// Each thread of this process: id, group (Switchboard's runtime, the SQLite writer, SQLite
/// readers, the load client and upstream, other), on-CPU nanoseconds.
fn threads() -> Vec<(u32, &'static str, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let thread = |entry: std::fs::DirEntry| {
        let tid = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        let sched = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
        let ns = sched.split_whitespace().next()?.parse().ok()?;
        let group = match comm.trim() {
            "sqlite-writer" => "writer",
            c if c.starts_with("sb-worker") => "server",
            c if c.starts_with("sqlx-sqlite") => "readers",
            c if c.starts_with("bench-worker") => "bench",
            _ => "other",
        };
        Some((tid, group, ns))
    };
    dir.flatten().filter_map(thread).collect()
}

/// Busy nanoseconds of the whole machine since boot: `/proc/stat`'s first line, all fields
/// but idle and iowait, in ticks of 10 ms.
fn machine_busy_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let line = stat.lines().next().unwrap_or_default();
    let fields = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse::<u64>().ok());
    let ticks: u64 = fields
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    ticks * 10_000_000
}

impl Cpu {
    fn mark() -> Cpu {
        Cpu {
            at: Instant::now(),
            busy_ns: machine_busy_ns(),
            before: threads()
                .into_iter()
                .map(|(tid, _, ns)| (tid, ns))
                .collect(),
        }
    }

    /// Adds to `row` the CPU µs per callout by group since the mark (a thread started since
    /// counts from zero; one that ended is missed, so take this before stopping a server) and
    /// the cores other processes kept busy.
    fn record(&self, row: &mut Row, name: &str, n: usize) {
        let mut groups: BTreeMap<&str, u64> = BTreeMap::new();
        for (tid, group, ns) in threads() {
            let spent = ns.saturating_sub(self.before.get(&tid).copied().unwrap_or(0));
            *groups.entry(group).or_insert(0) += spent;
        }
        let ours: u64 = groups.values().sum();
        for (group, ns) in groups {
            row.insert(format!("{name}_cpu_{group}_us"), ns as f64 / 1e3 / n as f64);
        }
        row.insert(format!("{name}_cpu_total_us"), ours as f64 / 1e3 / n as f64);
        let foreign = (machine_busy_ns().saturating_sub(self.busy_ns)).saturating_sub(ours);
        let wall = self.at.elapsed().as_secs_f64();
        row.insert(format!("{name}_other_cores"), foreign as f64 / 1e9 / wall);
    }
}

// ---------------------------------------------------------------------------------------------
// Run and report

struct Options {
    n: usize,
    runs: usize,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        n: if quick { 200 } else { 3000 },
        runs: if quick { 1 } else { 3 },
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--n" => o.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--quick" | "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.n == 0 || o.runs == 0 {
        return Err("--n and --runs must be at least 1".to_string());
    }
    Ok(o)
}

/// The median of `key` over `rows`.
fn median_of(rows: &[Row], key: &str) -> f64 {
    let values: Vec<f64> = rows.iter().filter_map(|r| r.get(key).copied()).collect();
    median(&values)
}

/// µs to parse the response envelope and turn its body into JSON, best of 5 × 2,000.
fn xml_parse_us() -> Result<f64, String> {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let began = Instant::now();
        for _ in 0..2000 {
            let root = xml::parse(RESPONSE.as_bytes()).map_err(|e| e.to_string())?;
            std::hint::black_box(xml::to_json(&root));
        }
        best = best.min(began.elapsed().as_secs_f64() * 1e6 / 2000.0);
    }
    Ok(best)
}

async fn run(o: &Options, server_rt: &Handle) -> Result<(), String> {
    let up = Upstream::start().await?;
    let hits = || up.hits();
    let mut table = String::from(
        "| upstream latency | ceiling (reqwest) /s | SOAP via Switchboard /s | ratio | REST via Switchboard /s | ratio | CPU µs/callout: SOAP (runtime + writer) | REST (runtime + writer) | ceiling | other processes' cores |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut all = Vec::new();
    for latency in LATENCIES {
        let mut rows = Vec::new();
        for run in 1..=o.runs {
            let mut row = BTreeMap::new();
            up.reset(latency);
            let url = format!("{}/soap", up.url);
            let ceiling_of = (ACTION, envelope as fn(usize) -> String);
            ceiling(&url, ceiling_of, o.n, latency, (&mut row, "ceiling")).await?;
            up.check(o.n)?;
            for kind in ["soap", "rest"] {
                up.reset(latency);
                let calls = Calls {
                    metadata: metadata(kind, &up.url),
                    function: "bench.create_order",
                    input: order_input,
                    expect: order_result,
                };
                let into = (&mut row, kind);
                through_switchboard(server_rt, calls, o.n, latency, Some(&hits), into).await?;
                up.check(o.n)?;
            }
            let got = row.clone();
            let f = |k: &str| got.get(k).copied().unwrap_or(f64::NAN);
            eprintln!(
                "{latency} ms, run {run}: ceiling {:.0}/s, soap {:.0}/s ({:.3} ×), rest {:.0}/s; other processes {:.2} cores",
                f("ceiling_rate"),
                f("soap_rate"),
                f("soap_rate") / f("ceiling_rate"),
                f("rest_rate"),
                f("soap_other_cores"),
            );
            row.insert("soap_ratio".into(), f("soap_rate") / f("ceiling_rate"));
            row.insert("rest_ratio".into(), f("rest_rate") / f("ceiling_rate"));
            rows.push(row);
        }
        let m = |k: &str| median_of(&rows, k);
        let cpu = |kind: &str| {
            format!(
                "{:.0} ({:.0} + {:.0})",
                m(&format!("{kind}_cpu_total_us")),
                m(&format!("{kind}_cpu_server_us")),
                m(&format!("{kind}_cpu_writer_us"))
            )
        };
        table += &format!(
            "| {latency} ms | {:.0} | {:.0} | {:.3} × | {:.0} | {:.3} × | {} | {} | {:.0} | {:.2} |\n",
            m("ceiling_rate"),
            m("soap_rate"),
            m("soap_ratio"),
            m("rest_rate"),
            m("rest_ratio"),
            cpu("soap"),
            cpu("rest"),
            m("ceiling_cpu_total_us"),
            m("soap_other_cores").max(m("ceiling_other_cores")),
        );
        all.push(json!({ "latency_ms": latency, "runs": rows }));
    }
    let parse_us = xml_parse_us()?;
    let mut spyne = Value::Null;
    if let Ok(url) = std::env::var("SWITCHBOARD_SOAP_URL") {
        let n = (o.n / 3).max(1);
        let greet = format!("{url}/soap11");
        let mut row = BTreeMap::new();
        let ceiling_of = ("\"Greet\"", greet_envelope as fn(usize) -> String);
        ceiling(&greet, ceiling_of, n, 20, (&mut row, "spyne_ceiling")).await?;
        let meta = format!(
            "connection: bench\ntype: soap\nendpoint: {url}/soap11\nallow_private_network: true\nlimits: {{ timeout: 10s, connect_timeout: 1s }}\nfunctions:\n  greet:\n    action: Greet\n    body: '<c:Greet xmlns:c=\"urn:switchboard:test:crm\"><c:name>{{{{ input.name }}}}</c:name><c:times>{{{{ input.times }}}}</c:times></c:Greet>'\n    input_schema: {{ type: object, properties: {{ name: {{ type: string }}, times: {{ type: integer }} }} }}\n    output: {{ greeting: /GreetResponse/GreetResult }}\n"
        );
        let calls = Calls {
            metadata: meta,
            function: "bench.greet",
            input: |i| json!({ "name": format!("C-{i}"), "times": 1 }),
            expect: |d| d["greeting"].is_string(),
        };
        through_switchboard(server_rt, calls, n, 20, None, (&mut row, "spyne_soap")).await?;
        let ceiling_rate = row.get("spyne_ceiling_rate").copied().unwrap_or(f64::NAN);
        let sb_rate = row.get("spyne_soap_rate").copied().unwrap_or(f64::NAN);
        table += &format!(
            "\nAgainst spyne (`{url}`, `Greet`, {n} calls, 1 run): ceiling {ceiling_rate:.0}/s, Switchboard {sb_rate:.0}/s, {:.3} ×.\n",
            sb_rate / ceiling_rate
        );
        spyne = json!({ "n": n, "ceiling_rate": ceiling_rate, "switchboard_rate": sb_rate });
    }
    table += &format!(
        "\nParsing the response envelope into JSON (`wrapper::xml::parse` + `to_json`): {parse_us:.1} µs of CPU.\n"
    );
    println!(
        "\nSOAP callouts, N = {} per phase, median of {} run(s):\n\n{table}",
        o.n, o.runs
    );
    let report = json!({ "n": o.n, "runs": o.runs, "latencies": all, "xml_parse_us": parse_us, "spyne": spyne });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let json = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-soap.json");
    std::fs::write(&json, text).map_err(|e| format!("write {}: {e}", json.display()))?;
    up.stop.cancel();
    Ok(())
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    with_runtimes(|server| async move { run(&o, &server).await })
}
