//! The spool: part buffers that the memory budget cannot hold now go to nameless temp files
//! under `<state_dir>/spool` (see [`super::buffer`] for when). Whether the disk takes them is
//! remembered in `Inner::spool`, so that a broken disk is reported once and writers then wait
//! for memory instead.

use super::super::{Inner, SPOOL_BROKEN, SPOOL_OK};
use crate::error::{Error, ErrorKind, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Whether a part of `size` bytes can be spooled now, as far as the last attempt knows (the
/// first asks the disk).
pub(super) async fn spool_usable(inner: &Inner, size: u64) -> bool {
    match inner.spool.load(Ordering::Relaxed) {
        SPOOL_OK => true,
        SPOOL_BROKEN => false,
        _ => spool_file(inner, size).await.is_ok(),
    }
}

/// A temp file for a part of up to `size` bytes under the spool folder (`<state_dir>/spool`),
/// created when missing (at start, and again here should someone remove it meanwhile). The file
/// has no name: it is gone with its last handle, even after a crash.
///
/// The part's blocks are reserved at once (fallocate): creating an empty file succeeds on a
/// full disk, and a part whose writes then failed lost its upload, where waiting for memory
/// would have saved it. A filesystem that cannot reserve (EOPNOTSUPP: some network and FUSE
/// filesystems) gets the file without the reservation. When spooling starts failing, one line
/// says why; the callers then wait for memory instead.
pub(super) async fn spool_file(inner: &Inner, size: u64) -> Result<Arc<std::fs::File>> {
    let dir = inner.opts.spool_dir.clone();
    let shown = dir.clone();
    let r = tokio::task::spawn_blocking(move || {
        let file = match dir {
            Some(d) => tempfile::tempfile_in(&d).or_else(|e| {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(e);
                }
                std::fs::create_dir_all(&d)?;
                tempfile::tempfile_in(&d)
            }),
            None => tempfile::tempfile(),
        }?;
        reserve(&file, size)?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    match r {
        Ok(f) => {
            if inner.spool.swap(SPOOL_OK, Ordering::Relaxed) == SPOOL_BROKEN {
                tracing::info!(remote = %inner.opts.name, "upload parts can be spooled to disk again");
            }
            Ok(Arc::new(f))
        }
        Err(e) => {
            if inner.spool.swap(SPOOL_BROKEN, Ordering::Relaxed) != SPOOL_BROKEN {
                let shown = shown.unwrap_or_else(std::env::temp_dir);
                tracing::warn!(remote = %inner.opts.name, error = %e,
                    "cannot spool upload parts to {}: uploads wait for memory instead",
                    shown.display());
            }
            Err(Error::new(ErrorKind::Backend, "cannot spool to disk").with_source(e))
        }
    }
}

/// Allocates the first `size` bytes of `file` (its length grows to `size`; a spooled part's
/// own length is kept beside it, so nothing reads past what was written).
fn reserve(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(()),
        Err(e) => Err(e.into()),
    }
}
