//! Integration tests: one binary, one module per capability.

mod support;

mod catalogue;
mod cli;
mod crash;
mod demo;
mod dispatch;
mod docs;
mod pipeline;
mod schema;
mod secrets;
mod shutdown;
mod soap;
mod wsdl;
