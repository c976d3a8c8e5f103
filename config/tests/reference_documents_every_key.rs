//! docs/configuration.md documents every key of the schema, and no key the schema lacks.
//!
//! The list of keys is not written here: it is read from the schema itself. [`schema_keys`]
//! drives `Config`'s own `Deserialize` implementation with a tracing deserializer that
//! records the field list serde hands to `deserialize_struct` (the very list the real
//! deserializer uses to refuse unknown keys) and descends into every field, option, list
//! item and map value. A key added to, renamed in or removed from `config/src/schema/`
//! changes that list, and this test fails until the reference follows.
//!
//! The reference is read from its key tables: Markdown tables whose header's first cell is
//! `Key`, one row per key, the key written in backquotes as its full dotted path
//! (`limits.ban.threshold`, `remotes[].timeouts.connect`, `users[].permissions`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use bucketgate_config::{load_str_with_env, Config};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::Deserialize;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("config/ has a parent folder")
        .to_path_buf()
}

fn reference() -> String {
    let path = repo_root().join("docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The schema's keys, from the schema.

/// Every key path `Config` accepts: `sftp`, `sftp.listen`, `remotes`, `remotes[].name`,
/// `remotes[].timeouts.connect`... (`[]` stands for any list item).
fn schema_keys() -> BTreeSet<String> {
    let keys = RefCell::new(BTreeSet::new());
    let mut skip = BTreeSet::new();
    // A value the tracer cannot make up (a listen address built from a sample string, a
    // section whose keys contradict each other) fails; its keys are already recorded, so
    // the next pass steps around it and goes on with its siblings. Each pass skips one more
    // path, so this ends.
    loop {
        let tracer = Tracer {
            keys: &keys,
            skip: &skip,
            path: String::new(),
        };
        match Config::deserialize(tracer) {
            Ok(_) => break,
            Err(e) => {
                let path = e.path.unwrap_or_default();
                assert!(
                    !path.is_empty() && skip.insert(path.clone()),
                    "tracing the schema failed at `{path}`: {}",
                    e.message
                );
            }
        }
    }
    keys.into_inner()
}

#[derive(Debug)]
struct TraceError {
    message: String,
    /// The innermost path that failed.
    path: Option<String>,
}

impl TraceError {
    fn at(mut self, path: &str) -> Self {
        self.path.get_or_insert_with(|| path.to_owned());
        self
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError {
            message: msg.to_string(),
            path: None,
        }
    }
}

/// A deserializer that offers a sample of whatever is asked for, and records struct fields.
#[derive(Clone)]
struct Tracer<'a> {
    keys: &'a RefCell<BTreeSet<String>>,
    skip: &'a BTreeSet<String>,
    path: String,
}

/// Strings are offered as this: it is a valid path, name, IP address and network.
const SAMPLE: &str = "127.0.0.1";

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'a> Tracer<'a> {
    fn at(&self, path: String) -> Self {
        Tracer {
            keys: self.keys,
            skip: self.skip,
            path,
        }
    }

    fn record(&self, fields: &'static [&'static str]) {
        let mut keys = self.keys.borrow_mut();
        for f in fields {
            keys.insert(child(&self.path, f));
        }
    }
}

macro_rules! offer {
    ($($method:ident => $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                visitor.$visit::<TraceError>($($value)?).map_err(|e| e.at(&self.path))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    offer! {
        // Durations, sizes and port ranges are read with `deserialize_any`; 0 is one of each.
        deserialize_any => visit_u64(0);
        deserialize_bool => visit_bool(false);
        deserialize_i8 => visit_i64(1);
        deserialize_i16 => visit_i64(1);
        deserialize_i32 => visit_i64(1);
        deserialize_i64 => visit_i64(1);
        deserialize_i128 => visit_i64(1);
        deserialize_u8 => visit_u64(1);
        deserialize_u16 => visit_u64(1);
        deserialize_u32 => visit_u64(1);
        deserialize_u64 => visit_u64(1);
        deserialize_u128 => visit_u64(1);
        deserialize_f32 => visit_f64(1.0);
        deserialize_f64 => visit_f64(1.0);
        deserialize_char => visit_char('x');
        deserialize_str => visit_str(SAMPLE);
        deserialize_string => visit_str(SAMPLE);
        deserialize_identifier => visit_str(SAMPLE);
        deserialize_bytes => visit_bytes(SAMPLE.as_bytes());
        deserialize_byte_buf => visit_bytes(SAMPLE.as_bytes());
        deserialize_unit => visit_unit();
        deserialize_ignored_any => visit_unit();
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let path = self.path.clone();
        visitor.visit_some(self).map_err(|e| e.at(&path))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let path = self.path.clone();
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&path))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let item = format!("{}[]", self.path);
        let access = OneItem {
            tracer: (!self.skip.contains(&item)).then(|| self.at(item)),
        };
        visitor.visit_seq(access).map_err(|e| e.at(&self.path))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    /// A map with free-form keys (`users[].permissions`): its keys are data, not schema;
    /// one entry is offered so that a struct inside the values would still be found.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let value = child(&self.path, "*");
        let entry = (!self.skip.contains(&value)).then(|| (self.at(String::new()), self.at(value)));
        visitor
            .visit_map(OneEntry { entry, value: None })
            .map_err(|e| e.at(&self.path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(fields);
        let path = self.path.clone();
        visitor
            .visit_map(Fields::new(self, fields))
            .map_err(|e| e.at(&path))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let path = self.path.clone();
        visitor
            .visit_enum(FirstVariant {
                tracer: self,
                name: variants.first().copied().unwrap_or_default(),
            })
            .map_err(|e| e.at(&path))
    }
}

/// A list of one item, or of none when that item is skipped.
struct OneItem<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> SeqAccess<'de> for OneItem<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        match self.tracer.take() {
            Some(t) => seed.deserialize(t).map(Some),
            None => Ok(None),
        }
    }
}

/// A free-form map of one entry.
struct OneEntry<'a> {
    entry: Option<(Tracer<'a>, Tracer<'a>)>,
    value: Option<Tracer<'a>>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        match self.entry.take() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        seed.deserialize(self.value.take().expect("a key came first"))
    }
}

/// A struct's map: every field, in order, except those skipped.
struct Fields<'a> {
    tracer: Tracer<'a>,
    pending: std::vec::IntoIter<(&'static str, String)>,
    value: Option<String>,
}

impl<'a> Fields<'a> {
    fn new(tracer: Tracer<'a>, fields: &'static [&'static str]) -> Self {
        let pending: Vec<(&'static str, String)> = fields
            .iter()
            .map(|f| (*f, child(&tracer.path, f)))
            .filter(|(_, path)| !tracer.skip.contains(path))
            .collect();
        Fields {
            tracer,
            pending: pending.into_iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        match self.pending.next() {
            Some((name, path)) => {
                self.value = Some(path);
                let key: de::value::StrDeserializer<'_, TraceError> = name.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        let path = self.value.take().expect("a key came first");
        let tracer = self.tracer.at(path.clone());
        seed.deserialize(tracer).map_err(|e| e.at(&path))
    }
}

/// An enum value: its first variant.
struct FirstVariant<'a> {
    tracer: Tracer<'a>,
    name: &'static str,
}

impl<'a, 'de> EnumAccess<'de> for FirstVariant<'a> {
    type Error = TraceError;
    type Variant = Tracer<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Tracer<'a>), TraceError> {
        let name: de::value::StrDeserializer<'_, TraceError> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.tracer))
    }
}

impl<'de> VariantAccess<'de> for Tracer<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_struct("", fields, visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// The reference's keys, from its key tables.

/// One row of a key table: the key and its other cells (type, default, meaning).
struct Row {
    line: usize,
    cells: Vec<String>,
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    // `\|` inside a cell is a literal bar, not a separator.
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().expect("one cell").push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().expect("one cell").push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// The rows of the tables whose header's first cell is `Key`, by key (several rows for one
/// key are kept, to be reported).
fn documented_keys(doc: &str) -> BTreeMap<String, Vec<Row>> {
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut in_table = false;
    let mut key_table = false;
    let mut fenced = false;
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("```") {
            fenced = !fenced;
            in_table = false;
            continue;
        }
        if fenced || !t.starts_with('|') {
            in_table = false;
            continue;
        }
        let row = cells(t);
        if !in_table {
            in_table = true;
            key_table = row.first().is_some_and(|c| c == "Key");
            continue;
        }
        let separator = row
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')));
        if !key_table || separator {
            continue;
        }
        let first = &row[0];
        let key = first
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or(first)
            .to_owned();
        out.entry(key).or_default().push(Row {
            line: i + 1,
            cells: row,
        });
    }
    out
}

#[test]
fn the_schema_walk_finds_nested_keys() {
    // A handful of anchors, only to prove that the walk reaches every kind of place (a
    // nested section, a list item's nested section, a free-form map, an optional section,
    // the hand-written `storage` deserializer); the full list comes from the schema.
    let keys = schema_keys();
    for k in [
        "sftp.listen",
        "ftp.tls.mode",
        "limits.ban.threshold",
        "remotes[].timeouts.connect",
        "users[].permissions",
        "storage.type",
        "storage.root",
        "syncs[].exclude",
    ] {
        assert!(keys.contains(k), "the schema walk missed `{k}`: {keys:#?}");
    }
    assert!(keys.len() > 60, "suspiciously few keys: {keys:#?}");
}

#[test]
fn reference_documents_every_key() {
    let schema = schema_keys();
    let doc = reference();
    let documented = documented_keys(&doc);

    let mut problems = Vec::new();
    for key in &schema {
        if !documented.contains_key(key) {
            problems.push(format!(
                "`{key}` is a key of the schema but has no row in a `Key` table"
            ));
        }
    }
    for (key, rows) in &documented {
        let lines: Vec<String> = rows.iter().map(|r| r.line.to_string()).collect();
        let lines = lines.join(", ");
        if !schema.contains(key) {
            problems.push(format!(
                "`{key}` (line {lines}) is documented but the schema has no such key"
            ));
        }
        if rows.len() > 1 {
            problems.push(format!(
                "`{key}` is documented more than once (lines {lines})"
            ));
        }
        for r in rows {
            if !r.cells[0].starts_with('`') {
                problems.push(format!(
                    "line {}: write the key in backquotes: `{key}`",
                    r.line
                ));
            }
            if r.cells.len() < 4 || r.cells[1..4].iter().any(String::is_empty) {
                problems.push(format!(
                    "line {}: `{key}` needs its type, default and meaning",
                    r.line
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of step with config/src/schema/:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// The examples.

/// The ```yaml blocks of the reference, with the line each starts on.
fn yaml_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim();
        match &mut current {
            None if t == "```yaml" => current = Some((i + 2, String::new())),
            Some(_) if t == "```" => out.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Every key path written in a YAML text, in the schema's notation.
fn written_keys(text: &str) -> BTreeSet<String> {
    fn walk(y: &yaml_rust2::Yaml, path: &str, out: &mut BTreeSet<String>) {
        match y {
            yaml_rust2::Yaml::Hash(h) => {
                for (k, v) in h {
                    if let Some(k) = k.as_str() {
                        let p = child(path, k);
                        walk(v, &p, out);
                        out.insert(p);
                    }
                }
            }
            yaml_rust2::Yaml::Array(items) => {
                for v in items {
                    walk(v, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for doc in yaml_rust2::YamlLoader::load_from_str(text).unwrap_or_default() {
        walk(&doc, "", &mut out);
    }
    out
}

#[test]
fn every_key_has_an_example() {
    let schema = schema_keys();
    let mut shown = BTreeSet::new();
    for (line, block) in yaml_blocks(&reference()) {
        assert!(
            yaml_rust2::YamlLoader::load_from_str(&block).is_ok(),
            "docs/configuration.md: the YAML block of line {line} does not parse"
        );
        shown.extend(written_keys(&block));
    }
    let missing: Vec<&String> = schema.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md: no YAML example writes these keys: {missing:?}"
    );
}

#[test]
fn the_full_example_is_a_valid_config() {
    let doc = reference();
    let heading = doc
        .find("\n## Full example")
        .expect("docs/configuration.md has a `## Full example` section");
    let start = heading + doc[heading..].find("```yaml\n").expect("with a YAML block") + 8;
    let len = doc[start..].find("\n```").expect("the YAML block ends");
    let text = &doc[start..start + len + 1];
    // Every `${VAR}` of the example gets a value.
    let loaded = load_str_with_env(text, Path::new("/etc/bucketgate"), |_| {
        Some("example-value".to_owned())
    })
    .unwrap_or_else(|e| panic!("the full example of docs/configuration.md does not load:\n{e}"));
    assert!(!loaded.config.users.is_empty() && !loaded.config.remotes.is_empty());
}
