//! Connection metadata: the YAML model CRM admins edit, its loading and its validation.
//!
//! Loading runs in three steps: [`yaml`] parses text into positioned nodes; [`de`] and
//! [`config`] read them into the file format's types, collecting every problem; [`validate`]
//! proves the values and builds the [`model`] the engine runs on. [`load`] does this for a
//! folder and adds the cross-checks. [`helpers`] defines the language of request templates, for
//! validation and the wrappers alike. Nothing here does network I/O, and only [`load`] reads
//! files (and [`model::Metadata::check_secrets`], when asked, the environment and secret files).

pub mod config;
pub mod de;
pub mod helpers;
pub mod load;
pub mod model;
pub mod problem;
pub mod schema;
pub mod validate;
pub mod values;
pub mod yaml;

pub use load::{LoadError, Loader};
pub use model::{Connection, Function, Metadata};
pub use problem::Problem;
