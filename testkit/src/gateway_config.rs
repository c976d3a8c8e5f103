//! The gateway's YAML config as the end-to-end tests write it: SFTP and FTP listeners on
//! `127.0.0.1:0`, the site tree in `./files`, remotes, mounts and users, and any other section
//! written out as it stands.
//!
//! `GatewayConfig::new().sftp().ftp(&passive_range()).remote(..).mount(..).user(User::new(..))`
//! writes the sections in the order the tests always wrote them; `.yaml()` is the text.

/// A config under construction; [`GatewayConfig::yaml`] writes it out.
#[derive(Default, Clone)]
pub struct GatewayConfig {
    head: Vec<String>,
    sections: Vec<String>,
    remotes: Vec<String>,
    mounts: Vec<String>,
    users: Vec<User>,
}

impl GatewayConfig {
    /// No listener yet, the site tree on local disk in `./files`.
    pub fn new() -> GatewayConfig {
        GatewayConfig::default()
    }

    /// An SFTP listener on a port the OS picks.
    pub fn sftp(mut self) -> Self {
        self.head.push("sftp:\n  listen: \"127.0.0.1:0\"\n".into());
        self
    }

    /// An FTP listener on a port the OS picks, with its passive ports (`passive_range()`).
    pub fn ftp(mut self, passive_ports: &str) -> Self {
        self.head.push(format!(
            "ftp:\n  listen: \"127.0.0.1:0\"\n  passive_ports: \"{passive_ports}\"\n"
        ));
        self
    }

    /// Any other top-level section (or lines inside the last listener), written as it stands
    /// after the listeners and before `storage:`.
    pub fn section(mut self, yaml: &str) -> Self {
        let mut s = yaml.to_string();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        self.sections.push(s);
        self
    }

    /// A remote; `extra` holds more flow-map entries (`region: x, preserve_mtime: true`). The
    /// secret may be a `${VARIABLE}` reference, written as it stands.
    pub fn remote(
        mut self,
        name: &str,
        endpoint: &str,
        bucket: &str,
        access_key_id: &str,
        secret_access_key: &str,
        extra: &str,
    ) -> Self {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        // Quoted also when it names a variable: `${...}` unquoted would end the flow mapping.
        let secret_access_key = format!("\"{secret_access_key}\"");
        self.remotes.push(format!(
            "  - {{ name: {name}, endpoint: \"{endpoint}\", bucket: \"{bucket}\", \
             access_key_id: \"{access_key_id}\", secret_access_key: {secret_access_key}{extra} }}\n"
        ));
        self
    }

    /// A mount of `remote` at `path`, under `prefix` (none when empty).
    pub fn mount(mut self, path: &str, remote: &str, prefix: &str) -> Self {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!(", prefix: \"{prefix}\"")
        };
        self.mounts.push(format!(
            "  - {{ path: {path}, remote: {remote}{prefix} }}\n"
        ));
        self
    }

    /// A user.
    pub fn user(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut y: String = self.head.concat();
        y.push_str(&self.sections.concat());
        y.push_str("storage: { type: local, root: ./files }\n");
        if !self.remotes.is_empty() {
            y.push_str("remotes:\n");
            y.push_str(&self.remotes.concat());
        }
        if !self.mounts.is_empty() {
            y.push_str("mounts:\n");
            y.push_str(&self.mounts.concat());
        }
        if !self.users.is_empty() {
            y.push_str("users:\n");
            for u in &self.users {
                y.push_str(&u.yaml());
            }
        }
        y
    }
}

/// A user of the config.
#[derive(Clone)]
pub struct User {
    name: String,
    password_hash: String,
    public_keys: Vec<String>,
    home: String,
    permissions: Vec<(String, String)>,
}

impl User {
    /// A user with a password hash (`bucketgate hash-password`), home `/users/NAME`.
    pub fn new(name: &str, password_hash: &str) -> User {
        User {
            name: name.into(),
            password_hash: password_hash.trim().into(),
            public_keys: vec![],
            home: format!("/users/{name}"),
            permissions: vec![],
        }
    }

    /// An OpenSSH public key line.
    pub fn key(mut self, public_key: &str) -> Self {
        self.public_keys.push(public_key.trim().to_string());
        self
    }

    /// The home folder.
    pub fn home(mut self, home: &str) -> Self {
        self.home = home.into();
        self
    }

    /// Permissions on a path, as the YAML list's items (`"*"`, `list, download`).
    pub fn allow(mut self, path: &str, perms: &str) -> Self {
        self.permissions.push((path.into(), perms.into()));
        self
    }

    fn yaml(&self) -> String {
        let mut y = format!(
            "  - username: {}\n    password_hash: \"{}\"\n",
            self.name, self.password_hash
        );
        if !self.public_keys.is_empty() {
            let keys: Vec<String> = self
                .public_keys
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect();
            y.push_str(&format!("    public_keys: [{}]\n", keys.join(", ")));
        }
        y.push_str(&format!("    home: {}\n", self.home));
        if !self.permissions.is_empty() {
            y.push_str("    permissions:\n");
            for (path, perms) in &self.permissions {
                y.push_str(&format!("      \"{path}\": [{perms}]\n"));
            }
        }
        y
    }
}
