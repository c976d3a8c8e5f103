//! A serde `Deserializer` over our located tree.
//!
//! Every error leaves it tagged with the path and line of the innermost node that failed, so
//! the caller can report it, prune that node and try again (see `crate::parse`). Messages
//! describe the expected form and never quote the value, which may be a secret.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};

use super::tree::{Kind, Node};

/// A deserialization error, located once it has crossed a node.
#[derive(Debug)]
pub(crate) struct DeError {
    pub message: String,
    pub path: Option<String>,
    pub line: Option<usize>,
    /// The required key that was absent, for `missing field` errors.
    pub missing_field: Option<&'static str>,
    /// The failing value was already reported (it could not be interpolated).
    pub poisoned: bool,
}

impl DeError {
    fn msg(message: String) -> Self {
        DeError {
            message,
            path: None,
            line: None,
            missing_field: None,
            poisoned: false,
        }
    }

    fn at(mut self, node: &Node) -> Self {
        if self.path.is_none() {
            self.path = Some(node.path.clone());
            self.line = Some(node.line);
            self.poisoned = node.poisoned;
        }
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
        DeError::msg(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError::msg(format!(
            "expected {}, found {}",
            expected(exp),
            describe(&unexp)
        ))
    }

    fn invalid_value(_unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError::msg(format!("invalid value: expected {}", expected(exp)))
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        DeError::msg(format!("expected {}, found {len} items", expected(exp)))
    }

    fn unknown_variant(_variant: &str, allowed: &'static [&'static str]) -> Self {
        DeError::msg(format!("unknown value; expected one of {}", list(allowed)))
    }

    fn unknown_field(field: &str, allowed: &'static [&'static str]) -> Self {
        if allowed.is_empty() {
            DeError::msg(format!("unknown key `{field}`: no keys are allowed here"))
        } else {
            DeError::msg(format!(
                "unknown key `{field}`; allowed keys: {}",
                list(allowed)
            ))
        }
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = DeError::msg(format!("missing required key `{field}`"));
        e.missing_field = Some(field);
        e
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::msg(format!("duplicate key `{field}`"))
    }
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde's own words ("struct RemoteConfig", "u32") mean little to an operator.
fn expected(exp: &dyn Expected) -> String {
    let s = exp.to_string();
    if s.starts_with("struct ") || s == "a map" {
        return "a map of keys".into();
    }
    let max = match s.as_str() {
        "a sequence" => return "a list".into(),
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        _ => return s,
    };
    format!("a whole number from 0 to {max}")
}

fn describe(u: &Unexpected<'_>) -> &'static str {
    match u {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "a number",
        Unexpected::Float(_) => "a decimal number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit | Unexpected::Option => "an empty value",
        Unexpected::Seq => "a list",
        Unexpected::Map => "a map",
        _ => "another kind of value",
    }
}

/// A plain scalar read as the YAML 1.2 core schema reads it.
enum Plain<'a> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(&'a str),
}

fn resolve(value: &str) -> Plain<'_> {
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(value) {
        return match u64::try_from(n) {
            Ok(u) => Plain::Unsigned(u),
            Err(_) => i64::try_from(n).map_or(Plain::Str(value), Plain::Signed),
        };
    }
    let looks_float = value
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && value.bytes().any(|b| b.is_ascii_digit());
    match value.parse::<f64>() {
        Ok(f) if looks_float => Plain::Float(f),
        _ => Plain::Str(value),
    }
}

fn parse_int(v: &str) -> Option<i128> {
    let (neg, digits) = match v.as_bytes().first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = i128::from_str_radix(digits, radix).ok()?;
    Some(if neg { -n } else { n })
}

/// Deserializes one node.
pub(crate) struct NodeDe<'a> {
    node: &'a Node,
}

impl<'a> NodeDe<'a> {
    pub fn new(node: &'a Node) -> Self {
        NodeDe { node }
    }

    fn unexpected(&self) -> Unexpected<'static> {
        match &self.node.kind {
            Kind::Seq(_) => Unexpected::Seq,
            Kind::Map(_) => Unexpected::Map,
            Kind::Scalar { .. } if self.node.is_null() => Unexpected::Unit,
            Kind::Scalar { value, plain: true } => match resolve(value) {
                Plain::Bool(b) => Unexpected::Bool(b),
                Plain::Unsigned(_) | Plain::Signed(_) => Unexpected::Unsigned(0),
                Plain::Float(_) => Unexpected::Float(0.0),
                _ => Unexpected::Str(""),
            },
            Kind::Scalar { .. } => Unexpected::Str(""),
        }
    }

    fn wrong<T>(&self, exp: &dyn Expected) -> Result<T, DeError> {
        Err(de::Error::invalid_type(self.unexpected(), exp))
    }

    fn int<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let n = match &self.node.kind {
            Kind::Scalar { value, .. } => parse_int(value.trim()),
            _ => None,
        };
        match n {
            Some(n) => match u64::try_from(n) {
                Ok(u) => visitor.visit_u64(u),
                Err(_) => match i64::try_from(n) {
                    Ok(i) => visitor.visit_i64(i),
                    Err(_) => Err(DeError::msg("number out of range".into())),
                },
            },
            None => self.wrong(&visitor),
        }
    }

    fn float<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar { value, .. } => match value.trim().parse::<f64>() {
                Ok(f) => visitor.visit_f64(f),
                Err(_) => self.wrong(&visitor),
            },
            _ => self.wrong(&visitor),
        }
    }
}

macro_rules! forward_int {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let node = self.node;
            self.int(visitor).map_err(|e| e.at(node))
        }
    )*};
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        match &node.kind {
            Kind::Scalar { value, plain: true } => match resolve(value) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Unsigned(u) => visitor.visit_u64(u),
                Plain::Signed(i) => visitor.visit_i64(i),
                Plain::Float(f) => visitor.visit_f64(f),
                Plain::Str(s) => visitor.visit_str(s),
            },
            Kind::Scalar { value, .. } => visitor.visit_str(value),
            Kind::Seq(items) => visitor.visit_seq(Seq {
                items: items.iter(),
            }),
            Kind::Map(entries) => visitor.visit_map(Map {
                entries: entries.iter(),
                value: None,
            }),
        }
        .map_err(|e| e.at(node))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let b = match &self.node.kind {
            Kind::Scalar { value, .. } => match value.trim() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        };
        match b {
            Some(b) => visitor.visit_bool(b),
            None => Err(DeError::msg("expected true or false".into())),
        }
        .map_err(|e| e.at(self.node))
    }

    forward_int! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        self.float(visitor).map_err(|e| e.at(node))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        self.float(visitor).map_err(|e| e.at(node))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            // A blank value (`region:`) reads as an empty string: validation says if that is
            // not acceptable, with a better message than a type error.
            Kind::Scalar { .. } if self.node.is_null() => visitor.visit_str(""),
            Kind::Scalar { value, .. } => visitor.visit_str(value),
            _ => self.wrong(&visitor),
        }
        .map_err(|e| e.at(self.node))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.wrong(&visitor).map_err(|e: DeError| e.at(self.node))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none().map_err(|e: DeError| e.at(self.node))
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            self.wrong(&visitor)
        }
        .map_err(|e| e.at(self.node))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.node;
        visitor.visit_newtype_struct(self).map_err(|e| e.at(node))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Seq(items) => visitor.visit_seq(Seq {
                items: items.iter(),
            }),
            // `users:` left blank is an empty list.
            _ if self.node.is_null() => visitor.visit_seq(Seq { items: [].iter() }),
            _ => self.wrong(&visitor),
        }
        .map_err(|e| e.at(self.node))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Map(entries) => visitor.visit_map(Map {
                entries: entries.iter(),
                value: None,
            }),
            // `limits:` left blank means all defaults.
            _ if self.node.is_null() => visitor.visit_map(Map {
                entries: [].iter(),
                value: None,
            }),
            _ => self.wrong(&visitor),
        }
        .map_err(|e| e.at(self.node))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar { value, .. } => {
                let access: de::value::StrDeserializer<'_, DeError> =
                    value.as_str().into_deserializer();
                // Only unit variants exist in the schema.
                visitor.visit_enum(access)
            }
            _ => Err(DeError::msg(format!(
                "expected one of {}, found {}",
                list(variants),
                describe(&self.unexpected())
            ))),
        }
        .map_err(|e| e.at(self.node))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct Seq<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = DeError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed.deserialize(NodeDe::new(node)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'a> {
    entries: std::slice::Iter<'a, (String, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for Map<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, node)) => {
                self.value = Some(node);
                // An unknown key is reported at the entry, so pruning removes the whole entry.
                let key: de::value::StrDeserializer<'_, DeError> = key.as_str().into_deserializer();
                seed.deserialize(key).map(Some).map_err(|e| e.at(node))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let node = self
            .value
            .take()
            .ok_or_else(|| DeError::msg("value without a key".into()))?;
        seed.deserialize(NodeDe::new(node))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}
