//! Wrappers: the registry of connection types that run callouts, and the built-in ones.
//!
//! A wrapper turns one attempt of a callout ([`switchboard_sdk::Call`]) into an
//! [`switchboard_sdk::Outcome`]. [`build_all`] builds one per connection of a metadata version,
//! from the list in [`registry`]: the REST wrapper ([`rest`]), the SOAP wrapper ([`soap`],
//! which reads answers with [`xml`]), the S3 wrapper ([`s3`], on the bucket client of
//! [`crate::offload`]), and plugins. The REST and SOAP wrappers share credentials, redaction
//! the exchange bounded by the deadline (the private module `http`), and the files bucket for
//! large answers and stored request bodies (the private module `files`); every built-in wrapper
//! maps and checks its data the same way (the private module `output`). Every request leaves
//! through [`net`],
//! the outbound network policy (no private addresses unless a connection allows them), and is
//! built from the function's [`template`]s, which keep input to data: it can never change where
//! a request goes. Invariants: every connection has a wrapper; building never panics and never
//! reports a secret's value; a call never outlives its deadline.

mod files;
mod http;
pub mod net;
pub mod oauth;
mod output;
mod paginate;
pub mod registry;
pub mod rest;
pub mod s3;
pub mod soap;
pub mod template;
pub mod xml;

#[cfg(test)]
mod tests;

/// The `Retry-After` parser, for the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub use http::retry_after;
pub use registry::{FailingWrapper, Wrappers, build_all};
pub use rest::RestWrapper;
pub use s3::S3Wrapper;
pub use soap::SoapWrapper;
