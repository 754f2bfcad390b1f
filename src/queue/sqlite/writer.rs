//! The writer: one OS thread that owns the write connection and commits every write in groups.
//!
//! It runs synchronously on its own thread (rusqlite over the same SQLite library sqlx uses),
//! so a group costs the statements it runs and one fsync, with no hand-off between threads per
//! statement: callers hand an operation over a channel and wait for its answer, and that is
//! the only crossing. See the module above for the invariants.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    LEASE_EXPIRED_KIND, LEASE_EXPIRED_MESSAGE, MAX_GROUP, copy, decode_callout, saturate, sql,
    unreadable,
};
use crate::queue::{
    Callout, Claimed, Enqueued, FileRecord, Finish, Finished, Millis, NewCallout, Next, Status,
    StoreError, Transition,
};

/// Where the writer sends one operation's answer.
pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write waiting for its group's commit: the request, where to answer, and the result of
/// running it in the current transaction (kept until the commit decides its fate).
#[derive(Debug)]
pub(super) struct Job<R, T> {
    pub(super) request: R,
    reply: Reply<T>,
    result: Option<Result<T, StoreError>>,
}

impl<R, T> Job<R, T> {
    pub(super) fn new(request: R, reply: Reply<T>) -> Self {
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

/// A write, as handed to the writer.
#[derive(Debug)]
pub(super) enum Op {
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
    /// key, value, now
    SetState(Job<(String, String, Millis), ()>),
    InsertFile(Job<FileRecord, ()>),
    /// id
    DeleteFile(Job<String, bool>),
}

#[derive(Debug)]
pub(super) struct ClaimRequest {
    pub(super) now: Millis,
    pub(super) limit: u32,
    pub(super) lease: Duration,
    pub(super) skip: Vec<String>,
}

impl Op {
    /// Runs the operation in the open transaction and keeps its result; returns a copy of its
    /// error if it failed.
    fn run(&mut self, conn: &Connection) -> Option<StoreError> {
        match self {
            Op::Enqueue(job) => {
                let result = enqueue(conn, &job.request);
                job.keep(result)
            }
            Op::Claim(job) => {
                let ClaimRequest {
                    now,
                    limit,
                    lease,
                    skip,
                } = &job.request;
                let result = claim(conn, *now, *limit, *lease, skip);
                job.keep(result)
            }
            Op::ExtendLease(job) => {
                let (id, attempt, until) = &job.request;
                let result = extend_lease(conn, id, *attempt, *until);
                job.keep(result)
            }
            Op::Finish(job) => {
                let result = finish(conn, &job.request);
                job.keep(result)
            }
            Op::Release(job) => {
                let (claims, now) = &job.request;
                let result = release(conn, claims, *now);
                job.keep(result)
            }
            Op::Reclaim(job) => {
                let (now, all) = job.request;
                let result = reclaim(conn, now, all);
                job.keep(result)
            }
            Op::DelayConnection(job) => {
                let (connection, until) = &job.request;
                let result = delay_connection(conn, connection, *until);
                job.keep(result)
            }
            Op::Replay(job) => {
                let (id, now) = &job.request;
                let result = transition(conn, "replay", sql::REPLAY, id, *now);
                job.keep(result)
            }
            Op::Cancel(job) => {
                let (id, now) = &job.request;
                let result = transition(conn, "cancel", sql::CANCEL, id, *now);
                job.keep(result)
            }
            Op::SetState(job) => {
                let (key, value, now) = &job.request;
                let result = set_state(conn, key, value, *now);
                job.keep(result)
            }
            Op::InsertFile(job) => {
                let result = insert_file(conn, &job.request);
                job.keep(result)
            }
            Op::DeleteFile(job) => {
                let result = delete_file(conn, &job.request);
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
            Op::SetState(job) => job.answer(group_failure),
            Op::InsertFile(job) => job.answer(group_failure),
            Op::DeleteFile(job) => job.answer(group_failure),
        }
    }
}

/// Why a group's transaction could not commit.
struct Broken {
    /// The operation whose failure took the transaction with it, if one did.
    culprit: Option<usize>,
    error: StoreError,
}

/// The owner of the write connection; [`Writer::run`] is its thread's body.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) commits: Arc<AtomicU64>,
    /// Whether a group first runs as merged statements ([`Writer::try_merged`]); only tests
    /// turn it off, to run the contract op by op.
    pub(super) merge: bool,
    /// Groups that failed merged and ran op by op.
    pub(super) fallbacks: u64,
}

impl Writer {
    /// Opens the write connection to the database file at `path` (created and migrated
    /// already): WAL, `synchronous=FULL`, foreign keys on, the busy timeout.
    ///
    /// # Errors
    /// As the database's, classified like every other store failure.
    pub(super) fn open(
        path: &std::path::Path,
        busy_timeout: Duration,
        commits: Arc<AtomicU64>,
        merge: bool,
    ) -> Result<Writer, StoreError> {
        let context = || format!("cannot open {} for writing", path.display());
        let conn = Connection::open(path).map_err(|err| store_error(context(), err))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|err| store_error(context(), err))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|err| store_error(context(), err))?;
        // Every statement of the writer stays prepared.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Writer {
            conn,
            commits,
            merge,
            fallbacks: 0,
        })
    }

    /// Commits groups until every sender is gone and the queue is empty, then closes the
    /// connection. Blocks: run it on a thread of its own.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Op>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        // Wait for the first operation only, then take whatever else is queued.
        while let Some(first) = queue.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.commit_group(std::mem::take(&mut group));
        }
        if let Err((_, err)) = self.conn.close() {
            tracing::warn!(error = %err, "closing the sqlite write connection failed");
        }
    }

    /// Runs `group` in one transaction and answers every operation in it.
    ///
    /// The group runs merged first ([`Writer::try_merged`]). If that fails, it runs again op by
    /// op: an operation that fails is rolled back to its savepoint and answers its own error.
    /// If its failure aborts the whole transaction (SQLite does that on a full disk or an I/O
    /// error), it answers its error and the rest of the group runs again, once, without it. A
    /// group that still cannot commit answers that failure to every operation in it.
    ///
    /// A transaction that cannot begin (the database locked by another process past the busy
    /// timeout) fails the whole group at once: no operation ran, and running them op by op
    /// would only wait out the busy timeout a second time.
    pub(super) fn commit_group(&mut self, mut group: Vec<Op>) {
        if self.merge {
            if let Err(err) = execute(&self.conn, "BEGIN IMMEDIATE") {
                // Should a transaction be left open (a failed ROLLBACK), end it, or no later
                // group could begin.
                self.rollback();
                let err = store_error("begin a write transaction", err);
                tracing::warn!(
                    error = %err,
                    size = group.len(),
                    "a write group failed; none of it was stored"
                );
                for op in group {
                    op.answer(Some(&err));
                }
                return;
            }
            match self.try_merged(&mut group) {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    for op in group {
                        op.answer(None);
                    }
                    return;
                }
                Err(err) => {
                    self.rollback();
                    self.fallbacks += 1;
                    tracing::debug!(error = %err, size = group.len(), "a merged group failed; running it op by op");
                }
            }
        }
        let mut retried = false;
        loop {
            match self.try_group(&mut group) {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    for op in group {
                        op.answer(None);
                    }
                    return;
                }
                Err(broken) => {
                    self.rollback();
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

    /// Rolls back the open transaction, if SQLite has not already (a full disk does).
    fn rollback(&self) {
        if !self.conn.is_autocommit()
            && let Err(err) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::debug!(error = %err, "rolling back a failed write group");
        }
    }

    /// The fast way to run `group`, in the transaction [`Writer::commit_group`] began: every
    /// enqueue of the group as one `INSERT`, every result as one `UPDATE` and one journal
    /// `INSERT`, then the other operations one by one, and commit — a few statements a group
    /// instead of a few a callout, and no savepoints. Any failure (rare: a full disk, a
    /// duplicate id, a row that cannot be read) fails the whole attempt; the caller rolls back
    /// and runs the group op by op ([`Writer::try_group`]), which isolates the failure.
    /// Operations in one group are concurrent (none waits for another's answer), so running
    /// the enqueues, then the results, then the rest is one of the orders they could have run
    /// in.
    fn try_merged(&mut self, group: &mut [Op]) -> Result<(), StoreError> {
        let conn = &self.conn;
        let batches: Vec<&[NewCallout]> = group
            .iter()
            .filter_map(|op| match op {
                Op::Enqueue(job) => Some(job.request.as_slice()),
                _ => None,
            })
            .collect();
        if !batches.is_empty() {
            let answers = enqueue_merged(conn, &batches)?;
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
            let answers = finish_merged(conn, &batches)?;
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
            if let Some(failure) = op.run(conn) {
                return Err(failure);
            }
        }
        execute(conn, "COMMIT").map_err(|err| store_error("commit a write group", err))
    }

    /// Runs every operation of `group` in one transaction, each under its own savepoint, and
    /// commits.
    fn try_group(&mut self, group: &mut [Op]) -> Result<(), Broken> {
        let conn = &self.conn;
        let broken = |error| Broken {
            culprit: None,
            error,
        };
        execute(conn, "BEGIN IMMEDIATE")
            .map_err(|err| broken(store_error("begin a write transaction", err)))?;
        for (index, op) in group.iter_mut().enumerate() {
            execute(conn, "SAVEPOINT op")
                .map_err(|err| broken(store_error("open a savepoint", err)))?;
            match op.run(conn) {
                None => execute(conn, "RELEASE op")
                    .map_err(|err| broken(store_error("release a savepoint", err)))?,
                Some(failure) => {
                    let undone =
                        execute(conn, "ROLLBACK TO op").and_then(|()| execute(conn, "RELEASE op"));
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
        execute(conn, "COMMIT").map_err(|err| broken(store_error("commit a write group", err)))
    }
}

/// Runs a statement without parameters or rows.
fn execute(conn: &Connection, statement: &'static str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(drop)
}

// ---------------------------------------------------------------------------------------------
// The operations, each inside the writer's transaction

fn enqueue(conn: &Connection, batch: &[NewCallout]) -> Result<Vec<Enqueued>, StoreError> {
    let mut done = Vec::with_capacity(batch.len());
    for item in batch {
        if let Some(key) = &item.idempotency_key
            && let Some(found) = find_key(conn, key, item)?
        {
            done.push(found);
            continue;
        }
        let input = serde_json::to_string(&item.input).map_err(|err| {
            StoreError::Failed(format!("enqueue callout {}: input: {err}", item.id))
        })?;
        conn.prepare_cached(sql::INSERT)
            .and_then(|mut insert| {
                insert.execute(params![
                    item.id,
                    item.function,
                    item.connection,
                    input,
                    item.idempotency_key,
                    item.request_hash,
                    item.now,
                    item.run_at
                ])
            })
            .map_err(|err| store_error(format_args!("enqueue callout {}", item.id), err))?;
        done.push(Enqueued::Created(created(item)));
    }
    Ok(done)
}

/// The enqueues of a whole group in one statement: see [`Writer::try_merged`]. Answers each
/// batch as [`enqueue`] would have, had the batches run one after the other in this order.
fn enqueue_merged(
    conn: &Connection,
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
    let rows = batches
        .iter()
        .flat_map(|batch| batch.iter())
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
    let inserted: HashSet<String> = conn
        .prepare_cached(sql::INSERT_MANY)
        .and_then(|mut insert| {
            insert
                .query_map([rows], |row| row.get::<_, String>(0))?
                .collect()
        })
        .map_err(|err| store_error(format_args!("enqueue {total} callouts"), err))?;
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
                Some(key) => find_key(conn, key, item)?,
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
fn find_key(
    conn: &Connection,
    key: &str,
    item: &NewCallout,
) -> Result<Option<Enqueued>, StoreError> {
    let context = "look up an idempotency key";
    let existing = conn
        .prepare_cached(sql::FIND_KEY)
        .and_then(|mut find| {
            find.query_row([key], |row| Ok(decode_callout(row)))
                .optional()
        })
        .map_err(|err| store_error(context, err))?
        .transpose()?;
    Ok(existing.map(|existing| {
        if existing.request_hash == item.request_hash {
            Enqueued::Existing(existing)
        } else {
            Enqueued::Conflict {
                existing_id: existing.id,
            }
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
fn claim(
    conn: &Connection,
    now: Millis,
    limit: u32,
    lease: Duration,
    skip: &[String],
) -> Result<Vec<Claimed>, StoreError> {
    let skip = serde_json::to_string(skip)
        .map_err(|err| StoreError::Failed(format!("claim callouts: skip list: {err}")))?;
    let ids: Vec<String> = conn
        .prepare_cached(sql::CLAIM_READY)
        .and_then(|mut ready| {
            ready
                .query_map(params![now, skip, i64::from(limit)], |row| row.get(0))?
                .collect()
        })
        .map_err(|err| store_error("find ready callouts", err))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let lease_expires_at = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
    let list = serde_json::to_string(&ids)
        .map_err(|err| StoreError::Failed(format!("claim callouts: ids: {err}")))?;
    let mut claimed = conn
        .prepare_cached(sql::CLAIM_MANY)
        .and_then(|mut claim| {
            claim
                .query_map(params![list, now, lease_expires_at], |row| {
                    Ok(decode_callout(row))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|err| store_error("claim callouts", err))?
        .into_iter()
        .map(|callout| {
            callout.map(|callout| Claimed {
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

fn extend_lease(
    conn: &Connection,
    id: &str,
    attempt: u32,
    until: Millis,
) -> Result<Finished, StoreError> {
    let changed = conn
        .prepare_cached(sql::EXTEND_LEASE)
        .and_then(|mut extend| extend.execute(params![id, i64::from(attempt), until]))
        .map_err(|err| store_error(format_args!("extend the lease of callout {id}"), err))?;
    Ok(if changed == 1 {
        Finished::Recorded
    } else {
        Finished::Fenced
    })
}

fn finish(conn: &Connection, batch: &[Finish]) -> Result<Vec<Finished>, StoreError> {
    check_finishes(batch)?;
    let mut done = Vec::with_capacity(batch.len());
    for item in batch {
        let (status, next_attempt_at) = after(&item.next);
        let result = serde_json::to_string(&item.result).map_err(|err| {
            StoreError::Failed(format!("finish callout {}: result: {err}", item.id))
        })?;
        let series: Option<i64> = conn
            .prepare_cached(sql::FINISH)
            .and_then(|mut finish| {
                finish
                    .query_row(
                        params![
                            item.id,
                            i64::from(item.attempt),
                            item.now,
                            status.as_str(),
                            next_attempt_at,
                            result
                        ],
                        |row| row.get(0),
                    )
                    .optional()
            })
            .map_err(|err| store_error(format_args!("finish callout {}", item.id), err))?;
        let Some(series) = series else {
            done.push(Finished::Fenced);
            continue;
        };
        for record in item.earlier.iter().chain([&item.record]) {
            conn.prepare_cached(sql::JOURNAL)
                .and_then(|mut journal| {
                    journal.execute(params![
                        item.id,
                        i64::from(item.attempt),
                        series,
                        record.started_at,
                        saturate(record.duration_ms),
                        record.http_status.map(i64::from),
                        record.error_kind,
                        record.error_message,
                        saturate(record.response_bytes),
                        i64::from(record.route),
                        record.connection
                    ])
                })
                .map_err(|err| {
                    store_error(
                        format_args!("journal attempt {} of callout {}", item.attempt, item.id),
                        err,
                    )
                })?;
        }
        done.push(Finished::Recorded);
    }
    Ok(done)
}

/// Validates a batch of results before any of it is written.
fn check_finishes(batch: &[Finish]) -> Result<(), StoreError> {
    for item in batch {
        if let Some(bad) = item
            .earlier
            .iter()
            .chain([&item.record])
            .find(|r| r.attempt != item.attempt)
        {
            return Err(StoreError::Failed(format!(
                "finish callout {}: the journal record is for attempt {} but the claim is attempt {}",
                item.id, bad.attempt, item.attempt
            )));
        }
        let mut routes = item.earlier.iter().chain([&item.record]).map(|r| r.route);
        if let Some(first) = routes.next()
            && routes
                .try_fold(first, |before, r| (r > before).then_some(r))
                .is_none()
        {
            return Err(StoreError::Failed(format!(
                "finish callout {}: the tries of attempt {} are not in route order",
                item.id, item.attempt
            )));
        }
    }
    Ok(())
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
fn finish_merged(
    conn: &Connection,
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
        route: u32,
        connection: &'a str,
        series: i64,
        started_at: Millis,
        duration_ms: i64,
        http_status: Option<u16>,
        error_kind: Option<&'a str>,
        error_message: Option<&'a str>,
        response_bytes: i64,
    }
    let items = || batches.iter().flat_map(|batch| batch.iter());
    for batch in batches {
        check_finishes(batch)?;
    }
    let mut ids = HashSet::new();
    let mut rows = Vec::new();
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
    let series: HashMap<String, i64> = conn
        .prepare_cached(sql::FINISH_MANY)
        .and_then(|mut finish| {
            finish
                .query_map([rows], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(|err| store_error(format_args!("finish {total} callouts"), err))?;
    let journal: Vec<JournalRow> = items()
        .filter_map(|item| Some((item, *series.get(&item.id)?)))
        .flat_map(|(item, series)| {
            item.earlier
                .iter()
                .chain([&item.record])
                .map(move |record| JournalRow {
                    id: &item.id,
                    attempt: item.attempt,
                    route: record.route,
                    connection: &record.connection,
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
        conn.prepare_cached(sql::JOURNAL_MANY)
            .and_then(|mut insert| insert.execute([journal]))
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

fn release(conn: &Connection, claims: &[(String, u32)], now: Millis) -> Result<(), StoreError> {
    for (id, attempt) in claims {
        conn.prepare_cached(sql::RELEASE)
            .and_then(|mut release| release.execute(params![id, i64::from(*attempt), now]))
            .map_err(|err| store_error(format_args!("release callout {id}"), err))?;
    }
    Ok(())
}

fn reclaim(conn: &Connection, now: Millis, all: bool) -> Result<u64, StoreError> {
    conn.prepare_cached(sql::RECLAIM_JOURNAL)
        .and_then(|mut journal| {
            journal.execute(params![now, all, LEASE_EXPIRED_KIND, LEASE_EXPIRED_MESSAGE])
        })
        .map_err(|err| store_error("journal lost attempts", err))?;
    let changed = conn
        .prepare_cached(sql::RECLAIM)
        .and_then(|mut reclaim| reclaim.execute(params![now, all]))
        .map_err(|err| store_error("reclaim callouts", err))?;
    Ok(changed as u64)
}

// TODO(perf): this rewrites every ready callout of the connection, once per delay; a table of
// connection pauses consulted by the claim would make it one row. The dispatcher can also pass
// a paused connection in `claim`'s `skip` instead.
fn delay_connection(conn: &Connection, connection: &str, until: Millis) -> Result<u64, StoreError> {
    let changed = conn
        .prepare_cached(sql::DELAY_CONNECTION)
        .and_then(|mut delay| delay.execute(params![connection, until]))
        .map_err(|err| store_error(format_args!("delay connection {connection}"), err))?;
    Ok(changed as u64)
}

fn set_state(conn: &Connection, key: &str, value: &str, now: Millis) -> Result<(), StoreError> {
    conn.prepare_cached(sql::SET_STATE)
        .and_then(|mut set| set.execute(params![key, value, now]))
        .map_err(|err| store_error(format_args!("keep engine state {key}"), err))?;
    Ok(())
}

fn insert_file(conn: &Connection, file: &FileRecord) -> Result<(), StoreError> {
    let id = &file.id;
    let size = i64::try_from(file.size).map_err(|_| {
        StoreError::Failed(format!(
            "record file {id}: its size {} is out of range",
            file.size
        ))
    })?;
    let inserted = conn
        .prepare_cached(sql::INSERT_FILE)
        .and_then(|mut insert| {
            insert.execute(params![
                id,
                file.connection,
                file.bucket,
                file.key,
                size,
                file.sha256,
                file.content_type,
                file.name,
                file.origin,
                file.created_at,
                file.expires_at
            ])
        })
        .map_err(|err| store_error(format_args!("record file {id}"), err))?;
    if inserted == 0 {
        return Err(StoreError::Failed(format!(
            "record file {id}: a file with this id exists already"
        )));
    }
    Ok(())
}

fn delete_file(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    let deleted = conn
        .prepare_cached(sql::DELETE_FILE)
        .and_then(|mut delete| delete.execute([id]))
        .map_err(|err| store_error(format_args!("forget file {id}"), err))?;
    Ok(deleted == 1)
}

/// Runs a guarded status change (`statement` takes `?1` id and `?2` now, and returns the row
/// only if the status allowed it); says why when it did not apply.
fn transition(
    conn: &Connection,
    action: &str,
    statement: &'static str,
    id: &str,
    now: Millis,
) -> Result<Transition, StoreError> {
    let changed = conn
        .prepare_cached(statement)
        .and_then(|mut change| {
            change
                .query_row(params![id, now], |row| Ok(decode_callout(row)))
                .optional()
        })
        .map_err(|err| store_error(format_args!("{action} callout {id}"), err))?;
    if let Some(callout) = changed {
        return callout.map(|c| Transition::Done(Box::new(c)));
    }
    let status: Option<String> = conn
        .prepare_cached(sql::STATUS_OF)
        .and_then(|mut status| status.query_row([id], |row| row.get(0)).optional())
        .map_err(|err| store_error(format_args!("{action} callout {id}"), err))?;
    match status {
        None => Ok(Transition::NotFound),
        Some(text) => Status::parse(&text)
            .map(Transition::WrongStatus)
            .ok_or_else(|| unreadable(id, "status", format_args!("unknown status {text:?}"))),
    }
}

/// Classifies a failure of the write connection like [`super::store_error`] classifies
/// sqlx's: what may pass if the caller tries again later (a full disk, a locked database, an
/// I/O error) is [`StoreError::Unavailable`], anything else [`StoreError::Failed`]. The
/// message is SQLite's, with its extended result code: "(code: 13) database or disk is full".
pub(super) fn store_error(context: impl std::fmt::Display, err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let code = failure.extended_code;
            let text = message.clone().unwrap_or_else(|| failure.to_string());
            let message = format!("{context}: (code: {code}) {text}");
            if super::unavailable_code(i64::from(code)) {
                StoreError::Unavailable(message)
            } else {
                StoreError::Failed(message)
            }
        }
        other => StoreError::Failed(format!("{context}: {other}")),
    }
}
