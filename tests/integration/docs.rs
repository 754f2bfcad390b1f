//! The shipped metadata and the examples of the metadata reference stay valid.

use crate::support;

#[test]
fn shipped_metadata_is_valid() {
    let out = support::switchboard(&["validate", "metadata"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "`switchboard validate metadata` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every fenced block that starts with ```` ```yaml ```` in `markdown`, in order.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "a ```yaml block is never closed");
    blocks
}

#[test]
fn every_yaml_example_in_the_metadata_reference_is_valid() {
    let path = support::root().join("docs/metadata.md");
    let markdown = std::fs::read_to_string(&path).expect("docs/metadata.md is readable");
    let blocks = yaml_blocks(&markdown);
    assert!(
        blocks.len() >= 5,
        "expected at least 5 ```yaml examples in docs/metadata.md, found {}",
        blocks.len()
    );
    for (index, block) in blocks.iter().enumerate() {
        let dir = support::folder(&[("example.yaml", block)]);
        let problems = support::problems(dir.path());
        assert!(
            problems.is_empty(),
            "```yaml block {index} of docs/metadata.md is not valid metadata:\n{}\n--- the block:\n{block}",
            problems.join("\n")
        );
    }
}

#[test]
fn every_yaml_example_in_the_files_guide_is_valid() {
    let path = support::root().join("docs/files.md");
    let markdown = std::fs::read_to_string(&path).expect("docs/files.md is readable");
    let blocks = yaml_blocks(&markdown);
    assert_eq!(
        blocks.len(),
        2,
        "the files guide shows a files bucket and a REST connection"
    );
    // Together, as one folder: `body_file` needs the files bucket beside it.
    let files: Vec<(String, &str)> = blocks
        .iter()
        .enumerate()
        .map(|(i, block)| (format!("example{i}.yaml"), block.as_str()))
        .collect();
    let named: Vec<(&str, &str)> = files.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let dir = support::folder(&named);
    let problems = support::problems(dir.path());
    assert!(
        problems.is_empty(),
        "the ```yaml blocks of docs/files.md are not valid metadata:\n{}",
        problems.join("\n")
    );
}
