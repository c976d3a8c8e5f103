//! The multipart uploads this process holds open, so that the stale-upload clean-up never
//! aborts one of them.
//!
//! The clean-up cannot tell a live upload from an abandoned one by the start time a server
//! reports (moto reports 2010 for every upload; a long upload outlives any age limit), so every
//! upload id this process obtains is registered here until its writer is gone. The registry is
//! process-wide rather than per backend: a reload builds new backends while sessions still
//! write through the old ones, and one clean-up pass covers them all.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

fn registry() -> &'static Mutex<HashMap<String, usize>> {
    static LIVE: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Keeps one upload id registered as live; dropping it unregisters the id.
#[derive(Debug)]
pub(crate) struct LiveUpload {
    id: String,
}

/// Registers `upload_id` as held by this process until the returned guard is dropped.
pub(crate) fn register(upload_id: &str) -> LiveUpload {
    let mut m = registry().lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(upload_id.to_string()).or_insert(0) += 1;
    LiveUpload {
        id: upload_id.to_string(),
    }
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

    #[test]
    fn registered_until_the_last_guard_goes() {
        assert!(!is_live("u-test-1"));
        let a = register("u-test-1");
        let b = register("u-test-1");
        assert!(is_live("u-test-1"));
        drop(a);
        assert!(is_live("u-test-1"));
        drop(b);
        assert!(!is_live("u-test-1"));
    }
}
