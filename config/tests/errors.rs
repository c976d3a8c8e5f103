//! Each kind of mistake is reported at its YAML path and line; all of them in one run.

use crate::common;

use common::*;

/// A valid base the single-mistake tests add to.
fn base() -> String {
    format!(
        r#"remotes:
  - name: acme
    endpoint: https://s3.acme.example
    bucket: exchange
    access_key_id: AKIA
    secret_access_key: ${{SECRET}}
  - name: other
    endpoint: http://127.0.0.1:9000
    bucket: other-bucket
users:
  - username: alice
    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
    public_keys: ["{KEY}"]
    home: /users/alice
"#
    )
}

fn one(text: &str, path: &str, needle: &str, fragment: &str) {
    let errs = errors(text);
    assert_error(&errs, text, path, needle, fragment);
    assert_eq!(errs.len(), 1, "only one error expected:\n{}", show(&errs));
}

#[test]
fn the_base_is_valid() {
    load_text(&base()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unknown_key_names_the_allowed_keys() {
    let text = base().replace(
        "    bucket: other-bucket\n",
        "    bucket: other-bucket\n    bukket: x\n",
    );
    one(
        &text,
        "remotes[1].bukket",
        "bukket:",
        "unknown key `bukket`",
    );
    let e = &errors(&text)[0];
    assert!(
        e.message.contains("`bucket`") && e.message.contains("`preserve_mtime`"),
        "{e}"
    );

    let text = "sftp:\n  listen: 127.0.0.1:22\n  lisen: x\n";
    one(
        text,
        "sftp.lisen",
        "lisen",
        "allowed keys: `listen`, `proxy_protocol`",
    );
    let text = "colour: blue\n";
    one(text, "colour", "colour", "unknown key `colour`");
}

#[test]
fn bad_duration() {
    let text = format!("{}limits:\n  idle_timeout: 15 minutes\n", base());
    one(
        &text,
        "limits.idle_timeout",
        "idle_timeout",
        "expected a duration like",
    );
    let text = format!("{}limits:\n  login_grace: 30\n", base());
    one(
        &text,
        "limits.login_grace",
        "login_grace",
        "missing its unit",
    );
    let text = format!("{}limits:\n  ban: {{ window: 1y }}\n", base());
    one(&text, "limits.ban.window", "ban:", "unknown duration unit");
}

#[test]
fn bad_size() {
    let text = format!("{}transfers:\n  part_size: 8 megs\n", base());
    one(
        &text,
        "transfers.part_size",
        "part_size",
        "expected a size like",
    );
    let text = format!("{}transfers:\n  memory_limit: -1\n", base());
    one(&text, "transfers.memory_limit", "memory_limit", "negative");
    let text = format!("{}transfers:\n  single_put_max: 6GiB\n", base());
    one(
        &text,
        "transfers.single_put_max",
        "single_put_max",
        "at most 5GiB",
    );
}

#[test]
fn missing_variable() {
    let text = base().replace("${SECRET}", "${ACME_SECRET_MISSING}");
    one(
        &text,
        "remotes[0].secret_access_key",
        "secret_access_key",
        "environment variable `ACME_SECRET_MISSING` is not set",
    );
    // A missing variable in a typed field is reported once, not also as a bad value.
    let text = format!("{}transfers:\n  part_size: ${{PART}}\n", base());
    one(
        &text,
        "transfers.part_size",
        "part_size",
        "`PART` is not set",
    );
}

#[test]
fn wrong_types() {
    let text = format!("{}limits:\n  max_sessions: lots\n", base());
    one(
        &text,
        "limits.max_sessions",
        "max_sessions",
        "expected a whole number",
    );
    let text = format!("{}limits:\n  max_sessions: 99999999999\n", base());
    one(
        &text,
        "limits.max_sessions",
        "max_sessions",
        "from 0 to 4294967295",
    );
    let text = format!("{}sftp:\n  proxy_protocol: yes\n", base());
    one(
        &text,
        "sftp.proxy_protocol",
        "proxy_protocol",
        "expected `false` or the list of your load balancers' addresses",
    );
    // `true` would trust every peer, and an empty list nobody: both are refused.
    let text = format!("{}ftp:\n  proxy_protocol: true\n", base());
    one(
        &text,
        "ftp.proxy_protocol",
        "proxy_protocol",
        "`true` would let any client claim any address",
    );
    let text = format!("{}ftp:\n  proxy_protocol: []\n", base());
    one(
        &text,
        "ftp.proxy_protocol",
        "proxy_protocol",
        "an empty list trusts nobody",
    );
    let text = format!(
        "{}sftp:\n  proxy_protocol: [10.0.0.5, 10.1.0.0/99]\n",
        base()
    );
    one(
        &text,
        "sftp.proxy_protocol[1]",
        "10.1.0.0/99",
        "prefix length too long",
    );
    let text = format!("{}sftp: [a]\n", base());
    one(
        &text,
        "sftp",
        "sftp:",
        "expected a map of keys, found a list",
    );
    let text = base().replace(
        "    home: /users/alice\n",
        "    home: /users/alice\n    protocols: [sftp, ssh]\n",
    );
    one(
        &text,
        "users[0].protocols[1]",
        "protocols",
        "expected one of `sftp`, `ftp`",
    );
    let text = base().replace(
        "    home: /users/alice\n",
        "    home: /users/alice\n    permissions: {\"/\": [list, read]}\n",
    );
    one(
        &text,
        "users[0].permissions[\"/\"][1]",
        "permissions",
        "`download`",
    );
}

#[test]
fn missing_required_key() {
    let text = format!("{}mounts:\n  - path: /a\n", base());
    one(
        &text,
        "mounts[0]",
        "path: /a",
        "missing required key `remote`",
    );
}

#[test]
fn unknown_remote() {
    let text = format!(
        "{}mounts:\n  - path: /partners/acme\n    remote: acme-minio\n",
        base()
    );
    one(
        &text,
        "mounts[0].remote",
        "remote: acme-minio",
        "unknown remote `acme-minio`; defined remotes: acme, other",
    );
    let text = format!(
        "{}syncs:\n  - name: s\n    path: /x\n    remote: nope\n    direction: push\n",
        base()
    );
    one(
        &text,
        "syncs[0].remote",
        "remote: nope",
        "unknown remote `nope`",
    );
    let text = format!("{}storage:\n  type: s3\n  remote: nope\n", base());
    one(
        &text,
        "storage.remote",
        "remote: nope",
        "unknown remote `nope`",
    );
}

#[test]
fn duplicates() {
    let text = format!(
        "{}  - username: alice\n    public_keys: [\"{KEY}\"]\n    home: /x\n",
        base()
    );
    let errs = errors(&text);
    assert_error(&errs, &text, "users[1].username", "- username: alice\n    public_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbTRDK4Jm4yxcL0LTtkIt7GWl2Xh7aE8PzZdu0GH9bP alice@laptop\"]\n    home: /x", "duplicate username `alice`");
    assert!(errs[0].message.contains(&format!(
        "users[0] (line {})",
        line_of(&text, "username: alice")
    )));
    let text = base().replace("name: other", "name: acme");
    one(
        &text,
        "remotes[1].name",
        "name: acme\n    endpoint: http://",
        "duplicate remote name `acme`: already used by remotes[0] (line 2)",
    );
    // With the second `acme` line being line 7.
    assert_eq!(errors(&text)[0].line, Some(7));
}

#[test]
fn mounts_that_clash() {
    let text = format!(
        "{}mounts:\n  - path: /a\n    remote: acme\n    prefix: in/\n  - path: /a/\n    remote: other\n",
        base()
    );
    one(
        &text,
        "mounts[1].path",
        "path: /a/",
        "two mounts on one path: mounts[0].path",
    );

    let text = format!(
        "{}mounts:\n  - path: /a\n    remote: acme\n    prefix: in/\n  - path: /b\n    remote: acme\n    prefix: /in/sub\n",
        base()
    );
    one(
        &text,
        "mounts[1].prefix",
        "prefix: /in/sub",
        "bucket prefix `in/sub/` of remote `acme` overlaps prefix `in/` used by mounts[0].prefix",
    );

    // No prefix is the whole bucket, which overlaps everything; blamed on the remote line.
    let text = format!(
        "{}mounts:\n  - path: /a\n    remote: acme\n    prefix: in/\n  - path: /b\n    remote: acme # whole bucket\n",
        base()
    );
    one(
        &text,
        "mounts[1].remote",
        "# whole bucket",
        "bucket prefix `` of remote `acme` overlaps",
    );

    // The same prefix of two different remotes is fine, and so are sibling prefixes.
    let text = format!(
        "{}mounts:\n  - path: /a\n    remote: acme\n    prefix: in/\n  - path: /b\n    remote: other\n    prefix: in/\n  - path: /c\n    remote: acme\n    prefix: inbox/\n",
        base()
    );
    load_text(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_mount_paths() {
    let text = format!("{}mounts:\n  - path: partners\n    remote: acme\n", base());
    one(&text, "mounts[0].path", "path: partners", "absolute");
    let text = format!("{}mounts:\n  - path: /a/../b\n    remote: acme\n", base());
    one(&text, "mounts[0].path", "path: /a/../b", "`..`");
    let text = format!(
        "{}mounts:\n  - path: /a\n    remote: acme\n    prefix: a//b\n",
        base()
    );
    one(&text, "mounts[0].prefix", "prefix: a//b", "empty segment");
}

#[test]
fn sync_inside_a_mount() {
    let text = format!(
        "{}mounts:\n  - path: /partners/acme\n    remote: acme\nsyncs:\n  - name: s\n    path: /partners/acme/in\n    remote: other\n    direction: pull\n",
        base()
    );
    one(
        &text,
        "syncs[0].path",
        "path: /partners/acme/in",
        "inside the mount `/partners/acme` of mounts[0].path (line",
    );
    // Equal to the mount point counts too; a sibling folder does not.
    let inside = text.replace("path: /partners/acme/in", "path: /partners/acme");
    assert_eq!(errors(&inside).len(), 1);
    let beside = text.replace("path: /partners/acme/in", "path: /partners/acme2");
    load_text(&beside).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn home_outside_the_tree() {
    let text = base().replace("home: /users/alice", "home: /users/../../etc");
    one(
        &text,
        "users[0].home",
        "home:",
        "home must be a folder inside the site tree",
    );
    let text = base().replace("home: /users/alice", "home: users/alice");
    one(&text, "users[0].home", "home:", "absolute");
    let root_home = base().replace("home: /users/alice", "home: /");
    assert_eq!(load_text(&root_home).unwrap().config.users[0].home, "/");
}

#[test]
fn credentials() {
    let text = base().replace(
        &format!("    password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\"\n    public_keys: [\"{KEY}\"]\n"),
        "",
    );
    one(
        &text,
        "users[0]",
        "- username: alice",
        "neither password_hash nor public_keys",
    );
    let text = base().replace(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "$2b$12$bcrypt",
    );
    one(
        &text,
        "users[0].password_hash",
        "password_hash",
        "not an argon2 hash",
    );
    let text = base().replace(
        "AAAAC3NzaC1lZDI1NTE5AAAAIGbT",
        "AAAAC3NzaC1lZDI1NTE5AAAAIGbT!",
    );
    one(
        &text,
        "users[0].public_keys[0]",
        "public_keys",
        "not valid base64",
    );
    let text = base().replace("ssh-ed25519 AAAA", "ssh-dss AAAA");
    one(
        &text,
        "users[0].public_keys[0]",
        "public_keys",
        "unknown key type",
    );
    let text = base().replace("    access_key_id: AKIA\n", "");
    one(
        &text,
        "remotes[0].access_key_id",
        "- name: acme",
        "give both",
    );
}

#[test]
fn names() {
    let text = base().replace("username: alice", "username: al/ice");
    one(
        &text,
        "users[0].username",
        "username",
        "must not contain `/`",
    );
    let text = base().replace("username: alice", "username: \"..\"");
    one(&text, "users[0].username", "username", "`..`");
    let text = base().replace("username: alice", &format!("username: {}", "a".repeat(256)));
    one(&text, "users[0].username", "username", "255 bytes");
    let text = base().replace("username: alice", "username: \"\"");
    one(&text, "users[0].username", "username", "is empty");
}

#[test]
fn permission_folders() {
    let text = base().replace(
        "    home: /users/alice\n",
        "    home: /users/alice\n    permissions:\n      \"/\": [\"*\"]\n      archive: [list]\n",
    );
    one(
        &text,
        "users[0].permissions.archive",
        "archive:",
        "permission folder must be an absolute path",
    );
    let text = base().replace(
        "    home: /users/alice\n",
        "    home: /users/alice\n    permissions:\n      \"/a\": [list]\n      \"/a/\": [list]\n",
    );
    one(
        &text,
        "users[0].permissions[\"/a/\"]",
        "\"/a/\"",
        "same folder as users[0].permissions[\"/a\"]",
    );
}

#[test]
fn servers() {
    let text = "ftp:\n  listen: 127.0.0.1:2121\n  tls:\n    mode: implicit\n    cert: c.pem\n    key: k.pem\n";
    one(
        text,
        "ftp.tls.listen_implicit",
        "tls:",
        "needs `listen_implicit`",
    );
    let text = "sftp:\n  listen: localhost:22\n";
    one(text, "sftp.listen", "listen", "invalid listen address");
    let text = "ftp:\n  passive_ports: 50100-50000\n";
    one(text, "ftp.passive_ports", "passive_ports", "above the last");
    let text = "ftp:\n  passive_ports: 50000-70000\n";
    one(
        text,
        "ftp.passive_ports",
        "passive_ports",
        "expected a port range",
    );
    let text = "sftp:\n  listen: 127.0.0.1:2222\nadmin:\n  listen: 127.0.0.1:2222\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "admin.listen (line 4): same address as sftp.listen (line 2)"
    );
    let text = "ftp:\n  tls:\n    mode: sometimes\n    cert: c\n    key: k\n";
    one(
        text,
        "ftp.tls.mode",
        "mode",
        "`explicit`, `required`, `implicit`",
    );
    let text = "storage:\n  type: local\n  remote: x\n";
    one(text, "storage", "storage", "only for `type: s3`");
    let text = "log:\n  format: xml\n";
    one(text, "log.format", "format", "`text`, `json`");
}

#[test]
fn remotes() {
    let text = base().replace("https://s3.acme.example", "s3.acme.example");
    one(
        &text,
        "remotes[0].endpoint",
        "s3.acme.example",
        "http:// or https://",
    );
    let text = base().replace("bucket: exchange", "bucket: Ex change");
    one(
        &text,
        "remotes[0].bucket",
        "Ex change",
        "not a valid bucket name",
    );
    let text = base().replace(
        "    bucket: exchange\n",
        "    bucket: exchange\n    type: gcs\n",
    );
    one(
        &text,
        "remotes[0].type",
        "type: gcs",
        "expected one of `s3`",
    );
    let text = base().replace(
        "    bucket: exchange\n",
        "    bucket: exchange\n    checksum: sha1\n",
    );
    one(
        &text,
        "remotes[0].checksum",
        "checksum: sha1",
        "expected one of `auto`, `md5`, `crc32c`, `off`",
    );
    let text = base().replace(
        "    bucket: exchange\n",
        "    bucket: exchange\n    source_address: eth0\n",
    );
    one(&text, "remotes[0].source_address", "eth0", "IP address");
    let text = base().replace(
        "    bucket: exchange\n",
        "    bucket: exchange\n    timeouts: {connect: 0s}\n",
    );
    one(
        &text,
        "remotes[0].timeouts.connect",
        "timeouts",
        "longer than 0",
    );
}

#[test]
fn syncs() {
    let sync = "syncs:\n  - name: s\n    path: /x\n    remote: acme\n    direction: push\n";
    let text = format!("{}{sync}    conflict: keep-both\n", base());
    one(
        &text,
        "syncs[0].conflict",
        "conflict",
        "only applies to `direction: two-way`",
    );
    let text = format!("{}{sync}    conflict: newer\n", base());
    load_text(&text).unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{sync}    interval: 0\n", base());
    one(&text, "syncs[0].interval", "interval", "longer than 0");
    let text = format!("{}{}", base(), sync.replace("push", "sideways"));
    one(
        &text,
        "syncs[0].direction",
        "direction",
        "`push`, `pull`, `two-way`",
    );
    let text = format!(
        "{}{sync}{}",
        base(),
        sync.replace("syncs:\n", "").replace("acme", "other")
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{}", show(&errs));
    assert_eq!(errs[0].path, "syncs[1].name");
    assert_eq!(
        errs[0].line,
        Some(line_of(&text, "direction: push\n  - name: s") + 1)
    );
    assert!(errs[0]
        .message
        .contains("duplicate sync name `s`: already used by syncs[0] (line"));

    // Two jobs on overlapping parts of one bucket, as for mounts.
    let two = "  - name: t\n    path: /y\n    remote: acme\n    prefix: a/b\n    direction: pull\n";
    let text = format!("{}{sync}    prefix: a/\n{two}", base());
    one(
        &text,
        "syncs[1].prefix",
        "prefix: a/b",
        "bucket prefix `a/b/` of remote `acme` overlaps prefix `a/` used by syncs[0]",
    );
    let text = format!(
        "{}{sync}    prefix: a/\n{}",
        base(),
        two.replace("a/b", "ab")
    );
    load_text(&text).unwrap_or_else(|e| panic!("{e}"));

    // max_delete: a count or a percentage.
    for ok in ["10", "0", "\"25%\"", "100%"] {
        let text = format!("{}{sync}    delete: true\n    max_delete: {ok}\n", base());
        load_text(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["101%", "-1", "half", "5.5"] {
        let text = format!("{}{sync}    max_delete: {bad}\n", base());
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{bad}: {}", show(&errs));
        assert!(
            errs[0].path.contains("max_delete"),
            "{bad}: {}",
            show(&errs)
        );
    }
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let text = "sftp:\n  listen: [oops\nftp: {}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{}", show(&errs));
    assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
    assert!(errs[0].line.is_some());
}

#[test]
fn duplicate_yaml_key() {
    let text = "log:\n  level: info\n  level: debug\n";
    one(
        text,
        "log.level",
        "level: debug",
        "duplicate key `level` (first given on line 2)",
    );
}

#[test]
fn items_dropped_for_parse_errors_keep_the_paths_of_later_items() {
    // users[0] lacks `home` and is dropped, so the typed list shifts by one; errors found
    // later must still name the file's users[2].
    let text = format!(
        "users:\n  - username: bob\n    public_keys: [\"{KEY}\"]\n  - username: carol\n    public_keys: [\"{KEY}\"]\n    home: /c\n  - username: carol\n    public_keys: [\"{KEY}\"]\n    home: /c2\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", show(&errs));
    assert_error(
        &errs,
        &text,
        "users[0]",
        "username: bob",
        "missing required key `home`",
    );
    assert_eq!(errs[1].path, "users[2].username");
    assert_eq!(errs[1].line, Some(7));
    assert!(
        errs[1]
            .message
            .contains("already defined by users[1] (line 4)"),
        "{}",
        errs[1]
    );
}

#[test]
fn a_remote_dropped_for_a_parse_error_is_not_unknown() {
    let text =
        "remotes:\n  - name: acme\n    bucket: b-1\nmounts:\n  - path: /m\n    remote: acme\n";
    one(
        text,
        "remotes[0]",
        "name: acme",
        "missing required key `endpoint`",
    );
}

/// The acceptance test: one planted mistake of each kind, all reported in one run.
#[test]
fn every_mistake_in_one_run() {
    let text = format!(
        r#"sftp:
  listen: 127.0.0.1:2222
  colour: blue
limits:
  idle_timeout: 15 mins
transfers:
  part_size: 8 MiBi
remotes:
  - name: acme
    endpoint: https://s3.acme.example
    bucket: exchange
    access_key_id: AKIA
    secret_access_key: ${{NOT_SET_ANYWHERE}}
mounts:
  - path: /partners/acme
    remote: acme
    prefix: inbound/
  - path: /partners/acme
    remote: acme
    prefix: elsewhere/
  - path: /partners/acme-2
    remote: acme
    prefix: inbound/deeper/
  - path: /partners/ghost
    remote: ghost
users:
  - username: alice
    public_keys: ["{KEY}"]
    home: /users/alice
  - username: alice
    public_keys: ["{KEY}"]
    home: /../outside
syncs:
  - name: in
    path: /partners/acme/inbox
    remote: acme
    direction: pull
"#
    );
    let errs = errors(&text);
    let expect = [
        ("sftp.colour", "colour: blue", "unknown key `colour`"),
        ("limits.idle_timeout", "idle_timeout", "expected a duration"),
        ("transfers.part_size", "part_size", "expected a size"),
        ("remotes[0].secret_access_key", "secret_access_key", "`NOT_SET_ANYWHERE` is not set"),
        ("mounts[1].path", "path: /partners/acme\n    remote: acme\n    prefix: elsewhere", "two mounts on one path"),
        ("mounts[2].prefix", "prefix: inbound/deeper/", "overlaps prefix `inbound/` used by mounts[0].prefix"),
        ("mounts[3].remote", "remote: ghost", "unknown remote `ghost`"),
        ("users[1].username", "- username: alice\n    public_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbTRDK4Jm4yxcL0LTtkIt7GWl2Xh7aE8PzZdu0GH9bP alice@laptop\"]\n    home: /../", "duplicate username `alice`"),
        ("users[1].home", "home: /../outside", "inside the site tree"),
        ("syncs[0].path", "path: /partners/acme/inbox", "inside the mount `/partners/acme`"),
    ];
    for (path, needle, fragment) in expect {
        let e = errs
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}:\n{}", show(&errs)));
        assert!(e.message.contains(fragment), "{e}");
        assert_eq!(e.line, Some(line_of(&text, needle)), "{e}");
    }
    assert_eq!(
        errs.len(),
        expect.len(),
        "no echo errors expected:\n{}",
        show(&errs)
    );
    // File order.
    let lines: Vec<usize> = errs.iter().map(|e| e.line.unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    // Display: one per line, path (line N): message.
    let shown = bucketgate_config::ConfigErrors(errs.clone()).to_string();
    assert_eq!(shown.lines().count(), expect.len());
    assert!(
        shown.starts_with("sftp.colour (line 3): unknown key `colour`"),
        "{shown}"
    );
}

#[test]
fn substituted_values_never_shift_lines_or_structure() {
    // The value holds newlines, a colon and a `#`: substituted into the tree, not the text,
    // it stays one string and later lines keep their numbers.
    let text = "log:\n  level: ${MULTI}\nlimits:\n  login_grace: soon\n";
    one(
        text,
        "limits.login_grace",
        "login_grace",
        "expected a duration",
    );
    let c = load_text("log:\n  level: ${MULTI}\n").unwrap().config;
    assert_eq!(c.log.level, "one\ntwo: 2\n# three\n");
}

/// `base()` with `lines` added to the first remote (`acme`, https).
fn with_remote_keys(lines: &str) -> String {
    base().replace(
        "    bucket: exchange\n",
        &format!("    bucket: exchange\n{lines}"),
    )
}

#[test]
fn encryption_settings_are_checked() {
    one(
        &with_remote_keys("    encryption: aes\n"),
        "remotes[0].encryption",
        "encryption: aes",
        "expected one of `none`, `s3`, `kms`, `customer`",
    );
    one(
        &with_remote_keys("    encryption: s3\n    kms_key_id: k1\n"),
        "remotes[0].kms_key_id",
        "kms_key_id: k1",
        "is only for `encryption: kms` (this remote has `encryption: s3`)",
    );
    one(
        &with_remote_keys("    bucket_key: true\n"),
        "remotes[0].bucket_key",
        "bucket_key: true",
        "is only for `encryption: kms`",
    );
    one(
        &with_remote_keys("    encryption: kms\n    customer_key_env: K\n"),
        "remotes[0].customer_key_env",
        "customer_key_env: K",
        "is only for `encryption: customer`",
    );
    one(
        &with_remote_keys("    encryption: kms\n    kms_key_id: \"my key\"\n"),
        "remotes[0].kms_key_id",
        "kms_key_id",
        "no spaces",
    );
    one(
        &with_remote_keys("    storage_class: \"STANDARD IA\"\n"),
        "remotes[0].storage_class",
        "storage_class",
        "no spaces",
    );
    one(
        &with_remote_keys("    encryption: customer\n"),
        "remotes[0].encryption",
        "encryption: customer",
        "needs `customer_key_env`",
    );
    one(
        &with_remote_keys(
            "    encryption: customer\n    customer_key_env: BUCKETGATE_TEST_SSEC_UNSET\n",
        ),
        "remotes[0].customer_key_env",
        "customer_key_env",
        "the environment variable `BUCKETGATE_TEST_SSEC_UNSET` is not set",
    );
    // A valid key loads, with KMS settings and a class on the other remote.
    std::env::set_var(
        "BUCKETGATE_TEST_SSEC_GOOD",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    );
    let text = with_remote_keys(
        "    encryption: customer\n    customer_key_env: BUCKETGATE_TEST_SSEC_GOOD\n",
    )
    .replace(
        "    bucket: other-bucket\n",
        "    bucket: other-bucket\n    encryption: kms\n    kms_key_id: alias/backups\n    bucket_key: true\n    storage_class: STANDARD_IA\n",
    );
    let loaded = load_text(&text).unwrap_or_else(|e| panic!("{e}"));
    let r = &loaded.config.remotes[0];
    assert_eq!(r.encryption, bucketgate_config::EncryptionMode::Customer);
    assert_eq!(
        r.customer_key().unwrap().0,
        *b"0123456789abcdef0123456789abcdef"
    );
    let o = &loaded.config.remotes[1];
    assert_eq!(o.encryption, bucketgate_config::EncryptionMode::Kms);
    assert_eq!(
        (
            o.kms_key_id.as_str(),
            o.bucket_key,
            o.storage_class.as_str()
        ),
        ("alias/backups", true, "STANDARD_IA")
    );
    // SSE-C over plain HTTP to another machine would send the key in the clear.
    let text = base()
        .replace("https://s3.acme.example", "http://s3.acme.example")
        .replace(
            "    bucket: exchange\n",
            "    bucket: exchange\n    encryption: customer\n    customer_key_env: BUCKETGATE_TEST_SSEC_GOOD\n",
        );
    one(
        &text,
        "remotes[0].encryption",
        "encryption: customer",
        "the endpoint must be https://",
    );
}

#[test]
fn a_bad_sse_c_key_is_refused_and_never_shown() {
    for (var, value, fragment) in [
        (
            "BUCKETGATE_TEST_SSEC_SHORT",
            // 16 bytes: an AES-128 key.
            "c2VjcmV0LWtleS0xMjM0NQ==",
            "decodes to 16 bytes; an SSE-C key is 32 bytes",
        ),
        (
            "BUCKETGATE_TEST_SSEC_TEXT",
            "this-is-my-secret-passphrase!",
            "is not valid base64",
        ),
    ] {
        std::env::set_var(var, value);
        let text = with_remote_keys(&format!(
            "    encryption: customer\n    customer_key_env: {var}\n"
        ));
        let errs = errors(&text);
        assert_error(&errs, &text, "remotes[0].customer_key_env", var, fragment);
        let shown = bucketgate_config::ConfigErrors(errs.clone()).to_string();
        assert!(!shown.contains(value), "key shown:\n{shown}");
        assert!(!format!("{errs:?}").contains(value), "key in Debug");
    }
}

/// `base()` with `lines` added to the second remote (`other`, no keys).
fn with_keyless_remote(lines: &str) -> String {
    base().replace(
        "    bucket: other-bucket\n",
        &format!("    bucket: other-bucket\n{lines}"),
    )
}

#[test]
fn credential_settings_are_checked() {
    one(
        &with_keyless_remote("    credentials: { source: vault }\n"),
        "remotes[1].credentials.source",
        "credentials:",
        "expected one of `static`, `env`, `profile`, `web_identity`, `container`, `instance`, `chain`",
    );
    one(
        &with_keyless_remote("    credentials:\n      source: static\n"),
        "remotes[1].credentials.source",
        "source: static",
        "`source: static` needs access_key_id and secret_access_key",
    );
    one(
        &with_remote_keys("    credentials:\n      source: instance\n"),
        "remotes[0].access_key_id",
        "access_key_id: AKIA",
        "keys on the remote are the short form of `credentials.source: static`; this remote has `source: instance`",
    );
    one(
        &with_keyless_remote(
            "    credentials:\n      source: env\n      assume_role:\n        external_id: x\n",
        ),
        "remotes[1].credentials.assume_role.role_arn",
        "assume_role:",
        "is required: the ARN of the role to assume",
    );
    one(
        &with_keyless_remote(
            "    credentials:\n      source: env\n      assume_role:\n        role_arn: my-role\n",
        ),
        "remotes[1].credentials.assume_role.role_arn",
        "role_arn: my-role",
        "must be a role ARN",
    );
    for (d, secs) in [("10m", 600), ("13h", 46800)] {
        one(
            &with_keyless_remote(&format!(
                "    credentials:\n      source: chain\n      assume_role:\n        role_arn: arn:aws:iam::1:role/r\n        duration: {d}\n"
            )),
            "remotes[1].credentials.assume_role.duration",
            "duration:",
            &format!("must be between 15m and 12h (STS accepts 900 to 43200 seconds), not {secs} s"),
        );
    }
    one(
        &with_keyless_remote(
            "    credentials:\n      source: instance\n      assume_role:\n        role_arn: arn:aws:iam::1:role/r\n        session_name: \"a b\"\n",
        ),
        "remotes[1].credentials.assume_role.session_name",
        "session_name:",
        "must be 2 to 64 letters, digits or =,.@-_",
    );
    one(
        &with_keyless_remote("    credentials:\n      source: env\n      profile: prod\n"),
        "remotes[1].credentials.profile",
        "profile: prod",
        "is only for `source: profile` or `source: chain` (this remote has `source: env`)",
    );
    one(
        &with_keyless_remote(
            "    credentials:\n      source: web_identity\n      sts_endpoint: sts.local\n",
        ),
        "remotes[1].credentials.sts_endpoint",
        "sts_endpoint:",
        "must be an http:// or https:// URL",
    );
    one(
        &with_keyless_remote("    credentials:\n      source: profile\n      shared_file: x\n"),
        "remotes[1].credentials.shared_file",
        "shared_file:",
        "unknown key `shared_file`",
    );
}

#[test]
fn every_credential_source_loads() {
    // Each source, and a role assumed on top of static keys (existing keys keep working).
    for src in [
        "env",
        "profile",
        "web_identity",
        "container",
        "instance",
        "chain",
    ] {
        let text = with_keyless_remote(&format!("    credentials: {{ source: {src} }}\n"));
        let c = load_text(&text)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .config;
        assert_eq!(
            c.remotes[1].credentials.as_ref().unwrap().source.name(),
            src
        );
        assert!(!c.remotes[1].is_anonymous());
    }
    let text = with_remote_keys(
        "    credentials:\n      assume_role:\n        role_arn: arn:aws:iam::123456789012:role/r\n        external_id: ext\n        session_name: gw\n        duration: 1h\n      sts_endpoint: https://sts.eu-west-1.amazonaws.com\n",
    );
    let c = load_text(&text).unwrap_or_else(|e| panic!("{e}")).config;
    let cr = c.remotes[0].credentials.as_ref().unwrap();
    let ar = cr.assume_role.as_ref().unwrap();
    assert_eq!(ar.duration.unwrap().get().as_secs(), 3600);
    assert_eq!(ar.external_id, "ext");
    assert_eq!(cr.sts_endpoint, "https://sts.eu-west-1.amazonaws.com");
}

/// Problems found outside the config crate (a backend that cannot be built, a mount point
/// that holds files) print like a load's: one a line, located at their line when the file is
/// known.
#[test]
fn problems_found_later_print_like_load_errors() {
    let text = base();
    let loaded = load_text(&text).unwrap();
    let problems = vec![
        ("remotes[1].endpoint".to_string(), "unreachable".to_string()),
        ("users[0].home".to_string(), "holds files".to_string()),
    ];
    let located = bucketgate_config::errors_at(Some(&loaded), problems.clone()).to_string();
    assert_eq!(
        located,
        format!(
            "remotes[1].endpoint (line {}): unreachable\nusers[0].home (line {}): holds files",
            line_of(&text, "endpoint: http://127.0.0.1:9000"),
            line_of(&text, "home: /users/alice"),
        )
    );
    let bare = bucketgate_config::errors_at(None, problems).to_string();
    assert_eq!(
        bare,
        "remotes[1].endpoint: unreachable\nusers[0].home: holds files"
    );
}
