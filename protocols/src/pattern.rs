//! Shell patterns for the last part of a path, shared by the legacy SCP source (`scp -f
//! '/dir/*.csv'`) and FTP's NLST and LIST (`mget *.csv`): both expand a pattern as a POSIX shell
//! does, so that one name matches the same way over both protocols.

/// A pattern for one name: `*`, `?` and `[...]` as in a shell, a backslash escaping them.
pub(crate) struct NamePattern {
    matcher: globset::GlobMatcher,
    dotted: bool,
}

impl NamePattern {
    /// `None` when `pattern` is not a valid pattern (a shell takes such a word as a name).
    pub(crate) fn new(pattern: &str) -> Option<Self> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .ok()?;
        Some(NamePattern {
            matcher: glob.compile_matcher(),
            dotted: pattern.starts_with('.'),
        })
    }

    /// Whether `name` matches; a name starting with `.` only when the pattern does.
    pub(crate) fn matches(&self, name: &str) -> bool {
        (self.dotted || !name.starts_with('.')) && self.matcher.is_match(name)
    }
}

#[cfg(test)]
mod tests {
    use super::NamePattern;

    #[test]
    fn names_match_as_a_shell_expands_them() {
        let p = NamePattern::new("*.csv").unwrap();
        assert!(p.matches("a.csv"));
        assert!(!p.matches(".a.csv"));
        assert!(!p.matches("a.csvx"));
        assert!(NamePattern::new(".*").unwrap().matches(".hidden"));
        assert!(NamePattern::new("[ab]?").unwrap().matches("bz"));
        assert!(NamePattern::new("a\\*").unwrap().matches("a*"));
        assert!(!NamePattern::new("a\\*").unwrap().matches("ab"));
        assert!(NamePattern::new("[").is_none());
    }
}
