//! Switchboard: an integration engine for CRMs.
//!
//! Connection metadata in YAML ([`metadata`]) declares endpoints, credentials, limits and
//! named functions; later modules queue and run callouts against them.

pub mod controller;
pub mod demo;
pub mod dispatch;
pub mod engine;
pub mod failpoint;
pub mod import;
pub mod metadata;
pub mod observe;
pub mod offload;
pub mod queue;
pub mod server;
pub mod wrapper;
