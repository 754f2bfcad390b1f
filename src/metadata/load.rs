//! Loads a metadata folder: every `*.yaml` and `*.yml` below it, several documents a file.
//!
//! Loading never panics on bad input and never stops at the first problem: each file is parsed,
//! each document checked, and the cross-checks (duplicate connection names, fallbacks, the one
//! files bucket) run over all of them. The result is either the whole [`Metadata`] or every [`Problem`], sorted by file and
//! position.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchboard_sdk::ConnectorType;

use super::model::{Connection, FunctionRef, Metadata, Source};
use super::problem::{FieldPath, Problem};
use super::validate::{self, BUILT_IN_TYPES, TypeLookup, is_name};
use super::yaml::{self, Node, Pos};

/// Largest metadata file accepted.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a folder could not be loaded at all (as opposed to metadata with problems).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection type `{name}` is registered twice")]
    DuplicateType { name: String },
    #[error(
        "connection type `{name}` is not a valid type name; expected lowercase letters, digits and underscores"
    )]
    BadTypeName { name: String },
}

/// Loads metadata, with the connection types plugins add.
#[derive(Default)]
pub struct Loader {
    plugins: BTreeMap<&'static str, Box<dyn ConnectorType>>,
}

impl TypeLookup for BTreeMap<&'static str, Box<dyn ConnectorType>> {
    fn get(&self, name: &str) -> Option<&dyn ConnectorType> {
        BTreeMap::get(self, name).map(|b| b.as_ref())
    }

    fn names(&self) -> Vec<&str> {
        self.keys().copied().collect()
    }
}

impl Loader {
    pub fn new() -> Loader {
        Loader::default()
    }

    /// Adds a plugin's connection type.
    ///
    /// # Errors
    /// The name is taken (by a built-in type or another plugin) or is not a valid name.
    pub fn register(&mut self, kind: Box<dyn ConnectorType>) -> Result<(), LoadError> {
        let name = kind.type_name();
        if !is_name(name) {
            return Err(LoadError::BadTypeName {
                name: name.to_string(),
            });
        }
        if BUILT_IN_TYPES.contains(&name) || self.plugins.contains_key(name) {
            return Err(LoadError::DuplicateType {
                name: name.to_string(),
            });
        }
        self.plugins.insert(name, kind);
        Ok(())
    }

    /// The plugin connection type registered under `name`.
    pub fn plugin(&self, name: &str) -> Option<&dyn ConnectorType> {
        self.plugins.get(name).map(|b| b.as_ref())
    }

    /// Loads `path`: a folder (every YAML file below it) or one file.
    ///
    /// # Errors
    /// `Err(LoadError)` when the path cannot be read at all; `Ok(Err(problems))` when the
    /// metadata has problems, every one of them.
    pub fn load(&self, path: &Path) -> Result<Result<Metadata, Vec<Problem>>, LoadError> {
        let files = yaml_files(path)?;
        let mut texts = Vec::with_capacity(files.len());
        for file in files {
            let meta = std::fs::metadata(&file).map_err(|source| LoadError::Read {
                path: file.clone(),
                source,
            })?;
            if meta.len() > MAX_FILE_BYTES {
                texts.push((
                    file,
                    Err(format!(
                        "file is {} bytes; expected at most {MAX_FILE_BYTES} bytes of metadata",
                        meta.len()
                    )),
                ));
                continue;
            }
            let bytes = std::fs::read(&file).map_err(|source| LoadError::Read {
                path: file.clone(),
                source,
            })?;
            match String::from_utf8(bytes) {
                Ok(text) => texts.push((file, Ok(text))),
                Err(_) => texts.push((
                    file,
                    Err("file is not UTF-8 text; expected YAML saved as UTF-8".to_string()),
                )),
            }
        }
        Ok(self.load_texts(texts))
    }

    /// Loads files already read: (name, text or a reason it could not be used).
    pub fn load_texts(
        &self,
        files: Vec<(PathBuf, Result<String, String>)>,
    ) -> Result<Metadata, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut connections: BTreeMap<String, Arc<Connection>> = BTreeMap::new();
        let mut first_seen: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
        // Each function's fallbacks, checked once every connection is known.
        let mut fallbacks: Vec<(PathBuf, Pos, FieldPath, FunctionRef)> = Vec::new();
        // The connection with the first `files:` block, and where that key is.
        let mut files_bucket: Option<(String, PathBuf, Pos)> = None;
        for (file, text) in files {
            let text = match text {
                Ok(text) => text,
                Err(message) => {
                    problems.push(Problem::new(
                        &file,
                        Pos { line: 1, col: 1 },
                        &FieldPath::root(),
                        message,
                    ));
                    continue;
                }
            };
            let docs = match yaml::parse(&text) {
                Ok(docs) => docs,
                Err(err) => {
                    let path = match &err.connection {
                        _ if err.path.is_empty() => FieldPath::root(),
                        Some(name) => FieldPath::root()
                            .key("connections")
                            .key(name)
                            .join(&err.path),
                        None => err.path.clone(),
                    };
                    problems.push(Problem::new(&file, err.pos, &path, err.message));
                    continue;
                }
            };
            for doc in docs {
                let Some(mut node) = doc.root else { continue };
                if node.value == yaml::Value::Null {
                    continue;
                }
                let (prefix, name_pos) = doc_prefix(&node);
                let source = Source {
                    file: file.clone(),
                    pos: name_pos.unwrap_or(node.pos),
                };
                let checked = validate::check_document(&mut node, source, &self.plugins);
                for p in validate::drop_echoes(checked.problems) {
                    let pos = p
                        .pos
                        .unwrap_or_else(|| validate::locate(&node, &p.path, p.at_key));
                    problems.push(Problem::new(&file, pos, &prefix.join(&p.path), p.message));
                }
                let (Some(name), Some(name_pos)) = (
                    node.get("connection").and_then(|e| e.value.as_str()),
                    name_pos,
                ) else {
                    continue;
                };
                if let Some((first_file, first_pos)) = first_seen.get(name) {
                    problems.push(Problem::new(
                        &file,
                        name_pos,
                        &prefix,
                        format!(
                            "duplicate connection name `{name}`; first defined at {}:{}; expected each connection name once",
                            first_file.display(),
                            first_pos
                        ),
                    ));
                    continue;
                }
                first_seen.insert(name.to_string(), (file.clone(), name_pos));
                if let Some(files_pos) = files_key(&node) {
                    match &files_bucket {
                        Some((first, first_file, first_pos)) => problems.push(Problem::new(
                            &file,
                            files_pos,
                            &prefix.key("files"),
                            format!(
                                "a second files bucket: connection `{first}` already has `files:` at {}:{first_pos}; expected `files:` on one s3 connection only",
                                first_file.display()
                            ),
                        )),
                        None => files_bucket = Some((name.to_string(), file.clone(), files_pos)),
                    }
                }
                if let Some(conn) = checked.connection {
                    for (fname, f) in &conn.functions {
                        for (i, target) in f.fallback.iter().enumerate() {
                            let path = FieldPath::root()
                                .key("functions")
                                .key(fname)
                                .key("fallback")
                                .index(i);
                            let pos = validate::locate(&node, &path, false);
                            fallbacks.push((file.clone(), pos, prefix.join(&path), target.clone()));
                        }
                    }
                    connections.insert(conn.name.clone(), Arc::new(conn));
                }
            }
        }
        for (file, pos, path, target) in fallbacks {
            if let Some(message) = fallback_problem(&connections, &path, &target) {
                problems.push(Problem::new(&file, pos, &path, message));
            }
        }
        if problems.is_empty() {
            Ok(Metadata { connections })
        } else {
            problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Err(problems)
        }
    }
}

/// Why a function cannot fall back to `target`, if it cannot: the connection or its function
/// does not exist, or it is the function's own connection. `path` is the entry's,
/// `connections.NAME.functions.FN.fallback[i]`.
fn fallback_problem(
    connections: &BTreeMap<String, Arc<Connection>>,
    path: &FieldPath,
    target: &FunctionRef,
) -> Option<String> {
    let own = path.to_string();
    let own = own.strip_prefix("connections.").unwrap_or(&own);
    if own.split('.').next() == Some(target.connection.as_str()) {
        return Some(format!(
            "`{target}` is on the function's own connection; expected another connection to fall back to"
        ));
    }
    let Some(conn) = connections.get(&target.connection) else {
        let names: Vec<&str> = connections.keys().map(String::as_str).collect();
        return Some(format!(
            "no connection `{}`; expected one of: {}",
            target.connection,
            names.join(", ")
        ));
    };
    if conn.functions.contains_key(&target.function) {
        return None;
    }
    let names: Vec<&str> = conn.functions.keys().map(String::as_str).collect();
    Some(format!(
        "connection `{}` has no function `{}`; expected one of: {}",
        target.connection,
        target.function,
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    ))
}

/// Where an s3 document's `files` key is, if it has a `files:` block.
fn files_key(node: &Node) -> Option<Pos> {
    if node.get("type").and_then(|e| e.value.as_str()) != Some("s3") {
        return None;
    }
    node.get("files")
        .filter(|e| e.value.value != yaml::Value::Null)
        .map(|e| e.key_pos)
}

/// `connections.NAME` for a document (nothing while it has no name), and where its name is.
fn doc_prefix(node: &Node) -> (FieldPath, Option<Pos>) {
    match node.get("connection") {
        Some(entry) => match entry.value.as_str() {
            Some(name) => (
                FieldPath::root().key("connections").key(name),
                Some(entry.value.pos),
            ),
            None => (FieldPath::root(), None),
        },
        None => (FieldPath::root(), None),
    }
}

/// Every YAML file at or below `path`, sorted; hidden files and folders are skipped.
fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound {
            path: path.to_path_buf(),
        },
        _ => LoadError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| LoadError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Read {
                path: dir.clone(),
                source,
            })?;
            let p = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            let kind = entry.file_type().map_err(|source| LoadError::Read {
                path: p.clone(),
                source,
            })?;
            if kind.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}
