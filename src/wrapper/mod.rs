//! Wrappers: the registry of connection types that run callouts, and the built-in ones.
//!
//! A wrapper turns one attempt of a callout ([`switchboard_sdk::Call`]) into an
//! [`switchboard_sdk::Outcome`]. [`build_all`] builds one per connection of a metadata version,
//! from the list in [`registry`]: the REST wrapper ([`rest`]), the SOAP wrapper ([`soap`],
//! which reads answers with [`xml`]), placeholders for the kinds that cannot run callouts yet,
//! and plugins. The REST and SOAP wrappers share credentials, redaction and the exchange
//! bounded by the deadline (the private module `http`). Every request leaves through [`net`],
//! the outbound network policy (no private addresses unless a connection allows them), and is
//! built from the function's [`template`]s, which keep input to data: it can never change where
//! a request goes. Invariants: every connection has a wrapper; building never panics and never
//! reports a secret's value; a call never outlives its deadline.

mod http;
pub mod net;
pub mod oauth;
mod paginate;
pub mod registry;
pub mod rest;
pub mod soap;
pub mod template;
pub mod xml;

#[cfg(test)]
mod tests;

pub use registry::{FailingWrapper, Wrappers, build_all};
pub use rest::RestWrapper;
pub use soap::SoapWrapper;
