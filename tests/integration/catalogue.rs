//! The catalogue of broken metadata: each case is `tests/fixtures/metadata/bad/NAME.yaml` (or a
//! folder `NAME/` of YAML files, for cross-file problems) beside `NAME.expected`, which holds
//! the exact problem lines the loader must print, one a line, in order.
//!
//! With `SWITCHBOARD_BLESS=1` the test writes what the loader prints into the `.expected` files
//! instead of comparing. Read every changed line before committing it: a blessed file is only as
//! right as the loader was when it was written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::support;

/// The catalogue, relative to the project root (where cargo runs the tests).
const BAD: &str = "tests/fixtures/metadata/bad";

/// Fewer cases than this means the catalogue lost files.
const MIN_CASES: usize = 30;

/// Secrets written into cases by mistake, as an admin would: the output must never repeat them.
const SECRETS: &[(&str, &str)] = &[
    ("literal_secret", "sk_live_51HxCanaryDoNotLeak"),
    ("url_with_credentials", "Wint3r-Is-C0ming"),
    ("url_with_credentials", "billing_admin"),
    ("several_problems", "hunter2-canary"),
];

/// One broken file or folder and the file holding its expected problems.
struct Case {
    name: String,
    /// Relative to the project root, so that problems name it the way the expected lines do.
    input: PathBuf,
    expected: PathBuf,
}

/// Every case, or what is wrong with the catalogue's layout.
fn cases(bless: bool) -> (Vec<Case>, Vec<String>) {
    let dir = support::root().join(BAD);
    let mut inputs: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut expected: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut layout = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the catalogue folder exists") {
        let entry = entry.expect("catalogue entry");
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let rel = Path::new(BAD).join(&file_name);
        if entry.file_type().expect("file type").is_dir() {
            inputs.entry(file_name).or_default().push(rel);
        } else if let Some(name) = file_name.strip_suffix(".yaml") {
            inputs.entry(name.to_string()).or_default().push(rel);
        } else if let Some(name) = file_name.strip_suffix(".expected") {
            expected.insert(name.to_string(), rel);
        } else {
            layout.push(format!(
                "{}: not a case; expected NAME.yaml, a folder NAME/ or NAME.expected",
                rel.display()
            ));
        }
    }
    for name in expected.keys() {
        if !inputs.contains_key(name) {
            layout.push(format!(
                "{BAD}/{name}.expected has no {name}.yaml or folder {name}/ beside it"
            ));
        }
    }
    let mut cases = Vec::new();
    for (name, mut paths) in inputs {
        if paths.len() > 1 {
            layout.push(format!(
                "case `{name}` is both {name}.yaml and a folder {name}/; expected one of them"
            ));
            continue;
        }
        let expected_path = Path::new(BAD).join(format!("{name}.expected"));
        if !expected.contains_key(&name) && !bless {
            layout.push(format!(
                "case `{name}` has no {}; run with SWITCHBOARD_BLESS=1 to write it, then check it",
                expected_path.display()
            ));
            continue;
        }
        cases.push(Case {
            name,
            input: paths.remove(0),
            expected: expected_path,
        });
    }
    (cases, layout)
}

/// The expected lines of a case file (a final newline ends the last line, it adds none).
fn read_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    text.lines().map(str::to_string).collect()
}

/// A line diff of `expected` against `actual`: ` ` both, `-` only expected, `+` only actual.
fn diff(expected: &[String], actual: &[String]) -> String {
    // Longest common subsequence, from the end, on lists of a few lines.
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "    {}", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "  - {}", expected[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "  + {}", actual[j]);
            j += 1;
        }
    }
    out.truncate(out.trim_end().len());
    out
}

#[test]
fn every_broken_file_reports_exactly_its_expected_problems() {
    let bless = std::env::var("SWITCHBOARD_BLESS").is_ok_and(|v| v == "1");
    let (cases, mut failures) = cases(bless);
    if cases.len() < MIN_CASES {
        failures.push(format!(
            "the catalogue holds {} cases; expected at least {MIN_CASES}",
            cases.len()
        ));
    }
    for (case, _) in SECRETS {
        if !cases.iter().any(|c| c.name == *case) {
            failures.push(format!(
                "SECRETS names case `{case}`, which is not in the catalogue"
            ));
        }
    }
    let mut blessed = 0;
    for case in &cases {
        let actual = support::problems(&case.input);
        if actual.is_empty() {
            failures.push(format!(
                "case `{}` ({}) loads without problems; expected a broken case",
                case.name,
                case.input.display()
            ));
        }
        for (_, secret) in SECRETS.iter().filter(|(name, _)| *name == case.name) {
            let written = std::fs::read_to_string(&case.input).unwrap_or_default();
            if !written.contains(secret) {
                failures.push(format!(
                    "case `{}` does not contain the secret {secret:?} it is meant to guard",
                    case.name
                ));
            }
            for line in actual.iter().filter(|line| line.contains(secret)) {
                failures.push(format!(
                    "case `{}` repeats a secret in its output: {line}",
                    case.name
                ));
            }
        }
        if bless {
            let mut text = actual.join("\n");
            text.push('\n');
            if std::fs::read_to_string(&case.expected).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&case.expected, text).expect("write the expected file");
                blessed += 1;
            }
            continue;
        }
        let expected = read_lines(&case.expected);
        if expected != actual {
            failures.push(format!(
                "case `{}` ({}) differs from {} (- expected, + actual):\n{}",
                case.name,
                case.input.display(),
                case.expected.display(),
                diff(&expected, &actual)
            ));
        }
    }
    if bless {
        eprintln!(
            "SWITCHBOARD_BLESS=1: rewrote {blessed} of {} expected files; check every changed line",
            cases.len()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of the metadata catalogue's checks failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
