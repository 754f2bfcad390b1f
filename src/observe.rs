//! Metrics and logging setup.
//!
//! Metrics are Prometheus text with low-cardinality labels (no ids, no URLs):
//! `switchboard_callouts_total{function,status}` counts finished attempts' outcomes,
//! `switchboard_callouts{status}` is the number of callouts in each status (read from the store
//! at scrape time), `switchboard_inflight` the calls in flight, and
//! `switchboard_attempt_duration_seconds{connection}` a histogram of attempt durations,
//! `switchboard_breaker_state{connection}` each circuit breaker's state and
//! `switchboard_breaker_transitions_total{connection,to}` its transitions (both read from the
//! breakers at scrape time). Each engine has its own recorder, so several engines can live in
//! one process (tests).
//!
//! The series a call updates are looked up by name and labels once, then kept as handles: a
//! call updates atomics, and a series still appears in the text only once it has a value.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// An engine's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    /// `switchboard_inflight`.
    inflight_gauge: Gauge,
    /// The series of attempts seen so far; replaced whole (rarely) when one is added.
    series: ArcSwap<Series>,
}

/// The statuses an attempt ends in, in the order of [`Series::outcomes`].
const OUTCOMES: [&str; 3] = ["succeeded", "retrying", "failed"];

/// Handles of the attempt series registered so far.
#[derive(Clone, Default)]
struct Series {
    /// `switchboard_callouts_total{function,status}` by function, one slot per [`OUTCOMES`].
    outcomes: HashMap<String, [Option<Counter>; OUTCOMES.len()]>,
    /// `switchboard_attempt_duration_seconds{connection}` by connection.
    durations: HashMap<String, Histogram>,
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
        let recorder = builder.build_recorder();
        // Set at every render anyway, so registering it now shows nothing new.
        let inflight_gauge =
            metrics::with_local_recorder(&recorder, || metrics::gauge!("switchboard_inflight"));
        Metrics {
            inner: Arc::new(Inner {
                recorder,
                inflight: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                inflight_gauge,
                series: ArcSwap::from_pointee(Series::default()),
            }),
        }
    }

    /// A call starts; returns a guard that ends it.
    pub fn call_started(&self) -> InflightGuard {
        let now = self.inner.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.peak.fetch_max(now, Ordering::SeqCst);
        self.gauge_inflight(now);
        InflightGuard {
            metrics: self.clone(),
        }
    }

    fn gauge_inflight(&self, value: usize) {
        self.inner.inflight_gauge.set(value as f64);
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> usize {
        self.inner.inflight.load(Ordering::SeqCst)
    }

    /// The most calls ever in flight at once.
    pub fn peak_inflight(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// An attempt finished.
    pub fn attempt(&self, function: &str, connection: &str, status: &str, seconds: f64) {
        let slot = OUTCOMES.iter().position(|s| *s == status);
        {
            let series = self.inner.series.load();
            let counter = slot.and_then(|i| series.outcomes.get(function)?[i].as_ref());
            if let (Some(counter), Some(histogram)) = (counter, series.durations.get(connection)) {
                counter.increment(1);
                histogram.record(seconds);
                return;
            }
        }
        let (counter, histogram) = metrics::with_local_recorder(&self.inner.recorder, || {
            (
                metrics::counter!("switchboard_callouts_total", "function" => function.to_string(), "status" => status.to_string()),
                metrics::histogram!("switchboard_attempt_duration_seconds", "connection" => connection.to_string()),
            )
        });
        counter.increment(1);
        histogram.record(seconds);
        self.inner.series.rcu(|series| {
            let mut series = Series::clone(series);
            if let Some(i) = slot {
                series.outcomes.entry(function.to_string()).or_default()[i] = Some(counter.clone());
            }
            series
                .durations
                .insert(connection.to_string(), histogram.clone());
            series
        });
    }

    /// Sets a connection's circuit breaker series, read at scrape time:
    /// `switchboard_breaker_state{connection}` (0 closed, 1 half-open, 2 open) and
    /// `switchboard_breaker_transitions_total{connection,to}`, the transitions so far by the
    /// state they led to.
    pub fn breaker(&self, connection: &str, state: u8, transitions_to: &[(&str, u64)]) {
        metrics::with_local_recorder(&self.inner.recorder, || {
            metrics::gauge!("switchboard_breaker_state", "connection" => connection.to_string())
                .set(f64::from(state));
            for (to, n) in transitions_to {
                metrics::counter!(
                    "switchboard_breaker_transitions_total",
                    "connection" => connection.to_string(),
                    "to" => to.to_string()
                )
                .absolute(*n);
            }
        });
    }

    /// An upload was stored: `switchboard_files_stored_total` and
    /// `switchboard_file_bytes_stored_total`.
    pub fn file_stored(&self, bytes: u64) {
        metrics::with_local_recorder(&self.inner.recorder, || {
            metrics::counter!("switchboard_files_stored_total").increment(1);
            metrics::counter!("switchboard_file_bytes_stored_total").increment(bytes);
        });
    }

    /// An upload was refused: `switchboard_files_rejected_total{reason}`, `reason` one of a
    /// fixed few (`content_type`, `too_large`, `infected`, `scan_failed`, ...).
    pub fn file_rejected(&self, reason: &'static str) {
        metrics::with_local_recorder(&self.inner.recorder, || {
            metrics::counter!("switchboard_files_rejected_total", "reason" => reason).increment(1);
        });
    }

    /// Prometheus text, with the number of callouts in each status.
    pub fn render(&self, counts: &[(crate::queue::Status, u64)]) -> String {
        metrics::with_local_recorder(&self.inner.recorder, || {
            for (status, n) in counts {
                metrics::gauge!("switchboard_callouts", "status" => status.as_str()).set(*n as f64);
            }
        });
        self.inner.inflight_gauge.set(self.inflight() as f64);
        self.inner.recorder.handle().render()
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
            .inner
            .inflight
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        self.metrics.gauge_inflight(now);
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default` (like `info` or `switchboard=debug`).
///
/// The AWS SDK's `debug` and `trace` events are never logged, whatever `RUST_LOG` says: they
/// print the resolved credentials (the access key id) with the request's whole configuration.
pub fn init_logging(default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter::FilterExt as _};

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(
                    filter.and(
                        tracing_subscriber::filter::filter_fn(not_sdk_detail)
                            // Keeps the filter's own hint (`and` takes the lower), so events
                            // below it are not even built.
                            .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE),
                    ),
                ),
        )
        .try_init();
}

/// Whether an event may be logged: anything but a `debug` or `trace` event of the AWS SDK
/// (targets `aws_*`), which prints credentials.
fn not_sdk_detail(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO || !meta.target().starts_with("aws_")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series in the text, if it is there.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn aws_sdk_debug_and_trace_events_are_not_logged() {
        use tracing::Level;
        let metadata = |level, target| {
            tracing::Metadata::new(
                "event",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
                tracing::metadata::Kind::EVENT,
            )
        };
        let sdk = "aws_smithy_runtime::client::orchestrator::endpoints";
        assert!(!not_sdk_detail(&metadata(Level::TRACE, sdk)));
        assert!(!not_sdk_detail(&metadata(Level::DEBUG, sdk)));
        assert!(not_sdk_detail(&metadata(Level::INFO, sdk)));
        assert!(not_sdk_detail(&metadata(Level::WARN, sdk)));
        assert!(not_sdk_detail(&metadata(
            Level::TRACE,
            "switchboard::dispatch"
        )));
    }

    struct Callsite;
    static CALLSITE: Callsite = Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("not registered")
        }
    }

    #[test]
    fn attempts_count_once_each_and_only_seen_series_show() {
        let metrics = Metrics::new();
        for status in ["succeeded", "succeeded", "failed", "other"] {
            metrics.attempt("shop.ping", "shop", status, 0.02);
        }
        metrics.attempt("shop.order", "shop", "retrying", 0.2);
        metrics.attempt("mail.send", "mail", "succeeded", 1.5);
        drop(metrics.call_started());
        let _running = metrics.call_started();
        let text = metrics.render(&[]);
        let total = |function: &str, status: &str| {
            value(
                &text,
                &format!(
                    "switchboard_callouts_total{{function=\"{function}\",status=\"{status}\"}}"
                ),
            )
        };
        assert_eq!(total("shop.ping", "succeeded"), Some(2.0), "{text}");
        assert_eq!(total("shop.ping", "failed"), Some(1.0), "{text}");
        assert_eq!(total("shop.ping", "other"), Some(1.0), "{text}");
        assert_eq!(total("shop.ping", "retrying"), None, "{text}");
        assert_eq!(total("shop.order", "retrying"), Some(1.0), "{text}");
        assert_eq!(total("mail.send", "succeeded"), Some(1.0), "{text}");
        let count = |connection: &str| {
            value(
                &text,
                &format!(
                    "switchboard_attempt_duration_seconds_count{{connection=\"{connection}\"}}"
                ),
            )
        };
        assert_eq!(count("shop"), Some(5.0), "{text}");
        assert_eq!(count("mail"), Some(1.0), "{text}");
        assert_eq!(value(&text, "switchboard_inflight"), Some(1.0), "{text}");
        assert_eq!(metrics.peak_inflight(), 1);
    }
}
