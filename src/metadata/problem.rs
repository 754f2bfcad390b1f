//! Problems found in metadata, and the field paths that locate them.
//!
//! Every check, serde's or ours, ends as a [`Problem`]: a file, a position, a field path and a
//! message that says what is wrong and what was expected. They print compiler-style:
//! `metadata/billing.yaml:14:12: connections.billing.limits.rate: "ten" is not a rate; expected ...`.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::yaml::Pos;

/// One step of a field path: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `connections.billing.limits.rate` or `...required[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    /// This path with one more key.
    pub fn key(&self, key: &str) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        FieldPath(segs)
    }

    /// This path with one more list index.
    pub fn index(&self, i: usize) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        FieldPath(segs)
    }

    /// This path followed by `rest`.
    pub fn join(&self, rest: &FieldPath) -> FieldPath {
        let mut segs = self.0.clone();
        segs.extend(rest.0.iter().cloned());
        FieldPath(segs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One thing wrong with the metadata, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file, as it was named to the loader.
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The field path, like `connections.billing.limits.rate`; empty for file-level problems.
    pub path: String,
    /// What is wrong, then `; ` and what was expected.
    pub message: String,
}

impl Problem {
    pub fn new(
        file: impl Into<PathBuf>,
        pos: Pos,
        path: &FieldPath,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            file: file.into(),
            line: pos.line,
            column: pos.col,
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A problem found by a pure check, before it is given a file and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// Where the problem is, relative to the value that was checked.
    pub path: FieldPath,
    /// Whether to point at the key of the last path step rather than its value.
    pub at_key: bool,
    /// The position, when the check already knows it; otherwise it is looked up by path.
    pub pos: Option<Pos>,
    /// For a missing required key: its name (so that a key set aside for a bad value is not
    /// reported a second time as missing).
    pub missing_key: Option<String>,
    /// For an unknown key that looks like a typo: the key it was probably meant to be (so that
    /// key is not also reported as missing).
    pub suggested: Option<String>,
    pub message: String,
}

impl FieldProblem {
    /// A problem with the value at `path`.
    pub fn at(path: FieldPath, message: impl Into<String>) -> FieldProblem {
        FieldProblem {
            path,
            at_key: false,
            pos: None,
            missing_key: None,
            suggested: None,
            message: message.into(),
        }
    }

    /// A problem with the key at the end of `path` (a key that does not belong there).
    pub fn at_key(path: FieldPath, message: impl Into<String>) -> FieldProblem {
        FieldProblem {
            at_key: true,
            ..FieldProblem::at(path, message)
        }
    }

    /// The mapping at `path` lacks the required key `key`.
    pub fn missing(path: FieldPath, key: &str, message: impl Into<String>) -> FieldProblem {
        FieldProblem {
            missing_key: Some(key.to_string()),
            ..FieldProblem::at(path, message)
        }
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lc = word.to_lowercase();
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    // A shortened or lengthened key (`initial` for `initial_delay`) is a likely mistake too.
    if word_lc.len() >= 4
        && let Some(c) = candidates.iter().find(|c| {
            let c = c.to_lowercase();
            c.starts_with(&word_lc) || word_lc.starts_with(&c)
        })
    {
        return Some(c);
    }
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word_lc, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` or `; expected one of `a`, `b`` for an unknown name.
pub fn suggestion(word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("expected one of {}", list(candidates)),
    }
}

/// `a`, `b`, `c` for a message.
pub fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_letters_find_the_key() {
        assert_eq!(
            did_you_mean("retyr", ["retry", "limits", "auth"]),
            Some("retry")
        );
        assert_eq!(
            did_you_mean("endpiont", ["endpoint", "auth"]),
            Some("endpoint")
        );
        assert_eq!(did_you_mean("zzz", ["retry", "limits"]), None);
    }

    #[test]
    fn paths_print_dotted_with_indexes() {
        let p = FieldPath::root()
            .key("connections")
            .key("billing")
            .key("required")
            .index(0);
        assert_eq!(p.to_string(), "connections.billing.required[0]");
    }
}
