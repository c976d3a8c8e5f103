//! Site-tree paths, bucket prefixes and file paths relative to the config folder.

use std::path::{Component, Path, PathBuf};

/// Normalises an absolute site-tree path: `//` and a trailing `/` collapse, so
/// `/partners//acme/` becomes `/partners/acme`. Refuses relative paths and `.`/`..`
/// segments, which could step outside a home or a mount.
pub fn normalize_site_path(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("must be an absolute path starting with `/`");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err("must not contain `.` or `..` segments");
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Normalises a bucket key prefix so prefixes compare as strings: no leading `/`, and a
/// trailing `/` unless empty (`inbound` and `/inbound/` both become `inbound/`).
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_owned()
    } else {
        format!("{p}/")
    }
}

/// Why a (normalised) prefix can never be a key prefix, if it cannot.
pub(crate) fn prefix_problem(normalized: &str) -> Option<&'static str> {
    let body = normalized.strip_suffix('/').unwrap_or(normalized);
    if body.is_empty() {
        return None;
    }
    if normalized.chars().any(char::is_control) {
        return Some("must not contain control characters");
    }
    for seg in body.split('/') {
        match seg {
            "" => return Some("must not contain an empty segment (`//`)"),
            "." | ".." => return Some("must not contain `.` or `..` segments"),
            _ => {}
        }
    }
    None
}

/// True when one normalised prefix contains the other: their key ranges overlap.
pub(crate) fn prefixes_overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// True when the normalised site path `path` is `folder` or below it, matching whole
/// components (`/archive` never covers `/archive2`).
pub fn is_within(path: &str, folder: &str) -> bool {
    folder == "/"
        || path == folder
        || path
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Resolves a path of the config file against the config file's folder. `.` components
/// are dropped for readable logs; `..` is kept, since folding it is wrong across symlinks.
pub(crate) fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        if c != Component::CurDir {
            out.push(c);
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_paths() {
        assert_eq!(normalize_site_path("/").unwrap(), "/");
        assert_eq!(normalize_site_path("//").unwrap(), "/");
        assert_eq!(normalize_site_path("/a//b/").unwrap(), "/a/b");
        assert!(normalize_site_path("a/b").is_err());
        assert!(normalize_site_path("").is_err());
        assert!(normalize_site_path("/a/../b").is_err());
        assert!(normalize_site_path("/a/./b").is_err());
        assert!(normalize_site_path("/a\nb").is_err());
        assert_eq!(normalize_site_path("/a..b").unwrap(), "/a..b");
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("inbound"), "inbound/");
        assert_eq!(normalize_prefix("/inbound/"), "inbound/");
        assert_eq!(
            prefix_problem("a//b/"),
            Some("must not contain an empty segment (`//`)")
        );
        assert!(prefix_problem("a/../").is_some());
        assert!(prefix_problem("a/b/").is_none());
        assert!(prefixes_overlap("", "x/"));
        assert!(prefixes_overlap("a/", "a/b/"));
        assert!(!prefixes_overlap("a/", "ab/"));
    }

    #[test]
    fn within() {
        assert!(is_within("/archive", "/archive"));
        assert!(is_within("/archive/x", "/archive"));
        assert!(!is_within("/archive2", "/archive"));
        assert!(is_within("/anything", "/"));
    }

    #[test]
    fn resolving() {
        let base = Path::new("/etc/bg");
        assert_eq!(
            resolve(base, Path::new("./data")),
            PathBuf::from("/etc/bg/data")
        );
        assert_eq!(resolve(base, Path::new("/srv/x")), PathBuf::from("/srv/x"));
        assert_eq!(
            resolve(base, Path::new("../x")),
            PathBuf::from("/etc/bg/../x")
        );
        assert_eq!(
            resolve(Path::new("."), Path::new("./data")),
            PathBuf::from("data")
        );
    }
}
