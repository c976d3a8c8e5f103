//! Remotes, the site tree, mounts and syncs: the checks that tie them together.

use super::names::{bucket_problem, endpoint_problem, name_problem};
use super::{Hints, Validator};
use crate::paths::{
    is_within, normalize_prefix, normalize_site_path, prefix_problem, prefixes_overlap,
};
use crate::schema::{Config, Conflict, Direction, EncryptionMode, StorageConfig};

pub(super) fn check(c: &Config, hints: &Hints, v: &mut Validator<'_>) {
    remotes(c, v);
    let known = |name: &str| c.remote(name).is_some() || hints.broken_remotes.contains(name);
    let unknown = |name: &str| {
        let names: Vec<&str> = c.remotes.iter().map(|r| r.name.as_str()).collect();
        if names.is_empty() {
            format!("unknown remote `{name}`: `remotes` is empty")
        } else {
            format!(
                "unknown remote `{name}`; defined remotes: {}",
                names.join(", ")
            )
        }
    };

    // The site tree, when in a bucket, is one more window onto that bucket's keys.
    let mut windows: Vec<Window> = Vec::new();
    if let StorageConfig::S3 { remote, prefix } = &c.storage {
        if !known(remote) {
            v.error("storage.remote", unknown(remote));
        }
        let p = normalize_prefix(prefix);
        match prefix_problem(&p) {
            Some(why) => v.error("storage.prefix", why),
            None => windows.push(Window {
                path: "storage.prefix".into(),
                remote,
                prefix: p,
            }),
        }
    }

    let mut mount_points: Vec<(String, String)> = Vec::new();
    for (i, m) in c.mounts.iter().enumerate() {
        let at = format!("mounts[{i}]");
        match normalize_site_path(&m.path) {
            Err(why) => v.error(format!("{at}.path"), why),
            Ok(path) => {
                if let Some((other, _)) = mount_points.iter().find(|(_, p)| *p == path) {
                    let msg = format!(
                        "two mounts on one path: {} is mounted there too",
                        v.at(other)
                    );
                    v.error(format!("{at}.path"), msg);
                } else {
                    mount_points.push((format!("{at}.path"), path));
                }
            }
        }
        if !known(&m.remote) {
            v.error(format!("{at}.remote"), unknown(&m.remote));
        }
        let prefix = normalize_prefix(&m.prefix);
        if let Some(why) = prefix_problem(&prefix) {
            v.error(format!("{at}.prefix"), why);
            continue;
        }
        let blame = if v.written(&format!("{at}.prefix")) {
            format!("{at}.prefix")
        } else {
            format!("{at}.remote")
        };
        if let Some(w) = windows
            .iter()
            .find(|w| w.remote == m.remote && prefixes_overlap(&w.prefix, &prefix))
        {
            let msg = format!(
                "bucket prefix `{prefix}` of remote `{}` overlaps prefix `{}` used by {}",
                m.remote,
                w.prefix,
                v.at(&w.path)
            );
            v.error(blame.clone(), msg);
        }
        windows.push(Window {
            path: blame,
            remote: &m.remote,
            prefix,
        });
    }

    syncs(c, &mount_points, &known, &unknown, v);
}

struct Window<'a> {
    /// Where the window is declared, to name it in messages.
    path: String,
    remote: &'a str,
    prefix: String,
}

fn remotes(c: &Config, v: &mut Validator<'_>) {
    for (i, r) in c.remotes.iter().enumerate() {
        let at = format!("remotes[{i}]");
        if let Some(why) = name_problem(&r.name) {
            v.error(format!("{at}.name"), format!("remote name {why}"));
        } else if let Some(first) = c.remotes[..i].iter().position(|o| o.name == r.name) {
            let msg = format!(
                "duplicate remote name `{}`: already used by {}",
                r.name,
                v.at(&format!("remotes[{first}]"))
            );
            v.error(format!("{at}.name"), msg);
        }
        if let Some(why) = endpoint_problem(&r.endpoint) {
            v.error(format!("{at}.endpoint"), why);
        }
        if let Some(why) = bucket_problem(&r.bucket) {
            v.error(format!("{at}.bucket"), why);
        }
        credentials(r, &at, v);
        match (r.access_key_id.is_empty(), r.secret_access_key.is_empty()) {
            (false, true) => v.error(
                format!("{at}.secret_access_key"),
                "is blank while access_key_id is set: give both, or neither for anonymous access",
            ),
            (true, false) => v.error(
                format!("{at}.access_key_id"),
                "is blank while secret_access_key is set: give both, or neither for anonymous access",
            ),
            _ => {}
        }
        for (key, d) in [
            ("connect", r.timeouts.connect),
            ("request", r.timeouts.request),
        ] {
            if d.get().is_zero() {
                v.error(format!("{at}.timeouts.{key}"), "must be longer than 0");
            }
        }
        if r.region
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            v.error(format!("{at}.region"), "must not contain spaces");
        }
        encryption(r, &at, v);
    }
}

/// STS's limits on a role session's duration, in seconds.
const ROLE_DURATION: std::ops::RangeInclusive<u64> = 900..=43_200;

/// `credentials` and how it fits the two keys.
fn credentials(r: &crate::schema::RemoteConfig, at: &str, v: &mut Validator<'_>) {
    use crate::schema::CredentialSourceKind as K;
    let Some(c) = &r.credentials else {
        return;
    };
    let keys = !r.access_key_id.is_empty() || !r.secret_access_key.is_empty();
    match c.source {
        K::Static => {
            if !keys && c.assume_role.is_none() {
                v.error(
                    format!("{at}.credentials.source"),
                    "`source: static` needs access_key_id and secret_access_key on the remote",
                );
            }
        }
        other => {
            if keys {
                let key = if r.access_key_id.is_empty() {
                    "secret_access_key"
                } else {
                    "access_key_id"
                };
                v.error(
                    format!("{at}.{key}"),
                    format!(
                        "keys on the remote are the short form of `credentials.source: static`; this remote has `source: {}`: remove the keys or the source",
                        other.name()
                    ),
                );
            }
        }
    }
    if !c.profile.is_empty() && !matches!(c.source, K::Profile | K::Chain) {
        v.error(
            format!("{at}.credentials.profile"),
            format!(
                "is only for `source: profile` or `source: chain` (this remote has `source: {}`)",
                c.source.name()
            ),
        );
    }
    if !c.profile.is_empty() && !header_safe(&c.profile) {
        v.error(
            format!("{at}.credentials.profile"),
            "must be a profile name: no spaces or control characters",
        );
    }
    if !c.sts_endpoint.trim().is_empty() {
        if let Some(why) = super::names::endpoint_problem(c.sts_endpoint.trim()) {
            v.error(format!("{at}.credentials.sts_endpoint"), why);
        }
    }
    if let Some(ar) = &c.assume_role {
        if ar.role_arn.trim().is_empty() {
            v.error(
                format!("{at}.credentials.assume_role.role_arn"),
                "is required: the ARN of the role to assume (arn:aws:iam::ACCOUNT:role/NAME)",
            );
        } else if !ar.role_arn.starts_with("arn:") || !header_safe(&ar.role_arn) {
            v.error(
                format!("{at}.credentials.assume_role.role_arn"),
                "must be a role ARN such as arn:aws:iam::123456789012:role/NAME",
            );
        }
        if let Some(d) = ar.duration {
            let secs = d.get().as_secs();
            if !ROLE_DURATION.contains(&secs) || d.get().subsec_nanos() != 0 {
                v.error(
                    format!("{at}.credentials.assume_role.duration"),
                    format!(
                        "must be between 15m and 12h (STS accepts 900 to 43200 seconds), not {secs} s"
                    ),
                );
            }
        }
        if !ar.session_name.is_empty()
            && (ar.session_name.len() < 2
                || ar.session_name.len() > 64
                || !ar
                    .session_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"=,.@-_".contains(&b)))
        {
            v.error(
                format!("{at}.credentials.assume_role.session_name"),
                "must be 2 to 64 letters, digits or =,.@-_ (STS's rule)",
            );
        }
    }
}

/// `encryption` and the keys that go with it; `storage_class`.
fn encryption(r: &crate::schema::RemoteConfig, at: &str, v: &mut Validator<'_>) {
    let kms_only = |v: &mut Validator<'_>, key: &str| {
        v.error(
            format!("{at}.{key}"),
            format!(
                "is only for `encryption: kms` (this remote has `encryption: {}`)",
                mode_name(r.encryption)
            ),
        )
    };
    if r.encryption != EncryptionMode::Kms {
        if !r.kms_key_id.is_empty() {
            kms_only(v, "kms_key_id");
        }
        if r.bucket_key {
            kms_only(v, "bucket_key");
        }
    }
    if r.encryption != EncryptionMode::Customer && !r.customer_key_env.is_empty() {
        v.error(
            format!("{at}.customer_key_env"),
            format!(
                "is only for `encryption: customer` (this remote has `encryption: {}`)",
                mode_name(r.encryption)
            ),
        );
    }
    if r.encryption == EncryptionMode::Kms
        && !r.kms_key_id.is_empty()
        && !header_safe(&r.kms_key_id)
    {
        v.error(
            format!("{at}.kms_key_id"),
            "must be a key id, ARN or alias: no spaces or control characters",
        );
    }
    if r.encryption == EncryptionMode::Customer {
        if let Err(why) = r.customer_key() {
            // Blamed on `customer_key_env` when written, else on `encryption`.
            let key = if r.customer_key_env.is_empty() {
                "encryption"
            } else {
                "customer_key_env"
            };
            v.error(format!("{at}.{key}"), why);
        }
        if r.endpoint.starts_with("http://") && !is_loopback_endpoint(&r.endpoint) {
            v.error(
                format!("{at}.encryption"),
                "`encryption: customer` sends the key with every request: the endpoint must be https:// (S3 refuses SSE-C over plain HTTP)",
            );
        }
    }
    if !r.storage_class.is_empty() && !header_safe(&r.storage_class) {
        v.error(
            format!("{at}.storage_class"),
            "must be a storage class name such as STANDARD_IA: no spaces or control characters",
        );
    }
}

fn mode_name(m: EncryptionMode) -> &'static str {
    match m {
        EncryptionMode::None => "none",
        EncryptionMode::S3 => "s3",
        EncryptionMode::Kms => "kms",
        EncryptionMode::Customer => "customer",
    }
}

/// Printable ASCII without spaces: what an HTTP header value of a name may hold.
fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// A plain-HTTP endpoint on this machine (the test servers), where the key never leaves it.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .split('/')
        .next()
        .unwrap_or("");
    let host = match rest.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => rest,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn syncs(
    c: &Config,
    mount_points: &[(String, String)],
    known: &dyn Fn(&str) -> bool,
    unknown: &dyn Fn(&str) -> String,
    v: &mut Validator<'_>,
) {
    for (i, s) in c.syncs.iter().enumerate() {
        let at = format!("syncs[{i}]");
        // Two jobs copying into (or from) overlapping parts of one bucket would undo each
        // other's work and delete each other's files, as two mounts would.
        let prefix = normalize_prefix(&s.prefix);
        if prefix_problem(&prefix).is_none() {
            if let Some(first) = c.syncs[..i].iter().position(|o| {
                let p = normalize_prefix(&o.prefix);
                o.remote == s.remote
                    && prefix_problem(&p).is_none()
                    && prefixes_overlap(&p, &prefix)
            }) {
                let msg = format!(
                    "bucket prefix `{prefix}` of remote `{}` overlaps prefix `{}` used by {}",
                    s.remote,
                    normalize_prefix(&c.syncs[first].prefix),
                    v.at(&format!("syncs[{first}]"))
                );
                v.error(format!("{at}.prefix"), msg);
            }
        }
        if let Some(why) = name_problem(&s.name) {
            v.error(format!("{at}.name"), format!("sync name {why}"));
        } else if let Some(first) = c.syncs[..i].iter().position(|o| o.name == s.name) {
            let msg = format!(
                "duplicate sync name `{}`: already used by {}",
                s.name,
                v.at(&format!("syncs[{first}]"))
            );
            v.error(format!("{at}.name"), msg);
        }
        match normalize_site_path(&s.path) {
            Err(why) => v.error(format!("{at}.path"), why),
            Ok(path) => {
                // A sync writes through the site tree; inside a mount it would copy a bucket
                // onto itself or onto another bucket behind the operator's back.
                if let Some((mount_at, mount)) = mount_points
                    .iter()
                    .filter(|(_, m)| is_within(&path, m))
                    .max_by_key(|(_, m)| m.len())
                {
                    let msg = format!(
                        "sync folder `{path}` is inside the mount `{mount}` of {}: a sync must copy a folder of the site tree",
                        v.at(mount_at)
                    );
                    v.error(format!("{at}.path"), msg);
                }
            }
        }
        if !known(&s.remote) {
            v.error(format!("{at}.remote"), unknown(&s.remote));
        }
        if let Some(why) = prefix_problem(&normalize_prefix(&s.prefix)) {
            v.error(format!("{at}.prefix"), why);
        }
        // `conflict: newer` on a one-way job is harmless (the interface's own example writes
        // it); asking for keep-both there shows a misunderstanding of what the job does. The
        // default (keep-both) applies to two-way jobs only, so it is no error when not written.
        if s.direction != Direction::TwoWay
            && s.conflict == Conflict::KeepBoth
            && v.written(&format!("{at}.conflict"))
        {
            v.error(
                format!("{at}.conflict"),
                "only applies to `direction: two-way`: a push or pull job overwrites the other side",
            );
        }
        if s.interval.is_some_and(|d| d.get().is_zero()) {
            v.error(
                format!("{at}.interval"),
                "must be longer than 0; omit it to run the job only on demand",
            );
        }
        if s.include.is_empty() {
            v.error(
                format!("{at}.include"),
                "is empty: nothing would be copied; omit it to include everything",
            );
        }
        for (key, globs) in [("include", &s.include), ("exclude", &s.exclude)] {
            for (k, g) in globs.iter().enumerate() {
                if g.trim().is_empty() {
                    v.error(format!("{at}.{key}[{k}]"), "is an empty pattern");
                }
            }
        }
    }
}
