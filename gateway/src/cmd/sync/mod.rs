//! `bucketgate sync run NAME` and `bucketgate sync status`: load the config, build the job
//! and run it (or read the jobs' history), and exit 0, 1 or 2. What the user sees on the way
//! (progress, summary, the table of past runs) is drawn by [`report`].

mod report;

use crate::wiring::{self, Source};
use crate::{ConfigArg, Exit};
use bucketgate_config::Config;
use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::sync::{self, Progress, RunOptions, SyncJob};
use report::{print_status, print_summary, Reporter};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn config(arg: &ConfigArg) -> Result<Config, Exit> {
    match wiring::source(arg)? {
        Source::File(p) => Ok(wiring::load(&p)?.config),
        Source::Embedded => Err(Exit::usage(
            "no config file: the embedded default has no sync jobs",
        )),
    }
}

/// Refuses (exit 2) names that are no job of the config, naming the jobs there are:
/// `no sync job named "x", "y" (jobs: a, b)`.
fn known_jobs(cfg: &Config, names: &[impl AsRef<str>]) -> Result<(), Exit> {
    let unknown: Vec<String> = names
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| cfg.sync(n).is_none())
        .map(|n| format!("{n:?}"))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let jobs: Vec<&str> = cfg.syncs.iter().map(|s| s.name.as_str()).collect();
    Err(Exit::usage(format!(
        "no sync job named {} (jobs: {})",
        unknown.join(", "),
        jobs.join(", ")
    )))
}

/// Runs one job now; exit 0 when every path was handled, 1 otherwise.
pub fn run(arg: &ConfigArg, name: &str, dry_run: bool, force: bool) -> Result<(), Exit> {
    let cfg = config(arg)?;
    known_jobs(&cfg, &[name])?;
    bucketgate_protocols::logging::init(false, &cfg.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))?;
    let result = rt.block_on(async {
        let budget = MemoryBudget::shared(cfg.transfers.memory_limit.bytes());
        let storage = wiring::build_storage(&cfg, budget)
            .map_err(|errs| Exit::usage(wiring::problem_lines(None, &errs)))?;
        let state = open_state(&cfg).await?;
        let jobs = wiring::sync_jobs(&cfg, &storage, Some(&state))
            .map_err(|errs| Exit::usage(wiring::problem_lines(None, &errs)))?;
        let (job, _) = jobs
            .into_iter()
            .find(|(j, _)| j.name == name)
            .expect("checked above");
        match sync_run(job, &cfg.state_dir, dry_run, force).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Exit::runtime("")),
            Err(e) => Err(Exit::runtime(e)),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The state store of the config (where the runs are recorded), with this installation's
/// history files moved into it.
async fn open_state(cfg: &Config) -> Result<Arc<dyn bucketgate_state::StateStore>, Exit> {
    let url = cfg.state.as_ref().map(|s| s.url.expose());
    if url.is_none() {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            Exit::runtime(format!("cannot create {}: {e}", cfg.state_dir.display()))
        })?;
    }
    let state = bucketgate_state::open_store(&cfg.state_dir, url)
        .await
        .map_err(|e| Exit::runtime(e.to_string()))?;
    crate::syncstore::import_history(&cfg.state_dir, &state).await;
    Ok(state)
}

/// Prints the last runs of the jobs; a name that is no job of the config exits 2.
pub fn status(arg: &ConfigArg, names: &[String]) -> Result<(), Exit> {
    let cfg = config(arg)?;
    known_jobs(&cfg, names)?;
    let names: Vec<String> = if names.is_empty() {
        cfg.syncs.iter().map(|s| s.name.clone()).collect()
    } else {
        names.to_vec()
    };
    bucketgate_protocols::logging::init(false, &cfg.log.level);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))?;
    rt.block_on(async {
        let state = open_state(&cfg).await?;
        let log = crate::syncstore::StoreRunLog(state);
        sync_status(&log, &cfg.state_dir, &names)
            .await
            .map_err(|e| Exit::runtime(e.to_string()))
    })
}

/// Runs `job` once now: a progress bar on a terminal (stderr), plain lines per path otherwise
/// (stdout), then a summary. `Ok(true)` when every path was handled, `Ok(false)` when some
/// failed (they are retried at the next run), `Err` when the run could not happen at all
/// (already running, a side that cannot be listed, a state that cannot be written).
async fn sync_run(
    job: SyncJob,
    state_dir: &Path,
    dry_run: bool,
    force: bool,
) -> Result<bool, String> {
    let tty = std::io::stderr().is_terminal();
    let reporter = Reporter::new(tty, dry_run);
    let r2 = reporter.clone();
    let opts = RunOptions {
        dry_run,
        force,
        progress: Some(Arc::new(move |p: Progress| r2.update(&p))),
        ..Default::default()
    };
    let result = sync::run_job(&job, state_dir, opts).await;
    reporter.finish();
    match result {
        Ok(s) => {
            print_summary(&job.name, &s);
            Ok(s.ok())
        }
        Err(e) => Err(format!("sync {}: {e}", job.name)),
    }
}

/// Prints each job's last runs, as `log` records them. With `names`, only those jobs (and a
/// line for one that never ran); without, every job that has run.
async fn sync_status(
    log: &dyn sync::RunLog,
    state_dir: &Path,
    names: &[String],
) -> bucketgate_storage::error::Result<()> {
    let jobs = if names.is_empty() {
        sync::status(log, state_dir).await?
    } else {
        let mut v = Vec::new();
        for n in names {
            v.push(sync::job_status(log, state_dir, n).await?);
        }
        v
    };
    print_status(jobs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bucketgate_storage::backend::Backend;
    use bucketgate_storage::local::LocalBackend;
    use bucketgate_storage::sync::{ConflictPolicy, Direction};

    struct Cleanup(std::path::PathBuf);
    impl Cleanup {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn run_and_status() {
        // A folder of our own: the gateway has no tempfile dependency.
        let dir = std::env::temp_dir().join(format!("bg-sync-cli-{:x}", rand::random::<u64>()));
        let d = Cleanup(dir);
        let site: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("s")).unwrap());
        let remote: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("r")).unwrap());
        std::fs::create_dir_all(d.path().join("s/in")).unwrap();
        std::fs::write(d.path().join("s/in/a.txt"), b"hello").unwrap();
        let job = SyncJob {
            name: "cli".into(),
            site: (site, "in".into()),
            remote: (remote, "out".into()),
            direction: Direction::Push,
            delete: false,
            conflict: ConflictPolicy::Newer,
            include: vec![],
            exclude: vec![],
            max_delete: Default::default(),
            lease: None,
            history: None,
        };
        let state = d.path().join("state");
        assert!(sync_run(job.clone(), &state, true, false).await.unwrap());
        assert!(!d.path().join("r/out/a.txt").exists());
        assert!(sync_run(job, &state, false, false).await.unwrap());
        assert!(d.path().join("r/out/a.txt").exists());
        let log = sync::FileRunLog::new(&state);
        sync_status(&log, &state, &[]).await.unwrap();
        sync_status(&log, &state, &["cli".into(), "never".into()])
            .await
            .unwrap();
    }
}
