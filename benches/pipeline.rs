//! The callout pipeline end to end, against the raw-client ceiling, in one run.
//!
//! Run: `cargo bench --bench pipeline` (a full run, a few minutes on 2 cores), or
//! `cargo bench --bench pipeline -- --quick` (a smoke run of seconds; nothing asserted but that
//! every callout succeeds). Options, as arguments after `--` or environment variables:
//!
//! | argument | variable | default (quick) | meaning |
//! | --- | --- | --- | --- |
//! | `--n N` | `PIPELINE_N` | 5000 (200) | calls per end-to-end phase |
//! | `--enqueue-n N` | `PIPELINE_ENQUEUE_N` | 20000 (500) | callouts per enqueue-only phase |
//! | `--latencies 0,50` | `PIPELINE_LATENCIES` | 0,50 | upstream latencies in ms |
//! | `--runs R` | `PIPELINE_RUNS` | 3 (1) | repetitions; the table shows medians |
//! | `--batch B` | `PIPELINE_BATCH` | 100 | items per `POST /v1/callouts/batch` |
//! | `--only a,b` | `PIPELINE_ONLY` | all | phases: ceiling, single, batch, paced, probe, enqueue |
//! | `--json PATH` | `PIPELINE_JSON` | target/bench-pipeline.json | where the JSON goes |
//! | `--quick` | `PIPELINE_QUICK=1` | | the small sizes |
//!
//! What it does, for each upstream latency:
//!
//! - starts an upstream on loopback (axum) that answers `POST /orders` after the latency;
//! - **ceiling**: one reqwest client with exactly 25 requests in flight makes N calls, the same
//!   request Switchboard makes (JSON body, `Idempotency-Key`), and parses each answer;
//! - **single**: Switchboard through `server::start` (temp SQLite file, WAL,
//!   `synchronous=FULL`, cap 25), and a client with 25 connections sending N single
//!   `POST /v1/callouts` — the CRM-trigger path; the clock runs from the first POST until the
//!   store says all N succeeded (checked at the upstream too: N calls, no duplicate key);
//! - **batch**: the same, enqueued through `POST /v1/callouts/batch`;
//! - **paced**: single POSTs at half the rate the single phase reached (open loop), for
//!   enqueue-to-completion latency below saturation;
//! - **probe**: the single phase again on the same pieces `server::start` assembles
//!   (`SqliteStore::open`, `Engine::start`, `controller::serve`), with the store wrapped in a
//!   counter, to reach `SqliteStore::commits()` and time each store operation;
//!
//! and once: **enqueue** only (`dispatch: false`), single POSTs and batches, 25 connections.
//!
//! Latency of an end-to-end phase is enqueue-to-completion: `updated_at - created_at` of each
//! callout (milliseconds, engine clock: from before the enqueue commit to after the upstream
//! answered, before the result's commit). Of the ceiling, the request's round trip; of an
//! enqueue phase, the round trip of the POST (its 202 means durable). Peak RSS is the
//! process's `VmHWM`, reset before each phase through `/proc/self/clear_refs`; the process
//! holds the upstream and the clients too, so compare with the ceiling's. Database bytes are
//! the file, `-wal` and `-shm` sizes right after the phase, divided by its callouts.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use switchboard::controller::{self, AppState, CallerAuth};
use switchboard::engine::{Engine, EngineConfig};
use switchboard::metadata::Loader;
use switchboard::queue::{
    Attempt, Callout, Claimed, Enqueued, Finish, Finished, ListQuery, Millis, NewCallout,
    SqliteStore, Status, Store, StoreError, Transition,
};
use switchboard::server::{self, Server, ServerConfig};
use tempfile::TempDir;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Requests in flight for the ceiling, connections of the load client, and the server's cap.
const CONCURRENCY: usize = 25;
/// The caller key of the server.
const KEY: &str = "bench-caller-key";
/// Loopback only.
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Options {
    n: usize,
    enqueue_n: usize,
    latencies: Vec<u64>,
    runs: usize,
    batch: usize,
    only: Option<HashSet<String>>,
    json: PathBuf,
    quick: bool,
}

const PHASES: [&str; 6] = ["ceiling", "single", "batch", "paced", "probe", "enqueue"];

impl Options {
    fn parse() -> Result<Options, String> {
        let mut given: BTreeMap<String, String> = BTreeMap::new();
        for (var, name) in [
            ("PIPELINE_N", "n"),
            ("PIPELINE_ENQUEUE_N", "enqueue-n"),
            ("PIPELINE_LATENCIES", "latencies"),
            ("PIPELINE_RUNS", "runs"),
            ("PIPELINE_BATCH", "batch"),
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
                "--n" | "--enqueue-n" | "--latencies" | "--runs" | "--batch" | "--only"
                | "--json" => {
                    let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                    given.insert(arg.trim_start_matches("--").to_string(), value);
                }
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; expected --n N, --enqueue-n N, \
                         --latencies 0,50, --runs R, --batch B, --only PHASES, --json PATH or \
                         --quick"
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
        let only = match given.get("only") {
            None => None,
            Some(text) => {
                let set: HashSet<String> = text.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = set.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(format!("--only: unknown phase {bad:?}; expected {PHASES:?}"));
                }
                Some(set)
            }
        };
        let batch = number("batch", 100)?;
        if batch > 1000 {
            return Err(format!("--batch {batch}: a batch holds at most 1000 callouts"));
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

    /// Sets the latency and zeroes the counters.
    fn reset(&self, latency_ms: u64) -> Result<(), String> {
        let s = &self.stats;
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
async fn order(State(stats): State<Arc<UpstreamStats>>, headers: HeaderMap, body: Bytes) -> Response {
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

fn callout_body(i: usize) -> Value {
    json!({ "function": FUNCTION, "input": { "customer": format!("C-{i}"), "quantity": 1 } })
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
        let calls = self.calls.load(Ordering::Relaxed);
        let items = self.items.load(Ordering::Relaxed);
        let nanos = self.nanos.load(Ordering::Relaxed);
        json!({
            "calls": calls,
            "items": items,
            "mean_items": if calls == 0 { 0.0 } else { items as f64 / calls as f64 },
            "mean_wait_ms": if calls == 0 { 0.0 } else { nanos as f64 / calls as f64 / 1e6 },
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
}

/// How a Switchboard is started.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// `server::start`, as `switchboard serve` does.
    Serve,
    /// The same three pieces by hand, with the store behind a [`Probe`].
    Probed,
}

enum Running {
    Served(Server),
    Probed {
        engine: Engine,
        stop: CancellationToken,
        http: JoinHandle<std::io::Result<()>>,
        probe: Arc<Probe>,
    },
}

/// A Switchboard with its temporary metadata folder and database.
struct Switchboard {
    base: String,
    running: Running,
    db: PathBuf,
    _dir: TempDir,
}

impl Switchboard {
    async fn start(upstream: &Upstream, dispatch: bool, how: Start) -> Result<Switchboard, String> {
        // Beside the build, on the real disk: fsync costs what it costs there.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-pipeline-tmp");
        std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
        let dir = tempfile::tempdir_in(&root).map_err(|e| format!("a temp folder: {e}"))?;
        let meta = dir.path().join("metadata");
        std::fs::create_dir(&meta).map_err(|e| format!("create the metadata folder: {e}"))?;
        std::fs::write(meta.join("bench.yaml"), metadata(&upstream.url()))
            .map_err(|e| format!("write the metadata: {e}"))?;
        let db = dir.path().join("switchboard.db");
        let db_url = format!("sqlite://{}", db.display());
        let mut config = ServerConfig::new(&meta, db_url.clone());
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
                // What `server::start` does, with the store kept to read its commits.
                let store = Arc::new(
                    SqliteStore::open(&db_url)
                        .await
                        .map_err(|e| format!("the store does not open: {e}"))?,
                );
                let probe = Arc::new(Probe::new(store));
                let engine_config = EngineConfig {
                    metadata_dir: config.metadata_dir.clone(),
                    max_concurrent_callouts: config.max_concurrent_callouts,
                    shutdown_grace: config.shutdown_grace,
                    dispatch: config.dispatch,
                    ..EngineConfig::default()
                };
                let shared: Arc<dyn Store> = probe.clone();
                let engine = Engine::start(engine_config, shared, Loader::new())
                    .await
                    .map_err(|e| format!("the engine does not start: {e}"))?;
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| format!("the API cannot listen: {e}"))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| format!("the API has no address: {e}"))?;
                let state = AppState {
                    engine: engine.clone(),
                    auth: config.auth.clone(),
                    body_limit: config.body_limit,
                };
                let stop = CancellationToken::new();
                let stopped = stop.clone();
                let http = tokio::spawn(controller::serve(listener, state, async move {
                    stopped.cancelled().await
                }));
                (
                    addr,
                    Running::Probed {
                        engine,
                        stop,
                        http,
                        probe,
                    },
                )
            }
        };
        Ok(Switchboard {
            base: format!("http://{addr}"),
            running,
            db,
            _dir: dir,
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        match &self.running {
            Running::Served(server) => server.engine.store().clone(),
            Running::Probed { engine, .. } => engine.store().clone(),
        }
    }

    fn probe(&self) -> Option<&Arc<Probe>> {
        match &self.running {
            Running::Served(_) => None,
            Running::Probed { probe, .. } => Some(probe),
        }
    }

    /// Bytes of the database file, its `-wal` and its `-shm`.
    fn db_bytes(&self) -> (u64, u64) {
        let size = |suffix: &str| {
            let mut name = self.db.clone().into_os_string();
            name.push(suffix);
            std::fs::metadata(&name).map_or(0, |m| m.len())
        };
        (size(""), size("-wal") + size("-shm"))
    }

    async fn stop(self) {
        match self.running {
            Running::Served(server) => server.stop().await,
            Running::Probed {
                engine, stop, http, ..
            } => {
                stop.cancel();
                let _ = http.await;
                engine.shutdown().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))
}

/// Round-trip times of the requests a set of workers made, in microseconds.
#[derive(Default)]
struct Trips {
    micros: Vec<u64>,
}

/// `workers` tasks share `n` jobs; `job(i)` is one request. Returns the trips in order of
/// completion; fails on the first failed request or at `deadline`.
async fn workers<F, Fut>(n: usize, workers: usize, deadline: Instant, job: F) -> Result<Trips, String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (next, job) = (next.clone(), job.clone());
        set.spawn(async move {
            let mut trips = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(trips);
                }
                if Instant::now() > deadline {
                    return Err(format!("deadline passed after {i} of {n} requests"));
                }
                let began = Instant::now();
                job(i).await?;
                trips.push(began.elapsed().as_micros() as u64);
            }
        });
    }
    let mut all = Trips::default();
    while let Some(joined) = set.join_next().await {
        let trips = joined.map_err(|e| format!("a load worker failed: {e}"))??;
        all.micros.extend(trips);
    }
    Ok(all)
}

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
async fn enqueue_paced(base: &str, n: usize, rate: f64, deadline: Instant) -> Result<Trips, String> {
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
    store: &Arc<dyn Store>,
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
        let counts = store
            .counts()
            .await
            .map_err(|e| format!("counting callouts: {e}"))?;
        let over: u64 = counts
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, k)| *k)
            .sum();
        if over >= n as u64 {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("deadline passed with {over} of {n} callouts over: {counts:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every callout's enqueue-to-completion time (ms); fails unless all `n` succeeded at the
/// first attempt.
async fn completion_times(store: &Arc<dyn Store>, n: usize) -> Result<Vec<u64>, String> {
    let mut times = Vec::with_capacity(n);
    let mut before_id = None;
    for _ in 0..=n / 1000 + 1 {
        let page = store
            .list(&ListQuery {
                status: None,
                function: None,
                limit: 1000,
                before_id: before_id.clone(),
            })
            .await
            .map_err(|e| format!("listing callouts: {e}"))?;
        for c in &page {
            if c.status != Status::Succeeded {
                return Err(format!("callout {} ended {:?}: {:?}", c.id, c.status, c.result));
            }
            times.push(u64::try_from(c.updated_at - c.created_at).unwrap_or(0));
        }
        match page.last() {
            Some(last) if page.len() == 1000 => before_id = Some(last.id.clone()),
            _ => break,
        }
    }
    if times.len() != n {
        return Err(format!("{} callouts stored, expected {n}", times.len()));
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


/// Resets the peak RSS to the current RSS (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    status_kb_of("/proc/self/status", "VmHWM:") / 1024.0
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
        .set("p99_ms", p.1)
        .set("peak_rss_mb", peak_rss_mb());
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
    reset_peak_rss();
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
    let counts = up.counts();
    check_upstream(&counts, n)?;
    let mut row = Row::new(format!("ceiling@{latency}ms"), "ceiling: reqwest, 25 in flight", n);
    figures(&mut row, elapsed, trip_ms(&trips));
    row.set("upstream_peak", counts.peak as f64)
        .set("upstream_mean_inflight", counts.busy.as_secs_f64() / elapsed.as_secs_f64());
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
    let sb = Switchboard::start(up, true, start).await?;
    reset_peak_rss();
    let deadline = o.deadline(n, latency);
    let began = Instant::now();
    let trips = match how {
        Enqueue::Single => enqueue_single(&sb.base, n, deadline).await?,
        Enqueue::Batch => enqueue_batches(&sb.base, n, o.batch, deadline).await?,
        Enqueue::Paced(rate) => enqueue_paced(&sb.base, n, rate, deadline).await?,
    };
    let enqueued = began.elapsed();
    let store = sb.store();
    let done = wait_done(&store, up, n, deadline).await?;
    let elapsed = done - began;
    let peak = peak_rss_mb();
    let counts = up.counts();
    let (db, wal) = sb.db_bytes();
    let times = completion_times(&store, n).await?;
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
        .set("upstream_mean_inflight", counts.busy.as_secs_f64() / elapsed.as_secs_f64());
    if let Enqueue::Paced(rate) = how {
        row.set("offered_rate", rate);
    }
    if let Some(probe) = sb.probe() {
        probed(&mut row, probe, n);
    }
    sb.stop().await;
    Ok(row)
}

/// The probe's figures: commits and store operations per callout.
fn probed(row: &mut Row, probe: &Probe, n: usize) {
    let commits = probe.inner.commits();
    row.set("commits_per_callout", commits as f64 / n as f64);
    let finish_calls = probe.finish.calls.load(Ordering::Relaxed);
    let claim_calls = probe.claim.calls.load(Ordering::Relaxed);
    let claimed = probe.claim.items.load(Ordering::Relaxed);
    row.set("claims_per_callout", claim_calls as f64 / n as f64)
        .set(
            "callouts_per_claim",
            if claim_calls == 0 { 0.0 } else { claimed as f64 / claim_calls as f64 },
        )
        .set("finish_calls_per_callout", finish_calls as f64 / n as f64);
    for (name, stats) in [
        ("enqueue_wait_ms", &probe.enqueue),
        ("claim_wait_ms", &probe.claim),
        ("finish_wait_ms", &probe.finish),
    ] {
        let calls = stats.calls.load(Ordering::Relaxed);
        if calls > 0 {
            row.set(name, stats.nanos.load(Ordering::Relaxed) as f64 / calls as f64 / 1e6);
        }
    }
    row.detail = json!({
        "commits": commits,
        "store": {
            "enqueue": probe.enqueue.json(),
            "claim": probe.claim.json(),
            "finish": probe.finish.json(),
            "reads": probe.reads.json(),
            "other": probe.other.json(),
        }
    });
}

/// Enqueue only (`dispatch: false`).
async fn enqueue_only(up: &Upstream, how: Enqueue, start: Start, o: &Options) -> Result<Row, String> {
    let n = o.enqueue_n;
    let sb = Switchboard::start(up, false, start).await?;
    reset_peak_rss();
    let deadline = o.deadline(n, 1);
    let began = Instant::now();
    let trips = match how {
        Enqueue::Batch => enqueue_batches(&sb.base, n, o.batch, deadline).await?,
        _ => enqueue_single(&sb.base, n, deadline).await?,
    };
    let elapsed = began.elapsed();
    let peak = peak_rss_mb();
    let (db, wal) = sb.db_bytes();
    let store = sb.store();
    let counts = store
        .counts()
        .await
        .map_err(|e| format!("counting callouts: {e}"))?;
    let queued = counts
        .iter()
        .find(|(s, _)| *s == Status::Queued)
        .map_or(0, |(_, k)| *k);
    if queued != n as u64 {
        return Err(format!("{queued} callouts queued, expected {n}: {counts:?}"));
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
    if let Some(probe) = sb.probe() {
        probed(&mut row, probe, n);
    }
    sb.stop().await;
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

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
    let mut text = format!(
        "{:>8.0}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  rss {:>5.1} MB",
        v("rate"),
        v("p50_ms"),
        v("p99_ms"),
        v("peak_rss_mb")
    );
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
            let (int, frac) = text.split_once('.').map_or((text.as_str(), ""), |(i, f)| (i, f));
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

/// The table (Markdown), the target verdicts, and the JSON document.
fn report(results: &Results, o: &Options) -> (String, Vec<String>, Value) {
    let mut table = String::from(
        "| scenario | N | callouts/s | × ceiling | latency p50 / p99 (ms) | peak RSS (MB) | DB bytes/callout | commits/callout |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut rows_json = Vec::new();
    for key in &results.order {
        let Some(rows) = results.runs.get(key) else { continue };
        let Some(first) = rows.first() else { continue };
        let m = |name: &str| results.median(key, name);
        let latency = key.split('@').nth(1).unwrap_or("");
        let ratio = if key.starts_with("ceiling") || key.starts_with("enqueue") {
            None
        } else {
            match (m("rate"), results.median(&format!("ceiling@{latency}"), "rate")) {
                (Some(r), Some(c)) if c > 0.0 => Some(r / c),
                _ => None,
            }
        };
        let label = match key.split_once('@') {
            Some((_, lat)) => format!("{} ({lat} upstream)", first.what),
            None => first.what.clone(),
        };
        table.push_str(&format!(
            "| {label} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
            fmt(Some(first.n as f64), 0),
            fmt(m("rate"), 0),
            fmt(ratio, 2),
            fmt(m("p50_ms"), 1),
            fmt(m("p99_ms"), 1),
            fmt(m("peak_rss_mb"), 1),
            fmt(m("db_bytes_per_callout"), 0),
            fmt(m("commits_per_callout"), 3),
        ));
        let names: HashSet<&str> = rows.iter().flat_map(|r| r.values.keys().copied()).collect();
        let mut medians = serde_json::Map::new();
        let mut sorted: Vec<&str> = names.into_iter().collect();
        sorted.sort_unstable();
        for name in sorted {
            let all: Vec<f64> = rows.iter().filter_map(|r| r.values.get(name).copied()).collect();
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
        if let Some(r) = ratio {
            medians.insert("ratio_to_ceiling".into(), json!(r));
        }
        rows_json.push(json!({
            "scenario": key,
            "what": first.what,
            "n": first.n,
            "figures": medians,
            "detail": rows.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
        }));
    }

    let mut verdicts = Vec::new();
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    for &lat in &o.latencies {
        let c = results.median(&format!("ceiling@{lat}ms"), "rate");
        let s = results.median(&format!("single@{lat}ms"), "rate");
        let b = results.median(&format!("batch@{lat}ms"), "rate");
        let want = if lat >= 50 { Some(0.95) } else if lat == 0 { Some(0.25) } else { None };
        if let (Some(c), Some(want)) = (c, want) {
            for (name, rate) in [("single POSTs", s), ("batch POSTs", b)] {
                if let Some(rate) = rate {
                    let ratio = rate / c;
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
    let document = json!({
        "benchmark": "pipeline",
        "command": "cargo bench --bench pipeline",
        "options": {
            "n": o.n, "enqueue_n": o.enqueue_n, "latencies_ms": o.latencies, "runs": o.runs,
            "batch": o.batch, "quick": o.quick, "concurrency": CONCURRENCY,
        },
        "machine": machine(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "rows": rows_json,
        "targets": verdicts,
    });
    (table, verdicts, document)
}

// ---------------------------------------------------------------------------------------------

async fn run(o: &Options) -> Result<(), String> {
    let up = Upstream::start().await?;
    let mut results = Results {
        order: Vec::new(),
        runs: BTreeMap::new(),
    };
    println!(
        "pipeline: N = {}, enqueue N = {}, latencies {:?} ms, {} run(s), batch {}, cap {CONCURRENCY}",
        o.n, o.enqueue_n, o.latencies, o.runs, o.batch
    );
    for run in 1..=o.runs {
        println!("run {run} of {}", o.runs);
        for &lat in &o.latencies {
            if o.runs_phase("ceiling") {
                results.add(ceiling(&up, o.n, lat, o).await?);
            }
            let mut single_rate = None;
            if o.runs_phase("single") {
                let row = end_to_end(&up, o.n, lat, Enqueue::Single, Start::Serve, o).await?;
                single_rate = row.values.get("rate").copied();
                results.add(row);
            }
            if o.runs_phase("batch") {
                results.add(end_to_end(&up, o.n, lat, Enqueue::Batch, Start::Serve, o).await?);
            }
            if o.runs_phase("paced")
                && let Some(rate) = single_rate
            {
                // Half the rate reached, for about as long as the single phase took.
                let rate = rate / 2.0;
                let n = (o.n / 2).max(1);
                results.add(end_to_end(&up, n, lat, Enqueue::Paced(rate), Start::Serve, o).await?);
            }
            if o.runs_phase("probe") {
                results.add(end_to_end(&up, o.n, lat, Enqueue::Single, Start::Probed, o).await?);
            }
        }
        if o.runs_phase("enqueue") {
            results.add(enqueue_only(&up, Enqueue::Single, Start::Serve, o).await?);
            results.add(enqueue_only(&up, Enqueue::Batch, Start::Serve, o).await?);
            if o.runs_phase("probe") {
                results.add(enqueue_only(&up, Enqueue::Single, Start::Probed, o).await?);
            }
        }
    }
    up.stop().await;

    let (table, verdicts, document) = report(&results, o);
    println!();
    println!(
        "medians of {} run(s); latency: enqueue-to-completion (Switchboard end to end), request \
         round trip (ceiling), POST round trip (enqueue only)",
        o.runs
    );
    print!("{table}");
    println!();
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
    let options = match Options::parse() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: no Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
