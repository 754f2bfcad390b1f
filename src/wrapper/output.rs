//! What every built-in wrapper does with the data of a successful attempt: the function's
//! output mapping, then its output schema.
//!
//! The mapping picks result fields by JSON Pointer (the whole data without one); the schema
//! check words a mismatch with where it is and what is wrong, values masked, so that an
//! answer's content never reaches a message unredacted.

use serde_json::Value;
use switchboard_sdk::{CallError, ErrorKind};

use super::http::{EXCERPT_CHARS, truncate};
use crate::metadata::model::JsonSchema;

/// The result of `data` by a function's output mapping (field → JSON Pointer); the whole
/// data without one. A pointer that finds nothing gives `null`.
pub(super) fn map_output(output: &[(String, String)], data: Value) -> Value {
    if output.is_empty() {
        return data;
    }
    Value::Object(
        output
            .iter()
            .map(|(field, pointer)| {
                (
                    field.clone(),
                    data.pointer(pointer).cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

/// The error of `data` of `connection.function` that does not match the function's output
/// schema; `None` when it matches. `redact` hides the connection's secret values in the detail.
pub(super) fn schema_mismatch(
    connection: &str,
    function: &str,
    schema: &JsonSchema,
    data: &Value,
    redact: &dyn Fn(&str) -> String,
) -> Option<CallError> {
    if schema.validator.is_valid(data) {
        return None;
    }
    let err = schema.validator.validate(data).err()?;
    let pointer = err.instance_path().as_str().to_string();
    let at = if pointer.is_empty() {
        "the root".to_string()
    } else {
        format!("`{pointer}`")
    };
    let detail = truncate(&redact(&err.masked().to_string()), EXCERPT_CHARS);
    let message = format!(
        "the answer of `{connection}.{function}` does not match its output_schema at {at}: {detail}"
    );
    Some(CallError::new(ErrorKind::InvalidResponse, message))
}
