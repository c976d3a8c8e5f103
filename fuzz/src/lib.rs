//! The properties each fuzz target checks, as plain functions: libFuzzer drives them from
//! fuzz_targets/, and `cargo test` (tests/corpus.rs) runs them over the seed corpora on the
//! stable toolchain. Each panics when a property breaks; returning normally is a pass.

use bucketgate_storage::{PermSet, Permissions, VPath};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Splits fuzz input at the first NUL-free `\n` into up to `n` UTF-8 strings (lossy).
fn fields(data: &[u8], n: usize) -> Vec<String> {
    data.splitn(n, |b| *b == b'\n')
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// `VPath::resolve` and `Permissions::at`: whatever a client sends, the result is a clean
/// absolute path (no `.`/`..`/empty segment, no backslash or control character), resolving it
/// again changes nothing, it never climbs above the root, and a folder rule covers only whole
/// path components (`/archive` never covers `/archive2`).
pub fn vpath(data: &[u8]) {
    let f = fields(data, 3);
    let cwd = VPath::resolve(&VPath::root(), f.first().map(String::as_str).unwrap_or(""))
        .unwrap_or_else(|_| VPath::root());
    let input = f.get(1).map(String::as_str).unwrap_or("");
    let Ok(p) = VPath::resolve(&cwd, input) else {
        return;
    };
    let s = p.as_str();
    assert!(s.starts_with('/'), "not absolute: {s:?}");
    assert!(
        !s.contains('\\') && !s.chars().any(char::is_control),
        "{s:?}"
    );
    if s != "/" {
        assert!(!s.ends_with('/'), "trailing slash: {s:?}");
        for seg in s[1..].split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "bad segment in {s:?} from {input:?}"
            );
        }
    }
    let again = VPath::resolve(&VPath::root(), s).expect("a resolved path resolves");
    assert_eq!(again.as_str(), s, "resolve is not idempotent");
    assert!(p.starts_with(&VPath::root()));
    // Permissions: a rule at the (resolved) third field, another at the root.
    let rule_at = VPath::resolve(&VPath::root(), f.get(2).map(String::as_str).unwrap_or("/"))
        .unwrap_or_else(|_| VPath::root());
    let only_list = PermSet::parse(["list"]).unwrap();
    let perms = Permissions::new([(VPath::root(), PermSet::ALL), (rule_at.clone(), only_list)]);
    if rule_at.is_root() {
        // Two rules on one folder: which wins is not a property.
        return;
    }
    let got = perms.at(&p);
    let inside =
        p.as_str() == rule_at.as_str() || p.as_str().starts_with(&format!("{}/", rule_at.as_str()));
    let want = if inside { only_list } else { PermSet::ALL };
    assert!(
        got == want,
        "permissions at {s:?} with a rule at {:?}: whole components only",
        rule_at.as_str()
    );
}

/// `bucketgate_config::load_str`: any text gives a config or errors, never a panic; every
/// error names a YAML path, and a secret value never shows up in an error message.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 64 * 1024 {
        return;
    }
    if let Err(errs) = bucketgate_config::load_str(text, Path::new("/nonexistent-base")) {
        let shown = errs.to_string();
        assert!(!shown.is_empty());
        if secret_only_as_value(text) {
            assert!(
                !shown.contains(SEED_SECRET),
                "a secret leaked into an error: {shown}"
            );
        }
    }
}

/// The secret the config seeds carry as `secret_access_key`'s value.
const SEED_SECRET: &str = "fuzz-secret-9c1f";

/// Whether the seed's secret stands in `text` only as the value of a `secret_access_key`
/// key, as a YAML parser reads it. Looking at the text alone is not enough: in
/// `{&tsecret_access_key: fuzz-secret-9c1f\nype: local}` the secret is part of a key (the
/// anchor is `tsecret_access_key:`), and echoing an unknown key is the error a user needs.
fn secret_only_as_value(text: &str) -> bool {
    use yaml_rust2::{Yaml, YamlLoader};
    fn walk(node: &Yaml, under_secret_key: bool, found: &mut (usize, bool)) {
        match node {
            Yaml::Hash(map) => {
                for (k, v) in map {
                    walk(k, false, found);
                    let secret_key = matches!(k, Yaml::String(s) if s == "secret_access_key");
                    walk(v, secret_key, found);
                }
            }
            Yaml::Array(items) => items.iter().for_each(|i| walk(i, false, found)),
            Yaml::String(s) | Yaml::Real(s) if s.contains(SEED_SECRET) => {
                found.0 += 1;
                found.1 |= under_secret_key && s == SEED_SECRET;
            }
            _ => {}
        }
    }
    if text.matches(SEED_SECRET).count() != 1 {
        return false;
    }
    let Ok(docs) = YamlLoader::load_from_str(text) else {
        return false;
    };
    // (scalars holding the secret, keys included and aliases expanded; one is the value)
    let mut found = (0, false);
    docs.iter().for_each(|d| walk(d, false, &mut found));
    found == (1, true)
}

/// The scp parsers: any exec command and any record line give a value or a refusal, never a
/// panic; a parsed file or folder record's name is one plain segment.
pub fn scp(data: &[u8]) {
    use bucketgate_protocols::ssh::scp::{parse_command, parse_record, Record};
    // Shell quoting is honoured (`sc""p` is scp), so the property is: no panic, and UTF-8.
    if let Some(c) = parse_command(data) {
        assert!(std::str::from_utf8(data).is_ok());
        // Every path has its pattern (or none), and a pattern is only made of a wildcard.
        assert_eq!(c.paths.len(), c.globs.len());
        for g in c.globs.iter().flatten() {
            assert!(g.contains(['*', '?', '[']), "pattern {g:?} without a wildcard");
        }
    }
    if let Ok(rec) = parse_record(data) {
        let name = match &rec {
            Record::File { name, .. } | Record::Dir { name, .. } => Some(name.as_str()),
            _ => None,
        };
        if let Some(n) = name {
            assert!(
                !n.is_empty()
                    && n != "."
                    && n != ".."
                    && !n.contains('/')
                    && !n.chars().any(char::is_control)
                    && n.len() <= 255,
                "scp accepted the name {n:?}"
            );
        }
    }
}

/// The FTP LIST formatter over hostile names and any time or size: one line, CRLF-terminated,
/// the name last, the `ls -l` shape kept (clients split on spaces).
pub fn ftp_listing(data: &[u8]) {
    if data.len() < 17 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap());
    // Any time a SystemTime holds: the calendar clamps what chrono cannot name.
    let secs = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let is_dir = data[16] & 1 == 1;
    let name = String::from_utf8_lossy(&data[17..]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let Some(mtime) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)) else {
        return;
    };
    let line = bucketgate_protocols::ftp::listing::list_line(&name, is_dir, size, mtime, now);
    assert!(line.ends_with("\r\n"));
    assert!(line.ends_with(&format!(" {name}\r\n")), "{line:?}");
    let head = &line[..line.len() - name.len() - 2];
    assert!(!head.contains(['\r', '\n']), "{line:?}");
    assert!(head.starts_with(if is_dir { 'd' } else { '-' }));
    let fields: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(fields.len(), 8, "{head:?}");
    let shown: u64 = fields[4].parse().unwrap();
    assert_eq!(shown, if is_dir { 0 } else { size });
}

/// The PROXY v1/v2 header parser: a complete header is never longer than the input or the
/// v2 limit, parses the same on its own bytes, and every shorter prefix of it asks for more
/// (never "done", never an error); "need more" never asks past the limit.
pub fn proxy(data: &[u8]) {
    use bucketgate_protocols::proxy::{parse, Parsed, V2_MAX};
    match parse(data) {
        Ok(Parsed::Done(h, len)) => {
            assert!(len > 0 && len <= data.len() && len <= V2_MAX, "len {len}");
            assert_eq!(parse(&data[..len]), Ok(Parsed::Done(h, len)));
            for i in 0..len {
                match parse(&data[..i]) {
                    Ok(Parsed::Incomplete(m)) => assert!(m > 0 && i + m <= len, "{i}+{m} > {len}"),
                    other => panic!("prefix of {i}/{len} bytes gave {other:?}"),
                }
            }
        }
        Ok(Parsed::Incomplete(m)) => assert!(m > 0 && data.len() + m <= V2_MAX, "{m}"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::secret_only_as_value;

    #[test]
    fn the_oracle_sees_where_the_secret_stands() {
        let seed = include_str!("../corpus/config/remote.yaml");
        assert!(secret_only_as_value(seed), "the seed's secret is a value");
        let extra = format!("{seed}\nbogus: 1\n");
        assert!(secret_only_as_value(&extra));
        let crash = include_bytes!("../corpus/config/secret-in-a-flow-key.yaml");
        assert!(!secret_only_as_value(std::str::from_utf8(crash).unwrap()));
        // The same text, read by an alias as a second place: not "only as a value".
        let aliased = seed.replace(
            "secret_access_key: fuzz-secret-9c1f",
            "secret_access_key: &s fuzz-secret-9c1f\n    region: *s",
        );
        assert!(!secret_only_as_value(&aliased));
    }
}
