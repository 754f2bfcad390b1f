//! Reliability and security suite, item 1: crash and restart of the real `switchboard serve`.
//!
//! - three `kill -9` during a run of 10,000 callouts lose nothing, and repeat at most the calls
//!   in flight at each kill;
//! - a `kill -9` between an enqueue's commit and its answer (the `enqueue-committed` failpoint,
//!   `src/failpoint.rs`) leaves a callout that the caller's retry with its idempotency key finds;
//! - the late result of a stalled engine whose lease expired is fenced: the callout keeps the
//!   result of the engine that took it over.
//!
//! See tests/reliability/harness for the helpers.

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use harness::figure;
use support::engine::metric_value;
use support::serve::{SINK, Serve, ServeOptions, sink_folder};
use support::upstream::{IDEMPOTENCY_HEADER, Reply, Upstream};

/// The engine's default cap: at most this many calls are in flight at a kill.
const CAP: usize = 25;

/// Polls `serve`'s counts until at least `target` callouts succeeded; returns the counts
/// (succeeded, running) of the last scrape.
async fn wait_succeeded(serve: &Serve, target: usize, within: Duration) -> (usize, usize) {
    let deadline = Instant::now() + within;
    loop {
        let (done, running) = serve.counts().await;
        if done >= target {
            return (done, running);
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {target} succeeded within {within:?}:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fault: SIGKILL of the engine three times during a run of 10,000 callouts (at about 1/4, 1/2
/// and 3/4 succeeded), each time restarted on the same database.
///
/// Expected: 10000/10000 succeed, none is lost, every callout reaches the upstream, and the
/// upstream sees at most 3 × 25 duplicate requests (a call is repeated only if it was in
/// flight at a kill, and at most the cap, 25, are).
///
/// Figure: succeeded, lost, duplicates against the bound, and the calls in flight at each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_during_ten_thousand_callouts_lose_nothing() {
    const CALLOUTS: usize = 10_000;
    const KILLS: usize = 3;
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "stored": true })).hold(Duration::from_millis(20)))
            .await;
    let (dir, metadata, db) = sink_folder(SINK, &upstream.url());
    let log = |n: usize| dir.path().join(format!("run{n}.log"));

    let mut serve = Serve::start(&metadata, &db, log(1)).await;
    let mut ids = Vec::with_capacity(CALLOUTS);
    for chunk in 0..CALLOUTS / 1000 {
        let items: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|n| {
                json!({ "function": "sink.put", "input": { "n": n }, "idempotency_key": format!("item-{n}") })
            })
            .collect();
        ids.extend(serve.api.enqueue_batch(items).await);
    }
    assert_eq!(ids.len(), CALLOUTS);

    // (succeeded, claimed, held by the upstream) at each kill.
    let mut kills = Vec::with_capacity(KILLS);
    for k in 1..=KILLS {
        let (done, running) =
            wait_succeeded(&serve, k * CALLOUTS / (KILLS + 1), Duration::from_secs(120)).await;
        let at_upstream = upstream.inflight();
        serve.kill();
        kills.push((done, running, at_upstream));
        serve = Serve::start(&metadata, &db, log(k + 1)).await;
    }
    wait_succeeded(&serve, CALLOUTS, Duration::from_secs(180)).await;

    let all = serve.api.list_all(CALLOUTS / 500 + 1).await;
    let stored: HashSet<&str> = all.iter().filter_map(|c| c["id"].as_str()).collect();
    let lost = ids
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .count();
    let succeeded = all.iter().filter(|c| c["status"] == "succeeded").count();
    let duplicates = upstream.duplicates();
    let at_kills: Vec<String> = kills
        .iter()
        .map(|(done, running, at_upstream)| {
            format!("{at_upstream} held upstream/{running} claimed at {done} succeeded")
        })
        .collect();
    figure(
        "1 crash",
        "SIGKILL x3 during 10,000 callouts",
        &format!(
            "{succeeded}/{CALLOUTS} succeeded, {lost} lost, {duplicates} duplicates ≤ {} \
             (≤ {CAP} in flight at each kill; at the kills: {}); {} requests in all",
            KILLS * CAP,
            at_kills.join(", "),
            upstream.count()
        ),
    );
    assert_eq!(lost, 0, "callouts lost by the kills");
    assert_eq!((succeeded, all.len()), (CALLOUTS, CALLOUTS));
    assert_eq!(
        upstream.distinct_keys(),
        CALLOUTS,
        "every callout reached the upstream"
    );
    assert!(
        duplicates <= KILLS * CAP,
        "{duplicates} duplicate requests; at most {CAP} calls were in flight at each of {KILLS} kills"
    );
}

/// Fault: the process dies (the `enqueue-committed` failpoint aborts it) after an enqueue's
/// transaction committed and before its answer was written; the caller sees the connection
/// drop with no answer.
///
/// Expected: restarted on the same database, the caller's retry with the same idempotency key
/// is answered `200` with the callout that was stored (not `202` with a new one); it is the
/// only callout, and it runs exactly once at the upstream.
///
/// Figure: what the first request got, what the retry got, how many callouts and upstream calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_answer_leaves_a_callout_the_retry_finds() {
    let upstream = Upstream::start(|_| Reply::ok(json!({ "stored": true }))).await;
    let (dir, metadata, db) = sink_folder(SINK, &upstream.url());
    let armed = ServeOptions {
        env: vec![(
            switchboard::failpoint::VAR.to_string(),
            switchboard::failpoint::ENQUEUE_COMMITTED.to_string(),
        )],
        ..ServeOptions::default()
    };
    let mut first = Serve::start_with(&metadata, &db, dir.path().join("first.log"), armed).await;
    let body = json!({ "function": "sink.put", "input": { "n": 7 }, "idempotency_key": "order-7" });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let sent = client
        .post(format!("{}/v1/callouts", first.base()))
        .json(&body)
        .send()
        .await;
    let first_answer = match &sent {
        Ok(response) => panic!(
            "the enqueue was answered {} although the process should have died first",
            response.status()
        ),
        Err(err) => {
            assert!(!err.is_timeout(), "no answer within 30 s: {err}");
            format!(
                "no answer ({})",
                if err.is_request() {
                    "connection closed"
                } else {
                    "error"
                }
            )
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = first.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the process is still alive after the failpoint"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        status.signal().is_some(),
        "the process should have died by a signal, not {status}:\n{}",
        first.log_text()
    );

    let second = Serve::start(&metadata, &db, dir.path().join("second.log")).await;
    let (code, retry) = second.api.post("/v1/callouts", &body).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "the retry should find the stored callout: {retry}"
    );
    let id = retry["id"].as_str().expect("an id").to_string();
    assert_eq!(retry["idempotency_key"], "order-7");
    let all = second.api.list_all(2).await;
    assert_eq!(all.len(), 1, "one callout, not two: {all:?}");
    assert_eq!(all[0]["id"], id.as_str());
    let done = second
        .api
        .wait_for_status(&id, &["succeeded"], Duration::from_secs(20))
        .await;
    assert_eq!(done["attempts"], 1);
    // Quiet: nothing else is due, so no further call can come.
    assert_eq!(
        upstream.count(),
        1,
        "the callout ran more than once: {:?}",
        upstream.requests()
    );
    figure(
        "1 crash",
        "kill between an enqueue's commit and its answer",
        &format!(
            "first request: {first_answer}, process died by signal {}; retry with the same \
             idempotency key after restart: {} with the stored callout ({} in the database); \
             it ran {} time(s) at the upstream, succeeded at attempt {}",
            status.signal().unwrap_or_default(),
            code.as_u16(),
            all.len(),
            upstream.count(),
            done["attempts"]
        ),
    );
}

const SLOW: &str = r#"connection: sink
type: rest
endpoint: UPSTREAM/sink
allow_private_network: true
limits: { timeout: 1s, connect_timeout: 1s }
retry: { max_attempts: 5, initial_delay: 50ms, max_delay: 200ms }
functions:
  put:
    method: POST
    path: /items
    body: { n: "{{ input.n }}" }
    input_schema:
      type: object
      required: [n]
      properties:
        n: { type: integer }
"#;

/// An upstream whose first request is held until the test opens its gate; every other request
/// is answered at once. Each answer is `200 {"answer": N}`, N the request's number (1 for the
/// first).
struct Gated {
    addr: SocketAddr,
    gate: watch::Sender<bool>,
    shared: Arc<GateShared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct GateShared {
    arrived: AtomicUsize,
    /// The idempotency key of each request, in order.
    keys: Mutex<Vec<Option<String>>>,
    /// Whether the held request's answer was handed to the server (the gate was open).
    answered_held: AtomicUsize,
}

impl Gated {
    async fn start() -> Gated {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let (gate, _) = watch::channel(false);
        let shared = Arc::new(GateShared::default());
        let app = axum::Router::new()
            .fallback(gated)
            .with_state((shared.clone(), gate.subscribe()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gated {
            addr,
            gate,
            shared,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn arrived(&self) -> usize {
        self.shared.arrived.load(Ordering::SeqCst)
    }

    fn open(&self) {
        let _ = self.gate.send(true);
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gated(
    State((shared, mut gate)): State<(Arc<GateShared>, watch::Receiver<bool>)>,
    request: Request,
) -> axum::Json<Value> {
    let key = request
        .headers()
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.keys.lock().expect("keys lock").push(key);
    let n = shared.arrived.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        let _ = gate.wait_for(|open| *open).await;
        shared.answered_held.fetch_add(1, Ordering::SeqCst);
    }
    axum::Json(json!({ "answer": n }))
}

/// The row of callout `id` as the database holds it: (status, attempts, lease_expires_at).
fn lease_row(db_file: &std::path::Path, id: &str) -> (String, i64, Option<i64>) {
    let conn =
        rusqlite::Connection::open_with_flags(db_file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database to read");
    conn.query_row(
        "SELECT status, attempts, lease_expires_at FROM callouts WHERE id = ?1",
        [id],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )
    .expect("read the callout's row")
}

/// Fault: the engine (`--min-lease 2s`, connection timeout 1s: a 2 s lease) claims a callout
/// whose call the upstream holds; the whole engine stalls (SIGSTOP) until the database says its
/// lease has expired; meanwhile a second engine on the same database is tried; then the
/// upstream answers the held call and the engine resumes (SIGCONT): its attempt 1 ends late
/// while its reclaimer finds the expired lease.
///
/// Expected: the second engine is refused (one engine per SQLite file, by the lock file); the
/// stalled engine's late result is fenced (it logs that the result was refused), the callout is
/// reclaimed and run again: it keeps attempt 2's result (`answer` 2), and the journal holds no
/// success of attempt 1, only its `lease_expired` entry.
///
/// Figure: what the late attempt produced, and what the callout kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engines_late_result_is_fenced() {
    let upstream = Gated::start().await;
    let (dir, metadata, db) = sink_folder(SLOW, &upstream.url());
    let db_file = dir.path().join("sb.db");
    let short_lease = ServeOptions {
        args: vec!["--min-lease".into(), "2s".into()],
        ..ServeOptions::default()
    };
    let a = Serve::start_with(&metadata, &db, dir.path().join("a.log"), short_lease).await;
    let id = a
        .api
        .enqueue_body(
            &json!({ "function": "sink.put", "input": { "n": 1 }, "idempotency_key": "fence-1" }),
        )
        .await;

    // The call is at the upstream, held: stop the engine before its 1 s timeout can fire.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.arrived() == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the upstream:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.signal("-STOP");
    let stopped_at = Instant::now();
    let stopped_ms = switchboard::engine::now_millis();

    // Wait until the database says the lease has expired.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease_until = loop {
        let (status, attempts, lease) = lease_row(&db_file, &id);
        assert_eq!((status.as_str(), attempts), ("running", 1));
        let lease = lease.expect("a running callout has a lease");
        if switchboard::engine::now_millis() > lease {
            break lease;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A second engine on the same file is refused while the stalled one lives.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--metadata"])
        .arg(&metadata)
        .args(["--db", &db, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("switchboard serve runs");
    let refusal = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{refusal}");
    assert!(
        refusal.contains("is in use by another switchboard engine"),
        "{refusal}"
    );

    // The upstream answers the held call, then the engine resumes.
    upstream.open();
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.shared.answered_held.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the held call was never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.signal("-CONT");
    let stalled = stopped_at.elapsed();
    let kept = a
        .api
        .wait_for_status(&id, &["succeeded", "failed"], Duration::from_secs(20))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.log_text().contains("result refused") {
        assert!(
            Instant::now() < deadline,
            "the late result was never offered to the store:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What attempt 1 produced, as the engine counted it (each attempt once).
    let (_, metrics) = a.api.get_text("/metrics").await;
    let counted = |status: &str| {
        let series =
            format!("switchboard_callouts_total{{function=\"sink.put\",status=\"{status}\"}}");
        metric_value(&metrics, &series).unwrap_or(0.0) as usize
    };
    // Attempt 2 succeeded; attempt 1 is the other one counted.
    let late = match (counted("succeeded"), counted("retrying"), counted("failed")) {
        (2, 0, 0) => "the upstream's answer",
        (1, 1, 0) => "a timeout (its deadline passed during the stop)",
        other => panic!("attempts counted (succeeded, retrying, failed): {other:?}"),
    };

    assert_eq!(kept["status"], "succeeded", "{kept:#}");
    assert_eq!(kept["attempts"], 2, "{kept:#}");
    assert_eq!(kept["result"]["meta"]["attempt"], 2, "{kept:#}");
    assert_eq!(kept["result"]["data"], json!({ "answer": 2 }), "{kept:#}");
    let journal = a.api.attempts(&id).await;
    let first: Vec<&Value> = journal.iter().filter(|a| a["attempt"] == 1).collect();
    assert_eq!(first.len(), 1, "{journal:#?}");
    assert_eq!(first[0]["error_kind"], "lease_expired", "{journal:#?}");
    assert!(
        journal
            .iter()
            .any(|a| a["attempt"] == 2 && a["error_kind"].is_null()),
        "{journal:#?}"
    );
    assert_eq!(journal.len(), 2, "{journal:#?}");
    // Still so once everything settled: the late result never lands.
    assert_eq!(a.api.callout(&id).await, kept);
    let keys = upstream.shared.keys.lock().expect("keys lock").clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.as_deref() == Some("fence-1")),
        "{keys:?}"
    );
    figure(
        "1 crash",
        "stalled engine's late result after its lease expired",
        &format!(
            "late result of attempt 1 ({late}) fenced after a {} ms stop (lease ended {} ms \
             into it); callout kept attempt 2's result; journal: attempt 1 lease_expired, \
             attempt 2 succeeded; a 2nd engine on the same file was refused (lock file)",
            stalled.as_millis(),
            lease_until - stopped_ms
        ),
    );
}
