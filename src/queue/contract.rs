//! The [`Store`] contract as tests: every store runs all of them, each on a database of its own.
//!
//! A store's test module instantiates them with [`store_contract!`], given an async function
//! that opens a fresh, empty store and returns it with a guard that keeps its database alive.
//! Time is explicit: every test passes its own `now`, nothing sleeps.

use std::time::Duration;

use serde_json::{Value, json};

use super::sqlite::{LEASE_EXPIRED_KIND, LEASE_EXPIRED_MESSAGE};
use super::{
    Attempt, Callout, Claimed, Enqueued, FileRecord, Finish, Finished, ListQuery, Millis,
    NewCallout, Next, Status, Store, StoreError, Transition,
};

/// One `#[tokio::test]` per contract test, each opening its own store with `$open`.
macro_rules! store_contract {
    ($open:path) => {
        $crate::queue::contract::store_contract!(@each $open;
            enqueued_callout_reads_back_unchanged,
            same_key_and_input_returns_the_existing_callout,
            same_key_and_other_input_is_a_conflict,
            duplicate_keys_inside_one_batch_see_the_first,
            claim_takes_the_oldest_due_first_up_to_the_limit,
            claim_skips_the_listed_connections,
            claim_leaves_callouts_that_are_not_due,
            finish_with_a_stale_attempt_is_fenced,
            finish_after_the_lease_expired_is_fenced,
            reclaimed_callout_refuses_the_old_claim,
            finish_batch_fences_each_item_on_its_own,
            finish_with_a_record_of_another_attempt_is_refused,
            extend_lease_keeps_a_long_attempt_alive,
            reclaim_takes_expired_leases_and_journals_the_lost_attempt,
            reclaim_all_takes_every_running_callout,
            release_does_not_count_an_attempt,
            release_of_a_retry_makes_it_retrying_again,
            retry_then_success_journals_two_attempts,
            dead_letter_keeps_its_result,
            replay_keeps_the_journal_and_starts_series_one,
            replay_needs_a_finished_callout,
            cancel_stops_a_queued_or_retrying_callout,
            cancel_refuses_a_running_callout,
            delay_connection_moves_due_callouts_of_that_connection,
            list_pages_newest_first,
            list_filters_by_status_and_function,
            counts_include_every_status,
            ready_answers_on_an_empty_and_a_full_store,
            failover_journals_every_connection_tried_in_order,
            tries_out_of_route_order_are_refused,
            engine_state_is_kept_and_replaced,
            file_reference_reads_back_unchanged,
            duplicate_file_id_is_refused,
            expired_files_come_soonest_first_up_to_the_limit,
            deleted_file_is_forgotten_once,
        );
    };
    (@each $open:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (store, _guard) = $open().await;
                $crate::queue::contract::$name(&store).await;
            }
        )*
    };
}
pub(crate) use store_contract;

/// An arbitrary start of time for the tests.
pub(crate) const T0: Millis = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const LEASE_MS: Millis = 30_000;

pub(crate) fn callout(id: &str, connection: &str, run_at: Millis) -> NewCallout {
    NewCallout {
        id: id.to_owned(),
        function: format!("{connection}.send"),
        connection: connection.to_owned(),
        input: json!({ "callout": id, "amount": 12.5, "tags": ["a", "b"] }),
        idempotency_key: None,
        request_hash: format!("hash of {id}"),
        run_at,
        now: T0,
    }
}

pub(crate) fn keyed(id: &str, key: &str, hash: &str) -> NewCallout {
    NewCallout {
        idempotency_key: Some(key.to_owned()),
        request_hash: hash.to_owned(),
        ..callout(id, "acme", T0)
    }
}

async fn enqueue(store: &dyn Store, item: NewCallout) -> Callout {
    match store.enqueue(vec![item]).await.unwrap().as_slice() {
        [Enqueued::Created(callout)] => callout.clone(),
        other => panic!("expected one created callout, got {other:?}"),
    }
}

async fn get(store: &dyn Store, id: &str) -> Callout {
    store.get(id).await.unwrap().unwrap()
}

async fn claim(store: &dyn Store, now: Millis, limit: u32) -> Vec<Claimed> {
    store.claim(now, limit, LEASE, &[]).await.unwrap()
}

async fn claim_one(store: &dyn Store, now: Millis) -> Claimed {
    let mut claimed = claim(store, now, 1).await;
    assert_eq!(claimed.len(), 1, "expected one ready callout at {now}");
    claimed.remove(0)
}

fn ids(callouts: &[Callout]) -> Vec<&str> {
    callouts.iter().map(|c| c.id.as_str()).collect()
}

fn claimed_ids(claims: &[Claimed]) -> Vec<&str> {
    claims.iter().map(|c| c.callout.id.as_str()).collect()
}

fn record(attempt: u32, started_at: Millis, http_status: u16, error: Option<&str>) -> Attempt {
    Attempt {
        attempt,
        route: 0,
        connection: "acme".to_owned(),
        series: 0,
        started_at,
        duration_ms: 42,
        http_status: Some(http_status),
        error_kind: error.map(|_| "http_status".to_owned()),
        error_message: error.map(str::to_owned),
        response_bytes: 120,
    }
}

fn result(status: &str) -> Value {
    json!({ "status": status, "data": { "ok": status == "succeeded" } })
}

/// Finishes `claim` at `now` with `next`.
pub(crate) fn finish(claim: &Claimed, now: Millis, next: Next) -> Finish {
    let (http_status, error, status) = match next {
        Next::Succeeded => (200, None, "succeeded"),
        Next::Retry { .. } => (503, Some("upstream is unavailable"), "retrying"),
        Next::Failed => (400, Some("upstream rejected the request"), "failed"),
    };
    Finish {
        id: claim.callout.id.clone(),
        attempt: claim.attempt,
        record: record(
            claim.attempt,
            claim.lease_expires_at - LEASE_MS,
            http_status,
            error,
        ),
        earlier: Vec::new(),
        result: result(status),
        next,
        now,
    }
}

async fn finish_one(store: &dyn Store, item: Finish) -> Finished {
    let done = store.finish(vec![item]).await.unwrap();
    assert_eq!(done.len(), 1);
    done[0]
}

// ---------------------------------------------------------------------------------------------
// Enqueue and idempotency

pub(crate) async fn enqueued_callout_reads_back_unchanged(store: &dyn Store) {
    let item = NewCallout {
        idempotency_key: Some("order-17".to_owned()),
        ..callout("c1", "acme", T0 + 5_000)
    };
    let created = enqueue(store, item.clone()).await;

    let expected = Callout {
        id: "c1".to_owned(),
        function: "acme.send".to_owned(),
        connection: "acme".to_owned(),
        status: Status::Queued,
        input: item.input.clone(),
        attempts: 0,
        series_attempts: 0,
        // The series starts when the callout may first run.
        series_started_at: T0 + 5_000,
        created_at: T0,
        updated_at: T0,
        next_attempt_at: Some(T0 + 5_000),
        idempotency_key: Some("order-17".to_owned()),
        request_hash: "hash of c1".to_owned(),
        result: None,
    };
    assert_eq!(created, expected);
    assert_eq!(store.get("c1").await.unwrap(), Some(expected));
    assert_eq!(store.attempts("c1").await.unwrap(), vec![]);
    assert_eq!(store.get("nope").await.unwrap(), None);
}

pub(crate) async fn same_key_and_input_returns_the_existing_callout(store: &dyn Store) {
    let first = enqueue(store, keyed("c1", "k", "h1")).await;

    let again = store.enqueue(vec![keyed("c2", "k", "h1")]).await.unwrap();

    assert_eq!(again, vec![Enqueued::Existing(first)]);
    assert_eq!(store.get("c2").await.unwrap(), None);
}

pub(crate) async fn same_key_and_other_input_is_a_conflict(store: &dyn Store) {
    enqueue(store, keyed("c1", "k", "h1")).await;

    let done = store
        .enqueue(vec![keyed("c2", "k", "h2"), callout("c3", "acme", T0)])
        .await
        .unwrap();

    assert_eq!(
        done[0],
        Enqueued::Conflict {
            existing_id: "c1".to_owned()
        }
    );
    assert!(
        matches!(&done[1], Enqueued::Created(c) if c.id == "c3"),
        "{done:?}"
    );
    assert_eq!(store.get("c2").await.unwrap(), None);
    assert_eq!(get(store, "c3").await.status, Status::Queued);
}

pub(crate) async fn duplicate_keys_inside_one_batch_see_the_first(store: &dyn Store) {
    let done = store
        .enqueue(vec![
            keyed("c1", "k", "h1"),
            keyed("c2", "k", "h1"),
            keyed("c3", "k", "h2"),
        ])
        .await
        .unwrap();

    let first = get(store, "c1").await;
    assert_eq!(
        done,
        vec![
            Enqueued::Created(first.clone()),
            Enqueued::Existing(first),
            Enqueued::Conflict {
                existing_id: "c1".to_owned()
            },
        ]
    );
    assert_eq!(store.get("c2").await.unwrap(), None);
    assert_eq!(store.get("c3").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Claims

pub(crate) async fn claim_takes_the_oldest_due_first_up_to_the_limit(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("c1", "acme", T0 + 2),
            callout("c2", "acme", T0 + 1),
            callout("c3", "acme", T0 + 1),
            callout("c4", "acme", T0 + 5),
        ])
        .await
        .unwrap();
    let now = T0 + 3;

    let first = claim(store, now, 2).await;
    let second = claim(store, now, 10).await;

    assert_eq!(claimed_ids(&first), ["c2", "c3"]);
    assert_eq!(claimed_ids(&second), ["c1"]);
    let c2 = &first[0];
    assert_eq!(c2.attempt, 1);
    assert_eq!(c2.lease_expires_at, now + LEASE_MS);
    assert_eq!(c2.callout.status, Status::Running);
    assert_eq!(c2.callout.attempts, 1);
    assert_eq!(c2.callout.series_attempts, 1);
    assert_eq!(c2.callout.updated_at, now);
    assert_eq!(get(store, "c2").await, c2.callout);
    // c4 is due at T0 + 5: not before, and at that very moment.
    assert_eq!(claim(store, T0 + 4, 10).await, vec![]);
    assert_eq!(claimed_ids(&claim(store, T0 + 5, 10).await), ["c4"]);
}

pub(crate) async fn claim_skips_the_listed_connections(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("a1", "acme", T0),
            callout("b1", "billing", T0),
            callout("c1", "crm", T0),
        ])
        .await
        .unwrap();

    let skip = ["acme".to_owned(), "crm".to_owned()];
    let claimed = store.claim(T0, 10, LEASE, &skip).await.unwrap();

    assert_eq!(claimed_ids(&claimed), ["b1"]);
    assert_eq!(claimed_ids(&claim(store, T0, 10).await), ["a1", "c1"]);
}

pub(crate) async fn claim_leaves_callouts_that_are_not_due(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0 + 60_000)).await;

    assert_eq!(claim(store, T0 + 59_999, 10).await, vec![]);
    let c1 = get(store, "c1").await;
    assert_eq!((c1.status, c1.attempts), (Status::Queued, 0));
}

// ---------------------------------------------------------------------------------------------
// Fencing

pub(crate) async fn finish_with_a_stale_attempt_is_fenced(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let claimed = claim_one(store, T0).await;

    for stale in [0, 2] {
        let mut item = finish(&claimed, T0 + 10, Next::Succeeded);
        item.attempt = stale;
        item.record.attempt = stale;
        assert_eq!(finish_one(store, item).await, Finished::Fenced);
    }
    assert_eq!(get(store, "c1").await, claimed.callout);
    assert_eq!(store.attempts("c1").await.unwrap(), vec![]);

    let done = finish_one(store, finish(&claimed, T0 + 10, Next::Succeeded)).await;
    assert_eq!(done, Finished::Recorded);
}

pub(crate) async fn finish_after_the_lease_expired_is_fenced(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("late", "acme", T0),
            callout("just", "acme", T0),
        ])
        .await
        .unwrap();
    let claims = claim(store, T0, 2).await;
    let expiry = T0 + LEASE_MS;

    let late = finish_one(store, finish(&claims[1], expiry + 1, Next::Succeeded)).await;
    let just = finish_one(store, finish(&claims[0], expiry, Next::Succeeded)).await;

    assert_eq!((late, just), (Finished::Fenced, Finished::Recorded));
    assert_eq!(get(store, "late").await, claims[1].callout);
    assert_eq!(store.attempts("late").await.unwrap(), vec![]);
    assert_eq!(get(store, "just").await.status, Status::Succeeded);
}

pub(crate) async fn reclaimed_callout_refuses_the_old_claim(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let old = claim_one(store, T0).await;
    assert_eq!(store.reclaim(T0 + 1, true).await.unwrap(), 1);
    let new = claim_one(store, T0 + 2).await;
    assert_eq!(new.attempt, 2);

    // The old claim's lease has not run out: the attempt number alone fences it.
    let stale = finish_one(store, finish(&old, T0 + 3, Next::Failed)).await;
    let stale_extend = store
        .extend_lease("c1", old.attempt, T0 + 90_000)
        .await
        .unwrap();
    let current = finish_one(store, finish(&new, T0 + 4, Next::Succeeded)).await;

    assert_eq!(
        (stale, stale_extend, current),
        (Finished::Fenced, Finished::Fenced, Finished::Recorded)
    );
    let c1 = get(store, "c1").await;
    assert_eq!((c1.status, c1.attempts), (Status::Succeeded, 2));
    assert_eq!(c1.result, Some(result("succeeded")));
    let journal = store.attempts("c1").await.unwrap();
    let kinds: Vec<_> = journal
        .iter()
        .map(|a| (a.attempt, a.error_kind.as_deref()))
        .collect();
    assert_eq!(kinds, [(1, Some(LEASE_EXPIRED_KIND)), (2, None)]);
}

pub(crate) async fn finish_batch_fences_each_item_on_its_own(store: &dyn Store) {
    store
        .enqueue(vec![callout("c1", "acme", T0), callout("c2", "acme", T0)])
        .await
        .unwrap();
    let claims = claim(store, T0, 2).await;
    let mut stale = finish(&claims[0], T0 + 1, Next::Succeeded);
    stale.attempt = 7;
    stale.record.attempt = 7;

    let done = store
        .finish(vec![stale, finish(&claims[1], T0 + 1, Next::Succeeded)])
        .await
        .unwrap();

    assert_eq!(done, [Finished::Fenced, Finished::Recorded]);
    assert_eq!(get(store, "c1").await.status, Status::Running);
    assert_eq!(get(store, "c2").await.status, Status::Succeeded);
}

pub(crate) async fn finish_with_a_record_of_another_attempt_is_refused(store: &dyn Store) {
    store
        .enqueue(vec![callout("c1", "acme", T0), callout("c2", "acme", T0)])
        .await
        .unwrap();
    let claims = claim(store, T0, 2).await;
    let mut wrong = finish(&claims[1], T0 + 1, Next::Succeeded);
    wrong.record.attempt = 2;

    let done = store
        .finish(vec![finish(&claims[0], T0 + 1, Next::Succeeded), wrong])
        .await;

    assert!(matches!(done, Err(StoreError::Failed(_))), "{done:?}");
    // Nothing of the batch was recorded.
    for claimed in &claims {
        assert_eq!(get(store, &claimed.callout.id).await, claimed.callout);
        assert_eq!(store.attempts(&claimed.callout.id).await.unwrap(), vec![]);
    }
}

pub(crate) async fn extend_lease_keeps_a_long_attempt_alive(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let claimed = claim_one(store, T0).await;
    let until = T0 + 2 * LEASE_MS;

    let extended = store
        .extend_lease("c1", claimed.attempt, until)
        .await
        .unwrap();
    let wrong = store
        .extend_lease("c1", claimed.attempt + 1, until)
        .await
        .unwrap();
    let unknown = store.extend_lease("nope", 1, until).await.unwrap();

    assert_eq!(
        (extended, wrong, unknown),
        (Finished::Recorded, Finished::Fenced, Finished::Fenced)
    );
    // Past the first lease, inside the extended one: neither reclaimed nor fenced.
    assert_eq!(store.reclaim(T0 + LEASE_MS + 1, false).await.unwrap(), 0);
    let done = finish_one(store, finish(&claimed, until, Next::Succeeded)).await;
    assert_eq!(done, Finished::Recorded);
    let after = store
        .extend_lease("c1", claimed.attempt, until + 1)
        .await
        .unwrap();
    assert_eq!(after, Finished::Fenced);
}

// ---------------------------------------------------------------------------------------------
// Reclaim and release

pub(crate) async fn reclaim_takes_expired_leases_and_journals_the_lost_attempt(store: &dyn Store) {
    store
        .enqueue(vec![callout("c1", "acme", T0), callout("c2", "acme", T0)])
        .await
        .unwrap();
    claim_one(store, T0).await;
    claim_one(store, T0 + 20_000).await;
    let now = T0 + LEASE_MS + 1;

    assert_eq!(store.reclaim(now, false).await.unwrap(), 1);

    let c1 = get(store, "c1").await;
    assert_eq!(c1.status, Status::Retrying);
    assert_eq!(c1.next_attempt_at, Some(now));
    assert_eq!((c1.attempts, c1.series_attempts), (1, 1));
    assert_eq!(
        store.attempts("c1").await.unwrap(),
        vec![Attempt {
            attempt: 1,
            route: 0,
            connection: "acme".to_owned(),
            series: 0,
            started_at: T0,
            duration_ms: 0,
            http_status: None,
            error_kind: Some(LEASE_EXPIRED_KIND.to_owned()),
            error_message: Some(LEASE_EXPIRED_MESSAGE.to_owned()),
            response_bytes: 0,
        }]
    );
    assert_eq!(get(store, "c2").await.status, Status::Running);
    assert_eq!(store.attempts("c2").await.unwrap(), vec![]);
    // Reclaimed, it is ready again at once.
    let again = claim_one(store, now).await;
    assert_eq!((again.callout.id.as_str(), again.attempt), ("c1", 2));
}

pub(crate) async fn reclaim_all_takes_every_running_callout(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("c1", "acme", T0),
            callout("c2", "acme", T0),
            callout("c3", "acme", T0),
        ])
        .await
        .unwrap();
    claim(store, T0, 2).await;

    assert_eq!(store.reclaim(T0 + 1, true).await.unwrap(), 2);

    for id in ["c1", "c2"] {
        assert_eq!(get(store, id).await.status, Status::Retrying);
        let journal = store.attempts(id).await.unwrap();
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].error_kind.as_deref(), Some(LEASE_EXPIRED_KIND));
    }
    assert_eq!(get(store, "c3").await.status, Status::Queued);
    assert_eq!(store.reclaim(T0 + 2, true).await.unwrap(), 0);
}

pub(crate) async fn release_does_not_count_an_attempt(store: &dyn Store) {
    let queued = enqueue(store, callout("c1", "acme", T0)).await;
    let claimed = claim_one(store, T0).await;

    store
        .release(&[("c1".to_owned(), claimed.attempt)], T0 + 5)
        .await
        .unwrap();

    let c1 = get(store, "c1").await;
    assert_eq!(
        c1,
        Callout {
            next_attempt_at: Some(T0 + 5),
            updated_at: T0 + 5,
            ..queued
        }
    );
    assert_eq!(store.attempts("c1").await.unwrap(), vec![]);
    let again = claim_one(store, T0 + 5).await;
    assert_eq!(again.attempt, 1);
    // A release under another attempt number leaves the claim alone.
    store
        .release(&[("c1".to_owned(), 2)], T0 + 6)
        .await
        .unwrap();
    assert_eq!(get(store, "c1").await.status, Status::Running);
}

pub(crate) async fn release_of_a_retry_makes_it_retrying_again(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let first = claim_one(store, T0).await;
    finish_one(store, finish(&first, T0 + 1, Next::Retry { at: T0 + 10 })).await;
    let second = claim_one(store, T0 + 10).await;

    store
        .release(&[("c1".to_owned(), second.attempt)], T0 + 11)
        .await
        .unwrap();

    let c1 = get(store, "c1").await;
    assert_eq!(c1.status, Status::Retrying);
    assert_eq!((c1.attempts, c1.series_attempts), (1, 1));
    assert_eq!(c1.next_attempt_at, Some(T0 + 11));
    assert_eq!(store.attempts("c1").await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Results, replay, cancel

pub(crate) async fn retry_then_success_journals_two_attempts(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let first = claim_one(store, T0).await;

    let retry = finish(&first, T0 + 100, Next::Retry { at: T0 + 1_000 });
    assert_eq!(finish_one(store, retry.clone()).await, Finished::Recorded);
    let c1 = get(store, "c1").await;
    assert_eq!(c1.status, Status::Retrying);
    assert_eq!(c1.next_attempt_at, Some(T0 + 1_000));
    assert_eq!(c1.updated_at, T0 + 100);
    assert_eq!(c1.result, Some(result("retrying")));
    assert_eq!(claim(store, T0 + 999, 10).await, vec![]);

    let second = claim_one(store, T0 + 1_000).await;
    assert_eq!(second.attempt, 2);
    let success = finish(&second, T0 + 1_100, Next::Succeeded);
    assert_eq!(finish_one(store, success.clone()).await, Finished::Recorded);

    let c1 = get(store, "c1").await;
    assert_eq!(c1.status, Status::Succeeded);
    assert_eq!((c1.attempts, c1.series_attempts), (2, 2));
    assert_eq!(c1.next_attempt_at, None);
    assert_eq!(c1.result, Some(result("succeeded")));
    assert_eq!(
        store.attempts("c1").await.unwrap(),
        vec![retry.record, success.record]
    );
}

pub(crate) async fn dead_letter_keeps_its_result(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let claimed = claim_one(store, T0).await;

    let dead = finish(&claimed, T0 + 1, Next::Failed);
    assert_eq!(finish_one(store, dead.clone()).await, Finished::Recorded);

    let c1 = get(store, "c1").await;
    assert_eq!(c1.status, Status::Failed);
    assert_eq!(c1.next_attempt_at, None);
    assert_eq!(c1.result, Some(result("failed")));
    assert_eq!(store.attempts("c1").await.unwrap(), vec![dead.record]);
    assert_eq!(claim(store, T0 + 1_000_000, 10).await, vec![]);
}

pub(crate) async fn replay_keeps_the_journal_and_starts_series_one(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let first = claim_one(store, T0).await;
    finish_one(store, finish(&first, T0 + 1, Next::Failed)).await;

    let replayed = store.replay("c1", T0 + 10).await.unwrap();

    let Transition::Done(c1) = replayed else {
        panic!("expected the replay to be done, got {replayed:?}");
    };
    assert_eq!(c1.status, Status::Queued);
    assert_eq!((c1.attempts, c1.series_attempts), (1, 0));
    assert_eq!(c1.series_started_at, T0 + 10);
    assert_eq!(c1.next_attempt_at, Some(T0 + 10));
    assert_eq!(c1.result, None);
    assert_eq!(get(store, "c1").await, *c1);

    let second = claim_one(store, T0 + 10).await;
    assert_eq!((second.attempt, second.callout.series_attempts), (2, 1));
    finish_one(store, finish(&second, T0 + 11, Next::Succeeded)).await;
    let journal = store.attempts("c1").await.unwrap();
    let series: Vec<_> = journal.iter().map(|a| (a.attempt, a.series)).collect();
    assert_eq!(series, [(1, 0), (2, 1)]);
    assert_eq!(get(store, "c1").await.status, Status::Succeeded);
}

pub(crate) async fn replay_needs_a_finished_callout(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;

    let queued = store.replay("c1", T0).await.unwrap();
    claim_one(store, T0).await;
    let running = store.replay("c1", T0).await.unwrap();
    let unknown = store.replay("nope", T0).await.unwrap();

    assert_eq!(queued, Transition::WrongStatus(Status::Queued));
    assert_eq!(running, Transition::WrongStatus(Status::Running));
    assert_eq!(unknown, Transition::NotFound);
}

pub(crate) async fn cancel_stops_a_queued_or_retrying_callout(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("retried", "acme", T0),
            callout("fresh", "acme", T0 + 1),
        ])
        .await
        .unwrap();
    let claimed = claim_one(store, T0).await;
    finish_one(
        store,
        finish(&claimed, T0 + 2, Next::Retry { at: T0 + 500 }),
    )
    .await;
    assert_eq!(get(store, "retried").await.status, Status::Retrying);
    assert_eq!(get(store, "fresh").await.status, Status::Queued);

    for id in ["retried", "fresh"] {
        let done = store.cancel(id, T0 + 3).await.unwrap();
        let Transition::Done(cancelled) = done else {
            panic!("expected {id} to be cancelled, got {done:?}");
        };
        assert_eq!(cancelled.status, Status::Cancelled);
        assert_eq!(cancelled.next_attempt_at, None);
        assert_eq!(cancelled.updated_at, T0 + 3);
        assert_eq!(get(store, id).await, *cancelled);
    }
    assert_eq!(claim(store, T0 + 1_000, 10).await, vec![]);
    let again = store.cancel("fresh", T0 + 4).await.unwrap();
    assert_eq!(again, Transition::WrongStatus(Status::Cancelled));
    assert_eq!(
        store.cancel("nope", T0).await.unwrap(),
        Transition::NotFound
    );
}

pub(crate) async fn cancel_refuses_a_running_callout(store: &dyn Store) {
    enqueue(store, callout("c1", "acme", T0)).await;
    let claimed = claim_one(store, T0).await;

    let done = store.cancel("c1", T0 + 1).await.unwrap();

    assert_eq!(done, Transition::WrongStatus(Status::Running));
    assert_eq!(get(store, "c1").await, claimed.callout);
}

// ---------------------------------------------------------------------------------------------
// Connections, listing, counts

pub(crate) async fn delay_connection_moves_due_callouts_of_that_connection(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("a0", "acme", T0 - 1),
            callout("a1", "acme", T0),
            callout("a2", "acme", T0 + 10_000),
            callout("b1", "billing", T0),
        ])
        .await
        .unwrap();
    let running = claim_one(store, T0).await;
    assert_eq!(running.callout.id, "a0");

    let moved = store.delay_connection("acme", T0 + 5_000).await.unwrap();

    assert_eq!(moved, 1);
    assert_eq!(get(store, "a1").await.next_attempt_at, Some(T0 + 5_000));
    assert_eq!(get(store, "a2").await.next_attempt_at, Some(T0 + 10_000));
    assert_eq!(get(store, "b1").await.next_attempt_at, Some(T0));
    assert_eq!(get(store, "a0").await, running.callout);
    assert_eq!(claimed_ids(&claim(store, T0 + 4_999, 10).await), ["b1"]);
    assert_eq!(claimed_ids(&claim(store, T0 + 5_000, 10).await), ["a1"]);
}

pub(crate) async fn list_pages_newest_first(store: &dyn Store) {
    let batch = (1..=5)
        .map(|n| callout(&format!("c{n}"), "acme", T0))
        .collect();
    store.enqueue(batch).await.unwrap();
    let page = |before_id: Option<&str>| ListQuery {
        limit: 2,
        before_id: before_id.map(str::to_owned),
        ..ListQuery::default()
    };

    let first = store.list(&page(None)).await.unwrap();
    let second = store.list(&page(Some("c4"))).await.unwrap();
    let last = store.list(&page(Some("c2"))).await.unwrap();
    let past_the_end = store.list(&page(Some("c1"))).await.unwrap();

    assert_eq!(ids(&first), ["c5", "c4"]);
    assert_eq!(ids(&second), ["c3", "c2"]);
    assert_eq!(ids(&last), ["c1"]);
    assert_eq!(past_the_end, vec![]);
    assert_eq!(first[0], get(store, "c5").await);
    let none = ListQuery {
        limit: 0,
        ..ListQuery::default()
    };
    assert_eq!(store.list(&none).await.unwrap(), vec![]);
}

pub(crate) async fn list_filters_by_status_and_function(store: &dyn Store) {
    store
        .enqueue(vec![
            callout("c1", "acme", T0),
            callout("c2", "billing", T0 + 1),
            callout("c3", "acme", T0 + 2),
            callout("c4", "billing", T0 + 3),
            callout("c5", "acme", T0 + 4),
        ])
        .await
        .unwrap();
    claim(store, T0 + 1, 2).await; // c1 and c2 run
    let query =
        |status: Option<Status>, function: Option<&str>, before_id: Option<&str>| ListQuery {
            status,
            function: function.map(str::to_owned),
            limit: 10,
            before_id: before_id.map(str::to_owned),
        };

    let queued = store
        .list(&query(Some(Status::Queued), None, None))
        .await
        .unwrap();
    let acme = store
        .list(&query(None, Some("acme.send"), None))
        .await
        .unwrap();
    let queued_acme = store
        .list(&query(Some(Status::Queued), Some("acme.send"), None))
        .await
        .unwrap();
    let older_queued_acme = store
        .list(&query(Some(Status::Queued), Some("acme.send"), Some("c5")))
        .await
        .unwrap();
    let running = store
        .list(&query(Some(Status::Running), None, None))
        .await
        .unwrap();

    assert_eq!(ids(&queued), ["c5", "c4", "c3"]);
    assert_eq!(ids(&acme), ["c5", "c3", "c1"]);
    assert_eq!(ids(&queued_acme), ["c5", "c3"]);
    assert_eq!(ids(&older_queued_acme), ["c3"]);
    assert_eq!(ids(&running), ["c2", "c1"]);
}

pub(crate) async fn counts_include_every_status(store: &dyn Store) {
    let zero: Vec<_> = Status::ALL.iter().map(|s| (*s, 0)).collect();
    assert_eq!(store.counts().await.unwrap(), zero);

    let batch = (1..=6)
        .map(|n| callout(&format!("c{n}"), "acme", T0))
        .collect();
    store.enqueue(batch).await.unwrap();
    let claims = claim(store, T0, 4).await; // c1..c4 run
    store
        .finish(vec![
            finish(&claims[0], T0 + 1, Next::Succeeded),
            finish(&claims[1], T0 + 1, Next::Retry { at: T0 + 100 }),
            finish(&claims[2], T0 + 1, Next::Failed),
        ])
        .await
        .unwrap();
    store.cancel("c5", T0 + 2).await.unwrap();

    assert_eq!(
        store.counts().await.unwrap(),
        vec![
            (Status::Queued, 1),
            (Status::Running, 1),
            (Status::Retrying, 1),
            (Status::Succeeded, 1),
            (Status::Failed, 1),
            (Status::Cancelled, 1),
        ]
    );
}

pub(crate) async fn ready_answers_on_an_empty_and_a_full_store(store: &dyn Store) {
    store.ready().await.unwrap();
    let batch = (1..=3)
        .map(|n| callout(&format!("c{n}"), "acme", T0))
        .collect();
    store.enqueue(batch).await.unwrap();
    store.ready().await.unwrap();
}

pub(crate) async fn failover_journals_every_connection_tried_in_order(store: &dyn Store) {
    store
        .enqueue(vec![callout("c1", "acme", T0)])
        .await
        .unwrap();
    let claim = claim_one(store, T0).await;
    let mut item = finish(&claim, T0 + 10, Next::Succeeded);
    item.record.route = 2;
    item.record.connection = "backup_two".to_owned();
    let mut first = record(1, T0, 503, Some("primary is down"));
    first.error_kind = Some("unavailable".to_owned());
    let mut second = record(1, T0 + 3, 0, Some("connection refused"));
    second.route = 1;
    second.connection = "backup_one".to_owned();
    second.http_status = None;
    second.error_kind = Some("connect".to_owned());
    item.earlier = vec![first.clone(), second.clone()];
    let last = item.record.clone();
    assert_eq!(finish_one(store, item).await, Finished::Recorded);
    assert_eq!(
        store.attempts("c1").await.unwrap(),
        vec![first, second, last]
    );
    assert_eq!(get(store, "c1").await.status, Status::Succeeded);
}

pub(crate) async fn tries_out_of_route_order_are_refused(store: &dyn Store) {
    store
        .enqueue(vec![callout("c1", "acme", T0)])
        .await
        .unwrap();
    let claim = claim_one(store, T0).await;
    let mut item = finish(&claim, T0 + 10, Next::Succeeded);
    item.earlier = vec![record(1, T0, 503, Some("down"))];
    // The last try has route 0 too: two tries on the same place of the route.
    assert!(store.finish(vec![item]).await.is_err());
    assert_eq!(get(store, "c1").await.status, Status::Running);
    assert_eq!(store.attempts("c1").await.unwrap(), vec![]);
}

pub(crate) async fn engine_state_is_kept_and_replaced(store: &dyn Store) {
    assert_eq!(store.state("oauth2.refresh_token:crm").await.unwrap(), None);
    store
        .set_state("oauth2.refresh_token:crm", r#"{"token":"one"}"#, T0)
        .await
        .unwrap();
    store
        .set_state("oauth2.refresh_token:erp", r#"{"token":"other"}"#, T0)
        .await
        .unwrap();
    store
        .set_state("oauth2.refresh_token:crm", r#"{"token":"two"}"#, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .state("oauth2.refresh_token:crm")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"token":"two"}"#)
    );
    assert_eq!(
        store
            .state("oauth2.refresh_token:erp")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"token":"other"}"#)
    );
}

// ---------------------------------------------------------------------------------------------
// File references

/// A reference to an upload named `name`, expiring at `expires_at`.
pub(crate) fn file(id: &str, name: Option<&str>, expires_at: Millis) -> FileRecord {
    FileRecord {
        id: id.to_owned(),
        connection: "crm_files".to_owned(),
        bucket: "switchboard-files".to_owned(),
        key: format!("files/{id}"),
        size: 5_368_709_120,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        content_type: "application/pdf".to_owned(),
        name: name.map(str::to_owned),
        origin: "upload".to_owned(),
        created_at: T0,
        expires_at,
    }
}

fn file_ids(files: &[FileRecord]) -> Vec<&str> {
    files.iter().map(|f| f.id.as_str()).collect()
}

pub(crate) async fn file_reference_reads_back_unchanged(store: &dyn Store) {
    let named = file(
        "f1",
        Some("Übersicht 2024 – Zürich (naïve) 日本.pdf"),
        T0 + 86_400_000,
    );
    let offloaded = FileRecord {
        content_type: "application/json".to_owned(),
        size: 0,
        origin: "callout:c1".to_owned(),
        ..file("f2", None, T0 + 1)
    };

    store.insert_file(&named).await.unwrap();
    store.insert_file(&offloaded).await.unwrap();

    assert_eq!(store.file("f1").await.unwrap(), Some(named));
    assert_eq!(store.file("f2").await.unwrap(), Some(offloaded));
    assert_eq!(store.file("nope").await.unwrap(), None);
}

pub(crate) async fn duplicate_file_id_is_refused(store: &dyn Store) {
    let first = file("f1", Some("first.pdf"), T0 + 10);
    store.insert_file(&first).await.unwrap();

    let again = store
        .insert_file(&file("f1", Some("second.pdf"), T0 + 20))
        .await;

    let Err(StoreError::Failed(message)) = again else {
        panic!("expected a duplicate id to fail, got {again:?}");
    };
    assert_eq!(
        message,
        "record file f1: a file with this id exists already"
    );
    assert_eq!(store.file("f1").await.unwrap(), Some(first));
}

pub(crate) async fn expired_files_come_soonest_first_up_to_the_limit(store: &dyn Store) {
    // Inserted out of order; f-b and f-a expire together, so the id decides.
    for record in [
        file("f-later", None, T0 + 1),
        file("f-now", None, T0),
        file("f-b", None, T0 - 10),
        file("f-a", Some("a.txt"), T0 - 10),
    ] {
        store.insert_file(&record).await.unwrap();
    }

    let expired = store.expired_files(T0, 10).await.unwrap();
    let first_two = store.expired_files(T0, 2).await.unwrap();
    let before = store.expired_files(T0 - 1, 10).await.unwrap();
    let none = store.expired_files(T0, 0).await.unwrap();
    let all = store.expired_files(T0 + 1, 10).await.unwrap();

    // Expiring at `now` is expired.
    assert_eq!(file_ids(&expired), ["f-a", "f-b", "f-now"]);
    assert_eq!(file_ids(&first_two), ["f-a", "f-b"]);
    assert_eq!(file_ids(&before), ["f-a", "f-b"]);
    assert_eq!(none, vec![]);
    assert_eq!(file_ids(&all), ["f-a", "f-b", "f-now", "f-later"]);
    assert_eq!(expired[0], file("f-a", Some("a.txt"), T0 - 10));
    assert_eq!(store.expired_files(T0 - 11, 10).await.unwrap(), vec![]);
}

pub(crate) async fn deleted_file_is_forgotten_once(store: &dyn Store) {
    store.insert_file(&file("f1", None, T0)).await.unwrap();
    let kept = file("f2", None, T0);
    store.insert_file(&kept).await.unwrap();

    let first = store.delete_file("f1").await.unwrap();
    let second = store.delete_file("f1").await.unwrap();
    let unknown = store.delete_file("nope").await.unwrap();

    assert_eq!((first, second, unknown), (true, false, false));
    assert_eq!(store.file("f1").await.unwrap(), None);
    assert_eq!(store.file("f2").await.unwrap(), Some(kept.clone()));
    assert_eq!(store.expired_files(T0, 10).await.unwrap(), vec![kept]);
}
