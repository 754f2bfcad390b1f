//! The queue's state machine as a property: random sequences of operations on a real SQLite
//! store (a temporary file, reopened on restart) against a small model of what each callout
//! must be, checked after every step.
//!
//! Time is a test clock: every operation passes its own `now`, nothing sleeps.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use tempfile::TempDir;

use super::SqliteStore;
use crate::queue::contract::{T0, callout, finish};
use crate::queue::{
    Callout, Claimed, Enqueued, Finished, ListQuery, Millis, NewCallout, Next, Status, Store,
    Transition,
};

const LEASE: Duration = Duration::from_secs(30);
const LEASE_MS: Millis = 30_000;
/// How long a retryable failure waits before its next attempt.
const BACKOFF_MS: Millis = 5_000;
/// Idempotency keys are drawn from this many, so some repeat.
const KEYS: u8 = 3;
/// The cap of the model's dispatcher: it claims at most this many minus the claims it holds.
const CAP: u32 = 6;

/// One step of a sequence. `Index` picks among what exists when the step runs.
#[derive(Debug, Clone)]
enum Op {
    /// Enqueue a new callout, due now or later, with or without a key; `conflict` gives a used
    /// key another request hash.
    Enqueue {
        key: Option<u8>,
        conflict: bool,
        later: bool,
    },
    Claim {
        limit: u32,
    },
    /// Finish an outstanding claim (its lease may have expired unreclaimed: then fenced).
    Complete {
        pick: Index,
    },
    Fail {
        pick: Index,
        retryable: bool,
    },
    /// Return an outstanding claim without counting the attempt.
    Release {
        pick: Index,
    },
    /// Let time pass (past some leases, or not).
    Wait {
        ms: Millis,
    },
    /// Advance past every lease, then reclaim the expired ones.
    Expire,
    /// Finish with a claim that was superseded, reclaimed or already finished; `rerun` picks,
    /// when there is one, a claim whose callout runs again under a newer claim.
    LateFinish {
        pick: Index,
        success: bool,
        rerun: bool,
    },
    Replay {
        pick: Index,
    },
    Cancel {
        pick: Index,
    },
    /// Close (or just drop) the store, reopen the same file and reclaim every running callout.
    Restart {
        graceful: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::option::of(0..KEYS), any::<bool>(), proptest::bool::weighted(0.2))
            .prop_map(|(key, conflict, later)| Op::Enqueue {
                key,
                conflict: conflict && key.is_some(),
                later,
            }),
        4 => (1..=5u32).prop_map(|limit| Op::Claim { limit }),
        3 => any::<Index>().prop_map(|pick| Op::Complete { pick }),
        3 => (any::<Index>(), any::<bool>())
            .prop_map(|(pick, retryable)| Op::Fail { pick, retryable }),
        1 => any::<Index>().prop_map(|pick| Op::Release { pick }),
        2 => (1..=40_000 as Millis).prop_map(|ms| Op::Wait { ms }),
        1 => Just(Op::Expire),
        2 => (any::<Index>(), any::<bool>(), any::<bool>())
            .prop_map(|(pick, success, rerun)| Op::LateFinish { pick, success, rerun }),
        2 => any::<Index>().prop_map(|pick| Op::Replay { pick }),
        1 => any::<Index>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<bool>().prop_map(|graceful| Op::Restart { graceful }),
    ]
}

/// What a callout must be.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    status: Status,
    attempts: u32,
    series_attempts: u32,
    /// `next_attempt_at` of a queued or retrying callout.
    due: Option<Millis>,
}

impl Expect {
    fn ready(&self, now: Millis) -> bool {
        matches!(self.status, Status::Queued | Status::Retrying)
            && self.due.is_some_and(|d| d <= now)
    }
}

/// What the sequences did, summed for the figure the test reports.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    sequences: u64,
    steps: u64,
    callouts: u64,
    claims: u64,
    recorded: u64,
    fenced: u64,
    replays: u64,
    cancels: u64,
    restarts: u64,
    peak_running: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.sequences += other.sequences;
        self.steps += other.steps;
        self.callouts += other.callouts;
        self.claims += other.claims;
        self.recorded += other.recorded;
        self.fenced += other.fenced;
        self.replays += other.replays;
        self.cancels += other.cancels;
        self.restarts += other.restarts;
        self.peak_running = self.peak_running.max(other.peak_running);
    }
}

/// The model, and the claims the test holds.
struct Model {
    now: Millis,
    /// In enqueue order, so an `Index` picks the same callout on every run.
    ids: Vec<String>,
    callouts: HashMap<String, Expect>,
    /// Idempotency key → the callout that holds it, and its request hash.
    keys: HashMap<String, (String, String)>,
    /// Claims whose callout is still running under them (lease expired or not).
    outstanding: Vec<Claimed>,
    /// Claims that must be fenced: superseded, reclaimed or already finished.
    stale: Vec<Claimed>,
    totals: Totals,
}

impl Model {
    fn expect(&mut self, id: &str) -> &mut Expect {
        self.callouts
            .get_mut(id)
            .expect("the model knows every callout")
    }
}

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("queue.db").display())
}

async fn open(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(&url(dir))
        .await
        .expect("the store opens on its temporary file")
}

async fn get(store: &SqliteStore, id: &str) -> Result<Callout, TestCaseError> {
    let found = store.get(id).await.expect("get answers");
    found.ok_or_else(|| TestCaseError::fail(format!("callout {id} was lost")))
}

fn picked<T>(items: &[T], pick: &Index) -> Option<usize> {
    (!items.is_empty()).then(|| pick.index(items.len()))
}

/// Runs one sequence, checking the store against the model after every step.
async fn run(ops: Vec<Op>) -> Result<Totals, TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Some(open(&dir).await);
    let mut model = Model {
        now: T0,
        ids: Vec::new(),
        callouts: HashMap::new(),
        keys: HashMap::new(),
        outstanding: Vec::new(),
        stale: Vec::new(),
        totals: Totals {
            sequences: 1,
            ..Totals::default()
        },
    };
    let last = ops.len();
    for (step, op) in ops.into_iter().enumerate() {
        model.now += 1;
        model.totals.steps += 1;
        let live = store.as_ref().expect("the store is open between steps");
        apply(live, &mut model, &op, step).await?;
        if let Op::Restart { graceful } = op {
            restart(&mut store, &dir, &mut model, graceful).await?;
        }
        let live = store.as_ref().expect("the store is open between steps");
        let every = matches!(op, Op::Restart { .. }) || step + 1 == last;
        check(live, &mut model, every)
            .await
            .map_err(|err| TestCaseError::fail(format!("after step {step} ({op:?}): {err}")))?;
    }
    if let Some(store) = store {
        store.close().await.expect("the store closes");
    }
    Ok(model.totals)
}

async fn apply(
    store: &SqliteStore,
    model: &mut Model,
    op: &Op,
    step: usize,
) -> Result<(), TestCaseError> {
    let now = model.now;
    match *op {
        Op::Enqueue {
            key,
            conflict,
            later,
        } => enqueue(store, model, step, key, conflict, later).await?,
        Op::Claim { limit } => claim(store, model, limit).await?,
        Op::Complete { ref pick } => {
            finish_outstanding(store, model, pick, Next::Succeeded).await?
        }
        Op::Fail {
            ref pick,
            retryable,
        } => {
            let next = if retryable {
                Next::Retry {
                    at: now + BACKOFF_MS,
                }
            } else {
                Next::Failed
            };
            finish_outstanding(store, model, pick, next).await?;
        }
        Op::Release { ref pick } => {
            let Some(at) = picked(&model.outstanding, pick) else {
                return Ok(());
            };
            let claim = model.outstanding.remove(at);
            let id = claim.callout.id.clone();
            store
                .release(&[(id.clone(), claim.attempt)], now)
                .await
                .expect("release answers");
            // The attempt did not happen: its number is handed out again, so the released
            // claim is not kept as a stale one.
            let expect = model.expect(&id);
            expect.status = if expect.series_attempts > 1 {
                Status::Retrying
            } else {
                Status::Queued
            };
            expect.attempts -= 1;
            expect.series_attempts -= 1;
            expect.due = Some(now);
        }
        Op::Wait { ms } => model.now += ms,
        Op::Expire => {
            model.now += LEASE_MS + 1;
            let now = model.now;
            let reclaimed = store.reclaim(now, false).await.expect("reclaim answers");
            prop_assert_eq!(reclaimed, model.outstanding.len() as u64);
            reclaim_all(model, now);
        }
        Op::LateFinish {
            ref pick,
            success,
            rerun,
        } => {
            let running_again: Vec<&Claimed> = model
                .stale
                .iter()
                .filter(|c| model.callouts[c.callout.id.as_str()].status == Status::Running)
                .collect();
            let claim = if rerun && !running_again.is_empty() {
                running_again[pick.index(running_again.len())].clone()
            } else {
                let Some(at) = picked(&model.stale, pick) else {
                    return Ok(());
                };
                model.stale[at].clone()
            };
            let next = if success {
                Next::Succeeded
            } else {
                Next::Retry {
                    at: now + BACKOFF_MS,
                }
            };
            let before = get(store, &claim.callout.id).await?;
            let done = store
                .finish(vec![finish(&claim, now, next)])
                .await
                .expect("finish answers");
            prop_assert_eq!(done, vec![Finished::Fenced], "stale claim {:?}", claim);
            model.totals.fenced += 1;
            prop_assert_eq!(get(store, &claim.callout.id).await?, before);
        }
        Op::Replay { ref pick } => {
            let Some(at) = picked(&model.ids, pick) else {
                return Ok(());
            };
            let id = model.ids[at].clone();
            let done = store.replay(&id, now).await.expect("replay answers");
            let status = model.expect(&id).status;
            if matches!(status, Status::Succeeded | Status::Failed) {
                prop_assert!(matches!(done, Transition::Done(_)), "{:?}", done);
                model.totals.replays += 1;
                let expect = model.expect(&id);
                expect.status = Status::Queued;
                expect.series_attempts = 0;
                expect.due = Some(now);
            } else {
                prop_assert_eq!(done, Transition::WrongStatus(status));
            }
        }
        Op::Cancel { ref pick } => {
            let Some(at) = picked(&model.ids, pick) else {
                return Ok(());
            };
            let id = model.ids[at].clone();
            let done = store.cancel(&id, now).await.expect("cancel answers");
            let status = model.expect(&id).status;
            if matches!(status, Status::Queued | Status::Retrying) {
                prop_assert!(matches!(done, Transition::Done(_)), "{:?}", done);
                model.totals.cancels += 1;
                let expect = model.expect(&id);
                expect.status = Status::Cancelled;
                expect.due = None;
            } else {
                prop_assert_eq!(done, Transition::WrongStatus(status));
            }
        }
        Op::Restart { .. } => {}
    }
    Ok(())
}

async fn enqueue(
    store: &SqliteStore,
    model: &mut Model,
    step: usize,
    key: Option<u8>,
    conflict: bool,
    later: bool,
) -> Result<(), TestCaseError> {
    let now = model.now;
    let id = format!("c{step:03}");
    let key = key.map(|k| format!("key-{k}"));
    let hash = match &key {
        Some(key) if conflict => format!("other hash of {key}"),
        Some(key) => format!("hash of {key}"),
        None => String::new(),
    };
    let run_at = if later { now + BACKOFF_MS } else { now };
    let item = NewCallout {
        idempotency_key: key.clone(),
        request_hash: hash.clone(),
        now,
        ..callout(&id, "acme", run_at)
    };
    let done = store.enqueue(vec![item]).await.expect("enqueue answers");
    let [done] = done.as_slice() else {
        return Err(TestCaseError::fail(format!(
            "one answer per item: {done:?}"
        )));
    };
    match key.as_ref().and_then(|k| model.keys.get(k)) {
        Some((existing, existing_hash)) if *existing_hash == hash => {
            let Enqueued::Existing(found) = done else {
                return Err(TestCaseError::fail(format!(
                    "expected {existing}: {done:?}"
                )));
            };
            prop_assert_eq!(&found.id, existing);
            prop_assert_eq!(found, &get(store, existing).await?);
        }
        Some((existing, _)) => {
            prop_assert_eq!(
                done,
                &Enqueued::Conflict {
                    existing_id: existing.clone()
                }
            );
        }
        None => {
            prop_assert!(
                matches!(done, Enqueued::Created(c) if c.id == id),
                "{:?}",
                done
            );
            if let Some(key) = key {
                model.keys.insert(key, (id.clone(), hash));
            }
            model.totals.callouts += 1;
            model.ids.push(id.clone());
            model.callouts.insert(
                id,
                Expect {
                    status: Status::Queued,
                    attempts: 0,
                    series_attempts: 0,
                    due: Some(run_at),
                },
            );
        }
    }
    Ok(())
}

async fn claim(store: &SqliteStore, model: &mut Model, limit: u32) -> Result<(), TestCaseError> {
    let now = model.now;
    // Like the dispatcher: never ask for more than the places left under the cap.
    let limit = limit.min(CAP - model.outstanding.len() as u32);
    if limit == 0 {
        return Ok(());
    }
    let ready: Vec<&String> = model
        .ids
        .iter()
        .filter(|id| model.callouts[id.as_str()].ready(now))
        .collect();
    let expected = ready.len().min(limit as usize);
    let claimed = store
        .claim(now, limit, LEASE, &[])
        .await
        .expect("claim answers");
    prop_assert_eq!(claimed.len(), expected, "ready: {:?}", ready);
    // Oldest due first: nothing left behind was due before something taken.
    let latest_taken = claimed
        .iter()
        .filter_map(|c| model.callouts[c.callout.id.as_str()].due)
        .max();
    for id in &ready {
        let taken = claimed.iter().any(|c| &&c.callout.id == id);
        let due = model.callouts[id.as_str()].due;
        prop_assert!(taken || due >= latest_taken, "{} was due first", id);
    }
    model.totals.claims += claimed.len() as u64;
    for claim in claimed {
        let id = claim.callout.id.clone();
        let expect = model.expect(&id);
        // Only a ready callout is claimed: never a running or finished one (until replayed).
        prop_assert!(expect.ready(now), "claimed {} in {:?}", id, expect);
        prop_assert_eq!(claim.attempt, expect.attempts + 1);
        prop_assert_eq!(claim.lease_expires_at, now + LEASE_MS);
        prop_assert_eq!(claim.callout.status, Status::Running);
        expect.status = Status::Running;
        expect.attempts += 1;
        expect.series_attempts += 1;
        expect.due = None;
        model.outstanding.push(claim);
    }
    Ok(())
}

async fn finish_outstanding(
    store: &SqliteStore,
    model: &mut Model,
    pick: &Index,
    next: Next,
) -> Result<(), TestCaseError> {
    let now = model.now;
    let Some(at) = picked(&model.outstanding, pick) else {
        return Ok(());
    };
    let claim = model.outstanding[at].clone();
    let id = claim.callout.id.clone();
    let before = get(store, &id).await?;
    let done = store
        .finish(vec![finish(&claim, now, next.clone())])
        .await
        .expect("finish answers");
    if claim.lease_expires_at < now {
        // The lease expired unreclaimed: the claim stays outstanding until a reclaim.
        prop_assert_eq!(done, vec![Finished::Fenced]);
        prop_assert_eq!(get(store, &id).await?, before);
        model.totals.fenced += 1;
        return Ok(());
    }
    prop_assert_eq!(done, vec![Finished::Recorded]);
    model.totals.recorded += 1;
    model.stale.push(model.outstanding.remove(at));
    let expect = model.expect(&id);
    (expect.status, expect.due) = match next {
        Next::Succeeded => (Status::Succeeded, None),
        Next::Retry { at } => (Status::Retrying, Some(at)),
        Next::Failed => (Status::Failed, None),
    };
    Ok(())
}

/// Every outstanding claim was reclaimed at `now`: its callout is retrying, due at once.
fn reclaim_all(model: &mut Model, now: Millis) {
    for claim in std::mem::take(&mut model.outstanding) {
        let expect = model.expect(&claim.callout.id);
        expect.status = Status::Retrying;
        expect.due = Some(now);
        model.stale.push(claim);
    }
}

async fn restart(
    store: &mut Option<SqliteStore>,
    dir: &TempDir,
    model: &mut Model,
    graceful: bool,
) -> Result<(), TestCaseError> {
    let old = store.take().expect("the store is open before a restart");
    if graceful {
        old.close().await.expect("the store closes");
    } else {
        drop(old);
    }
    let reopened = open(dir).await;
    let reclaimed = reopened
        .reclaim(model.now, true)
        .await
        .expect("reclaim answers");
    prop_assert_eq!(reclaimed, model.outstanding.len() as u64);
    reclaim_all(model, model.now);
    model.totals.restarts += 1;
    *store = Some(reopened);
    Ok(())
}

/// The store agrees with the model: nothing lost, every status and counter as expected, and
/// exactly the outstanding claims running. One `list` a step; `get` of every callout after a
/// restart and at the end (`every`).
async fn check(store: &SqliteStore, model: &mut Model, every: bool) -> Result<(), TestCaseError> {
    let query = ListQuery {
        limit: 1_000,
        ..ListQuery::default()
    };
    let listed = store.list(&query).await.expect("list answers");
    let mut found: HashMap<String, Callout> =
        listed.into_iter().map(|c| (c.id.clone(), c)).collect();
    prop_assert_eq!(found.len(), model.ids.len());
    for id in &model.ids {
        let callout = if every {
            get(store, id).await?
        } else {
            found
                .remove(id.as_str())
                .ok_or_else(|| TestCaseError::fail(format!("callout {id} was lost")))?
        };
        let expect = &model.callouts[id.as_str()];
        let seen = Expect {
            status: callout.status,
            attempts: callout.attempts,
            series_attempts: callout.series_attempts,
            due: callout.next_attempt_at,
        };
        prop_assert_eq!(&seen, expect, "callout {}", id);
    }
    let running = store
        .counts()
        .await
        .expect("counts answers")
        .into_iter()
        .find(|(status, _)| *status == Status::Running)
        .map_or(0, |(_, n)| n);
    prop_assert_eq!(running, model.outstanding.len() as u64);
    prop_assert!(
        running <= u64::from(CAP),
        "{} running over the cap {}",
        running,
        CAP
    );
    model.totals.peak_running = model.totals.peak_running.max(running);
    Ok(())
}

/// Random sequences (64 of up to 40 steps) of enqueue, claim, complete, fail, release, lease
/// expiry, late finishes of stale claims, replay, cancel and restart (graceful or a dropped
/// store) never lose a callout, never claim one that is not ready (running or terminal), fence
/// every stale claim, and never hold more than the cap running. Reports its figure.
#[test]
fn queue_state_machine_matches_the_model() {
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::RefCell;

    let mut runner = TestRunner::new(Config {
        cases: 64,
        // A failing sequence is printed, shrunk; nothing is written beside the sources.
        failure_persistence: None,
        ..Config::default()
    });
    let totals = RefCell::new(Totals::default());
    let strategy = proptest::collection::vec(op(), 1..=40);
    let outcome = runner.run(&strategy, |ops| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let seen = runtime.block_on(run(ops))?;
        totals.borrow_mut().add(seen);
        Ok(())
    });
    if let Err(err) = outcome {
        panic!("{err}");
    }
    let t = totals.into_inner();
    let line = format!(
        "9 property | queue state machine against its model | {} sequences, {} steps: \
         {} callouts, {} claims, {} results recorded, {} stale results fenced, {} replays, \
         {} cancels, {} restarts; 0 lost, 0 terminal claimed, peak {} running ≤ cap {CAP}",
        t.sequences,
        t.steps,
        t.callouts,
        t.claims,
        t.recorded,
        t.fenced,
        t.replays,
        t.cancels,
        t.restarts,
        t.peak_running
    );
    println!("FIGURE {line}");
    // Beside the figures of the reliability suite (tests/reliability), which scripts/test prints.
    let figures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/reliability-figures.txt"
    );
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(figures)
    {
        use std::io::Write;
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}
