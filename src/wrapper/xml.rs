//! XML answers read safely, and turned into JSON.
//!
//! [`parse`] reads a whole document into an [`Element`] tree with quick-xml. It expands no
//! entity of any kind: a document with a DOCTYPE is refused before anything in it is used, and
//! a reference to anything but XML's five predefined entities or a character reference is an
//! error. Elements nest at most [`MAX_DEPTH`] levels; the caller caps the size before parsing.
//! A document that is truncated, not well-formed or not XML at all is an [`XmlError`] that
//! says which.
//!
//! [`to_json`] gives an element its JSON shape, the same everywhere:
//!
//! - names are local names: prefixes and namespaces are dropped, and namespace declarations
//!   (`xmlns`, `xmlns:p`) are not data;
//! - an element with neither attributes nor child elements is its text (a string);
//! - otherwise it is an object: each attribute as `"@name"`, each child element by its name,
//!   the children sharing a name as an array in document order, and text beside children or
//!   attributes, when it is more than white space, as `"#text"`;
//! - `xsi:nil="true"` makes the element `null`; other `xsi:` attributes (`xsi:type`) are
//!   instructions to a schema, not data, and are left out.
//!
//! [`typed`] then gives text the type a JSON Schema declares (`integer`, `number`, `boolean`)
//! and makes a lone element an array where the schema expects one: XML cannot tell one item of
//! a list from a single value.

use serde_json::{Map, Number, Value};

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Deepest nesting of elements read; deeper documents are refused.
pub const MAX_DEPTH: usize = 128;

/// The namespace of `xsi:nil` and `xsi:type`.
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// One element, with names resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// The namespace the element's name is bound to, if any.
    pub namespace: Option<String>,
    /// The local name, without prefix.
    pub name: String,
    /// Attributes other than namespace declarations, values unescaped.
    pub attributes: Vec<Attribute>,
    pub children: Vec<Element>,
    /// The text directly inside the element (CDATA included), references resolved.
    pub text: String,
}

/// One attribute, with its name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub namespace: Option<String>,
    pub name: String,
    pub value: String,
}

impl Element {
    /// The first child element with this namespace and local name.
    pub fn child(&self, namespace: Option<&str>, name: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.name == name && c.namespace.as_deref() == namespace)
    }

    /// The first child element with this local name, in any namespace.
    pub fn child_named(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Whether the element says `xsi:nil="true"`.
    pub fn is_nil(&self) -> bool {
        self.attributes.iter().any(|a| {
            a.namespace.as_deref() == Some(XSI)
                && a.name == "nil"
                && matches!(a.value.trim(), "true" | "1")
        })
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the answer is not UTF-8 text")]
    NotUtf8,
    #[error("the answer is empty; expected an XML document")]
    Empty,
    #[error("the answer is not XML: it starts with {0:?}")]
    NotXml(String),
    #[error("the answer declares a DOCTYPE, which is refused: no DTD or entity is ever read")]
    Doctype,
    #[error("the answer nests elements deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the answer ends before element <{0}> is closed: the XML is truncated")]
    Truncated(String),
    #[error(
        "the answer uses the entity `&{0};`; only XML's predefined entities and character references are read"
    )]
    UnknownEntity(String),
    #[error("the answer is not well-formed XML at byte {at}: {message}")]
    Malformed { at: u64, message: String },
}

/// Reads a whole XML document.
///
/// # Errors
/// The bytes are not UTF-8, not XML, not well-formed, truncated, nested deeper than
/// [`MAX_DEPTH`], declare a DOCTYPE or use an entity other than the predefined ones.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let start = text.trim_start();
    if start.is_empty() {
        return Err(XmlError::Empty);
    }
    if !start.starts_with('<') {
        let head: String = start.chars().take(20).collect();
        return Err(XmlError::NotXml(head));
    }
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let malformed = |at: u64, message: String| XmlError::Malformed { at, message };
    loop {
        let at = reader.buffer_position();
        let (namespace, event) = match reader.read_resolved_event() {
            Ok((resolved, event)) => (namespace_of(&resolved), event),
            Err(err) => return Err(malformed(reader.error_position(), err.to_string())),
        };
        let namespace = namespace.map_err(|m| malformed(at, m))?;
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(malformed(at, "a second root element".to_string()));
            }
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let element = element(&reader, namespace, &e, at)?;
                stack.push(element);
            }
            Event::Empty(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let element = element(&reader, namespace, &e, at)?;
                close(&mut stack, &mut root, element);
            }
            Event::End(_) => match stack.pop() {
                Some(element) => close(&mut stack, &mut root, element),
                None => return Err(malformed(at, "an end tag with no start".to_string())),
            },
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(malformed(at, "text outside the root element".into())),
                }
            }
            Event::CData(c) => match stack.last_mut() {
                Some(top) => top.text.push_str(&c.xml10_content()),
                None => return Err(malformed(at, "CDATA outside the root element".into())),
            },
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    Ok(None) => match r.xml10_content().as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(XmlError::UnknownEntity(other.to_string())),
                    },
                    Err(err) => return Err(malformed(at, err.to_string())),
                };
                match stack.last_mut() {
                    Some(top) => top.text.push(resolved),
                    None => return Err(malformed(at, "a reference outside the root".into())),
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(XmlError::Truncated(open.name.clone()));
                }
                return root.ok_or(XmlError::Empty);
            }
        }
    }
}

fn namespace_of(resolved: &ResolveResult<'_>) -> Result<Option<String>, String> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(ns.as_ref().to_string())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(format!("the prefix `{prefix}` is not declared")),
    }
}

fn element(
    reader: &NsReader<&[u8]>,
    namespace: Option<String>,
    start: &quick_xml::events::BytesStart<'_>,
    at: u64,
) -> Result<Element, XmlError> {
    let malformed = |message: String| XmlError::Malformed { at, message };
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|err| malformed(err.to_string()))?;
        let key = attribute.key.as_ref();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let (resolved, local) = reader.resolver().resolve_attribute(attribute.key);
        let namespace = namespace_of(&resolved).map_err(malformed)?;
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| match err {
                quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                    _,
                    name,
                )) => XmlError::UnknownEntity(name),
                other => malformed(other.to_string()),
            })?;
        attributes.push(Attribute {
            namespace,
            name: local.as_ref().to_string(),
            value: value.into_owned(),
        });
    }
    Ok(Element {
        namespace,
        name: start.local_name().as_ref().to_string(),
        attributes,
        children: Vec::new(),
        text: String::new(),
    })
}

fn close(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// The JSON shape of an element (see the module's documentation).
pub fn to_json(element: &Element) -> Value {
    if element.is_nil() {
        return Value::Null;
    }
    let attributes: Vec<&Attribute> = element
        .attributes
        .iter()
        .filter(|a| a.namespace.as_deref() != Some(XSI))
        .collect();
    if attributes.is_empty() && element.children.is_empty() {
        return Value::String(element.text.clone());
    }
    let mut object = Map::new();
    for a in attributes {
        object.insert(format!("@{}", a.name), Value::String(a.value.clone()));
    }
    object.extend(children_json(element));
    let text = element.text.trim();
    if !text.is_empty() {
        object.insert("#text".to_string(), Value::String(text.to_string()));
    }
    Value::Object(object)
}

/// The child elements of `element` as one JSON object: by name, repeated names as arrays.
pub fn children_json(element: &Element) -> Map<String, Value> {
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for child in &element.children {
        *counts.entry(child.name.as_str()).or_default() += 1;
    }
    let mut object = Map::new();
    for child in &element.children {
        let value = to_json(child);
        if counts.get(child.name.as_str()).copied().unwrap_or(0) > 1 {
            let slot = object
                .entry(child.name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = slot {
                items.push(value);
            }
        } else {
            object.insert(child.name.clone(), value);
        }
    }
    object
}

/// The value at a JSON Pointer, read the way XML needs: where the pointer asks for item `0`
/// of something that is not an array, a lone element, that something is the item.
pub fn pointer<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match current {
            Value::Array(items) => items.get(token.parse::<usize>().ok()?)?,
            Value::Object(map) if map.contains_key(&token) => map.get(&token)?,
            _ if token == "0" => current,
            _ => return None,
        };
    }
    Some(current)
}

/// `value` with text given the types `schema` declares: a string becomes an integer, a
/// number or a boolean where the schema wants one and the text is one (`xsd:boolean` spells
/// `true`, `false`, `1`, `0`); a value where an array is expected becomes an array of one; an
/// empty string becomes `null` where the schema allows `null` and not `string`. Text that does
/// not read as the type is left as it is, for the schema check to report.
pub fn typed(value: Value, schema: &Value) -> Value {
    typed_at(value, schema, 0)
}

fn typed_at(value: Value, schema: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return value;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let wants = |t: &str| types.contains(&t);
    let value = if wants("array") && !value.is_array() && !value.is_null() {
        Value::Array(vec![value])
    } else {
        value
    };
    match value {
        Value::String(text) if !types.is_empty() && !wants("string") => {
            let t = text.trim();
            if t.is_empty() && wants("null") {
                return Value::Null;
            }
            if wants("integer")
                && let Ok(n) = t.parse::<i64>()
            {
                return Value::from(n);
            }
            if wants("integer")
                && let Ok(n) = t.parse::<u64>()
            {
                return Value::from(n);
            }
            if wants("number") && is_decimal(t) {
                if let Ok(n) = t.parse::<i64>() {
                    return Value::from(n);
                }
                if let Some(n) = t.parse::<f64>().ok().and_then(Number::from_f64) {
                    return Value::Number(n);
                }
            }
            if wants("boolean") {
                match t {
                    "true" | "1" => return Value::Bool(true),
                    "false" | "0" => return Value::Bool(false),
                    _ => {}
                }
            }
            Value::String(text)
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = match properties.and_then(|p| p.get(&k)) {
                            Some(sub) => typed_at(v, sub, depth + 1),
                            None => v,
                        };
                        (k, v)
                    })
                    .collect(),
            )
        }
        Value::Array(items) => match schema.get("items") {
            Some(sub) if sub.is_object() => Value::Array(
                items
                    .into_iter()
                    .map(|v| typed_at(v, sub, depth + 1))
                    .collect(),
            ),
            _ => Value::Array(items),
        },
        other => other,
    }
}

/// Whether `text` is a decimal number as XML Schema writes one (`-1.5`, `3`, `2E3`), and not
/// `NaN`, `INF` or hexadecimal, which Rust's float parser would also take.
fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty()
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
}

/// `text` escaped for XML character data and attribute values. Tab, line feed and carriage
/// return are written as character references: a parser turns a raw carriage return into a line
/// feed, and raw white space in an attribute value into spaces, so the value would not arrive
/// as it was.
///
/// # Errors
/// The text holds a character XML 1.0 cannot carry (most control characters), named by its
/// code point.
pub fn escape(text: &str, out: &mut String) -> Result<(), String> {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                return Err(format!("U+{:04X} cannot be written in XML 1.0", c as u32));
            }
            c => out.push(c),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
