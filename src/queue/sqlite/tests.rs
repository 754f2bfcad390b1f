//! The SQLite store: the shared [`Store`] contract, then what only this store has — group
//! commit, the file on disk, the query plans, and how failures are classified.
//!
//! Each test opens its own database in a temporary directory.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, SqliteConnection};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::*;
use crate::queue::Next;
use crate::queue::contract::{T0, callout, file, finish, keyed, store_contract};

fn path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("queue.db")
}

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}", path(dir).display())
}

/// A fresh store, and the directory that holds its file.
async fn open_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    (store, dir)
}

/// A connection of our own to the store's file, beside the store's.
async fn raw(dir: &TempDir) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path(dir))
        .connect()
        .await
        .unwrap()
}

store_contract!(open_store);

/// The same contract with every group run op by op, as after a failed merged group.
mod op_by_op {
    use super::*;

    async fn open_store() -> (SqliteStore, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&url(&dir), false).await.unwrap();
        (store, dir)
    }

    store_contract!(open_store);
}

// ---------------------------------------------------------------------------------------------
// Group commit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits() {
    let (store, _dir) = open_store().await;
    let store = Arc::new(store);
    let before = store.commits();

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..2_000 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let item = callout(&format!("c{n:04}"), "acme", T0);
            store.enqueue(vec![item]).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        let done = done.unwrap().unwrap();
        assert!(
            matches!(done.as_slice(), [Enqueued::Created(_)]),
            "{done:?}"
        );
    }

    let commits = store.commits() - before;
    println!("2,000 concurrent enqueues: {commits} commits");
    assert!(commits < 1_000, "2,000 enqueues took {commits} commits");
    assert_eq!(store.counts().await.unwrap()[0], (Status::Queued, 2_000));
}

#[tokio::test]
async fn every_write_is_one_commit_when_alone() {
    let (store, _dir) = open_store().await;

    store
        .enqueue(vec![callout("c1", "acme", T0)])
        .await
        .unwrap();
    store
        .claim(T0, 10, Duration::from_secs(30), &[])
        .await
        .unwrap();
    store.get("c1").await.unwrap();

    assert_eq!(store.commits(), 2);
}

/// A writer of our own beside the store's, to run a chosen group.
async fn writer(dir: &TempDir) -> Writer {
    Writer::open(
        &path(dir),
        Duration::from_secs(5),
        Arc::new(AtomicU64::new(0)),
        true,
    )
    .unwrap()
}

type Answer = oneshot::Receiver<Result<Vec<Enqueued>, StoreError>>;

fn enqueue_op(batch: Vec<NewCallout>) -> (Op, Answer) {
    let (reply, answer) = oneshot::channel();
    (Op::Enqueue(Job::new(batch, reply)), answer)
}

#[tokio::test]
async fn failing_operation_fails_alone_in_its_group() {
    let (store, dir) = open_store().await;
    let mut writer = writer(&dir).await;
    let (first, first_answer) = enqueue_op(vec![callout("c1", "acme", T0)]);
    // c2 is fine, but c1 is there already: this whole enqueue fails, c2 included.
    let (bad, bad_answer) = enqueue_op(vec![callout("c2", "acme", T0), callout("c1", "acme", T0)]);
    let (last, last_answer) = enqueue_op(vec![callout("c3", "acme", T0)]);

    writer.commit_group(vec![first, bad, last]);

    assert_eq!(writer.commits.load(Ordering::Relaxed), 1);
    assert!(first_answer.await.unwrap().is_ok());
    assert!(last_answer.await.unwrap().is_ok());
    let err = bad_answer.await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the store failed: enqueue callout c1: (code: 1555) UNIQUE constraint failed: callouts.id"
    );
    assert!(store.get("c1").await.unwrap().is_some());
    assert_eq!(store.get("c2").await.unwrap(), None);
    assert!(store.get("c3").await.unwrap().is_some());
}

type FinishAnswer = oneshot::Receiver<Result<Vec<Finished>, StoreError>>;

fn finish_op(batch: Vec<Finish>) -> (Op, FinishAnswer) {
    let (reply, answer) = oneshot::channel();
    (Op::Finish(Job::new(batch, reply)), answer)
}

#[tokio::test]
async fn a_group_runs_merged_and_answers_each_operation_as_alone() {
    let (store, dir) = open_store().await;
    store
        .enqueue(vec![
            callout("a", "acme", T0),
            callout("b", "acme", T0),
            callout("c", "acme", T0),
        ])
        .await
        .unwrap();
    let claims = store
        .claim(T0, 3, Duration::from_secs(30), &[])
        .await
        .unwrap();
    let [a, b, c] = claims.as_slice() else {
        panic!("{claims:?}")
    };
    let mut stale = finish(b, T0 + 1, Next::Succeeded);
    stale.attempt += 1;
    stale.record.attempt += 1;
    let mut writer = writer(&dir).await;
    // Enqueues, results and a claim in one group: the key `k` is taken by the first of three
    // batches; the second asks again with the same request, the third with another.
    let (first, first_answer) = enqueue_op(vec![keyed("k1", "k", "h"), callout("d", "acme", T0)]);
    let (again, again_answer) = enqueue_op(vec![keyed("k2", "k", "h")]);
    let (other, other_answer) = enqueue_op(vec![keyed("k3", "k", "other")]);
    let (done, done_answer) = finish_op(vec![finish(a, T0 + 1, Next::Succeeded), stale]);
    let (retry, retry_answer) = finish_op(vec![finish(c, T0 + 1, Next::Retry { at: T0 + 99 })]);
    let (reply, claimed_answer) = oneshot::channel();
    let claim = Op::Claim(Job::new(
        ClaimRequest {
            now: T0 + 1,
            limit: 10,
            lease: Duration::from_secs(30),
            skip: Vec::new(),
        },
        reply,
    ));

    writer.commit_group(vec![first, again, done, claim, other, retry]);

    assert_eq!(
        (writer.commits.load(Ordering::Relaxed), writer.fallbacks),
        (1, 0)
    );
    let created = first_answer.await.unwrap().unwrap();
    assert!(
        matches!(created.as_slice(), [Enqueued::Created(k1), Enqueued::Created(d)] if k1.id == "k1" && d.id == "d"),
        "{created:?}"
    );
    let again = again_answer.await.unwrap().unwrap();
    assert!(
        matches!(again.as_slice(), [Enqueued::Existing(k1)] if k1.id == "k1"),
        "{again:?}"
    );
    let other = other_answer.await.unwrap().unwrap();
    assert!(
        matches!(other.as_slice(), [Enqueued::Conflict { existing_id }] if existing_id == "k1"),
        "{other:?}"
    );
    assert_eq!(
        done_answer.await.unwrap().unwrap(),
        [Finished::Recorded, Finished::Fenced]
    );
    assert_eq!(retry_answer.await.unwrap().unwrap(), [Finished::Recorded]);
    // The claim ran after the enqueues: it takes the new callouts, oldest due first.
    let claimed = claimed_answer.await.unwrap().unwrap();
    let claimed: Vec<&str> = claimed.iter().map(|c| c.callout.id.as_str()).collect();
    assert_eq!(claimed, ["d", "k1"]);
    assert_eq!(
        store.get("a").await.unwrap().unwrap().status,
        Status::Succeeded
    );
    assert_eq!(
        store.get("b").await.unwrap().unwrap().status,
        Status::Running
    );
    let c = store.get("c").await.unwrap().unwrap();
    assert_eq!(
        (c.status, c.next_attempt_at),
        (Status::Retrying, Some(T0 + 99))
    );
    assert_eq!(store.attempts("a").await.unwrap().len(), 1);
    assert_eq!(store.attempts("b").await.unwrap(), []);
    let journal = store.attempts("c").await.unwrap();
    assert_eq!(
        journal[0].error_message.as_deref(),
        Some("upstream is unavailable")
    );
    assert_eq!(store.get("k2").await.unwrap(), None);
    assert_eq!(store.get("k3").await.unwrap(), None);
}

#[tokio::test]
async fn two_results_for_one_callout_in_a_group_run_op_by_op() {
    let (store, dir) = open_store().await;
    store.enqueue(vec![callout("a", "acme", T0)]).await.unwrap();
    let claims = store
        .claim(T0, 1, Duration::from_secs(30), &[])
        .await
        .unwrap();
    let mut writer = writer(&dir).await;
    let (first, first_answer) = finish_op(vec![finish(&claims[0], T0 + 1, Next::Succeeded)]);
    let (second, second_answer) = finish_op(vec![finish(&claims[0], T0 + 2, Next::Failed)]);

    writer.commit_group(vec![first, second]);

    // Merged, the two would race in one statement; op by op, the first counts.
    assert_eq!(
        (writer.commits.load(Ordering::Relaxed), writer.fallbacks),
        (1, 1)
    );
    assert_eq!(first_answer.await.unwrap().unwrap(), [Finished::Recorded]);
    assert_eq!(second_answer.await.unwrap().unwrap(), [Finished::Fenced]);
    assert_eq!(
        store.get("a").await.unwrap().unwrap().status,
        Status::Succeeded
    );
    assert_eq!(store.attempts("a").await.unwrap().len(), 1);
}

#[tokio::test]
async fn duplicate_file_fails_alone_in_its_group() {
    let (store, dir) = open_store().await;
    store.insert_file(&file("f1", None, T0)).await.unwrap();
    let mut writer = writer(&dir).await;
    let (enqueue, enqueue_answer) = enqueue_op(vec![callout("c1", "acme", T0)]);
    let (reply, duplicate_answer) = oneshot::channel();
    let duplicate = Op::InsertFile(Job::new(file("f1", Some("other.pdf"), T0), reply));
    let (reply, fresh_answer) = oneshot::channel();
    let fresh = Op::InsertFile(Job::new(file("f2", None, T0), reply));
    let (reply, deleted_answer) = oneshot::channel();
    let delete = Op::DeleteFile(Job::new("f1".to_owned(), reply));

    writer.commit_group(vec![enqueue, duplicate, fresh, delete]);

    assert_eq!(
        (writer.commits.load(Ordering::Relaxed), writer.fallbacks),
        (1, 1)
    );
    assert_eq!(
        duplicate_answer.await.unwrap().unwrap_err().to_string(),
        "the store failed: record file f1: a file with this id exists already"
    );
    assert!(enqueue_answer.await.unwrap().is_ok());
    assert!(fresh_answer.await.unwrap().is_ok());
    assert!(deleted_answer.await.unwrap().unwrap());
    assert!(store.get("c1").await.unwrap().is_some());
    assert_eq!(store.file("f1").await.unwrap(), None);
    assert_eq!(store.file("f2").await.unwrap(), Some(file("f2", None, T0)));
}

/// A writer whose database file cannot grow by more than a few pages.
async fn cramped_writer(dir: &TempDir) -> Writer {
    let writer = writer(dir).await;
    let pages: i64 = writer
        .conn
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .unwrap();
    // Room for small rows, not for a megabyte.
    let _: i64 = writer
        .conn
        .query_row(
            &format!("PRAGMA max_page_count = {}", pages + 8),
            [],
            |row| row.get(0),
        )
        .unwrap();
    writer
}

fn big(id: &str) -> NewCallout {
    NewCallout {
        input: serde_json::json!({ "blob": "x".repeat(1_000_000) }),
        ..callout(id, "acme", T0)
    }
}

#[tokio::test]
async fn full_disk_fails_the_operation_as_unavailable() {
    let (store, dir) = open_store().await;
    let mut writer = cramped_writer(&dir).await;
    let (small, small_answer) = enqueue_op(vec![callout("small", "acme", T0)]);
    let (big, big_answer) = enqueue_op(vec![big("big")]);
    let (after, after_answer) = enqueue_op(vec![callout("after", "acme", T0)]);

    // SQLite rolls back the whole transaction on a full disk: the others run again without it.
    writer.commit_group(vec![small, big, after]);

    let err = big_answer.await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the store is unavailable: enqueue callout big: (code: 13) database or disk is full"
    );
    assert!(small_answer.await.unwrap().is_ok());
    assert!(after_answer.await.unwrap().is_ok());
    assert_eq!(writer.commits.load(Ordering::Relaxed), 1);
    assert_eq!(store.get("big").await.unwrap(), None);
    assert!(store.get("small").await.unwrap().is_some());
    assert!(store.get("after").await.unwrap().is_some());
}

#[tokio::test]
async fn group_aborted_twice_fails_as_a_whole() {
    let (store, dir) = open_store().await;
    let mut writer = cramped_writer(&dir).await;
    let (first, first_answer) = enqueue_op(vec![big("big1")]);
    let (small, small_answer) = enqueue_op(vec![callout("small", "acme", T0)]);
    let (second, second_answer) = enqueue_op(vec![big("big2")]);

    writer.commit_group(vec![first, small, second]);

    let full = |id: &str| {
        format!(
            "the store is unavailable: enqueue callout {id}: (code: 13) database or disk is full"
        )
    };
    assert_eq!(
        first_answer.await.unwrap().unwrap_err().to_string(),
        full("big1")
    );
    // The retry without big1 was aborted by big2: no third try, the rest fails with it.
    assert_eq!(
        small_answer.await.unwrap().unwrap_err().to_string(),
        full("big2")
    );
    assert_eq!(
        second_answer.await.unwrap().unwrap_err().to_string(),
        full("big2")
    );
    assert_eq!(writer.commits.load(Ordering::Relaxed), 0);
    assert_eq!(store.counts().await.unwrap()[0], (Status::Queued, 0));
    // The writer goes on with the next group.
    let (next, next_answer) = enqueue_op(vec![callout("next", "acme", T0)]);
    writer.commit_group(vec![next]);
    assert!(next_answer.await.unwrap().is_ok());
}

#[tokio::test]
async fn group_that_cannot_begin_fails_at_once_as_unavailable() {
    let (store, dir) = open_store().await;
    let mut writer = Writer::open(
        &path(&dir),
        Duration::from_millis(50),
        Arc::new(AtomicU64::new(0)),
        true,
    )
    .unwrap();
    // Another process holds the write lock past the busy timeout.
    let locker = rusqlite::Connection::open(path(&dir)).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (first, first_answer) = enqueue_op(vec![callout("c1", "acme", T0)]);
    let (second, second_answer) = enqueue_op(vec![callout("c2", "acme", T0)]);

    writer.commit_group(vec![first, second]);

    // Not run again op by op: that would wait out the busy timeout a second time.
    assert_eq!(writer.fallbacks, 0);
    for answer in [first_answer, second_answer] {
        assert_eq!(
            answer.await.unwrap().unwrap_err().to_string(),
            "the store is unavailable: begin a write transaction: (code: 5) database is locked"
        );
    }
    locker.execute_batch("ROLLBACK").unwrap();
    let (next, next_answer) = enqueue_op(vec![callout("c3", "acme", T0)]);
    writer.commit_group(vec![next]);
    assert!(next_answer.await.unwrap().is_ok());
    assert_eq!(store.get("c1").await.unwrap(), None);
    assert!(store.get("c3").await.unwrap().is_some());
}

#[tokio::test]
async fn calls_after_the_writer_is_gone_are_closed() {
    let (mut store, _dir) = open_store().await;
    // A writer that dies with operations in hand (they are dropped unanswered), then is gone.
    let (ops, mut queue) = tokio::sync::mpsc::channel(1);
    store.ops = ops;
    let dying = tokio::spawn(async move {
        let op = queue.recv().await;
        drop(op);
    });

    let enqueued = store.enqueue(vec![callout("c1", "acme", T0)]).await;
    dying.await.unwrap();
    let claimed = store.claim(T0, 1, Duration::from_secs(1), &[]).await;

    assert!(matches!(enqueued, Err(StoreError::Closed)), "{enqueued:?}");
    assert!(matches!(claimed, Err(StoreError::Closed)), "{claimed:?}");
}

// ---------------------------------------------------------------------------------------------
// The file

#[tokio::test]
async fn enqueued_callout_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    let done = store
        .enqueue(vec![callout("c1", "acme", T0)])
        .await
        .unwrap();
    drop(store);

    let reopened = SqliteStore::open(&url(&dir)).await.unwrap();

    let Some(Enqueued::Created(created)) = done.into_iter().next() else {
        panic!("expected a created callout");
    };
    assert_eq!(reopened.get("c1").await.unwrap(), Some(created));
    reopened.close().await.unwrap();
    let again = SqliteStore::open(&url(&dir)).await.unwrap();
    assert!(again.get("c1").await.unwrap().is_some());
}

#[tokio::test]
async fn file_reference_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    let named = file("f1", Some("Rechnung für Müller.pdf"), T0 + 1_000);
    let gone = file("f2", None, T0);
    store.insert_file(&named).await.unwrap();
    store.insert_file(&gone).await.unwrap();
    assert!(store.delete_file("f2").await.unwrap());
    store.close().await.unwrap();

    let reopened = SqliteStore::open(&url(&dir)).await.unwrap();

    assert_eq!(reopened.file("f1").await.unwrap(), Some(named.clone()));
    assert_eq!(reopened.file("f2").await.unwrap(), None);
    assert_eq!(
        reopened.expired_files(T0 + 1_000, 10).await.unwrap(),
        vec![named]
    );
    reopened.close().await.unwrap();
}

#[tokio::test]
async fn database_is_in_wal_mode() {
    let (_store, dir) = open_store().await;
    let mut conn = raw(&dir).await;

    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn in_memory_database_is_refused() {
    let err = SqliteStore::open("sqlite::memory:").await.unwrap_err();

    assert_eq!(
        err.to_string(),
        "the store failed: cannot open \"sqlite::memory:\": an in-memory database cannot be \
         shared by the writer and the readers; use a file, like \"sqlite://switchboard.db\""
    );
}

#[tokio::test]
async fn file_in_a_missing_directory_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing/queue.db");
    let url = format!("sqlite://{}", file.display());

    let err = SqliteStore::open(&url).await.unwrap_err();

    assert_eq!(
        err.to_string(),
        format!(
            "the store failed: cannot open {url:?}: cannot create its lock file {}.lock: No such file or directory (os error 2)",
            file.display()
        )
    );
}

#[tokio::test]
async fn unreadable_row_is_a_failure_naming_the_callout() {
    let (store, dir) = open_store().await;
    let mut conn = raw(&dir).await;
    sqlx::query(
        "INSERT INTO callouts (id, function, connection, input, request_hash, status, attempts, \
         series, series_attempts, series_started_at, created_at, updated_at, next_attempt_at) \
         VALUES ('bad', 'acme.send', 'acme', '{not json', 'h', 'queued', 0, 0, 0, 1, 1, 1, 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let got = store.get("bad").await.unwrap_err();
    let listed = store
        .list(&ListQuery {
            limit: 5,
            ..ListQuery::default()
        })
        .await
        .unwrap_err();

    let expected = "the store failed: callout bad cannot be read: input: key must be a string at line 1 column 2";
    assert_eq!(got.to_string(), expected);
    assert_eq!(listed.to_string(), expected);
}

// ---------------------------------------------------------------------------------------------
// Query plans: per-callout costs must not grow with the backlog

/// The `detail` lines of SQLite's plan for `statement`.
async fn explain(dir: &TempDir, statement: &str) -> Vec<String> {
    let mut conn = raw(dir).await;
    let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {statement}")))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|row| row.try_get::<String, _>("detail").unwrap())
        .collect()
}

#[tokio::test]
async fn claim_walks_the_ready_index_in_order() {
    let (_store, dir) = open_store().await;

    let plan = explain(&dir, sql::CLAIM_READY).await;

    assert_eq!(
        plan[0],
        "SEARCH callouts USING INDEX callouts_ready (next_attempt_at<?)"
    );
    // The rest is the skip list; the callouts themselves are neither scanned nor sorted.
    assert!(
        plan[1..]
            .iter()
            .all(|line| !line.contains("callouts") && !line.contains("TEMP B-TREE")),
        "{plan:#?}"
    );
}

#[tokio::test]
async fn per_callout_statements_go_by_key() {
    let (_store, dir) = open_store().await;
    let by_id = ["SEARCH callouts USING INDEX sqlite_autoindex_callouts_1 (id=?)"];

    for statement in [
        sql::GET,
        sql::STATUS_OF,
        sql::FINISH,
        sql::EXTEND_LEASE,
        sql::RELEASE,
        sql::REPLAY,
        sql::CANCEL,
    ] {
        assert_eq!(explain(&dir, statement).await, by_id, "{statement}");
    }
    assert_eq!(
        explain(&dir, sql::FIND_KEY).await,
        ["SEARCH callouts USING INDEX sqlite_autoindex_callouts_2 (idempotency_key=?)"]
    );
    assert_eq!(
        explain(&dir, sql::ATTEMPTS).await,
        ["SEARCH attempts USING PRIMARY KEY (callout_id=?)"]
    );
}

#[tokio::test]
async fn merged_statements_go_by_key() {
    let (_store, dir) = open_store().await;

    assert_eq!(
        explain(&dir, sql::FINISH_MANY).await,
        [
            "SCAN j VIRTUAL TABLE INDEX 1:",
            "SEARCH callouts USING INDEX sqlite_autoindex_callouts_1 (id=?)"
        ]
    );
    let claim = explain(&dir, sql::CLAIM_MANY).await;
    assert_eq!(
        claim[0],
        "SEARCH callouts USING INDEX sqlite_autoindex_callouts_1 (id=?)"
    );
    assert!(
        claim[1..].iter().all(|line| !line.contains("callouts")),
        "{claim:#?}"
    );
    // Inserts read their JSON argument (and, for callouts, the journal by key: the foreign
    // key's check).
    assert_eq!(
        explain(&dir, sql::INSERT_MANY).await,
        [
            "SCAN json_each VIRTUAL TABLE INDEX 1:",
            "SEARCH attempts USING PRIMARY KEY (callout_id=?)"
        ]
    );
    assert_eq!(
        explain(&dir, sql::JOURNAL_MANY).await,
        ["SCAN json_each VIRTUAL TABLE INDEX 1:"]
    );
}

#[tokio::test]
async fn bulk_statements_touch_only_their_rows() {
    let (_store, dir) = open_store().await;
    let running = ["SCAN callouts USING INDEX callouts_leases"];

    assert_eq!(explain(&dir, sql::RECLAIM).await, running);
    assert_eq!(explain(&dir, sql::RECLAIM_JOURNAL).await, running);
    assert_eq!(
        explain(&dir, sql::DELAY_CONNECTION).await,
        ["SEARCH callouts USING INDEX callouts_ready_by_connection \
             (connection=? AND next_attempt_at<?)"]
    );
}

#[tokio::test]
async fn file_statements_go_by_key_or_by_expiry() {
    let (_store, dir) = open_store().await;
    let by_id = ["SEARCH files USING INDEX sqlite_autoindex_files_1 (id=?)"];

    assert_eq!(explain(&dir, sql::FILE).await, by_id);
    assert_eq!(explain(&dir, sql::DELETE_FILE).await, by_id);
    // In index order: no sort, and it stops at the limit.
    assert_eq!(
        explain(&dir, sql::EXPIRED_FILES).await,
        ["SEARCH files USING INDEX files_by_expiry (expires_at<?)"]
    );
}

#[tokio::test]
async fn list_pages_through_an_index() {
    let (_store, dir) = open_store().await;
    let query = |status: Option<Status>, function: Option<&str>| ListQuery {
        status,
        function: function.map(str::to_owned),
        limit: 10,
        before_id: Some("c5".to_owned()),
    };
    let cases = [
        (
            query(None, None),
            "SEARCH callouts USING INDEX sqlite_autoindex_callouts_1 (id<?)",
        ),
        (
            query(Some(Status::Failed), None),
            "SEARCH callouts USING INDEX callouts_by_status (status=? AND id<?)",
        ),
        (
            query(None, Some("acme.send")),
            "SEARCH callouts USING INDEX callouts_by_function (function=? AND id<?)",
        ),
    ];

    for (query, expected) in cases {
        let statement = list_statement(&query).into_string();
        assert_eq!(explain(&dir, &statement).await, [expected], "{statement}");
    }
}

#[tokio::test]
async fn a_second_engine_cannot_open_a_file_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(&url(&dir)).await.unwrap();
    let Err(StoreError::Failed(message)) = SqliteStore::open(&url(&dir)).await else {
        panic!("a second store on the same file must be refused");
    };
    assert!(
        message.contains("is in use by another switchboard engine"),
        "{message}"
    );
    drop(first);
    SqliteStore::open(&url(&dir))
        .await
        .expect("free again once the first is gone");
}

#[tokio::test]
async fn a_second_engine_cannot_open_a_file_in_use_through_a_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(&url(&dir)).await.unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(path(&dir), &link).unwrap();
    let through = format!("sqlite://{}", link.display());
    let Err(StoreError::Failed(message)) = SqliteStore::open(&through).await else {
        panic!("a second store on the same file, through a link, must be refused");
    };
    assert!(
        message.contains("is in use by another switchboard engine"),
        "{message}"
    );
}

#[tokio::test]
async fn ready_reads_one_row_and_fails_when_the_queue_cannot_be_read() {
    let (store, dir) = open_store().await;
    let plan = explain(&dir, sql::READY).await;
    assert_eq!(plan.len(), 1, "{plan:#?}");
    assert!(plan[0].starts_with("SCAN callouts"), "{plan:#?}");
    store.ready().await.unwrap();

    store.readers.close().await;

    assert!(store.ready().await.is_err());
}

#[tokio::test]
async fn a_journal_written_before_failover_is_kept_with_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = SqliteConnectOptions::new()
        .filename(path(&dir))
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    // The schema of the first version, with one callout and its journal.
    MIGRATOR.run_to(1, &mut first).await.unwrap();
    sqlx::query(
        "INSERT INTO callouts (id, function, connection, input, idempotency_key, request_hash,
             status, attempts, series, series_attempts, series_started_at, created_at,
             updated_at, next_attempt_at, claimed_at, lease_expires_at, result)
         VALUES ('c1', 'acme.send', 'acme', '{}', NULL, '', 'failed', 2, 0, 2, 1, 1, 2,
             NULL, NULL, NULL, NULL)",
    )
    .execute(&mut first)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (callout_id, attempt, series, started_at, duration_ms,
             http_status, error_kind, error_message, response_bytes)
         VALUES ('c1', 1, 0, 10, 5, 503, 'unavailable', 'down', 3),
                ('c1', 2, 0, 20, 6, 400, 'rejected', 'no', 4)",
    )
    .execute(&mut first)
    .await
    .unwrap();
    first.close().await.unwrap();

    let store = SqliteStore::open(&url(&dir)).await.unwrap();
    let journal = store.attempts("c1").await.unwrap();
    assert_eq!(journal.len(), 2);
    for (entry, (attempt, status)) in journal.iter().zip([(1, 503), (2, 400)]) {
        assert_eq!(entry.attempt, attempt);
        assert_eq!(entry.route, 0);
        assert_eq!(entry.connection, "acme");
        assert_eq!(entry.http_status, Some(status));
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_database_from_before_files_upgrades_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut before = SqliteConnectOptions::new()
        .filename(path(&dir))
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    // The schema of the second version (failover and engine state), with a callout and a
    // value kept between runs.
    MIGRATOR.run_to(2, &mut before).await.unwrap();
    sqlx::query(
        "INSERT INTO callouts (id, function, connection, input, idempotency_key, request_hash,
             status, attempts, series, series_attempts, series_started_at, created_at,
             updated_at, next_attempt_at, claimed_at, lease_expires_at, result)
         VALUES ('c1', 'acme.send', 'acme', '{}', NULL, '', 'queued', 0, 0, 0, 1, 1, 1,
             1, NULL, NULL, NULL)",
    )
    .execute(&mut before)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO engine_state (key, value, updated_at)
         VALUES ('oauth2.refresh_token:crm', '{\"token\":\"kept\"}', 1)",
    )
    .execute(&mut before)
    .await
    .unwrap();
    before.close().await.unwrap();

    let store = SqliteStore::open(&url(&dir)).await.unwrap();

    assert_eq!(
        store.get("c1").await.unwrap().map(|c| c.status),
        Some(Status::Queued)
    );
    assert_eq!(
        store
            .state("oauth2.refresh_token:crm")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"token":"kept"}"#)
    );
    let record = file("f1", Some("notes.txt"), T0);
    store.insert_file(&record).await.unwrap();
    assert_eq!(store.file("f1").await.unwrap(), Some(record));
    store.close().await.unwrap();
}
