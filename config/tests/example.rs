//! The example of docs/interface.md loads, with every value where the contract says.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bucketgate_config::*;
use common::*;

#[test]
fn interface_example_loads() {
    let loaded = load_text(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;

    let sftp = c.sftp.as_ref().unwrap();
    assert_eq!(sftp.listen, "127.0.0.1:2222".parse().unwrap());
    assert!(!sftp.proxy_protocol.is_enabled() && !sftp.legacy_algorithms);
    assert_eq!(
        sftp.host_keys,
        [PathBuf::from("/etc/bucketgate/data/ssh_host_ed25519_key")]
    );

    let ftp = c.ftp.as_ref().unwrap();
    assert_eq!(ftp.listen, "127.0.0.1:2121".parse().unwrap());
    assert_eq!(ftp.passive_ports.range(), 50000..=50100);
    assert!(!ftp.active_mode);
    assert_eq!(ftp.public_address.as_deref(), Some("203.0.113.10"));
    let tls = ftp.tls.as_ref().unwrap();
    assert_eq!(tls.mode, TlsMode::Explicit);
    assert_eq!(tls.cert, PathBuf::from("/etc/bucketgate/tls/cert.pem"));
    assert_eq!(tls.key, PathBuf::from("/etc/bucketgate/tls/key.pem"));
    assert_eq!(tls.listen_implicit, Some("127.0.0.1:9990".parse().unwrap()));
    assert_eq!(
        c.admin.as_ref().unwrap().listen,
        "127.0.0.1:9100".parse().unwrap()
    );

    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.limits.ban.window.get(), Duration::from_secs(1800));
    assert_eq!(c.transfers, TransfersConfig::default());
    assert_eq!(c.transfers.part_size.bytes(), 8 << 20);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.state_dir, PathBuf::from("/etc/bucketgate/data"));
    assert_eq!(
        c.storage,
        StorageConfig::Local {
            root: "/etc/bucketgate/data/files".into()
        }
    );

    let r = c.remote("acme-minio").unwrap();
    assert_eq!(r.kind, RemoteKind::S3);
    assert_eq!(r.endpoint, "https://minio.acme.example:9000");
    assert_eq!(r.bucket, "exchange");
    assert_eq!(r.region, "");
    assert_eq!(r.access_key_id, "AKIAEXAMPLE");
    assert_eq!(r.secret_access_key.expose(), SECRET);
    assert!(r.path_style && r.preserve_mtime && !r.is_anonymous());
    assert_eq!(
        r.ca_file,
        Some(PathBuf::from("/etc/bucketgate/acme-ca.pem"))
    );
    assert_eq!(r.source_address, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(r.max_connections, 0);
    assert_eq!(r.timeouts.connect.get(), Duration::from_secs(10));
    assert_eq!(r.timeouts.request.get(), Duration::from_secs(60));
    assert!(c.remote("nope").is_none());

    assert_eq!(
        c.mounts,
        [MountConfig {
            path: "/partners/acme".into(),
            remote: "acme-minio".into(),
            prefix: "inbound/".into()
        }]
    );

    let alice = c.user("alice").unwrap();
    assert!(alice
        .password_hash
        .as_ref()
        .unwrap()
        .expose()
        .starts_with("$argon2id$"));
    assert_eq!(alice.public_keys, [KEY]);
    assert_eq!(alice.home, "/users/alice");
    assert_eq!(alice.protocols, [Protocol::Sftp, Protocol::Ftp]);
    use Permission::*;
    assert_eq!(
        alice.permissions,
        BTreeMap::from([
            (
                "/".to_string(),
                vec![List, Download, Upload, Overwrite, Delete, Rename, Mkdir]
            ),
            ("/archive".to_string(), vec![List, Download]),
        ])
    );
    assert!(alice.allows("/archive/2024/x", Download));
    assert!(!alice.allows("/archive/x", Upload));
    assert!(
        alice.allows("/archive2", Upload),
        "rules match whole components"
    );
    let ips: Vec<String> = alice.allowed_ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(ips, ["10.0.0.0/8", "127.0.0.1/32"]);
    assert!(alice.allows_ip(&"10.2.3.4".parse().unwrap()));
    assert!(!alice.allows_ip(&"192.168.1.1".parse().unwrap()));

    let s = c.sync("acme-inbound").unwrap();
    assert_eq!(s.path, "/users/alice/inbound");
    assert_eq!(s.remote, "acme-minio");
    assert_eq!(s.prefix, "outbound/");
    assert_eq!(s.direction, Direction::Pull);
    assert_eq!(s.interval.unwrap().get(), Duration::from_secs(300));
    assert!(!s.delete);
    assert_eq!(s.conflict, Conflict::Newer);
    assert_eq!(s.include, ["**"]);
    assert_eq!(s.exclude, ["**/*.tmp"]);

    // listen_implicit next to `mode: explicit` is only worth a remark.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].path, "ftp.tls.listen_implicit");
}

#[test]
fn debug_output_hides_secrets() {
    let loaded = load_text(EXAMPLE).unwrap();
    let dump = format!("{loaded:?} {:#?}", loaded.config);
    assert!(!dump.contains(SECRET));
    assert!(!dump.contains("$argon2id"));
    assert!(dump.contains("***"));
}

#[test]
fn lines_of_a_loaded_config() {
    let loaded = load_text(EXAMPLE).unwrap();
    assert_eq!(
        loaded.line_of("mounts[0].path"),
        Some(line_of(EXAMPLE, "path: /partners/acme"))
    );
    // A defaulted key points at the item that lacks it.
    assert_eq!(
        loaded.line_of("mounts[0].nothing"),
        Some(line_of(EXAMPLE, "path: /partners/acme"))
    );
    let e = loaded.error_at("mounts[0].path", "mount point is not empty: holds 3 files");
    assert_eq!(
        e.to_string(),
        format!(
            "mounts[0].path (line {}): mount point is not empty: holds 3 files",
            line_of(EXAMPLE, "path: /partners/acme")
        )
    );
    let e = Loaded::from_config(Config::default()).error_at("mounts[0].path", "x");
    assert_eq!(e.to_string(), "mounts[0].path: x");
}

#[test]
fn load_reads_a_file_relative_to_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bucketgate.yaml");
    std::fs::write(
        &file,
        "state_dir: ./state\nstorage: {type: local, root: site}\n",
    )
    .unwrap();
    let c = bucketgate_config::load(&file).unwrap().config;
    assert_eq!(c.state_dir, dir.path().join("state"));
    assert_eq!(
        c.storage,
        StorageConfig::Local {
            root: dir.path().join("site")
        }
    );
}

#[test]
fn load_reports_a_missing_file() {
    let err =
        bucketgate_config::load(std::path::Path::new("/nonexistent/bucketgate.yaml")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err
        .to_string()
        .contains("cannot read config file /nonexistent/bucketgate.yaml"));
}

#[test]
fn load_str_reads_the_process_environment() {
    // A name no other test uses: the environment is shared by the whole test binary.
    std::env::set_var("BUCKETGATE_CONFIG_TEST_LEVEL", "debug");
    let c = load_str(
        "log:\n  level: ${BUCKETGATE_CONFIG_TEST_LEVEL}\n",
        std::path::Path::new("/"),
    )
    .unwrap()
    .config;
    assert_eq!(c.log.level, "debug");
    let e = load_str(
        "log:\n  level: ${BUCKETGATE_CONFIG_TEST_UNSET}\n",
        std::path::Path::new("/"),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "log.level (line 2): environment variable `BUCKETGATE_CONFIG_TEST_UNSET` is not set"
    );
}
