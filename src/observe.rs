//! Metrics and logging setup.
//!
//! Metrics are Prometheus text with low-cardinality labels (no ids, no URLs):
//! `switchboard_callouts_total{function,status}` counts finished attempts' outcomes,
//! `switchboard_callouts{status}` is the number of callouts in each status (read from the store
//! at scrape time), `switchboard_inflight` the calls in flight, and
//! `switchboard_attempt_duration_seconds{connection}` a histogram of attempt durations. Each
//! engine has its own recorder, so several engines can live in one process (tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// An engine's metrics.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    inflight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let buckets = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&buckets) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        Metrics {
            recorder: Arc::new(builder.build_recorder()),
            inflight: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A call starts; returns a guard that ends it.
    pub fn call_started(&self) -> InflightGuard {
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.gauge_inflight(now);
        InflightGuard {
            metrics: self.clone(),
        }
    }

    fn gauge_inflight(&self, value: usize) {
        metrics::with_local_recorder(self.recorder.as_ref(), || {
            metrics::gauge!("switchboard_inflight").set(value as f64);
        });
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// The most calls ever in flight at once.
    pub fn peak_inflight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// An attempt finished.
    pub fn attempt(&self, function: &str, connection: &str, status: &str, seconds: f64) {
        let (function, connection, status) = (
            function.to_string(),
            connection.to_string(),
            status.to_string(),
        );
        metrics::with_local_recorder(self.recorder.as_ref(), || {
            metrics::counter!("switchboard_callouts_total", "function" => function, "status" => status)
                .increment(1);
            metrics::histogram!("switchboard_attempt_duration_seconds", "connection" => connection)
                .record(seconds);
        });
    }

    /// Prometheus text, with the number of callouts in each status.
    pub fn render(&self, counts: &[(crate::queue::Status, u64)]) -> String {
        metrics::with_local_recorder(self.recorder.as_ref(), || {
            for (status, n) in counts {
                metrics::gauge!("switchboard_callouts", "status" => status.as_str()).set(*n as f64);
            }
            metrics::gauge!("switchboard_inflight").set(self.inflight() as f64);
        });
        self.recorder.handle().render()
    }
}

/// Ends an in-flight call when dropped.
pub struct InflightGuard {
    metrics: Metrics,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let now = self
            .metrics
            .inflight
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        self.metrics.gauge_inflight(now);
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default` (like `info` or `switchboard=debug`).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
