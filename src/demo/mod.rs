//! `switchboard demo`: the whole engine against a few demo services, in one process.
//!
//! The demo starts an [`upstream`] on loopback that plays four services (orders, stock, a flaky
//! carrier, a throttled loyalty programme), writes the [`connections`] of `metadata/demo/`
//! pointed at it into a temporary folder, and starts the engine through [`server::start`], the
//! path `switchboard serve` takes, on a temporary SQLite file with a random caller key. Then it
//! enqueues callouts over the HTTP API ([`load`]), shows their progress by polling the store's
//! counts, and prints a [`report`]: what became of every callout, the throughput, and the peak
//! number of calls in flight as the engine and the upstream saw it, against the cap.
//!
//! Invariants: everything listens on loopback only; the run is bounded (a fixed number of
//! callouts, a deadline for all of them to end); the server is stopped gracefully and the
//! temporary folder removed on every path out, errors and Ctrl-C included.

pub mod connections;
pub mod load;
pub mod report;
pub mod upstream;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::controller::CallerAuth;
use crate::engine::{Engine, StartError, now_millis};
use crate::metadata::Loader;
use crate::metadata::values::HumanDuration;
use crate::queue::{Status, StoreError};
use crate::server::{self, ServeError, Server, ServerConfig};
use load::{Api, Sent};
use report::Summary;
use upstream::{Upstream, UpstreamError};

/// How often the progress is read from the store.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a progress line is printed when stdout is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(1);
/// How long in-flight calls may finish when the demo stops the engine.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Callouts to enqueue.
    pub callouts: usize,
    /// The engine's cap on calls in flight.
    pub max_concurrent_callouts: usize,
    /// Where the engine's API listens (loopback only; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Client connections that enqueue at once.
    pub client_connections: usize,
    /// How long every callout has to end, from the first enqueue.
    pub deadline: Duration,
    /// After the summary, keep everything running until Ctrl-C.
    pub keep_running: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            callouts: 300,
            max_concurrent_callouts: 25,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_connections: 25,
            deadline: Duration::from_secs(120),
            keep_running: false,
        }
    }
}

/// How a demo run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every callout ended and the cap held.
    Passed,
    /// Some promise broke; the summary says which.
    Failed,
    /// Ctrl-C before the end.
    Interrupted,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "--listen {0} is not a loopback address; the demo only listens on loopback, like 127.0.0.1:0"
    )]
    NotLoopback(SocketAddr),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot create the demo's temporary folder: {0}")]
    TempDir(std::io::Error),
    #[error("cannot write the demo's metadata to {path}: {source}")]
    WriteMetadata {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the engine did not start: {0}")]
    Start(String),
    #[error("cannot build the demo's HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("reading the demo's callouts back failed: {0}")]
    ReadBack(StoreError),
}

/// Runs the demo and prints its progress and summary on stdout.
///
/// # Errors
/// Something the demo needs could not be set up (addresses, the temporary folder, the
/// engine), or the store could not be read at the end. A run that breaks a promise is not an
/// error but [`Verdict::Failed`].
pub async fn run(options: DemoOptions) -> Result<Verdict, DemoError> {
    if !options.listen.ip().is_loopback() {
        return Err(DemoError::NotLoopback(options.listen));
    }
    let upstream = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let temp = match tempfile::Builder::new()
        .prefix("switchboard-demo-")
        .tempdir()
    {
        Ok(temp) => temp,
        Err(err) => {
            upstream.stop().await;
            return Err(DemoError::TempDir(err));
        }
    };
    let metadata_dir = temp.path().join("metadata");
    let written = std::fs::create_dir(&metadata_dir)
        .and_then(|()| connections::write_metadata(&metadata_dir, upstream.addr));
    if let Err(source) = written {
        upstream.stop().await;
        return Err(DemoError::WriteMetadata {
            path: metadata_dir,
            source,
        });
    }
    let key = format!("demo-{:032x}", rand::random::<u128>());
    let db_url = format!("sqlite://{}", temp.path().join("demo.db").display());
    let mut config = ServerConfig::new(&metadata_dir, db_url);
    config.listen = options.listen;
    config.max_concurrent_callouts = options.max_concurrent_callouts.max(1);
    config.auth = CallerAuth::Keys(Arc::new(vec![key.clone()]));
    config.shutdown_grace = SHUTDOWN_GRACE;
    let server = match server::start(config, Loader::new()).await {
        Ok(server) => server,
        Err(err) => {
            upstream.stop().await;
            return Err(DemoError::Start(start_error(err)));
        }
    };
    let result = drive(&options, &server, &upstream, &key).await;
    server.stop().await;
    upstream.stop().await;
    // Removes the database and the metadata; a failure only leaves files in the temp folder.
    if let Err(err) = temp.close() {
        eprintln!("warning: could not remove the demo's temporary folder: {err}");
    }
    result
}

/// A start error with every metadata problem spelled out.
fn start_error(err: ServeError) -> String {
    match err {
        ServeError::Engine(StartError::Invalid(problems)) => {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!(
                "the demo's metadata has problems (a bug in the demo):\n{}",
                lines.join("\n")
            )
        }
        other => other.to_string(),
    }
}

/// Enqueues, waits, reports, and (if asked) keeps running until Ctrl-C.
async fn drive(
    options: &DemoOptions,
    server: &Server,
    upstream: &Upstream,
    key: &str,
) -> Result<Verdict, DemoError> {
    let base = format!("http://{}", server.addr);
    let cap = options.max_concurrent_callouts.max(1);
    let connections = options.client_connections.max(1);
    println!(
        "Switchboard demo: {} callouts, at most {cap} calls in flight",
        options.callouts
    );
    println!(
        "  demo services  http://{}  (orders, stock, a flaky carrier, a throttled loyalty scheme)",
        upstream.addr
    );
    println!("  engine API     {base}");
    println!();
    let api = Api::new(base.clone(), key.to_string(), connections).map_err(DemoError::Client)?;
    let plan = Arc::new(load::plan(options.callouts));
    let sent_so_far = Arc::new(AtomicUsize::new(0));
    let first_enqueue = now_millis();
    let enqueueing = tokio::spawn(load::enqueue(
        api,
        plan.clone(),
        connections,
        sent_so_far.clone(),
    ));
    let waited = wait_for_the_end(&server.engine, options, enqueueing, &sent_so_far).await;
    let Some(sent) = waited.sent else {
        println!("interrupted while enqueueing; stopping");
        return Ok(Verdict::Interrupted);
    };
    if waited.interrupted {
        println!("interrupted; stopping (the summary below is partial)");
    } else if waited.timed_out {
        println!(
            "error: not every callout ended within {} (--timeout); the summary shows where they are",
            HumanDuration(options.deadline)
        );
    }
    let mut summary = gather(&server.engine, &sent, first_enqueue).await?;
    summary.planned = plan.len();
    summary.client_connections = connections;
    summary.engine_peak = server.engine.metrics().peak_inflight();
    summary.cap = cap;
    summary.upstream = upstream.report();
    println!();
    print!("{}", summary.render());
    if waited.interrupted {
        return Ok(Verdict::Interrupted);
    }
    let verdict = if summary.problems().is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed
    };
    if options.keep_running {
        print_how_to_play(&base, key);
        if let Err(err) = tokio::signal::ctrl_c().await {
            eprintln!("warning: cannot wait for Ctrl-C ({err}); stopping now");
        }
        println!("stopping");
    } else {
        println!("Try the API yourself: switchboard demo --keep-running");
    }
    Ok(verdict)
}

/// How the wait for every callout to end came out.
struct Waited {
    /// What enqueueing did; `None` if it was cut short.
    sent: Option<Sent>,
    timed_out: bool,
    interrupted: bool,
}

/// Polls the store's counts until every enqueued callout has ended, the deadline passes or
/// Ctrl-C, showing progress.
async fn wait_for_the_end(
    engine: &Engine,
    options: &DemoOptions,
    mut enqueueing: JoinHandle<Sent>,
    sent_so_far: &AtomicUsize,
) -> Waited {
    let deadline = Instant::now() + options.deadline;
    let mut progress = Progress::new(options.callouts);
    let mut sent: Option<Sent> = None;
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    let too_late = tokio::time::sleep_until(deadline);
    tokio::pin!(ctrl_c, too_late);
    // Without a Ctrl-C handler the demo still runs; only the deadline ends it early.
    let mut ctrl_c_works = true;
    let (timed_out, interrupted) = loop {
        tokio::select! {
            caught = &mut ctrl_c, if ctrl_c_works => match caught {
                Ok(()) => break (false, true),
                Err(err) => {
                    progress.note(&format!("Ctrl-C cannot be caught ({err})"));
                    ctrl_c_works = false;
                }
            },
            _ = &mut too_late => break (true, false),
            _ = ticks.tick() => {}
        }
        if sent.is_none() && enqueueing.is_finished() {
            sent = Some(match (&mut enqueueing).await {
                Ok(sent) => sent,
                Err(err) => Sent {
                    ids: vec![Err(format!("the enqueueing task failed: {err}")); options.callouts],
                    ..Sent::default()
                },
            });
        }
        let counts = match engine.store().counts().await {
            Ok(counts) => counts.into_iter().collect::<HashMap<Status, u64>>(),
            Err(err) => {
                progress.note(&format!("reading the counts failed: {err}"));
                continue;
            }
        };
        let expected = sent
            .as_ref()
            .map(|s| s.ids.iter().filter(|id| id.is_ok()).count());
        let inflight = engine.metrics().inflight();
        let ended = progress.show(
            &counts,
            inflight,
            sent_so_far.load(Ordering::SeqCst),
            expected,
        );
        if expected.is_some_and(|expected| ended >= expected as u64) {
            break (false, false);
        }
    };
    progress.finish();
    if sent.is_none() {
        // Cut short while enqueueing: stop sending. After the deadline, the summary counts
        // every callout as not enqueued, since the answers were not all in.
        enqueueing.abort();
        if timed_out {
            sent = Some(Sent {
                ids: vec![Err("no answer before the deadline".to_string()); options.callouts],
                ..Sent::default()
            });
        }
    }
    Waited {
        sent,
        timed_out,
        interrupted,
    }
}

/// The progress bar on a terminal, a line a second otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
    planned: usize,
}

impl Progress {
    fn new(planned: usize) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(planned as u64), ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:40}] {pos}/{len} callouts ended\n  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(POLL_INTERVAL);
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            last_line: None,
            planned,
        }
    }

    /// Shows `counts` and the calls in flight; returns how many callouts have ended.
    fn show(
        &mut self,
        counts: &HashMap<Status, u64>,
        inflight: usize,
        sent: usize,
        expected: Option<usize>,
    ) -> u64 {
        let n = |s: Status| counts.get(&s).copied().unwrap_or(0);
        let ended = n(Status::Succeeded) + n(Status::Failed) + n(Status::Cancelled);
        let mut detail = format!(
            "succeeded {} · failed {} · retrying {} · queued {} · running {} ({inflight} in flight)",
            n(Status::Succeeded),
            n(Status::Failed),
            n(Status::Retrying),
            n(Status::Queued),
            n(Status::Running),
        );
        if expected.is_none() {
            detail = format!("enqueued {sent}/{} · {detail}", self.planned);
        }
        match &self.bar {
            Some(bar) => {
                if let Some(expected) = expected {
                    bar.set_length(expected as u64);
                }
                bar.set_position(ended);
                bar.set_message(detail);
            }
            None => {
                let due = self
                    .last_line
                    .is_none_or(|last| last.elapsed() >= LINE_INTERVAL);
                if due {
                    self.last_line = Some(Instant::now());
                    println!(
                        "{:>5.1}s  ended {ended}/{}  ({detail})",
                        self.started.elapsed().as_secs_f64(),
                        expected.unwrap_or(self.planned)
                    );
                }
            }
        }
        ended
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => println!("{message}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Reads every enqueued callout back from the store into a summary.
async fn gather(engine: &Engine, sent: &Sent, first_enqueue: i64) -> Result<Summary, DemoError> {
    let mut summary = Summary {
        batched: sent.batched,
        single: sent.single,
        busy_retries: sent.busy_retries,
        ..Summary::default()
    };
    let mut ends = Vec::with_capacity(sent.ids.len());
    for id in &sent.ids {
        let id = match id {
            Ok(id) => id,
            Err(reason) => {
                *summary.not_enqueued.entry(reason.clone()).or_default() += 1;
                continue;
            }
        };
        let Some(callout) = engine.store().get(id).await.map_err(DemoError::ReadBack)? else {
            summary.lost += 1;
            continue;
        };
        let first_error = if callout.status.is_final() && callout.attempts > 1 {
            let attempts = engine
                .store()
                .attempts(id)
                .await
                .map_err(DemoError::ReadBack)?;
            attempts.into_iter().find_map(|a| a.error_kind)
        } else {
            None
        };
        if callout.status.is_final() {
            ends.push(callout.updated_at - first_enqueue);
        }
        summary.record(&callout, first_error.as_deref());
    }
    ends.sort_unstable();
    summary.elapsed_ms = ends.last().copied().unwrap_or(0);
    // The end of the callout nine tenths of the way through (rounded up).
    let p90 = (ends.len() * 9).div_ceil(10);
    summary.p90_ms = p90.checked_sub(1).and_then(|i| ends.get(i)).copied();
    Ok(summary)
}

/// What to paste to try the running engine by hand.
fn print_how_to_play(base: &str, key: &str) {
    println!();
    println!("The engine and the demo services keep running; press Ctrl-C to stop them.");
    println!("  API          {base}");
    println!("  caller key   {key}");
    println!();
    println!(
        "Enqueue a shipment (the flaky carrier answers 503 first, so it takes a retry), keeping its id:"
    );
    println!();
    println!(
        "  ID=$(curl -s -X POST '{base}/v1/callouts' -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"function\":\"shipping.create_shipment\",\"input\":{{\"order_ref\":\"CRM-Q-99999\"}}}}' | grep -o '\"id\":\"[^\"]*\"' | head -n 1 | cut -d '\"' -f 4); echo \"$ID\""
    );
    println!();
    println!("Read it back (add /attempts to the URL to see each attempt):");
    println!();
    println!("  curl -s \"{base}/v1/callouts/$ID\" -H 'Authorization: Bearer {key}'");
    println!();
}
