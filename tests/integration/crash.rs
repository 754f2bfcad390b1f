//! `kill -9` of the real `switchboard serve` mid-run loses no callout, and the upstream sees a
//! duplicate only for calls that were in flight at the kill (at most the cap, 25).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::engine::pointed;
use crate::support::serve::{SINK, Serve, sink_folder};
use crate::support::upstream::{Reply, Upstream};

const CALLOUTS: usize = 2000;
const CHUNK: usize = 500;
/// The engine's default cap: at most this many calls are in flight at the kill.
const CAP: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_and_duplicates_at_most_the_calls_in_flight() {
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "stored": true })).hold(Duration::from_millis(20)))
            .await;
    let (dir, metadata, db) = sink_folder(SINK, &upstream.url());

    let mut first = Serve::start(&metadata, &db, dir.path().join("first.log")).await;
    let mut ids = Vec::with_capacity(CALLOUTS);
    for chunk in 0..CALLOUTS / CHUNK {
        let items: Vec<Value> = (chunk * CHUNK..(chunk + 1) * CHUNK)
            .map(|n| json!({ "function": "sink.put", "input": { "n": n }, "idempotency_key": format!("item-{n}") }))
            .collect();
        ids.extend(first.api.enqueue_batch(items).await);
    }
    assert_eq!(ids.len(), CALLOUTS);

    // Kill once about a third have succeeded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut done, mut running) = first.counts().await;
    while done < CALLOUTS / 3 {
        assert!(
            Instant::now() < deadline,
            "only {done} succeeded within 60 s:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        (done, running) = first.counts().await;
    }
    let at_upstream = upstream.inflight();
    first.kill();
    let before_restart = upstream.count();

    let second = Serve::start(&metadata, &db, dir.path().join("second.log")).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut finished, _) = second.counts().await;
    while finished < CALLOUTS {
        assert!(
            Instant::now() < deadline,
            "only {finished} of {CALLOUTS} succeeded within 90 s of the restart:\n{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        (finished, _) = second.counts().await;
    }

    let all = second.api.list_all(CALLOUTS / 500 + 1).await;
    let stored: HashSet<&str> = all.iter().filter_map(|c| c["id"].as_str()).collect();
    let lost = ids
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .count();
    let succeeded = all.iter().filter(|c| c["status"] == "succeeded").count();
    let duplicates = upstream.duplicates();
    println!(
        "{succeeded}/{CALLOUTS} succeeded, {lost} lost, {duplicates} duplicates ≤ {CAP} \
         (at the kill: {done} succeeded, {running} claimed, {at_upstream} held by the upstream; \
         {before_restart} requests before the restart, {} in all)",
        upstream.count()
    );
    assert_eq!(lost, 0, "callouts lost by the kill");
    assert_eq!((succeeded, all.len()), (CALLOUTS, CALLOUTS));
    assert_eq!(
        upstream.distinct_keys(),
        CALLOUTS,
        "every callout reached the upstream"
    );
    assert!(
        duplicates <= CAP,
        "{duplicates} duplicate requests; at most {CAP} calls were in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_keeps_the_rest_queued() {
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "stored": true })).hold(Duration::from_millis(400)))
            .await;
    let (dir, metadata, db) = sink_folder(SINK, &upstream.url());

    let mut first = Serve::start(&metadata, &db, dir.path().join("first.log")).await;
    let items: Vec<Value> = (0..60)
        .map(|n| json!({ "function": "sink.put", "input": { "n": n }, "idempotency_key": format!("t-{n}") }))
        .collect();
    let ids = first.api.enqueue_batch(items).await;
    assert_eq!(ids.len(), 60);
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.inflight() < 10 {
        assert!(
            Instant::now() < deadline,
            "calls never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent_before_term = upstream.count();
    first.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = first.child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        first.log_text()
    );
    // Calls in flight were answered, nothing new was sent after the stop.
    assert_eq!(upstream.inflight(), 0);
    let sent_at_exit = upstream.count();
    assert!(sent_at_exit >= sent_before_term);
    assert!(
        sent_at_exit < 60,
        "the server kept claiming after SIGTERM ({sent_at_exit} sent)"
    );

    // Restarted, the rest run; every call in flight at SIGTERM ended recorded, none resent.
    let second = Serve::start(&metadata, &db, dir.path().join("second.log")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut done, _) = second.counts().await;
    while done < 60 {
        assert!(
            Instant::now() < deadline,
            "only {done} of 60 succeeded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        (done, _) = second.counts().await;
    }
    assert_eq!(
        upstream.duplicates(),
        0,
        "a call finished at shutdown was sent again"
    );
    println!(
        "SIGTERM with {sent_before_term} calls sent: {sent_at_exit} answered before exit, 60/60 succeeded after restart, 0 duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_metadata_and_keeps_the_old_version_when_it_is_invalid() {
    let upstream = Upstream::ok().await;
    let (dir, metadata, db) = sink_folder(SINK, &upstream.url());
    let sink = pointed(SINK, &upstream.url());
    let serve = Serve::start(&metadata, &db, dir.path().join("serve.log")).await;

    let names = |body: &Value| -> Vec<String> {
        body["functions"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| f["function"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // An invalid file: SIGHUP is refused and the old version keeps serving.
    std::fs::write(
        metadata.join("broken.yaml"),
        "connection: broken\ntype: rest\n",
    )
    .expect("write");
    serve.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !serve.log_text().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = serve.api.get("/v1/functions").await;
    assert_eq!(names(&body), vec!["sink.put".to_string()]);

    // A valid change: the new function appears.
    std::fs::remove_file(metadata.join("broken.yaml")).expect("remove");
    let extra = sink.replace("connection: sink", "connection: sink_two");
    std::fs::write(metadata.join("two.yaml"), extra).expect("write");
    serve.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = serve.api.get("/v1/functions").await;
        if names(&body).contains(&"sink_two.put".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never showed sink_two.put"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
