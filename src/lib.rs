//! Switchboard: an integration engine for CRMs.
//!
//! Connection metadata in YAML ([`metadata`]) declares endpoints, credentials, limits and
//! named functions; later modules queue and run callouts against them.

pub mod metadata;
pub mod queue;
pub mod wrapper;
