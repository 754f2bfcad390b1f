//! The dispatcher: claims ready callouts and runs them within every limit.
//!
//! Invariants: no more than `max_concurrent_callouts` calls are ever in flight, counting a
//! call from just before its wrapper runs until its result is durable (a global permit is held
//! that long, so a crash can repeat at most that many calls); at most twice that many
//! callouts are claimed and not yet recorded (a claim slot is held from the claim to the
//! result's commit), so the next callouts wait claimed and ready while results are being
//! committed, and a freed permit starts a call at once instead of waiting for a claim's commit.
//! A callout that must wait for its connection's `concurrency`, `rate`/`burst` or a pause holds
//! no permit and no slot while it waits, so one throttled connection cannot hold the cap from
//! the others; a connection with a callout already waiting is not claimed from again until it
//! moves on; a `Retry-After` pauses the whole connection (in memory, and in the store for its
//! queued callouts); a claim that waits long has its lease extended, and is dropped if the
//! lease was lost. Every claimed callout ends recorded (succeeded, retrying, failed), released
//! at shutdown, or — if this process dies — reclaimed after its lease.

pub mod breaker;
mod limits;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use limits::BreakerView;
pub use limits::{ConnLimits, ConnPace};

use crate::engine::{Inner, Version, now_millis};
use crate::metadata::Connection;
use crate::metadata::config::HttpMethod;
use crate::metadata::model::{Function, Request};
use crate::queue::{Attempt, Claimed, Finish, Finished, Next};
use limits::Turn;

/// Claims held now: callout id → attempt, to release them at shutdown.
type Active = Arc<Mutex<HashMap<String, u32>>>;

/// The dispatcher loop. Returns after shutdown, once in-flight calls are done or released.
pub(crate) async fn run(inner: Arc<Inner>) {
    let cap = inner.config.max_concurrent_callouts.max(1);
    let permits = Arc::new(Semaphore::new(cap));
    let slots = Arc::new(Semaphore::new(cap.saturating_mul(2)));
    let active: Active = Arc::new(Mutex::new(HashMap::new()));
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        // Reap finished tasks so the set stays small.
        while let Some(done) = running.try_join_next() {
            if let Err(err) = done
                && err.is_panic()
            {
                tracing::error!("a callout task panicked; its callout returns after its lease");
            }
        }
        let first = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let mut held = vec![first];
        while held.len() < 256 {
            match slots.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let version = inner.current.load_full();
        let skip = inner.limits.saturated(&version.metadata);
        let lease = lease_for(&inner);
        let claimed = match inner
            .store
            .claim(now_millis(), held.len() as u32, lease, &skip)
            .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "claiming callouts failed; retrying shortly");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            drop(held);
            tokio::select! {
                _ = inner.shutdown.cancelled() => break,
                _ = inner.wake.notified() => {},
                _ = tokio::time::sleep(inner.config.poll_interval) => {},
            }
            continue;
        }
        for claim in claimed {
            let Some(slot) = held.pop() else { break };
            if let Ok(mut map) = active.lock() {
                map.insert(claim.callout.id.clone(), claim.attempt);
            }
            running.spawn(run_one(
                inner.clone(),
                claim,
                slot,
                Gates {
                    permits: permits.clone(),
                    slots: slots.clone(),
                },
                active.clone(),
                lease,
            ));
        }
        // Unused slots go back when `held` drops.
    }
    // Shutdown: let in-flight calls finish within the grace period, then release the rest.
    let grace = tokio::time::sleep(inner.config.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => break,
            next = running.join_next() => if next.is_none() { break },
        }
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
    let left: Vec<(String, u32)> = match active.lock() {
        Ok(map) => map.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        Err(_) => Vec::new(),
    };
    if !left.is_empty() {
        match inner.store.release(&left, now_millis()).await {
            Ok(()) => tracing::info!(
                released = left.len(),
                "unfinished callouts returned to the queue"
            ),
            Err(err) => {
                tracing::error!(error = %err, "releasing callouts at shutdown failed; they return after their lease")
            }
        }
    }
}

/// A lease long enough for any attempt of the current metadata.
fn lease_for(inner: &Inner) -> Duration {
    let version = inner.current.load();
    let longest = version
        .metadata
        .connections
        .values()
        .map(|c| c.limits.timeout)
        .max()
        .unwrap_or_default();
    inner.config.min_lease.max(longest * 2)
}

/// The dispatcher's two bounds: `permits` on calls in flight until their results are durable
/// (the cap), `slots` on callouts claimed and not yet recorded (twice the cap).
struct Gates {
    permits: Arc<Semaphore>,
    slots: Arc<Semaphore>,
}

/// Runs one claimed callout to its recorded end: on its function's connection, then — when
/// that fails in a way another connection can serve — on each fallback in turn. `slot` is its
/// claim slot (from `slots`), held to the end but while waiting for a connection; the global
/// permit is taken from `permits` for the calls and the recording of the result.
async fn run_one(
    inner: Arc<Inner>,
    claim: Claimed,
    slot: OwnedSemaphorePermit,
    gates: Gates,
    active: Active,
    lease: Duration,
) {
    let mut held = Held {
        slot: Some(slot),
        permit: None,
    };
    let callout = &claim.callout;
    let version = inner.current.load_full();
    let found = version.metadata.function(&callout.function);
    // Every try of this attempt, in route order, for the journal.
    let mut tries: Vec<Attempt> = Vec::new();
    // Each call's (or skip's) outcome, its duration and its connection, in route order.
    let mut outcomes: Vec<(Outcome, u64, String)> = Vec::new();
    match found {
        None => {
            let outcome = Outcome::failure(
                CallError::new(
                    ErrorKind::Config,
                    format!(
                        "function `{}` no longer exists in the metadata; restore it and replay the callout",
                        callout.function
                    ),
                ),
                None,
                0,
            );
            tries.push(journal_entry(
                &claim,
                0,
                &callout.connection,
                now_millis(),
                0,
                &outcome,
            ));
            outcomes.push((outcome, 0, callout.connection.clone()));
        }
        Some((conn, function)) => {
            let route = route_of(&version.metadata, conn, function);
            for (index, (c, f)) in route.iter().enumerate() {
                let route_no = index as u32;
                let is_last = index + 1 == route.len();
                let state = inner.limits.state_for(c);
                if index > 0 {
                    // A try on another connection: keep the claim alive for it.
                    let until = now_millis() + lease.as_millis() as i64;
                    if let Ok(Finished::Fenced) = inner
                        .store
                        .extend_lease(&callout.id, claim.attempt, until)
                        .await
                    {
                        forget(&active, &callout.id, claim.attempt);
                        return;
                    }
                }
                let skipped = if !is_last && let Some(why) = held_back(&state) {
                    Some(not_called(&c.name, why))
                } else if index > 0 && !f.input_schema.validator.is_valid(&callout.input) {
                    Some(CallError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "the input does not satisfy the input_schema of the fallback `{}.{}`",
                            c.name, f.name
                        ),
                    ))
                } else {
                    None
                };
                let mut skip = |error: CallError| {
                    let outcome = Outcome::failure(error, None, 0);
                    tries.push(journal_entry(
                        &claim,
                        route_no,
                        &c.name,
                        now_millis(),
                        0,
                        &outcome,
                    ));
                    outcomes.push((outcome, 0, c.name.clone()));
                };
                if let Some(error) = skipped {
                    skip(error);
                    continue;
                }
                let waited = wait_turn(
                    &inner,
                    &state,
                    &mut held,
                    &gates,
                    &claim,
                    &active,
                    lease,
                    Route {
                        first: index == 0,
                        last: is_last,
                    },
                )
                .await;
                let turn = match waited {
                    Waited::Ready(turn) => turn,
                    Waited::HeldBack(why) => {
                        skip(not_called(&c.name, why));
                        continue;
                    }
                    // Nothing was called yet: the claim is released (at shutdown) or lost.
                    Waited::Gone if index == 0 => return,
                    // The function's own connection was called: record what happened, so
                    // that the attempt counts and its journal is kept.
                    Waited::Gone => break,
                };
                let started = now_millis();
                let (outcome, duration_ms) =
                    call_wrapper(&inner, &version, c, f, &claim, &state).await;
                drop(turn);
                state.record(&outcome.result);
                if let Err(err) = &outcome.result
                    && let Some(wait) = err.retry_after
                {
                    let wait = wait.min(inner.config.retry_after_cap);
                    state.pause_for(wait);
                    // A connection whose functions fail over keeps its queue: those callouts
                    // go to a fallback instead of waiting out the pause.
                    let fails_over = c.functions.values().any(|f| !f.fallback.is_empty());
                    let until = now_millis() + wait.as_millis() as i64;
                    if !fails_over
                        && let Err(e) = inner.store.delay_connection(&c.name, until).await
                    {
                        tracing::warn!(error = %e, connection = %c.name, "could not delay the connection's queue");
                    }
                    inner.wake.notify_one();
                }
                tries.push(journal_entry(
                    &claim,
                    route_no,
                    &c.name,
                    started,
                    duration_ms,
                    &outcome,
                ));
                let fail_over = !is_last && may_fail_over(&outcome, f, callout);
                if fail_over {
                    tracing::info!(callout_id = %callout.id, from = %c.name, "failing over to the next connection of the function");
                }
                outcomes.push((outcome, duration_ms, c.name.clone()));
                if !fail_over {
                    break;
                }
            }
        }
    }
    let last = decisive(outcomes);
    let (Some((outcome, duration_ms, connection_name)), Some(record)) = (last, tries.pop()) else {
        // A route is never empty; nothing was tried, so there is nothing to record.
        forget(&active, &callout.id, claim.attempt);
        return;
    };
    let retry_policy = found.map(|(c, _)| c.retry.clone()).unwrap_or_default();
    let now = now_millis();
    let next = match &outcome.result {
        Ok(_) => Next::Succeeded,
        Err(err) => retry::next(
            &retry_policy,
            callout,
            err,
            now,
            inner.config.retry_after_cap,
        ),
    };
    let status_word = match (&outcome.result, &next) {
        (Ok(_), _) => "succeeded",
        (Err(_), Next::Retry { .. }) => "retrying",
        (Err(_), _) => "failed",
    };
    inner.metrics.attempt(
        &callout.function,
        &connection_name,
        status_word,
        duration_ms as f64 / 1000.0,
    );
    let result = standard_result(&outcome, duration_ms, claim.attempt, &connection_name);
    if let Err(e) = &outcome.result {
        tracing::debug!(callout_id = %callout.id, function = %callout.function, attempt = claim.attempt, error = %e, outcome = status_word, "attempt failed");
    }
    let finish = Finish {
        id: callout.id.clone(),
        attempt: claim.attempt,
        record,
        earlier: tries,
        result,
        next,
        now,
    };
    // A result the upstream already gave is worth waiting for the store: retry until the
    // lease ends (after that the callout is reclaimed and runs again anyway).
    let mut delay = Duration::from_millis(50);
    let give_up = claim
        .lease_expires_at
        .max(now_millis() + lease.as_millis() as i64);
    while now_millis() < give_up {
        match inner.store.finish(vec![finish.clone()]).await {
            Ok(done) => {
                if done.first() == Some(&Finished::Fenced) {
                    tracing::warn!(callout_id = %callout.id, attempt = claim.attempt, "result refused: the claim's lease expired and the callout was reclaimed");
                }
                break;
            }
            Err(err) => {
                tracing::warn!(error = %err, callout_id = %callout.id, "recording a result failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    forget(&active, &callout.id, claim.attempt);
    drop(held);
    let _ = inner.finished.send(callout.id.clone());
}

/// What a callout holds while it runs: its claim slot (dropped while it waits for a
/// connection) and, from its first call until its result is durable, a global permit.
struct Held {
    slot: Option<OwnedSemaphorePermit>,
    permit: Option<OwnedSemaphorePermit>,
}

/// The function and then its fallbacks, as (connection, function); fallbacks a reload removed
/// are left out.
fn route_of<'m>(
    metadata: &'m crate::metadata::Metadata,
    conn: &'m Arc<Connection>,
    function: &'m Function,
) -> Vec<(&'m Arc<Connection>, &'m Function)> {
    let mut route = vec![(conn, function)];
    for target in &function.fallback {
        if let Some(found) = metadata.function(&target.to_string()) {
            route.push(found);
        }
    }
    route
}

/// Where a try is in its function's route.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// The function's own connection (the callout has made no call yet).
    first: bool,
    /// No fallback after this one.
    last: bool,
}

/// How waiting for a connection ended.
enum Waited {
    /// The connection takes the call now.
    Ready(Turn),
    /// The connection is held back (an open breaker, a pause it asked for) and a fallback
    /// follows: go on to it, saying why.
    HeldBack(&'static str),
    /// A shutdown (the claim is released) or a lost lease (let go).
    Gone,
}

/// The error of a try that skipped `connection` because it is held back (`why`).
fn not_called(connection: &str, why: &str) -> CallError {
    CallError::new(
        ErrorKind::Unavailable,
        format!("`{connection}` was not called: {why}"),
    )
}

/// Why a connection cannot be called now, if it cannot: its breaker is open or it asked for a
/// pause.
fn held_back(state: &limits::ConnState) -> Option<&'static str> {
    if state.breaker_open() {
        Some("its circuit breaker is open")
    } else if state.paused() {
        Some("it asked to wait (Retry-After)")
    } else {
        None
    }
}

/// Waits until `state`'s connection may take the call, then takes a global permit if the
/// callout holds none. On the function's own connection, waiting holds neither a permit nor a
/// claim slot, so it cannot keep the cap from other connections; on a fallback it keeps its
/// slot (so that callouts of a connection that is down are not claimed without bound while
/// they wait for a fallback) but not its permit. With a fallback after this connection, a
/// connection that is held back while the callout waits sends it on. The lease is extended
/// while it waits.
#[allow(clippy::too_many_arguments)]
async fn wait_turn(
    inner: &Arc<Inner>,
    state: &Arc<limits::ConnState>,
    held: &mut Held,
    gates: &Gates,
    claim: &Claimed,
    active: &Active,
    lease: Duration,
    route: Route,
) -> Waited {
    let callout = &claim.callout;
    let mut turn = state.enter();
    {
        let ready = turn.ready();
        tokio::pin!(ready);
        let at_once = tokio::select! {
            biased;
            _ = &mut ready => true,
            _ = std::future::ready(()) => false,
        };
        if !at_once {
            if route.first {
                held.slot = None;
            }
            held.permit = None;
            let extend_every = (lease / 3).max(Duration::from_millis(10));
            let mut extend =
                tokio::time::interval_at(tokio::time::Instant::now() + extend_every, extend_every);
            let mut look = tokio::time::interval(HELD_BACK_CHECK);
            loop {
                tokio::select! {
                    _ = &mut ready => break,
                    _ = inner.shutdown.cancelled() => return Waited::Gone,
                    _ = look.tick(), if !route.last => {
                        if let Some(why) = held_back(state) {
                            return Waited::HeldBack(why);
                        }
                    }
                    _ = extend.tick() => {
                        let until = now_millis() + lease.as_millis() as i64;
                        if let Ok(Finished::Fenced) =
                            inner.store.extend_lease(&callout.id, claim.attempt, until).await
                        {
                            // The claim was lost (a stall outlived the lease): let it go.
                            forget(active, &callout.id, claim.attempt);
                            return Waited::Gone;
                        }
                    }
                }
            }
        }
    }
    if held.slot.is_none() {
        held.slot = tokio::select! {
            taken = gates.slots.clone().acquire_owned() => match taken {
                Ok(taken) => Some(taken),
                Err(_) => return Waited::Gone,
            },
            _ = inner.shutdown.cancelled() => return Waited::Gone,
        };
    }
    if held.permit.is_none() {
        held.permit = tokio::select! {
            p = gates.permits.clone().acquire_owned() => match p {
                Ok(p) => Some(p),
                Err(_) => return Waited::Gone,
            },
            _ = inner.shutdown.cancelled() => return Waited::Gone,
        };
    }
    if inner.shutdown.is_cancelled() {
        return Waited::Gone;
    }
    Waited::Ready(turn)
}

/// How often a callout waiting for a connection with a fallback after it looks whether the
/// connection is held back (and the fallback should serve).
const HELD_BACK_CHECK: Duration = Duration::from_millis(50);

/// The outcome that decides the attempt, from each try's in route order: the last one, unless
/// it failed for a reason of that fallback alone (its input schema, its configuration, the
/// network policy) after an earlier connection failed in a way that is retried — then the
/// latest such earlier one, so that the callout is retried rather than dead-lettered.
fn decisive(mut outcomes: Vec<(Outcome, u64, String)>) -> Option<(Outcome, u64, String)> {
    let local = |o: &Outcome| {
        matches!(
            &o.result,
            Err(e) if matches!(e.kind, ErrorKind::InvalidRequest | ErrorKind::Config | ErrorKind::Refused)
        )
    };
    let retryable = |o: &Outcome| matches!(&o.result, Err(e) if e.retryable());
    let last = outcomes.pop()?;
    if outcomes.is_empty() || !local(&last.0) {
        return Some(last);
    }
    match outcomes.iter().rposition(|(o, _, _)| retryable(o)) {
        Some(i) => Some(outcomes.swap_remove(i)),
        None => Some(last),
    }
}

/// Makes one call of `function` on `conn` and returns its outcome and how long it took. The
/// wrapper runs in its own task, so that a panicking wrapper fails this try (retried, then
/// dead-lettered) instead of the dispatcher's task; it is aborted if this task ends first.
async fn call_wrapper(
    inner: &Inner,
    version: &Version,
    conn: &Connection,
    function: &Function,
    claim: &Claimed,
    state: &Arc<limits::ConnState>,
) -> (Outcome, u64) {
    let callout = &claim.callout;
    let wrapper = version.wrappers.get(&conn.name).cloned();
    let guard = inner.metrics.call_started();
    let begin = tokio::time::Instant::now();
    let deadline = std::time::Instant::now() + conn.limits.timeout;
    let outcome = match wrapper {
        None => Outcome::failure(
            CallError::new(
                ErrorKind::Config,
                format!("connection `{}` has no wrapper", conn.name),
            ),
            None,
            0,
        ),
        Some(wrapper) => {
            let (id, name, input) = (
                callout.id.clone(),
                function.name.clone(),
                callout.input.clone(),
            );
            let key = callout
                .idempotency_key
                .clone()
                .unwrap_or_else(|| callout.id.clone());
            let attempt = claim.attempt;
            let pace = ConnPace(state.clone());
            let task = tokio::spawn(async move {
                let call = Call {
                    callout_id: &id,
                    function: &name,
                    input: &input,
                    attempt,
                    idempotency_key: &key,
                    deadline,
                    pace: &pace,
                };
                wrapper.call(call).await
            });
            let _abort = AbortOnDrop(task.abort_handle());
            let limit = tokio::time::Instant::from_std(deadline) + Duration::from_secs(1);
            match tokio::time::timeout_at(limit, task).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(join)) => {
                    tracing::error!(callout_id = %callout.id, connection = %conn.name, panicked = join.is_panic(), "the wrapper failed unexpectedly");
                    Outcome::failure(
                        CallError::new(
                            ErrorKind::Internal,
                            format!("the `{}` wrapper failed unexpectedly", conn.type_name),
                        ),
                        None,
                        0,
                    )
                }
                Err(_) => Outcome::failure(
                    CallError::new(
                        ErrorKind::Timeout,
                        format!("no answer within {:?}", conn.limits.timeout),
                    ),
                    None,
                    0,
                ),
            }
        }
    };
    let duration_ms = begin.elapsed().as_millis() as u64;
    drop(guard);
    (outcome, duration_ms)
}

/// Whether a failed try may be served by the next connection of the route: nothing was sent
/// (a connect error), the upstream answered with a 5xx, or — when the outcome is unknown (a
/// timeout, an exchange cut after sending, a 408) — the request is safe to repeat elsewhere:
/// an idempotent method, or a callout with its own idempotency key.
fn may_fail_over(outcome: &Outcome, function: &Function, callout: &crate::queue::Callout) -> bool {
    let Err(error) = &outcome.result else {
        return false;
    };
    let repeatable = callout.idempotency_key.is_some()
        || matches!(
            &function.request,
            Request::Rest {
                method: HttpMethod::Get | HttpMethod::Head | HttpMethod::Put | HttpMethod::Delete,
                ..
            }
        );
    match error.kind {
        ErrorKind::Connect => true,
        ErrorKind::Unavailable => match outcome.http_status {
            Some(status) if status >= 500 => true,
            _ => repeatable,
        },
        ErrorKind::Timeout | ErrorKind::Internal => repeatable,
        _ => false,
    }
}

/// The journal's entry for one try of the claim's attempt.
fn journal_entry(
    claim: &Claimed,
    route: u32,
    connection: &str,
    started_at: i64,
    duration_ms: u64,
    outcome: &Outcome,
) -> Attempt {
    let (error_kind, error_message) = match &outcome.result {
        Ok(_) => (None, None),
        Err(e) => (Some(e.kind.as_str().to_string()), Some(e.message.clone())),
    };
    Attempt {
        attempt: claim.attempt,
        route,
        connection: connection.to_string(),
        series: 0,
        started_at,
        duration_ms,
        http_status: outcome.http_status,
        error_kind,
        error_message,
        response_bytes: outcome.response_bytes,
    }
}

/// Drops a claim from the active set, unless a newer claim of the same callout replaced it.
fn forget(active: &Active, id: &str, attempt: u32) {
    if let Ok(mut map) = active.lock()
        && map.get(id) == Some(&attempt)
    {
        map.remove(id);
    }
}

/// Aborts a spawned call when the attempt that started it ends first.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The standard result of an attempt.
pub fn standard_result(
    outcome: &Outcome,
    duration_ms: u64,
    attempt: u32,
    connection: &str,
) -> Value {
    let meta = json!({
        "http_status": outcome.http_status,
        "duration_ms": duration_ms,
        "attempt": attempt,
        "connection": connection,
    });
    match &outcome.result {
        Ok(data) => json!({ "status": "succeeded", "data": data, "error": null, "meta": meta }),
        Err(e) => json!({
            "status": "failed",
            "data": null,
            "error": { "kind": e.kind.as_str(), "message": e.message, "retryable": e.retryable() },
            "meta": meta,
        }),
    }
}

/// Reclaims expired leases while the engine runs.
pub(crate) async fn reclaim_loop(inner: Arc<Inner>) {
    let every = (inner.config.min_lease / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {},
        }
        match inner.store.reclaim(now_millis(), false).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    reclaimed = n,
                    "callouts whose lease expired are queued again"
                );
                inner.wake.notify_one();
            }
            Err(err) => tracing::warn!(error = %err, "reclaiming expired leases failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: ErrorKind, status: Option<u16>) -> Outcome {
        Outcome::failure(CallError::new(kind, "failed"), status, 0)
    }

    fn tried(outcome: Outcome, connection: &str) -> (Outcome, u64, String) {
        (outcome, 1, connection.to_string())
    }

    #[test]
    fn the_last_try_decides_unless_a_fallback_failed_for_a_reason_of_its_own() {
        let served = decisive(vec![
            tried(failed(ErrorKind::Connect, None), "mail"),
            tried(Outcome::success(Value::Null, Some(200), 2), "mail_backup"),
        ]);
        assert_eq!(served.map(|t| t.2).as_deref(), Some("mail_backup"));

        let rejected = decisive(vec![
            tried(failed(ErrorKind::Unavailable, Some(503)), "mail"),
            tried(failed(ErrorKind::Rejected, Some(400)), "mail_backup"),
        ]);
        assert_eq!(rejected.map(|t| t.2).as_deref(), Some("mail_backup"));

        // The fallback could not even be asked: the primary's retried failure decides.
        for local in [
            ErrorKind::InvalidRequest,
            ErrorKind::Config,
            ErrorKind::Refused,
        ] {
            let back = decisive(vec![
                tried(failed(ErrorKind::Unavailable, Some(503)), "mail"),
                tried(failed(local, None), "mail_backup"),
            ])
            .expect("an outcome");
            assert_eq!(back.2, "mail", "{local:?}");
            assert!(matches!(&back.0.result, Err(e) if e.retryable()));
        }
        let alone = decisive(vec![tried(failed(ErrorKind::Config, None), "mail")]);
        assert_eq!(alone.map(|t| t.2).as_deref(), Some("mail"));
        assert!(decisive(Vec::new()).is_none());
    }
}
