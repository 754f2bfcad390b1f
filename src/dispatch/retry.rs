//! When to retry: exponential backoff with full jitter, bounded by the connection's retry
//! policy, and `Retry-After` when the upstream gave one.

use std::time::Duration;

use rand::Rng;
use switchboard_sdk::CallError;

use crate::metadata::model::RetryPolicy;
use crate::queue::{Callout, Millis, Next};

/// Where a failed attempt leaves its callout.
pub fn next(
    policy: &RetryPolicy,
    callout: &Callout,
    err: &CallError,
    now: Millis,
    cap: Duration,
) -> Next {
    if !err.retryable() || callout.series_attempts >= policy.max_attempts {
        return Next::Failed;
    }
    let delay = match err.retry_after {
        Some(wait) => wait.min(cap),
        None => backoff(policy, callout.series_attempts, &mut rand::rng()),
    };
    let at = now + delay.as_millis() as Millis;
    let age_limit = callout.series_started_at + policy.max_age.as_millis() as Millis;
    if at > age_limit {
        return Next::Failed;
    }
    Next::Retry { at }
}

/// Full jitter: a random delay between zero and `initial * 2^(attempt-1)`, capped.
pub fn backoff(policy: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let ceiling = policy
        .initial_delay
        .saturating_mul(1u32 << exp)
        .min(policy.max_delay);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rng.random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_sdk::ErrorKind;

    fn callout(series_attempts: u32) -> Callout {
        Callout {
            id: "c".into(),
            function: "a.b".into(),
            connection: "a".into(),
            status: crate::queue::Status::Running,
            input: serde_json::json!({}),
            attempts: series_attempts,
            series_attempts,
            series_started_at: 0,
            created_at: 0,
            updated_at: 0,
            next_attempt_at: None,
            idempotency_key: None,
            request_hash: String::new(),
            result: None,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_age: Duration::from_secs(3600),
        };
        let mut rng = rand::rng();
        for attempt in 1..12 {
            let ceiling = Duration::from_secs(1 << (attempt - 1).min(3));
            for _ in 0..200 {
                assert!(backoff(&policy, attempt, &mut rng) <= ceiling);
            }
        }
    }

    #[test]
    fn retries_only_retryable_errors_within_the_policy() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let cap = Duration::from_secs(600);
        let busy = CallError::new(ErrorKind::Unavailable, "503");
        let bad = CallError::new(ErrorKind::Rejected, "400");
        assert!(matches!(
            next(&policy, &callout(1), &busy, 0, cap),
            Next::Retry { .. }
        ));
        assert_eq!(next(&policy, &callout(1), &bad, 0, cap), Next::Failed);
        assert_eq!(next(&policy, &callout(3), &busy, 0, cap), Next::Failed);
        let mut throttled = CallError::new(ErrorKind::Throttled, "429");
        throttled.retry_after = Some(Duration::from_secs(2));
        assert_eq!(
            next(&policy, &callout(1), &throttled, 1_000, cap),
            Next::Retry { at: 3_000 }
        );
        throttled.retry_after = Some(Duration::from_secs(86_400));
        assert_eq!(
            next(&policy, &callout(1), &throttled, 0, cap),
            Next::Retry { at: 600_000 }
        );
        let short = RetryPolicy {
            max_age: Duration::from_secs(1),
            ..policy
        };
        throttled.retry_after = Some(Duration::from_secs(2));
        assert_eq!(next(&short, &callout(1), &throttled, 0, cap), Next::Failed);
    }
}
