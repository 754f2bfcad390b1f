//! Per-connection limits: concurrency, rate and burst (governor), pauses asked for by the
//! connection (`Retry-After`), and its circuit breaker ([`super::breaker`]). State lives
//! across metadata reloads; a connection whose limits change gets new limiters, and one whose
//! breaker settings change a new, closed breaker (its transition counts carried on). A
//! connection whose breaker is open, or half-open with every probe place taken, is not claimed
//! from, and a claimed callout waits in [`Turn::ready`] until a call may go: callouts wait,
//! they do not fail.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use switchboard_sdk::CallError;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::breaker::{Admit, Breaker, BreakerState, Transition};
use crate::metadata::model::{BreakerPolicy, Limits};
use crate::metadata::{Connection, Metadata};
use crate::queue::Millis;

/// The limit state of every connection.
#[derive(Default)]
pub struct ConnLimits {
    states: Mutex<HashMap<String, Arc<ConnState>>>,
}

impl ConnLimits {
    /// The state of `conn`, made (or remade, when its limits or breaker settings changed) as
    /// needed. A remade state keeps a pause in force, and the breaker too unless its settings
    /// changed.
    pub fn state_for(&self, conn: &Connection) -> Arc<ConnState> {
        let Ok(mut states) = self.states.lock() else {
            return Arc::new(ConnState::new(conn, None));
        };
        if let Some(state) = states.get(&conn.name)
            && state.limits == conn.limits
            && state.breaker.policy == conn.breaker
        {
            return state.clone();
        }
        let state = Arc::new(ConnState::new(
            conn,
            states.get(&conn.name).map(|old| &old.breaker),
        ));
        if let Some(old) = states.get(&conn.name)
            && let Ok(paused) = old.paused_until.lock()
            && let Ok(mut new) = state.paused_until.lock()
        {
            *new = *paused;
        }
        states.insert(conn.name.clone(), state.clone());
        state
    }

    /// Connections not to claim for now: paused, at their concurrency, with a callout
    /// already waiting for the rate limiter, or held by their circuit breaker — except a
    /// connection with functions that fail over, whose callouts are claimed while its breaker
    /// is open (they go to a fallback at once) until one of its callouts waits for it.
    pub fn saturated(&self, metadata: &Metadata) -> Vec<String> {
        let Ok(states) = self.states.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        states
            .iter()
            .filter(|(name, state)| match metadata.connections.get(*name) {
                None => false,
                Some(conn) => {
                    let fails_over = conn.functions.values().any(|f| !f.fallback.is_empty());
                    state.is_saturated(now, fails_over)
                }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One connection's circuit breaker, shared by the states a change of its limits remakes (calls
/// admitted by the old state report to the same breaker).
struct SharedBreaker {
    connection: String,
    /// A copy of the breaker's own, to compare without the lock.
    policy: BreakerPolicy,
    breaker: Mutex<Breaker>,
    /// Wakes callouts waiting for the breaker when it changes or a probe place frees up.
    changed: Notify,
}

impl SharedBreaker {
    fn lock(&self) -> Option<MutexGuard<'_, Breaker>> {
        self.breaker.lock().ok()
    }

    /// Runs `f` on the breaker, then logs its transitions and wakes the waiting callouts if
    /// there was one or if `notify` (`f` may have freed a probe place). `None` only if the
    /// lock was poisoned.
    fn with<T>(&self, notify: bool, f: impl FnOnce(&mut Breaker) -> T) -> Option<T> {
        let (value, transitions) = {
            let mut breaker = self.lock()?;
            let value = f(&mut breaker);
            (value, breaker.take_transitions())
        };
        if notify || !transitions.is_empty() {
            self.changed.notify_waiters();
        }
        for Transition { from, to } in transitions {
            match to {
                BreakerState::Open => {
                    tracing::warn!(connection = %self.connection, from = from.as_str(), retry_in_ms = self.policy.open_for.as_millis() as u64, "circuit breaker opened; callouts of the connection wait")
                }
                BreakerState::HalfOpen => {
                    tracing::info!(connection = %self.connection, "circuit breaker half-open; a probe call goes through")
                }
                BreakerState::Closed => {
                    tracing::info!(connection = %self.connection, "circuit breaker closed; the connection is called again")
                }
            }
        }
        Some(value)
    }
}

/// The circuit breaker of a connection as the API shows it, with times in milliseconds since
/// the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerView {
    pub enabled: bool,
    pub state: BreakerState,
    /// Calls that ended in the window, and how many of them failed.
    pub calls: u32,
    pub failures: u32,
    /// When it last opened, while open or half-open.
    pub opened_at: Option<Millis>,
    /// When it goes half-open, while open.
    pub retry_at: Option<Millis>,
    /// Transitions so far, by the state they led to.
    pub transitions_to: [(BreakerState, u64); 3],
}

impl BreakerView {
    /// Transitions so far, all states together.
    pub fn transitions(&self) -> u64 {
        self.transitions_to.iter().map(|(_, n)| n).sum()
    }
}

/// One connection's limits and counters.
pub struct ConnState {
    limits: Limits,
    breaker: Arc<SharedBreaker>,
    rate: Option<DefaultDirectRateLimiter>,
    concurrency: Option<Arc<Semaphore>>,
    paused_until: Mutex<Option<Instant>>,
    /// Claimed callouts waiting for a limit.
    waiting: AtomicUsize,
    /// Claimed callouts of this connection (waiting or calling).
    active: AtomicUsize,
}

impl ConnState {
    /// The state of `conn`, sharing `previous` (the breaker of the state it replaces) when
    /// the breaker settings are the same.
    fn new(conn: &Connection, previous: Option<&Arc<SharedBreaker>>) -> ConnState {
        let limits = &conn.limits;
        let breaker = match previous {
            Some(old) if old.policy == conn.breaker => old.clone(),
            _ => {
                let breaker = match previous.and_then(|old| old.lock()) {
                    Some(old) => Breaker::succeeding(conn.breaker.clone(), &old),
                    None => Breaker::new(conn.breaker.clone()),
                };
                Arc::new(SharedBreaker {
                    connection: conn.name.clone(),
                    policy: conn.breaker.clone(),
                    breaker: Mutex::new(breaker),
                    changed: Notify::new(),
                })
            }
        };
        let rate = limits.rate.and_then(|rate| {
            let period = Duration::from_secs_f64((rate.per.as_secs_f64() / rate.count).max(1e-9));
            let burst = NonZeroU32::new(limits.burst.max(1))?;
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
        });
        ConnState {
            limits: limits.clone(),
            breaker,
            rate,
            concurrency: limits
                .concurrency
                .map(|c| Arc::new(Semaphore::new(c.max(1) as usize))),
            paused_until: Mutex::new(None),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    /// Whether not to claim this connection's callouts now; `fails_over` when some of its
    /// functions have fallbacks (see [`ConnLimits::saturated`]).
    fn is_saturated(&self, now: Instant, fails_over: bool) -> bool {
        let active = self.active.load(Ordering::SeqCst);
        let at_concurrency = self
            .limits
            .concurrency
            .is_some_and(|c| active >= c as usize);
        let waiting = self.waiting.load(Ordering::SeqCst) > 0;
        let rate_queue = self.rate.is_some() && waiting;
        // With fallbacks, a pause or an open breaker stops claims only once a callout waits
        // for the connection: the others go to a fallback.
        let held = (self.is_paused(now) || self.breaker_blocked(now)) && (!fails_over || waiting);
        at_concurrency || rate_queue || held
    }

    /// Counts the outcome of a call this connection made: call it right after the call's
    /// [`Turn`] is dropped, with nothing awaited in between. While the breaker is half-open,
    /// a probe's outcome decides whether it closes or opens again.
    pub fn record(&self, result: &Result<serde_json::Value, CallError>) {
        self.record_at(result, Instant::now());
    }

    fn record_at(&self, result: &Result<serde_json::Value, CallError>, now: Instant) {
        let verdict = super::breaker::verdict(result);
        self.breaker.with(true, |b| b.record(verdict, now));
    }

    /// Whether a call to this connection would have to wait for its circuit breaker now: it
    /// is open, or half-open with every probe place taken.
    pub fn breaker_open(&self) -> bool {
        self.breaker_blocked(Instant::now())
    }

    fn breaker_blocked(&self, now: Instant) -> bool {
        self.breaker
            .with(false, |b| b.blocked(now))
            .unwrap_or(false)
    }

    /// The breaker now, with times on the wall clock (`now_ms` is the wall clock at `now`).
    pub fn breaker_view(&self, now: Instant, now_ms: Millis) -> BreakerView {
        let snapshot = self.breaker.with(false, |b| b.snapshot(now));
        let Some(s) = snapshot else {
            return BreakerView {
                enabled: self.breaker.policy.enabled,
                state: BreakerState::Closed,
                calls: 0,
                failures: 0,
                opened_at: None,
                retry_at: None,
                transitions_to: BreakerState::ALL.map(|state| (state, 0)),
            };
        };
        // Rounded down in both directions, so that two times `open_for` apart are shown
        // exactly that far apart.
        let wall = |at: Instant| -> Millis {
            if at >= now {
                now_ms.saturating_add(at.duration_since(now).as_millis() as Millis)
            } else {
                let before = now.duration_since(at).as_nanos().div_ceil(1_000_000);
                now_ms.saturating_sub(before as Millis)
            }
        };
        BreakerView {
            enabled: s.enabled,
            state: s.state,
            calls: s.calls,
            failures: s.failures,
            opened_at: s.opened_at.map(wall),
            retry_at: s.retry_at.map(wall),
            transitions_to: BreakerState::ALL.map(|state| (state, s.transitions_to[state.index()])),
        }
    }

    /// Waits until the breaker would let a call go (or an unreported outcome it waits for
    /// has been forgotten); takes nothing.
    async fn wait_breaker(&self) {
        loop {
            let changed = self.breaker.changed.notified();
            tokio::pin!(changed);
            // Registered before the look, so a change between the two is not missed.
            changed.as_mut().enable();
            match self
                .breaker
                .with(false, |b| b.wait(Instant::now()))
                .flatten()
            {
                None => return,
                Some(Some(until)) => {
                    tokio::select! {
                        _ = &mut changed => {},
                        _ = tokio::time::sleep_until(until) => {},
                    }
                }
                Some(None) => changed.await,
            }
        }
    }

    /// Takes the breaker's leave to call now: `Some(probe)` (see [`Admit::Call`]) or `None`
    /// when the call must wait again.
    fn admit(&self) -> Option<Option<u64>> {
        match self.breaker.with(false, |b| b.admit(Instant::now())) {
            None => Some(None),
            Some(Admit::Call(probe)) => Some(probe),
            Some(Admit::Wait(_)) => None,
        }
    }

    /// A call admitted by [`ConnState::admit`] has ended.
    fn ended(&self, probe: Option<u64>) {
        self.breaker.with(false, |b| b.ended(probe, Instant::now()));
    }

    /// A claimed callout of this connection starts waiting for its turn. The returned
    /// [`Turn`] keeps the counters right however it ends (dropped while waiting, or after
    /// its call).
    pub fn enter(self: &Arc<Self>) -> Turn {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Turn {
            state: self.clone(),
            waiting: true,
            probe: None,
            _permit: None,
        }
    }

    /// Waits for the end of a pause and for a rate token: what one more request of an
    /// attempt already under way needs (see [`ConnPace`]).
    async fn next_request(&self) {
        loop {
            self.wait_pause().await;
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            if !self.is_paused(Instant::now()) {
                return;
            }
        }
    }

    /// Whether the connection asked for a pause (`Retry-After`) that is not over.
    pub fn paused(&self) -> bool {
        self.is_paused(Instant::now())
    }

    fn is_paused(&self, now: Instant) -> bool {
        self.paused_until
            .lock()
            .ok()
            .and_then(|p| *p)
            .is_some_and(|until| until > now)
    }

    async fn wait_pause(&self) {
        loop {
            let until = self.paused_until.lock().ok().and_then(|p| *p);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// No call to this connection for `wait` (it asked, with `Retry-After`).
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        if let Ok(mut paused) = self.paused_until.lock() {
            *paused = Some(paused.map_or(until, |p| p.max(until)));
        }
    }
}

/// Paces the requests of an attempt after its first (the pages of a paginated function) by
/// the connection's rate and pauses; its concurrency slot is already held by the attempt.
pub struct ConnPace(pub Arc<ConnState>);

#[async_trait::async_trait]
impl switchboard_sdk::Pace for ConnPace {
    async fn next_request(&self) {
        self.0.next_request().await;
    }
}

/// One claimed callout's place at its connection: waiting, then calling.
pub struct Turn {
    state: Arc<ConnState>,
    /// Not admitted yet: [`Turn::ready`] has not returned.
    waiting: bool,
    /// The breaker's probe ticket, when admitted as a half-open probe.
    probe: Option<u64>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Turn {
    /// Waits until the connection may take the call: a concurrency slot, a closed breaker
    /// (or a free probe place while it is half-open), no pause, a rate token. Once it has
    /// returned, the call is taken as made: drop the turn when it has ended, then report its
    /// outcome with [`ConnState::record`].
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future (or the turn) gives back what was taken, except a
    /// rate token already spent. The breaker's leave is taken last, with nothing awaited
    /// after it.
    pub async fn ready(&mut self) {
        if !self.waiting {
            return;
        }
        if let Some(sem) = &self.state.concurrency
            && self._permit.is_none()
            && let Ok(permit) = sem.clone().acquire_owned().await
        {
            self._permit = Some(permit);
        }
        loop {
            self.state.wait_breaker().await;
            // A pause may begin while waiting for the rate limiter: `next_request` checks
            // again.
            self.state.next_request().await;
            // The breaker may have opened while this callout waited for a token.
            if let Some(probe) = self.state.admit() {
                self.probe = probe;
                break;
            }
        }
        if self.waiting {
            self.waiting = false;
            self.state.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.waiting {
            self.state.waiting.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.state.ended(self.probe);
        }
        self.state.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use switchboard_sdk::ErrorKind;

    use super::*;
    use crate::metadata::Loader;

    /// The connection `shop` with `extra` YAML lines (limits, breaker).
    fn shop(extra: &str) -> Arc<Connection> {
        let text = format!(
            "connection: shop\ntype: rest\nendpoint: https://shop.example.com\n{extra}functions:\n  ping: {{ path: /ping }}\n"
        );
        let metadata = Loader::new()
            .load_texts(vec![(PathBuf::from("shop.yaml"), Ok(text))])
            .expect("valid metadata");
        metadata.connections["shop"].clone()
    }

    const BREAKER: &str = "limits: { concurrency: 1 }\nbreaker: { min_calls: 2, open_for: 10s }\n";

    fn down() -> Result<serde_json::Value, CallError> {
        Err(CallError::new(ErrorKind::Unavailable, "503"))
    }

    /// Whether `ready` completes without waiting.
    async fn ready_at_once(turn: &mut Turn) -> bool {
        let ready = turn.ready();
        tokio::pin!(ready);
        tokio::select! {
            biased;
            _ = &mut ready => true,
            _ = std::future::ready(()) => false,
        }
    }

    /// Makes one call through a turn with `result`.
    async fn call(state: &Arc<ConnState>, result: Result<serde_json::Value, CallError>) {
        let mut turn = state.enter();
        assert!(ready_at_once(&mut turn).await, "the call had to wait");
        drop(turn);
        state.record(&result);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_saturates_the_connection_and_holds_turns_until_a_probe_may_go() {
        let limits = ConnLimits::default();
        let conn = shop(BREAKER);
        let state = limits.state_for(&conn);
        let metadata = Metadata {
            connections: [("shop".to_string(), conn.clone())].into(),
        };
        call(&state, down()).await;
        assert!(!state.breaker_open());
        call(&state, down()).await;
        assert!(state.breaker_open());
        assert_eq!(limits.saturated(&metadata), ["shop"]);

        // A claimed callout waits, not fails, while the breaker is open.
        let mut turn = state.enter();
        assert!(!ready_at_once(&mut turn).await);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!ready_at_once(&mut turn).await);
        tokio::time::advance(Duration::from_millis(1)).await;
        let waited = tokio::time::timeout(Duration::from_millis(1), turn.ready()).await;
        assert!(waited.is_ok(), "the probe did not go after `open_for`");
        // The probe holds the only place: the connection stays saturated, another waits.
        assert!(state.breaker_open());
        assert_eq!(limits.saturated(&metadata), ["shop"]);
        let mut next = state.enter();
        assert!(!ready_at_once(&mut next).await);
        assert_eq!(
            state.breaker_view(Instant::now(), 0).state,
            BreakerState::HalfOpen
        );

        // The probe succeeds: closed, the waiting callout goes at once.
        drop(turn);
        state.record(&Ok(serde_json::Value::Null));
        let waited = tokio::time::timeout(Duration::from_millis(1), next.ready()).await;
        assert!(
            waited.is_ok(),
            "the waiting callout did not go after the close"
        );
        drop(next);
        let view = state.breaker_view(Instant::now(), 1_000_000);
        assert_eq!((view.state, view.transitions()), (BreakerState::Closed, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_callout_waits_for_the_outcome_that_opens_the_breaker() {
        let limits = ConnLimits::default();
        let state = limits.state_for(&shop(BREAKER));
        call(&state, down()).await;
        // The second call ends; before its outcome is recorded, the next one is held.
        let mut turn = state.enter();
        assert!(ready_at_once(&mut turn).await);
        drop(turn);
        let mut next = state.enter();
        assert!(!ready_at_once(&mut next).await);
        state.record(&down());
        assert!(!ready_at_once(&mut next).await, "the breaker opened");
        assert!(state.breaker_open());
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_shows_times_on_the_wall_clock() {
        let limits = ConnLimits::default();
        let state = limits.state_for(&shop(BREAKER));
        call(&state, down()).await;
        call(&state, down()).await;
        tokio::time::advance(Duration::from_secs(4)).await;
        let view = state.breaker_view(Instant::now(), 100_000);
        assert_eq!(view.state, BreakerState::Open);
        assert_eq!((view.calls, view.failures), (2, 2));
        assert_eq!(view.opened_at, Some(96_000));
        assert_eq!(view.retry_at, Some(106_000));
        assert_eq!(
            view.transitions_to,
            [
                (BreakerState::Closed, 0),
                (BreakerState::HalfOpen, 0),
                (BreakerState::Open, 1)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_breaker_unless_its_settings_change() {
        let limits = ConnLimits::default();
        let state = limits.state_for(&shop(BREAKER));
        call(&state, down()).await;
        call(&state, down()).await;
        // New limits, same breaker settings: still open.
        let relimited =
            shop("limits: { concurrency: 2 }\nbreaker: { min_calls: 2, open_for: 10s }\n");
        let remade = limits.state_for(&relimited);
        assert!(!Arc::ptr_eq(&state, &remade));
        assert!(remade.breaker_open());
        // New breaker settings: closed again, transitions counted on.
        let retuned =
            shop("limits: { concurrency: 2 }\nbreaker: { min_calls: 3, open_for: 10s }\n");
        let fresh = limits.state_for(&retuned);
        assert!(!fresh.breaker_open());
        let view = fresh.breaker_view(Instant::now(), 0);
        assert_eq!((view.state, view.transitions()), (BreakerState::Closed, 1));
        // Turned off: never opens.
        let off = limits.state_for(&shop("breaker: { enabled: false }\n"));
        for _ in 0..10 {
            call(&off, down()).await;
        }
        assert!(!off.breaker_open());
    }
}
