//! An external sort: items are gathered in memory up to a cap, written out as sorted runs, and
//! read back as one sorted stream by a k-way merge.
//!
//! Neither side's listing arrives in the order the three-way comparison needs (a local walk is
//! in directory order; an S3 walk mixes markers and implied folders), and a job may cover
//! hundreds of thousands of objects, so memory is bounded by the cap, not by the job.

use super::model::Keyed;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Lines, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use tempfile::TempPath;

/// Items kept in memory before a run is written out. At roughly 150-250 bytes an item (a path
/// of ~60 bytes, an ETag, sizes, the `Vec` and `String` headers), that is 2-5 MB per spool.
pub(crate) const DEFAULT_CAP: usize = 20_000;

/// Collects items, then yields them sorted by key.
pub(crate) struct Spool<T> {
    dir: PathBuf,
    cap: usize,
    buf: Vec<T>,
    runs: Vec<TempPath>,
    len: u64,
}

impl<T: Keyed + Serialize + DeserializeOwned> Spool<T> {
    /// A spool whose runs go to temporary files in `dir`.
    pub(crate) fn new(dir: &Path, cap: usize) -> Self {
        Spool {
            dir: dir.to_path_buf(),
            cap: cap.max(1),
            buf: Vec::new(),
            runs: Vec::new(),
            len: 0,
        }
    }

    /// Adds an item. Items with equal keys come back in the order they were pushed.
    pub(crate) fn push(&mut self, item: T) -> io::Result<()> {
        self.buf.push(item);
        self.len += 1;
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        Ok(())
    }

    /// Items pushed so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // A stable sort keeps pushes with equal keys in order (the journal relies on it).
        self.buf.sort_by(|a, b| a.key().cmp(b.key()));
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut w = BufWriter::with_capacity(256 * 1024, tmp.as_file());
        for item in self.buf.drain(..) {
            serde_json::to_writer(&mut w, &item)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        drop(w);
        self.runs.push(tmp.into_temp_path());
        Ok(())
    }

    /// Ends the collection; the result can be read in order any number of times.
    pub(crate) fn finish(mut self) -> io::Result<Sorted<T>> {
        self.spill()?;
        Ok(Sorted {
            runs: std::mem::take(&mut self.runs),
            len: self.len,
            _t: PhantomData,
        })
    }
}

/// Sorted runs on disk (deleted when dropped).
pub(crate) struct Sorted<T> {
    runs: Vec<TempPath>,
    #[cfg_attr(not(test), allow(dead_code))]
    len: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T: Keyed + DeserializeOwned> Sorted<T> {
    /// Number of items.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// A sorted pass over every item.
    pub(crate) fn iter(&self) -> io::Result<Merge<T>> {
        let mut m = Merge {
            readers: Vec::with_capacity(self.runs.len()),
            heap: BinaryHeap::new(),
        };
        for (i, p) in self.runs.iter().enumerate() {
            let f = File::open(p)?;
            m.readers
                .push(BufReader::with_capacity(64 * 1024, f).lines());
            m.refill(i)?;
        }
        Ok(m)
    }
}

struct Head<T> {
    run: usize,
    item: T,
}

impl<T: Keyed> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T: Keyed> Eq for Head<T> {}
impl<T: Keyed> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Keyed> Ord for Head<T> {
    // Reversed: BinaryHeap pops the greatest, we want the smallest key, earliest run first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .item
            .key()
            .cmp(self.item.key())
            .then(other.run.cmp(&self.run))
    }
}

/// A k-way merge of sorted runs: one item per run in memory.
pub(crate) struct Merge<T> {
    readers: Vec<Lines<BufReader<File>>>,
    heap: BinaryHeap<Head<T>>,
}

impl<T: Keyed + DeserializeOwned> Merge<T> {
    fn refill(&mut self, run: usize) -> io::Result<()> {
        if let Some(line) = self.readers[run].next() {
            let item: T = serde_json::from_str(&line?)?;
            self.heap.push(Head { run, item });
        }
        Ok(())
    }
}

impl<T: Keyed + DeserializeOwned> Iterator for Merge<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        let head = self.heap.pop()?;
        if let Err(e) = self.refill(head.run) {
            return Some(Err(e));
        }
        Some(Ok(head.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::model::Item;
    use rand::seq::SliceRandom;

    fn item(p: &str, size: u64) -> Item {
        Item {
            path: p.into(),
            size,
            mtime_ns: None,
            etag: None,
        }
    }

    #[test]
    fn sorts_across_runs_and_keeps_push_order_of_equal_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = (0..1000).map(|i| format!("f{i:04}")).collect();
        names.push("a/".into());
        names.push("a/b".into());
        names.push("a!".into());
        names.shuffle(&mut rand::rng());
        let mut s = Spool::new(dir.path(), 7);
        for n in &names {
            s.push(item(n, 1)).unwrap();
        }
        // A later push of an existing key must come out after the first.
        s.push(item("f0500", 2)).unwrap();
        let sorted = s.finish().unwrap();
        assert_eq!(sorted.len(), 1004);
        for _ in 0..2 {
            let out: Vec<Item> = sorted.iter().unwrap().map(|r| r.unwrap()).collect();
            let keys: Vec<&str> = out.iter().map(|i| i.path.as_str()).collect();
            let mut want = keys.clone();
            want.sort();
            assert_eq!(keys, want);
            assert_eq!(&keys[..3], &["a!", "a/", "a/b"]);
            let dup: Vec<u64> = out
                .iter()
                .filter(|i| i.path == "f0500")
                .map(|i| i.size)
                .collect();
            assert_eq!(dup, vec![1, 2]);
        }
        drop(sorted);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
