//! `state_dir/sync/<job>.history.jsonl`: one JSON line per run, for `sync status`.

use super::names::{file_stem, job_from_stem};
use super::Summary;
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

/// The runs of one job, oldest first (unreadable lines skipped).
pub fn history(state_dir: &Path, job: &str) -> Vec<RunRecord> {
    read_lines(&history_path(state_dir, job))
        .unwrap_or_default()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every job that has run under `state_dir`, by name, with its recent runs.
pub fn status(state_dir: &Path) -> Vec<JobStatus> {
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
        .into_iter()
        .map(|name| job_status(state_dir, &name))
        .collect()
}

/// One job's status (empty history when it never ran).
pub fn job_status(state_dir: &Path, name: &str) -> JobStatus {
    let all = history(state_dir, name);
    let last_ok = all.iter().rev().find(|r| r.ok()).cloned();
    let recent = all[all.len().saturating_sub(10)..].to_vec();
    JobStatus {
        name: name.to_string(),
        recent,
        last_ok,
        running: super::lock::JobLock::is_held(&super::lock_path(state_dir, name)),
    }
}
