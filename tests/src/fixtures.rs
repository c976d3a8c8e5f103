//! Backends to run the same behaviour suite against, each with its declared capabilities.

use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::{Area, Backend, Mount, Permissions, Tree, UserFs, VPath};
use std::sync::Arc;

/// What a backend under test does faithfully: the S3 test servers' declaration, which the
/// assertions that depend on it consult (and skip, visibly, where a server departs from S3).
pub use bucketgate_testkit::s3::Caps;

/// A backend for one test, with whatever keeps it alive.
pub struct Fixture {
    pub name: &'static str,
    pub backend: Arc<dyn Backend>,
    /// Key prefix this test owns in the backend (`""` or ending in `/`): S3 servers are shared.
    pub prefix: String,
    pub caps: Caps,
    pub _guard: Box<dyn std::any::Any + Send>,
}

impl Fixture {
    pub async fn local() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = LocalBackend::new(dir.path()).expect("local backend");
        Fixture {
            name: "local",
            backend: Arc::new(backend),
            prefix: String::new(),
            // A folder on disk keeps empty folders, appends, large files and any name.
            caps: Caps {
                markers: true,
                part_copy: true,
                list_uploads: false,
                big: true,
                checks_signatures: false,
                raw_keys: false,
            },
            _guard: Box::new(dir),
        }
    }

    /// Says (on stderr) that a capability-dependent assertion is left out for this backend.
    pub fn lacks(&self, what: &str) {
        eprintln!(
            "NOTE: {}: assertion on {what} left out (declared capability)",
            self.name
        );
    }
}

/// A tree over `site` with optional mounts, and a user view rooted at `home`.
pub fn user_view(site: Area, mounts: Vec<Mount>, home: &str, perms: Permissions) -> UserFs {
    let tree = Arc::new(Tree::new(site, mounts));
    UserFs::new(tree, "alice", VPath::parse(home).unwrap(), perms)
}

/// An area at the root of a backend.
pub fn area(b: &Arc<dyn Backend>, prefix: &str) -> Area {
    Area {
        backend: b.clone(),
        prefix: prefix.to_string(),
    }
}

/// The folder on disk of a local fixture.
pub fn local_root(f: &Fixture) -> std::path::PathBuf {
    f._guard
        .downcast_ref::<tempfile::TempDir>()
        .expect("a local fixture")
        .path()
        .to_path_buf()
}
