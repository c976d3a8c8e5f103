//! No secret reaches an error message, whatever field it lands in.

use crate::common;

use common::*;

#[test]
fn secrets_never_appear_in_errors() {
    // The secret arrives through the environment into fields of every kind where it is
    // wrong, and literally into secret fields of items that have other problems.
    let text = format!(
        r#"sftp:
  listen: ${{SECRET}}
  proxy_protocol: ${{SECRET}}
ftp:
  passive_ports: ${{SECRET}}
  tls: {{ mode: "${{SECRET}}", cert: c, key: k }}
limits:
  max_sessions: ${{SECRET}}
  login_grace: ${{SECRET}}
  ban: {{ safelist: ["${{SECRET}}"] }}
transfers:
  part_size: ${{SECRET}}
log:
  format: ${{SECRET}}
state:
  url: "${{SECRET}}"
storage:
  type: ${{SECRET}}
remotes:
  - name: r
    endpoint: ${{SECRET}}
    bucket: ${{SECRET}}
    access_key_id: ""
    secret_access_key: {SECRET}
    source_address: ${{SECRET}}
    max_connections: ${{SECRET}}
    timeouts: {{ connect: "${{SECRET}}" }}
    ${{SECRET}}: 1
users:
  - username: bob
    password_hash: "{SECRET}"
    home: ${{SECRET}}
    protocols: [ "${{SECRET}}" ]
    permissions: {{ "/": [ "${{SECRET}}" ] }}
    allowed_ips: [ "${{SECRET}}" ]
    public_keys: [ "ssh-ed25519 ${{SECRET}}", "${{SECRET}}" ]
syncs:
  - name: s
    path: /s
    remote: r
    direction: ${{SECRET}}
    interval: ${{SECRET}}
"#
    );
    let errs = errors(&text);
    let shown = bucketgate_config::ConfigErrors(errs.clone()).to_string();
    let debug = format!("{errs:?}");
    assert!(errs.len() >= 20, "{shown}");
    for part in [SECRET, &SECRET[..12], &SECRET[SECRET.len() - 12..]] {
        assert!(!shown.contains(part), "secret leaked:\n{shown}");
        assert!(!debug.contains(part), "secret leaked in Debug");
    }
    // The problems are still there to read.
    assert!(shown.contains("remotes[0].access_key_id"), "{shown}");
    assert!(shown.contains("users[0].password_hash"), "{shown}");
    assert!(shown.contains("remotes[0].endpoint"), "{shown}");
}

#[test]
fn a_secret_in_a_yaml_syntax_error_is_not_quoted() {
    let text = format!("remotes:\n  - secret_access_key: \"{SECRET}\n");
    let shown = bucketgate_config::ConfigErrors(errors(&text)).to_string();
    assert!(!shown.contains(&SECRET[..8]), "{shown}");
}

#[test]
fn missing_variable_names_only_the_variable() {
    let text = "remotes:\n  - name: r\n    endpoint: https://x.example\n    bucket: b-1\n    access_key_id: ${ACME_ACCESS_KEY}\n    secret_access_key: ${NOT_SET}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{}", show(&errs));
    assert_eq!(
        errs[0].to_string(),
        "remotes[0].secret_access_key (line 6): environment variable `NOT_SET` is not set"
    );
    assert!(!errs[0].to_string().contains("AKIAEXAMPLE"));
}

#[test]
fn a_missing_variable_causes_no_echo_errors() {
    // Blanked by the missing variable, these values would otherwise also fail their checks
    // (empty username, no credentials, relative home, unknown remote ``).
    let text = "users:\n  - username: ${U}\n    password_hash: ${H}\n    home: ${HOME_DIR}\nmounts:\n  - path: /m\n    remote: ${R}\n";
    let errs = errors(text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "users[0].username",
            "users[0].password_hash",
            "users[0].home",
            "mounts[0].remote"
        ],
        "{}",
        show(&errs)
    );
    assert!(errs.iter().all(|e| e.message.contains("is not set")));
}
