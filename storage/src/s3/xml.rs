//! The XML documents S3 answers with, and the few we send.

use crate::error::{Error, ErrorKind, Result};
use serde::Deserialize;

/// Parses an XML answer into `T`; a document that does not parse is a backend failure (a
/// proxy's HTML page, a truncated body).
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T> {
    // Lossy: a key that is not UTF-8 (written by some other tool) must not break the whole
    // page; it comes out with U+FFFD, and listings skip such keys.
    let text = String::from_utf8_lossy(body);
    quick_xml::de::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("{what}: unexpected answer from the S3 server"),
        )
        .with_source(e)
    })
}

/// The root element's name, to tell an `<Error>` hidden in a 200 answer (CopyObject,
/// UploadPartCopy and CompleteMultipartUpload may fail after the status line was sent).
pub(crate) fn root_name(body: &[u8]) -> Option<String> {
    let mut r = quick_xml::Reader::from_reader(body);
    let mut buf = Vec::new();
    loop {
        match r.read_event_into(&mut buf).ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
            }
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
        buf.clear();
    }
}

/// `<Error>`: what failed and, for wrong-region answers, which region the server expects.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ErrorDoc {
    pub code: String,
    pub message: String,
    pub region: Option<String>,
}

/// ListObjectsV2's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListBucketResult {
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
    pub encoding_type: Option<String>,
    pub contents: Vec<ObjectDoc>,
    pub common_prefixes: Vec<PrefixDoc>,
}

/// One object of a listing.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ObjectDoc {
    pub key: String,
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
    pub size: u64,
}

/// One common prefix (an implied or marked folder) of a delimited listing.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct PrefixDoc {
    pub prefix: String,
}

/// CreateMultipartUpload's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InitiateResult {
    pub upload_id: String,
}

/// CopyObject's, UploadPartCopy's and CompleteMultipartUpload's answers all carry an ETag.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct EtagResult {
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
    /// UploadPartCopy's CRC32C of the part, in an upload created with that algorithm.
    #[serde(rename = "ChecksumCRC32C")]
    pub checksum_crc32c: Option<String>,
}

/// ListMultipartUploads' answer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListUploadsResult {
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
    pub upload: Vec<UploadDoc>,
}

/// One pending multipart upload.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct UploadDoc {
    pub key: String,
    pub upload_id: String,
    pub initiated: String,
}

/// ListParts' answer: the parts an upload holds so far, and when each arrived.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListPartsResult {
    pub is_truncated: bool,
    pub next_part_number_marker: Option<String>,
    pub part: Vec<PartDoc>,
}

/// One part of a pending multipart upload.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct PartDoc {
    pub last_modified: String,
}

/// DeleteObjects' answer: only failures are listed in quiet mode.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct DeleteResult {
    pub error: Vec<DeleteError>,
}

/// One key DeleteObjects could not delete.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct DeleteError {
    pub key: String,
    pub code: String,
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// The body of CompleteMultipartUpload: parts in ascending order.
pub(crate) fn complete_body(parts: &[(u32, String)]) -> String {
    let parts: Vec<(u32, String, Option<String>)> =
        parts.iter().map(|(n, e)| (*n, e.clone(), None)).collect();
    complete_body_with_sums(&parts)
}

/// CompleteMultipartUpload's body, with each part's CRC32C where the upload was created
/// with that checksum algorithm (the server checks them against the parts it holds).
pub(crate) fn complete_body_with_sums(parts: &[(u32, String, Option<String>)]) -> String {
    let mut s = String::from("<CompleteMultipartUpload>");
    for (n, etag, crc) in parts {
        s.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag>",
            esc(etag)
        ));
        if let Some(c) = crc {
            s.push_str(&format!("<ChecksumCRC32C>{}</ChecksumCRC32C>", esc(c)));
        }
        s.push_str("</Part>");
    }
    s.push_str("</CompleteMultipartUpload>");
    s
}

/// The body of DeleteObjects, in quiet mode (only failures come back).
pub(crate) fn delete_body(keys: &[String]) -> String {
    let mut s = String::from("<Delete><Quiet>true</Quiet>");
    for k in keys {
        s.push_str(&format!("<Object><Key>{}</Key></Object>", esc(k)));
    }
    s.push_str("</Delete>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>a/</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents><Key>a/</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>0</Size></Contents>
  <Contents><Key>a/f</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;y&quot;</ETag><Size>5</Size><StorageClass>STANDARD</StorageClass></Contents>
  <CommonPrefixes><Prefix>a/d/</Prefix></CommonPrefixes>
  <NextContinuationToken>tok</NextContinuationToken>
</ListBucketResult>"#;
        let r: ListBucketResult = parse(xml.as_bytes(), "list").unwrap();
        assert!(r.is_truncated);
        assert_eq!(r.contents.len(), 2);
        assert_eq!(r.contents[1].etag.as_deref(), Some("\"y\""));
        assert_eq!(r.contents[1].size, 5);
        assert_eq!(r.common_prefixes[0].prefix, "a/d/");
        assert_eq!(r.next_continuation_token.as_deref(), Some("tok"));
    }

    #[test]
    fn errors_and_roots() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>AuthorizationHeaderMalformed</Code>\
            <Message>bad</Message><Region>garage</Region></Error>";
        let e: ErrorDoc = parse(xml, "err").unwrap();
        assert_eq!(e.code, "AuthorizationHeaderMalformed");
        assert_eq!(e.region.as_deref(), Some("garage"));
        assert_eq!(root_name(xml).as_deref(), Some("Error"));
        assert_eq!(
            root_name(b"<CopyObjectResult><ETag>1</ETag></CopyObjectResult>").as_deref(),
            Some("CopyObjectResult")
        );
    }

    #[test]
    fn bodies_escape() {
        assert_eq!(
            delete_body(&["a&b".into()]),
            "<Delete><Quiet>true</Quiet><Object><Key>a&amp;b</Key></Object></Delete>"
        );
        assert!(complete_body(&[(1, "\"e\"".into())]).contains("<ETag>&quot;e&quot;</ETag>"));
    }
}
