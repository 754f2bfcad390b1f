//! The dispatcher's two bounds, seen through a store that watches it: the cap bounds calls
//! until their results are durable, and claims run ahead of the calls by at most the cap, so a
//! freed permit finds the next callout claimed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use switchboard::controller::CallerAuth;
use switchboard::metadata::Loader;
use switchboard::queue::{
    Attempt, Callout, Claimed, Enqueued, FileRecord, Finish, Finished, ListQuery, Millis,
    NewCallout, SqliteStore, Status, Store, StoreError, Transition,
};
use switchboard::server::{self, Server, ServerConfig};
use tempfile::TempDir;
use tokio::sync::Notify;

use crate::support::engine::{Api, KEY, pointed, write_metadata};
use crate::support::upstream::{Reply, Upstream};

const DEADLINE: Duration = Duration::from_secs(10);

const PING: &str = r#"connection: shop
type: rest
endpoint: UPSTREAM/shop
allow_private_network: true
limits: { timeout: 5s }
functions:
  ping:
    method: POST
    path: /ping
"#;

/// The SQLite store, with results held back while `closed` and claims counted.
struct Watched {
    inner: SqliteStore,
    closed: AtomicBool,
    opened: Notify,
    /// Results waiting for the gate to open.
    held: AtomicI64,
    /// Claimed callouts not yet finished or released, and the most there were.
    claimed: AtomicI64,
    peak_claimed: AtomicI64,
}

impl Watched {
    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
}

#[async_trait]
impl Store for Watched {
    async fn enqueue(&self, batch: Vec<NewCallout>) -> Result<Vec<Enqueued>, StoreError> {
        self.inner.enqueue(batch).await
    }
    async fn get(&self, id: &str) -> Result<Option<Callout>, StoreError> {
        self.inner.get(id).await
    }
    async fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        self.inner.attempts(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Callout>, StoreError> {
        self.inner.list(query).await
    }
    async fn claim(
        &self,
        now: Millis,
        limit: u32,
        lease: Duration,
        skip: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        let claimed = self.inner.claim(now, limit, lease, skip).await?;
        let now = self
            .claimed
            .fetch_add(claimed.len() as i64, Ordering::SeqCst);
        self.peak_claimed
            .fetch_max(now + claimed.len() as i64, Ordering::SeqCst);
        Ok(claimed)
    }
    async fn extend_lease(
        &self,
        id: &str,
        attempt: u32,
        until: Millis,
    ) -> Result<Finished, StoreError> {
        self.inner.extend_lease(id, attempt, until).await
    }
    async fn finish(&self, batch: Vec<Finish>) -> Result<Vec<Finished>, StoreError> {
        self.held.fetch_add(1, Ordering::SeqCst);
        while self.closed.load(Ordering::SeqCst) {
            let opened = self.opened.notified();
            if !self.closed.load(Ordering::SeqCst) {
                break;
            }
            opened.await;
        }
        self.held.fetch_sub(1, Ordering::SeqCst);
        let done = self.inner.finish(batch).await?;
        self.claimed.fetch_sub(done.len() as i64, Ordering::SeqCst);
        Ok(done)
    }
    async fn release(&self, claims: &[(String, u32)], now: Millis) -> Result<(), StoreError> {
        self.inner.release(claims, now).await?;
        self.claimed
            .fetch_sub(claims.len() as i64, Ordering::SeqCst);
        Ok(())
    }
    async fn reclaim(&self, now: Millis, all: bool) -> Result<u64, StoreError> {
        self.inner.reclaim(now, all).await
    }
    async fn delay_connection(&self, connection: &str, until: Millis) -> Result<u64, StoreError> {
        self.inner.delay_connection(connection, until).await
    }
    async fn replay(&self, id: &str, now: Millis) -> Result<Transition, StoreError> {
        self.inner.replay(id, now).await
    }
    async fn cancel(&self, id: &str, now: Millis) -> Result<Transition, StoreError> {
        self.inner.cancel(id, now).await
    }
    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.inner.counts().await
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

/// A server with the cap `cap` on a watched store, its results held back from the start if
/// `closed`.
async fn start(
    upstream: &Upstream,
    cap: usize,
    closed: bool,
) -> (Server, Api, Arc<Watched>, TempDir, TempDir) {
    let metadata = tempfile::tempdir().expect("a metadata folder");
    write_metadata(
        metadata.path(),
        &[("shop.yaml", pointed(PING, &upstream.url()))],
    );
    let data = tempfile::tempdir().expect("a data folder");
    let db = format!("sqlite://{}", data.path().join("sb.db").display());
    let store = Arc::new(Watched {
        inner: SqliteStore::open(&db).await.expect("the store opens"),
        closed: AtomicBool::new(closed),
        opened: Notify::new(),
        held: AtomicI64::new(0),
        claimed: AtomicI64::new(0),
        peak_claimed: AtomicI64::new(0),
    });
    let mut config = ServerConfig::new(metadata.path(), db);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.auth = CallerAuth::Keys(Arc::new(vec![KEY.to_string()]));
    config.max_concurrent_callouts = cap;
    config.shutdown_grace = Duration::from_secs(1);
    let server = server::start_with_store(config, store.clone(), Loader::new())
        .await
        .expect("the server starts");
    let api = Api::new(format!("http://{}", server.addr), Some(KEY));
    (server, api, store, metadata, data)
}

/// Waits until `condition` holds, failing with `what` after [`DEADLINE`].
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_callout_waits_claimed_while_a_result_is_committed() {
    let upstream = Upstream::ok().await;
    let (server, api, store, _metadata, _data) = start(&upstream, 1, true).await;

    let first = api.enqueue("shop.ping", json!({})).await;
    until("the first call was made and its result waits", || {
        upstream.count() == 1 && store.held.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = api.enqueue("shop.ping", json!({})).await;
    api.wait_for_status(&second, &["running"], DEADLINE).await;
    // Claimed, but not called: the cap of 1 counts the first call until its result is durable,
    // so a crash now could repeat one call at most.
    assert_eq!(upstream.count(), 1);
    assert_eq!(api.callout(&first).await["status"], "running");

    store.open();
    for id in [first, second] {
        api.wait_for_status(&id, &["succeeded"], DEADLINE).await;
    }
    assert_eq!((upstream.count(), upstream.peak_inflight()), (2, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_run_ahead_of_the_calls_by_at_most_the_cap() {
    const CALLOUTS: usize = 40;
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "pong": true })).hold(Duration::from_millis(50)))
            .await;
    let (server, api, store, _metadata, _data) = start(&upstream, 3, false).await;

    let items = (0..CALLOUTS)
        .map(|_| json!({ "function": "shop.ping" }))
        .collect();
    let ids = api.enqueue_batch(items).await;
    for id in &ids {
        api.wait_for_status(id, &["succeeded"], DEADLINE).await;
    }

    assert_eq!(upstream.count(), CALLOUTS);
    assert_eq!(upstream.peak_inflight(), 3, "the cap bounds the calls");
    // Three calling and three claimed, ready for a freed permit; never more.
    assert_eq!(store.peak_claimed.load(Ordering::SeqCst), 6);
    server.stop().await;
}
