//! The SQLite store: the embedded, single-node [`Store`], one database file in WAL mode.
//!
//! It owns the file's schema (`migrations/sqlite`, run by [`SqliteStore::open`]), one write
//! connection and a small pool of read connections. Its invariants:
//!
//! - **One writer, group commit.** Every write goes to a single writer thread that owns the
//!   write connection ([`writer`]). The writer takes every operation queued at that moment (up
//!   to [`MAX_GROUP`]) and runs them in one transaction — one fsync (`synchronous=FULL`) for
//!   the whole group — and answers each caller only after the commit. So when a write returns
//!   `Ok`, it is on disk; nothing waits on a timer to gather a group.
//! - **A few statements a group, not a few a callout.** A group runs merged: all its enqueues
//!   as one `INSERT`, all its results as one `UPDATE` and one journal `INSERT`, each claim as
//!   one `UPDATE`. The writer is synchronous on its own thread (rusqlite, over the same SQLite
//!   library as sqlx), so statements cost no hand-off between threads.
//! - **Operations are isolated inside a group.** If a merged group fails, it runs again op by
//!   op, each under its own savepoint: one that fails is rolled back alone and answers its own
//!   error; the others commit. If a failure aborts the whole transaction (SQLite does that on a
//!   full disk or an I/O error), that operation answers its error and the rest of the group
//!   runs again, once, without it. Only a failed commit or a second abort fails a group: then
//!   every operation in it answers that failure, and none of it is stored.
//! - **Readers never block the writer** (WAL): `get`, `attempts`, `list`, `counts`, `state`,
//!   `file` and `expired_files` read through the pool, which is `query_only`, and see every
//!   committed write.
//! - **Costs do not grow with the backlog.** Claims walk a partial index of ready callouts,
//!   results and lease changes go by primary key, reclaim walks a partial index of running
//!   callouts; the sweep of expired files walks an index by expiry. Each statement lives in its
//!   own file under `sqlite/sql/`.
//! - **Results are fenced.** A claim increments `attempts`; `finish` and `extend_lease` change a
//!   callout only while it is `running` under that same attempt number.
//! - **Nothing from the database panics.** A row that cannot be decoded is a
//!   [`StoreError::Failed`] naming the callout; a full disk, a busy database and I/O errors are
//!   [`StoreError::Unavailable`]; a writer that is gone makes calls return
//!   [`StoreError::Closed`].

use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use self::writer::{ClaimRequest, Job, Op, Reply, Writer};
use super::{
    Attempt, Callout, Claimed, Enqueued, FileRecord, Finish, Finished, ListQuery, Millis,
    NewCallout, Status, Store, StoreError, Transition,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod writer;

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
    pub const READY: &str = include_str!("sqlite/sql/ready.sql");
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
    pub const STATE: &str = include_str!("sqlite/sql/state.sql");
    pub const SET_STATE: &str = include_str!("sqlite/sql/set_state.sql");
    pub const INSERT_FILE: &str = include_str!("sqlite/sql/insert_file.sql");
    pub const FILE: &str = include_str!("sqlite/sql/file.sql");
    pub const EXPIRED_FILES: &str = include_str!("sqlite/sql/expired_files.sql");
    pub const DELETE_FILE: &str = include_str!("sqlite/sql/delete_file.sql");
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite [`Store`]. Share it behind an `Arc`; dropping the last handle lets the writer
/// finish what was queued and close, [`SqliteStore::close`] also waits for that.
#[derive(Debug)]
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    readers: SqlitePool,
    commits: Arc<AtomicU64>,
    /// The writer's thread; it ends when `ops` closes and the queue is empty.
    writer: Option<std::thread::JoinHandle<()>>,
    /// An exclusive lock on `PATH.lock`, held while the store is open: one engine per file
    /// (start-up reclaims every running callout, which is only right for the sole user).
    _lock: std::fs::File,
}

/// Takes the exclusive lock that makes an engine the only user of the database at `db`.
fn lock_file(url: &str, db: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = lock_path(db);
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

/// `PATH.lock` beside the database's real file: every path to the same file — through a
/// symbolic link, which SQLite follows too (its `-wal` is the real file's), or `..` — takes the
/// same lock. A file not created yet is named in its real folder.
fn lock_path(db: &std::path::Path) -> std::path::PathBuf {
    let real = std::fs::canonicalize(db).ok().or_else(|| {
        let folder = db.parent().filter(|p| !p.as_os_str().is_empty());
        let folder = std::fs::canonicalize(folder.unwrap_or(std::path::Path::new("."))).ok()?;
        Some(folder.join(db.file_name()?))
    });
    let mut path = real.unwrap_or_else(|| db.to_path_buf()).into_os_string();
    path.push(".lock");
    std::path::PathBuf::from(path)
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` — `sqlite://PATH` or
    /// `sqlite:PATH` — in WAL mode with `synchronous=FULL`, foreign keys on and a 5 s busy
    /// timeout, brings its schema up to date, and starts the writer thread.
    ///
    /// Must be called inside a Tokio runtime (the readers are sqlx's).
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

        // Create the file and bring its schema up to date with sqlx's migrator, then hand the
        // file to the writer thread.
        let mut migrating = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await
            .map_err(|err| store_error(format_args!("cannot open {url:?}"), err))?;
        if let Err(err) = MIGRATOR.run(&mut migrating).await {
            let err = migrate_error(url, err);
            // The migration error is the one worth reporting; closing is best effort.
            let _ = migrating.close().await;
            return Err(err);
        }
        migrating
            .close()
            .await
            .map_err(|err| store_error(format_args!("cannot open {url:?}"), err))?;
        let commits = Arc::new(AtomicU64::new(0));
        let path = base.get_filename().to_owned();
        let counter = Arc::clone(&commits);
        let writer =
            tokio::task::spawn_blocking(move || Writer::open(&path, BUSY_TIMEOUT, counter, merge))
                .await
                .map_err(|err| {
                    StoreError::Failed(format!("cannot open {url:?} for writing: {err}"))
                })??;

        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .connect_with(base.pragma("query_only", "ON"))
            .await
            .map_err(|err| store_error(format_args!("cannot open {url:?} for reading"), err))?;

        let (ops, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || writer.run(queue))
            .map_err(|err| {
                StoreError::Failed(format!("cannot start the sqlite writer thread: {err}"))
            })?;
        Ok(SqliteStore {
            ops,
            readers,
            commits,
            writer: Some(writer),
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
    /// [`StoreError::Failed`] if the writer thread had panicked.
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
        let joined = match writer {
            Some(writer) => tokio::task::spawn_blocking(move || writer.join().is_ok())
                .await
                .unwrap_or(false),
            None => true,
        };
        readers.close().await;
        if joined {
            Ok(())
        } else {
            Err(StoreError::Failed(
                "the sqlite writer thread failed".to_owned(),
            ))
        }
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
/// `release`, `reclaim`, `delay_connection`, `replay`, `cancel`, `set_state`, `insert_file`,
/// `delete_file`): dropping the future before the writer took the operation does nothing;
/// after that, the operation still runs and commits, and only its answer is lost. A caller
/// that gives up on a call cannot know which happened — a lost `claim` answer leaves callouts
/// running until their lease expires and `reclaim` takes them back. The read methods are
/// cancel safe.
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

    /// # Errors
    /// As [`Store::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(sql::STATE)
            .bind(key)
            .fetch_optional(&self.readers)
            .await
            .map_err(|err| store_error(format_args!("read engine state {key}"), err))?;
        row.map(|row| {
            row.try_get::<String, _>("value")
                .map_err(|err| store_error(format_args!("read engine state {key}"), err))
        })
        .transpose()
    }

    /// # Errors
    /// As [`Store::claim`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn set_state(&self, key: &str, value: &str, now: Millis) -> Result<(), StoreError> {
        let request = (key.to_owned(), value.to_owned(), now);
        self.write(|reply| Op::SetState(Job::new(request, reply)))
            .await
    }

    /// # Errors
    /// [`StoreError::Failed`] if a file with the same id exists (nothing is changed then);
    /// otherwise as [`Store::claim`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn insert_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        let file = file.clone();
        self.write(|reply| Op::InsertFile(Job::new(file, reply)))
            .await
    }

    /// # Errors
    /// [`StoreError::Failed`] if the row cannot be decoded; otherwise as [`Store::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn file(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        let row = sqlx::query(sql::FILE)
            .bind(id)
            .fetch_optional(&self.readers)
            .await
            .map_err(|err| store_error(format_args!("read file {id}"), err))?;
        row.as_ref().map(decode_file).transpose()
    }

    /// Walks `files_by_expiry` in order: the cost is the rows returned, not the table. Ties on
    /// `expires_at` come in id order; a `limit` of 0 returns none.
    ///
    /// # Errors
    /// As [`Store::file`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn expired_files(&self, now: Millis, limit: u32) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(sql::EXPIRED_FILES)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(|err| store_error("read expired files", err))?;
        rows.iter().map(decode_file).collect()
    }

    /// # Errors
    /// As [`Store::claim`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not leave the write done: once the writer has taken it,
    /// it commits with nobody to answer.
    async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(|reply| Op::DeleteFile(Job::new(id, reply)))
            .await
    }

    /// One indexed read of at most one row.
    ///
    /// # Errors
    /// As [`Store::get`].
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    async fn ready(&self) -> Result<(), StoreError> {
        sqlx::query(sql::READY)
            .fetch_optional(&self.readers)
            .await
            .map(drop)
            .map_err(|err| store_error("read the queue", err))
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
// Rows and errors

/// A row of either driver: the readers' (sqlx) or the writer's (rusqlite), read by column
/// name. A NULL is `None`; a value of another type is an error.
trait Columns {
    fn text(&self, name: &str) -> Result<Option<String>, String>;
    fn integer(&self, name: &str) -> Result<Option<i64>, String>;
}

impl Columns for SqliteRow {
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        self.try_get(name).map_err(|err| err.to_string())
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, String> {
        self.try_get(name).map_err(|err| err.to_string())
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        self.get(name).map_err(|err| err.to_string())
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, String> {
        self.get(name).map_err(|err| err.to_string())
    }
}

fn decode_callout(row: &impl Columns) -> Result<Callout, StoreError> {
    let id = row
        .text("id")
        .ok()
        .flatten()
        .ok_or_else(|| StoreError::Failed("a callout row has no readable id".to_owned()))?;
    let status = text(row, &id, "status")?;
    let status = Status::parse(&status)
        .ok_or_else(|| unreadable(&id, "status", format_args!("unknown status {status:?}")))?;
    let input = text(row, &id, "input")?;
    let result = maybe_text(row, &id, "result")?;
    Ok(Callout {
        function: text(row, &id, "function")?,
        connection: text(row, &id, "connection")?,
        status,
        input: json(&id, "input", &input)?,
        attempts: counter(row, &id, "attempts")?,
        series_attempts: counter(row, &id, "series_attempts")?,
        series_started_at: integer(row, &id, "series_started_at")?,
        created_at: integer(row, &id, "created_at")?,
        updated_at: integer(row, &id, "updated_at")?,
        next_attempt_at: maybe_integer(row, &id, "next_attempt_at")?,
        idempotency_key: maybe_text(row, &id, "idempotency_key")?,
        request_hash: text(row, &id, "request_hash")?,
        result: result.map(|text| json(&id, "result", &text)).transpose()?,
        id,
    })
}

fn decode_attempt(id: &str, row: &impl Columns) -> Result<Attempt, StoreError> {
    let attempt = counter(row, id, "attempt")?;
    let what = format!("{id} attempt {attempt}");
    let http_status = maybe_integer(row, &what, "http_status")?
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
        route: counter(row, &what, "route")?,
        connection: text(row, &what, "connection")?,
        series: counter(row, &what, "series")?,
        started_at: integer(row, &what, "started_at")?,
        duration_ms: amount(row, &what, "duration_ms")?,
        http_status,
        error_kind: maybe_text(row, &what, "error_kind")?,
        error_message: maybe_text(row, &what, "error_message")?,
        response_bytes: amount(row, &what, "response_bytes")?,
    })
}

fn decode_file(row: &impl Columns) -> Result<FileRecord, StoreError> {
    let id = row
        .text("id")
        .ok()
        .flatten()
        .ok_or_else(|| StoreError::Failed("a file row has no readable id".to_owned()))?;
    let bad = |name: &str, detail: &dyn Display| {
        StoreError::Failed(format!("file {id} cannot be read: {name}: {detail}"))
    };
    let maybe_text = |name: &str| row.text(name).map_err(|err| bad(name, &err));
    let text = |name: &str| maybe_text(name)?.ok_or_else(|| bad(name, &"it is NULL"));
    let integer = |name: &str| {
        row.integer(name)
            .map_err(|err| bad(name, &err))?
            .ok_or_else(|| bad(name, &"it is NULL"))
    };
    let size = integer("size")?;
    Ok(FileRecord {
        connection: text("connection")?,
        bucket: text("bucket")?,
        key: text("key")?,
        size: u64::try_from(size).map_err(|_| bad("size", &format_args!("{size} is negative")))?,
        sha256: text("sha256")?,
        content_type: text("content_type")?,
        name: maybe_text("name")?,
        origin: text("origin")?,
        created_at: integer("created_at")?,
        expires_at: integer("expires_at")?,
        id,
    })
}

/// A text column of the callout (or attempt) `what` that may be NULL.
fn maybe_text(row: &impl Columns, what: &str, name: &str) -> Result<Option<String>, StoreError> {
    row.text(name).map_err(|err| unreadable(what, name, err))
}

fn text(row: &impl Columns, what: &str, name: &str) -> Result<String, StoreError> {
    maybe_text(row, what, name)?.ok_or_else(|| unreadable(what, name, "it is NULL"))
}

/// An integer column of the callout (or attempt) `what` that may be NULL.
fn maybe_integer(row: &impl Columns, what: &str, name: &str) -> Result<Option<i64>, StoreError> {
    row.integer(name).map_err(|err| unreadable(what, name, err))
}

fn integer(row: &impl Columns, what: &str, name: &str) -> Result<i64, StoreError> {
    maybe_integer(row, what, name)?.ok_or_else(|| unreadable(what, name, "it is NULL"))
}

fn counter(row: &impl Columns, what: &str, name: &str) -> Result<u32, StoreError> {
    let value = integer(row, what, name)?;
    u32::try_from(value)
        .map_err(|_| unreadable(what, name, format_args!("{value} is out of range")))
}

fn amount(row: &impl Columns, what: &str, name: &str) -> Result<u64, StoreError> {
    let value = integer(row, what, name)?;
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

/// Whether a SQLite result code (primary or extended) means "try again later".
fn unavailable_code(code: i64) -> bool {
    matches!(
        code & 0xff,
        SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL
    )
}

/// Classifies a database failure: what may pass if the caller tries again later (a full disk,
/// a locked database, an I/O error) is [`StoreError::Unavailable`], a closed connection
/// [`StoreError::Closed`], anything else [`StoreError::Failed`].
fn store_error(context: impl Display, err: sqlx::Error) -> StoreError {
    let unavailable = match &err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(unavailable_code),
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
