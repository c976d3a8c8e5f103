//! include/exclude globs on paths relative to the synced folder.

use crate::error::{Error, ErrorKind, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Which relative paths a job covers: those matching an include glob and no exclude glob.
///
/// `*` and `?` stay within one path segment and `**` spans any number of them, as in
/// `.gitignore` and rclone filters. Globs are anchored at the synced folder (a leading `/` is
/// the same as none). A folder is matched by its path without the trailing slash. A glob that
/// ends with `/` (`secrets/`, `**/cache/`) matches folders only, and everything inside them.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    include: Option<Globs>,
    exclude: Globs,
}

/// Globs for every path, and globs (those written with a trailing `/`) for folders only.
#[derive(Debug, Clone)]
struct Globs {
    any: GlobSet,
    dirs: GlobSet,
}

impl Globs {
    fn is_match(&self, path: &str, dir: bool) -> bool {
        self.any.is_match(path) || (dir && self.dirs.is_match(path))
    }
}

fn glob(g: &str, shown: &str) -> Result<globset::Glob> {
    GlobBuilder::new(g)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("bad sync glob {shown:?}: {e}"),
            )
        })
}

fn build(globs: &[String]) -> Result<Globs> {
    let (mut any, mut dirs) = (GlobSetBuilder::new(), GlobSetBuilder::new());
    for g in globs {
        let bare = g.trim_start_matches('/');
        match bare.strip_suffix('/') {
            Some(folder) if !folder.is_empty() => {
                // The folder itself, and everything below it.
                dirs.add(glob(folder, g)?);
                any.add(glob(&format!("{folder}/**"), g)?);
            }
            _ => {
                any.add(glob(bare, g)?);
            }
        }
    }
    let done = |b: GlobSetBuilder| {
        b.build()
            .map_err(|e| Error::new(ErrorKind::ConfigInvalid, format!("bad sync globs: {e}")))
    };
    Ok(Globs {
        any: done(any)?,
        dirs: done(dirs)?,
    })
}

impl Filter {
    /// Compiles the globs; an empty include list includes everything.
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let include = if include.is_empty() || include.iter().any(|g| g == "**") {
            None
        } else {
            Some(build(include)?)
        };
        Ok(Filter {
            include,
            exclude: build(exclude)?,
        })
    }

    /// True when the job covers `path` (a folder ends with `/`).
    pub(crate) fn covers(&self, path: &str) -> bool {
        let dir = path.ends_with('/');
        let p = path.strip_suffix('/').unwrap_or(path);
        if self.exclude.is_match(p, dir) {
            return false;
        }
        match &self.include {
            None => true,
            Some(set) => set.is_match(p, dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> Filter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(inc), &v(exc)).unwrap()
    }

    #[test]
    fn globs() {
        let x = f(&["**"], &["**/*.tmp"]);
        assert!(x.covers("a.txt"));
        assert!(!x.covers("a.tmp"));
        assert!(!x.covers("d/e/a.tmp"));
        let y = f(&["*.csv", "reports/**"], &["reports/old/**"]);
        assert!(y.covers("x.csv"));
        assert!(!y.covers("d/x.csv"), "* stays in one segment");
        assert!(y.covers("reports/2024/q1.pdf"));
        assert!(!y.covers("reports/old/q1.pdf"));
        let z = f(&["file?.txt"], &[]);
        assert!(z.covers("file1.txt"));
        assert!(!z.covers("file12.txt"));
        assert!(Filter::new(&["[".to_string()], &[]).is_err());
        // A trailing slash: the folder and everything in it, never a file of that name.
        let w = f(&[], &["secrets/", "**/cache/"]);
        assert!(!w.covers("secrets/"));
        assert!(!w.covers("secrets/id_rsa"));
        assert!(!w.covers("secrets/deep/key"));
        assert!(
            w.covers("secrets"),
            "a file called secrets is not the folder"
        );
        assert!(w.covers("a/secrets/x"), "anchored at the synced folder");
        assert!(!w.covers("a/b/cache/x"));
        assert!(!w.covers("cache/"));
    }
}
