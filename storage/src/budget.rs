//! The process-wide memory budget for transfer buffers (`transfers.memory_limit`).
//!
//! Every upload part buffered in memory holds a [`MemoryPermit`] for its size until the part
//! has been sent. When the budget is used up, writers wait for a permit: that wait is the
//! back-pressure that keeps a thousand parallel uploads from exhausting memory. A part that
//! could never fit (bigger than the whole budget) is spooled to disk instead of waiting forever.

use crate::error::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default `transfers.memory_limit`: 512 MiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

/// Permits count units of this many bytes, so that sizes beyond 4 GiB still fit the semaphore's
/// `u32` acquisition count.
const UNIT: u64 = 1024;

/// A byte-counting semaphore shared by every transfer of the process.
#[derive(Debug)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    units: u64,
    /// Callers of [`MemoryBudget::acquire`] waiting now.
    waiting: AtomicUsize,
}

/// Bytes of the budget held by one buffer; released when dropped.
#[derive(Debug)]
pub struct MemoryPermit {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl MemoryPermit {
    /// How many bytes this permit accounts for (rounded up to the budget's granularity).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `other`'s bytes to this permit (both are released together).
    pub fn merge(&mut self, other: MemoryPermit) {
        match (&mut self.permit, other.permit) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.permit = Some(b),
            _ => {}
        }
        self.bytes += other.bytes;
    }
}

fn units_of(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

impl MemoryBudget {
    /// A budget of `limit` bytes (rounded up to whole KiB). A limit of 0 is raised to 1 KiB so
    /// that the budget still works, with every part spooled to disk.
    pub fn new(limit: u64) -> Self {
        let units = units_of(limit)
            .max(1)
            .min(Semaphore::MAX_PERMITS as u64)
            .min(u32::MAX as u64);
        MemoryBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A shared budget of `limit` bytes.
    pub fn shared(limit: u64) -> Arc<Self> {
        Arc::new(Self::new(limit))
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> u64 {
        self.units * UNIT
    }

    /// Bytes not held by anyone right now.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }

    /// Bytes held by buffers right now (the total less what is available), for metrics and
    /// for tests that check what a transfer holds.
    pub fn in_use(&self) -> u64 {
        self.total() - self.available()
    }

    /// Whether someone waits for memory now.
    pub fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Whether memory is plentiful now: nobody waits for it and at least half the budget is
    /// free. Holders that could give theirs back (a sent upload part kept for reuse) keep it
    /// only then, so that under pressure it goes to others' parts instead of their spool.
    pub fn is_plentiful(&self) -> bool {
        !self.has_waiters() && self.available() >= self.total() / 2
    }

    /// True when a buffer of `bytes` can ever be granted (it is not bigger than the budget).
    pub fn can_hold(&self, bytes: u64) -> bool {
        units_of(bytes) <= self.units
    }

    /// Waits until `bytes` are free, then holds them. Fails with `LimitReached` when `bytes`
    /// exceed the whole budget (check [`MemoryBudget::can_hold`] first and spool instead).
    pub async fn acquire(&self, bytes: u64) -> Result<MemoryPermit> {
        let units = units_of(bytes);
        if units == 0 {
            return Ok(MemoryPermit {
                permit: None,
                bytes: 0,
            });
        }
        if units > self.units {
            return Err(Error::new(
                ErrorKind::LimitReached,
                "a transfer buffer is larger than the whole memory limit",
            ));
        }
        if let Ok(permit) = self.sem.clone().try_acquire_many_owned(units as u32) {
            return Ok(MemoryPermit {
                permit: Some(permit),
                bytes: units * UNIT,
            });
        }
        /// Counts a waiter for as long as it waits (a cancelled wait included).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(units as u32)
            .await
            .map_err(|_| Error::new(ErrorKind::Backend, "the memory budget was closed"))?;
        Ok(MemoryPermit {
            permit: Some(permit),
            bytes: units * UNIT,
        })
    }

    /// Holds `bytes` if they are free right now, without waiting.
    pub fn try_acquire(&self, bytes: u64) -> Option<MemoryPermit> {
        let units = units_of(bytes);
        if units == 0 {
            return Some(MemoryPermit {
                permit: None,
                bytes: 0,
            });
        }
        if units > self.units {
            return None;
        }
        let permit = self.sem.clone().try_acquire_many_owned(units as u32).ok()?;
        Some(MemoryPermit {
            permit: Some(permit),
            bytes: units * UNIT,
        })
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::new(DEFAULT_MEMORY_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_releases() {
        let b = MemoryBudget::new(10 * 1024);
        assert_eq!(b.total(), 10 * 1024);
        let p = b.acquire(6 * 1024).await.unwrap();
        assert_eq!(b.available(), 4 * 1024);
        assert_eq!(b.in_use(), 6 * 1024);
        assert!(b.try_acquire(5 * 1024).is_none());
        drop(p);
        assert_eq!(b.available(), 10 * 1024);
        assert!(b.can_hold(10 * 1024));
        assert!(!b.can_hold(10 * 1024 + 1));
        assert_eq!(
            b.acquire(11 * 1024).await.unwrap_err().kind(),
            ErrorKind::LimitReached
        );
    }

    #[tokio::test]
    async fn waiters_wake_when_released() {
        let b = Arc::new(MemoryBudget::new(4096));
        let p = b.acquire(4096).await.unwrap();
        let b2 = b.clone();
        assert!(!b.has_waiters());
        assert!(!b.is_plentiful(), "all of it is held");
        let waiter = tokio::spawn(async move { b2.acquire(2048).await.map(|p| p.bytes()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(b.has_waiters());
        drop(p);
        assert_eq!(waiter.await.unwrap().unwrap(), 2048);
        assert!(!b.has_waiters());
        assert!(b.is_plentiful(), "half of it is free and nobody waits");
    }
}
