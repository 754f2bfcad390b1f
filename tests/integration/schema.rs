//! The editor schema is generated from the Rust types and committed; it must not go stale, and
//! it must accept the metadata we ship.

use std::path::Path;

use switchboard::metadata::{schema::editor_schema, yaml};

use crate::support;

const SNAPSHOT: &str = "docs/metadata.schema.json";

#[test]
fn committed_editor_schema_matches_the_types() {
    let path = support::root().join(SNAPSHOT);
    let generated = editor_schema();
    if std::env::var("SWITCHBOARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).expect("write snapshot");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{SNAPSHOT} is stale: run `SWITCHBOARD_BLESS=1 cargo test --test integration schema` and commit it"
    );
}

#[test]
fn editor_schema_accepts_the_shipped_metadata_and_refuses_a_typo() {
    let schema: serde_json::Value = serde_json::from_str(&editor_schema()).expect("json");
    let validator = jsonschema::validator_for(&schema).expect("the editor schema compiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(support::root().join("metadata")).expect("metadata/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in yaml::parse(&text).expect("yaml") {
            let Some(node) = doc.root else { continue };
            let json = node.to_json();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected shipped metadata to check, found {checked} documents"
    );

    let typo = yaml::parse("connection: a\ntype: rest\nendpoint: https://x.example\nretyr: {}\n")
        .expect("yaml")
        .remove(0)
        .root
        .expect("root")
        .to_json();
    assert!(
        !validator.is_valid(&typo),
        "an unknown key must fail the editor schema"
    );
    let _ = Path::new(SNAPSHOT);
}
