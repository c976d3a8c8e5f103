//! Per-folder permissions: the deepest configured folder that contains a path decides.

use crate::path::VPath;
use std::fmt;

/// One permission, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Perm {
    /// See a folder's entries, and stat it.
    List = 1,
    /// Read files.
    Download = 2,
    /// Create new files and append to files.
    Upload = 4,
    /// Replace existing files, and set their times.
    Overwrite = 8,
    /// Remove files and empty folders.
    Delete = 16,
    /// Rename (needed at the source's folder).
    Rename = 32,
    /// Create folders.
    Mkdir = 64,
}

impl Perm {
    /// Every permission.
    pub const ALL: [Perm; 7] = [
        Perm::List,
        Perm::Download,
        Perm::Upload,
        Perm::Overwrite,
        Perm::Delete,
        Perm::Rename,
        Perm::Mkdir,
    ];

    /// The config name of the permission.
    pub fn name(self) -> &'static str {
        match self {
            Perm::List => "list",
            Perm::Download => "download",
            Perm::Upload => "upload",
            Perm::Overwrite => "overwrite",
            Perm::Delete => "delete",
            Perm::Rename => "rename",
            Perm::Mkdir => "mkdir",
        }
    }

    /// Parses a config name; `*` is handled by [`PermSet::parse`].
    pub fn from_name(s: &str) -> Option<Perm> {
        Perm::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// A set of permissions.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet(u8);

impl PermSet {
    /// No permission.
    pub const NONE: PermSet = PermSet(0);
    /// Every permission.
    pub const ALL: PermSet = PermSet(127);

    /// Whether `p` is in the set.
    pub fn has(self, p: Perm) -> bool {
        self.0 & p as u8 != 0
    }

    /// The set with `p` added.
    pub fn with(self, p: Perm) -> PermSet {
        PermSet(self.0 | p as u8)
    }

    /// Builds a set from config names (`*` means all); unknown names are returned as errors.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<PermSet, String> {
        let mut set = PermSet::NONE;
        for n in names {
            if n == "*" {
                set = PermSet::ALL;
            } else {
                set = set
                    .with(Perm::from_name(n).ok_or_else(|| format!("unknown permission {n:?}"))?);
            }
        }
        Ok(set)
    }
}

impl fmt::Debug for PermSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Perm::ALL.iter().filter(|p| self.has(**p)).map(|p| p.name()))
            .finish()
    }
}

/// A user's folder rules, relative to her home.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// Deepest folder first, so the first match is the deepest.
    rules: Vec<(VPath, PermSet)>,
}

impl Permissions {
    /// Rules from (folder, set) pairs. With no rule at all the user may do everything; a folder
    /// outside every rule gets nothing.
    pub fn new(rules: impl IntoIterator<Item = (VPath, PermSet)>) -> Self {
        let mut rules: Vec<_> = rules.into_iter().collect();
        if rules.is_empty() {
            rules.push((VPath::root(), PermSet::ALL));
        }
        rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.segments().count()));
        Permissions { rules }
    }

    /// Every permission everywhere.
    pub fn all() -> Self {
        Permissions::new([])
    }

    /// The permissions that apply inside folder `dir` (a user-view path).
    pub fn at(&self, dir: &VPath) -> PermSet {
        self.rules
            .iter()
            .find(|(p, _)| dir.starts_with(p))
            .map(|(_, s)| *s)
            .unwrap_or(PermSet::NONE)
    }
}

/// A user's permissions as her open sessions see them: a config reload can replace them, and
/// every clone of the session's view sees the new rules from its next operation.
#[derive(Debug)]
pub struct SharedPermissions(std::sync::RwLock<std::sync::Arc<Permissions>>);

impl SharedPermissions {
    /// The cell holding `p`.
    pub fn new(p: Permissions) -> Self {
        SharedPermissions(std::sync::RwLock::new(std::sync::Arc::new(p)))
    }

    /// The permissions that apply inside folder `dir` now.
    pub fn at(&self, dir: &VPath) -> PermSet {
        self.0.read().unwrap_or_else(|e| e.into_inner()).at(dir)
    }

    /// Replaces the rules.
    pub fn replace(&self, p: Permissions) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepest_folder_wins_by_whole_segment() {
        let p = Permissions::new([
            (VPath::parse("/").unwrap(), PermSet::ALL),
            (
                VPath::parse("/archive").unwrap(),
                PermSet::parse(["list", "download"]).unwrap(),
            ),
        ]);
        let ar = p.at(&VPath::parse("/archive/2024").unwrap());
        assert!(ar.has(Perm::List) && ar.has(Perm::Download) && !ar.has(Perm::Upload));
        assert_eq!(p.at(&VPath::parse("/archive2").unwrap()), PermSet::ALL);
        assert_eq!(p.at(&VPath::parse("/").unwrap()), PermSet::ALL);
    }

    #[test]
    fn outside_every_rule_is_nothing() {
        let p = Permissions::new([(VPath::parse("/in").unwrap(), PermSet::ALL)]);
        assert_eq!(p.at(&VPath::parse("/out").unwrap()), PermSet::NONE);
        assert!(PermSet::parse(["bogus"]).is_err());
        assert_eq!(PermSet::parse(["*"]).unwrap(), PermSet::ALL);
    }
}
