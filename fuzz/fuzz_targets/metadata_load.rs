//! Fuzzes the metadata loader: one YAML file's text, parsed and validated into a connection.
//!
//! The loader must never panic, hang or blow the stack on any text, and must report each
//! problem at a real position (line and column from 1) in the one file it was given.

#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use switchboard::metadata::Loader;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = PathBuf::from("fuzz.yaml");
    match Loader::new().load_texts(vec![(file.clone(), Ok(text.to_string()))]) {
        Ok(metadata) => {
            for (name, connection) in &metadata.connections {
                assert_eq!(
                    name, &connection.name,
                    "a connection is filed under its name"
                );
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "a failed load reports a problem");
            for p in &problems {
                assert_eq!(p.file, file);
                assert!(
                    p.line >= 1 && p.column >= 1,
                    "position {}:{}",
                    p.line,
                    p.column
                );
                assert!(!p.message.is_empty(), "a problem says what is wrong");
                let _ = p.to_string();
            }
        }
    }
});
