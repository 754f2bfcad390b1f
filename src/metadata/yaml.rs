//! YAML text to a tree of positioned nodes.
//!
//! Owns the first loading step: every node and every mapping key keeps the line and column it
//! came from, so that any later check can point at the exact spot. Scalars are resolved with the
//! YAML 1.2 core schema (`null`, `true`, `42`, `1.5`; anything quoted is a string). Aliases are
//! expanded under a node budget and nesting is bounded, so hostile input (a billion laughs, a
//! 10,000-deep list) is an error, not an exhausted machine. Duplicate keys are errors.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::problem::FieldPath;

/// Deepest nesting of mappings and lists accepted in one document.
pub const MAX_DEPTH: usize = 64;
/// Most nodes one file may expand to, counting every copy an alias makes.
pub const MAX_NODES: usize = 200_000;

/// A place in a source file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One YAML value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A mapping entry: the key's text and position, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
    /// Set when a later step has reported this entry and asked to skip it.
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
    /// A list item that a later step has reported and asked to skip.
    Removed,
}

impl Node {
    /// The entry under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key && !e.removed),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The node as JSON, for values that are data rather than configuration (JSON Schemas,
    /// request bodies). Removed entries are left out.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null | Value::Removed => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(
                items
                    .iter()
                    .filter(|n| n.value != Value::Removed)
                    .map(Node::to_json)
                    .collect(),
            ),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .filter(|e| !e.removed)
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// A short description of what the node is, for messages: `a string "ten"`, `a list`.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".to_string(),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int(i) => format!("the number {i}"),
            Value::Float(f) => format!("the number {f}"),
            Value::String(s) => format!("the string {}", quote(s)),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
            Value::Removed => "nothing".to_string(),
        }
    }
}

/// Quotes a value for a message, shortening long ones.
pub fn quote(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{:?}…", cut)
    } else {
        format!("{s:?}")
    }
}

/// A document of a file: its root node (None for an empty document).
#[derive(Debug, Clone)]
pub struct Document {
    pub root: Option<Node>,
    /// Where the document starts, for errors about the document as a whole.
    pub pos: Pos,
}

/// A YAML syntax or limit error, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// Where in the document the error is, as far as the parser got (empty when unknown).
    pub path: FieldPath,
    /// The document's `connection:` name, when it was read before the error.
    pub connection: Option<String>,
}

impl SyntaxError {
    fn at(pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos,
            message: message.into(),
            path: FieldPath::root(),
            connection: None,
        }
    }
}

enum Frame {
    /// `start` is the character index where the collection starts, to tell `[` from a block.
    Seq {
        pos: Pos,
        start: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        start: usize,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(String, Pos)>,
    },
}

/// The path to the value being built: each open mapping's pending key, each list's next index.
fn stack_path(stack: &[Frame]) -> FieldPath {
    let mut path = FieldPath::root();
    for frame in stack {
        match frame {
            Frame::Seq { items, .. } => path = path.index(items.len()),
            Frame::Map {
                key: Some((k, _)), ..
            } => path = path.key(k),
            Frame::Map { key: None, .. } => {}
        }
    }
    path
}

/// The root mapping's `connection:` value, if it has been read.
fn stack_connection(stack: &[Frame]) -> Option<String> {
    match stack.first() {
        Some(Frame::Map { entries, .. }) => entries
            .iter()
            .find(|e| e.key == "connection")
            .and_then(|e| e.value.as_str().map(str::to_string)),
        _ => None,
    }
}

/// Words for the parser's terse messages.
fn explain(info: &str) -> String {
    let hint = if info.contains("did not find expected key") || info.contains("block indentation") {
        "; expected keys of one mapping to line up, indented with spaces"
    } else if info.contains("mapping values are not allowed") {
        "; expected `key: value` on its own line, or a value in quotes if it contains `: `"
    } else {
        ""
    };
    format!("invalid YAML: {info}{hint}")
}

/// Parses every document of `text`.
///
/// # Errors
/// The first syntax error, duplicate key, or exceeded limit, with its position. A file with a
/// syntax error yields no documents: YAML cannot be trusted past a syntax error.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut budget = MAX_NODES;
    let mut doc_pos = Pos { line: 1, col: 1 };
    let mut root: Option<Node> = None;
    // Whether the last scalar was empty (`key:` with nothing after it).
    let mut empty = false;

    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(ev) => ev,
            Err(e) => return Err(scan_error(text, &stack, &e)),
        };
        let pos = Pos::from_span(&span);
        let finished: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                doc_pos = pos;
                anchors.clear();
                root = None;
                None
            }
            Event::DocumentEnd => {
                docs.push(Document {
                    root: root.take(),
                    pos: doc_pos,
                });
                None
            }
            Event::Alias(id) => {
                let node = anchors.get(&id).cloned().ok_or_else(|| {
                    SyntaxError::at(pos, "invalid YAML: alias to an unknown anchor")
                })?;
                let size = count_nodes(&node);
                if size > budget {
                    return Err(limit_error(pos));
                }
                budget -= size;
                Some((
                    Node {
                        pos,
                        value: node.value,
                    },
                    0,
                ))
            }
            Event::Scalar(text, style, anchor, tag) => {
                budget = budget.checked_sub(1).ok_or_else(|| limit_error(pos))?;
                empty = text.is_empty() && style == ScalarStyle::Plain && tag.is_none();
                let value = if tag.is_some() || style != ScalarStyle::Plain {
                    let tagged = tag.as_ref().map(|t| t.suffix.as_str());
                    resolve_tagged(&text, tagged, pos)?
                } else {
                    resolve_plain(&text)
                };
                Some((Node { pos, value }, anchor))
            }
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(depth_error(pos));
                }
                budget = budget.checked_sub(1).ok_or_else(|| limit_error(pos))?;
                stack.push(Frame::Seq {
                    pos,
                    start: span.start.index(),
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(depth_error(pos));
                }
                budget = budget.checked_sub(1).ok_or_else(|| limit_error(pos))?;
                stack.push(Frame::Map {
                    pos,
                    start: span.start.index(),
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    pos, anchor, items, ..
                }) => Some((
                    Node {
                        pos,
                        value: Value::Seq(items),
                    },
                    anchor,
                )),
                _ => return Err(SyntaxError::at(pos, "invalid YAML: unbalanced list")),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => Some((
                    Node {
                        pos,
                        value: Value::Map(entries),
                    },
                    anchor,
                )),
                _ => return Err(SyntaxError::at(pos, "invalid YAML: unbalanced mapping")),
            },
        };
        let Some((mut node, anchor)) = finished else {
            continue;
        };
        let was_empty = std::mem::take(&mut empty);
        // A key about to be set: refuse non-scalar and duplicate keys, with the path.
        if let Some(Frame::Map {
            entries, key: None, ..
        }) = stack.last()
        {
            let text = match &node.value {
                Value::String(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Null => "null".to_string(),
                _ => {
                    return Err(SyntaxError::at(
                        node.pos,
                        "a mapping key must be a plain value; found a list or mapping used as a key",
                    ));
                }
            };
            if let Some(first) = entries.iter().find(|e| e.key == text) {
                let message = format!(
                    "duplicate key `{text}`; expected each key once in a mapping (first given at line {}, column {})",
                    first.key_pos.line, first.key_pos.col
                );
                return Err(SyntaxError {
                    pos: node.pos,
                    message,
                    path: stack_path(&stack).key(&text),
                    connection: stack_connection(&stack),
                });
            }
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let text = match node.value {
                        Value::String(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        _ => "null".to_string(),
                    };
                    *key = Some((text, node.pos));
                }
                Some((k, key_pos)) => {
                    // An empty value (`key:`) sits at its key, where the admin will look.
                    if was_empty {
                        node.pos = key_pos;
                    }
                    entries.push(Entry {
                        key: k,
                        key_pos,
                        value: node,
                        removed: false,
                    })
                }
            },
        }
    }
    Ok(docs)
}

/// A scanner error as a [`SyntaxError`]: a `[` or `{` left open is reported where it opens
/// (the scanner only notices on a later line), a tab where it is.
fn scan_error(text: &str, stack: &[Frame], e: &saphyr_parser::ScanError) -> SyntaxError {
    let mut pos = Pos {
        line: e.marker().line(),
        col: e.marker().col() + 1,
    };
    if e.info().contains("tab") && pos.col > 1 {
        let line = text.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
        if line.chars().nth(pos.col - 2) == Some('\t') {
            pos.col -= 1;
        }
    }
    let path = stack_path(stack);
    let connection = stack_connection(stack);
    for frame in stack.iter().rev() {
        let (fpos, start, open, what, close) = match frame {
            Frame::Seq { pos, start, .. } => (*pos, *start, '[', "list", ']'),
            Frame::Map { pos, start, .. } => (*pos, *start, '{', "mapping", '}'),
        };
        if fpos.line < pos.line && text.chars().nth(start) == Some(open) {
            let message = format!(
                "invalid YAML: this {what} is not closed; expected `{close}` after its last item"
            );
            return SyntaxError {
                pos: fpos,
                message,
                path,
                connection,
            };
        }
    }
    SyntaxError {
        pos,
        message: explain(e.info()),
        path,
        connection,
    }
}

fn limit_error(pos: Pos) -> SyntaxError {
    SyntaxError::at(
        pos,
        format!(
            "file expands to more than {MAX_NODES} values (aliases included); expected metadata of a sane size"
        ),
    )
}

fn depth_error(pos: Pos) -> SyntaxError {
    SyntaxError::at(
        pos,
        format!("nesting deeper than {MAX_DEPTH} levels; expected flatter metadata"),
    )
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|e| 1 + count_nodes(&e.value))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Core-schema resolution of a plain (unquoted, untagged) scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(int) = parse_int(text) {
        return Value::Int(int);
    }
    if looks_like_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    None
}

fn looks_like_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    !body.is_empty()
        && body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

fn resolve_tagged(text: &str, tag: Option<&str>, pos: Pos) -> Result<Value, SyntaxError> {
    let bad = |what: &str| SyntaxError::at(pos, format!("{} is not {what}", quote(text)));
    Ok(match tag {
        None | Some("str") => Value::String(text.to_string()),
        Some("int") => Value::Int(parse_int(text).ok_or_else(|| bad("an integer"))?),
        Some("float") => Value::Float(text.parse().map_err(|_| bad("a number"))?),
        Some("bool") => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        Some("null") => Value::Null,
        Some(other) => {
            return Err(SyntaxError::at(
                pos,
                format!("unsupported tag `!{other}`; expected plain YAML values without tags"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse(text).expect("parses");
        docs.remove(0).root.expect("has a root")
    }

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let node = one("a: 1\nb:\n  c: \"x\"\n");
        let b = node.get("b").expect("b");
        assert_eq!(b.key_pos, Pos { line: 2, col: 1 });
        let c = b.value.get("c").expect("c");
        assert_eq!(c.key_pos, Pos { line: 3, col: 3 });
        assert_eq!(c.value.pos, Pos { line: 3, col: 6 });
        assert_eq!(c.value.value, Value::String("x".into()));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let node = one("a: 10\nb: '10'\nc: 1.5\nd: true\ne: ~\nf: 10/s\ng: 30s\n");
        let v = |k: &str| node.get(k).expect(k).value.value.clone();
        assert_eq!(v("a"), Value::Int(10));
        assert_eq!(v("b"), Value::String("10".into()));
        assert_eq!(v("c"), Value::Float(1.5));
        assert_eq!(v("d"), Value::Bool(true));
        assert_eq!(v("e"), Value::Null);
        assert_eq!(v("f"), Value::String("10/s".into()));
        assert_eq!(v("g"), Value::String("30s".into()));
    }

    #[test]
    fn several_documents_are_kept_apart() {
        let docs = parse("a: 1\n---\nb: 2\n---\n").expect("parses");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].pos.line, 2);
        assert!(docs[2].root.as_ref().is_none_or(|n| n.value == Value::Null));
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_places() {
        let err = parse("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!(err.pos, Pos { line: 3, col: 1 });
        assert_eq!(
            err.message,
            "duplicate key `a`; expected each key once in a mapping (first given at line 1, column 1)"
        );
        assert_eq!(err.path.to_string(), "a");
        let nested =
            parse("connection: billing\nlimits:\n  rate: 1/s\n  rate: 2/s\n").expect_err("dup");
        assert_eq!(nested.path.to_string(), "limits.rate");
        assert_eq!(nested.connection.as_deref(), Some("billing"));
    }

    #[test]
    fn billion_laughs_is_stopped_by_the_node_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text).expect_err("too big");
        assert!(
            err.message.starts_with("file expands to more than"),
            "{}",
            err.message
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut text = String::new();
        for depth in 0..100 {
            text.push_str(&format!("{}k{depth}:\n", "  ".repeat(depth)));
        }
        let err = parse(&text).expect_err("too deep");
        assert_eq!(
            err.message,
            "nesting deeper than 64 levels; expected flatter metadata"
        );
        assert_eq!(err.pos.line, 65);
        // Flow nesting 10,000 deep is stopped by the parser itself.
        let flow = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&flow).is_err());
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").expect_err("bad");
        assert!(err.message.starts_with("invalid YAML: "), "{}", err.message);
        assert!(err.pos.line >= 2);
    }
}
