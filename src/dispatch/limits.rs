//! Per-connection limits: concurrency, rate and burst (governor), and pauses asked for by the
//! connection (`Retry-After`). State lives across metadata reloads; a connection whose limits
//! change gets new limiters.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metadata::{Connection, Metadata};
use crate::metadata::model::Limits;

/// The limit state of every connection.
#[derive(Default)]
pub struct ConnLimits {
    states: Mutex<HashMap<String, Arc<ConnState>>>,
}

impl ConnLimits {
    /// The state of `conn`, made (or remade, when its limits changed) as needed.
    pub fn state_for(&self, conn: &Connection) -> Arc<ConnState> {
        let Ok(mut states) = self.states.lock() else {
            return Arc::new(ConnState::new(&conn.limits));
        };
        if let Some(state) = states.get(&conn.name)
            && state.limits == conn.limits
        {
            return state.clone();
        }
        let state = Arc::new(ConnState::new(&conn.limits));
        if let Some(old) = states.get(&conn.name)
            && let Ok(paused) = old.paused_until.lock()
            && let Ok(mut new) = state.paused_until.lock()
        {
            *new = *paused;
        }
        states.insert(conn.name.clone(), state.clone());
        state
    }

    /// Connections not to claim for now: paused, at their concurrency, or with a callout
    /// already waiting for the rate limiter.
    pub fn saturated(&self, metadata: &Metadata) -> Vec<String> {
        let Ok(states) = self.states.lock() else { return Vec::new() };
        let now = Instant::now();
        states
            .iter()
            .filter(|(name, state)| metadata.connections.contains_key(*name) && state.is_saturated(now))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One connection's limits and counters.
pub struct ConnState {
    limits: Limits,
    rate: Option<DefaultDirectRateLimiter>,
    concurrency: Option<Arc<Semaphore>>,
    paused_until: Mutex<Option<Instant>>,
    /// Claimed callouts waiting for a limit.
    waiting: AtomicUsize,
    /// Claimed callouts of this connection (waiting or calling).
    active: AtomicUsize,
    /// The concurrency permit of each call in progress, dropped by `done`.
    permits: Mutex<Vec<OwnedSemaphorePermit>>,
}

impl ConnState {
    fn new(limits: &Limits) -> ConnState {
        let rate = limits.rate.and_then(|rate| {
            let period = rate.per.checked_div(1).map(|p| p.as_secs_f64() / rate.count)?;
            let period = Duration::from_secs_f64(period.max(1e-9));
            let burst = NonZeroU32::new(limits.burst.max(1))?;
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
        });
        ConnState {
            limits: limits.clone(),
            rate,
            concurrency: limits.concurrency.map(|c| Arc::new(Semaphore::new(c.max(1) as usize))),
            paused_until: Mutex::new(None),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            permits: Mutex::new(Vec::new()),
        }
    }

    fn is_saturated(&self, now: Instant) -> bool {
        let paused = self.paused_until.lock().ok().and_then(|p| *p).is_some_and(|until| until > now);
        let active = self.active.load(Ordering::SeqCst);
        let at_concurrency = self.limits.concurrency.is_some_and(|c| active >= c as usize);
        let rate_queue = self.rate.is_some() && self.waiting.load(Ordering::SeqCst) > 0;
        paused || at_concurrency || rate_queue
    }

    /// Waits until this connection may make a call: a concurrency slot, no pause, a rate
    /// token. Returns how long it waited. Call [`ConnState::done`] when the call is over.
    pub async fn wait_turn(&self) -> Duration {
        let start = Instant::now();
        self.active.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Some(sem) = &self.concurrency
            && let Ok(permit) = sem.clone().acquire_owned().await
            && let Ok(mut permits) = self.permits.lock()
        {
            permits.push(permit);
        }
        loop {
            self.wait_pause().await;
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            // A pause may have begun while waiting for the rate limiter.
            if !self.is_paused(Instant::now()) {
                break;
            }
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        start.elapsed()
    }

    fn is_paused(&self, now: Instant) -> bool {
        self.paused_until.lock().ok().and_then(|p| *p).is_some_and(|until| until > now)
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

    /// A call of this connection is over.
    pub fn done(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut permits) = self.permits.lock() {
            permits.pop();
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
