//! The demo's summary: what became of every callout, and whether the engine kept its promises.
//!
//! [`Summary`] is gathered from the store after the run; [`Summary::render`] is pure text, and
//! [`Summary::problems`] lists every broken promise (a callout lost or unfinished, a callout
//! not enqueued, more calls in flight than the cap). The demo exits 1 when there is any.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::upstream::UpstreamReport;
use crate::queue::{Callout, Status};

/// The longest failure reason shown; longer ones are cut at a character boundary.
const REASON_WIDTH: usize = 120;

/// One function's callouts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub callouts: usize,
    pub succeeded: usize,
    /// Finished (succeeded or failed) after more than one attempt.
    pub retried: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Not final when the demo stopped waiting.
    pub unfinished: usize,
}

impl Row {
    fn add(&mut self, other: &Row) {
        self.callouts += other.callouts;
        self.succeeded += other.succeeded;
        self.retried += other.retried;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.unfinished += other.unfinished;
    }
}

/// Everything the summary shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Callouts the demo meant to enqueue.
    pub planned: usize,
    /// Sent in the batch POST / one per POST, over how many client connections.
    pub batched: usize,
    pub single: usize,
    pub client_connections: usize,
    /// Requests the API answered `503 unavailable` and the demo sent again.
    pub busy_retries: usize,
    /// Why callouts were not enqueued, with how many each.
    pub not_enqueued: BTreeMap<String, usize>,
    /// By function, in the order the functions first appear.
    pub rows: Vec<(String, Row)>,
    /// Retried callouts by the error kind of their first failed attempt.
    pub retried_after: BTreeMap<String, usize>,
    /// Dead letters by `kind: message`.
    pub failures: BTreeMap<String, usize>,
    /// Enqueued callouts the store no longer knows.
    pub lost: usize,
    /// Milliseconds from the first enqueue to the last completion.
    pub elapsed_ms: i64,
    /// Milliseconds from the first enqueue until 90% of the callouts that ended had ended.
    pub p90_ms: Option<i64>,
    pub engine_peak: usize,
    pub cap: usize,
    pub upstream: UpstreamReport,
}

/// A failed callout's reason, from its standard result: `kind: message`, shortened.
pub fn failure_reason(result: Option<&Value>) -> String {
    let Some(error) = result.map(|r| &r["error"]).filter(|e| e.is_object()) else {
        return "no result recorded".to_string();
    };
    let kind = error["kind"].as_str().unwrap_or("unknown");
    let message = error["message"].as_str().unwrap_or("");
    let one_line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let reason = format!("{kind}: {one_line}");
    if reason.chars().count() <= REASON_WIDTH {
        return reason;
    }
    let cut: String = reason.chars().take(REASON_WIDTH - 1).collect();
    format!("{cut}…")
}

impl Summary {
    /// Counts `callout` (with its `first_error`, the error kind of its first failed attempt,
    /// if it was retried) into the summary.
    pub fn record(&mut self, callout: &Callout, first_error: Option<&str>) {
        let index = match self.rows.iter().position(|(f, _)| *f == callout.function) {
            Some(i) => i,
            None => {
                self.rows.push((callout.function.clone(), Row::default()));
                self.rows.len() - 1
            }
        };
        let row = &mut self.rows[index].1;
        row.callouts += 1;
        match callout.status {
            Status::Succeeded => row.succeeded += 1,
            Status::Failed => {
                row.failed += 1;
                *self
                    .failures
                    .entry(failure_reason(callout.result.as_ref()))
                    .or_default() += 1;
            }
            Status::Cancelled => row.cancelled += 1,
            Status::Queued | Status::Running | Status::Retrying => row.unfinished += 1,
        }
        if callout.status.is_final() && callout.attempts > 1 {
            row.retried += 1;
            let kind = first_error.unwrap_or("unknown").to_string();
            *self.retried_after.entry(kind).or_default() += 1;
        }
    }

    /// The sum of every function's row.
    pub fn total(&self) -> Row {
        let mut total = Row::default();
        for (_, row) in &self.rows {
            total.add(row);
        }
        total
    }

    pub fn not_enqueued_count(&self) -> usize {
        self.not_enqueued.values().sum()
    }

    /// Callouts per second from the first enqueue to the last completion.
    pub fn throughput(&self) -> f64 {
        let done = self.total();
        let finished = done.succeeded + done.failed + done.cancelled;
        if self.elapsed_ms <= 0 {
            return 0.0;
        }
        finished as f64 * 1000.0 / self.elapsed_ms as f64
    }

    /// Every broken promise; empty when the run was sound.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let total = self.total();
        let not_enqueued = self.not_enqueued_count();
        if not_enqueued > 0 {
            problems.push(format!("{not_enqueued} callout(s) were not enqueued"));
        }
        if self.lost > 0 {
            problems.push(format!(
                "{} enqueued callout(s) are missing from the store",
                self.lost
            ));
        }
        if total.unfinished > 0 {
            problems.push(format!("{} callout(s) had not finished", total.unfinished));
        }
        if self.engine_peak > self.cap {
            problems.push(format!(
                "the engine had {} calls in flight, over the cap of {}",
                self.engine_peak, self.cap
            ));
        }
        if self.upstream.peak_inflight > self.cap {
            problems.push(format!(
                "the upstream saw {} requests in flight, over the cap of {}",
                self.upstream.peak_inflight, self.cap
            ));
        }
        problems
    }

    /// The summary as printed: a table by function, then totals, throughput and peaks, and a
    /// last line saying whether every promise held.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let total = self.total();
        let width = self
            .rows
            .iter()
            .map(|(f, _)| f.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>9}  {:>7}  {:>6}",
            "function", "callouts", "succeeded", "retried", "failed"
        );
        for (function, row) in self
            .rows
            .iter()
            .chain([(String::from("total"), total.clone())].iter())
        {
            let _ = writeln!(
                out,
                "{function:<width$}  {:>8}  {:>9}  {:>7}  {:>6}",
                row.callouts, row.succeeded, row.retried, row.failed
            );
        }
        out.push('\n');
        let _ = writeln!(out, "succeeded       {}", total.succeeded);
        let after: Vec<String> = self
            .retried_after
            .iter()
            .map(|(kind, n)| format!("{n} after {}", describe_kind(kind)))
            .collect();
        if after.is_empty() {
            let _ = writeln!(out, "  retried       {}", total.retried);
        } else {
            let _ = writeln!(
                out,
                "  retried       {}  ({})",
                total.retried,
                after.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "failed          {}  (dead letters: kept with every attempt, replayable)",
            total.failed
        );
        let mut reasons: Vec<(&String, &usize)> = self.failures.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in reasons {
            let _ = writeln!(out, "  {n:>4} × {reason}");
        }
        if total.cancelled > 0 {
            let _ = writeln!(out, "cancelled       {}", total.cancelled);
        }
        if total.unfinished > 0 {
            let _ = writeln!(out, "unfinished      {}", total.unfinished);
        }
        if self.lost > 0 {
            let _ = writeln!(out, "lost            {}", self.lost);
        }
        if !self.not_enqueued.is_empty() {
            let _ = writeln!(out, "not enqueued    {}", self.not_enqueued_count());
            for (reason, n) in &self.not_enqueued {
                let _ = writeln!(out, "  {n:>4} × {reason}");
            }
        }
        let _ = writeln!(
            out,
            "throughput      {:.1} callouts/s  ({} finished in {:.2} s, first enqueue to last completion)",
            self.throughput(),
            total.succeeded + total.failed + total.cancelled,
            self.elapsed_ms as f64 / 1000.0
        );
        if let Some(p90) = self.p90_ms {
            let _ = writeln!(
                out,
                "                90% had ended after {:.2} s",
                p90 as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "peak in flight  engine {}, upstream {}  (cap {})",
            self.engine_peak, self.upstream.peak_inflight, self.cap
        );
        let statuses: Vec<String> = self
            .upstream
            .by_status
            .iter()
            .map(|(status, n)| format!("{n} × {status}"))
            .collect();
        let _ = writeln!(
            out,
            "upstream        {} requests: {}",
            self.upstream.requests,
            if statuses.is_empty() {
                "none".to_string()
            } else {
                statuses.join(", ")
            }
        );
        let busy = if self.busy_retries > 0 {
            format!(
                "; the API was busy {} time(s) and the request was sent again",
                self.busy_retries
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "enqueued        {} in one batch POST, {} in single POSTs, over {} client connections{busy}",
            self.batched, self.single, self.client_connections
        );
        out.push('\n');
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(
                out,
                "ok: all {} callouts ended, and the peak in flight never exceeded the cap of {}",
                self.planned, self.cap
            );
        } else {
            for problem in problems {
                let _ = writeln!(out, "error: {problem}");
            }
        }
        out
    }
}

/// The first error of a retried callout as a reader knows it: `a 429 (throttled)`.
fn describe_kind(kind: &str) -> String {
    match kind {
        "unavailable" => "a 5xx (unavailable)".to_string(),
        "throttled" => "a 429 (throttled)".to_string(),
        "timeout" => "a timeout".to_string(),
        "connect" => "a connection error".to_string(),
        other => format!("an error of kind {other}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn callout(function: &str, status: Status, attempts: u32, result: Option<Value>) -> Callout {
        Callout {
            id: "c".into(),
            function: function.into(),
            connection: function.split('.').next().unwrap_or_default().into(),
            status,
            input: json!({}),
            attempts,
            series_attempts: attempts,
            series_started_at: 0,
            created_at: 0,
            updated_at: 0,
            next_attempt_at: None,
            idempotency_key: None,
            request_hash: String::new(),
            result,
        }
    }

    fn failed(message: &str) -> Option<Value> {
        Some(json!({ "status": "failed", "error": { "kind": "rejected", "message": message } }))
    }

    fn sample() -> Summary {
        let mut summary = Summary {
            planned: 4,
            batched: 0,
            single: 4,
            client_connections: 25,
            elapsed_ms: 2_000,
            p90_ms: Some(1_500),
            engine_peak: 3,
            cap: 25,
            upstream: UpstreamReport {
                requests: 5,
                by_status: [(200, 3), (400, 1), (503, 1)].into_iter().collect(),
                peak_inflight: 3,
            },
            ..Summary::default()
        };
        summary.record(
            &callout("webshop.create_order", Status::Succeeded, 1, None),
            None,
        );
        summary.record(
            &callout(
                "webshop.create_order",
                Status::Failed,
                1,
                failed("quantity must be at least 1"),
            ),
            None,
        );
        summary.record(
            &callout("shipping.create_shipment", Status::Succeeded, 2, None),
            Some("unavailable"),
        );
        summary.record(
            &callout("warehouse.check_stock", Status::Succeeded, 1, None),
            None,
        );
        summary
    }

    #[test]
    fn a_sound_run_renders_its_table_and_says_ok() {
        let summary = sample();
        assert!(summary.problems().is_empty());
        assert_eq!(
            summary.render(),
            "\
function                  callouts  succeeded  retried  failed
webshop.create_order             2          1        0       1
shipping.create_shipment         1          1        1       0
warehouse.check_stock            1          1        0       0
total                            4          3        1       1

succeeded       3
  retried       1  (1 after a 5xx (unavailable))
failed          1  (dead letters: kept with every attempt, replayable)
     1 × rejected: quantity must be at least 1
throughput      2.0 callouts/s  (4 finished in 2.00 s, first enqueue to last completion)
                90% had ended after 1.50 s
peak in flight  engine 3, upstream 3  (cap 25)
upstream        5 requests: 3 × 200, 1 × 400, 1 × 503
enqueued        0 in one batch POST, 4 in single POSTs, over 25 client connections

ok: all 4 callouts ended, and the peak in flight never exceeded the cap of 25
"
        );
    }

    #[test]
    fn unfinished_callouts_and_a_peak_over_the_cap_are_problems() {
        let mut summary = sample();
        summary.record(
            &callout("loyalty.award_points", Status::Retrying, 1, None),
            None,
        );
        summary.engine_peak = 26;
        assert_eq!(
            summary.problems(),
            [
                "1 callout(s) had not finished".to_string(),
                "the engine had 26 calls in flight, over the cap of 25".to_string(),
            ]
        );
        assert!(summary.render().ends_with(
            "error: 1 callout(s) had not finished\nerror: the engine had 26 calls in flight, over the cap of 25\n"
        ));
    }

    #[test]
    fn long_reasons_are_cut_and_kept_on_one_line() {
        let long = format!("line one\nline two {}", "x".repeat(200));
        let reason = failure_reason(failed(&long).as_ref());
        assert_eq!(reason.chars().count(), REASON_WIDTH);
        assert!(reason.starts_with("rejected: line one line two xxx"));
        assert!(reason.ends_with('…'));
        assert_eq!(failure_reason(None), "no result recorded");
    }
}
