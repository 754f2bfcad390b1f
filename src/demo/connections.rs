//! The demo's connection metadata: the files of `metadata/demo/`, built into the binary.
//!
//! The files name their endpoints `http://127.0.0.1:18089`; the demo's upstream binds a free
//! port, so [`write_metadata`] writes the files to a folder with that placeholder replaced by
//! the upstream's real address. Built in, the demo runs from any working directory; a test keeps
//! this list equal to the folder's contents.

use std::net::SocketAddr;
use std::path::Path;

/// The address the files of `metadata/demo/` name, replaced by the upstream's real one.
pub const PLACEHOLDER_ADDR: &str = "127.0.0.1:18089";

/// The files of `metadata/demo/`: (file name, text).
pub const FILES: [(&str, &str); 4] = [
    (
        "loyalty.yaml",
        include_str!("../../metadata/demo/loyalty.yaml"),
    ),
    (
        "shipping.yaml",
        include_str!("../../metadata/demo/shipping.yaml"),
    ),
    (
        "warehouse.yaml",
        include_str!("../../metadata/demo/warehouse.yaml"),
    ),
    (
        "webshop.yaml",
        include_str!("../../metadata/demo/webshop.yaml"),
    ),
];

/// `text` with every endpoint moved from [`PLACEHOLDER_ADDR`] to `upstream`.
pub fn point_at(text: &str, upstream: SocketAddr) -> String {
    text.replace(PLACEHOLDER_ADDR, &upstream.to_string())
}

/// Writes the demo's metadata into `dir` (which must exist), pointed at `upstream`.
///
/// # Errors
/// A file cannot be written.
pub fn write_metadata(dir: &Path, upstream: SocketAddr) -> std::io::Result<()> {
    for (name, text) in FILES {
        std::fs::write(dir.join(name), point_at(text, upstream))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::metadata::Loader;

    fn demo_folder() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("metadata/demo")
    }

    #[test]
    fn the_built_in_files_are_exactly_those_of_metadata_demo() {
        let mut on_disk: Vec<String> = std::fs::read_dir(demo_folder())
            .expect("metadata/demo is readable")
            .map(|entry| {
                entry
                    .expect("a folder entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
            .collect();
        on_disk.sort();
        let built_in: Vec<String> = FILES.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(
            built_in, on_disk,
            "list every file of metadata/demo in demo::connections::FILES"
        );
        for (name, text) in FILES {
            let disk = std::fs::read_to_string(demo_folder().join(name)).expect("readable");
            assert_eq!(text, disk, "{name} differs from the built-in copy");
        }
    }

    #[test]
    fn metadata_demo_validates() {
        let loaded = Loader::new()
            .load(&demo_folder())
            .expect("metadata/demo is readable");
        let metadata = match loaded {
            Ok(metadata) => metadata,
            Err(problems) => {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                panic!("metadata/demo has problems:\n{}", lines.join("\n"));
            }
        };
        let mut names: Vec<&str> = metadata.connections.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["loyalty", "shipping", "warehouse", "webshop"]);
    }

    #[test]
    fn every_endpoint_names_the_placeholder_and_is_moved_to_the_upstream() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 40123));
        for (name, text) in FILES {
            assert!(
                text.contains(&format!("endpoint: http://{PLACEHOLDER_ADDR}/")),
                "{name}"
            );
            let moved = point_at(text, upstream);
            assert!(!moved.contains(PLACEHOLDER_ADDR), "{name}");
            assert!(
                moved.contains("endpoint: http://127.0.0.1:40123/"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_metadata_pointed_at_a_real_port_validates() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 40123));
        let files = FILES
            .iter()
            .map(|(name, text)| (PathBuf::from(name), Ok(point_at(text, upstream))))
            .collect();
        let loaded = Loader::new().load_texts(files);
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }
}
