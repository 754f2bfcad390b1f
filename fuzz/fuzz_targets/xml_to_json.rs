//! Fuzzes the reading of XML answers (SOAP envelopes): parse, turn into JSON, pick with a
//! pointer, type by a schema; and the escaping of values written into envelopes.
//!
//! Parsing must never panic, recurse without bound or expand an entity. The JSON of a parsed
//! document serialises. Text escaped by `xml::escape` reads back as the same text, in an
//! element and in an attribute, so an input value can never add markup to an envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use switchboard::wrapper::xml;

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = xml::parse(data) {
        let value = xml::to_json(&root);
        let body = xml::children_json(&root);
        assert!(serde_json::to_string(&value).is_ok());
        let schema = json!({
            "type": "object",
            "properties": {
                "id": { "type": "integer" },
                "price": { "type": ["number", "null"] },
                "active": { "type": "boolean" },
                "items": { "type": "array", "items": { "type": "object" } },
            },
        });
        let _ = xml::typed(serde_json::Value::Object(body), &schema);
        for pointer in ["", "/Body", "/Body/0", "/items/0/id", "/@id", "/#text"] {
            let _ = xml::pointer(&value, pointer);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        escaped_text_reads_back(text);
    }
});

fn escaped_text_reads_back(text: &str) {
    let mut escaped = String::new();
    if xml::escape(text, &mut escaped).is_err() {
        return;
    }
    let document = format!("<a b=\"{escaped}\">{escaped}</a>");
    let root = xml::parse(document.as_bytes())
        .unwrap_or_else(|err| panic!("escaped text is not XML: {err}: {document:?}"));
    assert_eq!(root.name, "a");
    assert!(
        root.children.is_empty(),
        "escaped text added elements: {document:?}"
    );
    assert_eq!(root.text, text, "text did not read back: {document:?}");
    assert_eq!(
        root.attributes.len(),
        1,
        "escaped text added attributes: {document:?}"
    );
    assert_eq!(
        root.attributes[0].value, text,
        "attribute did not read back: {document:?}"
    );
}
