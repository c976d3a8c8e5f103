//! The site tree (`storage`), S3 `remotes` and `mounts`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::Secret;
use crate::units::Duration;

/// `storage:` — where the site tree lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageConfig {
    /// A local directory (resolved against the config folder).
    Local {
        /// The directory.
        root: PathBuf,
    },
    /// A prefix of a bucket.
    S3 {
        /// Name of an entry of `remotes`.
        remote: String,
        /// Key prefix inside the bucket: empty, or ending with `/` once loaded.
        prefix: String,
    },
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig::Local {
            root: PathBuf::from("./data/files"),
        }
    }
}

impl<'de> Deserialize<'de> for StorageConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not `#[serde(try_from)]`: its conversion runs after the section is read, so its
        // error would be blamed on the parent. Converting inside the visitor keeps it here.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StorageConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<StorageConfig, A::Error> {
                let raw =
                    RawStorage::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                raw.try_into().map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_struct("StorageConfig", &["type", "root", "remote", "prefix"], V)
    }
}

/// What `storage:` is written as. A flat struct rather than serde's internally tagged enum:
/// the latter buffers the section and loses the line of the key at fault.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(rename = "type", default)]
    kind: StorageKind,
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    remote: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StorageKind {
    #[default]
    Local,
    S3,
}

impl TryFrom<RawStorage> for StorageConfig {
    type Error = String;

    fn try_from(raw: RawStorage) -> Result<Self, String> {
        match raw.kind {
            StorageKind::Local => {
                if raw.remote.is_some() || raw.prefix.is_some() {
                    return Err("`remote` and `prefix` are only for `type: s3`".into());
                }
                Ok(StorageConfig::Local {
                    root: raw.root.unwrap_or_else(|| PathBuf::from("./data/files")),
                })
            }
            StorageKind::S3 => {
                if raw.root.is_some() {
                    return Err("`root` is only for `type: local`".into());
                }
                Ok(StorageConfig::S3 {
                    remote: raw
                        .remote
                        .ok_or("`type: s3` needs `remote`, a name from `remotes`")?,
                    prefix: raw.prefix.unwrap_or_default(),
                })
            }
        }
    }
}

/// An entry of `remotes:` — an S3-compatible bucket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Internal name, unique among remotes.
    pub name: String,
    /// Kind of service; only `s3` exists.
    #[serde(rename = "type", default)]
    pub kind: RemoteKind,
    /// `http://` or `https://` URL of the service.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Signing region; blank means the gateway's default (`us-east-1`).
    #[serde(default)]
    pub region: String,
    /// Access key id; with `secret_access_key` blank too, requests are anonymous.
    #[serde(default)]
    pub access_key_id: String,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Secret,
    /// Where the credentials come from; absent: the two keys above (`source: static`), or
    /// anonymous access without them.
    #[serde(default)]
    pub credentials: Option<CredentialsConfig>,
    /// Path-style addressing (MinIO, Ceph, Garage); false = virtual-hosted style.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Private CA bundle (PEM) trusted for this endpoint (resolved against the config folder).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Local address that outbound connections bind to.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// Cap on concurrent requests to this remote; 0 = no cap.
    #[serde(default)]
    pub max_connections: u32,
    /// Network timeouts.
    #[serde(default)]
    pub timeouts: RemoteTimeouts,
    /// Keep client-set modification times in `mtime` metadata.
    #[serde(default = "yes")]
    pub preserve_mtime: bool,
    /// The checksum every upload request carries for the server to verify, and with which
    /// whole-object downloads are checked.
    #[serde(default)]
    pub checksum: ChecksumMode,
    /// The time folders show.
    #[serde(default)]
    pub folder_times: FolderTimes,
    /// Server-side encryption of the objects the gateway writes (and, for `customer`, reads).
    #[serde(default)]
    pub encryption: EncryptionMode,
    /// The KMS key (id, ARN or alias) for `encryption: kms`; blank = the account's default
    /// `aws/s3` key.
    #[serde(default)]
    pub kms_key_id: String,
    /// S3 Bucket Keys for `encryption: kms` (fewer KMS requests).
    #[serde(default)]
    pub bucket_key: bool,
    /// For `encryption: customer`: the name of the environment variable that holds the
    /// base64 256-bit SSE-C key (the name, never the key, is in the file).
    #[serde(default)]
    pub customer_key_env: String,
    /// The storage class of every object written (`STANDARD_IA`, ...); blank = the
    /// server's default.
    #[serde(default)]
    pub storage_class: String,
}

/// `remotes[].credentials`: where a remote's credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// The source.
    #[serde(default)]
    pub source: CredentialSourceKind,
    /// The profile of `source: profile` or `chain`; blank: `AWS_PROFILE`, else `default`.
    #[serde(default)]
    pub profile: String,
    /// A role assumed with the source's credentials.
    #[serde(default)]
    pub assume_role: Option<AssumeRoleConfig>,
    /// The STS endpoint of AssumeRole and web identity; blank: `AWS_ENDPOINT_URL_STS`, else
    /// AWS's.
    #[serde(default)]
    pub sts_endpoint: String,
}

/// `remotes[].credentials.source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSourceKind {
    /// `access_key_id` and `secret_access_key`.
    #[default]
    Static,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    Env,
    /// A profile of the shared credentials and config files.
    Profile,
    /// `AWS_ROLE_ARN` with the token file `AWS_WEB_IDENTITY_TOKEN_FILE`.
    WebIdentity,
    /// The container credential endpoint (ECS, EKS Pod Identity).
    Container,
    /// Instance metadata (IMDSv2).
    Instance,
    /// env, profile, web_identity, container, instance: the first that gives credentials.
    Chain,
}

impl CredentialSourceKind {
    /// The name the file uses.
    pub fn name(self) -> &'static str {
        match self {
            CredentialSourceKind::Static => "static",
            CredentialSourceKind::Env => "env",
            CredentialSourceKind::Profile => "profile",
            CredentialSourceKind::WebIdentity => "web_identity",
            CredentialSourceKind::Container => "container",
            CredentialSourceKind::Instance => "instance",
            CredentialSourceKind::Chain => "chain",
        }
    }
}

/// `remotes[].credentials.assume_role`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssumeRoleConfig {
    /// The role's ARN.
    #[serde(default)]
    pub role_arn: String,
    /// The external id the role's trust policy requires.
    #[serde(default)]
    pub external_id: String,
    /// The session name; blank: `bucketgate`.
    #[serde(default)]
    pub session_name: String,
    /// How long each set of role credentials lasts (900 s to 12 h); absent: 1 h.
    #[serde(default)]
    pub duration: Option<Duration>,
}

/// `remotes[].encryption`: server-side encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// No header: the bucket's default encryption applies.
    #[default]
    None,
    /// SSE-S3 (`x-amz-server-side-encryption: AES256`).
    S3,
    /// SSE-KMS (`aws:kms`, with `kms_key_id` and `bucket_key`).
    Kms,
    /// SSE-C: a key of ours, from the variable `customer_key_env`, sent with every request
    /// that reads, writes or copies an object.
    Customer,
}

/// `remotes[].checksum`: how the bytes sent to and read from a remote are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumMode {
    /// `crc32c` where the server was found to refuse a PutObject and an UploadPart whose body
    /// does not match their CRC32C (the probe at start), `md5` elsewhere and until then.
    #[default]
    Auto,
    /// `Content-MD5` on every PutObject and UploadPart: verified by every S3 server tried.
    Md5,
    /// `x-amz-checksum-crc32c`: cheaper to compute; verified only by servers with the
    /// flexible-checksum API (AWS, Garage, recent MinIO); others ignore it silently.
    Crc32c,
    /// No checksum sent and no download checked.
    Off,
}

/// `remotes[].folder_times`: the time a folder shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderTimes {
    /// The gateway's start time, for every folder: a listing is its ListObjectsV2 pages alone.
    #[default]
    Start,
    /// A folder's marker `name/` Last-Modified, where it has one: one HEAD per folder listed.
    Marker,
}

impl RemoteConfig {
    /// True when no credentials are given: requests go unsigned.
    pub fn is_anonymous(&self) -> bool {
        self.access_key_id.is_empty()
            && self.secret_access_key.is_empty()
            && self
                .credentials
                .as_ref()
                .is_none_or(|c| c.source == CredentialSourceKind::Static && c.assume_role.is_none())
    }

    /// The SSE-C key of `encryption: customer`, read from the variable `customer_key_env`
    /// now: its 32 bytes, or why not (the message names the variable, never its value).
    pub fn customer_key(&self) -> Result<Secret32, String> {
        use base64::Engine;
        let var = self.customer_key_env.trim();
        if var.is_empty() {
            return Err("`encryption: customer` needs `customer_key_env`, the name of the environment variable holding the base64 SSE-C key".into());
        }
        let value = std::env::var(var)
            .map_err(|_| format!("the environment variable `{var}` is not set"))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| format!("the environment variable `{var}` is not valid base64"))?;
        <[u8; 32]>::try_from(raw.as_slice())
            .map(Secret32)
            .map_err(|_| {
                format!(
                    "the environment variable `{var}` decodes to {} bytes; an SSE-C key is 32 bytes (256 bits), e.g. `openssl rand -base64 32`",
                    raw.len()
                )
            })
    }
}

/// A 32-byte key that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret32(pub [u8; 32]);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn yes() -> bool {
    true
}

/// Kind of remote service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteKind {
    /// S3-compatible object storage.
    #[default]
    S3,
}

/// `remotes[].timeouts:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteTimeouts {
    /// Time to establish a connection (TCP and TLS).
    pub connect: Duration,
    /// Longest wait for the next byte of a response, not a total.
    pub request: Duration,
}

impl Default for RemoteTimeouts {
    fn default() -> Self {
        RemoteTimeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
        }
    }
}

/// An entry of `mounts:` — a folder of the site tree that shows a bucket prefix.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Absolute folder of the site tree (normalised once loaded: `/a/b`, or `/`).
    pub path: String,
    /// Name of an entry of `remotes`.
    pub remote: String,
    /// Key prefix inside the bucket: empty, or ending with `/` once loaded.
    #[serde(default)]
    pub prefix: String,
}
