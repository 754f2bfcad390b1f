//! The editor schema: a JSON Schema of the metadata format, generated from [`super::config`].
//!
//! Committed as `docs/metadata.schema.json`; a test fails when it is stale. Editors that speak
//! the YAML language server protocol use it for completion and checking.

use schemars::generate::SchemaSettings;

use super::config::{RestConnectionConfig, S3ConnectionConfig, SoapConnectionConfig};

/// The schema of one metadata document (one connection), as pretty JSON with a final newline.
pub fn editor_schema() -> String {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let rest = generator.subschema_for::<RestConnectionConfig>();
    let soap = generator.subschema_for::<SoapConnectionConfig>();
    let s3 = generator.subschema_for::<S3ConnectionConfig>();
    let defs = generator.take_definitions(true);
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://switchboard.dev/metadata.schema.json",
        "title": "Switchboard connection metadata",
        "description": "One YAML document is one connection. Several documents may share a file, separated by `---`.",
        "oneOf": [rest, soap, s3],
        "$defs": defs,
    });
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
