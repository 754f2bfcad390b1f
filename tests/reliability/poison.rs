//! Item 3, poison callouts: upstreams that never answer, answer garbage, a 1 GB body, a gzip
//! bomb, or a body cut short each end their callouts `failed` with a clear error kind and
//! message, the engine's memory stays bounded, and a healthy connection's callouts keep
//! flowing at the rate they have alone.

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;

use std::time::{Duration, Instant};

use serde_json::json;

use harness::figure;
use harness::raw::{Misbehaviour, RawUpstream};
use support::serve::{Serve, ServeOptions};
use support::upstream::{Reply, Upstream};

const ITEM: &str = "3 poison";

/// Healthy callouts per measured phase.
const HEALTHY: usize = 200;
/// How long the healthy upstream holds each call: its throughput is bounded by this latency
/// and its concurrency (8 / 100 ms = 80/s), not by CPU, so that other processes on a shared
/// machine move the figure little.
const HOLD: Duration = Duration::from_millis(100);
/// Callouts of the slow poison function (`silent`: 3 attempts of 1 s, 2 at once).
const POISONED: usize = 4;
/// How often one callout of each quick poison function is enqueued while the healthy load
/// runs (7 poison functions: 60 poison callouts a second).
const FEED: Duration = Duration::from_millis(100);
/// The engine's global cap (its default); see [`poison_yaml`] for how the limits fit in it.
const CAP: usize = 25;

/// The healthy connection: 8 calls at once, nothing else limits it.
const HEALTHY_YAML: &str = r#"connection: healthy
type: rest
endpoint: UPSTREAM
allow_private_network: true
limits: { concurrency: 8, timeout: 10s, connect_timeout: 2s }
retry: { max_attempts: 3, initial_delay: 50ms, max_delay: 100ms }
functions:
  ping:
    method: POST
    path: /ping
    body: { n: "{{ input.n }}" }
    input_schema: { type: object, properties: { n: { type: integer } } }
"#;

/// A poison connection: 2 calls at once (7 poison connections hold at most 14 of the cap's 25
/// places, and the healthy one's 8 fit beside them: poison occupies bounded slots and never the
/// healthy connection's), 3 attempts 50–100 ms apart, and no circuit breaker (an open breaker
/// makes callouts wait without using attempts, which is right in production but would hide
/// here how each attempt ends).
fn poison_yaml(name: &str, url: &str, timeout: &str) -> String {
    format!(
        r#"connection: {name}
type: rest
endpoint: {url}
allow_private_network: true
limits: {{ concurrency: 2, timeout: {timeout}, connect_timeout: 1s }}
retry: {{ max_attempts: 3, initial_delay: 50ms, max_delay: 100ms }}
breaker: {{ enabled: false }}
functions:
  call:
    path: /call
"#
    )
}

/// One poison function and what its callouts must end with.
struct Poison {
    name: &'static str,
    upstream: RawUpstream,
    /// The attempt's deadline (`limits.timeout`).
    timeout: &'static str,
    kind: &'static str,
    /// Attempts each callout makes: 3 for a retried kind, 1 for one that is not.
    attempts: usize,
    /// The start of every attempt's message.
    message: String,
}

/// The engine's memory in kB (`VmHWM`: peak resident set; `VmRSS`: now), from
/// `/proc/PID/status`.
fn memory_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Enqueues [`HEALTHY`] healthy callouts and waits until `succeeded_before + HEALTHY` callouts
/// have succeeded; returns the throughput (callouts a second, from the enqueue).
async fn healthy_phase(serve: &Serve, succeeded_before: usize) -> f64 {
    let start = Instant::now();
    let items = (0..HEALTHY)
        .map(|n| json!({ "function": "healthy.ping", "input": { "n": n } }))
        .collect();
    serve.api.enqueue_batch(items).await;
    let target = succeeded_before + HEALTHY;
    let deadline = start + Duration::from_secs(60);
    loop {
        let (succeeded, _) = serve.counts().await;
        if succeeded >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {succeeded} of {target} healthy callouts succeeded within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    HEALTHY as f64 / start.elapsed().as_secs_f64()
}

/// Faults: seven poison functions (2 calls at once each) — an upstream that never answers;
/// invalid JSON and random bytes, both as `application/json`; a 1 GB body, chunked and with
/// its `Content-Length` declared, generated as it is sent; a gzip bomb (`Content-Encoding:
/// gzip`, up to 8 MiB on the wire that inflate to 8.6 GB); and a body cut short (1 MB declared,
/// 100 KB sent, then the connection closed). The slow one (`silent`) gets 4 callouts, the quick
/// ones one each every 100 ms, while a healthy function (8 at once, 100 ms upstream) runs.
///
/// Expected: every poison callout ends `failed`, its result and every journal entry with the
/// kind and message of its fault (`timeout` and the cut body after 3 attempts;
/// `invalid_response` and `response_too_large` at once, as they are not retried); the 1 GB
/// bodies are not read past 10 MiB and the bomb not at all; the engine does not crash and its
/// peak RSS stays under 150 MB; and the healthy function's throughput while the poison runs is
/// at least 0.8× its throughput alone, measured in the same test.
///
/// Figure: poison functions failed with clear errors and their attempts, healthy throughput
/// under poison as a multiple of the baseline, the poison calls in flight meanwhile, the bytes
/// of the huge bodies read, and the engine's peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_callouts_fail_clearly_and_leave_the_others_flowing() {
    const GB: u64 = 1 << 30;
    let poisons = vec![
        Poison {
            name: "silent",
            upstream: RawUpstream::start(Misbehaviour::Silent).await,
            timeout: "1s",
            kind: "timeout",
            attempts: 3,
            message: "`silent` gave no complete answer before the attempt's deadline".into(),
        },
        Poison {
            name: "bad_json",
            upstream: RawUpstream::start(Misbehaviour::Garbage {
                content_type: "application/json",
                body: br#"{"id": 17, "items": [tru"#.to_vec(),
            })
            .await,
            timeout: "5s",
            kind: "invalid_response",
            attempts: 1,
            message: "`bad_json` answered with content type `application/json` but a body that \
                      is not JSON (24 bytes; "
                .into(),
        },
        Poison {
            name: "random_bytes",
            upstream: RawUpstream::start(Misbehaviour::Garbage {
                content_type: "application/json",
                body: (0..4096u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect(),
            })
            .await,
            timeout: "5s",
            kind: "invalid_response",
            attempts: 1,
            message: "`random_bytes` answered with content type `application/json` but a body \
                      that is not JSON (4096 bytes, not even UTF-8 text)"
                .into(),
        },
        Poison {
            name: "huge_chunked",
            upstream: RawUpstream::start(Misbehaviour::Endless {
                size: GB,
                declared: false,
            })
            .await,
            timeout: "10s",
            kind: "response_too_large",
            attempts: 1,
            message: "response body exceeds 10 MiB".into(),
        },
        Poison {
            name: "huge_declared",
            upstream: RawUpstream::start(Misbehaviour::Endless {
                size: GB,
                declared: true,
            })
            .await,
            timeout: "10s",
            kind: "response_too_large",
            attempts: 1,
            message: "response body exceeds 10 MiB".into(),
        },
        Poison {
            name: "gzip_bomb",
            upstream: RawUpstream::start(Misbehaviour::GzipBomb { size: 8 << 20 }).await,
            timeout: "10s",
            kind: "invalid_response",
            attempts: 1,
            message: "`gzip_bomb` answered with `Content-Encoding: gzip`, which Switchboard does \
                      not decode (it asks for no encoding); the body was not read"
                .into(),
        },
        Poison {
            name: "cut_short",
            upstream: RawUpstream::start(Misbehaviour::CutShort {
                declared: 1_000_000,
                sent: 100_000,
            })
            .await,
            timeout: "5s",
            kind: "unavailable",
            attempts: 3,
            message: "the exchange with `cut_short` (127.0.0.1) failed: ".into(),
        },
    ];
    let healthy = Upstream::start(|_| Reply::ok(json!({ "ok": true })).hold(HOLD)).await;

    let dir = tempfile::tempdir().expect("temp folder");
    let metadata = dir.path().join("metadata");
    std::fs::create_dir(&metadata).expect("metadata folder");
    std::fs::write(
        metadata.join("healthy.yaml"),
        support::engine::pointed(HEALTHY_YAML, &healthy.url()),
    )
    .expect("write metadata");
    for p in &poisons {
        let yaml = poison_yaml(p.name, &p.upstream.url(), p.timeout);
        std::fs::write(metadata.join(format!("{}.yaml", p.name)), yaml).expect("write metadata");
    }
    assert!(
        2 * poisons.len() + 8 <= CAP,
        "poison and healthy fit the cap"
    );
    let db = format!("sqlite://{}", dir.path().join("sb.db").display());
    let serve = Serve::start_with(
        &metadata,
        &db,
        dir.path().join("serve.log"),
        ServeOptions::default(),
    )
    .await;
    let pid = serve.child.id();

    // Baseline: the healthy function alone.
    let baseline = healthy_phase(&serve, 0).await;
    let rss_before = memory_kb(pid, "VmRSS");

    // The poison, then the same healthy load beside it: the slow poison (`silent`, 3 s a
    // callout) enqueued once, the quick ones fed every 100 ms while the healthy load runs. Poison
    // calls in flight are sampled meanwhile, to show that it ran beside them.
    let mut ids: Vec<(usize, String)> = Vec::new();
    let enqueue = |i: usize| {
        let api = serve.api.clone();
        let function = format!("{}.call", poisons[i].name);
        async move { (i, api.enqueue(&function, json!({})).await) }
    };
    for _ in 0..POISONED {
        ids.push(enqueue(0).await);
    }
    let mut samples: Vec<usize> = Vec::new();
    let loaded = {
        let phase = healthy_phase(&serve, HEALTHY);
        tokio::pin!(phase);
        let mut sample = tokio::time::interval(Duration::from_millis(20));
        let mut feed = tokio::time::interval(FEED);
        loop {
            tokio::select! {
                rate = &mut phase => break rate,
                _ = sample.tick() => {
                    samples.push(poisons.iter().map(|p| p.upstream.open()).sum());
                }
                _ = feed.tick() => {
                    for i in 1..poisons.len() {
                        ids.push(enqueue(i).await);
                    }
                }
            }
        }
    };
    let mean_inflight = samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64;

    // Every poison callout ends failed, with its fault's kind and message, in its result and
    // in each journal entry.
    let mut callouts = vec![0usize; poisons.len()];
    for (i, id) in &ids {
        let p = &poisons[*i];
        let done = serve
            .api
            .wait_for_status(id, &["failed", "succeeded"], Duration::from_secs(60))
            .await;
        assert_eq!(done["status"], "failed", "{}: {done:#}", p.name);
        let error = &done["result"]["error"];
        assert_eq!(error["kind"], p.kind, "{}: {done:#}", p.name);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&p.message), "{}: {message}", p.name);
        let journal = serve.api.attempts(id).await;
        assert_eq!(journal.len(), p.attempts, "{}: {journal:#?}", p.name);
        for entry in &journal {
            assert_eq!(entry["error_kind"], p.kind, "{}: {entry}", p.name);
            let text = entry["error_message"].as_str().unwrap_or_default();
            assert!(text.starts_with(&p.message), "{}: {text}", p.name);
        }
        callouts[*i] += 1;
        if p.name.starts_with("huge") {
            // Not read past the limit: the 1 GB stops at 10 MiB plus a read.
            let read = journal[0]["response_bytes"].as_u64().unwrap_or(u64::MAX);
            assert!(read <= 11 << 20, "{}: {read} bytes read", p.name);
        }
        if p.name == "gzip_bomb" {
            assert_eq!(journal[0]["response_bytes"], 0, "the bomb is not read");
        }
    }
    let sent_by_huge: u64 = poisons
        .iter()
        .filter(|p| p.name.starts_with("huge"))
        .map(|p| p.upstream.sent())
        .sum();
    let huge_calls: u64 = poisons
        .iter()
        .zip(&callouts)
        .filter(|(p, _)| p.name.starts_with("huge"))
        .map(|(_, n)| *n as u64)
        .sum();
    assert!(
        sent_by_huge < huge_calls * (32 << 20),
        "the huge upstreams wrote {sent_by_huge} bytes for {huge_calls} calls: the engine kept reading"
    );
    for p in &poisons {
        assert!(p.upstream.accepted() >= 1, "{} was never called", p.name);
    }

    // Alive, answering, and its memory bounded.
    let peak = memory_kb(pid, "VmHWM");
    let mut serve = serve;
    assert!(
        serve.child.try_wait().expect("wait").is_none(),
        "the engine exited:\n{}",
        serve.log_text()
    );
    assert!(serve.api.healthy().await, "the engine stopped answering");
    let log = serve.log_text();
    assert!(!log.contains("panicked"), "the engine panicked:\n{log}");
    assert!(peak < 150 * 1024, "engine peak RSS {} MB", peak / 1024);

    let ratio = loaded / baseline;
    println!(
        "baseline {baseline:.0}/s, with poison {loaded:.0}/s; RSS {} MB before poison, peak {} MB; \
         poison in flight: mean {mean_inflight:.1} over {} samples; huge upstreams wrote {} MB",
        rss_before / 1024,
        peak / 1024,
        samples.len(),
        sent_by_huge >> 20
    );
    assert!(
        mean_inflight >= 1.0,
        "the poison was not in flight during the loaded phase: {samples:?}"
    );
    assert!(
        ratio >= 0.8,
        "healthy throughput fell to {ratio:.2}× under poison ({loaded:.0}/s vs {baseline:.0}/s)"
    );
    let per_kind: Vec<String> = poisons
        .iter()
        .zip(&callouts)
        .map(|(p, n)| format!("{} {n}× {} after {}", p.name, p.kind, p.attempts))
        .collect();
    figure(
        ITEM,
        "poison callouts fail with clear errors; memory bounded; others keep their rate",
        &format!(
            "{n} poison functions, {total} callouts: {total}/{total} failed with their fault's \
             kind and message ({kinds} attempts each); healthy throughput {ratio:.2}× of baseline \
             ({loaded:.0}/s vs {baseline:.0}/s, {mean_inflight:.1} poison calls in flight on \
             average); 1 GB bodies read ≤ 10 MiB each (upstreams wrote {} MB for {huge_calls} \
             calls); engine peak RSS {} MB ({} MB before the poison)",
            sent_by_huge >> 20,
            peak / 1024,
            rss_before / 1024,
            n = poisons.len(),
            total = ids.len(),
            kinds = per_kind.join(", "),
        ),
    );
}
