//! The circuit breaker of one connection: stops calling a connection that keeps failing, and
//! lets a probe call through after a while to see whether it has recovered.
//!
//! Closed, it counts the outcomes of the calls that end, in buckets over a sliding `window`;
//! it opens when at least `min_calls` calls ended in the window and at least `failure_ratio`
//! of them failed. Open, it admits no call until `open_for` has passed; then it is half-open
//! and admits at most `half_open_probes` calls at once. The first probe to report decides:
//! a success closes it (the window starts empty), a failure opens it again.
//!
//! Pure: every method takes the time, so tests run on a fake clock. The caller tells the
//! breaker when an admitted call has ended ([`Breaker::ended`], when its place at the
//! connection is given back) and then what came of it ([`Breaker::record`]). Between the two,
//! the outcome is *unreported*: a closed breaker that would open if the unreported outcomes
//! were failures admits no call until they are reported (so the `min_calls`-th failure is
//! the last call made, however quickly the next callout is ready), and a half-open breaker
//! takes the outcome of a probe, not of a call admitted before it opened, as its verdict. An
//! outcome still unreported after [`REPORT_GRACE`] is forgotten, so a lost report (a call
//! abandoned at shutdown) cannot hold the connection.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;
use switchboard_sdk::{CallError, ErrorKind};
use tokio::time::Instant;

use crate::metadata::model::BreakerPolicy;

/// How long an ended call's outcome may stay unreported before it is forgotten.
pub const REPORT_GRACE: Duration = Duration::from_secs(5);

/// Buckets the window is divided into: the window slides by a twentieth of its length.
const BUCKETS: u32 = 20;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Every state, in the order of [`BreakerState::index`].
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::HalfOpen,
        BreakerState::Open,
    ];

    /// The name the API and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `switchboard_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn index(self) -> usize {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// What an outcome means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The service answered: a success, or an answer that shows it is up (a 4xx, a 429, an
    /// answer that does not fit the function).
    Up,
    /// The service could not be reached or failed: connect errors, timeouts, 5xx and 408,
    /// and the engine's own failures during a call.
    Down,
    /// The call never reached the service (the request could not be built, the address was
    /// refused, the metadata changed): it says nothing about it.
    Unknown,
}

/// The breaker's reading of one attempt's result. The only place outcomes are classified.
pub fn verdict(result: &Result<Value, CallError>) -> Verdict {
    let Err(err) = result else {
        return Verdict::Up;
    };
    match err.kind {
        ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::Internal => {
            Verdict::Down
        }
        ErrorKind::Throttled
        | ErrorKind::Rejected
        | ErrorKind::InvalidResponse
        | ErrorKind::ResponseTooLarge
        | ErrorKind::Auth => Verdict::Up,
        ErrorKind::InvalidRequest | ErrorKind::Refused | ErrorKind::Config => Verdict::Unknown,
    }
}

/// What [`Breaker::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Call. `Some(epoch)` for a half-open probe: hand it back to [`Breaker::ended`].
    Call(Option<u64>),
    /// Do not call yet: ask again at this time, or when the breaker changes (`None`: only
    /// then).
    Wait(Option<Instant>),
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// The breaker as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub enabled: bool,
    pub state: BreakerState,
    /// Calls that ended in the window, and how many of them failed. Kept while open and
    /// half-open (the calls that opened it); emptied when it closes.
    pub calls: u32,
    pub failures: u32,
    /// When it last opened, while open or half-open.
    pub opened_at: Option<Instant>,
    /// When it goes half-open, while open.
    pub retry_at: Option<Instant>,
    /// Transitions so far, by the state they led to (indexed by [`BreakerState::index`]).
    pub transitions_to: [u64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    calls: u32,
    failures: u32,
}

/// An ended call whose outcome has not been recorded yet.
#[derive(Debug, Clone, Copy)]
struct Unreported {
    ended: Instant,
    /// A probe of the current half-open spell.
    probe: bool,
}

/// One connection's circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    phase: Phase,
    buckets: VecDeque<Bucket>,
    /// Probes admitted in this half-open spell whose call has not ended.
    calling: u32,
    unreported: VecDeque<Unreported>,
    /// Changes at every transition, so a probe of an earlier spell is not taken for one of
    /// this spell.
    epoch: u64,
    opened_at: Option<Instant>,
    transitions_to: [u64; 3],
    /// Transitions not yet taken by [`Breaker::take_transitions`].
    events: Vec<Transition>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            phase: Phase::Closed,
            buckets: VecDeque::new(),
            calling: 0,
            unreported: VecDeque::new(),
            epoch: 0,
            opened_at: None,
            transitions_to: [0; 3],
            events: Vec::new(),
        }
    }

    /// A closed breaker with `policy` that carries on the transition counts of `earlier`
    /// (the counters of the metrics never go back).
    pub fn succeeding(policy: BreakerPolicy, earlier: &Breaker) -> Breaker {
        let mut breaker = Breaker::new(policy);
        breaker.transitions_to = earlier.transitions_to;
        breaker
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// The state now.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        self.kind()
    }

    /// Whether a call would have to wait for the breaker now: open, or half-open with every
    /// probe place taken. (A closed breaker waiting for unreported outcomes is not blocked:
    /// that wait is a matter of moments.)
    pub fn blocked(&mut self, now: Instant) -> bool {
        if !self.policy.enabled {
            return false;
        }
        self.advance(now);
        match self.phase {
            Phase::Closed => false,
            Phase::Open { .. } => true,
            Phase::HalfOpen => self.probe_places_used() >= self.policy.half_open_probes,
        }
    }

    /// Whether a call may start now. A probe's place is taken at once.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.wait(now) {
            Some(until) => Admit::Wait(until),
            None if self.phase == Phase::HalfOpen => {
                self.calling += 1;
                Admit::Call(Some(self.epoch))
            }
            None => Admit::Call(None),
        }
    }

    /// What [`Breaker::admit`] would answer, without taking a place: `None` when a call may
    /// start now, else until when to wait (`None` inside: until the breaker changes).
    pub fn wait(&mut self, now: Instant) -> Option<Option<Instant>> {
        if !self.policy.enabled {
            return None;
        }
        self.advance(now);
        match self.phase {
            Phase::Closed => {
                let pending = self.unreported.len() as u32;
                let (calls, failures) = self.totals();
                (pending > 0 && self.would_open(calls + pending, failures + pending))
                    .then(|| self.unreported.front().map(|u| u.ended + REPORT_GRACE))
            }
            Phase::Open { until } => Some(Some(until)),
            Phase::HalfOpen => {
                (self.probe_places_used() >= self.policy.half_open_probes).then(|| {
                    self.unreported
                        .iter()
                        .filter(|u| u.probe)
                        .map(|u| u.ended + REPORT_GRACE)
                        .min()
                })
            }
        }
    }

    /// An admitted call has ended (its place at the connection was given back); its outcome
    /// comes next, through [`Breaker::record`]. `probe` is what [`Breaker::admit`] returned.
    pub fn ended(&mut self, probe: Option<u64>, now: Instant) {
        if !self.policy.enabled {
            return;
        }
        let this_spell =
            probe.is_some_and(|epoch| epoch == self.epoch && self.phase == Phase::HalfOpen);
        if this_spell {
            self.calling = self.calling.saturating_sub(1);
        }
        self.unreported.push_back(Unreported {
            ended: now,
            probe: this_spell,
        });
    }

    /// The outcome of an ended call.
    pub fn record(&mut self, verdict: Verdict, now: Instant) {
        if !self.policy.enabled {
            return;
        }
        self.advance(now);
        match self.phase {
            Phase::Closed => {
                self.unreported.pop_front();
                if verdict == Verdict::Unknown {
                    return;
                }
                self.count(verdict == Verdict::Down, now);
                let (calls, failures) = self.totals();
                if self.would_open(calls, failures) {
                    self.open(now);
                }
            }
            // A call admitted before the breaker opened.
            Phase::Open { .. } => {
                self.unreported.pop_front();
            }
            Phase::HalfOpen => {
                let probe = self.unreported.iter().position(|u| u.probe);
                let Some(i) = probe else {
                    // Not a probe: a call admitted before the breaker opened.
                    self.unreported.pop_front();
                    return;
                };
                self.unreported.remove(i);
                match verdict {
                    Verdict::Up => {
                        self.buckets.clear();
                        self.opened_at = None;
                        self.transition(Phase::Closed);
                    }
                    Verdict::Down => self.open(now),
                    // The probe said nothing: its place goes to the next one.
                    Verdict::Unknown => {}
                }
            }
        }
    }

    /// The transitions since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.events)
    }

    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        self.advance(now);
        let (calls, failures) = self.totals();
        Snapshot {
            enabled: self.policy.enabled,
            state: self.kind(),
            calls,
            failures,
            opened_at: self.opened_at,
            retry_at: match self.phase {
                Phase::Open { until } => Some(until),
                _ => None,
            },
            transitions_to: self.transitions_to,
        }
    }

    fn kind(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Moves on what time alone changes: an open breaker whose time is up is half-open;
    /// buckets out of the window and outcomes unreported too long are forgotten.
    fn advance(&mut self, now: Instant) {
        if let Phase::Open { until } = self.phase
            && now >= until
        {
            self.transition(Phase::HalfOpen);
        }
        while self
            .unreported
            .front()
            .is_some_and(|u| now.saturating_duration_since(u.ended) >= REPORT_GRACE)
        {
            self.unreported.pop_front();
        }
        let window = self.policy.window;
        while self
            .buckets
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.start) >= window + self.width())
        {
            self.buckets.pop_front();
        }
    }

    fn width(&self) -> Duration {
        (self.policy.window / BUCKETS).max(Duration::from_millis(1))
    }

    fn count(&mut self, failed: bool, now: Instant) {
        let width = self.width();
        let fits = self
            .buckets
            .back()
            .is_some_and(|b| now.saturating_duration_since(b.start) < width);
        if !fits {
            self.buckets.push_back(Bucket {
                start: now,
                calls: 0,
                failures: 0,
            });
        }
        if let Some(bucket) = self.buckets.back_mut() {
            bucket.calls = bucket.calls.saturating_add(1);
            bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        }
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets.iter().fold((0u32, 0u32), |(c, f), b| {
            (c.saturating_add(b.calls), f.saturating_add(b.failures))
        })
    }

    fn would_open(&self, calls: u32, failures: u32) -> bool {
        calls >= self.policy.min_calls
            && f64::from(failures) >= self.policy.failure_ratio * f64::from(calls)
    }

    fn probe_places_used(&self) -> u32 {
        let reporting = self.unreported.iter().filter(|u| u.probe).count() as u32;
        self.calling + reporting
    }

    fn open(&mut self, now: Instant) {
        self.opened_at = Some(now);
        self.transition(Phase::Open {
            until: now + self.policy.open_for,
        });
    }

    fn transition(&mut self, to: Phase) {
        let from = self.kind();
        self.phase = to;
        let to = self.kind();
        self.epoch += 1;
        self.calling = 0;
        for u in &mut self.unreported {
            u.probe = false;
        }
        self.transitions_to[to.index()] += 1;
        self.events.push(Transition { from, to });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            failure_ratio: 0.5,
            window: Duration::from_secs(60),
            min_calls: 4,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }

    const S: Duration = Duration::from_secs(1);

    /// One call admitted at `now`, ended and reported with `verdict`.
    fn call(b: &mut Breaker, verdict: Verdict, now: Instant) {
        let Admit::Call(probe) = b.admit(now) else {
            panic!("not admitted at {now:?}: {b:?}");
        };
        b.ended(probe, now);
        b.record(verdict, now);
    }

    fn states(transitions: &[Transition]) -> Vec<(&str, &str)> {
        transitions
            .iter()
            .map(|t| (t.from.as_str(), t.to.as_str()))
            .collect()
    }

    #[test]
    fn outcomes_are_classified_by_kind() {
        let err = |kind| Err(CallError::new(kind, "x"));
        assert_eq!(verdict(&Ok(Value::Null)), Verdict::Up);
        for kind in [
            ErrorKind::Connect,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            assert_eq!(verdict(&err(kind)), Verdict::Down, "{kind:?}");
        }
        for kind in [
            ErrorKind::Throttled,
            ErrorKind::Rejected,
            ErrorKind::InvalidResponse,
            ErrorKind::ResponseTooLarge,
            ErrorKind::Auth,
        ] {
            assert_eq!(verdict(&err(kind)), Verdict::Up, "{kind:?}");
        }
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::Refused,
            ErrorKind::Config,
        ] {
            assert_eq!(verdict(&err(kind)), Verdict::Unknown, "{kind:?}");
        }
    }

    #[test]
    fn opens_at_the_ratio_once_min_calls_ended_and_not_before() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        // Three failures are fewer than `min_calls`.
        for i in 0..3 {
            call(&mut b, Verdict::Down, t0 + i * S);
        }
        assert_eq!(b.state(t0 + 3 * S), BreakerState::Closed);
        // The fourth makes 4 of 4.
        call(&mut b, Verdict::Down, t0 + 3 * S);
        assert_eq!(b.state(t0 + 3 * S), BreakerState::Open);
        assert_eq!(states(&b.take_transitions()), [("closed", "open")]);
        let snap = b.snapshot(t0 + 4 * S);
        assert_eq!((snap.calls, snap.failures), (4, 4));
        assert_eq!(snap.opened_at, Some(t0 + 3 * S));
        assert_eq!(snap.retry_at, Some(t0 + 33 * S));
    }

    #[test]
    fn stays_closed_below_the_ratio() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        // 3 failures of 7 calls: below one half.
        // Each time `min_calls` or more have ended, fewer than half failed.
        for (i, v) in [
            Verdict::Up,
            Verdict::Up,
            Verdict::Down,
            Verdict::Up,
            Verdict::Down,
            Verdict::Up,
            Verdict::Down,
        ]
        .into_iter()
        .enumerate()
        {
            call(&mut b, v, t0 + i as u32 * S);
        }
        assert_eq!(b.state(t0 + 7 * S), BreakerState::Closed);
        // An 8th, failed, makes 4 of 8: one half.
        call(&mut b, Verdict::Down, t0 + 7 * S);
        assert_eq!(b.state(t0 + 7 * S), BreakerState::Open);
    }

    #[test]
    fn outcomes_that_say_nothing_are_not_counted() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for i in 0..3 {
            call(&mut b, Verdict::Down, t0 + i * S);
        }
        for i in 3..10 {
            call(&mut b, Verdict::Unknown, t0 + i * S);
        }
        let snap = b.snapshot(t0 + 10 * S);
        assert_eq!(
            (snap.state, snap.calls, snap.failures),
            (BreakerState::Closed, 3, 3)
        );
    }

    #[test]
    fn failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for i in 0..3 {
            call(&mut b, Verdict::Down, t0 + i * S);
        }
        // 70 s later the three failures are out of the 60 s window: one more is 1 of 1.
        call(&mut b, Verdict::Down, t0 + 70 * S);
        let snap = b.snapshot(t0 + 70 * S);
        assert_eq!(
            (snap.state, snap.calls, snap.failures),
            (BreakerState::Closed, 1, 1)
        );
    }

    #[test]
    fn open_admits_nothing_until_open_for_has_passed_then_one_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        assert_eq!(b.admit(t0 + 29 * S), Admit::Wait(Some(t0 + 30 * S)));
        assert!(b.blocked(t0 + 29 * S));
        // Half-open at 30 s: one probe, then the next caller waits for its verdict.
        let probe = b.admit(t0 + 30 * S);
        assert!(matches!(probe, Admit::Call(Some(_))), "{probe:?}");
        assert_eq!(b.state(t0 + 30 * S), BreakerState::HalfOpen);
        assert_eq!(b.admit(t0 + 31 * S), Admit::Wait(None));
        assert!(b.blocked(t0 + 31 * S));
        assert_eq!(
            states(&b.take_transitions()),
            [("closed", "open"), ("open", "half_open")]
        );
    }

    #[test]
    fn a_probe_that_succeeds_closes_with_an_empty_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        call(&mut b, Verdict::Up, t0 + 30 * S);
        let snap = b.snapshot(t0 + 30 * S);
        assert_eq!(snap.state, BreakerState::Closed);
        assert_eq!(
            (snap.calls, snap.failures),
            (0, 0),
            "the window starts empty"
        );
        assert_eq!((snap.opened_at, snap.retry_at), (None, None));
        assert_eq!(snap.transitions_to, [1, 1, 1]);
        assert_eq!(b.admit(t0 + 30 * S), Admit::Call(None));
        assert_eq!(
            states(&b.take_transitions()),
            [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "closed")
            ]
        );
    }

    #[test]
    fn a_probe_that_fails_opens_again_for_open_for() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        call(&mut b, Verdict::Down, t0 + 31 * S);
        assert_eq!(b.admit(t0 + 40 * S), Admit::Wait(Some(t0 + 61 * S)));
        assert_eq!(
            states(&b.take_transitions()),
            [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "open")
            ]
        );
        // The second spell ends like the first.
        call(&mut b, Verdict::Up, t0 + 61 * S);
        assert_eq!(b.state(t0 + 61 * S), BreakerState::Closed);
        assert_eq!(b.snapshot(t0 + 61 * S).transitions_to, [1, 2, 2]);
    }

    #[test]
    fn the_next_call_waits_while_the_outcome_that_would_open_is_unreported() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            call(&mut b, Verdict::Down, t0);
        }
        // The fourth call ended; its outcome, which decides, is not recorded yet.
        assert_eq!(b.admit(t0), Admit::Call(None));
        b.ended(None, t0);
        assert_eq!(b.admit(t0), Admit::Wait(Some(t0 + REPORT_GRACE)));
        assert!(!b.blocked(t0), "a closed breaker is not blocked");
        b.record(Verdict::Down, t0);
        assert_eq!(b.admit(t0), Admit::Wait(Some(t0 + 30 * S)));
        // Far from the threshold, an unreported outcome holds nothing back.
        let mut b = Breaker::new(policy());
        assert_eq!(b.admit(t0), Admit::Call(None));
        b.ended(None, t0);
        assert_eq!(b.admit(t0), Admit::Call(None));
    }

    #[test]
    fn an_outcome_never_reported_is_forgotten_after_the_grace() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            call(&mut b, Verdict::Down, t0);
        }
        assert_eq!(b.admit(t0), Admit::Call(None));
        b.ended(None, t0);
        assert!(matches!(b.admit(t0 + S), Admit::Wait(_)));
        assert_eq!(b.admit(t0 + REPORT_GRACE), Admit::Call(None));
        // A half-open probe abandoned after its call ended gives its place back too.
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        let Admit::Call(probe) = b.admit(t0 + 30 * S) else {
            panic!("no probe")
        };
        b.ended(probe, t0 + 30 * S);
        assert_eq!(
            b.admit(t0 + 31 * S),
            Admit::Wait(Some(t0 + 30 * S + REPORT_GRACE))
        );
        assert!(matches!(
            b.admit(t0 + 30 * S + REPORT_GRACE),
            Admit::Call(Some(_))
        ));
    }

    #[test]
    fn a_call_from_before_the_breaker_opened_does_not_decide_the_half_open_state() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            min_calls: 2,
            ..policy()
        });
        // A slow call is admitted, then two quick ones fail and open the breaker.
        let Admit::Call(slow) = b.admit(t0) else {
            panic!("not admitted")
        };
        call(&mut b, Verdict::Down, t0);
        call(&mut b, Verdict::Down, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        // Half-open: a probe is in flight when the slow call reports a success.
        let Admit::Call(probe) = b.admit(t0 + 30 * S) else {
            panic!("no probe")
        };
        assert!(probe.is_some());
        b.ended(slow, t0 + 31 * S);
        b.record(Verdict::Up, t0 + 31 * S);
        assert_eq!(b.state(t0 + 31 * S), BreakerState::HalfOpen);
        // The probe's failure decides.
        b.ended(probe, t0 + 32 * S);
        b.record(Verdict::Down, t0 + 32 * S);
        assert_eq!(b.state(t0 + 32 * S), BreakerState::Open);
    }

    #[test]
    fn a_probe_that_says_nothing_gives_its_place_to_the_next() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        call(&mut b, Verdict::Unknown, t0 + 30 * S);
        assert_eq!(b.state(t0 + 30 * S), BreakerState::HalfOpen);
        assert!(matches!(b.admit(t0 + 30 * S), Admit::Call(Some(_))));
    }

    #[test]
    fn several_probes_go_at_once_and_the_first_verdict_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            half_open_probes: 2,
            ..policy()
        });
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        let later = t0 + 30 * S;
        let Admit::Call(first) = b.admit(later) else {
            panic!("no first probe")
        };
        let Admit::Call(second) = b.admit(later) else {
            panic!("no second probe")
        };
        assert_eq!(b.admit(later), Admit::Wait(None));
        b.ended(second, later);
        b.record(Verdict::Up, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        // The other probe ends in the closed state and counts as a call there.
        b.ended(first, later);
        b.record(Verdict::Down, later);
        let snap = b.snapshot(later);
        assert_eq!(
            (snap.state, snap.calls, snap.failures),
            (BreakerState::Closed, 1, 1)
        );
    }

    #[test]
    fn a_disabled_breaker_admits_everything_and_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            enabled: false,
            ..policy()
        });
        for _ in 0..20 {
            call(&mut b, Verdict::Down, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(!b.blocked(t0));
        assert!(b.take_transitions().is_empty());
    }

    #[test]
    fn a_successor_keeps_the_transition_counts_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Verdict::Down, t0);
        }
        let mut next = Breaker::succeeding(
            BreakerPolicy {
                min_calls: 10,
                ..policy()
            },
            &b,
        );
        let snap = next.snapshot(t0);
        assert_eq!(snap.state, BreakerState::Closed);
        assert_eq!(snap.transitions_to, [0, 0, 1]);
        assert_eq!(next.policy().min_calls, 10);
    }
}
