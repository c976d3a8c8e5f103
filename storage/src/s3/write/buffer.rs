//! The part being filled: memory or a spooled temp file, and its checksum, kept as the bytes
//! arrive. Nothing here knows S3; [`super::parts`] fills a buffer, takes it when full, and
//! hands the body to the S3 calls.
//!
//! Memory: a buffer holds a permit of the shared [`MemoryBudget`] for what it has allocated,
//! until its part has been sent (a large upload then fills the same buffer again with a later
//! part, permit and all: see [`Spare`]). The first part of an upload starts small
//! ([`FIRST_BUFFER`], or the announced size) and doubles as it fills, so a thousand small
//! uploads hold about their sizes, not a thousand part sizes; once a part has filled, the upload
//! is known to be large and each further part takes its whole size at its first byte. A writer never waits for the
//! budget while it can spill: a part whose memory is not free when it opens, or whose growth is
//! not free when it fills, goes to a temp file under the spool folder (`<state_dir>/spool`,
//! created when missing) and its permit is returned. So no writer waits while holding a
//! half-filled part, and uploads cannot deadlock each other, nor with other holders of the
//! budget (requests read ahead of an SFTP handler). Only when spooling fails (a full or
//! unwritable disk; logged with the reason) does a writer wait for memory instead, so that the
//! upload still succeeds. Parts larger than the whole budget go to a temp file from their first
//! byte (or, without a disk, shrink to the budget's size).
//!
//! Checksums are not taken here: a full part is hashed in its own task (see
//! [`super::s3::S3Parts::upload_part`]), in parallel with the filling of the next part. Hashing
//! each write as it arrived, on the writer's task, was measured slower on the loaded 2-core
//! benchmark machine (bench/README.md, "Put before and after issue 17").
//!
//! [`MemoryBudget`]: crate::budget::MemoryBudget

use super::super::client::Body;
use super::super::Inner;
use super::s3::Spare;
use super::spool::{spool_file, spool_usable};
use crate::budget::MemoryPermit;
use crate::error::Result;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The first buffer of an upload whose size was not announced; it doubles up to the part size.
pub(crate) const FIRST_BUFFER: u64 = 64 * 1024;

/// Where the part's bytes are.
enum Store {
    Empty,
    Mem {
        data: BytesMut,
        /// Bytes allocated for `data` (what the permit covers, before its rounding).
        cap: u64,
        permit: MemoryPermit,
    },
    /// A spooled part: written with positioned writes from the caller's own buffers, not
    /// through tokio's file, which copies each write into a buffer of its own and keeps that
    /// buffer's size for the file's life (a part moved out of memory at 512 KiB kept 512 KiB
    /// there, outside the budget, until it was sent: half a GiB at 1,024 sessions).
    Disk {
        file: Arc<std::fs::File>,
        len: u64,
    },
}

/// What [`PartBuf::open`] did.
pub(super) enum Opened {
    /// The part is open.
    Ready,
    /// Nothing could take the part now: wait for this many bytes of the budget, then
    /// [`PartBuf::open_with`].
    Wait(u64),
}

/// One part being filled.
pub(super) struct PartBuf {
    store: Store,
    /// Size of the part (fixed when it opens).
    target: u64,
}

/// How a part opens: see [`PartBuf::open`].
#[derive(Clone, Copy)]
pub(super) struct Opening {
    /// The part's size.
    pub target: u64,
    /// The upload's announced size, if any.
    pub size_hint: Option<u64>,
    /// A part has filled before: this one takes its whole size at once.
    pub large: bool,
    /// The upload's first part, nothing written yet.
    pub first: bool,
}

impl PartBuf {
    pub(super) fn new() -> PartBuf {
        PartBuf {
            store: Store::Empty,
            target: 0,
        }
    }

    pub(super) fn len(&self) -> u64 {
        match &self.store {
            Store::Empty => 0,
            Store::Mem { data, .. } => data.len() as u64,
            Store::Disk { len, .. } => *len,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !matches!(self.store, Store::Empty)
    }

    pub(super) fn is_full(&self) -> bool {
        self.is_open() && self.len() >= self.target
    }

    /// Room left in the part.
    pub(super) fn space(&self) -> u64 {
        self.target - self.len()
    }

    /// Forgets the part's bytes (an aborted upload).
    pub(super) fn clear(&mut self) {
        self.store = Store::Empty;
    }

    /// Opens the part: memory when the budget has it free now, else disk. When spooling is
    /// impossible (see [`spool_file`]), answers [`Opened::Wait`]: the caller waits for the
    /// memory and hands it to [`PartBuf::open_with`]. That is the only place where a writer
    /// waits for the budget, and it holds nothing of its part then.
    ///
    /// Not waiting while the disk can take the part matters: other buffers of the process
    /// (requests read ahead of a session's handler) hold budget until their handler, and so
    /// perhaps this very writer, makes progress.
    ///
    /// `spare`: a sent part's buffer with its budget, filled again when it has room for the
    /// whole part (and freed here otherwise, before anything waits).
    pub(super) async fn open(
        &mut self,
        inner: &Inner,
        how: Opening,
        spare: Option<Spare>,
    ) -> Result<Opened> {
        if let Some(Spare { mut data, permit }) = spare {
            let cap = data.capacity() as u64;
            if cap >= how.target && permit.bytes() >= cap {
                data.clear();
                self.target = how.target;
                self.store = Store::Mem { data, cap, permit };
                return Ok(Opened::Ready);
            }
        }
        let mut target = how.target;
        let budget = inner.budget.clone();
        if !budget.can_hold(target) {
            match spool_file(inner, target).await {
                Ok(file) => {
                    self.target = target;
                    self.store = Store::Disk { file, len: 0 };
                    return Ok(Opened::Ready);
                }
                // Parts need not all be the same size (every part but the last must reach
                // S3's minimum, 5 MiB): without a disk, a part is as large as the budget.
                Err(_) => target = budget.total(),
            }
        }
        self.target = target;
        let want = match how.size_hint {
            _ if how.large => target,
            // A first part of a file announced as small only needs what was announced.
            Some(h) if how.first => target.min(h.max(1)),
            // A part that starts small grows, and a growth the budget cannot grant at once
            // spills to disk. Without a disk, it would have to wait holding its part, and
            // such waiters can hold the whole budget: so the part takes its size at once.
            _ if !spool_usable(inner, target).await => target,
            _ => target.min(FIRST_BUFFER),
        };
        let permit = match budget.try_acquire(want) {
            Some(p) => p,
            None => match spool_file(inner, target).await {
                Ok(file) => {
                    self.store = Store::Disk { file, len: 0 };
                    return Ok(Opened::Ready);
                }
                Err(_) if how.size_hint.is_some() => return Ok(Opened::Wait(want)),
                Err(_) => return Ok(Opened::Wait(target)),
            },
        };
        self.open_with(permit, want);
        Ok(Opened::Ready)
    }

    /// Opens the part in memory with `permit`, which [`Opened::Wait`] asked for (`want` bytes).
    pub(super) fn open_with(&mut self, permit: MemoryPermit, want: u64) {
        let cap = permit.bytes().min(self.target).max(want);
        self.store = Store::Mem {
            data: BytesMut::with_capacity(cap as usize),
            cap,
            permit,
        };
    }

    /// Makes room for `need` bytes in the memory buffer: doubles it (up to the part size) when
    /// the budget has the growth free right now; otherwise moves the part to disk, releasing
    /// its permit, since waiting here while holding the part could deadlock.
    async fn grow(&mut self, inner: &Inner, need: u64) -> Result<()> {
        let Store::Mem { cap, permit, .. } = &mut self.store else {
            return Ok(());
        };
        if need <= *cap {
            return Ok(());
        }
        let new_cap = need.max(*cap * 2).min(self.target.max(need));
        let more = new_cap.saturating_sub(permit.bytes());
        let granted = match inner.budget.try_acquire(more) {
            Some(p) => Some(p),
            None => match spool_file(inner, self.target).await {
                Ok(file) => {
                    let Store::Mem { data, .. } = std::mem::replace(&mut self.store, Store::Empty)
                    else {
                        unreachable!("matched above");
                    };
                    let len = data.len() as u64;
                    write_at(&file, data.freeze(), 0).await?;
                    self.store = Store::Disk { file, len };
                    return Ok(());
                }
                // No disk to spill to (logged by `spool_file`): wait for the growth rather than
                // fail the upload. This can stall while every buffer of the budget waits the
                // same way, which is why spooling is the normal path.
                Err(_) => None,
            },
        };
        let more = match granted {
            Some(p) => p,
            None => inner.budget.acquire(more).await?,
        };
        let Store::Mem { data, cap, permit } = &mut self.store else {
            unreachable!("still in memory");
        };
        permit.merge(more);
        // One copy per doubling: at most log2(part size / first buffer) per part, and only
        // for the first part of an upload.
        let mut grown = BytesMut::with_capacity(new_cap as usize);
        grown.extend_from_slice(data);
        *data = grown;
        *cap = new_cap;
        Ok(())
    }

    /// Adds `chunk` (at most [`PartBuf::space`]) to the open part.
    pub(super) async fn append(&mut self, inner: &Inner, chunk: Bytes) -> Result<()> {
        let need = self.len() + chunk.len() as u64;
        self.grow(inner, need).await?;
        match &mut self.store {
            Store::Empty => unreachable!("opened before"),
            Store::Mem { data, .. } => data.extend_from_slice(&chunk),
            Store::Disk { file, len } => {
                let n = chunk.len() as u64;
                write_at(file, chunk, *len).await?;
                *len += n;
            }
        }
        Ok(())
    }

    /// The part's body and what holds its memory (until it is sent); the buffer is empty
    /// again.
    pub(super) async fn take(&mut self) -> Result<(Body, Option<MemoryPermit>)> {
        Ok(match std::mem::replace(&mut self.store, Store::Empty) {
            Store::Empty => (Body::Empty, None),
            Store::Mem { data, permit, .. } => (Body::Bytes(data.freeze()), Some(permit)),
            Store::Disk { file, len } => (Body::File(file, len), None),
        })
    }
}

/// Writes `data` at `at` in `file`, on the blocking pool; `data` is dropped once written.
async fn write_at(file: &Arc<std::fs::File>, data: Bytes, at: u64) -> Result<()> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&data, at)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(())
}
