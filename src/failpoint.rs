//! A fault-injection hook for the reliability tests: kills the process at a named point.
//!
//! `SWITCHBOARD_FAILPOINT=NAME` in the environment of `switchboard serve` makes the process
//! abort (no destructors, no flushing, no answer — as a `kill -9` would leave it) the first
//! time it reaches the point `NAME`. The variable is read once, at the first point reached.
//! Without it, every point is a load of an initialised `OnceLock` and a comparison.
//!
//! Points:
//!
//! - `enqueue-committed`: an enqueue's transaction committed, before its answer is written
//!   (`tests/reliability/crash.rs` shows the caller's retry with its idempotency key finds the
//!   callout).
//!
//! Not for production use: it exists so that a test can crash the real binary at a point no
//! signal from outside can hit reliably.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const VAR: &str = "SWITCHBOARD_FAILPOINT";

/// An enqueue's transaction committed; its answer is not written yet.
pub const ENQUEUE_COMMITTED: &str = "enqueue-committed";

/// Aborts the process if `SWITCHBOARD_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(VAR).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(point) {
        eprintln!("{VAR}={point}: aborting the process (fault injection)");
        std::process::abort();
    }
}
