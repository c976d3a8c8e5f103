//! Path normalisation: the one place where client input becomes a tree path.
//!
//! Every client path goes through [`VPath::resolve`] exactly once. The result is absolute, has
//! no `.`, `..` or empty segment, no backslash, no control character, and `..` can never climb
//! above the root it is resolved against: that is what keeps a user inside her home.

use crate::error::{Error, ErrorKind, Result};
use std::fmt;

/// Longest name of one path segment, in bytes (as most file systems allow).
pub const MAX_SEGMENT: usize = 255;
/// Longest whole path, in bytes.
pub const MAX_PATH: usize = 4096;

/// Whether client input ends in a separator, or in `/.`: on a disk such a name resolves only
/// to a folder (see [`crate::UserFs::resolve_entry`]).
pub fn names_a_folder(input: &str) -> bool {
    let is_sep = |c: char| c == '/' || c == '\\';
    let body = match input.strip_suffix('.') {
        // `name/.`
        Some(rest) if rest.ends_with(is_sep) => rest,
        _ => input,
    };
    body.ends_with(is_sep) && !body.trim_end_matches(is_sep).is_empty()
}

/// A normalised absolute path: `/` or `/a/b` (never a trailing slash).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VPath(String);

impl VPath {
    /// The root, `/`.
    pub fn root() -> Self {
        VPath("/".to_string())
    }

    /// Resolves client input against the current folder `cwd`.
    ///
    /// Both `/` and `\` separate segments (Windows clients send either), `.` and empty
    /// segments are dropped, and `..` at the root stays at the root, as `chroot` does.
    /// NUL and other control characters, and over-long names, are refused.
    pub fn resolve(cwd: &VPath, input: &str) -> Result<VPath> {
        if input.len() > MAX_PATH {
            return Err(Error::new(ErrorKind::InvalidInput, "path too long"));
        }
        if input.chars().any(|c| c.is_control()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "path contains a control character",
            ));
        }
        let absolute = input.starts_with('/') || input.starts_with('\\');
        let mut segs: Vec<&str> = if absolute {
            Vec::new()
        } else {
            cwd.segments().collect()
        };
        for seg in input.split(['/', '\\']) {
            match seg {
                "" | "." => {}
                ".." => {
                    segs.pop();
                }
                s => {
                    if s.len() > MAX_SEGMENT {
                        return Err(Error::new(ErrorKind::InvalidInput, "name too long"));
                    }
                    segs.push(s);
                }
            }
        }
        let mut out = String::with_capacity(input.len() + 1);
        for s in &segs {
            out.push('/');
            out.push_str(s);
        }
        if out.is_empty() {
            out.push('/');
        }
        if out.len() > MAX_PATH {
            return Err(Error::new(ErrorKind::InvalidInput, "path too long"));
        }
        Ok(VPath(out))
    }

    /// Parses an absolute path written in the config, normalising it like client input.
    pub fn parse(input: &str) -> Result<VPath> {
        VPath::resolve(&VPath::root(), input)
    }

    /// The path as a string: `/` or `/a/b`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The segments, root first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The last segment, or `None` for the root.
    pub fn name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The folder holding this path; the root is its own parent.
    pub fn parent(&self) -> VPath {
        match self.0.rfind('/') {
            Some(0) | None => VPath::root(),
            Some(i) => VPath(self.0[..i].to_string()),
        }
    }

    /// This path with one more segment. `name` must be a single valid segment.
    pub fn join(&self, name: &str) -> Result<VPath> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
            return Err(Error::new(ErrorKind::InvalidInput, "invalid name"));
        }
        VPath::resolve(self, name)
    }

    /// True when `self` is `ancestor` or lies below it, comparing whole segments
    /// (`/s3x` is not below `/s3`).
    pub fn starts_with(&self, ancestor: &VPath) -> bool {
        if ancestor.is_root() {
            return true;
        }
        self.0 == ancestor.0
            || (self.0.starts_with(&ancestor.0) && self.0.as_bytes()[ancestor.0.len()] == b'/')
    }

    /// The part of `self` below `ancestor`, without a leading slash (`""` when equal).
    pub fn strip_prefix(&self, ancestor: &VPath) -> Option<&str> {
        if !self.starts_with(ancestor) {
            return None;
        }
        if ancestor.is_root() {
            return Some(&self.0[1..]);
        }
        Some(self.0[ancestor.0.len()..].trim_start_matches('/'))
    }

    /// `self` re-rooted under `base`: the user's view path `/x` inside home `/users/a`
    /// becomes `/users/a/x`.
    pub fn rebase(&self, base: &VPath) -> VPath {
        if self.is_root() {
            return base.clone();
        }
        if base.is_root() {
            return self.clone();
        }
        VPath(format!("{}{}", base.0, self.0))
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Joins an object-key prefix (`""` or ending in `/`) and a relative path.
pub fn join_key(prefix: &str, rel: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + rel.len());
    k.push_str(prefix);
    k.push_str(rel);
    k
}

/// Normalises a bucket prefix from the config: no leading slash, a trailing slash unless empty,
/// no empty, `.` or `..` segment.
pub fn normalize_prefix(prefix: &str) -> Result<String> {
    let mut out = String::new();
    for seg in prefix.split('/') {
        match seg {
            "" => {}
            "." | ".." => {
                return Err(Error::new(
                    ErrorKind::ConfigInvalid,
                    "a prefix may not contain . or ..",
                ))
            }
            s => {
                out.push_str(s);
                out.push('/');
            }
        }
    }
    Ok(out)
}

/// True when `name`, listed as one entry of a folder, is exactly what a client sending it back
/// would reach: [`VPath::resolve`] keeps it as one segment, unchanged. That rules out the empty
/// name, `.` and `..`, both separators (`/` and `\`, which Windows clients send), control
/// characters (refused in paths) and names longer than [`MAX_SEGMENT`]. A name that fails this
/// is never listed: served, it would act on another key (`a\..\b` resolves to `/b`).
pub fn name_is_servable(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_SEGMENT
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_control())
}

/// True when an object key can be served as a path: every segment passes
/// [`name_is_servable`], so the key is reached by exactly one path. Keys written by others that
/// fail this are skipped (and logged) by listings.
pub fn key_is_servable(key: &str) -> bool {
    let key = key.strip_suffix('/').unwrap_or(key);
    !key.is_empty() && key.split('/').all(name_is_servable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cwd: &str, p: &str) -> String {
        VPath::resolve(&VPath::parse(cwd).unwrap(), p)
            .unwrap()
            .to_string()
    }

    #[test]
    fn names_ending_in_a_separator_name_folders() {
        for p in ["a/", "a//", "/a/b/", "a\\", "a/.", "./", "a/b/."] {
            assert!(names_a_folder(p), "{p}");
        }
        for p in ["a", "/a/b", "/", "//", ".", "a.", "a/.b", "", "a/.."] {
            assert!(!names_a_folder(p), "{p}");
        }
    }

    #[test]
    fn normalises_and_clamps() {
        assert_eq!(r("/", ""), "/");
        assert_eq!(r("/", "."), "/");
        assert_eq!(r("/", ".."), "/");
        assert_eq!(r("/", "../../etc/passwd"), "/etc/passwd");
        assert_eq!(r("/a/b", "../c"), "/a/c");
        assert_eq!(r("/a/b", "c/./d//e/"), "/a/b/c/d/e");
        assert_eq!(r("/a", "..\\..\\x"), "/x");
        assert_eq!(r("/a", "/"), "/");
        assert_eq!(r("/a", "\\b"), "/b");
    }

    #[test]
    fn refuses_control_and_long() {
        let root = VPath::root();
        assert!(VPath::resolve(&root, "a\0b").is_err());
        assert!(VPath::resolve(&root, "a\nb").is_err());
        assert!(VPath::resolve(&root, &"x".repeat(256)).is_err());
        assert!(VPath::resolve(&root, &"x/".repeat(3000)).is_err());
    }

    #[test]
    fn ancestry_is_by_segment() {
        let s3 = VPath::parse("/s3").unwrap();
        assert!(VPath::parse("/s3/x").unwrap().starts_with(&s3));
        assert!(VPath::parse("/s3").unwrap().starts_with(&s3));
        assert!(!VPath::parse("/s3x").unwrap().starts_with(&s3));
        assert_eq!(
            VPath::parse("/s3/a/b").unwrap().strip_prefix(&s3),
            Some("a/b")
        );
        assert_eq!(VPath::parse("/s3").unwrap().strip_prefix(&s3), Some(""));
        assert_eq!(VPath::parse("/s3x").unwrap().strip_prefix(&s3), None);
        assert_eq!(
            VPath::parse("/x")
                .unwrap()
                .rebase(&VPath::parse("/users/a").unwrap()),
            VPath::parse("/users/a/x").unwrap()
        );
    }

    #[test]
    fn prefixes_and_keys() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/a//b").unwrap(), "a/b/");
        assert!(normalize_prefix("a/../b").is_err());
        assert!(key_is_servable("a/b"));
        assert!(key_is_servable("a/"));
        assert!(!key_is_servable("a//b"));
        assert!(!key_is_servable("a/../b"));
        assert!(!key_is_servable("./b"));
        assert!(!key_is_servable("a\\..\\..\\b"));
        assert!(!key_is_servable("back\\slash"));
        assert!(!key_is_servable("dir\\/x"));
        assert!(!key_is_servable(&"x".repeat(256)));
        assert!(key_is_servable(" spaced . name "));
        assert!(key_is_servable("..."));
    }

    /// Every name that passes resolves to itself, as one segment.
    #[test]
    fn servable_names_round_trip() {
        let dir = VPath::parse("/d").unwrap();
        for name in [
            "a", " a", "a ", "...", ".a", "a.", "%2e%2e", "~", "*?[x]", "ü", "a b", "-",
        ] {
            assert!(name_is_servable(name), "{name:?}");
            let p = VPath::resolve(&dir, name).unwrap();
            assert_eq!(p.name(), Some(name));
            assert_eq!(p.parent(), dir);
        }
        for name in ["", ".", "..", "a/b", "a\\b", "\\", "a\u{7f}", "a\u{85}b"] {
            assert!(!name_is_servable(name), "{name:?}");
        }
    }
}
