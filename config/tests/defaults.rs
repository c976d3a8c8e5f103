//! Omitted sections and keys take the documented defaults; `$${` escapes.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bucketgate_config::*;
use common::*;

fn defaults_at_base() -> Config {
    Config {
        state_dir: "/etc/bucketgate/data".into(),
        storage: StorageConfig::Local {
            root: "/etc/bucketgate/data/files".into(),
        },
        ..Config::default()
    }
}

#[test]
fn an_empty_file_is_all_defaults() {
    for text in ["", "\n", "# only a comment\n", "---\n", "{}\n", "~\n"] {
        let loaded = load_text(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(loaded.config, defaults_at_base(), "{text:?}");
        assert!(loaded.warnings.is_empty());
    }
}

#[test]
fn default_values() {
    let c = Config::default();
    assert!(c.sftp.is_none() && c.ftp.is_none() && c.admin.is_none());
    assert_eq!(c.limits.max_sessions, 1000);
    assert_eq!(c.limits.max_sessions_per_ip, 20);
    assert_eq!(c.limits.login_grace.get(), Duration::from_secs(30));
    assert_eq!(c.limits.idle_timeout.get(), Duration::from_secs(900));
    assert_eq!(c.limits.ban.threshold, 15);
    assert_eq!(c.limits.ban.window.get(), Duration::from_secs(1800));
    assert_eq!(c.limits.ban.duration.get(), Duration::from_secs(1800));
    assert!(c.limits.ban.safelist.is_empty());
    assert_eq!(c.limits.shutdown_grace.get(), Duration::from_secs(30));
    assert_eq!(c.transfers.part_size.bytes(), 8 * 1024 * 1024);
    assert_eq!(c.transfers.concurrency, 4);
    assert_eq!(c.transfers.memory_limit.bytes(), 512 * 1024 * 1024);
    assert_eq!(c.transfers.single_put_max.bytes(), 200 * 1024 * 1024);
    assert_eq!(
        c.transfers.stale_multipart_after.get(),
        Duration::from_secs(86400)
    );
    assert!(!c.transfers.keep_partial_uploads);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.state_dir, PathBuf::from("./data"));
    assert!(c.validate().is_ok());
}

#[test]
fn blank_sections_are_defaults() {
    let c = load_text("limits:\ntransfers:\nlog:\nremotes:\nusers:\n")
        .unwrap()
        .config;
    assert_eq!(c, defaults_at_base());
}

#[test]
fn item_defaults() {
    let text = format!(
        r#"sftp: {{}}
ftp:
  listen: "0.0.0.0:21"
admin: {{}}
remotes:
  - name: anon
    endpoint: http://127.0.0.1:9000
    bucket: public
mounts:
  - path: /pub/
    remote: anon
users:
  - username: bob
    public_keys: ["{KEY}"]
    home: /home/bob/
syncs:
  - name: mirror
    path: /mirror
    remote: anon
    prefix: /mirror
    direction: two-way
"#
    );
    let loaded = load_text(&text).unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;
    let sftp = c.sftp.as_ref().unwrap();
    assert_eq!(sftp.listen, "127.0.0.1:2222".parse().unwrap());
    assert_eq!(
        sftp.host_keys,
        [PathBuf::from("/etc/bucketgate/data/ssh_host_ed25519_key")]
    );
    let ftp = c.ftp.as_ref().unwrap();
    assert_eq!(ftp.listen, "0.0.0.0:21".parse().unwrap());
    assert_eq!(
        ftp.passive_ports,
        PortRange {
            low: 50000,
            high: 50100
        }
    );
    assert!(!ftp.active_mode && !ftp.proxy_protocol.is_enabled() && ftp.tls.is_none());
    assert_eq!(
        c.admin.as_ref().unwrap().listen,
        "127.0.0.1:9100".parse().unwrap()
    );

    let r = &c.remotes[0];
    assert_eq!(r.kind, RemoteKind::S3);
    assert!(r.path_style && r.preserve_mtime && r.is_anonymous());
    assert_eq!(r.checksum, bucketgate_config::ChecksumMode::Auto);
    assert_eq!(r.encryption, bucketgate_config::EncryptionMode::None);
    assert!(r.kms_key_id.is_empty() && !r.bucket_key && r.customer_key_env.is_empty());
    assert!(r.storage_class.is_empty());
    assert_eq!(r.region, "");
    assert_eq!(r.max_connections, 0);
    assert_eq!(r.timeouts, RemoteTimeouts::default());
    assert_eq!(r.timeouts.connect.get(), Duration::from_secs(10));
    assert_eq!(r.timeouts.request.get(), Duration::from_secs(60));
    assert!(r.ca_file.is_none() && r.source_address.is_none());
    // An anonymous remote is said so, without failing.
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains("anonymous"));
    assert_eq!(
        loaded.warnings[0].line,
        Some(line_of(&text, "- name: anon"))
    );

    // Site paths and prefixes come out normalised.
    assert_eq!(c.mounts[0].path, "/pub");
    assert_eq!(c.mounts[0].prefix, "");
    let u = &c.users[0];
    assert_eq!(u.home, "/home/bob");
    assert!(u.password_hash.is_none());
    assert_eq!(u.protocols, [Protocol::Sftp, Protocol::Ftp]);
    assert_eq!(
        u.permissions,
        BTreeMap::from([("/".to_string(), vec![Permission::All])])
    );
    assert!(u.allows("/deep/down", Permission::Delete));
    assert!(u.allowed_ips.is_empty() && u.allows_ip(&"192.0.2.1".parse().unwrap()));
    let s = &c.syncs[0];
    assert_eq!(s.prefix, "mirror/");
    assert_eq!(s.direction, Direction::TwoWay);
    // Two-way conflicts keep both versions unless `conflict: newer` is written.
    assert_eq!(s.conflict, Conflict::KeepBoth);
    assert_eq!(s.max_delete, bucketgate_config::MaxDelete::Percent(50));
    assert!(!s.delete && s.interval.is_none());
    assert_eq!(s.include, ["**"]);
    assert!(s.exclude.is_empty());
}

#[test]
fn s3_site_tree() {
    let text = "storage:\n  type: s3\n  remote: main\n  prefix: /site\nremotes:\n  - name: main\n    endpoint: https://s3.example\n    bucket: site-bucket\n";
    let c = load_text(text).unwrap().config;
    assert_eq!(
        c.storage,
        StorageConfig::S3 {
            remote: "main".into(),
            prefix: "site/".into()
        }
    );
    // A mount of the same bucket must not show the site tree's keys.
    let clash = format!("{text}mounts:\n  - path: /m\n    remote: main\n    prefix: site/sub/\n");
    let errs = errors(&clash);
    assert_eq!(errs.len(), 1, "{}", show(&errs));
    assert!(
        errs[0].message.contains("used by storage.prefix (line 4)"),
        "{}",
        errs[0]
    );
}

#[test]
fn dollar_escape_and_substitution() {
    let text = "ftp:\n  public_address: \"$${HOST}\"\nlog:\n  level: \"info,${EMPTY}x=$${y}\"\n";
    let c = load_text(text).unwrap().config;
    assert_eq!(c.ftp.unwrap().public_address.as_deref(), Some("${HOST}"));
    assert_eq!(c.log.level, "info,x=${y}");
    // A substituted value is typed like a written one, and the lines stay right even when
    // the value spans lines.
    let c = load_text("sftp:\n  listen: 127.0.0.1:${PORT}\n")
        .unwrap()
        .config;
    assert_eq!(c.sftp.unwrap().listen.port(), 2200);
}

#[test]
fn sizes_and_durations_in_yaml() {
    let text = "transfers:\n  part_size: 6291456\n  memory_limit: 1GiB\n  stale_multipart_after: 2d\nlimits:\n  idle_timeout: 1h30m\n  login_grace: 500ms\n";
    let c = load_text(text).unwrap().config;
    assert_eq!(c.transfers.part_size.bytes(), 6 << 20);
    assert_eq!(c.transfers.memory_limit.bytes(), 1 << 30);
    assert_eq!(
        c.transfers.stale_multipart_after.get(),
        Duration::from_secs(172800)
    );
    assert_eq!(c.limits.idle_timeout.get(), Duration::from_secs(5400));
    assert_eq!(c.limits.login_grace.get(), Duration::from_millis(500));

    let small = "transfers:\n  part_size: 4MiB\n";
    assert!(errors(small)[0].message.contains("at least 5MiB"));
    // The part size named with its line where the file sets it, as a default where not.
    let tight = "transfers:\n  memory_limit: 1MiB\n";
    let msg = &errors(tight)[0].message;
    assert!(
        msg.contains("at least one part (transfers.part_size: 8MiB by default)"),
        "{msg}"
    );
    let tight = "transfers:\n  memory_limit: 6MiB\n  part_size: 7MiB\n";
    let msg = &errors(tight)[0].message;
    assert!(
        msg.contains("at least one part (transfers.part_size (line 3): 7MiB)"),
        "{msg}"
    );
    let zero = "limits:\n  login_grace: 0\n";
    assert!(errors(zero)[0].message.contains("longer than 0"));
}

#[test]
fn anchors_and_aliases() {
    let text = "remotes:\n  - name: a\n    endpoint: http://h:1\n    bucket: b-1\n    timeouts: &t { connect: 3s, request: 9s }\n  - name: b\n    endpoint: http://h:1\n    bucket: b-2\n    timeouts: *t\n";
    let c = load_text(text).unwrap().config;
    assert_eq!(c.remotes[1].timeouts.request.get(), Duration::from_secs(9));
}

#[test]
fn embedded_default_is_the_demo() {
    let c = embedded_default(Path::new("/srv/bg"));
    assert_eq!(c.state_dir, PathBuf::from("/srv/bg/data"));
    assert_eq!(
        c.storage,
        StorageConfig::Local {
            root: "/srv/bg/data/files".into()
        }
    );
    let sftp = c.sftp.as_ref().unwrap();
    assert_eq!(sftp.listen, "127.0.0.1:2222".parse().unwrap());
    assert_eq!(
        sftp.host_keys,
        [PathBuf::from("/srv/bg/data/ssh_host_ed25519_key")]
    );
    let ftp = c.ftp.as_ref().unwrap();
    assert_eq!(ftp.listen, "127.0.0.1:2121".parse().unwrap());
    assert_eq!(ftp.passive_ports.range(), 50000..=50100);
    assert!(c.users.is_empty() && c.admin.is_none());
    assert!(c.validate().is_ok());
    let rel = embedded_default(Path::new("."));
    assert_eq!(rel.state_dir, PathBuf::from("data"));
}

#[test]
fn validate_on_a_config_built_in_code() {
    let mut c = Config::default();
    c.mounts.push(MountConfig {
        path: "/m".into(),
        remote: "nowhere".into(),
        prefix: String::new(),
    });
    let errs = c.validate().unwrap_err();
    assert_eq!(
        errs.to_string(),
        "mounts[0].remote: unknown remote `nowhere`: `remotes` is empty"
    );
}

#[test]
fn proxy_protocol_lists_the_trusted_balancers() {
    let text =
        "sftp: { proxy_protocol: [127.0.0.1, \"10.0.0.0/8\"] }\nftp: { proxy_protocol: \"::1\" }\n";
    let c = load_text(text).unwrap().config;
    let sftp = &c.sftp.as_ref().unwrap().proxy_protocol;
    assert!(sftp.is_enabled());
    assert_eq!(sftp.trusted().len(), 2);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(sftp.trusted()[0].contains(&ip("127.0.0.1")));
    assert!(!sftp.trusted()[0].contains(&ip("127.0.0.2")));
    assert!(sftp.trusted()[1].contains(&ip("10.9.8.7")));
    let ftp = &c.ftp.as_ref().unwrap().proxy_protocol;
    assert_eq!(ftp.trusted().len(), 1);
    // `false` is the default, written out.
    let c = load_text("sftp: { proxy_protocol: false }\n")
        .unwrap()
        .config;
    assert!(!c.sftp.unwrap().proxy_protocol.is_enabled());
}
