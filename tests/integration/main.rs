//! Integration tests: one binary, one module per capability.

mod support;

mod breaker;
mod catalogue;
mod cli;
mod crash;
mod deadlines;
mod demo;
mod dispatch;
mod docs;
mod failover;
mod oauth;
mod pagination;
mod pipeline;
mod schema;
mod secrets;
mod shutdown;
mod soap;
mod templates;
mod wsdl;
