//! What the benchmarks share: the load client, the worker pool that drives it, the two Tokio
//! runtimes (one for Switchboard, one for the load and the upstream) and the median.
//! `benches/pipeline.rs` and `benches/soap.rs` each declare it with `mod support;`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Requests in flight for the ceiling, connections of the load client, and the server's cap.
pub const CONCURRENCY: usize = 25;
/// The caller key of the server.
pub const KEY: &str = "bench-caller-key";
/// Loopback only.
pub const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// The load client: no proxy, a pool as large as the concurrency.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))
}

/// Round-trip times of the requests a set of workers made, in microseconds.
#[derive(Default)]
pub struct Trips {
    pub micros: Vec<u64>,
}

/// `workers` tasks share `n` jobs; `job(i)` is one request. Returns the trips in order of
/// completion; fails on the first failed request or at `deadline`, even during a request.
pub async fn workers<F, Fut>(
    n: usize,
    workers: usize,
    deadline: Instant,
    job: F,
) -> Result<Trips, String>
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
                tokio::time::timeout_at(deadline.into(), job(i))
                    .await
                    .map_err(|_| format!("deadline passed during request {i} of {n}"))??;
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

/// The median of `values` (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

/// Runs `run` on a runtime of the load client and the upstream (threads `bench-worker`),
/// handing it a runtime of Switchboard's own (threads `sb-worker`, one worker per core, as
/// `switchboard serve` has), so their threads' names tell their CPU time apart. Prints the
/// error, if any, and says how the bench exits.
pub fn with_runtimes<F, Fut>(run: F) -> ExitCode
where
    F: FnOnce(tokio::runtime::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|err| format!("no Tokio runtime: {err}"))
    };
    let (bench, server): (Runtime, Runtime) = match (runtime("bench-worker"), runtime("sb-worker"))
    {
        (Ok(b), Ok(s)) => (b, s),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let result = bench.block_on(run(server.handle().clone()));
    server.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
