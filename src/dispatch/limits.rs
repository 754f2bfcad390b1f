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

use crate::metadata::model::Limits;
use crate::metadata::{Connection, Metadata};

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
        let Ok(states) = self.states.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        states
            .iter()
            .filter(|(name, state)| {
                metadata.connections.contains_key(*name) && state.is_saturated(now)
            })
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
}

impl ConnState {
    fn new(limits: &Limits) -> ConnState {
        let rate = limits.rate.and_then(|rate| {
            let period = Duration::from_secs_f64((rate.per.as_secs_f64() / rate.count).max(1e-9));
            let burst = NonZeroU32::new(limits.burst.max(1))?;
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
        });
        ConnState {
            limits: limits.clone(),
            rate,
            concurrency: limits
                .concurrency
                .map(|c| Arc::new(Semaphore::new(c.max(1) as usize))),
            paused_until: Mutex::new(None),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn is_saturated(&self, now: Instant) -> bool {
        let active = self.active.load(Ordering::SeqCst);
        let at_concurrency = self
            .limits
            .concurrency
            .is_some_and(|c| active >= c as usize);
        let rate_queue = self.rate.is_some() && self.waiting.load(Ordering::SeqCst) > 0;
        self.is_paused(now) || at_concurrency || rate_queue
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
    waiting: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Turn {
    /// Waits until the connection may take the call: a concurrency slot, no pause, a rate
    /// token.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future (or the turn) gives back what was taken, except a
    /// rate token already spent.
    pub async fn ready(&mut self) {
        if let Some(sem) = &self.state.concurrency
            && self._permit.is_none()
            && let Ok(permit) = sem.clone().acquire_owned().await
        {
            self._permit = Some(permit);
        }
        // A pause may begin while waiting for the rate limiter: `next_request` checks again.
        self.state.next_request().await;
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
        }
        self.state.active.fetch_sub(1, Ordering::SeqCst);
    }
}
