//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::Path;

use bucketgate_config::{load_str_with_env, ConfigError, ConfigErrors, Loaded};

/// The configuration example of docs/interface.md, with a real public key in place of the
/// elided `AAAAC3Nz...`.
pub const EXAMPLE: &str = include_str!("example.yaml");

/// A well-formed ed25519 key line.
pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbTRDK4Jm4yxcL0LTtkIt7GWl2Xh7aE8PzZdu0GH9bP alice@laptop";

/// A value that must never be printed.
pub const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzz";

pub const BASE: &str = "/etc/bucketgate";

pub fn env(name: &str) -> Option<String> {
    match name {
        "ACME_ACCESS_KEY" => Some("AKIAEXAMPLE".into()),
        "ACME_SECRET_KEY" | "SECRET" => Some(SECRET.into()),
        "EMPTY" => Some(String::new()),
        "PORT" => Some("2200".into()),
        "MULTI" => Some("one\ntwo: 2\n# three\n".into()),
        _ => None,
    }
}

pub fn load_text(text: &str) -> Result<Loaded, ConfigErrors> {
    load_str_with_env(text, Path::new(BASE), env)
}

/// The errors of a config that must fail.
pub fn errors(text: &str) -> Vec<ConfigError> {
    match load_text(text) {
        Ok(_) => panic!("config should have failed:\n{text}"),
        Err(e) => e.0,
    }
}

/// 1-based line where `needle` first occurs in `text` (it may span several lines, to pick
/// one of several equal lines).
pub fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    text[..at].matches('\n').count() + 1
}

/// Asserts that `errors` holds exactly one error at `path`, on the line holding `needle`,
/// whose message contains `fragment`.
pub fn assert_error(errors: &[ConfigError], text: &str, path: &str, needle: &str, fragment: &str) {
    let at: Vec<&ConfigError> = errors.iter().filter(|e| e.path == path).collect();
    assert_eq!(
        at.len(),
        1,
        "expected one error at {path}, got:\n{}",
        show(errors)
    );
    let e = at[0];
    assert_eq!(
        e.line,
        Some(line_of(text, needle)),
        "line of {path}:\n{}",
        show(errors)
    );
    assert!(
        e.message.contains(fragment),
        "message of {path} should contain {fragment:?}: {e}"
    );
}

pub fn show(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}
