//! Names that become file names, CLI arguments and metric labels.

/// Why `name` cannot be a username, a remote name or a sync name, if it cannot.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.contains(['/', '\\']) {
        Some("must not contain `/` or `\\`")
    } else if name == "." || name.contains("..") {
        Some("must not be `.` or contain `..`")
    } else if name.trim() != name {
        Some("must not start or end with spaces")
    } else {
        None
    }
}

/// Why `endpoint` is not a usable `http(s)://host[:port][/path]` URL, if it is not.
pub(crate) fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    if endpoint.is_empty() {
        return Some("is required: the http:// or https:// URL of the S3 service");
    }
    let Some(rest) = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
    else {
        return Some("must be an http:// or https:// URL");
    };
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Some("must not contain spaces");
    }
    if rest.contains(['?', '#']) {
        return Some("must not have a query or a fragment");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Some("must not hold credentials: use access_key_id and secret_access_key");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) if h.parse::<std::net::Ipv6Addr>().is_ok() => {
                (h, tail.strip_prefix(':'))
            }
            _ => return Some("has an invalid IPv6 host"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Some("has no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Some("has an invalid port");
    }
    None
}

/// Why `bucket` is not a plausible bucket name, if it is not. AWS allows 3–63 lowercase
/// characters; Ceph, MinIO legacy mode and others allow capitals, `_` and longer names.
pub(crate) fn bucket_problem(bucket: &str) -> Option<&'static str> {
    let b = bucket.as_bytes();
    if b.is_empty() {
        return Some("is required");
    }
    let ok_chars = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    let ok_ends = b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric();
    if !(3..=255).contains(&b.len()) || !ok_chars || !ok_ends || bucket.contains("..") {
        return Some(
            "is not a valid bucket name: 3 to 63 letters, digits, `.`, `-` or `_`, \
             starting and ending with a letter or digit",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name_problem("alice").is_none());
        assert!(name_problem("alice.smith@corp").is_none());
        for bad in ["", "a/b", "a\\b", "..", "a..b", ".", "a\u{7}", " a"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem(&"x".repeat(255)).is_none());
        assert!(name_problem(&"x".repeat(256)).is_some());
    }

    #[test]
    fn endpoints() {
        for ok in [
            "https://minio.acme.example:9000",
            "http://127.0.0.1:9000",
            "https://s3.amazonaws.com",
            "http://[::1]:9000",
            "https://host/base/path",
        ] {
            assert_eq!(endpoint_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "minio:9000",
            "ftp://x",
            "https://",
            "https://:9000",
            "https://host:port",
            "https://host:0",
            "https://u:p@host",
            "https://host?x=1",
            "https://ho st",
            "http://[zz]:1",
        ] {
            assert!(endpoint_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn buckets() {
        for ok in ["exchange", "my-bucket.2024", "Legacy_Bucket", "abc"] {
            assert_eq!(bucket_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "ab",
            "-abc",
            "abc-",
            "a b c",
            "a..b",
            "a/b",
            &"x".repeat(256),
        ] {
            assert!(bucket_problem(bad).is_some(), "{bad}");
        }
    }
}
