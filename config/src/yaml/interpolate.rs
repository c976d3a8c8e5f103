//! `${VAR}` substitution in scalar values.
//!
//! It runs on the parsed tree rather than on the file text, so that a value holding a newline,
//! a quote or a `#` can neither change the YAML structure nor shift the line numbers.

use super::tree::{Kind, Node};
use crate::error::ConfigError;

/// Looks a variable up; `Err(())` when it is set but not valid UTF-8.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<Result<String, ()>>;

/// Substitutes every scalar of the tree. A value that cannot be substituted is reported
/// once, then poisoned (blanked) so that it causes no second error. Substituted values are
/// pushed to `substituted` so error messages can be scrubbed of them.
pub(crate) fn interpolate_tree(
    root: &mut Node,
    env: EnvLookup<'_>,
    substituted: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) {
    root.for_each_scalar_mut(&mut |node| {
        let Kind::Scalar { value, .. } = &mut node.kind else {
            return;
        };
        if !value.contains('$') {
            return;
        }
        match interpolate(value, env, substituted) {
            Ok(v) => *value = v,
            Err(messages) => {
                *value = String::new();
                node.poisoned = true;
                errors.extend(messages.into_iter().map(|message| ConfigError {
                    path: node.path.clone(),
                    line: Some(node.line),
                    message,
                }));
            }
        }
    });
}

/// Substitutes one string. `$${` is a literal `${`; any other `$` is kept as is (argon2
/// hashes are full of them). Error messages name variables, never their values.
pub(crate) fn interpolate(
    s: &str,
    env: EnvLookup<'_>,
    substituted: &mut Vec<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                errors.push("unterminated `${`: write `$${` for a literal `${`".to_string());
                break;
            };
            let name = &after[..end];
            rest = &after[end + 1..];
            if !is_var_name(name) {
                errors.push(
                    "invalid variable reference: expected `${NAME}` with letters, digits and `_`"
                        .to_string(),
                );
                continue;
            }
            match env(name) {
                Some(Ok(v)) => {
                    out.push_str(&v);
                    substituted.push(v);
                }
                Some(Err(())) => {
                    errors.push(format!("environment variable `{name}` is not valid UTF-8"))
                }
                None => errors.push(format!("environment variable `{name}` is not set")),
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    if errors.is_empty() {
        out.push_str(rest);
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<Result<String, ()>> {
        match name {
            "A" => Some(Ok("alpha".into())),
            "EMPTY" => Some(Ok(String::new())),
            "BRACE" => Some(Ok("${A}".into())),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, Vec<String>> {
        interpolate(s, &env, &mut Vec::new())
    }

    #[test]
    fn substitutes() {
        assert_eq!(run("x-${A}-y").unwrap(), "x-alpha-y");
        assert_eq!(run("${A}${A}").unwrap(), "alphaalpha");
        assert_eq!(run("[${EMPTY}]").unwrap(), "[]");
        assert_eq!(run("$argon2id$v=19$m=1").unwrap(), "$argon2id$v=19$m=1");
        assert_eq!(run("cost: $5").unwrap(), "cost: $5");
        assert_eq!(run("trailing $").unwrap(), "trailing $");
    }

    #[test]
    fn values_are_not_rescanned() {
        assert_eq!(run("${BRACE}").unwrap(), "${A}");
    }

    #[test]
    fn escape() {
        assert_eq!(run("$${A}").unwrap(), "${A}");
        assert_eq!(run("$$${A}").unwrap(), "$${A}");
        assert_eq!(run("a$${b}c").unwrap(), "a${b}c");
    }

    #[test]
    fn errors_name_the_variable() {
        let e = run("${MISSING} and ${ALSO_MISSING}").unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].contains("`MISSING`"));
        assert!(e[1].contains("`ALSO_MISSING`"));
        assert!(run("${A").is_err());
        assert!(run("${1A}").is_err());
        assert!(run("${}").is_err());
    }
}
