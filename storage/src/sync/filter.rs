//! include/exclude globs on paths relative to the synced folder.

use crate::error::{Error, ErrorKind, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Which relative paths a job covers: those matching an include glob and no exclude glob.
///
/// `*` and `?` stay within one path segment and `**` spans any number of them, as in
/// `.gitignore` and rclone filters. A folder is matched by its path without the trailing slash.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

fn build(globs: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = GlobBuilder::new(g.trim_start_matches('/'))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("bad sync glob {g:?}: {e}"),
                )
            })?;
        b.add(glob);
    }
    b.build()
        .map_err(|e| Error::new(ErrorKind::ConfigInvalid, format!("bad sync globs: {e}")))
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

    /// True when the job covers `path` (a folder may end with `/`).
    pub(crate) fn covers(&self, path: &str) -> bool {
        let p = path.strip_suffix('/').unwrap_or(path);
        if self.exclude.is_match(p) {
            return false;
        }
        match &self.include {
            None => true,
            Some(set) => set.is_match(p),
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
    }
}
