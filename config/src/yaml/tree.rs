//! A YAML document as a tree whose every node knows its YAML path and line.
//!
//! serde-based YAML crates give one location for the first error only; to name the line of
//! every problem (including semantic ones found after parsing) we keep our own tree.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::ConfigError;

/// One YAML value. Not `Debug`: scalars may hold secrets.
#[derive(Clone)]
pub(crate) struct Node {
    /// YAML path, like `users[1].home` (empty for the document root).
    pub path: String,
    /// Line where the value is named: the key's line for a map value, the `-` line for an
    /// item of a list.
    pub line: usize,
    pub kind: Kind,
    /// Set when the value could not be interpolated: the problem is already reported, so
    /// errors it causes later are not reported again.
    pub poisoned: bool,
}

#[derive(Clone)]
pub(crate) enum Kind {
    /// `plain` is false for quoted and block scalars, which YAML never reads as null, bool
    /// or number.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    /// True for a plain `~`, `null` or empty scalar (YAML 1.2 core schema).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The child at `key` of a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Item `i` of a list node.
    pub fn item(&self, i: usize) -> Option<&Node> {
        match &self.kind {
            Kind::Seq(items) => items.get(i),
            _ => None,
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Finds the node at `path` (by its recorded path).
    pub fn find(&self, path: &str) -> Option<&Node> {
        if self.path == path {
            return Some(self);
        }
        self.children().find_map(|c| {
            if is_prefix_path(&c.path, path) {
                c.find(path)
            } else {
                None
            }
        })
    }

    /// Removes the node at `path` from its parent; false when absent or the root.
    pub fn remove(&mut self, path: &str) -> bool {
        match &mut self.kind {
            Kind::Scalar { .. } => false,
            Kind::Seq(items) => {
                if let Some(i) = items.iter().position(|n| n.path == path) {
                    items.remove(i);
                    return true;
                }
                items
                    .iter_mut()
                    .filter(|n| is_prefix_path(&n.path, path))
                    .any(|n| n.remove(path))
            }
            Kind::Map(entries) => {
                if let Some(i) = entries.iter().position(|(_, n)| n.path == path) {
                    entries.remove(i);
                    return true;
                }
                entries
                    .iter_mut()
                    .filter(|(_, n)| is_prefix_path(&n.path, path))
                    .any(|(_, n)| n.remove(path))
            }
        }
    }

    fn children(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        match &self.kind {
            Kind::Scalar { .. } => Box::new(std::iter::empty()),
            Kind::Seq(items) => Box::new(items.iter()),
            Kind::Map(entries) => Box::new(entries.iter().map(|(_, v)| v)),
        }
    }

    fn children_mut(&mut self) -> Box<dyn Iterator<Item = &mut Node> + '_> {
        match &mut self.kind {
            Kind::Scalar { .. } => Box::new(std::iter::empty()),
            Kind::Seq(items) => Box::new(items.iter_mut()),
            Kind::Map(entries) => Box::new(entries.iter_mut().map(|(_, v)| v)),
        }
    }

    /// Calls `f` on every scalar value (map keys excluded).
    pub fn for_each_scalar_mut(&mut self, f: &mut dyn FnMut(&mut Node)) {
        if matches!(self.kind, Kind::Scalar { .. }) {
            f(self);
        } else {
            for c in self.children_mut() {
                c.for_each_scalar_mut(f);
            }
        }
    }

    /// Records every node's path and line into `index`.
    pub fn index_into(&self, index: &mut HashMap<String, usize>) {
        index.insert(self.path.clone(), self.line);
        for c in self.children() {
            c.index_into(index);
        }
    }

    /// Re-labels a subtree copied from an anchor so its paths follow where the alias stands.
    fn repath(&mut self, path: String) {
        self.path = path;
        match &mut self.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => {
                for (i, n) in items.iter_mut().enumerate() {
                    n.repath(index_path(&self.path, i));
                }
            }
            Kind::Map(entries) => {
                for (k, n) in entries.iter_mut() {
                    n.repath(key_path(&self.path, k));
                }
            }
        }
    }
}

/// True when `ancestor` is `path` or one of its ancestors.
fn is_prefix_path(ancestor: &str, path: &str) -> bool {
    if ancestor.is_empty() || ancestor == path {
        return true;
    }
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Path of the value at `key` under `parent`: `a.b`, or `a["/x"]` when the key is not a
/// plain identifier (permission folders, for instance).
pub fn key_path(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (simple, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{key:?}]"),
    }
}

/// Path of item `i` of the list at `parent`.
pub fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Parses `text` into a tree. A YAML syntax error stops everything (the structure after it
/// is unknown); duplicate keys and bad aliases are reported and parsing goes on.
pub(crate) fn parse(text: &str) -> Result<(Node, Vec<ConfigError>), ConfigError> {
    let mut rec = Recorder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut rec, true).map_err(|e| ConfigError {
        path: String::new(),
        line: Some(e.marker().line()),
        message: format!("invalid YAML: {}", e.info()),
    })?;
    let mut b = Builder {
        events: rec.events,
        pos: 0,
        anchors: HashMap::new(),
        errors: Vec::new(),
    };
    let root = b.document()?;
    Ok((root, b.errors))
}

#[derive(Default)]
struct Recorder {
    events: Vec<(Event, Marker)>,
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.events.push((ev, mark));
    }
}

struct Builder {
    events: Vec<(Event, Marker)>,
    pos: usize,
    anchors: HashMap<usize, Node>,
    errors: Vec<ConfigError>,
}

impl Builder {
    fn next(&mut self) -> Option<(Event, Marker)> {
        let ev = self.events.get(self.pos).cloned();
        self.pos += 1;
        ev
    }

    fn document(&mut self) -> Result<Node, ConfigError> {
        let empty = Node {
            path: String::new(),
            line: 1,
            kind: Kind::Map(Vec::new()),
            poisoned: false,
        };
        let mut root = None;
        while let Some((ev, mark)) = self.next() {
            match ev {
                Event::DocumentStart if root.is_some() => {
                    return Err(ConfigError {
                        path: String::new(),
                        line: Some(mark.line()),
                        message: "only one YAML document is allowed in a config file".into(),
                    });
                }
                Event::DocumentStart | Event::StreamStart | Event::DocumentEnd | Event::Nothing => {
                }
                Event::StreamEnd => break,
                ev => root = Some(self.node(ev, mark, String::new())?),
            }
        }
        let root = root.unwrap_or(empty);
        // An empty document is a valid config: every section takes its default.
        Ok(if root.is_null() {
            Node {
                kind: Kind::Map(Vec::new()),
                ..root
            }
        } else {
            root
        })
    }

    fn node(&mut self, ev: Event, mark: Marker, path: String) -> Result<Node, ConfigError> {
        let line = mark.line();
        let (node, anchor) = match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let str_tag = tag.is_some_and(|t| t.handle == "!!" && t.suffix == "str");
                let plain = style == TScalarStyle::Plain && !str_tag;
                let kind = Kind::Scalar { value, plain };
                (
                    Node {
                        path,
                        line,
                        kind,
                        poisoned: false,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, m) = self.expect_more(line)?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    let p = index_path(&path, items.len());
                    items.push(self.node(ev, m, p)?);
                }
                let kind = Kind::Seq(items);
                (
                    Node {
                        path,
                        line,
                        kind,
                        poisoned: false,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => (self.mapping(path, line)?, anchor),
            Event::Alias(id) => {
                return match self.anchors.get(&id) {
                    Some(n) => {
                        let mut n = n.clone();
                        n.repath(path);
                        n.line = line;
                        Ok(n)
                    }
                    None => Err(ConfigError {
                        path,
                        line: Some(line),
                        message: "alias to an unknown anchor".into(),
                    }),
                };
            }
            _ => {
                return Err(ConfigError {
                    path,
                    line: Some(line),
                    message: "unexpected YAML structure".into(),
                })
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn mapping(&mut self, path: String, line: usize) -> Result<Node, ConfigError> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        loop {
            let (ev, key_mark) = self.expect_more(line)?;
            let key = match ev {
                Event::MappingEnd => break,
                Event::Scalar(k, ..) => k,
                ev => {
                    // Skip the complex key and its value, but say where it was.
                    let _ = self.node(ev, key_mark, path.clone())?;
                    let (v, m) = self.expect_more(line)?;
                    let _ = self.node(v, m, path.clone())?;
                    self.errors.push(ConfigError {
                        path: path.clone(),
                        line: Some(key_mark.line()),
                        message: "a map key must be a plain string".into(),
                    });
                    continue;
                }
            };
            let (ev, m) = self.expect_more(line)?;
            let vpath = key_path(&path, &key);
            let mut value = self.node(ev, m, vpath.clone())?;
            // Errors about a value point at its key: a block value starts on the next line.
            value.line = key_mark.line();
            if let Some((_, first)) = entries.iter().find(|(k, _)| *k == key) {
                self.errors.push(ConfigError {
                    path: vpath,
                    line: Some(key_mark.line()),
                    message: format!("duplicate key `{key}` (first given on line {})", first.line),
                });
                continue;
            }
            entries.push((key, value));
        }
        Ok(Node {
            path,
            line,
            kind: Kind::Map(entries),
            poisoned: false,
        })
    }

    fn expect_more(&mut self, line: usize) -> Result<(Event, Marker), ConfigError> {
        self.next().ok_or_else(|| ConfigError {
            path: String::new(),
            line: Some(line),
            message: "unexpected end of YAML".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_lines() {
        let text = "a:\n  b: 1\nlist:\n  - x: 2\n  - y\n\"/k\": z\n";
        let (root, errs) = parse(text).unwrap();
        assert!(errs.is_empty());
        let mut ix = HashMap::new();
        root.index_into(&mut ix);
        assert_eq!(ix["a"], 1);
        assert_eq!(ix["a.b"], 2);
        assert_eq!(ix["list[0]"], 4);
        assert_eq!(ix["list[0].x"], 4);
        assert_eq!(ix["list[1]"], 5);
        assert_eq!(ix["[\"/k\"]"], 6);
    }

    #[test]
    fn duplicate_keys_reported() {
        let (_, errs) = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "a");
        assert_eq!(errs[0].line, Some(3));
    }

    #[test]
    fn aliases_are_repathed() {
        let (root, _) = parse("x: &t {connect: 1s}\ny: *t\n").unwrap();
        assert_eq!(root.find("y.connect").unwrap().line, 1);
        assert!(root.find("x.connect").is_some());
    }

    #[test]
    fn remove_nodes() {
        let (mut root, _) = parse("l:\n  - a: 1\n  - b: 2\n").unwrap();
        assert!(root.remove("l[0].a"));
        assert!(root.find("l[0].a").is_none());
        assert!(root.remove("l[1]"));
        assert!(root.find("l[1]").is_none());
        assert!(!root.remove(""));
    }
}
