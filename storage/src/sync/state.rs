//! The persisted state of a job: what both sides held after the last good run.
//!
//! `<job>.state` is JSON lines: a header (`{"v":1,"fp":…,"gen":N}`) then one [`Record`] per
//! path, sorted by path, so it is read as a stream beside the two sorted listings. It is only
//! ever replaced whole: written to a temporary file, fsynced, renamed over the old one, and the
//! folder fsynced, so a crash leaves either the old or the new state, never a mix.
//!
//! `<job>.journal` keeps the progress of a run that has not finished: each pair verified by a
//! copy, and each path deleted on both sides, is appended as it happens (fsynced in batches).
//! The next run reads the state with the journal laid over it, so a killed run's work counts.
//! The journal names the state generation it extends; once a run writes generation N+1 the
//! journal of generation N is stale and ignored, whether or not its removal got to disk.

use super::model::{Keyed, Record};
use super::spool::{Merge, Sorted, Spool};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Lines, Read, Seek, SeekFrom, Write};
use std::iter::Peekable;
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;
/// Journal lines between two fsyncs. Every line reaches the kernel at once (a killed process
/// loses none); a power cut loses at most this many, which the next run verifies again by
/// comparing the two sides.
const JOURNAL_SYNC_EVERY: u32 = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    v: u32,
    fp: String,
    gen: u64,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JEntry {
    /// This pair was verified on both sides.
    Put(Record),
    /// This path is gone from both sides.
    Del(String),
}

impl Keyed for JEntry {
    fn key(&self) -> &str {
        match self {
            JEntry::Put(r) => &r.path,
            JEntry::Del(p) => p,
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_header(lines: &mut Lines<BufReader<File>>) -> io::Result<Option<Header>> {
    match lines.next() {
        None => Ok(None),
        Some(l) => {
            let h: Header =
                serde_json::from_str(&l?).map_err(|e| bad(format!("bad state header: {e}")))?;
            if h.v != VERSION {
                return Err(bad(format!("unknown state version {}", h.v)));
            }
            Ok(Some(h))
        }
    }
}

fn open_lines(path: &Path) -> io::Result<Option<Lines<BufReader<File>>>> {
    match File::open(path) {
        Ok(f) => Ok(Some(BufReader::with_capacity(64 * 1024, f).lines())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The state with the journal laid over it: the baseline a run compares both sides with.
pub(crate) struct Baseline {
    state: PathBuf,
    /// False when there is no state or it belongs to other folders (the job was repointed).
    use_state: bool,
    journal: Option<Sorted<JEntry>>,
    /// The generation the next state will carry.
    pub(crate) next_gen: u64,
    /// True when the journal extends the current state and new lines may be appended to it.
    pub(crate) journal_valid: bool,
}

impl Baseline {
    /// Opens the baseline of fingerprint `fp`, spooling the journal (if any) through `tmp`.
    pub(crate) fn open(state: &Path, journal: &Path, fp: &str, tmp: &Path) -> io::Result<Self> {
        let mut gen = 0;
        let mut use_state = false;
        if let Some(mut lines) = open_lines(state)? {
            if let Some(h) = read_header(&mut lines)? {
                gen = h.gen;
                if h.fp == fp {
                    use_state = true;
                } else {
                    // Records of other folders would read as deletions here: start afresh.
                    tracing::warn!(state = %state.display(), "the sync job's folders changed since its last run: its state is ignored");
                }
            }
        }
        let mut journal_sorted = None;
        let mut journal_valid = false;
        if let Some(mut lines) = open_lines(journal)? {
            let header = match lines.next() {
                Some(Ok(l)) => serde_json::from_str::<Header>(&l).ok(),
                _ => None,
            };
            if let Some(h) = header {
                if h.v == VERSION && h.fp == fp && h.gen == gen {
                    let mut spool = Spool::new(tmp, super::spool::DEFAULT_CAP);
                    for line in lines {
                        let line = line?;
                        // A line torn by a crash is skipped: its pair is verified again.
                        if let Ok(e) = serde_json::from_str::<JEntry>(&line) {
                            spool.push(e)?;
                        }
                    }
                    journal_sorted = Some(spool.finish()?);
                    journal_valid = true;
                }
            }
        }
        Ok(Baseline {
            state: state.to_path_buf(),
            use_state,
            journal: journal_sorted,
            next_gen: gen + 1,
            journal_valid,
        })
    }

    /// True when the state file on disk, alone (no journal laid over it), holds exactly
    /// `records`: then it need not be written again.
    pub(crate) fn state_holds(
        &self,
        records: impl Iterator<Item = io::Result<Record>>,
    ) -> io::Result<bool> {
        if !self.use_state || self.journal.is_some() {
            return Ok(false);
        }
        let mut on_disk = self.iter()?;
        for r in records {
            let r = r?;
            match on_disk.next().transpose()? {
                Some(d) if d == r => {}
                _ => return Ok(false),
            }
        }
        Ok(on_disk.next().transpose()?.is_none())
    }

    /// A sorted pass over the baseline's records.
    pub(crate) fn iter(&self) -> io::Result<BaselineIter> {
        let state = if self.use_state {
            let mut lines = open_lines(&self.state)?.ok_or_else(|| bad("state vanished"))?;
            read_header(&mut lines)?;
            Some(lines)
        } else {
            None
        };
        let journal = match &self.journal {
            Some(j) => Some(j.iter()?.peekable()),
            None => None,
        };
        Ok(BaselineIter {
            state,
            state_head: None,
            last: None,
            journal,
            started: false,
        })
    }
}

/// Sorted records of the baseline: the state's, replaced or removed by the journal's.
pub(crate) struct BaselineIter {
    state: Option<Lines<BufReader<File>>>,
    state_head: Option<Record>,
    last: Option<String>,
    journal: Option<Peekable<Merge<JEntry>>>,
    started: bool,
}

impl BaselineIter {
    fn advance_state(&mut self) -> io::Result<()> {
        self.state_head = None;
        if let Some(lines) = &mut self.state {
            if let Some(l) = lines.next() {
                let r: Record =
                    serde_json::from_str(&l?).map_err(|e| bad(format!("bad state line: {e}")))?;
                if let Some(last) = &self.last {
                    if r.path <= *last {
                        return Err(bad("the state file is not sorted"));
                    }
                }
                self.last = Some(r.path.clone());
                self.state_head = Some(r);
            }
        }
        Ok(())
    }

    fn step(&mut self) -> io::Result<Option<Record>> {
        if !self.started {
            self.started = true;
            self.advance_state()?;
        }
        loop {
            let jkey = match self.journal.as_mut().and_then(|j| j.peek()) {
                Some(Ok(e)) => Some(e.key().to_string()),
                Some(Err(_)) => {
                    let e = self.journal.as_mut().and_then(|j| j.next());
                    return Err(match e {
                        Some(Err(e)) => e,
                        _ => bad("journal"),
                    });
                }
                None => None,
            };
            let skey = self.state_head.as_ref().map(|r| r.path.clone());
            let key = match (&skey, &jkey) {
                (None, None) => return Ok(None),
                (Some(s), None) => s.clone(),
                (None, Some(j)) => j.clone(),
                (Some(s), Some(j)) => s.min(j).clone(),
            };
            let mut cur = if skey.as_deref() == Some(key.as_str()) {
                let r = self.state_head.take();
                self.advance_state()?;
                r
            } else {
                None
            };
            // The journal's latest line for a path wins over the state and earlier lines.
            if jkey.as_deref() == Some(key.as_str()) {
                let j = self.journal.as_mut().expect("peeked");
                while let Some(Ok(e)) = j.peek() {
                    if e.key() != key {
                        break;
                    }
                    match j.next() {
                        Some(Ok(JEntry::Put(r))) => cur = Some(r),
                        Some(Ok(JEntry::Del(_))) => cur = None,
                        _ => unreachable!("peeked Ok"),
                    }
                }
            }
            if let Some(r) = cur {
                return Ok(Some(r));
            }
        }
    }
}

impl Iterator for BaselineIter {
    type Item = io::Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the state at `path` with `records` (sorted; for a path given twice the last wins).
pub(crate) fn write_state(
    path: &Path,
    fp: &str,
    gen: u64,
    records: impl Iterator<Item = io::Result<Record>>,
) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut n = 0u64;
    {
        let mut w = BufWriter::with_capacity(256 * 1024, tmp.as_file());
        serde_json::to_writer(
            &mut w,
            &Header {
                v: VERSION,
                fp: fp.to_string(),
                gen,
            },
        )?;
        w.write_all(b"\n")?;
        let mut pending: Option<Record> = None;
        for r in records {
            let r = r?;
            if let Some(p) = pending.take() {
                if p.path != r.path {
                    if p.path > r.path {
                        return Err(bad("state records out of order"));
                    }
                    serde_json::to_writer(&mut w, &p)?;
                    w.write_all(b"\n")?;
                    n += 1;
                }
            }
            pending = Some(r);
        }
        if let Some(p) = pending {
            serde_json::to_writer(&mut w, &p)?;
            w.write_all(b"\n")?;
            n += 1;
        }
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)?;
    Ok(n)
}

/// Removes a file and makes the removal durable; absent is fine.
pub(crate) fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Appends verified pairs as a run makes them.
pub(crate) struct Journal {
    w: BufWriter<File>,
    unsynced: u32,
}

impl Journal {
    /// Opens the journal for appending: continues it when `keep` (it extends generation
    /// `gen - 1`'s state), else starts it afresh.
    pub(crate) fn open(path: &Path, fp: &str, base_gen: u64, keep: bool) -> io::Result<Journal> {
        let mut f = if keep {
            let mut f = OpenOptions::new().read(true).append(true).open(path)?;
            // Start on a fresh line when a crash tore the last one.
            let len = f.metadata()?.len();
            if len > 0 {
                f.seek(SeekFrom::Start(len - 1))?;
                let mut last = [0u8; 1];
                f.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    f.write_all(b"\n")?;
                }
            }
            f
        } else {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)?;
            let mut h = serde_json::to_vec(&Header {
                v: VERSION,
                fp: fp.to_string(),
                gen: base_gen,
            })?;
            h.push(b'\n');
            f.write_all(&h)?;
            f.sync_all()?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            f
        };
        f.seek(SeekFrom::End(0))?;
        Ok(Journal {
            w: BufWriter::new(f),
            unsynced: 0,
        })
    }

    /// Appends one line; every few lines they are made durable.
    pub(crate) fn append(&mut self, e: &JEntry) -> io::Result<()> {
        serde_json::to_writer(&mut self.w, e)?;
        self.w.write_all(b"\n")?;
        self.unsynced += 1;
        if self.unsynced >= JOURNAL_SYNC_EVERY {
            self.sync()?;
        } else {
            // In the kernel at once: a killed process loses no line, only a power cut may.
            self.w.flush()?;
        }
        Ok(())
    }

    /// Makes every line so far durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced > 0 {
            self.w.flush()?;
            self.w.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::model::Half;

    fn rec(p: &str, t: &str) -> Record {
        let h = Half {
            size: 1,
            etag: Some(t.into()),
            mtime_ns: None,
        };
        Record {
            path: p.into(),
            site: h.clone(),
            remote: h,
        }
    }

    fn all(b: &Baseline) -> Vec<(String, String)> {
        b.iter()
            .unwrap()
            .map(|r| r.unwrap())
            .map(|r| (r.path, r.site.etag.unwrap()))
            .collect()
    }

    #[test]
    fn journal_overlays_state_until_the_next_generation() {
        let d = tempfile::tempdir().unwrap();
        let (st, jn) = (d.path().join("j.state"), d.path().join("j.journal"));
        let b = Baseline::open(&st, &jn, "fp", d.path()).unwrap();
        assert_eq!(b.next_gen, 1);
        assert!(all(&b).is_empty());
        let recs = vec![rec("a", "1"), rec("b", "1"), rec("c", "1")];
        write_state(&st, "fp", 1, recs.into_iter().map(Ok)).unwrap();

        let b = Baseline::open(&st, &jn, "fp", d.path()).unwrap();
        assert_eq!(b.next_gen, 2);
        let mut j = Journal::open(&jn, "fp", 1, b.journal_valid).unwrap();
        j.append(&JEntry::Put(rec("b", "2"))).unwrap();
        j.append(&JEntry::Del("c".into())).unwrap();
        j.append(&JEntry::Put(rec("d", "2"))).unwrap();
        j.append(&JEntry::Put(rec("b", "3"))).unwrap();
        j.sync().unwrap();
        drop(j);
        // A torn line at the end is ignored, and appending continues on a fresh line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&jn)
            .unwrap()
            .write_all(b"{\"put\":{\"p\":\"zz")
            .unwrap();
        let b = Baseline::open(&st, &jn, "fp", d.path()).unwrap();
        assert!(b.journal_valid);
        let mut j = Journal::open(&jn, "fp", 1, true).unwrap();
        j.append(&JEntry::Put(rec("e", "4"))).unwrap();
        j.sync().unwrap();
        let b = Baseline::open(&st, &jn, "fp", d.path()).unwrap();
        let want = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            all(&b),
            want(&[("a", "1"), ("b", "3"), ("d", "2"), ("e", "4")])
        );

        // The next generation makes the journal stale even if it is still there.
        write_state(&st, "fp", b.next_gen, b.iter().unwrap()).unwrap();
        let b = Baseline::open(&st, &jn, "fp", d.path()).unwrap();
        assert!(!b.journal_valid);
        assert_eq!(
            all(&b),
            want(&[("a", "1"), ("b", "3"), ("d", "2"), ("e", "4")])
        );

        // Other folders: the state is not used.
        let b = Baseline::open(&st, &jn, "other", d.path()).unwrap();
        assert!(all(&b).is_empty());
        assert_eq!(b.next_gen, 3);
    }
}
