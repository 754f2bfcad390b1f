//! The callout pipeline end to end, against the raw-client ceiling, in one run.
//!
//! Run: `cargo bench --bench pipeline` (a full run: about five minutes on 2 cores), or
//! `cargo bench --bench pipeline -- --quick` (a smoke run of seconds; nothing asserted but that
//! every callout succeeds). Options, as arguments after `--` or environment variables:
//!
//! | argument | variable | default (quick) | meaning |
//! | --- | --- | --- | --- |
//! | `--n N` | `PIPELINE_N` | 5000 (200) | calls per end-to-end phase |
//! | `--enqueue-n N` | `PIPELINE_ENQUEUE_N` | 20000 (500) | callouts per enqueue-only phase |
//! | `--latencies 0,50` | `PIPELINE_LATENCIES` | 0,50 | upstream latencies in ms |
//! | `--runs R` | `PIPELINE_RUNS` | 3 (1) | repetitions; the tables show medians |
//! | `--batch B` | `PIPELINE_BATCH` | 100 | items per `POST /v1/callouts/batch` |
//! | `--backlog a,b` | `PIPELINE_BACKLOG` | 1000,100000 (200,2000) | callouts queued before the dispatcher starts (backlog); the largest is also the queued phase's |
//! | `--only a,b` | `PIPELINE_ONLY` | all | phases: ceiling, single, batch, paced, probe, enqueue, enqueue-batch, store, backlog, queued |
//! | `--json PATH` | `PIPELINE_JSON` | target/bench-pipeline.json | where the JSON goes |
//! | `--quick` | `PIPELINE_QUICK=1` | | the small sizes, one run |
//!
//! Everything stays on loopback, and every wait is bounded (a phase fails after its deadline).
//! This process holds the upstream and the load clients; each Switchboard runs in a process of
//! its own — this program again, with `--child` — started through `server::start` exactly as
//! `switchboard serve` starts it, on a fresh SQLite file under `target/bench-pipeline-tmp/`
//! (the real disk: WAL, `synchronous=FULL`), with the global cap of 25. For each upstream
//! latency:
//!
//! - the upstream (axum) answers `POST /orders` after the latency;
//! - **ceiling**: one reqwest client with exactly 25 requests in flight makes N calls, the same
//!   request Switchboard makes (JSON body, `Idempotency-Key`), and parses each answer;
//! - **single**: a client with 25 connections sends N single `POST /v1/callouts` (the
//!   CRM-trigger path); the clock runs from the first POST until the store says all N are
//!   over, and all N must have succeeded (the upstream must have seen N calls, N keys);
//! - **batch**: the same, enqueued through `POST /v1/callouts/batch`;
//! - **paced**: N/2 single POSTs at half the rate the single phase reached (open loop, at most
//!   25 in flight), for enqueue-to-completion latency below saturation;
//! - **probe**: the single phase again, on the same three pieces `server::start` assembles
//!   (`SqliteStore::open`, `Engine::start`, `controller::serve`) but with the store wrapped in
//!   a counter, to read `SqliteStore::commits()` and time each store operation;
//!
//! then once: **enqueue** only (`dispatch: false`: single POSTs, batches, and single POSTs
//! probed), **store** only (the `SqliteStore` driven directly by 25 tasks, no HTTP, no
//! dispatcher: the most the pipeline can get from this store), and:
//!
//! - **backlog**, at the smallest upstream latency only (0 ms by default: where the queue's own
//!   costs show): for each backlog size B, this process fills a fresh database with B queued
//!   callouts straight through `SqliteStore` (in batches of 1,000, each built as
//!   `Engine::enqueue` builds it) and closes it; then a Switchboard starts on that file with the
//!   dispatcher on, and must drain it: all B `succeeded`, B calls and B keys at the upstream.
//!   The **drain rate** is B over the time from the upstream's first call to the store saying
//!   all B are over (process start-up is reported apart, as spawn → first call), and the
//!   target is held to it; the **10 % → 90 %** rate counts the calls from the one at 10 % of B
//!   to the one at 90 %, over the time between them (neither start-up nor the tail); the
//!   **first 1,000** rate, 1,000 calls (or the smallest B, if less) over the time from the first
//!   call to the 1,000th. Both at the upstream. A B under 20,000 drains in well under a second,
//!   so a run drains it up to 5 times and takes the median; each B is compared with the
//!   smallest, in the same run;
//! - **queued**: the largest backlog, queued (a copy of the file filled for the backlog phase,
//!   taken before it drained), under a Switchboard with the dispatcher off: its RSS (`VmRSS`
//!   after start-up and after the look-ups, `VmHWM`), and the round trips of 200 sequential
//!   look-ups each over HTTP with the caller key, on one connection — `GET /v1/callouts/{id}`
//!   and `.../attempts` for random ids, `GET /v1/callouts?limit=50` first page and a page
//!   90 % deep (its cursor reached by walking pages of 500, which are timed too), the same
//!   with `status=queued`, with `function` and `status`, and `GET /readyz` and `GET /metrics`.
//!
//! Latency of an end-to-end phase is enqueue-to-completion: `updated_at - created_at` of each
//! callout (milliseconds, the engine's clock: from before the enqueue commit to after the
//! upstream answered, before the result's commit). Of the ceiling: the request's round trip;
//! of an enqueue phase: the POST's round trip (a 202 means durable). "Mean in flight" is the
//! upstream's busy time over the phase's length. Peak RSS is the server process's `VmHWM`.
//! Database bytes are the file, and the `-wal` and `-shm` files, right after the phase, over
//! its callouts. CPU time comes from `/proc/*/task/*/schedstat`, grouped by thread name.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use switchboard::controller::CallerAuth;
use switchboard::metadata::Loader;
use switchboard::queue::{
    Attempt, Callout, Claimed, Enqueued, FileRecord, Finish, Finished, ListQuery, Millis,
    NewCallout, Next, SqliteStore, Status, Store, StoreError, Transition,
};
use switchboard::server::{self, Server, ServerConfig};

use support::{CONCURRENCY, KEY, LOOPBACK, Trips, http_client, median, with_runtimes, workers};

mod support;
use tempfile::TempDir;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Options {
    n: usize,
    enqueue_n: usize,
    latencies: Vec<u64>,
    runs: usize,
    batch: usize,
    /// Backlog sizes, ascending, distinct.
    backlog: Vec<usize>,
    only: Option<HashSet<String>>,
    json: PathBuf,
    quick: bool,
}

const PHASES: [&str; 10] = [
    "ceiling",
    "single",
    "batch",
    "paced",
    "probe",
    "enqueue",
    "enqueue-batch",
    "store",
    "backlog",
    "queued",
];

impl Options {
    fn parse() -> Result<Options, String> {
        let mut given: BTreeMap<String, String> = BTreeMap::new();
        for (var, name) in [
            ("PIPELINE_N", "n"),
            ("PIPELINE_ENQUEUE_N", "enqueue-n"),
            ("PIPELINE_LATENCIES", "latencies"),
            ("PIPELINE_RUNS", "runs"),
            ("PIPELINE_BATCH", "batch"),
            ("PIPELINE_BACKLOG", "backlog"),
            ("PIPELINE_ONLY", "only"),
            ("PIPELINE_JSON", "json"),
            ("PIPELINE_QUICK", "quick"),
        ] {
            if let Ok(value) = std::env::var(var)
                && !value.is_empty()
            {
                given.insert(name.to_string(), value);
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes `--bench` to every bench binary.
                "--bench" => {}
                "--quick" => {
                    given.insert("quick".into(), "1".into());
                }
                "--n" | "--enqueue-n" | "--latencies" | "--runs" | "--batch" | "--backlog"
                | "--only" | "--json" => {
                    let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                    given.insert(arg.trim_start_matches("--").to_string(), value);
                }
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; expected --n N, --enqueue-n N, \
                         --latencies 0,50, --runs R, --batch B, --backlog 1000,100000, \
                         --only PHASES, --json PATH or --quick"
                    ));
                }
            }
        }
        let quick = given.get("quick").is_some_and(|v| v != "0");
        let number = |name: &str, default: usize| -> Result<usize, String> {
            match given.get(name) {
                None => Ok(default),
                Some(text) => match text.replace('_', "").parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("--{name} {text:?} is not a positive number")),
                },
            }
        };
        let latencies = match given.get("latencies") {
            None => vec![0, 50],
            Some(text) => text
                .split(',')
                .map(|part| {
                    part.trim()
                        .trim_end_matches("ms")
                        .parse::<u64>()
                        .ok()
                        .filter(|ms| *ms <= 10_000)
                        .ok_or_else(|| {
                            format!("--latencies {text:?}: expected milliseconds like 0,50")
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let mut backlog = match given.get("backlog") {
            None if quick => vec![200, 2_000],
            None => vec![1_000, 100_000],
            Some(text) => text
                .split(',')
                .map(|part| {
                    part.trim()
                        .replace('_', "")
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            format!("--backlog {text:?}: expected callout counts like 1000,100000")
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        backlog.sort_unstable();
        backlog.dedup();
        let only = match given.get("only") {
            None => None,
            Some(text) => {
                let set: HashSet<String> = text.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = set.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(format!(
                        "--only: unknown phase {bad:?}; expected {PHASES:?}"
                    ));
                }
                Some(set)
            }
        };
        let batch = number("batch", 100)?;
        if batch > 1000 {
            return Err(format!(
                "--batch {batch}: a batch holds at most 1000 callouts"
            ));
        }
        let json = given.get("json").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-pipeline.json")
        });
        Ok(Options {
            n: number("n", if quick { 200 } else { 5_000 })?,
            enqueue_n: number("enqueue-n", if quick { 500 } else { 20_000 })?,
            latencies,
            runs: number("runs", if quick { 1 } else { 3 })?,
            batch,
            backlog,
            only,
            json,
            quick,
        })
    }

    fn runs_phase(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|set| set.contains(phase))
    }

    /// A bound for one phase of `n` calls at `latency_ms`: generous, but finite.
    fn deadline(&self, n: usize, latency_ms: u64) -> Instant {
        let ideal = n as f64 * latency_ms.max(1) as f64 / 1e3 / CONCURRENCY as f64;
        Instant::now() + Duration::from_secs_f64(60.0 + 4.0 * ideal + n as f64 / 500.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream

/// What the upstream counts, reset before each phase.
#[derive(Default)]
struct UpstreamStats {
    latency_ms: AtomicU64,
    hits: AtomicU64,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    /// Nanoseconds spent inside the handler, summed over requests: divided by a phase's
    /// length, the mean number of calls in flight (Little's law).
    busy_ns: AtomicU64,
    keys: Mutex<HashSet<String>>,
    missing_key: AtomicU64,
    /// Whether to note when each call was answered (the backlog phase), in `answered`.
    timing: AtomicBool,
    answered: Mutex<Vec<Instant>>,
}

struct Upstream {
    addr: SocketAddr,
    stats: Arc<UpstreamStats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct UpstreamCounts {
    hits: u64,
    distinct_keys: usize,
    missing_key: u64,
    peak: usize,
    busy: Duration,
}

impl Upstream {
    async fn start() -> Result<Upstream, String> {
        let stats = Arc::new(UpstreamStats::default());
        let app = Router::new()
            .route("/orders", post(order))
            .with_state(stats.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
            .await
            .map_err(|e| format!("the upstream cannot listen: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("the upstream has no address: {e}"))?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(err) = served {
                eprintln!("the upstream failed: {err}");
            }
        });
        Ok(Upstream {
            addr,
            stats,
            stop,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the latency and zeroes the counters; stops noting answer times.
    fn reset(&self, latency_ms: u64) -> Result<(), String> {
        let s = &self.stats;
        s.timing.store(false, Ordering::SeqCst);
        s.answered
            .lock()
            .map_err(|_| "the upstream's answer times are poisoned".to_string())?
            .clear();
        s.latency_ms.store(latency_ms, Ordering::SeqCst);
        s.hits.store(0, Ordering::SeqCst);
        s.peak.store(0, Ordering::SeqCst);
        s.busy_ns.store(0, Ordering::SeqCst);
        s.missing_key.store(0, Ordering::SeqCst);
        s.keys
            .lock()
            .map_err(|_| "the upstream's key set is poisoned".to_string())?
            .clear();
        Ok(())
    }

    fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::SeqCst)
    }

    /// From now until the next reset, notes when each call is answered.
    fn note_answer_times(&self) {
        self.stats.timing.store(true, Ordering::SeqCst);
    }

    /// When each call was answered, in order.
    fn answer_times(&self) -> Result<Vec<Instant>, String> {
        let mut times = self
            .stats
            .answered
            .lock()
            .map_err(|_| "the upstream's answer times are poisoned".to_string())?
            .clone();
        times.sort_unstable();
        Ok(times)
    }

    fn counts(&self) -> UpstreamCounts {
        let s = &self.stats;
        UpstreamCounts {
            hits: s.hits.load(Ordering::SeqCst),
            distinct_keys: s.keys.lock().map(|k| k.len()).unwrap_or(0),
            missing_key: s.missing_key.load(Ordering::SeqCst),
            peak: s.peak.load(Ordering::SeqCst),
            busy: Duration::from_nanos(s.busy_ns.load(Ordering::SeqCst)),
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// `POST /orders`: waits the latency, answers an order as a CRM-side service would.
async fn order(
    State(stats): State<Arc<UpstreamStats>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let began = Instant::now();
    let now = stats.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak.fetch_max(now, Ordering::SeqCst);
    match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(key) => {
            if let Ok(mut keys) = stats.keys.lock() {
                keys.insert(key.to_string());
            }
        }
        None => {
            stats.missing_key.fetch_add(1, Ordering::SeqCst);
        }
    }
    let latency = stats.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let customer = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["customer"].as_str().map(str::to_string))
        .unwrap_or_default();
    let answer = json!({ "order": { "id": format!("SO-{customer}"), "status": "accepted" } });
    if stats.timing.load(Ordering::Relaxed)
        && let Ok(mut answered) = stats.answered.lock()
    {
        answered.push(Instant::now());
    }
    stats.hits.fetch_add(1, Ordering::SeqCst);
    stats.inflight.fetch_sub(1, Ordering::SeqCst);
    stats
        .busy_ns
        .fetch_add(began.elapsed().as_nanos() as u64, Ordering::SeqCst);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Switchboard

/// The connection every callout goes to: a JSON body rendered from the input, an input schema,
/// an output mapping with its schema — a typical CRM callout. No rate or concurrency limit:
/// the global cap of 25 is the only one.
fn metadata(upstream: &str) -> String {
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
    input_schema:
      type: object
      required: [customer, quantity]
      properties:
        customer: {{ type: string }}
        quantity: {{ type: integer, minimum: 1 }}
    output_schema:
      type: object
      required: [order_id, status]
      properties:
        order_id: {{ type: string }}
        status: {{ type: string }}
    output:
      order_id: /order/id
      status: /order/status
"#
    )
}

const FUNCTION: &str = "bench.create_order";

/// The input of the i-th callout.
fn callout_input(i: usize) -> Value {
    json!({ "customer": format!("C-{i}"), "quantity": 1 })
}

fn callout_body(i: usize) -> Value {
    json!({ "function": FUNCTION, "input": callout_input(i) })
}

/// Counts and times the store operations of an engine (the probe phase).
#[derive(Default)]
struct OpStats {
    calls: AtomicU64,
    items: AtomicU64,
    nanos: AtomicU64,
}

impl OpStats {
    fn add(&self, items: usize, began: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.nanos
            .fetch_add(began.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        json!({
            "calls": self.calls.load(Ordering::Relaxed),
            "items": self.items.load(Ordering::Relaxed),
            "nanos": self.nanos.load(Ordering::Relaxed),
        })
    }
}

/// The SQLite store, counted: every write's wait includes its group's commit.
struct Probe {
    inner: Arc<SqliteStore>,
    enqueue: OpStats,
    claim: OpStats,
    finish: OpStats,
    reads: OpStats,
    other: OpStats,
}

impl Probe {
    fn json(&self) -> Value {
        json!({
            "commits": self.inner.commits(),
            "enqueue": self.enqueue.json(),
            "claim": self.claim.json(),
            "finish": self.finish.json(),
            "reads": self.reads.json(),
            "other": self.other.json(),
        })
    }

    fn new(inner: Arc<SqliteStore>) -> Probe {
        Probe {
            inner,
            enqueue: OpStats::default(),
            claim: OpStats::default(),
            finish: OpStats::default(),
            reads: OpStats::default(),
            other: OpStats::default(),
        }
    }
}

#[async_trait]
impl Store for Probe {
    async fn enqueue(&self, batch: Vec<NewCallout>) -> Result<Vec<Enqueued>, StoreError> {
        let (began, items) = (Instant::now(), batch.len());
        let out = self.inner.enqueue(batch).await;
        self.enqueue.add(items, began);
        out
    }
    async fn get(&self, id: &str) -> Result<Option<Callout>, StoreError> {
        let began = Instant::now();
        let out = self.inner.get(id).await;
        self.reads.add(1, began);
        out
    }
    async fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        let began = Instant::now();
        let out = self.inner.attempts(id).await;
        self.reads.add(1, began);
        out
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Callout>, StoreError> {
        let began = Instant::now();
        let out = self.inner.list(query).await;
        self.reads.add(1, began);
        out
    }
    async fn claim(
        &self,
        now: Millis,
        limit: u32,
        lease: Duration,
        skip: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        let began = Instant::now();
        let out = self.inner.claim(now, limit, lease, skip).await;
        self.claim
            .add(out.as_ref().map_or(0, |claimed| claimed.len()), began);
        out
    }
    async fn extend_lease(
        &self,
        id: &str,
        attempt: u32,
        until: Millis,
    ) -> Result<Finished, StoreError> {
        let began = Instant::now();
        let out = self.inner.extend_lease(id, attempt, until).await;
        self.other.add(1, began);
        out
    }
    async fn finish(&self, batch: Vec<Finish>) -> Result<Vec<Finished>, StoreError> {
        let (began, items) = (Instant::now(), batch.len());
        let out = self.inner.finish(batch).await;
        self.finish.add(items, began);
        out
    }
    async fn release(&self, claims: &[(String, u32)], now: Millis) -> Result<(), StoreError> {
        let began = Instant::now();
        let out = self.inner.release(claims, now).await;
        self.other.add(claims.len(), began);
        out
    }
    async fn reclaim(&self, now: Millis, all: bool) -> Result<u64, StoreError> {
        let began = Instant::now();
        let out = self.inner.reclaim(now, all).await;
        self.other.add(1, began);
        out
    }
    async fn delay_connection(&self, connection: &str, until: Millis) -> Result<u64, StoreError> {
        let began = Instant::now();
        let out = self.inner.delay_connection(connection, until).await;
        self.other.add(1, began);
        out
    }
    async fn replay(&self, id: &str, now: Millis) -> Result<Transition, StoreError> {
        self.inner.replay(id, now).await
    }
    async fn cancel(&self, id: &str, now: Millis) -> Result<Transition, StoreError> {
        self.inner.cancel(id, now).await
    }
    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let began = Instant::now();
        let out = self.inner.counts().await;
        self.reads.add(1, began);
        out
    }
    async fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.state(key).await
    }
    async fn set_state(&self, key: &str, value: &str, now: Millis) -> Result<(), StoreError> {
        self.inner.set_state(key, value, now).await
    }
    async fn insert_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        self.inner.insert_file(file).await
    }
    async fn file(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        self.inner.file(id).await
    }
    async fn expired_files(&self, now: Millis, limit: u32) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.expired_files(now, limit).await
    }
    async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_file(id).await
    }
}

/// How a Switchboard is started.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// `server::start`, as `switchboard serve` does.
    Serve,
    /// The same three pieces by hand, with the store behind a [`Probe`].
    Probed,
}

/// A Switchboard in a process of its own (this program, run with `--child`), with its
/// temporary metadata folder and database. It answers one-line commands on stdin with one
/// line of JSON on stdout: `counts`, `times`, `probe`, `stop`.
struct Switchboard {
    base: String,
    pid: u32,
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    db: Database,
}

/// A temporary folder beside the build, on the real disk (fsync costs what it costs there),
/// for one database file, which may not exist yet.
struct Database {
    dir: TempDir,
    path: PathBuf,
}

impl Database {
    fn fresh() -> Result<Database, String> {
        let dir = temp_dir()?;
        let path = dir.path().join("switchboard.db");
        Ok(Database { dir, path })
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// The database file with a suffix (`-wal`, `-shm`).
    fn file(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// A copy in a fresh folder. No store may have the file open.
    fn copy(&self) -> Result<Database, String> {
        let copy = Database::fresh()?;
        for suffix in ["", "-wal"] {
            let from = self.file(suffix);
            if from.exists() {
                std::fs::copy(&from, copy.file(suffix))
                    .map_err(|e| format!("copy {}: {e}", from.display()))?;
            }
        }
        Ok(copy)
    }
}

impl Switchboard {
    /// On a fresh database.
    async fn start(upstream: &Upstream, dispatch: bool, how: Start) -> Result<Switchboard, String> {
        Switchboard::start_on(upstream, Database::fresh()?, dispatch, how).await
    }

    /// On `db`, which may hold callouts already.
    async fn start_on(
        upstream: &Upstream,
        db: Database,
        dispatch: bool,
        how: Start,
    ) -> Result<Switchboard, String> {
        let meta = db.dir.path().join("metadata");
        std::fs::create_dir(&meta).map_err(|e| format!("create the metadata folder: {e}"))?;
        std::fs::write(meta.join("bench.yaml"), metadata(&upstream.url()))
            .map_err(|e| format!("write the metadata: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
        let mut process = tokio::process::Command::new(exe)
            .arg("--child")
            .arg(&meta)
            .arg(&db.path)
            .arg(if dispatch { "dispatch" } else { "enqueue-only" })
            .arg(if how == Start::Probed {
                "probed"
            } else {
                "serve"
            })
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the server process: {e}"))?;
        let pid = process.id().ok_or("the server process has no id")?;
        let stdin = process
            .stdin
            .take()
            .ok_or("the server process has no stdin")?;
        let stdout = process
            .stdout
            .take()
            .ok_or("the server process has no stdout")?;
        let mut sb = Switchboard {
            base: String::new(),
            pid,
            process,
            stdin,
            stdout: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
            db,
        };
        let ready = sb.read().await?;
        sb.base = format!("http://{}", ready["addr"].as_str().ok_or("no address")?);
        Ok(sb)
    }

    async fn read(&mut self) -> Result<Value, String> {
        let line = tokio::time::timeout(Duration::from_secs(120), self.stdout.next_line())
            .await
            .map_err(|_| "the server process did not answer within 120 s".to_string())?
            .map_err(|e| format!("reading the server process: {e}"))?
            .ok_or("the server process ended")?;
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| format!("the server process said {line:?}: {e}"))?;
        match value["error"].as_str() {
            Some(error) => Err(format!("the server process: {error}")),
            None => Ok(value),
        }
    }

    async fn ask(&mut self, command: &str) -> Result<Value, String> {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("writing to the server process: {e}"))?;
        self.stdin.flush().await.map_err(|e| e.to_string())?;
        self.read().await
    }

    /// Callouts by status.
    async fn counts(&mut self) -> Result<BTreeMap<String, u64>, String> {
        let answer = self.ask("counts").await?;
        serde_json::from_value(answer["counts"].clone()).map_err(|e| e.to_string())
    }

    /// Bytes of the database file, its `-wal` and its `-shm`.
    fn db_bytes(&self) -> (u64, u64) {
        let size = |suffix: &str| std::fs::metadata(self.db.file(suffix)).map_or(0, |m| m.len());
        (size(""), size("-wal") + size("-shm"))
    }

    /// The server process's peak RSS.
    fn peak_rss_mb(&self) -> f64 {
        status_kb_of(&format!("/proc/{}/status", self.pid), "VmHWM:") / 1024.0
    }

    /// The server process's RSS now.
    fn rss_mb(&self) -> f64 {
        status_kb_of(&format!("/proc/{}/status", self.pid), "VmRSS:") / 1024.0
    }

    async fn stop(mut self) -> Result<(), String> {
        let answer = self.ask("stop").await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.process.wait())
            .await
            .map_err(|_| "the server process did not stop within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        answer?;
        if !status.success() {
            return Err(format!("the server process ended with {status}"));
        }
        Ok(())
    }
}

fn temp_dir() -> Result<TempDir, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-pipeline-tmp");
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    tempfile::tempdir_in(&root).map_err(|e| format!("a temp folder: {e}"))
}

/// The server process: `--child METADATA DB dispatch|enqueue-only serve|probed`.
fn child_main(args: &[String]) -> ExitCode {
    let [meta, db, dispatch, how] = args else {
        eprintln!("error: --child METADATA DB dispatch|enqueue-only serve|probed");
        return ExitCode::from(2);
    };
    // As `switchboard serve` builds it: one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("sb-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: no Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let how = if how == "probed" {
        Start::Probed
    } else {
        Start::Serve
    };
    match runtime.block_on(child(
        Path::new(meta),
        Path::new(db),
        dispatch == "dispatch",
        how,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("{}", json!({ "error": message }));
            ExitCode::FAILURE
        }
    }
}

enum Running {
    Served(Server),
    Probed { server: Server, probe: Arc<Probe> },
}

async fn child(meta: &Path, db: &Path, dispatch: bool, how: Start) -> Result<(), String> {
    let db_url = format!("sqlite://{}", db.display());
    let mut config = ServerConfig::new(meta, db_url.clone());
    config.listen = SocketAddr::from((LOOPBACK, 0));
    config.auth = CallerAuth::Keys(Arc::new(vec![KEY.to_string()]));
    config.shutdown_grace = Duration::from_secs(5);
    config.dispatch = dispatch;
    config.max_concurrent_callouts = CONCURRENCY;
    let (addr, running) = match how {
        Start::Serve => {
            let server = server::start(config, Loader::new())
                .await
                .map_err(|e| format!("the server does not start: {e}"))?;
            (server.addr, Running::Served(server))
        }
        Start::Probed => {
            // The serve path on a store wrapped to count its commits.
            let store = Arc::new(
                SqliteStore::open(&db_url)
                    .await
                    .map_err(|e| format!("the store does not open: {e}"))?,
            );
            let probe = Arc::new(Probe::new(store));
            let shared: Arc<dyn Store> = probe.clone();
            let server = server::start_with_store(config, shared, Loader::new())
                .await
                .map_err(|e| format!("the server does not start: {e}"))?;
            (server.addr, Running::Probed { server, probe })
        }
    };
    println!("{}", json!({ "addr": addr.to_string() }));
    let store = match &running {
        Running::Served(server) => server.engine.store().clone(),
        Running::Probed { server, .. } => server.engine.store().clone(),
    };
    // Commands from stdin, read by a thread (tokio's stdin needs a feature the crate does not
    // enable); the channel closes when stdin does.
    let (tx, mut commands) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    // Ends at `stop`, or when the parent goes away (stdin closes).
    while let Some(line) = commands.recv().await {
        let answer = match line.trim() {
            "counts" => match store.counts().await {
                Ok(counts) => {
                    let map: BTreeMap<&str, u64> =
                        counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
                    json!({ "counts": map })
                }
                Err(e) => json!({ "error": format!("counting callouts: {e}") }),
            },
            "times" => match completion_times(&store).await {
                Ok(times) => json!({ "times": times }),
                Err(e) => json!({ "error": e }),
            },
            "probe" => match &running {
                Running::Probed { probe, .. } => probe.json(),
                Running::Served(_) => json!({ "commits": null }),
            },
            "stop" => break,
            other => json!({ "error": format!("unknown command {other:?}") }),
        };
        println!("{answer}");
    }
    match running {
        Running::Served(server) => server.stop().await,
        Running::Probed { server, .. } => server.stop().await,
    }
    println!("{}", json!({ "stopped": true }));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load

/// One `POST /v1/callouts`, expecting 202.
async fn post_one(client: &reqwest::Client, url: &str, i: usize) -> Result<(), String> {
    let response = client
        .post(url)
        .bearer_auth(KEY)
        .json(&callout_body(i))
        .send()
        .await
        .map_err(|e| format!("POST /v1/callouts: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("POST /v1/callouts: reading the answer: {e}"))?;
    if status != StatusCode::ACCEPTED {
        return Err(format!(
            "POST /v1/callouts answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// Single POSTs from `CONCURRENCY` connections.
async fn enqueue_single(base: &str, n: usize, deadline: Instant) -> Result<Trips, String> {
    let client = http_client()?;
    let url = format!("{base}/v1/callouts");
    workers(n, CONCURRENCY, deadline, move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move { post_one(&client, &url, i).await }
    })
    .await
}

/// Batches of `batch` from `CONCURRENCY` connections.
async fn enqueue_batches(
    base: &str,
    n: usize,
    batch: usize,
    deadline: Instant,
) -> Result<Trips, String> {
    let client = http_client()?;
    let url = format!("{base}/v1/callouts/batch");
    let batches = n.div_ceil(batch);
    workers(batches, CONCURRENCY, deadline, move |b| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let items: Vec<Value> = (b * batch..((b + 1) * batch).min(n))
                .map(callout_body)
                .collect();
            let count = items.len();
            let response = client
                .post(&url)
                .bearer_auth(KEY)
                .json(&json!({ "callouts": items }))
                .send()
                .await
                .map_err(|e| format!("POST /v1/callouts/batch: {e}"))?;
            let status = response.status();
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("POST /v1/callouts/batch: reading the answer: {e}"))?;
            let stored = body["results"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|x| x["callout"].is_object()).count());
            if status != StatusCode::OK || stored != count {
                return Err(format!(
                    "POST /v1/callouts/batch answered {status} with {stored} of {count} stored"
                ));
            }
            Ok(())
        }
    })
    .await
}

/// Single POSTs at `rate` a second (open loop), at most `CONCURRENCY` in flight.
async fn enqueue_paced(
    base: &str,
    n: usize,
    rate: f64,
    deadline: Instant,
) -> Result<Trips, String> {
    let client = http_client()?;
    let url = format!("{base}/v1/callouts");
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let began = tokio::time::Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        if Instant::now() > deadline {
            return Err(format!("deadline passed after {i} of {n} paced requests"));
        }
        tokio::time::sleep_until(began + Duration::from_secs_f64(i as f64 / rate)).await;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the pacing semaphore closed".to_string())?;
        let (client, url) = (client.clone(), url.clone());
        set.spawn(async move {
            let sent = Instant::now();
            let result = post_one(&client, &url, i).await;
            drop(permit);
            result.map(|()| sent.elapsed().as_micros() as u64)
        });
    }
    let mut trips = Trips::default();
    while let Some(joined) = set.join_next().await {
        trips
            .micros
            .push(joined.map_err(|e| format!("a paced request failed: {e}"))??);
    }
    Ok(trips)
}

/// Waits until the upstream saw `n` calls and the store says `n` callouts are over; returns
/// when the store said so.
async fn wait_done(
    sb: &mut Switchboard,
    upstream: &Upstream,
    n: usize,
    deadline: Instant,
) -> Result<Instant, String> {
    while upstream.hits() < n as u64 {
        if Instant::now() > deadline {
            return Err(format!(
                "deadline passed with {} of {n} calls at the upstream",
                upstream.hits()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        let counts = sb.counts().await?;
        let over: u64 = ["succeeded", "failed", "cancelled"]
            .iter()
            .filter_map(|s| counts.get(*s))
            .sum();
        if over >= n as u64 {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "deadline passed with {over} of {n} callouts over: {counts:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every callout's enqueue-to-completion time (ms), read in the server process; fails unless
/// every callout succeeded.
/// Every callout's enqueue-to-completion time (ms); fails unless all `n` succeeded at the
/// first attempt.
async fn completion_times(store: &Arc<dyn Store>) -> Result<Vec<u64>, String> {
    let mut times = Vec::new();
    let mut before_id = None;
    // Bounded: a million callouts at most.
    for _ in 0..1000 {
        let query = ListQuery {
            status: None,
            function: None,
            limit: 1000,
            before_id: before_id.clone(),
        };
        let page = store
            .list(&query)
            .await
            .map_err(|e| format!("listing callouts: {e}"))?;
        for c in &page {
            if c.status != Status::Succeeded {
                return Err(format!(
                    "callout {} ended {:?}: {:?}",
                    c.id, c.status, c.result
                ));
            }
            times.push(u64::try_from(c.updated_at - c.created_at).unwrap_or(0));
        }
        match page.last() {
            Some(last) if page.len() == 1000 => before_id = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok(times)
}

// ---------------------------------------------------------------------------------------------
// Measures

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// p50 and p99 of microsecond trips, in ms.
fn trip_ms(trips: &Trips) -> (f64, f64) {
    let mut t = trips.micros.clone();
    t.sort_unstable();
    (percentile(&t, 50.0) / 1e3, percentile(&t, 99.0) / 1e3)
}

/// p50 and p99 of millisecond times.
fn ms(times: &[u64]) -> (f64, f64) {
    let mut t = times.to_vec();
    t.sort_unstable();
    (percentile(&t, 50.0), percentile(&t, 99.0))
}

/// One row of one run: a scenario and its figures.
#[derive(Debug, Clone, Default)]
struct Row {
    /// Scenario key, like `single@50ms`.
    key: String,
    what: String,
    n: usize,
    values: BTreeMap<&'static str, f64>,
    detail: Value,
}

impl Row {
    fn new(key: String, what: &str, n: usize) -> Row {
        Row {
            key,
            what: what.to_string(),
            n,
            ..Row::default()
        }
    }

    fn set(&mut self, name: &'static str, value: f64) -> &mut Row {
        self.values.insert(name, value);
        self
    }
}

/// Puts a phase's common figures in its row.
fn figures(row: &mut Row, elapsed: Duration, p: (f64, f64)) {
    row.set("rate", row.n as f64 / elapsed.as_secs_f64())
        .set("seconds", elapsed.as_secs_f64())
        .set("p50_ms", p.0)
        .set("p99_ms", p.1);
}

fn check_upstream(counts: &UpstreamCounts, n: usize) -> Result<(), String> {
    if counts.hits != n as u64 || counts.distinct_keys != n || counts.missing_key != 0 {
        return Err(format!(
            "the upstream saw {} calls with {} distinct keys ({} without a key); expected {n}",
            counts.hits, counts.distinct_keys, counts.missing_key
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phases

async fn ceiling(up: &Upstream, n: usize, latency: u64, o: &Options) -> Result<Row, String> {
    up.reset(latency)?;
    let cpu = CpuMark::now(None);
    let client = http_client()?;
    let url = format!("{}/orders", up.url());
    let began = Instant::now();
    let trips = workers(n, CONCURRENCY, o.deadline(n, latency), move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client
                .post(&url)
                .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .body(
                    serde_json::to_vec(&json!({ "customer": format!("C-{i}"), "quantity": 1 }))
                        .map_err(|e| e.to_string())?,
                )
                .send()
                .await
                .map_err(|e| format!("the ceiling's call failed: {e}"))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            let answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            if status != StatusCode::OK || !answer["order"]["id"].is_string() {
                return Err(format!("the upstream answered {status}: {answer}"));
            }
            Ok(())
        }
    })
    .await?;
    let elapsed = began.elapsed();
    let cpu = cpu.since();
    let counts = up.counts();
    check_upstream(&counts, n)?;
    let mut row = Row::new(
        format!("ceiling@{latency}ms"),
        "ceiling: reqwest, 25 in flight",
        n,
    );
    figures(&mut row, elapsed, trip_ms(&trips));
    cpu.figures(&mut row);
    row.set("upstream_peak", counts.peak as f64).set(
        "upstream_mean_inflight",
        counts.busy.as_secs_f64() / elapsed.as_secs_f64(),
    );
    Ok(row)
}

#[derive(Clone, Copy, PartialEq)]
enum Enqueue {
    Single,
    Batch,
    Paced(f64),
}

/// Switchboard end to end: enqueue `n`, wait for all to succeed.
async fn end_to_end(
    up: &Upstream,
    n: usize,
    latency: u64,
    how: Enqueue,
    start: Start,
    o: &Options,
) -> Result<Row, String> {
    up.reset(latency)?;
    let mut sb = Switchboard::start(up, true, start).await?;
    let cpu = CpuMark::now(Some(sb.pid));
    let deadline = o.deadline(n, latency);
    let began = Instant::now();
    let trips = match how {
        Enqueue::Single => enqueue_single(&sb.base, n, deadline).await?,
        Enqueue::Batch => enqueue_batches(&sb.base, n, o.batch, deadline).await?,
        Enqueue::Paced(rate) => enqueue_paced(&sb.base, n, rate, deadline).await?,
    };
    let enqueued = began.elapsed();
    let done = wait_done(&mut sb, up, n, deadline).await?;
    let elapsed = done - began;
    let cpu = cpu.since();
    let peak = sb.peak_rss_mb();
    let counts = up.counts();
    let (db, wal) = sb.db_bytes();
    let times: Vec<u64> = serde_json::from_value(sb.ask("times").await?["times"].take())
        .map_err(|e| format!("completion times: {e}"))?;
    if times.len() != n {
        return Err(format!("{} callouts stored, expected {n}", times.len()));
    }
    check_upstream(&counts, n)?;
    let (key, what) = match (how, start) {
        (Enqueue::Single, Start::Serve) => ("single", "Switchboard, single POSTs"),
        (Enqueue::Batch, _) => ("batch", "Switchboard, batch POSTs"),
        (Enqueue::Paced(_), _) => ("paced", "Switchboard, paced at half rate"),
        (Enqueue::Single, Start::Probed) => ("probe", "Switchboard probed, single POSTs"),
    };
    let mut row = Row::new(format!("{key}@{latency}ms"), what, n);
    figures(&mut row, elapsed, ms(&times));
    let (ack50, ack99) = trip_ms(&trips);
    row.set("peak_rss_mb", peak)
        .set("enqueue_rate", n as f64 / enqueued.as_secs_f64())
        .set("ack_p50_ms", ack50)
        .set("ack_p99_ms", ack99)
        .set("db_bytes_per_callout", (db + wal) as f64 / n as f64)
        .set("db_file_bytes_per_callout", db as f64 / n as f64)
        .set("upstream_peak", counts.peak as f64)
        .set(
            "upstream_mean_inflight",
            counts.busy.as_secs_f64() / elapsed.as_secs_f64(),
        );
    if let Enqueue::Paced(rate) = how {
        row.set("offered_rate", rate);
    }
    cpu.figures(&mut row);
    if start == Start::Probed {
        let probe = sb.ask("probe").await?;
        probed(&mut row, probe, n);
    }
    sb.stop().await?;
    Ok(row)
}

/// The probe's figures: commits and store operations per callout.
fn probed(row: &mut Row, probe: Value, n: usize) {
    let n = n as f64;
    let get = |op: &str, field: &str| probe[op][field].as_f64().unwrap_or(0.0);
    row.set(
        "commits_per_callout",
        probe["commits"].as_f64().unwrap_or(0.0) / n,
    )
    .set("claims_per_callout", get("claim", "calls") / n)
    .set("finish_calls_per_callout", get("finish", "calls") / n);
    if get("claim", "calls") > 0.0 {
        row.set(
            "callouts_per_claim",
            get("claim", "items") / get("claim", "calls"),
        );
    }
    for (name, op) in [
        ("enqueue_wait_ms", "enqueue"),
        ("claim_wait_ms", "claim"),
        ("finish_wait_ms", "finish"),
    ] {
        if get(op, "calls") > 0.0 {
            row.set(name, get(op, "nanos") / get(op, "calls") / 1e6);
        }
    }
    row.detail = probe;
}

/// Enqueue only (`dispatch: false`).
async fn enqueue_only(
    up: &Upstream,
    how: Enqueue,
    start: Start,
    o: &Options,
) -> Result<Row, String> {
    let n = o.enqueue_n;
    let mut sb = Switchboard::start(up, false, start).await?;
    let cpu = CpuMark::now(Some(sb.pid));
    let deadline = o.deadline(n, 1);
    let began = Instant::now();
    let trips = match how {
        Enqueue::Batch => enqueue_batches(&sb.base, n, o.batch, deadline).await?,
        _ => enqueue_single(&sb.base, n, deadline).await?,
    };
    let elapsed = began.elapsed();
    let cpu = cpu.since();
    let peak = sb.peak_rss_mb();
    let (db, wal) = sb.db_bytes();
    let counts = sb.counts().await?;
    let queued = counts.get("queued").copied().unwrap_or(0);
    if queued != n as u64 {
        return Err(format!(
            "{queued} callouts queued, expected {n}: {counts:?}"
        ));
    }
    let (key, what) = match (how, start) {
        (Enqueue::Batch, _) => ("enqueue-batch", "enqueue only, batch POSTs"),
        (_, Start::Serve) => ("enqueue-single", "enqueue only, single POSTs"),
        (_, Start::Probed) => ("enqueue-probe", "enqueue only probed, single POSTs"),
    };
    let mut row = Row::new(key.to_string(), what, n);
    figures(&mut row, elapsed, trip_ms(&trips));
    row.set("peak_rss_mb", peak)
        .set("db_bytes_per_callout", (db + wal) as f64 / n as f64)
        .set("db_file_bytes_per_callout", db as f64 / n as f64);
    cpu.figures(&mut row);
    if start == Start::Probed {
        let probe = sb.ask("probe").await?;
        probed(&mut row, probe, n);
    }
    sb.stop().await?;
    Ok(row)
}

/// The store alone, no HTTP, no dispatcher: `CONCURRENCY` tasks enqueueing one callout per
/// operation (what 25 single POSTs ask of it), then `CONCURRENCY` tasks each claiming one
/// callout and recording its success (what 25 slots ask of it with a 0 ms upstream). The
/// upper bound of what the pipeline can reach with this store.
async fn store_only(rt: &Handle, n: usize) -> Result<Vec<Row>, String> {
    let rt2 = rt.clone();
    tokio::task::spawn_blocking(move || rt2.block_on(store_only_here(n)))
        .await
        .map_err(|e| format!("the store phase failed: {e}"))?
}

async fn store_only_here(n: usize) -> Result<Vec<Row>, String> {
    let dir = temp_dir()?;
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Arc::new(
        SqliteStore::open(&url)
            .await
            .map_err(|e| format!("the store does not open: {e}"))?,
    );
    let mut rows = Vec::new();

    // Enqueue, one callout per operation.
    let (cpu, commits, began) = (CpuMark::now(None), store.commits(), Instant::now());
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (store, next) = (store.clone(), next.clone());
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let input = json!({ "customer": "C-1", "quantity": 1 });
                let now = switchboard::engine::now_millis();
                let callout = NewCallout {
                    id: uuid::Uuid::now_v7().to_string(),
                    function: FUNCTION.to_string(),
                    connection: "bench".to_string(),
                    // As `Engine::enqueue` stores a callout without an idempotency key.
                    request_hash: String::new(),
                    input,
                    idempotency_key: None,
                    run_at: now,
                    now,
                };
                store
                    .enqueue(vec![callout])
                    .await
                    .map_err(|e| format!("enqueue: {e}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| format!("an enqueue task failed: {e}"))??;
    }
    let mut row = Row::new(
        "store-enqueue".into(),
        "store only: enqueue 1 per op, 25 tasks",
        n,
    );
    figures(&mut row, began.elapsed(), (f64::NAN, f64::NAN));
    cpu.since().figures(&mut row);
    row.set(
        "commits_per_callout",
        (store.commits() - commits) as f64 / n as f64,
    );
    rows.push(row);

    // Claim one, record it succeeded, again.
    let (cpu, commits, began) = (CpuMark::now(None), store.commits(), Instant::now());
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (store, done) = (store.clone(), done.clone());
        set.spawn(async move {
            for _ in 0..n {
                let now = switchboard::engine::now_millis();
                let claimed = store
                    .claim(now, 1, Duration::from_secs(60), &[])
                    .await
                    .map_err(|e| format!("claim: {e}"))?;
                let Some(claim) = claimed.into_iter().next() else {
                    return Ok(());
                };
                let now = switchboard::engine::now_millis();
                let finish = Finish {
                    id: claim.callout.id.clone(),
                    attempt: claim.attempt,
                    record: Attempt {
                        attempt: claim.attempt,
                        route: 0,
                        connection: "bench".to_owned(),
                        series: 0,
                        started_at: now,
                        duration_ms: 0,
                        http_status: Some(200),
                        error_kind: None,
                        error_message: None,
                        response_bytes: 48,
                    },
                    earlier: Vec::new(),
                    result: json!({
                        "status": "succeeded",
                        "data": { "order_id": "SO-C-1", "status": "accepted" },
                        "error": null,
                        "meta": { "http_status": 200, "duration_ms": 0, "attempt": 1,
                                  "connection": "bench" },
                    }),
                    next: Next::Succeeded,
                    now,
                };
                store
                    .finish(vec![finish])
                    .await
                    .map_err(|e| format!("finish: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| format!("a claim task failed: {e}"))??;
    }
    let finished = done.load(Ordering::Relaxed);
    if finished != n {
        return Err(format!("{finished} of {n} callouts claimed and finished"));
    }
    let mut row = Row::new(
        "store-cycle".into(),
        "store only: claim 1 + finish, 25 tasks",
        n,
    );
    figures(&mut row, began.elapsed(), (f64::NAN, f64::NAN));
    cpu.since().figures(&mut row);
    row.set(
        "commits_per_callout",
        (store.commits() - commits) as f64 / n as f64,
    );
    rows.push(row);
    drop(set);
    match Arc::try_unwrap(store) {
        Ok(store) => store
            .close()
            .await
            .map_err(|e| format!("closing the store: {e}"))?,
        Err(_) => return Err("the store is still shared".to_string()),
    }
    Ok(rows)
}

/// Callouts per `SqliteStore::enqueue` when filling a backlog (the most a batch POST holds).
const FILL_BATCH: usize = 1000;

/// Fills `db` with `n` queued callouts straight through `SqliteStore`, in batches of
/// [`FILL_BATCH`] built as `Engine::enqueue` builds them (a UUID v7 id, no request hash as
/// there is no key, `run_at` = now, one `now` a batch) with the inputs the single phase POSTs;
/// then closes the store, so a server can open the file. Returns the ids, oldest first.
async fn fill(db: &Database, n: usize, deadline: Instant) -> Result<Vec<String>, String> {
    let store = SqliteStore::open(&db.url())
        .await
        .map_err(|e| format!("the store to fill does not open: {e}"))?;
    let filled = fill_open(&store, n, deadline).await;
    // Closed whatever happened: the lock file must go before a server opens the file.
    let closed = store
        .close()
        .await
        .map_err(|e| format!("closing the filled store: {e}"));
    let ids = filled?;
    closed?;
    Ok(ids)
}

async fn fill_open(
    store: &SqliteStore,
    n: usize,
    deadline: Instant,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(n);
    for first in (0..n).step_by(FILL_BATCH) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "deadline passed with {first} of {n} callouts filled"
            ));
        }
        let now = switchboard::engine::now_millis();
        let batch: Vec<NewCallout> = (first..(first + FILL_BATCH).min(n))
            .map(|i| {
                let input = callout_input(i);
                NewCallout {
                    id: uuid::Uuid::now_v7().to_string(),
                    function: FUNCTION.to_string(),
                    connection: "bench".to_string(),
                    // As `Engine::enqueue` stores a callout without an idempotency key.
                    request_hash: String::new(),
                    input,
                    idempotency_key: None,
                    run_at: now,
                    now,
                }
            })
            .collect();
        let count = batch.len();
        ids.extend(batch.iter().map(|c| c.id.clone()));
        let stored = tokio::time::timeout(left, store.enqueue(batch))
            .await
            .map_err(|_| format!("deadline passed with {first} of {n} callouts filled"))?
            .map_err(|e| format!("filling the backlog: {e}"))?;
        let created = stored
            .iter()
            .filter(|e| matches!(e, Enqueued::Created(_)))
            .count();
        if created != count {
            return Err(format!("{created} of a batch of {count} callouts stored"));
        }
    }
    Ok(ids)
}

/// A bound for filling `n` callouts: generous, but finite.
fn fill_deadline(n: usize) -> Instant {
    Instant::now() + Duration::from_secs_f64(60.0 + n as f64 / 1_000.0)
}

/// How many times a run drains a backlog of `b`: a small one drains in a fraction of a second,
/// which one busy moment of another process can halve, so it is drained up to 5 times (20,000
/// callouts in all) and the run takes the median.
fn backlog_repeats(b: usize) -> usize {
    (20_000 / b.max(1)).clamp(1, 5)
}

/// A filled database kept for the queued phase, with its callouts' ids.
struct Filled {
    db: Database,
    ids: Vec<String>,
}

/// `b` callouts queued before a Switchboard with its dispatcher on starts: how fast it drains
/// them. `first_k`: the calls the early rate is taken over. With `keep`, also returns a copy
/// of the filled database, taken before the drain.
async fn backlog(
    up: &Upstream,
    b: usize,
    latency: u64,
    first_k: usize,
    keep: bool,
    o: &Options,
) -> Result<(Row, Option<Filled>), String> {
    let db = Database::fresh()?;
    let filling = Instant::now();
    let ids = fill(&db, b, fill_deadline(b)).await?;
    let fill_time = filling.elapsed();
    let kept = if keep {
        Some(Filled {
            db: db.copy()?,
            ids,
        })
    } else {
        None
    };
    up.reset(latency)?;
    up.note_answer_times();
    let deadline = o.deadline(b, latency);
    let mut cpu = CpuMark::now(None);
    let spawned = Instant::now();
    let mut sb = Switchboard::start_on(up, db, true, Start::Serve).await?;
    let ready = spawned.elapsed();
    cpu.attach(sb.pid);
    let done = wait_done(&mut sb, up, b, deadline).await?;
    let cpu = cpu.since();
    let peak = sb.peak_rss_mb();
    let (db_file, wal) = sb.db_bytes();
    let counts = sb.counts().await?;
    let succeeded = counts.get("succeeded").copied().unwrap_or(0);
    let total: u64 = counts.values().sum();
    if succeeded != b as u64 || total != b as u64 {
        return Err(format!(
            "backlog of {b}: {succeeded} succeeded of {total} stored, expected {b}: {counts:?}"
        ));
    }
    let seen = up.counts();
    check_upstream(&seen, b)?;
    let answered = up.answer_times()?;
    let (Some(&first), Some(&kth)) = (answered.first(), answered.get(first_k.max(1) - 1)) else {
        return Err(format!(
            "the upstream noted {} answer times, expected {b}",
            answered.len()
        ));
    };
    let drain = done.saturating_duration_since(first);
    // From the call at 10 % to the one at 90 %: neither start-up nor the tail.
    let (low, high) = (b / 10, b * 9 / 10);
    let steady = match (answered.get(low), answered.get(high.saturating_sub(1))) {
        (Some(&from), Some(&to)) if high > low + 1 => {
            (high - low - 1) as f64 / to.saturating_duration_since(from).as_secs_f64()
        }
        _ => f64::NAN,
    };
    let mut row = Row::new(
        format!("backlog-{b}@{latency}ms"),
        &format!("backlog of {} queued before start", fmt(Some(b as f64), 0)),
        b,
    );
    row.set("rate", b as f64 / drain.as_secs_f64())
        .set("seconds", drain.as_secs_f64())
        .set("first_k", first_k as f64)
        .set(
            "first_k_rate",
            first_k as f64 / kth.saturating_duration_since(first).as_secs_f64(),
        )
        .set("steady_rate", steady)
        .set(
            "startup_ms",
            first.saturating_duration_since(spawned).as_secs_f64() * 1e3,
        )
        .set("ready_ms", ready.as_secs_f64() * 1e3)
        .set(
            "rate_from_spawn",
            b as f64 / done.saturating_duration_since(spawned).as_secs_f64(),
        )
        .set("fill_rate", b as f64 / fill_time.as_secs_f64())
        .set("peak_rss_mb", peak)
        .set("db_bytes_per_callout", (db_file + wal) as f64 / b as f64)
        .set("db_file_bytes_per_callout", db_file as f64 / b as f64)
        .set("upstream_peak", seen.peak as f64)
        .set(
            "upstream_mean_inflight",
            seen.busy.as_secs_f64() / drain.as_secs_f64(),
        );
    cpu.figures(&mut row);
    sb.stop().await?;
    Ok((row, kept))
}

/// One kind of look-up of the queued phase.
struct Lookup {
    name: &'static str,
    what: &'static str,
    p50: &'static str,
    p99: &'static str,
    /// Held to the 5 ms target.
    target: bool,
}

const LOOKUPS: [Lookup; 10] = [
    Lookup {
        name: "get",
        what: "GET /v1/callouts/{id}, random ids",
        p50: "get_p50_ms",
        p99: "get_p99_ms",
        target: true,
    },
    Lookup {
        name: "attempts",
        what: "GET /v1/callouts/{id}/attempts, random ids",
        p50: "attempts_p50_ms",
        p99: "attempts_p99_ms",
        target: true,
    },
    Lookup {
        name: "list",
        what: "GET /v1/callouts?limit=50, first page",
        p50: "list_p50_ms",
        p99: "list_p99_ms",
        target: true,
    },
    Lookup {
        name: "list-deep",
        what: "GET /v1/callouts?limit=50&cursor=…, 90 % deep",
        p50: "list_deep_p50_ms",
        p99: "list_deep_p99_ms",
        target: true,
    },
    Lookup {
        name: "queued",
        what: "GET /v1/callouts?status=queued&limit=50, first page",
        p50: "queued_p50_ms",
        p99: "queued_p99_ms",
        target: true,
    },
    Lookup {
        name: "queued-deep",
        what: "GET /v1/callouts?status=queued&limit=50&cursor=…, 90 % deep",
        p50: "queued_deep_p50_ms",
        p99: "queued_deep_p99_ms",
        target: true,
    },
    Lookup {
        name: "function-queued",
        what: "GET /v1/callouts?function=…&status=queued&limit=50, first page",
        p50: "function_queued_p50_ms",
        p99: "function_queued_p99_ms",
        target: true,
    },
    Lookup {
        name: "walk",
        what: "GET /v1/callouts?limit=500&cursor=…, walking to 90 % deep",
        p50: "walk_p50_ms",
        p99: "walk_p99_ms",
        target: false,
    },
    Lookup {
        name: "readyz",
        what: "GET /readyz",
        p50: "readyz_p50_ms",
        p99: "readyz_p99_ms",
        target: false,
    },
    Lookup {
        name: "metrics",
        what: "GET /metrics",
        p50: "metrics_p50_ms",
        p99: "metrics_p99_ms",
        target: false,
    },
];

/// Look-ups of each kind in the queued phase.
const LOOKUP_COUNT: usize = 200;

/// One GET with the caller key, expecting 200; returns the body and the round trip (to the
/// last byte of the body, before any parsing).
async fn get_timed(client: &reqwest::Client, url: &str) -> Result<(Bytes, u64), String> {
    let began = Instant::now();
    let response = client
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
    let micros = began.elapsed().as_micros() as u64;
    if status != StatusCode::OK {
        return Err(format!(
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok((body, micros))
}

/// A page of `GET /v1/callouts`: its ids and its `next_cursor`.
fn page_of(url: &str, body: &[u8]) -> Result<(Vec<String>, Option<String>), String> {
    let page: Value =
        serde_json::from_slice(body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
    let ids = page["callouts"]
        .as_array()
        .ok_or_else(|| format!("GET {url}: no callouts in {page}"))?
        .iter()
        .map(|c| c["id"].as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("GET {url}: a callout without an id"))?;
    Ok((ids, page["next_cursor"].as_str().map(str::to_string)))
}

/// `LOOKUP_COUNT` sequential GETs of `url(i)`, each answer checked by `check(i, body)`.
async fn lookups(
    client: &reqwest::Client,
    deadline: Instant,
    url: impl Fn(usize) -> String,
    check: impl Fn(usize, &str, &[u8]) -> Result<(), String>,
) -> Result<Trips, String> {
    let mut trips = Trips::default();
    for i in 0..LOOKUP_COUNT {
        if Instant::now() > deadline {
            return Err(format!("deadline passed after {i} look-ups"));
        }
        let url = url(i);
        let (body, micros) = get_timed(client, &url).await?;
        check(i, &url, &body)?;
        trips.micros.push(micros);
    }
    Ok(trips)
}

/// `ids.len()` callouts queued in `db` under a Switchboard with its dispatcher off: its memory,
/// and the round trips of look-ups over HTTP.
async fn queued(up: &Upstream, filled: Filled) -> Result<Row, String> {
    let Filled { db, mut ids } = filled;
    // The API's order (newest first is the reverse).
    ids.sort_unstable();
    let n = ids.len();
    let spawned = Instant::now();
    let mut sb = Switchboard::start_on(up, db, false, Start::Serve).await?;
    let ready = spawned.elapsed();
    let rss_start = sb.rss_mb();
    let counts = sb.counts().await?;
    let queued_now = counts.get("queued").copied().unwrap_or(0);
    if queued_now != n as u64 {
        return Err(format!(
            "{queued_now} callouts queued, expected {n}: {counts:?}"
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let client = http_client()?;
    let base = sb.base.clone();
    let mut trips: BTreeMap<&'static str, Trips> = BTreeMap::new();

    // Random ids, the same every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let picks: Vec<usize> = (0..LOOKUP_COUNT)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        })
        .collect();
    let id = |i: usize| ids[picks[i]].as_str();
    let t = lookups(
        &client,
        deadline,
        |i| format!("{base}/v1/callouts/{}", id(i)),
        |i, url, body| {
            let callout: Value =
                serde_json::from_slice(body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
            if callout["id"].as_str() != Some(id(i)) || callout["status"] != "queued" {
                return Err(format!("GET {url} answered {callout}"));
            }
            Ok(())
        },
    )
    .await?;
    trips.insert("get", t);
    let t = lookups(
        &client,
        deadline,
        |i| format!("{base}/v1/callouts/{}/attempts", id(i)),
        |_, url, body| {
            let journal: Value =
                serde_json::from_slice(body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
            if journal["attempts"].as_array().is_none_or(|a| !a.is_empty()) {
                return Err(format!("GET {url} answered {journal}"));
            }
            Ok(())
        },
    )
    .await?;
    trips.insert("attempts", t);

    // Walk to 90 % deep in pages of 500; the cursor there serves the deep pages.
    let pages = (n * 9 / 10 / 500).max(1);
    let mut walk = Trips::default();
    let mut cursor: Option<String> = None;
    for page in 0..pages {
        if Instant::now() > deadline {
            return Err(format!("deadline passed after {page} pages of 500"));
        }
        let url = match &cursor {
            None => format!("{base}/v1/callouts?limit=500"),
            Some(c) => format!("{base}/v1/callouts?limit=500&cursor={c}"),
        };
        let (body, micros) = get_timed(&client, &url).await?;
        walk.micros.push(micros);
        let (got, next) = page_of(&url, &body)?;
        let want = 500.min(n - page * 500);
        if got.len() != want
            || got.first().map(String::as_str) != ids.get(n - 1 - page * 500).map(String::as_str)
        {
            return Err(format!(
                "GET {url}: {} callouts from {:?}, expected {want} from {:?}",
                got.len(),
                got.first(),
                ids.get(n - 1 - page * 500)
            ));
        }
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    trips.insert("walk", walk);
    let depth = pages * 500;
    // A page of up to 50 from `from` (newest first) on, or `None` past the end.
    let expect = |from: usize| (from < n).then(|| (50.min(n - from), ids[n - 1 - from].clone()));
    let page_check = |from: usize| {
        move |_: usize, url: &str, body: &[u8]| -> Result<(), String> {
            let (got, _) = page_of(url, body)?;
            let want = expect(from);
            let found = (!got.is_empty()).then(|| (got.len(), got[0].clone()));
            if found != want {
                return Err(format!("GET {url}: found {found:?}, expected {want:?}"));
            }
            Ok(())
        }
    };
    for (name, query, from) in [
        ("list", String::new(), 0),
        ("queued", "&status=queued".to_string(), 0),
        (
            "function-queued",
            format!("&function={FUNCTION}&status=queued"),
            0,
        ),
    ] {
        let url = format!("{base}/v1/callouts?limit=50{query}");
        let t = lookups(&client, deadline, |_| url.clone(), page_check(from)).await?;
        trips.insert(name, t);
    }
    if let Some(cursor) = &cursor {
        for (name, query) in [("list-deep", ""), ("queued-deep", "&status=queued")] {
            let url = format!("{base}/v1/callouts?limit=50&cursor={cursor}{query}");
            let t = lookups(&client, deadline, |_| url.clone(), page_check(depth)).await?;
            trips.insert(name, t);
        }
    }
    for name in ["readyz", "metrics"] {
        let url = format!("{base}/{name}");
        let t = lookups(&client, deadline, |_| url.clone(), |_, _, _| Ok(())).await?;
        trips.insert(name, t);
    }

    let mut row = Row::new(
        format!("queued-{n}"),
        &format!(
            "{} queued, dispatcher off: look-ups",
            fmt(Some(n as f64), 0)
        ),
        n,
    );
    row.set("rss_start_mb", rss_start)
        .set("rss_mb", sb.rss_mb())
        .set("peak_rss_mb", sb.peak_rss_mb())
        .set("ready_ms", ready.as_secs_f64() * 1e3)
        .set(
            "walk_pages",
            trips.get("walk").map_or(0, |t| t.micros.len()) as f64,
        );
    for lookup in &LOOKUPS {
        if let Some(t) = trips.get(lookup.name) {
            let (p50, p99) = trip_ms(t);
            row.set(lookup.p50, p50).set(lookup.p99, p99);
        }
    }
    sb.stop().await?;
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// CPU time by thread

/// On-CPU nanoseconds of each thread of a process (`self` or a pid), with its name.
fn thread_times(process: &str) -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{process}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let tid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        let sched = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
        let ns = sched.split_whitespace().next()?.parse::<u64>().ok()?;
        Some((tid, comm.trim().to_string(), ns))
    })
    .collect()
}

/// The name of the SQLite store's writer thread (in the server process, or in this one for
/// the store phase).
const WRITER_THREAD: &str = "sqlite-writer";

const CPU_GROUPS: [(&str, &str); 5] = [
    (
        "cpu_server_us",
        "Switchboard runtime (API, engine, dispatcher, wrapper)",
    ),
    ("cpu_writer_us", "SQLite writer thread"),
    ("cpu_readers_us", "SQLite read connection threads"),
    ("cpu_bench_us", "load client and upstream"),
    ("cpu_other_us", "other threads"),
];

/// Thread times at the start of a phase: this process's and the server process's.
struct CpuMark {
    at: Instant,
    /// Busy CPU time of the whole machine (`/proc/stat`), to tell other processes' load.
    machine_busy: Duration,
    server: Option<u32>,
    before: BTreeMap<u32, u64>,
}

/// Busy CPU time of the whole machine since boot, from `/proc/stat` (clock ticks of 10 ms).
fn machine_busy() -> Duration {
    let ticks: u64 = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            // cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(
                fields
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
                    .map(|(_, v)| v)
                    .sum(),
            )
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time spent in a phase, by group of threads.
struct CpuSpent {
    /// Cores kept busy by other processes during the phase (noise).
    foreign: f64,
    wall: Duration,
    by_group: BTreeMap<&'static str, Duration>,
}

impl CpuMark {
    fn threads(server: Option<u32>) -> Vec<(u32, String, u64)> {
        let mut all = thread_times("self");
        if let Some(pid) = server {
            all.extend(thread_times(&pid.to_string()));
        }
        all
    }

    /// `server`: the server process, if any.
    fn now(server: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            machine_busy: machine_busy(),
            server,
            before: CpuMark::threads(server)
                .into_iter()
                .map(|(tid, _, ns)| (tid, ns))
                .collect(),
        }
    }

    /// Takes in a server process started after the mark: its threads count from zero, so its
    /// start-up is in the figures.
    fn attach(&mut self, server: u32) {
        self.server = Some(server);
    }

    /// Threads that ended during the phase are missed (tokio's idle blocking threads only).
    fn since(&self) -> CpuSpent {
        let mut by_group: BTreeMap<&'static str, Duration> = BTreeMap::new();
        for (tid, comm, ns) in CpuMark::threads(self.server) {
            let spent = ns.saturating_sub(self.before.get(&tid).copied().unwrap_or(0));
            let group = if comm == WRITER_THREAD {
                "cpu_writer_us"
            } else if comm.starts_with("sb-worker") {
                "cpu_server_us"
            } else if comm.starts_with("sqlx-sqlite") {
                "cpu_readers_us"
            } else if comm.starts_with("bench-worker") || tid == std::process::id() {
                "cpu_bench_us"
            } else {
                "cpu_other_us"
            };
            *by_group.entry(group).or_default() += Duration::from_nanos(spent);
        }
        let wall = self.at.elapsed();
        let ours: Duration = by_group.values().sum();
        let busy = machine_busy().saturating_sub(self.machine_busy);
        CpuSpent {
            foreign: busy.saturating_sub(ours).as_secs_f64() / wall.as_secs_f64(),
            wall,
            by_group,
        }
    }
}

impl CpuSpent {
    /// Microseconds of CPU per callout by group, their total, and the cores kept busy.
    fn figures(&self, row: &mut Row) {
        let n = row.n.max(1) as f64;
        let mut total = Duration::ZERO;
        for (group, _) in CPU_GROUPS {
            let spent = self.by_group.get(group).copied().unwrap_or_default();
            total += spent;
            row.set(group, spent.as_secs_f64() * 1e6 / n);
        }
        row.set("cpu_total_us", total.as_secs_f64() * 1e6 / n)
            .set("cores_busy", total.as_secs_f64() / self.wall.as_secs_f64())
            .set("other_processes_cores", self.foreign);
    }
}

// ---------------------------------------------------------------------------------------------
// Report

/// Rows of every run, by scenario, in first-seen order.
struct Results {
    order: Vec<String>,
    runs: BTreeMap<String, Vec<Row>>,
}

impl Results {
    fn add(&mut self, row: Row) {
        println!("  {:<26} {}", row.key, summary(&row));
        if !self.runs.contains_key(&row.key) {
            self.order.push(row.key.clone());
        }
        self.runs.entry(row.key.clone()).or_default().push(row);
    }

    /// The median of a figure over runs.
    fn median(&self, key: &str, name: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .runs
            .get(key)?
            .iter()
            .filter_map(|r| r.values.get(name).copied())
            .collect();
        (!values.is_empty()).then(|| median(&values))
    }
}

fn summary(row: &Row) -> String {
    let v = |name: &str| row.values.get(name).copied().unwrap_or(f64::NAN);
    if row.key.starts_with("queued-") {
        let mut text = format!(
            "rss {:.1} MB, peak {:.1} MB; p99 ms:",
            v("rss_mb"),
            v("peak_rss_mb")
        );
        for lookup in &LOOKUPS {
            if let Some(p99) = row.values.get(lookup.p99) {
                text.push_str(&format!(" {} {p99:.1}", lookup.name));
            }
        }
        return text;
    }
    let mut text = format!("{:>8.0}/s", v("rate"));
    if let Some(r) = row.values.get("first_k_rate") {
        text.push_str(&format!("  first {} {r:.0}/s", v("first_k")));
    }
    if let Some(r) = row.values.get("ratio_to_smallest_backlog") {
        text.push_str(&format!("  {r:.2} × smallest backlog"));
    }
    if let Some(r) = row.values.get("ratio_to_ceiling") {
        text.push_str(&format!("  {r:.2} × ceiling"));
    }
    if row.values.get("p50_ms").is_some_and(|p| p.is_finite()) {
        text.push_str(&format!(
            "  p50 {:>7.1} ms  p99 {:>7.1} ms",
            v("p50_ms"),
            v("p99_ms")
        ));
    }
    if let Some(rss) = row.values.get("peak_rss_mb") {
        text.push_str(&format!("  rss {rss:>5.1} MB"));
    }
    if let Some(c) = row.values.get("cpu_total_us") {
        text.push_str(&format!("  cpu {c:>5.0} µs/callout"));
    }
    if let Some(c) = row.values.get("commits_per_callout") {
        text.push_str(&format!("  commits/callout {c:.3}"));
    }
    text
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (status_kb_of("/proc/meminfo", "MemTotal:") / 1024.0 / 1024.0).round(),
        "kernel": kernel,
    })
}

fn status_kb_of(file: &str, field: &str) -> f64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => {
            let text = format!("{v:.decimals$}");
            // Thousands separators for the integer part.
            let (int, frac) = text
                .split_once('.')
                .map_or((text.as_str(), ""), |(i, f)| (i, f));
            let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
            let mut grouped = String::new();
            for (k, ch) in digits.chars().enumerate() {
                if k > 0 && (digits.len() - k) % 3 == 0 {
                    grouped.push(',');
                }
                grouped.push(ch);
            }
            if frac.is_empty() {
                format!("{sign}{grouped}")
            } else {
                format!("{sign}{grouped}.{frac}")
            }
        }
        _ => "–".to_string(),
    }
}

/// What a run prints and writes.
struct Report {
    /// The main table (Markdown).
    table: String,
    /// CPU time by thread group (Markdown).
    cpu: String,
    /// The backlog and queued phases' own tables (Markdown), if they ran.
    backlog: String,
    queued: String,
    verdicts: Vec<String>,
    document: Value,
}

/// The tables, the target verdicts, and the JSON document.
fn report(results: &Results, o: &Options) -> Report {
    let mut table = String::from(
        "| scenario | N | callouts/s | × ceiling | latency p50 / p99 (ms) | mean in flight | peak RSS (MB) | DB bytes/callout: file + WAL | commits/callout |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut rows_json = Vec::new();
    for key in &results.order {
        let Some(rows) = results.runs.get(key) else {
            continue;
        };
        let Some(first) = rows.first() else { continue };
        let m = |name: &str| results.median(key, name);
        // The median of each run's ratio to the ceiling of the same run.
        let ratio = m("ratio_to_ceiling");
        let label = match key.split_once('@') {
            Some((_, lat)) => format!("{} ({lat} upstream)", first.what),
            None => first.what.clone(),
        };
        // The queued phase has a table of its own.
        if !key.starts_with("queued-") {
            table.push_str(&format!(
                "| {label} | {} | {} | {} | {} / {} | {} | {} | {} | {} |\n",
                fmt(Some(first.n as f64), 0),
                fmt(m("rate"), 0),
                fmt(ratio, 2),
                fmt(m("p50_ms"), 1),
                fmt(m("p99_ms"), 1),
                fmt(m("upstream_mean_inflight"), 1),
                fmt(m("peak_rss_mb"), 1),
                match (m("db_file_bytes_per_callout"), m("db_bytes_per_callout")) {
                    (Some(file), Some(all)) =>
                        format!("{} + {}", fmt(Some(file), 0), fmt(Some(all - file), 0)),
                    _ => "–".to_string(),
                },
                fmt(m("commits_per_callout"), 3),
            ));
        }
        let names: HashSet<&str> = rows.iter().flat_map(|r| r.values.keys().copied()).collect();
        let mut medians = serde_json::Map::new();
        let mut sorted: Vec<&str> = names.into_iter().collect();
        sorted.sort_unstable();
        for name in sorted {
            let all: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.values.get(name).copied())
                .collect();
            medians.insert(
                name.to_string(),
                json!({
                    "median": median(&all),
                    "min": all.iter().copied().fold(f64::INFINITY, f64::min),
                    "max": all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "runs": all,
                }),
            );
        }
        rows_json.push(json!({
            "scenario": key,
            "what": first.what,
            "n": first.n,
            "figures": medians,
            "detail": rows.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
        }));
    }

    let mut cpu = String::from(
        "| scenario | Switchboard runtime | SQLite writer | SQLite readers | client + upstream | total | cores busy | other processes (cores) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for key in results.order.iter().filter(|k| !k.starts_with("queued-")) {
        let m = |name: &str| results.median(key, name);
        cpu.push_str(&format!(
            "| {key} | {} | {} | {} | {} | {} | {} | {} |\n",
            fmt(m("cpu_server_us"), 0),
            fmt(m("cpu_writer_us"), 0),
            fmt(m("cpu_readers_us"), 0),
            fmt(m("cpu_bench_us"), 0),
            fmt(m("cpu_total_us"), 0),
            fmt(m("cores_busy"), 2),
            fmt(m("other_processes_cores"), 2),
        ));
    }
    let noisy: Vec<&str> = results
        .order
        .iter()
        .filter(|key| {
            results.runs.get(*key).into_iter().flatten().any(|r| {
                r.values
                    .get("other_processes_cores")
                    .is_some_and(|c| *c > 0.2)
            })
        })
        .map(String::as_str)
        .collect();
    if !noisy.is_empty() {
        cpu.push_str(&format!(
            "\nwarning: other processes kept more than 0.2 cores busy during some runs of: {}; \
             their figures are not clean\n",
            noisy.join(", ")
        ));
    }

    let mut verdicts = Vec::new();
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    for &lat in &o.latencies {
        let ratio =
            |scenario: &str| results.median(&format!("{scenario}@{lat}ms"), "ratio_to_ceiling");
        let (s, b) = (ratio("single"), ratio("batch"));
        let want = if lat >= 50 {
            Some(0.95)
        } else if lat == 0 {
            Some(0.25)
        } else {
            None
        };
        if let Some(want) = want {
            for (name, ratio) in [("single POSTs", s), ("batch POSTs", b)] {
                if let Some(ratio) = ratio {
                    verdicts.push(format!(
                        "{lat} ms upstream, {name}: {ratio:.2} × ceiling (target ≥ {want}): {}",
                        verdict(ratio >= want)
                    ));
                }
            }
        }
        if let Some(p99) = results.median(&format!("paced@{lat}ms"), "p99_ms") {
            let limit = lat as f64 + 20.0;
            verdicts.push(format!(
                "{lat} ms upstream, enqueue-to-completion p99 at half rate: {p99:.0} ms \
                 (target ≤ {limit:.0} ms): {}",
                verdict(p99 <= limit)
            ));
        }
    }
    if let Some(rate) = results.median("enqueue-single", "rate") {
        verdicts.push(format!(
            "durable enqueue, single POSTs: {rate:.0}/s (target ≥ 15,000/s): {}",
            verdict(rate >= 15_000.0)
        ));
    }
    if let Some(rate) = results.median("enqueue-batch", "rate") {
        verdicts.push(format!(
            "durable enqueue, batches of {}: {rate:.0}/s (target ≥ 15,000/s): {}",
            o.batch,
            verdict(rate >= 15_000.0)
        ));
    }
    let (backlog, queued) = backlog_tables(results, o, &mut verdicts);
    let document = json!({
        "benchmark": "pipeline",
        "command": "cargo bench --bench pipeline",
        "options": {
            "n": o.n, "enqueue_n": o.enqueue_n, "latencies_ms": o.latencies, "runs": o.runs,
            "batch": o.batch, "backlog": o.backlog, "quick": o.quick,
            "concurrency": CONCURRENCY,
        },
        "machine": machine(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "rows": rows_json,
        "targets": verdicts,
    });
    Report {
        table,
        cpu,
        backlog,
        queued,
        verdicts,
        document,
    }
}

/// The backlog and queued phases' tables; adds their verdicts.
fn backlog_tables(results: &Results, o: &Options, verdicts: &mut Vec<String>) -> (String, String) {
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let keys = |prefix: &str| -> Vec<&String> {
        results
            .order
            .iter()
            .filter(|k| k.starts_with(prefix))
            .collect()
    };
    let mut backlog = String::new();
    let drains = keys("backlog-");
    if !drains.is_empty() {
        backlog.push_str(
            "| backlog queued before start | drain: first call → all over (/s) | × smallest | calls 10 % → 90 % (/s) | × smallest | first calls | their rate (/s) | × smallest | spawn → first call (ms) | spawn → all over (/s) | peak RSS (MB) | CPU (µs/callout) | fill through the store (/s) |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
    }
    for key in &drains {
        let m = |name: &str| results.median(key, name);
        let lat = key.split_once('@').map_or("", |(_, lat)| lat);
        backlog.push_str(&format!(
            "| {} ({lat} upstream) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            fmt(
                results
                    .runs
                    .get(*key)
                    .and_then(|r| r.first())
                    .map(|r| r.n as f64),
                0
            ),
            fmt(m("rate"), 0),
            fmt(m("ratio_to_smallest_backlog"), 2),
            fmt(m("steady_rate"), 0),
            fmt(m("steady_ratio_to_smallest_backlog"), 2),
            fmt(m("first_k"), 0),
            fmt(m("first_k_rate"), 0),
            fmt(m("first_k_ratio_to_smallest_backlog"), 2),
            fmt(m("startup_ms"), 0),
            fmt(m("rate_from_spawn"), 0),
            fmt(m("peak_rss_mb"), 1),
            fmt(m("cpu_total_us"), 0),
            fmt(m("fill_rate"), 0),
        ));
    }
    if let ([smallest, .., largest], Some(lat)) = (o.backlog.as_slice(), o.latencies.iter().min()) {
        let key = format!("backlog-{largest}@{lat}ms");
        if let Some(ratio) = results.median(&key, "ratio_to_smallest_backlog") {
            verdicts.push(format!(
                "{lat} ms upstream, drain rate with {} queued before start against {}: {ratio:.2} \
                 ({} against {}/s; from the call at 10 % to the one at 90 % {}; over the first {} \
                 calls {}) (target ≥ 0.90): {}",
                fmt(Some(*largest as f64), 0),
                fmt(Some(*smallest as f64), 0),
                fmt(results.median(&key, "rate"), 0),
                fmt(
                    results.median(&format!("backlog-{smallest}@{lat}ms"), "rate"),
                    0
                ),
                fmt(results.median(&key, "steady_ratio_to_smallest_backlog"), 2),
                fmt(results.median(&key, "first_k"), 0),
                fmt(results.median(&key, "first_k_ratio_to_smallest_backlog"), 2),
                verdict(ratio >= 0.90)
            ));
        }
    }

    let mut queued = String::new();
    for key in keys("queued-") {
        let m = |name: &str| results.median(key, name);
        let n = results
            .runs
            .get(key)
            .and_then(|r| r.first())
            .map_or(0, |r| r.n);
        queued.push_str(&format!(
            "{} callouts queued, dispatcher off: RSS {} MB after start-up, {} MB after the \
             look-ups, peak (VmHWM) {} MB; spawn → ready {} ms\n\n\
             | look-up ({LOOKUP_COUNT} sequential, one connection; pages walked: {}) | p50 (ms) | p99 (ms) |\n\
             | --- | ---: | ---: |\n",
            fmt(Some(n as f64), 0),
            fmt(m("rss_start_mb"), 1),
            fmt(m("rss_mb"), 1),
            fmt(m("peak_rss_mb"), 1),
            fmt(m("ready_ms"), 0),
            fmt(m("walk_pages"), 0),
        ));
        for lookup in &LOOKUPS {
            queued.push_str(&format!(
                "| {} | {} | {} |\n",
                lookup.what,
                fmt(m(lookup.p50), 2),
                fmt(m(lookup.p99), 2)
            ));
        }
        if let Some(peak) = m("peak_rss_mb") {
            verdicts.push(format!(
                "{} queued, dispatcher off: peak RSS {peak:.1} MB (target ≤ 64 MB): {}",
                fmt(Some(n as f64), 0),
                verdict(peak <= 64.0)
            ));
        }
        for lookup in LOOKUPS.iter().filter(|l| l.target) {
            if let Some(p99) = m(lookup.p99) {
                verdicts.push(format!(
                    "{} queued, {}: p99 {p99:.2} ms (target < 5 ms): {}",
                    fmt(Some(n as f64), 0),
                    lookup.what,
                    verdict(p99 < 5.0)
                ));
            }
        }
    }
    (backlog, queued)
}

// ---------------------------------------------------------------------------------------------

/// `row` with its ratio to the ceiling's rate.
fn compared(mut row: Row, ceiling_rate: Option<f64>) -> Row {
    if let (Some(c), Some(r)) = (ceiling_rate, row.values.get("rate").copied())
        && c > 0.0
    {
        row.set("ratio_to_ceiling", r / c);
    }
    row
}

/// The backlog phase, at the smallest latency, then the queued phase on the largest backlog.
async fn backlog_phases(up: &Upstream, o: &Options, results: &mut Results) -> Result<(), String> {
    let (Some(&smallest), Some(&largest), Some(&latency)) = (
        o.backlog.first(),
        o.backlog.last(),
        o.latencies.iter().min(),
    ) else {
        return Ok(());
    };
    let mut kept = None;
    if o.runs_phase("backlog") {
        let first_k = smallest.min(1_000);
        // The smallest backlog's rates in this run: the medians of its repeats.
        let mut base: Option<(f64, f64, f64)> = None;
        for &b in &o.backlog {
            let mut rows = Vec::new();
            for repeat in 0..backlog_repeats(b) {
                let keep = o.runs_phase("queued") && b == largest && repeat == 0;
                let (row, copy) = backlog(up, b, latency, first_k, keep, o).await?;
                kept = copy.or(kept);
                rows.push(row);
            }
            let of_repeats = |name: &str| {
                let values: Vec<f64> = rows
                    .iter()
                    .filter_map(|r| r.values.get(name).copied())
                    .collect();
                median(&values)
            };
            let here = (
                of_repeats("rate"),
                of_repeats("first_k_rate"),
                of_repeats("steady_rate"),
            );
            let (rate, first, steady) = *base.get_or_insert(here);
            for mut row in rows {
                row.set("ratio_to_smallest_backlog", here.0 / rate)
                    .set("first_k_ratio_to_smallest_backlog", here.1 / first)
                    .set("steady_ratio_to_smallest_backlog", here.2 / steady);
                results.add(row);
            }
        }
    }
    if o.runs_phase("queued") {
        let filled = match kept {
            Some(filled) => filled,
            None => {
                let db = Database::fresh()?;
                let ids = fill(&db, largest, fill_deadline(largest)).await?;
                Filled { db, ids }
            }
        };
        results.add(queued(up, filled).await?);
    }
    Ok(())
}

async fn run(o: &Options, rt: &Handle) -> Result<(), String> {
    let up = Upstream::start().await?;
    let mut results = Results {
        order: Vec::new(),
        runs: BTreeMap::new(),
    };
    println!(
        "pipeline: N = {}, enqueue N = {}, latencies {:?} ms, {} run(s), batch {}, backlog {:?}, \
         cap {CONCURRENCY}",
        o.n, o.enqueue_n, o.latencies, o.runs, o.batch, o.backlog
    );
    for run in 1..=o.runs {
        println!("run {run} of {}", o.runs);
        for &lat in &o.latencies {
            // Each Switchboard row of a run is compared with the ceiling of the same run, so
            // that drift of a shared machine between runs does not skew the ratio.
            let mut ceiling_rate = None;
            if o.runs_phase("ceiling") {
                let row = ceiling(&up, o.n, lat, o).await?;
                ceiling_rate = row.values.get("rate").copied();
                results.add(row);
            }
            let mut single_rate = None;
            if o.runs_phase("single") {
                let row = end_to_end(&up, o.n, lat, Enqueue::Single, Start::Serve, o).await?;
                single_rate = row.values.get("rate").copied();
                results.add(compared(row, ceiling_rate));
            }
            if o.runs_phase("batch") {
                let row = end_to_end(&up, o.n, lat, Enqueue::Batch, Start::Serve, o).await?;
                results.add(compared(row, ceiling_rate));
            }
            if o.runs_phase("paced")
                && let Some(rate) = single_rate
            {
                // Half the rate reached, for about as long as the single phase took.
                let rate = rate / 2.0;
                let n = (o.n / 2).max(1);
                let row = end_to_end(&up, n, lat, Enqueue::Paced(rate), Start::Serve, o).await?;
                results.add(compared(row, ceiling_rate));
            }
            if o.runs_phase("probe") {
                let row = end_to_end(&up, o.n, lat, Enqueue::Single, Start::Probed, o).await?;
                results.add(compared(row, ceiling_rate));
            }
        }
        if o.runs_phase("enqueue") {
            results.add(enqueue_only(&up, Enqueue::Single, Start::Serve, o).await?);
        }
        if o.runs_phase("enqueue-batch") {
            results.add(enqueue_only(&up, Enqueue::Batch, Start::Serve, o).await?);
        }
        if o.runs_phase("enqueue") && o.runs_phase("probe") {
            results.add(enqueue_only(&up, Enqueue::Single, Start::Probed, o).await?);
        }
        if o.runs_phase("store") {
            for row in store_only(rt, o.enqueue_n).await? {
                results.add(row);
            }
        }
        backlog_phases(&up, o, &mut results).await?;
    }
    up.stop().await;

    let Report {
        table,
        cpu,
        backlog,
        queued,
        verdicts,
        document,
    } = report(&results, o);
    println!();
    println!(
        "medians of {} run(s); latency: enqueue-to-completion (Switchboard end to end), request \
         round trip (ceiling), POST round trip (enqueue only)",
        o.runs
    );
    print!("{table}");
    println!();
    println!(
        "CPU time per callout (µs; the server process's threads and this process's; medians):"
    );
    print!("{cpu}");
    println!();
    if !backlog.is_empty() {
        println!(
            "Backlog drain (medians): callouts queued through the store before a Switchboard \
             starts with its dispatcher on; rates at the upstream's first call, × the smallest \
             backlog of the same run:"
        );
        print!("{backlog}");
        println!();
    }
    if !queued.is_empty() {
        print!("{queued}");
        println!();
    }
    if o.quick {
        println!("quick run: too small and too short to judge the targets by");
    }
    for v in &verdicts {
        println!("target: {v}");
    }
    if let Some(parent) = o.json.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?;
    std::fs::write(&o.json, text).map_err(|e| format!("write {}: {e}", o.json.display()))?;
    println!("wrote {}", o.json.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child_main(&args[2..]);
    }
    let options = match Options::parse() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    with_runtimes(|server| async move { run(&options, &server).await })
}
