//! A serde deserializer over positioned YAML nodes that reports every problem.
//!
//! Each error carries the field path and the position of the node it arose at. Serde stops at
//! the first error of a value, so [`from_node`] deserializes again after setting the faulty
//! entry aside (an unknown key, a value of the wrong type), until the value deserializes or no
//! entry can be set aside. A document with three typos thus reports three problems, and the
//! rest of its checks still run on what remains.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

use super::problem::{FieldPath, Seg, suggestion};
use super::yaml::{Entry, Node, Pos, Value};

/// How [`from_node`] may carry on after an error.
#[derive(Debug, Clone, PartialEq)]
enum Recovery {
    /// Nothing can be set aside.
    Stop,
    /// Skip the entry `key` of the mapping at the error's path.
    RemoveKey(String),
    /// Skip the value at the error's path.
    RemoveValue,
    /// A required key is missing from the mapping at the error's path.
    Missing(String),
}

/// A deserialization error with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// Innermost step last; filled in as the error travels outwards.
    path: Vec<Seg>,
    pub pos: Option<Pos>,
    pub message: String,
    /// For an unknown key that looks like a typo: the key it was probably meant to be.
    pub suggested: Option<String>,
    recovery: Recovery,
}

impl DeError {
    pub fn path(&self) -> FieldPath {
        FieldPath(self.path.clone())
    }

    fn at(mut self, pos: Pos) -> DeError {
        self.pos.get_or_insert(pos);
        self
    }

    fn under(mut self, seg: Seg) -> DeError {
        self.path.insert(0, seg);
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: Vec::new(),
            pos: None,
            message: msg.to_string(),
            suggested: None,
            recovery: Recovery::RemoveValue,
        }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let message = format!(
            "found {}; expected {}",
            describe(&unexp),
            expected_phrase(exp)
        );
        DeError {
            path: Vec::new(),
            pos: None,
            message,
            suggested: None,
            recovery: Recovery::RemoveValue,
        }
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let message = format!(
            "{} is not allowed here; expected {}",
            describe(&unexp),
            expected_phrase(exp)
        );
        DeError {
            path: Vec::new(),
            pos: None,
            message,
            suggested: None,
            recovery: Recovery::RemoveValue,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let message = format!(
            "unknown value {variant:?}; {}",
            suggestion(variant, expected)
        );
        DeError {
            path: Vec::new(),
            pos: None,
            message,
            suggested: None,
            recovery: Recovery::RemoveValue,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = format!("unknown key `{field}`; {}", suggestion(field, expected));
        DeError {
            path: Vec::new(),
            pos: None,
            message,
            suggested: super::problem::did_you_mean(field, expected.iter().copied())
                .map(str::to_string),
            recovery: Recovery::RemoveKey(field.to_string()),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            path: Vec::new(),
            pos: None,
            message: format!("missing required key `{field}`; expected `{field}:` in this mapping"),
            suggested: None,
            recovery: Recovery::Missing(field.to_string()),
        }
    }
}

fn describe(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Bool(b) => format!("the boolean {b}"),
        Unexpected::Unsigned(n) => format!("the number {n}"),
        Unexpected::Signed(n) => format!("the number {n}"),
        Unexpected::Float(n) => format!("the number {n}"),
        Unexpected::Str(s) => format!("the string {}", super::yaml::quote(s)),
        Unexpected::Unit => "null".to_string(),
        Unexpected::Seq => "a list".to_string(),
        Unexpected::Map => "a mapping".to_string(),
        other => other.to_string(),
    }
}

/// Turns serde's expectations (`u32`, `struct LimitsConfig`) into words for admins.
fn expected_phrase(exp: &dyn de::Expected) -> String {
    let raw = exp.to_string();
    match raw.as_str() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        _ if raw.starts_with("struct ") || raw.starts_with("a map") => "a mapping".to_string(),
        _ if raw.starts_with("a sequence") => "a list".to_string(),
        _ => raw,
    }
}

/// Deserializes `node`, setting faulty entries aside to find every problem.
///
/// Returns the value when it could be built (possibly without the entries that had problems)
/// and every problem found, each with its path relative to `node`.
pub fn from_node<T: DeserializeOwned>(node: &mut Node) -> (Option<T>, Vec<DeError>) {
    const MAX_ROUNDS: usize = 100;
    let mut errors: Vec<DeError> = Vec::new();
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let err = match T::deserialize(NodeDe(node)) {
            Ok(value) => return (Some(value), errors),
            Err(err) => err,
        };
        match &err.recovery {
            Recovery::Stop => {
                errors.push(err);
                break;
            }
            Recovery::Missing(key) => {
                let mut target = err.path.clone();
                target.push(Seg::Key(key.clone()));
                // A key we set aside for a bad value is "missing" now: already reported.
                if !removed.contains(&target) {
                    errors.push(err);
                }
                break;
            }
            Recovery::RemoveKey(key) => {
                let mut target = err.path.clone();
                target.push(Seg::Key(key.clone()));
                let done = remove(node, &target);
                errors.push(err);
                if !done {
                    break;
                }
                removed.push(target);
            }
            Recovery::RemoveValue => {
                let target = err.path.clone();
                let done = !target.is_empty() && remove(node, &target);
                if errors.last() == Some(&err) {
                    break;
                }
                errors.push(err);
                if !done {
                    break;
                }
                removed.push(target);
            }
        }
    }
    (None, errors)
}

/// Marks the entry at `path` as removed. Returns false when there is no such entry.
fn remove(node: &mut Node, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = node;
    for seg in parents {
        let next = match (seg, &mut cur.value) {
            (Seg::Key(k), Value::Map(entries)) => entries
                .iter_mut()
                .find(|e| &e.key == k && !e.removed)
                .map(|e| &mut e.value),
            (Seg::Index(i), Value::Seq(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, &mut cur.value) {
        (Seg::Key(k), Value::Map(entries)) => {
            match entries.iter_mut().find(|e| &e.key == k && !e.removed) {
                Some(e) => {
                    e.removed = true;
                    true
                }
                None => false,
            }
        }
        (Seg::Index(i), Value::Seq(items)) => match items.get_mut(*i) {
            Some(item) if item.value != Value::Removed => {
                item.value = Value::Removed;
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Deserializes one node.
struct NodeDe<'a>(&'a Node);

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.0;
        let result = match &node.value {
            Value::Null | Value::Removed => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::String(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
            }),
            Value::Map(entries) => visitor.visit_map(Map {
                entries: entries.iter(),
                value: None,
            }),
        };
        result.map_err(|e| e.at(node.pos))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // A number where text is expected is taken as its text (`version: 2`).
        let node = self.0;
        match &node.value {
            Value::Int(i) => visitor
                .visit_string(i.to_string())
                .map_err(|e: DeError| e.at(node.pos)),
            Value::Float(f) => visitor
                .visit_string(f.to_string())
                .map_err(|e: DeError| e.at(node.pos)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.0;
        match node.value {
            Value::Null => visitor.visit_none().map_err(|e: DeError| e.at(node.pos)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.0;
        match &node.value {
            Value::String(s) => visitor
                .visit_enum(UnitVariant(s.as_str()))
                .map_err(|e| e.at(node.pos)),
            // `soap_version: 1.2` is a number to YAML and a name to us.
            Value::Int(_) | Value::Float(_) => {
                let text = match &node.value {
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    _ => String::new(),
                };
                visitor
                    .visit_enum(UnitVariant(text.as_str()))
                    .map_err(|e| e.at(node.pos))
            }
            _ => Err(de::Error::invalid_type(unexpected(node), &visitor))
                .map_err(|e: DeError| e.at(node.pos)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier
    }
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Null | Value::Removed => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(i) => Unexpected::Signed(*i),
        Value::Float(f) => Unexpected::Float(*f),
        Value::String(s) => Unexpected::Str(s),
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

struct Seq<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de, 'a> SeqAccess<'de> for Seq<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        for (i, item) in self.items.by_ref() {
            if item.value == Value::Removed {
                continue;
            }
            return seed
                .deserialize(NodeDe(item))
                .map(Some)
                .map_err(|e| e.at(item.pos).under(Seg::Index(i)));
        }
        Ok(None)
    }
}

struct Map<'a> {
    entries: std::slice::Iter<'a, Entry>,
    value: Option<&'a Entry>,
}

impl<'de, 'a> MapAccess<'de> for Map<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for entry in self.entries.by_ref() {
            if entry.removed {
                continue;
            }
            self.value = Some(entry);
            let key: de::value::StrDeserializer<'_, DeError> =
                entry.key.as_str().into_deserializer();
            return seed
                .deserialize(key)
                .map(Some)
                .map_err(|e| e.at(entry.key_pos));
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else {
            return Err(DeError {
                path: Vec::new(),
                pos: None,
                message: "internal error: value asked for before its key".into(),
                suggested: None,
                recovery: Recovery::Stop,
            });
        };
        seed.deserialize(NodeDe(&entry.value))
            .map_err(|e| e.at(entry.value.pos).under(Seg::Key(entry.key.clone())))
    }
}

struct UnitVariant<'a>(&'a str);

impl<'de, 'a> EnumAccess<'de> for UnitVariant<'a> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let name: de::value::StrDeserializer<'_, DeError> = self.0.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de, 'a> VariantAccess<'de> for UnitVariant<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a mapping",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, DeError> {
        Err(de::Error::invalid_type(Unexpected::UnitVariant, &"a list"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, DeError> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"a mapping",
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::metadata::yaml;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        burst: Option<u32>,
        rate: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conn {
        name: String,
        limits: Option<Limits>,
        retry: Option<u32>,
    }

    fn load(text: &str) -> (Option<Conn>, Vec<DeError>) {
        let mut node = yaml::parse(text)
            .expect("yaml")
            .remove(0)
            .root
            .expect("root");
        from_node::<Conn>(&mut node)
    }

    #[test]
    fn every_problem_is_found_and_the_rest_still_loads() {
        let (conn, errors) = load("name: a\nretyr: 3\nlimits:\n  burst: twenty\n  rtae: 1\n");
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{:?} {}: {}", e.pos.map(|p| p.to_string()), e.path(), e))
            .collect();
        assert_eq!(
            shown,
            vec![
                "Some(\"2:1\") : unknown key `retyr`; did you mean `retry`?".to_string(),
                "Some(\"4:10\") limits.burst: found the string \"twenty\"; expected a whole number"
                    .to_string(),
                "Some(\"5:3\") limits: unknown key `rtae`; did you mean `rate`?".to_string(),
            ]
        );
        let conn = conn.expect("loads without the faulty entries");
        assert_eq!(conn.name, "a");
        assert!(conn.limits.expect("limits").burst.is_none());
    }

    #[test]
    fn missing_key_is_reported_at_the_mapping() {
        let (conn, errors) = load("limits: {}\n");
        assert!(conn.is_none());
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].message,
            "missing required key `name`; expected `name:` in this mapping"
        );
        assert_eq!(errors[0].pos, Some(Pos { line: 1, col: 1 }));
    }

    #[test]
    fn a_bad_required_value_is_reported_once() {
        let (conn, errors) = load("name: [1]\n");
        assert!(conn.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].message, "found a list; expected a string");
    }
}
