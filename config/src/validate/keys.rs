//! Shape checks of credentials. Messages never quote the credential.

/// Key types an `authorized_keys` line may carry.
pub(crate) const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Why `line` is not `<type> <base64> [comment]` with a known type, if it is not.
pub(crate) fn public_key_problem(line: &str) -> Option<String> {
    let mut parts = line.split_whitespace();
    let Some(kind) = parts.next() else {
        return Some("is empty".into());
    };
    if !KEY_TYPES.contains(&kind) {
        // `from="..." ssh-ed25519 ...` and the like.
        if line.contains('=') || line.contains(',') {
            return Some(
                "authorized_keys options are not supported: give `<type> <base64> [comment]`"
                    .into(),
            );
        }
        return Some(format!(
            "has an unknown key type; expected one of {}",
            KEY_TYPES.join(", ")
        ));
    }
    let Some(blob) = parts.next() else {
        return Some("has no key data after the key type".into());
    };
    let Some(bytes) = base64_decode(blob) else {
        return Some("has key data that is not valid base64".into());
    };
    // The blob starts with the key type again (RFC 4253 §6.6): a key pasted under the
    // wrong type, or cut short, shows here.
    let embedded = bytes
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n));
    if embedded != Some(kind.as_bytes()) {
        return Some("has key data that does not match its key type".into());
    }
    None
}

/// Why `hash` is not an argon2 PHC string, if it is not.
pub(crate) fn password_hash_problem(hash: &str) -> Option<&'static str> {
    if !hash.starts_with("$argon2") {
        return Some(
            "is not an argon2 hash (expected `$argon2id$...`, as printed by `bucketgate hash-password`)",
        );
    }
    None
}

/// Standard base64 with optional padding.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ed25519 public key (public by nature).
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbTRDK4Jm4yxcL0LTtkIt7GWl2Xh7aE8PzZdu0GH9bP alice@laptop";

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a!==").is_none());
    }

    #[test]
    fn keys() {
        assert_eq!(public_key_problem(ED25519), None);
        assert_eq!(
            public_key_problem(ED25519.trim_end_matches(" alice@laptop")),
            None
        );
        assert!(public_key_problem("").is_some());
        assert!(public_key_problem("ssh-ed25519").is_some());
        assert!(public_key_problem("ssh-dss AAAA").is_some());
        assert!(public_key_problem("ssh-ed25519 AAAAC3Nz...").is_some());
        assert!(public_key_problem(&ED25519.replace("ssh-ed25519", "ssh-rsa")).is_some());
        assert!(public_key_problem(&format!("from=\"10.0.0.1\" {ED25519}"))
            .unwrap()
            .contains("options"));
    }

    #[test]
    fn hashes() {
        assert_eq!(
            password_hash_problem("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"),
            None
        );
        assert!(password_hash_problem("hunter2").is_some());
        assert!(password_hash_problem("$2b$12$abc").is_some());
    }
}
