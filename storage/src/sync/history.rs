//! Where runs are recorded ([`RunLog`]): the gateway's state store (its `sync_runs` table,
//! shared by a fleet on PostgreSQL), or `state_dir/sync/<job>.history.jsonl` ([`FileRunLog`]):
//! one JSON line per run. [`import_files`] moves the files' runs into a store once.

use super::names::{file_stem, job_from_stem};
use super::Summary;
use crate::error::{Error, ErrorKind, Result as SResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// History files past this size are trimmed to their last [`KEEP_RUNS`] lines.
const TRIM_AT: u64 = 1 << 20;
const KEEP_RUNS: usize = 1000;

/// One run of a job, as recorded in its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The job's name.
    pub job: String,
    /// When the run started (RFC 3339, UTC).
    pub start: String,
    /// When it ended.
    pub end: String,
    /// `ok` when every path was handled; `failed` when the run stopped early or a path failed;
    /// `refused` when another run of the job was in progress; `killed` when the process ended
    /// during the run (recorded by the next run of the job).
    pub result: String,
    /// Files and folders copied from the site to the remote.
    pub copied_up: u64,
    /// Files and folders copied from the remote to the site.
    pub copied_down: u64,
    /// Paths deleted on either side.
    pub deleted: u64,
    /// Of which on the remote.
    pub deleted_remote: u64,
    /// Of which on the site.
    pub deleted_site: u64,
    /// Conflicts resolved.
    pub conflicts: u64,
    /// Paths left alone on purpose (changed during the run, a suspicious empty listing).
    pub skipped: u64,
    /// Paths that failed.
    pub errors: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
    /// Why the run failed, or the first path error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunRecord {
    /// True for a run that finished without error.
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }

    /// A run refused because another run of the job was in progress.
    pub(crate) fn refused(job: &str, at: std::time::SystemTime, why: &str) -> RunRecord {
        let mut r = RunRecord::of(job, at, at, &Err(why.to_string()));
        r.result = "refused".into();
        r
    }

    /// A run that started at `start` and never ended (found by the next run at `found`).
    pub(crate) fn killed(job: &str, start: &str, found: std::time::SystemTime) -> RunRecord {
        let mut r = RunRecord::of(job, found, found, &Err(String::new()));
        r.result = "killed".into();
        r.start = start.to_string();
        r.error = Some(
            "the run was killed before it ended (found at the next start, which resumed its work)"
                .into(),
        );
        r
    }

    pub(crate) fn of(
        job: &str,
        start: std::time::SystemTime,
        end: std::time::SystemTime,
        outcome: &Result<Summary, String>,
    ) -> RunRecord {
        let z = Summary::default();
        let (s, err) = match outcome {
            Ok(s) => (s, s.messages.first().cloned()),
            Err(e) => (&z, Some(e.clone())),
        };
        RunRecord {
            job: job.to_string(),
            start: super::names::rfc3339(start),
            end: super::names::rfc3339(end),
            result: if outcome.is_ok() && s.errors == 0 {
                "ok".into()
            } else {
                "failed".into()
            },
            copied_up: s.copied_to_remote,
            copied_down: s.copied_to_site,
            deleted: s.deleted_remote + s.deleted_site,
            deleted_remote: s.deleted_remote,
            deleted_site: s.deleted_site,
            conflicts: s.conflicts,
            skipped: s.skipped,
            errors: s.errors,
            bytes: s.bytes,
            elapsed_ms: end
                .duration_since(start)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            error: err,
        }
    }
}

/// Where a job's runs are recorded and read back.
#[async_trait]
pub trait RunLog: Send + Sync + 'static {
    /// Records one run.
    async fn append(&self, rec: &RunRecord) -> SResult<()>;
    /// The last `last` runs of `job`, oldest first.
    async fn runs(&self, job: &str, last: usize) -> SResult<Vec<RunRecord>>;
    /// The last run of `job` that ended without error.
    async fn last_ok(&self, job: &str) -> SResult<Option<RunRecord>>;
    /// Every job with a recorded run, by name.
    async fn jobs(&self) -> SResult<Vec<String>>;
}

/// The runs in `state_dir/sync/<job>.history.jsonl` (this installation only).
#[derive(Debug, Clone)]
pub struct FileRunLog {
    state_dir: std::path::PathBuf,
}

impl FileRunLog {
    /// The history files under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        FileRunLog {
            state_dir: state_dir.to_path_buf(),
        }
    }
}

#[async_trait]
impl RunLog for FileRunLog {
    async fn append(&self, rec: &RunRecord) -> SResult<()> {
        // A refused run does not hold the job lock: it never trims the file, so it cannot race
        // the lock holder's rewrite of it.
        let r = if rec.result == "refused" {
            append_unlocked(&self.state_dir, rec)
        } else {
            append(&self.state_dir, rec)
        };
        r.map_err(|e| Error::from(e).with_context("sync", "history".to_string()))
    }

    async fn runs(&self, job: &str, last: usize) -> SResult<Vec<RunRecord>> {
        let all = history(&self.state_dir, job);
        Ok(all[all.len().saturating_sub(last)..].to_vec())
    }

    async fn last_ok(&self, job: &str) -> SResult<Option<RunRecord>> {
        Ok(history(&self.state_dir, job)
            .into_iter()
            .rev()
            .find(|r| r.ok()))
    }

    async fn jobs(&self) -> SResult<Vec<String>> {
        Ok(file_jobs(&self.state_dir))
    }
}

/// Moves the runs of this installation's history files into `log` (a state store), once: each
/// file is renamed to `<job>.history.jsonl.importing` first (of two processes starting at once,
/// one gets it), its runs are appended in order, then it is renamed to `.imported` and kept for
/// reference. A file left `.importing` by a process killed meanwhile is imported at the next
/// start (its first runs may then be listed twice). Returns how many runs were moved.
pub async fn import_files(state_dir: &Path, log: &dyn RunLog) -> SResult<usize> {
    let dir = state_dir.join("sync");
    let mut moved = 0;
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let importing = if n.ends_with(".history.jsonl") {
            let to = dir.join(format!("{n}.importing"));
            if std::fs::rename(dir.join(&n), &to).is_err() {
                continue; // another process took it
            }
            to
        } else if n.ends_with(".history.jsonl.importing") {
            dir.join(&n)
        } else {
            continue;
        };
        let lines = read_lines(&importing)
            .map_err(|e| Error::from(e).with_context("sync", "history".to_string()))?;
        for l in lines {
            let Ok(rec) = serde_json::from_str::<RunRecord>(&l) else {
                continue;
            };
            log.append(&rec).await?;
            moved += 1;
        }
        let done = importing.with_extension("imported");
        std::fs::rename(&importing, &done).map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!("sync history: cannot rename {}: {e}", importing.display()),
            )
        })?;
    }
    Ok(moved)
}

/// A job's recent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// The job's name.
    pub name: String,
    /// Its last runs, oldest first (at most 10).
    pub recent: Vec<RunRecord>,
    /// Its last successful run.
    pub last_ok: Option<RunRecord>,
    /// True when a run holds the job's lock right now.
    pub running: bool,
}

impl JobStatus {
    /// The last run, if any.
    pub fn last(&self) -> Option<&RunRecord> {
        self.recent.last()
    }
}

pub(crate) fn history_path(state_dir: &Path, job: &str) -> std::path::PathBuf {
    state_dir
        .join("sync")
        .join(format!("{}.history.jsonl", file_stem(job)))
}

/// Appends one run; trims the file when it grows large. Called under the job lock. The line is
/// in the kernel when this returns (a killed process loses nothing) but not fsynced: a power
/// cut may lose the last lines of this log, never the state, and an fsync here made every run
/// wait for the disk's other pending writes (on ext4 a commit flushes them all).
pub(crate) fn append(state_dir: &Path, rec: &RunRecord) -> std::io::Result<()> {
    let path = history_path(state_dir, &rec.job);
    let mut line = serde_json::to_vec(rec)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    f.write_all(&line)?;
    if f.metadata()?.len() > TRIM_AT {
        let lines = read_lines(&path)?;
        let keep = &lines[lines.len().saturating_sub(KEEP_RUNS)..];
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        for l in keep {
            tmp.write_all(l.as_bytes())?;
            tmp.write_all(b"\n")?;
        }
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
    }
    Ok(())
}

/// Appends one line without holding the job lock (a refused run): never trims, so it cannot
/// race the lock holder's rewrite of the file.
pub(crate) fn append_unlocked(state_dir: &Path, rec: &RunRecord) -> std::io::Result<()> {
    let path = history_path(state_dir, &rec.job);
    let mut line = serde_json::to_vec(rec)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?
        .write_all(&line)
}

/// The start time as a history line writes it.
pub(crate) fn stamp(t: std::time::SystemTime) -> String {
    super::names::rfc3339(t)
}

fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    let f = std::fs::File::open(path)?;
    std::io::BufReader::new(f).lines().collect()
}

/// The runs of one job in its history file, oldest first (unreadable lines skipped).
pub(crate) fn history(state_dir: &Path, job: &str) -> Vec<RunRecord> {
    read_lines(&history_path(state_dir, job))
        .unwrap_or_default()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every job with a history file under `state_dir`, by name.
fn file_jobs(state_dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(rd) = std::fs::read_dir(state_dir.join("sync")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = n.strip_suffix(".history.jsonl") {
                names.push(job_from_stem(stem));
            }
        }
    }
    names.sort();
    names
}

/// Every job that has a recorded run in `log`, by name, with its recent runs. `running` is
/// this installation's view (its lock under `state_dir`).
pub async fn status(log: &dyn RunLog, state_dir: &Path) -> SResult<Vec<JobStatus>> {
    let mut out = Vec::new();
    for name in log.jobs().await? {
        out.push(job_status(log, state_dir, &name).await?);
    }
    Ok(out)
}

/// One job's status (empty history when it never ran).
pub async fn job_status(log: &dyn RunLog, state_dir: &Path, name: &str) -> SResult<JobStatus> {
    Ok(JobStatus {
        name: name.to_string(),
        recent: log.runs(name, 10).await?,
        last_ok: log.last_ok(name).await?,
        running: is_running(state_dir, name),
    })
}

/// True when a run of `name` holds its lock under `state_dir` now.
pub fn is_running(state_dir: &Path, name: &str) -> bool {
    super::lock::JobLock::is_held(&super::lock_path(state_dir, name))
}
