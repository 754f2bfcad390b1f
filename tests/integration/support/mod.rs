//! Helpers shared by the integration tests.

pub mod engine;
pub mod s3;
pub mod serve;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The project root (where `cargo test` runs).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real `switchboard` binary with `args`, from the project root.
pub fn switchboard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the switchboard binary runs")
}

/// Writes `files` (name, text) into a new temporary folder.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
    }
    dir
}

/// Every problem of loading `path`, as printed lines (empty when the metadata is valid).
pub fn problems(path: &Path) -> Vec<String> {
    match switchboard::metadata::Loader::new()
        .load(path)
        .expect("path is readable")
    {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
    }
}

/// `size` pseudo-random bytes (xorshift), the same for the same seed: a chunk lost, doubled or
/// moved on the way changes them.
pub fn payload(size: usize, seed: u32) -> Vec<u8> {
    let mut state = seed | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
