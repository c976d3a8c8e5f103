//! YAML path → line index, so that errors found after parsing still name their line.

use std::collections::HashMap;

use crate::error::ConfigError;
use crate::yaml::tree::{index_path, key_path, Node};

/// Lines of every path present in the file, and the tree the typed config was read from.
///
/// Items dropped for a parse error shift the typed lists (`users[2]` of the file may be
/// `config.users[1]`), so every path coming from the typed config is first translated back
/// to the file's path through `pruned`, whose nodes keep their original paths.
#[derive(Clone, Default)]
pub(crate) struct LineIndex {
    entries: HashMap<String, usize>,
    pruned: Option<Node>,
}

impl std::fmt::Debug for LineIndex {
    // The tree holds secret values: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineIndex")
            .field("paths", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl LineIndex {
    /// Indexes the file as written.
    pub fn build(root: &Node) -> Self {
        let mut entries = HashMap::new();
        root.index_into(&mut entries);
        LineIndex {
            entries,
            pruned: None,
        }
    }

    /// Records the tree as it was when deserialization succeeded.
    pub fn set_pruned(&mut self, pruned: Node) {
        self.pruned = Some(pruned);
    }

    /// The file's path of a path of the typed config.
    pub fn original_path(&self, typed: &str) -> String {
        let Some(root) = &self.pruned else {
            return typed.to_owned();
        };
        let Some(segments) = split_path(typed) else {
            return typed.to_owned();
        };
        let mut node = root;
        for (i, seg) in segments.iter().enumerate() {
            let next = match seg {
                Segment::Key(k) => node.get(k),
                Segment::Index(n) => node.item(*n),
            };
            match next {
                Some(n) => node = n,
                // Not in the file (a defaulted key): keep the rest as typed.
                None => {
                    return segments[i..]
                        .iter()
                        .fold(node.path.clone(), |p, seg| match seg {
                            Segment::Key(k) => key_path(&p, k),
                            Segment::Index(n) => index_path(&p, *n),
                        })
                }
            }
        }
        node.path.clone()
    }

    /// True when the typed `path` was written in the file (not defaulted).
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&self.original_path(path))
    }

    /// The line of the typed `path`; see [`LineIndex::line_original`].
    pub fn line(&self, path: &str) -> Option<usize> {
        self.line_original(&self.original_path(path))
    }

    /// The line of `path`, or of its nearest ancestor written in the file (a defaulted key
    /// is blamed on the item that lacks it); `None` for the root.
    pub fn line_original(&self, path: &str) -> Option<usize> {
        let mut p = path.to_owned();
        // The root is not a useful place to point at: "line 1" for a defaulted top-level key
        // would mislead.
        while !p.is_empty() {
            if let Some(&line) = self.entries.get(&p) {
                return Some(line);
            }
            p = parent_path(&p).to_owned();
        }
        None
    }

    /// An error at the typed `path`, with the file's path and line.
    pub fn error(&self, path: impl AsRef<str>, message: impl Into<String>) -> ConfigError {
        let path = self.original_path(path.as_ref());
        ConfigError {
            line: self.line_original(&path),
            path,
            message: message.into(),
        }
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[2]["/x"]` → `a`, `b`, 2, `/x`; `None` for a path we did not write.
fn split_path(path: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[\"") {
            // A quoted key, escaped as Rust's `{:?}` does.
            let mut key = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => key.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => key.push(c),
                }
            };
            rest = r[end + 1..].strip_prefix(']')?;
            out.push(Segment::Key(key));
        } else if let Some(r) = rest.strip_prefix('[') {
            let (n, r) = r.split_once(']')?;
            out.push(Segment::Index(n.parse().ok()?));
            rest = r;
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(Segment::Key(r[..end].to_owned()));
            rest = &r[end..];
        }
    }
    Some(out)
}

/// `a.b[2]` → `a.b` → `a` → ``. A quoted key (`a["x.y"]`) is cut at its opening `[`.
fn parent_path(path: &str) -> &str {
    if path.ends_with("\"]") {
        if let Some(i) = path.rfind("[\"") {
            return &path[..i];
        }
    }
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent_path("a.b[2]"), "a.b");
        assert_eq!(parent_path("a.b"), "a");
        assert_eq!(parent_path("a"), "");
        assert_eq!(
            parent_path("u[0].permissions[\"/a.b\"]"),
            "u[0].permissions"
        );
    }

    #[test]
    fn translates_after_pruning() {
        let text = "users:\n  - username: a\n  - username: b\n    home: /x\n  - username: c\n    p:\n      \"/a.b\": 1\n";
        let (mut root, _) = crate::yaml::tree::parse(text).unwrap();
        let mut ix = LineIndex::build(&root);
        assert!(root.remove("users[0]"));
        ix.set_pruned(root);
        assert_eq!(ix.original_path("users[0].home"), "users[1].home");
        assert_eq!(ix.line("users[0].home"), Some(4));
        assert_eq!(ix.original_path("users[1]"), "users[2]");
        assert_eq!(
            ix.original_path("users[1].password_hash"),
            "users[2].password_hash"
        );
        assert_eq!(ix.line("users[1].password_hash"), Some(5));
        assert_eq!(
            ix.original_path("users[1].p[\"/a.b\"]"),
            "users[2].p[\"/a.b\"]"
        );
        assert_eq!(ix.line("users[1].p[\"/a.b\"]"), Some(7));
        assert_eq!(ix.original_path("limits.ban"), "limits.ban");
    }

    #[test]
    fn falls_back_to_ancestors() {
        let (root, _) = crate::yaml::tree::parse("users:\n  - username: a\n").unwrap();
        let ix = LineIndex::build(&root);
        assert_eq!(ix.line("users[0].home"), Some(2));
        assert_eq!(ix.line("state_dir"), None);
        assert_eq!(LineIndex::default().line("x"), None);
    }
}
