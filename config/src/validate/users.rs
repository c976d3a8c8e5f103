//! Accounts: names, homes, credentials, permission folders.

use super::keys::{password_hash_problem, public_key_problem};
use super::names::name_problem;
use super::Validator;
use crate::paths::normalize_site_path;
use crate::schema::Config;
use crate::yaml::tree::key_path;

pub(super) fn check(c: &Config, v: &mut Validator<'_>) {
    for (i, u) in c.users.iter().enumerate() {
        let at = format!("users[{i}]");
        if let Some(why) = name_problem(&u.username) {
            v.error(format!("{at}.username"), format!("username {why}"));
        } else if let Some(first) = c.users[..i].iter().position(|o| o.username == u.username) {
            let msg = format!(
                "duplicate username `{}`: already defined by {}",
                u.username,
                v.at(&format!("users[{first}]"))
            );
            v.error(format!("{at}.username"), msg);
        }

        if let Err(why) = normalize_site_path(&u.home) {
            v.error(
                format!("{at}.home"),
                format!("home must be a folder inside the site tree: {why}"),
            );
        }

        let has_password = u.password_hash.as_ref().is_some_and(|h| !h.is_empty())
            || v.poisoned(&format!("{at}.password_hash"));
        if !has_password && u.public_keys.is_empty() {
            v.error(
                at.clone(),
                "has neither password_hash nor public_keys: this user could never log in",
            );
        }
        if let Some(h) = &u.password_hash {
            if let Some(why) = password_hash_problem(h.expose()) {
                v.error(format!("{at}.password_hash"), why);
            }
        }
        for (k, key) in u.public_keys.iter().enumerate() {
            if let Some(why) = public_key_problem(key) {
                v.error(
                    format!("{at}.public_keys[{k}]"),
                    format!("public key {why}"),
                );
            }
        }

        let mut folders: Vec<(String, &str)> = Vec::new();
        for folder in u.permissions.keys() {
            let path = key_path(&format!("{at}.permissions"), folder);
            match normalize_site_path(folder) {
                Err(why) => v.error(path, format!("permission folder {why}")),
                Ok(norm) => {
                    if let Some((_, other)) = folders.iter().find(|(n, _)| *n == norm) {
                        let msg = format!(
                            "permission folder names the same folder as {}",
                            v.at(&key_path(&format!("{at}.permissions"), other))
                        );
                        v.error(path, msg);
                    } else {
                        folders.push((norm, folder));
                    }
                }
            }
        }
    }
}
