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
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(String, Pos)>,
    },
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

    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: format!("invalid YAML: {}", e.info()),
        })?;
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
                let node = anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    pos,
                    message: "invalid YAML: alias to an unknown anchor".to_string(),
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
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => Some((
                    Node {
                        pos,
                        value: Value::Seq(items),
                    },
                    anchor,
                )),
                _ => {
                    return Err(SyntaxError {
                        pos,
                        message: "invalid YAML: unbalanced list".into(),
                    });
                }
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
                _ => {
                    return Err(SyntaxError {
                        pos,
                        message: "invalid YAML: unbalanced mapping".into(),
                    });
                }
            },
        };
        let Some((node, anchor)) = finished else {
            continue;
        };
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
                        Value::Null => "null".to_string(),
                        _ => {
                            return Err(SyntaxError {
                                pos: node.pos,
                                message: "a mapping key must be a plain value; found a list or mapping used as a key".into(),
                            });
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == text) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{text}`; first given at line {}, column {}",
                                first.key_pos.line, first.key_pos.col
                            ),
                        });
                    }
                    *key = Some((text, node.pos));
                }
                Some((k, key_pos)) => entries.push(Entry {
                    key: k,
                    key_pos,
                    value: node,
                    removed: false,
                }),
            },
        }
    }
    Ok(docs)
}

fn limit_error(pos: Pos) -> SyntaxError {
    SyntaxError {
        pos,
        message: format!(
            "document expands to more than {MAX_NODES} values (aliases included); expected metadata of a sane size"
        ),
    }
}

fn depth_error(pos: Pos) -> SyntaxError {
    SyntaxError {
        pos,
        message: format!("nesting deeper than {MAX_DEPTH} levels; expected flatter metadata"),
    }
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
    if looks_like_float(text) {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
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
    let bad = |what: &str| SyntaxError {
        pos,
        message: format!("{} is not {what}", quote(text)),
    };
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
            return Err(SyntaxError {
                pos,
                message: format!(
                    "unsupported tag `!{other}`; expected plain YAML values without tags"
                ),
            });
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
            "duplicate key `a`; first given at line 1, column 1"
        );
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
            err.message.starts_with("document expands to more than"),
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
