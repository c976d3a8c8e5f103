//! From text to a typed config, collecting every parse error.
//!
//! serde stops at the first error. We deserialize the located tree, and on an error we
//! report it, prune the failing node (its parent then takes the default, or the list item
//! goes) and try again, until the rest deserializes. A file with ten mistakes costs ten
//! passes over a small tree.

use std::collections::HashSet;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::index::LineIndex;
use crate::schema::Config;
use crate::validate::Hints;
use crate::yaml::de::NodeDe;
use crate::yaml::interpolate::{interpolate_tree, EnvLookup};
use crate::yaml::tree::{self, key_path, Node};

/// The outcome of parsing: a config unless the file's structure was unreadable.
pub(crate) struct Parsed {
    pub config: Option<Config>,
    pub index: LineIndex,
    pub errors: Vec<ConfigError>,
    pub hints: Hints,
    /// Paths whose problem is already reported: later errors at or below them are echoes.
    pub reported: HashSet<String>,
    /// Values that must not appear in any message.
    pub secrets: Vec<String>,
}

pub(crate) fn parse(text: &str, env: EnvLookup<'_>) -> Parsed {
    let mut parsed = Parsed {
        config: None,
        index: LineIndex::default(),
        errors: Vec::new(),
        hints: Hints::default(),
        reported: HashSet::new(),
        secrets: Vec::new(),
    };
    let (mut root, errors) = match tree::parse(text) {
        Ok(r) => r,
        Err(e) => {
            parsed.errors.push(e);
            return parsed;
        }
    };
    parsed.errors = errors;
    parsed.index = LineIndex::build(&root);

    interpolate_tree(&mut root, env, &mut parsed.secrets, &mut parsed.errors);
    root.for_each_scalar_mut(&mut |n| {
        if n.poisoned {
            parsed.reported.insert(n.path.clone());
            parsed.hints.poisoned.insert(n.path.clone());
        }
    });
    collect_secret_fields(&root, &mut parsed.secrets);

    // Each pass removes one node, so the loop ends; the bound is only a safety net.
    for _ in 0..100_000 {
        match Config::deserialize(NodeDe::new(&root)) {
            Ok(config) => {
                parsed.config = Some(config);
                parsed.index.set_pruned(root);
                return parsed;
            }
            Err(e) => {
                let path = e.path.unwrap_or_default();
                let echo = e.poisoned
                    || e.missing_field
                        .is_some_and(|f| parsed.reported.contains(&key_path(&path, f)));
                if !echo {
                    parsed.errors.push(ConfigError {
                        path: path.clone(),
                        line: e.line,
                        message: e.message,
                    });
                }
                remember_remote_name(&root, &path, &mut parsed.hints);
                if !root.remove(&path) {
                    return parsed;
                }
                parsed.reported.insert(path);
            }
        }
    }
    parsed
}

/// A remote dropped for a parse error is still known by name, so that mounts naming it
/// are not also reported as naming an unknown remote.
fn remember_remote_name(root: &Node, path: &str, hints: &mut Hints) {
    let is_remote_item = path
        .strip_prefix("remotes[")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
    if !is_remote_item {
        return;
    }
    if let Some(name) = root
        .find(path)
        .and_then(|n| n.get("name"))
        .and_then(Node::scalar)
    {
        hints.broken_remotes.insert(name.to_owned());
    }
}

/// The values of secret fields, whatever their type problems.
fn collect_secret_fields(root: &Node, secrets: &mut Vec<String>) {
    for (list, field) in [("remotes", "secret_access_key"), ("users", "password_hash")] {
        let Some(tree::Kind::Seq(items)) = root.get(list).map(|n| &n.kind) else {
            continue;
        };
        for item in items {
            if let Some(v) = item.get(field).and_then(Node::scalar) {
                secrets.push(v.to_owned());
            }
        }
    }
}
