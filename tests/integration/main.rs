//! Integration tests: one binary, one module per capability.

mod support;

mod catalogue;
mod cli;
mod docs;
mod schema;
mod secrets;
