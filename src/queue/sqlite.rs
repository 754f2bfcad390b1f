//! The SQLite store: the embedded, single-node [`Store`], one database file in WAL mode.
//!
//! It owns the file's schema (`migrations/sqlite`, run by [`SqliteStore::open`]), one write
//! connection and a small pool of read connections. Its invariants:
//!
//! - **One writer, group commit.** Every write goes to a single writer task that owns the write
//!   connection. The writer takes every operation queued at that moment (up to
//!   [`MAX_GROUP`]) and runs them in one transaction — one fsync (`synchronous=FULL`) for the
//!   whole group — and answers each caller only after the commit. So when a write returns
//!   `Ok`, it is on disk; nothing waits on a timer to gather a group.
//! - **Operations are isolated inside a group.** Each operation runs under its own savepoint: one
//!   that fails is rolled back alone and answers its own error; the others commit. If a failure
//!   aborts the whole transaction (SQLite does that on a full disk or an I/O error), that
//!   operation answers its error and the rest of the group runs again, once, without it. Only a
//!   failed commit or a second abort fails a group: then every operation in it answers that
//!   failure, and none of it is stored.
//! - **Readers never block the writer** (WAL): `get`, `attempts`, `list` and `counts` read
//!   through the pool, which is `query_only`, and see every committed write.
//! - **Costs do not grow with the backlog.** Claims walk a partial index of ready callouts,
//!   results and lease changes go by primary key, reclaim walks a partial index of running
//!   callouts. Each statement lives in its own file under `sqlite/sql/`.
//! - **Results are fenced.** A claim increments `attempts`; `finish` and `extend_lease` change a
//!   callout only while it is `running` under that same attempt number.
//! - **Nothing from the database panics.** A row that cannot be decoded is a
//!   [`StoreError::Failed`] naming the callout; a full disk, a busy database and I/O errors are
//!   [`StoreError::Unavailable`]; a writer that is gone makes calls return
//!   [`StoreError::Closed`].

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    Attempt, Callout, Claimed, Enqueued, Finish, Finished, ListQuery, Millis, NewCallout, Next,
    Status, Store, StoreError, Transition,
};

#[cfg(test)]
mod tests;

/// The most operations the writer commits in one transaction.
pub const MAX_GROUP: usize = 1024;
/// How many operations may wait for the writer before callers wait to hand theirs over.
const QUEUE_DEPTH: usize = 4 * MAX_GROUP;
/// Read connections: reads are short, and WAL lets them run beside the writer.
const READERS: u32 = 4;
/// How long a statement waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `error_kind` of the journal row written for an attempt lost to an expired lease.
pub const LEASE_EXPIRED_KIND: &str = "lease_expired";
/// `error_message` of that row.
pub const LEASE_EXPIRED_MESSAGE: &str = "the engine stopped or stalled during this attempt: \
    its lease expired before a result was recorded";

/// The statements, one a file.
mod sql {
    pub const GET: &str = include_str!("sqlite/sql/get.sql");
    pub const STATUS_OF: &str = include_str!("sqlite/sql/status_of.sql");
    pub const ATTEMPTS: &str = include_str!("sqlite/sql/attempts.sql");
    pub const COUNTS: &str = include_str!("sqlite/sql/counts.sql");
    pub const FIND_KEY: &str = include_str!("sqlite/sql/find_key.sql");
    pub const INSERT: &str = include_str!("sqlite/sql/insert.sql");
    pub const CLAIM_READY: &str = include_str!("sqlite/sql/claim_ready.sql");
    pub const CLAIM_MANY: &str = include_str!("sqlite/sql/claim_many.sql");
    pub const INSERT_MANY: &str = include_str!("sqlite/sql/insert_many.sql");
    pub const FINISH_MANY: &str = include_str!("sqlite/sql/finish_many.sql");
    pub const JOURNAL_MANY: &str = include_str!("sqlite/sql/journal_many.sql");
    pub const FINISH: &str = include_str!("sqlite/sql/finish.sql");
    pub const JOURNAL: &str = include_str!("sqlite/sql/journal.sql");
    pub const EXTEND_LEASE: &str = include_str!("sqlite/sql/extend_lease.sql");
    pub const RELEASE: &str = include_str!("sqlite/sql/release.sql");
    pub const RECLAIM_JOURNAL: &str = include_str!("sqlite/sql/reclaim_journal.sql");
    pub const RECLAIM: &str = include_str!("sqlite/sql/reclaim.sql");
    pub const DELAY_CONNECTION: &str = include_str!("sqlite/sql/delay_connection.sql");
    pub const REPLAY: &str = include_str!("sqlite/sql/replay.sql");
    pub const CANCEL: &str = include_str!("sqlite/sql/cancel.sql");
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite [`Store`]. Share it behind an `Arc`; dropping the last handle lets the writer
/// finish what was queued and close, [`SqliteStore::close`] also waits for that.
#[derive(Debug)]
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    readers: SqlitePool,
    commits: Arc<AtomicU64>,
    writer: JoinHandle<()>,
    /// An exclusive lock on `PATH.lock`, held while the store is open: one engine per file
    /// (start-up reclaims every running callout, which is only right for the sole user).
    _lock: std::fs::File,
}

/// Takes the exclusive lock that makes an engine the only user of the database at `db`.
fn lock_file(url: &str, db: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let mut path = db.as_os_str().to_owned();
    path.push(".lock");
    let path = std::path::PathBuf::from(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| {
            StoreError::Failed(format!(
                "cannot open {url:?}: cannot create its lock file {}: {err}",
                path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Failed(format!(
            "{} is in use by another switchboard engine (it holds {}); run one engine per SQLite file",
            db.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(err)) => Err(StoreError::Failed(format!(
            "cannot lock {}: {err}",
            path.display()
        ))),
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` — `sqlite://PATH` or
    /// `sqlite:PATH` — in WAL mode with `synchronous=FULL`, foreign keys on and a 5 s busy
    /// timeout, brings its schema up to date, and starts the writer task.
    ///
    /// Must be called inside a Tokio runtime: the writer is a Tokio task.
    ///
    /// # Errors
    /// [`StoreError::Failed`] for a URL that is not a SQLite file URL (an in-memory database
    /// cannot be shared by the writer and the readers), a file that cannot be opened, or a
    /// failed migration; [`StoreError::Unavailable`] when the file is locked by another process
    /// past the busy timeout, the disk is full or an I/O error occurs.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future closes whatever was opened. A migration interrupted
    /// halfway is rolled back by SQLite and runs again on the next open.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, true).await
    }

    /// [`SqliteStore::open`], with the writer's merged statements on or off.
    async fn open_with(url: &str, merge: bool) -> Result<SqliteStore, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Failed(format!(
                "cannot open {url:?}: an in-memory database cannot be shared by the writer and \
                 the readers; use a file, like \"sqlite://switchboard.db\""
            )));
        }
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|err| store_error(format_args!("cannot open {url:?}"), err))?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let lock = lock_file(url, base.get_filename())?;

        let mut writer = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await
            .map_err(|err| store_error(format_args!("cannot open {url:?}"), err))?;
        if let Err(err) = MIGRATOR.run(&mut writer).await {
            let err = migrate_error(url, err);
            // The migration error is the one worth reporting; closing is best effort.
            let _ = writer.close().await;
            return Err(err);
        }

        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .connect_with(base.pragma("query_only", "ON"))
            .await
            .map_err(|err| store_error(format_args!("cannot open {url:?} for reading"), err))?;

        let (ops, queue) = mpsc::channel(QUEUE_DEPTH);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(
            Writer {
                conn: writer,
                commits: Arc::clone(&commits),
                merge,
                fallbacks: 0,
            }
            .run(queue),
        );
        Ok(SqliteStore {
            ops,
            readers,
            commits,
            writer,
            _lock: lock,
        })
    }

    /// How many write transactions (groups) have been committed since [`SqliteStore::open`].
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stops taking operations, waits for the writer to commit what was already handed to it
    /// and close its connection, then closes the readers.
    ///
    /// # Errors
    /// [`StoreError::Failed`] if the writer task had panicked.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the writer still finishes and closes on its own.
    pub async fn close(self) -> Result<(), StoreError> {
        let SqliteStore {
            ops,
            readers,
            writer,
            ..
        } = self;
        drop(ops);
        let joined = writer.await;
        readers.close().await;
        joined.map_err(|err| StoreError::Failed(format!("the sqlite writer task failed: {err}")))
    }

    /// Hands an operation to the writer and waits for its answer.
    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Every write method answers after the commit of the group that carried it, so `Ok` means
/// durable.
///
/// Cancel safety of the write methods (`enqueue`, `claim`, `extend_lease`, `finish`,
/// `release`, `reclaim`, `delay_connection`, `replay`, `cancel`): dropping the future before
/// the writer took the operation does nothing; after that, the operation still runs and
/// commits, and only its answer is lost. A caller that gives up on a call cannot know which
/// happened — a lost `claim` answer leaves callouts running until their lease expires and
/// `reclaim` takes them back. The read methods are cancel safe.
#[async_trait]
impl Store for SqliteStore {
    /// # Errors
    /// [`StoreError::Failed`] if an item could not be stored (for example a duplicate id): the
    /// whole batch is then left out. [`StoreError::Unavailable`] if the disk is full or the
    /// database locked; [`StoreError::Closed`] if the writer is gone.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn enqueue(&self, batch: Vec<NewCallout>) -> Result<Vec<Enqueued>, StoreError> {
        self.write(|reply| Op::Enqueue(Job::new(batch, reply)))
            .await
    }

    /// # Errors
    /// [`StoreError::Failed`] if the row cannot be decoded; [`StoreError::Unavailable`] on a
    /// locked database or an I/O error.
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn get(&self, id: &str) -> Result<Option<Callout>, StoreError> {
        let row = sqlx::query(sql::GET)
            .bind(id)
            .fetch_optional(&self.readers)
            .await
            .map_err(|err| store_error(format_args!("read callout {id}"), err))?;
        row.as_ref().map(decode_callout).transpose()
    }

    /// # Errors
    /// As [`Store::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn attempts(&self, id: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(sql::ATTEMPTS)
            .bind(id)
            .fetch_all(&self.readers)
            .await
            .map_err(|err| store_error(format_args!("read the attempts of callout {id}"), err))?;
        rows.iter().map(|row| decode_attempt(id, row)).collect()
    }

    /// Newest first, at most `query.limit` callouts (none for a limit of 0).
    ///
    /// # Errors
    /// As [`Store::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Callout>, StoreError> {
        let mut select = list_statement(query);
        let rows = select
            .build()
            .fetch_all(&self.readers)
            .await
            .map_err(|err| store_error("list callouts", err))?;
        rows.iter().map(decode_callout).collect()
    }

    /// # Errors
    /// [`StoreError::Failed`] if a claimed row cannot be decoded (nothing is claimed then);
    /// otherwise as [`Store::enqueue`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the claim done: once the writer has taken it,
    /// it commits with nobody to answer, and its callouts stay `running` until `reclaim` takes
    /// them back after the lease.
    async fn claim(
        &self,
        now: Millis,
        limit: u32,
        lease: Duration,
        skip: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        let skip = skip.to_vec();
        let request = ClaimRequest {
            now,
            limit,
            lease,
            skip,
        };
        self.write(|reply| Op::Claim(Job::new(request, reply)))
            .await
    }

    /// Fenced by `attempt` and the `running` status only: the trait gives no `now`, so a lease
    /// that ran out but was not yet reclaimed can still be extended (no other claim exists
    /// until `reclaim` runs, and that moves the callout out of `running`).
    ///
    /// # Errors
    /// As [`Store::enqueue`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn extend_lease(
        &self,
        id: &str,
        attempt: u32,
        until: Millis,
    ) -> Result<Finished, StoreError> {
        let id = id.to_owned();
        self.write(|reply| Op::ExtendLease(Job::new((id, attempt, until), reply)))
            .await
    }

    /// # Errors
    /// [`StoreError::Failed`] if an item's `record.attempt` differs from its `attempt` (nothing
    /// of the batch is then recorded); otherwise as [`Store::enqueue`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn finish(&self, batch: Vec<Finish>) -> Result<Vec<Finished>, StoreError> {
        self.write(|reply| Op::Finish(Job::new(batch, reply))).await
    }

    /// Claims that are no longer running under that attempt are left alone. A released claim
    /// must not be used again: the next claim of the callout gets the same attempt number.
    ///
    /// # Errors
    /// As [`Store::enqueue`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn release(&self, claims: &[(String, u32)], now: Millis) -> Result<(), StoreError> {
        let claims = claims.to_vec();
        self.write(|reply| Op::Release(Job::new((claims, now), reply)))
            .await
    }

    /// # Errors
    /// As [`Store::enqueue`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn reclaim(&self, now: Millis, all: bool) -> Result<u64, StoreError> {
        self.write(|reply| Op::Reclaim(Job::new((now, all), reply)))
            .await
    }

    /// # Errors
    /// As [`Store::enqueue`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn delay_connection(&self, connection: &str, until: Millis) -> Result<u64, StoreError> {
        let connection = connection.to_owned();
        self.write(|reply| Op::DelayConnection(Job::new((connection, until), reply)))
            .await
    }

    /// # Errors
    /// As [`Store::claim`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn replay(&self, id: &str, now: Millis) -> Result<Transition, StoreError> {
        let id = id.to_owned();
        self.write(|reply| Op::Replay(Job::new((id, now), reply)))
            .await
    }

    /// # Errors
    /// As [`Store::claim`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn cancel(&self, id: &str, now: Millis) -> Result<Transition, StoreError> {
        let id = id.to_owned();
        self.write(|reply| Op::Cancel(Job::new((id, now), reply)))
            .await
    }

    /// Every status, in [`Status::ALL`] order, zeros included.
    ///
    /// # Errors
    /// [`StoreError::Failed`] if a status in the table is unknown; otherwise as [`Store::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let rows = sqlx::query(sql::COUNTS)
            .fetch_all(&self.readers)
            .await
            .map_err(|err| store_error("count callouts", err))?;
        let mut counts: Vec<(Status, u64)> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        for row in &rows {
            let text: String = row
                .try_get("status")
                .map_err(|err| store_error("count callouts", err))?;
            let n: i64 = row
                .try_get("n")
                .map_err(|err| store_error("count callouts", err))?;
            let status = Status::parse(&text).ok_or_else(|| {
                StoreError::Failed(format!("count callouts: unknown status {text:?}"))
            })?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts)
    }
}

/// The statement for [`Store::list`]: built from fixed fragments with every value bound, one
/// statement per combination of filters, so each can use its index (the primary key,
/// `callouts_by_status` or `callouts_by_function`) with `before_id` as a range, not a scan.
fn list_statement(query: &ListQuery) -> QueryBuilder<Sqlite> {
    let mut select = QueryBuilder::<Sqlite>::new("SELECT * FROM callouts WHERE 1 = 1");
    if let Some(status) = query.status {
        select.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(function) = &query.function {
        select.push(" AND function = ").push_bind(function.clone());
    }
    if let Some(before_id) = &query.before_id {
        select.push(" AND id < ").push_bind(before_id.clone());
    }
    select
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(query.limit));
    select
}

// ---------------------------------------------------------------------------------------------
// The writer

/// Where the writer sends one operation's answer.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write waiting for its group's commit: the request, where to answer, and the result of
/// running it in the current transaction (kept until the commit decides its fate).
#[derive(Debug)]
struct Job<R, T> {
    request: R,
    reply: Reply<T>,
    result: Option<Result<T, StoreError>>,
}

impl<R, T> Job<R, T> {
    fn new(request: R, reply: Reply<T>) -> Self {
        Job {
            request,
            reply,
            result: None,
        }
    }

    /// Keeps `result`; returns a copy of its error, if it is one.
    fn keep(&mut self, result: Result<T, StoreError>) -> Option<StoreError> {
        let failure = result.as_ref().err().map(copy);
        self.result = Some(result);
        failure
    }

    /// Answers with the kept result, or with `group_failure` if the group did not commit.
    fn answer(self, group_failure: Option<&StoreError>) {
        let answer = match (group_failure, self.result) {
            (Some(err), _) => Err(copy(err)),
            (None, Some(result)) => result,
            (None, None) => Err(StoreError::Failed(
                "the sqlite writer answered an operation it had not run".to_owned(),
            )),
        };
        // A caller that stopped waiting has nobody to tell.
        let _ = self.reply.send(answer);
    }
}

/// A write, as handed to the writer task.
#[derive(Debug)]
enum Op {
    Enqueue(Job<Vec<NewCallout>, Vec<Enqueued>>),
    Claim(Job<ClaimRequest, Vec<Claimed>>),
    /// id, attempt, until
    ExtendLease(Job<(String, u32, Millis), Finished>),
    Finish(Job<Vec<Finish>, Vec<Finished>>),
    /// claims, now
    Release(Job<(Vec<(String, u32)>, Millis), ()>),
    /// now, all
    Reclaim(Job<(Millis, bool), u64>),
    /// connection, until
    DelayConnection(Job<(String, Millis), u64>),
    /// id, now
    Replay(Job<(String, Millis), Transition>),
    /// id, now
    Cancel(Job<(String, Millis), Transition>),
}

#[derive(Debug)]
struct ClaimRequest {
    now: Millis,
    limit: u32,
    lease: Duration,
    skip: Vec<String>,
}

impl Op {
    /// Runs the operation in the open transaction and keeps its result; returns a copy of its
    /// error if it failed.
    async fn run(&mut self, conn: &mut SqliteConnection) -> Option<StoreError> {
        match self {
            Op::Enqueue(job) => {
                let result = enqueue(conn, &job.request).await;
                job.keep(result)
            }
            Op::Claim(job) => {
                let ClaimRequest {
                    now,
                    limit,
                    lease,
                    skip,
                } = &job.request;
                let result = claim(conn, *now, *limit, *lease, skip).await;
                job.keep(result)
            }
            Op::ExtendLease(job) => {
                let (id, attempt, until) = &job.request;
                let result = extend_lease(conn, id, *attempt, *until).await;
                job.keep(result)
            }
            Op::Finish(job) => {
                let result = finish(conn, &job.request).await;
                job.keep(result)
            }
            Op::Release(job) => {
                let (claims, now) = &job.request;
                let result = release(conn, claims, *now).await;
                job.keep(result)
            }
            Op::Reclaim(job) => {
                let (now, all) = job.request;
                let result = reclaim(conn, now, all).await;
                job.keep(result)
            }
            Op::DelayConnection(job) => {
                let (connection, until) = &job.request;
                let result = delay_connection(conn, connection, *until).await;
                job.keep(result)
            }
            Op::Replay(job) => {
                let (id, now) = &job.request;
                let result = replay(conn, id, *now).await;
                job.keep(result)
            }
            Op::Cancel(job) => {
                let (id, now) = &job.request;
                let result = cancel(conn, id, *now).await;
                job.keep(result)
            }
        }
    }

    /// Answers the caller: see [`Job::answer`].
    fn answer(self, group_failure: Option<&StoreError>) {
        match self {
            Op::Enqueue(job) => job.answer(group_failure),
            Op::Claim(job) => job.answer(group_failure),
            Op::ExtendLease(job) => job.answer(group_failure),
            Op::Finish(job) => job.answer(group_failure),
            Op::Release(job) => job.answer(group_failure),
            Op::Reclaim(job) => job.answer(group_failure),
            Op::DelayConnection(job) => job.answer(group_failure),
            Op::Replay(job) => job.answer(group_failure),
            Op::Cancel(job) => job.answer(group_failure),
        }
    }
}

/// Why a group's transaction could not commit.
struct Broken {
    /// The operation whose failure took the transaction with it, if one did.
    culprit: Option<usize>,
    error: StoreError,
}

/// The task that owns the write connection.
struct Writer {
    conn: SqliteConnection,
    commits: Arc<AtomicU64>,
    /// Whether a group first runs as merged statements ([`Writer::try_merged`]); only tests
    /// turn it off, to run the contract op by op.
    merge: bool,
    /// Groups that failed merged and ran op by op.
    fallbacks: u64,
}

impl Writer {
    /// Commits groups until every sender is gone and the queue is empty, then closes the
    /// connection.
    async fn run(mut self, mut queue: mpsc::Receiver<Op>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        // `recv_many` waits for the first operation only, then takes whatever else is queued.
        while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
            self.commit_group(std::mem::take(&mut group)).await;
        }
        if let Err(err) = self.conn.close().await {
            tracing::warn!(error = %err, "closing the sqlite write connection failed");
        }
    }

    /// Runs `group` in one transaction and answers every operation in it.
    ///
    /// An operation that fails is rolled back to its savepoint and answers its own error. If its
    /// failure aborts the whole transaction (SQLite does that on a full disk or an I/O error),
    /// it answers its error and the rest of the group runs again, once, without it. A group
    /// that still cannot commit answers that failure to every operation in it.
    async fn commit_group(&mut self, mut group: Vec<Op>) {
        if self.merge {
            match self.try_merged(&mut group).await {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    for op in group {
                        op.answer(None);
                    }
                    return;
                }
                Err(err) => {
                    if let Err(err) = execute(&mut self.conn, "ROLLBACK").await {
                        tracing::debug!(error = %err, "rolling back a failed merged group");
                    }
                    self.fallbacks += 1;
                    tracing::debug!(error = %err, size = group.len(), "a merged group failed; running it op by op");
                }
            }
        }
        let mut retried = false;
        loop {
            match self.try_group(&mut group).await {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    for op in group {
                        op.answer(None);
                    }
                    return;
                }
                Err(broken) => {
                    // SQLite may have rolled back already (a full disk does); then this fails.
                    if let Err(err) = execute(&mut self.conn, "ROLLBACK").await {
                        tracing::debug!(error = %err, "rolling back a failed write group");
                    }
                    let retry = match broken.culprit {
                        Some(culprit) if !retried && group.len() > 1 => {
                            group.remove(culprit).answer(None);
                            true
                        }
                        _ => false,
                    };
                    if retry {
                        tracing::debug!(error = %broken.error, "one operation aborted its group; running the rest again");
                        retried = true;
                        continue;
                    }
                    tracing::warn!(
                        error = %broken.error,
                        size = group.len(),
                        "a write group failed; none of it was stored"
                    );
                    for op in group {
                        op.answer(Some(&broken.error));
                    }
                    return;
                }
            }
        }
    }

    /// The fast way to run `group`: in one transaction, every enqueue of the group as one
    /// `INSERT`, every result as one `UPDATE` and one journal `INSERT`, then the other
    /// operations one by one, and commit — a few statements a group instead of a few a
    /// callout, and no savepoints. Any failure (rare: a full disk, a duplicate id, a row that
    /// cannot be read) fails the whole attempt; the caller rolls back and runs the group op by
    /// op ([`Writer::try_group`]), which isolates the failure. Operations in one group are
    /// concurrent (none waits for another's answer), so running the enqueues, then the
    /// results, then the rest is one of the orders they could have run in.
    async fn try_merged(&mut self, group: &mut [Op]) -> Result<(), StoreError> {
        let conn = &mut self.conn;
        execute(conn, "BEGIN IMMEDIATE")
            .await
            .map_err(|err| store_error("begin a write transaction", err))?;

        let batches: Vec<&[NewCallout]> = group
            .iter()
            .filter_map(|op| match op {
                Op::Enqueue(job) => Some(job.request.as_slice()),
                _ => None,
            })
            .collect();
        if !batches.is_empty() {
            let answers = enqueue_merged(conn, &batches).await?;
            let jobs = group.iter_mut().filter_map(|op| match op {
                Op::Enqueue(job) => Some(job),
                _ => None,
            });
            for (job, answer) in jobs.zip(answers) {
                job.result = Some(Ok(answer));
            }
        }

        let batches: Vec<&[Finish]> = group
            .iter()
            .filter_map(|op| match op {
                Op::Finish(job) => Some(job.request.as_slice()),
                _ => None,
            })
            .collect();
        if !batches.is_empty() {
            let answers = finish_merged(conn, &batches).await?;
            let jobs = group.iter_mut().filter_map(|op| match op {
                Op::Finish(job) => Some(job),
                _ => None,
            });
            for (job, answer) in jobs.zip(answers) {
                job.result = Some(Ok(answer));
            }
        }

        for op in group.iter_mut() {
            if matches!(op, Op::Enqueue(_) | Op::Finish(_)) {
                continue;
            }
            if let Some(failure) = op.run(conn).await {
                return Err(failure);
            }
        }
        execute(conn, "COMMIT")
            .await
            .map_err(|err| store_error("commit a write group", err))
    }

    /// Runs every operation of `group` in one transaction, each under its own savepoint, and
    /// commits.
    async fn try_group(&mut self, group: &mut [Op]) -> Result<(), Broken> {
        let conn = &mut self.conn;
        let broken = |error| Broken {
            culprit: None,
            error,
        };
        execute(conn, "BEGIN IMMEDIATE")
            .await
            .map_err(|err| broken(store_error("begin a write transaction", err)))?;
        for (index, op) in group.iter_mut().enumerate() {
            execute(conn, "SAVEPOINT op")
                .await
                .map_err(|err| broken(store_error("open a savepoint", err)))?;
            match op.run(conn).await {
                None => execute(conn, "RELEASE op")
                    .await
                    .map_err(|err| broken(store_error("release a savepoint", err)))?,
                Some(failure) => {
                    let undone = match execute(conn, "ROLLBACK TO op").await {
                        Ok(()) => execute(conn, "RELEASE op").await,
                        Err(err) => Err(err),
                    };
                    if undone.is_err() {
                        // The failure took the transaction with it.
                        return Err(Broken {
                            culprit: Some(index),
                            error: failure,
                        });
                    }
                }
            }
        }
        execute(conn, "COMMIT")
            .await
            .map_err(|err| broken(store_error("commit a write group", err)))
    }
}

async fn execute(conn: &mut SqliteConnection, statement: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(statement).execute(conn).await.map(drop)
}

// ---------------------------------------------------------------------------------------------
// The operations, each inside the writer's transaction

async fn enqueue(
    conn: &mut SqliteConnection,
    batch: &[NewCallout],
) -> Result<Vec<Enqueued>, StoreError> {
    let mut done = Vec::with_capacity(batch.len());
    for item in batch {
        if let Some(key) = &item.idempotency_key
            && let Some(found) = find_key(conn, key, item).await?
        {
            done.push(found);
            continue;
        }
        let input = serde_json::to_string(&item.input).map_err(|err| {
            StoreError::Failed(format!("enqueue callout {}: input: {err}", item.id))
        })?;
        sqlx::query(sql::INSERT)
            .bind(&item.id)
            .bind(&item.function)
            .bind(&item.connection)
            .bind(input)
            .bind(&item.idempotency_key)
            .bind(&item.request_hash)
            .bind(item.now)
            .bind(item.run_at)
            .execute(&mut *conn)
            .await
            .map_err(|err| store_error(format_args!("enqueue callout {}", item.id), err))?;
        done.push(Enqueued::Created(created(item)));
    }
    Ok(done)
}

/// The enqueues of a whole group in one statement: see [`Writer::try_merged`]. Answers each
/// batch as [`enqueue`] would have, had the batches run one after the other in this order.
async fn enqueue_merged(
    conn: &mut SqliteConnection,
    batches: &[&[NewCallout]],
) -> Result<Vec<Vec<Enqueued>>, StoreError> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        function: &'a str,
        connection: &'a str,
        input: String,
        key: Option<&'a str>,
        hash: &'a str,
        now: Millis,
        run_at: Millis,
    }
    let items = || batches.iter().flat_map(|batch| batch.iter());
    let rows = items()
        .map(|item| {
            let input = serde_json::to_string(&item.input).map_err(|err| {
                StoreError::Failed(format!("enqueue callout {}: input: {err}", item.id))
            })?;
            Ok(Row {
                id: &item.id,
                function: &item.function,
                connection: &item.connection,
                input,
                key: item.idempotency_key.as_deref(),
                hash: &item.request_hash,
                now: item.now,
                run_at: item.run_at,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let total = rows.len();
    let rows = serde_json::to_string(&rows)
        .map_err(|err| StoreError::Failed(format!("enqueue {total} callouts: {err}")))?;
    let inserted: HashSet<String> = sqlx::query_scalar(sql::INSERT_MANY)
        .bind(rows)
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| store_error(format_args!("enqueue {total} callouts"), err))?
        .into_iter()
        .collect();
    let mut answers = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut done = Vec::with_capacity(batch.len());
        for item in batch.iter() {
            if inserted.contains(&item.id) {
                done.push(Enqueued::Created(created(item)));
                continue;
            }
            // Left out: its key was taken, before this group or earlier in it.
            let found = match &item.idempotency_key {
                Some(key) => find_key(conn, key, item).await?,
                None => None,
            };
            done.push(found.ok_or_else(|| {
                StoreError::Failed(format!("enqueue callout {}: it was not stored", item.id))
            })?);
        }
        answers.push(done);
    }
    Ok(answers)
}

/// The callout that holds idempotency key `key`, as the answer to enqueueing `item` with it.
async fn find_key(
    conn: &mut SqliteConnection,
    key: &str,
    item: &NewCallout,
) -> Result<Option<Enqueued>, StoreError> {
    let found = sqlx::query(sql::FIND_KEY)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| store_error("look up an idempotency key", err))?;
    let Some(row) = found else {
        return Ok(None);
    };
    let existing = decode_callout(&row)?;
    Ok(Some(if existing.request_hash == item.request_hash {
        Enqueued::Existing(existing)
    } else {
        Enqueued::Conflict {
            existing_id: existing.id,
        }
    }))
}

/// The callout as `item` inserts it.
fn created(item: &NewCallout) -> Callout {
    Callout {
        id: item.id.clone(),
        function: item.function.clone(),
        connection: item.connection.clone(),
        status: Status::Queued,
        input: item.input.clone(),
        attempts: 0,
        series_attempts: 0,
        series_started_at: item.run_at,
        created_at: item.now,
        updated_at: item.now,
        next_attempt_at: Some(item.run_at),
        idempotency_key: item.idempotency_key.clone(),
        request_hash: item.request_hash.clone(),
        result: None,
    }
}

// TODO(perf): ready callouts of skipped connections are walked past, so a long skip list
// over a large backlog of those connections costs in proportion to it.
async fn claim(
    conn: &mut SqliteConnection,
    now: Millis,
    limit: u32,
    lease: Duration,
    skip: &[String],
) -> Result<Vec<Claimed>, StoreError> {
    let skip = serde_json::to_string(skip)
        .map_err(|err| StoreError::Failed(format!("claim callouts: skip list: {err}")))?;
    let ids: Vec<String> = sqlx::query_scalar(sql::CLAIM_READY)
        .bind(now)
        .bind(skip)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| store_error("find ready callouts", err))?;
    let lease_expires_at = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = serde_json::to_string(&ids)
        .map_err(|err| StoreError::Failed(format!("claim callouts: ids: {err}")))?;
    let rows = sqlx::query(sql::CLAIM_MANY)
        .bind(list)
        .bind(now)
        .bind(lease_expires_at)
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| store_error("claim callouts", err))?;
    let mut claimed = rows
        .iter()
        .map(|row| {
            decode_callout(row).map(|callout| Claimed {
                attempt: callout.attempts,
                callout,
                lease_expires_at,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // In the order the ready index gave (RETURNING has none of its own).
    let order: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| (id.as_str(), index))
        .collect();
    claimed.sort_by_key(|claim| order.get(claim.callout.id.as_str()).copied());
    Ok(claimed)
}

async fn extend_lease(
    conn: &mut SqliteConnection,
    id: &str,
    attempt: u32,
    until: Millis,
) -> Result<Finished, StoreError> {
    let done = sqlx::query(sql::EXTEND_LEASE)
        .bind(id)
        .bind(i64::from(attempt))
        .bind(until)
        .execute(&mut *conn)
        .await
        .map_err(|err| store_error(format_args!("extend the lease of callout {id}"), err))?;
    Ok(if done.rows_affected() == 1 {
        Finished::Recorded
    } else {
        Finished::Fenced
    })
}

async fn finish(
    conn: &mut SqliteConnection,
    batch: &[Finish],
) -> Result<Vec<Finished>, StoreError> {
    check_finishes(batch)?;
    let mut done = Vec::with_capacity(batch.len());
    for item in batch {
        let (status, next_attempt_at) = after(&item.next);
        let result = serde_json::to_string(&item.result).map_err(|err| {
            StoreError::Failed(format!("finish callout {}: result: {err}", item.id))
        })?;
        let series: Option<i64> = sqlx::query_scalar(sql::FINISH)
            .bind(&item.id)
            .bind(i64::from(item.attempt))
            .bind(item.now)
            .bind(status.as_str())
            .bind(next_attempt_at)
            .bind(result)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|err| store_error(format_args!("finish callout {}", item.id), err))?;
        let Some(series) = series else {
            done.push(Finished::Fenced);
            continue;
        };
        let record = &item.record;
        sqlx::query(sql::JOURNAL)
            .bind(&item.id)
            .bind(i64::from(item.attempt))
            .bind(series)
            .bind(record.started_at)
            .bind(saturate(record.duration_ms))
            .bind(record.http_status.map(i64::from))
            .bind(&record.error_kind)
            .bind(&record.error_message)
            .bind(saturate(record.response_bytes))
            .execute(&mut *conn)
            .await
            .map_err(|err| {
                store_error(
                    format_args!("journal attempt {} of callout {}", item.attempt, item.id),
                    err,
                )
            })?;
        done.push(Finished::Recorded);
    }
    Ok(done)
}

/// Validates a batch of results before any of it is written.
fn check_finishes(batch: &[Finish]) -> Result<(), StoreError> {
    match batch.iter().find(|f| f.record.attempt != f.attempt) {
        Some(bad) => Err(StoreError::Failed(format!(
            "finish callout {}: the journal record is for attempt {} but the claim is attempt {}",
            bad.id, bad.record.attempt, bad.attempt
        ))),
        None => Ok(()),
    }
}

/// The status a result leaves its callout in, and when it runs next.
fn after(next: &Next) -> (Status, Option<Millis>) {
    match *next {
        Next::Succeeded => (Status::Succeeded, None),
        Next::Retry { at } => (Status::Retrying, Some(at)),
        Next::Failed => (Status::Failed, None),
    }
}

/// The results of a whole group in two statements (the callouts, then the journal): see
/// [`Writer::try_merged`]. Answers each batch as [`finish`] would have.
///
/// # Errors
/// Besides the database's, [`StoreError::Failed`] when a callout has two results in the
/// group: only running the batches one after the other says which one counts.
async fn finish_merged(
    conn: &mut SqliteConnection,
    batches: &[&[Finish]],
) -> Result<Vec<Vec<Finished>>, StoreError> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        attempt: u32,
        now: Millis,
        status: &'static str,
        next: Option<Millis>,
        result: String,
    }
    #[derive(serde::Serialize)]
    struct JournalRow<'a> {
        id: &'a str,
        attempt: u32,
        series: i64,
        started_at: Millis,
        duration_ms: i64,
        http_status: Option<u16>,
        error_kind: Option<&'a str>,
        error_message: Option<&'a str>,
        response_bytes: i64,
    }
    let items = || batches.iter().flat_map(|batch| batch.iter());
    let mut ids = HashSet::new();
    let mut rows = Vec::new();
    for batch in batches {
        check_finishes(batch)?;
    }
    for item in items() {
        if !ids.insert(item.id.as_str()) {
            return Err(StoreError::Failed(format!(
                "finish callout {}: two results in one group",
                item.id
            )));
        }
        let (status, next) = after(&item.next);
        let result = serde_json::to_string(&item.result).map_err(|err| {
            StoreError::Failed(format!("finish callout {}: result: {err}", item.id))
        })?;
        rows.push(Row {
            id: &item.id,
            attempt: item.attempt,
            now: item.now,
            status: status.as_str(),
            next,
            result,
        });
    }
    let total = rows.len();
    let rows = serde_json::to_string(&rows)
        .map_err(|err| StoreError::Failed(format!("finish {total} callouts: {err}")))?;
    let changed = sqlx::query(sql::FINISH_MANY)
        .bind(rows)
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| store_error(format_args!("finish {total} callouts"), err))?;
    let mut series = HashMap::with_capacity(changed.len());
    for row in &changed {
        let id: String = row
            .try_get("id")
            .map_err(|err| store_error(format_args!("finish {total} callouts"), err))?;
        let number: i64 = column(row, &id, "series")?;
        series.insert(id, number);
    }
    let journal: Vec<JournalRow> = items()
        .filter_map(|item| {
            let series = *series.get(&item.id)?;
            let record = &item.record;
            Some(JournalRow {
                id: &item.id,
                attempt: item.attempt,
                series,
                started_at: record.started_at,
                duration_ms: saturate(record.duration_ms),
                http_status: record.http_status,
                error_kind: record.error_kind.as_deref(),
                error_message: record.error_message.as_deref(),
                response_bytes: saturate(record.response_bytes),
            })
        })
        .collect();
    if !journal.is_empty() {
        let count = journal.len();
        let journal = serde_json::to_string(&journal)
            .map_err(|err| StoreError::Failed(format!("journal {count} attempts: {err}")))?;
        sqlx::query(sql::JOURNAL_MANY)
            .bind(journal)
            .execute(&mut *conn)
            .await
            .map_err(|err| store_error(format_args!("journal {count} attempts"), err))?;
    }
    Ok(batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|item| {
                    if series.contains_key(&item.id) {
                        Finished::Recorded
                    } else {
                        Finished::Fenced
                    }
                })
                .collect()
        })
        .collect())
}

async fn release(
    conn: &mut SqliteConnection,
    claims: &[(String, u32)],
    now: Millis,
) -> Result<(), StoreError> {
    for (id, attempt) in claims {
        sqlx::query(sql::RELEASE)
            .bind(id)
            .bind(i64::from(*attempt))
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(|err| store_error(format_args!("release callout {id}"), err))?;
    }
    Ok(())
}

async fn reclaim(conn: &mut SqliteConnection, now: Millis, all: bool) -> Result<u64, StoreError> {
    sqlx::query(sql::RECLAIM_JOURNAL)
        .bind(now)
        .bind(all)
        .bind(LEASE_EXPIRED_KIND)
        .bind(LEASE_EXPIRED_MESSAGE)
        .execute(&mut *conn)
        .await
        .map_err(|err| store_error("journal lost attempts", err))?;
    let done = sqlx::query(sql::RECLAIM)
        .bind(now)
        .bind(all)
        .execute(&mut *conn)
        .await
        .map_err(|err| store_error("reclaim callouts", err))?;
    Ok(done.rows_affected())
}

// TODO(perf): this rewrites every ready callout of the connection, once per delay; a table of
// connection pauses consulted by the claim would make it one row. The dispatcher can also pass
// a paused connection in `claim`'s `skip` instead.
async fn delay_connection(
    conn: &mut SqliteConnection,
    connection: &str,
    until: Millis,
) -> Result<u64, StoreError> {
    let done = sqlx::query(sql::DELAY_CONNECTION)
        .bind(connection)
        .bind(until)
        .execute(&mut *conn)
        .await
        .map_err(|err| store_error(format_args!("delay connection {connection}"), err))?;
    Ok(done.rows_affected())
}

async fn replay(
    conn: &mut SqliteConnection,
    id: &str,
    now: Millis,
) -> Result<Transition, StoreError> {
    transition(conn, "replay", sql::REPLAY, id, now).await
}

async fn cancel(
    conn: &mut SqliteConnection,
    id: &str,
    now: Millis,
) -> Result<Transition, StoreError> {
    transition(conn, "cancel", sql::CANCEL, id, now).await
}

/// Runs a guarded status change (`statement` takes `?1` id and `?2` now, and returns the row
/// only if the status allowed it); says why when it did not apply.
async fn transition(
    conn: &mut SqliteConnection,
    action: &str,
    statement: &'static str,
    id: &str,
    now: Millis,
) -> Result<Transition, StoreError> {
    let row = sqlx::query(statement)
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| store_error(format_args!("{action} callout {id}"), err))?;
    if let Some(row) = row {
        return decode_callout(&row).map(|c| Transition::Done(Box::new(c)));
    }
    let status: Option<String> = sqlx::query_scalar(sql::STATUS_OF)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| store_error(format_args!("{action} callout {id}"), err))?;
    match status {
        None => Ok(Transition::NotFound),
        Some(text) => Status::parse(&text)
            .map(Transition::WrongStatus)
            .ok_or_else(|| unreadable(id, "status", format_args!("unknown status {text:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Rows and errors

fn decode_callout(row: &SqliteRow) -> Result<Callout, StoreError> {
    let id: String = row
        .try_get("id")
        .map_err(|err| StoreError::Failed(format!("a callout row has no readable id: {err}")))?;
    let status: String = column(row, &id, "status")?;
    let status = Status::parse(&status)
        .ok_or_else(|| unreadable(&id, "status", format_args!("unknown status {status:?}")))?;
    let input: String = column(row, &id, "input")?;
    let result: Option<String> = column(row, &id, "result")?;
    Ok(Callout {
        function: column(row, &id, "function")?,
        connection: column(row, &id, "connection")?,
        status,
        input: json(&id, "input", &input)?,
        attempts: counter(row, &id, "attempts")?,
        series_attempts: counter(row, &id, "series_attempts")?,
        series_started_at: column(row, &id, "series_started_at")?,
        created_at: column(row, &id, "created_at")?,
        updated_at: column(row, &id, "updated_at")?,
        next_attempt_at: column(row, &id, "next_attempt_at")?,
        idempotency_key: column(row, &id, "idempotency_key")?,
        request_hash: column(row, &id, "request_hash")?,
        result: result.map(|text| json(&id, "result", &text)).transpose()?,
        id,
    })
}

fn decode_attempt(id: &str, row: &SqliteRow) -> Result<Attempt, StoreError> {
    let attempt = counter(row, id, "attempt")?;
    let what = format!("{id} attempt {attempt}");
    let http_status: Option<i64> = column(row, &what, "http_status")?;
    let http_status = http_status
        .map(|code| {
            u16::try_from(code).map_err(|_| {
                unreadable(
                    &what,
                    "http_status",
                    format_args!("{code} is no HTTP status"),
                )
            })
        })
        .transpose()?;
    Ok(Attempt {
        attempt,
        series: counter(row, &what, "series")?,
        started_at: column(row, &what, "started_at")?,
        duration_ms: amount(row, &what, "duration_ms")?,
        http_status,
        error_kind: column(row, &what, "error_kind")?,
        error_message: column(row, &what, "error_message")?,
        response_bytes: amount(row, &what, "response_bytes")?,
    })
}

/// One column of the callout (or attempt) `what`.
fn column<'r, T>(row: &'r SqliteRow, what: &str, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(|err| unreadable(what, name, err))
}

fn counter(row: &SqliteRow, what: &str, name: &str) -> Result<u32, StoreError> {
    let value: i64 = column(row, what, name)?;
    u32::try_from(value)
        .map_err(|_| unreadable(what, name, format_args!("{value} is out of range")))
}

fn amount(row: &SqliteRow, what: &str, name: &str) -> Result<u64, StoreError> {
    let value: i64 = column(row, what, name)?;
    u64::try_from(value).map_err(|_| unreadable(what, name, format_args!("{value} is negative")))
}

fn json(what: &str, name: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|err| unreadable(what, name, err))
}

fn unreadable(what: &str, name: &str, detail: impl Display) -> StoreError {
    StoreError::Failed(format!("callout {what} cannot be read: {name}: {detail}"))
}

/// SQLite integers are signed; the journal's sizes never come near the limit.
fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

// Primary result codes (the low byte of an extended code): https://sqlite.org/rescode.html
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;

/// Classifies a database failure: what may pass if the caller tries again later (a full disk,
/// a locked database, an I/O error) is [`StoreError::Unavailable`], a closed connection
/// [`StoreError::Closed`], anything else [`StoreError::Failed`].
fn store_error(context: impl Display, err: sqlx::Error) -> StoreError {
    let unavailable = match &err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| {
                matches!(
                    code & 0xff,
                    SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL
                )
            }),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => return StoreError::Closed,
        _ => false,
    };
    let message = match &err {
        // Without sqlx's "error returned from database" prefix: "(code: 13) database or disk
        // is full".
        sqlx::Error::Database(db) => format!("{context}: {db}"),
        other => format!("{context}: {other}"),
    };
    if unavailable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Failed(message)
    }
}

fn migrate_error(url: &str, err: sqlx::migrate::MigrateError) -> StoreError {
    match err {
        sqlx::migrate::MigrateError::Execute(err)
        | sqlx::migrate::MigrateError::ExecuteMigration(err, _) => {
            store_error(format_args!("cannot migrate {url:?}"), err)
        }
        other => StoreError::Failed(format!("cannot migrate {url:?}: {other}")),
    }
}

/// The same error again, for each operation of a failed group.
fn copy(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        StoreError::Failed(message) => StoreError::Failed(message.clone()),
        StoreError::Closed => StoreError::Closed,
    }
}
