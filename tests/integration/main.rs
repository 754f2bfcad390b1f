//! Integration tests: one binary, one module per capability.

mod support;

mod catalogue;
mod cli;
mod demo;
mod docs;
mod schema;
mod secrets;
