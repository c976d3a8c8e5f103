//! AWS Signature Version 4 for S3 requests (header-based, `UNSIGNED-PAYLOAD` bodies).
//!
//! Written against the AWS documentation ("Signature Calculations for the Authorization Header")
//! and checked with its published example vectors in the tests below.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

/// The payload hash S3 accepts when the body is not hashed: lets us stream bodies and retry
/// them without reading them twice.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// SHA-256 of the empty string, the payload hash of body-less requests.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An access key pair. Debug never shows the secret.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Percent-encodes `s` as SigV4 wants: every byte except the unreserved `A-Z a-z 0-9 - . _ ~`
/// becomes `%XX` (upper-case hex); `/` is kept when `keep_slash` (object paths) and encoded
/// otherwise (query parameters).
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string: parameters encoded, then sorted by name and value.
pub(crate) fn canonical_query(params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// What gets signed: everything already in canonical form except header values, which are
/// trimmed here.
pub(crate) struct SignInput<'a> {
    pub method: &'a str,
    /// The encoded path (`/bucket/key` or `/key`).
    pub canonical_uri: &'a str,
    /// From [`canonical_query`].
    pub canonical_query: &'a str,
    /// Lower-case names with values; must include `host`, `x-amz-date` and
    /// `x-amz-content-sha256`.
    pub headers: &'a [(String, String)],
    pub payload_hash: &'a str,
    /// `YYYYMMDDTHHMMSSZ`
    pub amz_date: &'a str,
    /// `YYYYMMDD`
    pub date: &'a str,
    pub region: &'a str,
}

/// Computes the `Authorization` header value.
pub(crate) fn authorization(creds: &Credentials, input: &SignInput<'_>) -> String {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(k, v)| {
            // Header values are trimmed and inner runs of spaces collapsed.
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (k.to_ascii_lowercase(), v)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        input.canonical_uri,
        input.canonical_query,
        canonical_headers,
        signed_headers,
        input.payload_hash
    );
    let scope = format!("{}/{}/s3/aws4_request", input.date, input.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        input.amz_date,
        scope,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        input.date,
    );
    let k_region = hmac(&k_date, input.region);
    let k_service = hmac(&k_region, "s3");
    let k_signing = hmac(&k_service, "aws4_request");
    let signature = hex::encode(hmac(&k_signing, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={},Signature={}",
        creds.access_key_id, scope, signed_headers, signature
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        }
    }

    fn h(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    /// AWS's "Example: GET Object" of the S3 SigV4 header-based authentication docs.
    #[test]
    fn aws_get_object_vector() {
        let headers = [
            h("host", "examplebucket.s3.amazonaws.com"),
            h("range", "bytes=0-9"),
            h("x-amz-content-sha256", EMPTY_SHA256),
            h("x-amz-date", "20130524T000000Z"),
        ];
        let auth = authorization(
            &example_creds(),
            &SignInput {
                method: "GET",
                canonical_uri: "/test.txt",
                canonical_query: "",
                headers: &headers,
                payload_hash: EMPTY_SHA256,
                amz_date: "20130524T000000Z",
                date: "20130524",
                region: "us-east-1",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's "Example: GET Bucket (List Objects)": exercises the query string.
    #[test]
    fn aws_list_objects_vector() {
        let headers = [
            h("host", "examplebucket.s3.amazonaws.com"),
            h("x-amz-content-sha256", EMPTY_SHA256),
            h("x-amz-date", "20130524T000000Z"),
        ];
        let q = canonical_query(&[
            ("prefix".into(), "J".into()),
            ("max-keys".into(), "2".into()),
        ]);
        assert_eq!(q, "max-keys=2&prefix=J");
        let auth = authorization(
            &example_creds(),
            &SignInput {
                method: "GET",
                canonical_uri: "/",
                canonical_query: &q,
                headers: &headers,
                payload_hash: EMPTY_SHA256,
                amz_date: "20130524T000000Z",
                date: "20130524",
                region: "us-east-1",
            },
        );
        assert!(auth.ends_with(
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ));
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(uri_encode("a b/c", false), "a%20b%2Fc");
        assert_eq!(uri_encode("é+*", true), "%C3%A9%2B%2A");
        assert_eq!(
            canonical_query(&[("uploads".into(), String::new())]),
            "uploads="
        );
        assert_eq!(
            canonical_query(&[
                ("prefix".into(), "a b/".into()),
                ("delimiter".into(), "/".into())
            ]),
            "delimiter=%2F&prefix=a%20b%2F"
        );
    }

    #[test]
    fn debug_hides_secret() {
        let s = format!("{:?}", example_creds());
        assert!(!s.contains("wJalr"));
    }
}
