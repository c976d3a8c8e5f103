//! The multipart uploads this process holds open, so that the stale-upload clean-up never
//! aborts one of them, and a journal of them on disk, so that the next start aborts those a
//! crash left behind.
//!
//! The clean-up cannot tell a live upload from an abandoned one by the start time a server
//! reports (moto reports 2010 for every upload; a long upload outlives any age limit), so every
//! upload id this process obtains is registered here until its writer is gone. The registry is
//! process-wide rather than per backend: a reload builds new backends while sessions still
//! write through the old ones, and one clean-up pass covers them all.
//!
//! The journal (`<state_dir>/uploads/`, one small JSON file per upload, removed with its guard)
//! is what finds a crash's leftovers on servers whose ListMultipartUploads is missing (s3s-fs)
//! or needs the exact key, and finds them at the next start rather than after
//! `stale_multipart_after`: an entry written by another run of this instance names an upload
//! that no process holds any more (a `state_dir` belongs to one instance). It is not synced to
//! disk: a power cut can lose an entry, and then only the listing's clean-up finds the upload.

use super::Inner;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

fn registry() -> &'static Mutex<HashMap<String, usize>> {
    static LIVE: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Keeps one upload id registered as live, and journaled; dropping it unregisters the id and
/// removes its journal entry.
#[derive(Debug)]
pub(crate) struct LiveUpload {
    id: String,
    journal: Option<PathBuf>,
}

/// One journal entry: enough to abort the upload from another run.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    /// The run that started it ([`run_id`]), and its process.
    pub run: u64,
    pub pid: u32,
    pub remote: String,
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// This process's run, distinct from every earlier run's (random).
pub(crate) fn run_id() -> u64 {
    static RUN: OnceLock<u64> = OnceLock::new();
    *RUN.get_or_init(rand::random)
}

/// Registers `upload_id` (of `key` on `inner`'s remote) as held by this process until the
/// returned guard is dropped, and journals it when the remote has a journal folder. A journal
/// that cannot be written is logged and skipped: the upload goes on, and only the listing's
/// clean-up can find it after a crash.
pub(crate) fn register(inner: &Inner, key: &str, upload_id: &str) -> LiveUpload {
    let mut m = registry().lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(upload_id.to_string()).or_insert(0) += 1;
    drop(m);
    let journal = inner
        .opts
        .journal_dir
        .as_deref()
        .and_then(|dir| journal(dir, inner, key, upload_id));
    LiveUpload {
        id: upload_id.to_string(),
        journal,
    }
}

fn journal(dir: &Path, inner: &Inner, key: &str, upload_id: &str) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let entry = Entry {
        run: run_id(),
        pid: std::process::id(),
        remote: inner.opts.name.clone(),
        endpoint: inner.opts.endpoint.clone(),
        bucket: inner.opts.bucket.clone(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
    };
    let path = dir.join(format!(
        "{:016x}-{}.json",
        run_id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let body = serde_json::to_vec(&entry).expect("an entry serializes");
    let written = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, body));
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(remote = %inner.opts.name, error = %e,
                "cannot journal a multipart upload; after a crash only the stale clean-up finds it");
            None
        }
    }
}

/// The journal entries in `dir` that earlier runs left for `inner`'s remote (same name,
/// endpoint and bucket), with their files. Unreadable entries are skipped.
///
/// An entry of another run is left alone while its process lives: `bucketgate sync run` shares
/// the state folder with `serve`. A process with this process's own id is an earlier run (a
/// container's gateway is process 1 every time).
pub(crate) fn leftovers(dir: &Path, inner: &Inner) -> Vec<(PathBuf, Entry)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let e: Entry = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some((p, e))
        })
        .filter(|(_, e)| {
            e.run != run_id()
                && (e.pid == std::process::id() || !process_lives(e.pid))
                && e.remote == inner.opts.name
                && e.endpoint == inner.opts.endpoint
                && e.bucket == inner.opts.bucket
        })
        .collect()
}

/// Whether process `pid` exists (Linux: its `/proc` entry). Where that cannot be told, it
/// is taken as alive, so nothing of a running process is aborted.
fn process_lives(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

/// True while some writer of this process holds `upload_id`.
pub fn is_live(upload_id: &str) -> bool {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(upload_id)
}

impl Drop for LiveUpload {
    fn drop(&mut self) {
        if let Some(p) = &self.journal {
            let _ = std::fs::remove_file(p);
        }
        let mut m = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register_id(id: &str) -> LiveUpload {
        *registry()
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert(0) += 1;
        LiveUpload {
            id: id.to_string(),
            journal: None,
        }
    }

    #[test]
    fn registered_until_the_last_guard_goes() {
        assert!(!is_live("u-test-1"));
        let a = register_id("u-test-1");
        let b = register_id("u-test-1");
        assert!(is_live("u-test-1"));
        drop(a);
        assert!(is_live("u-test-1"));
        drop(b);
        assert!(!is_live("u-test-1"));
    }
}
