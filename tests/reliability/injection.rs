//! Reliability and security suite: see tests/reliability/harness for the helpers.

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;
