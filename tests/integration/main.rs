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
mod files;
mod oauth;
mod offload;
mod pagination;
mod pipeline;
mod s3;
mod s3_peer;
mod schema;
mod secrets;
mod shutdown;
mod soap;
mod templates;
mod wsdl;
