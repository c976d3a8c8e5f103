//! `bucketgate sync run` / `sync status`: loads the config and hands built jobs to
//! [`crate::sync_cmd`].

mod report;

use crate::wiring::{self, Source};
use crate::{ConfigArg, Exit};
use bucketgate_config::Config;
use bucketgate_storage::budget::MemoryBudget;
use report as sync_cmd;
use std::time::Duration;

fn config(arg: &ConfigArg) -> Result<Config, Exit> {
    match wiring::source(arg)? {
        Source::File(p) => Ok(wiring::load(&p)?.config),
        Source::Embedded => Err(Exit::usage(
            "no config file: the embedded default has no sync jobs",
        )),
    }
}

/// Runs one job now; exit 0 when every path was handled, 1 otherwise.
pub fn run(arg: &ConfigArg, name: &str, dry_run: bool, force: bool) -> Result<(), Exit> {
    let cfg = config(arg)?;
    if cfg.sync(name).is_none() {
        let names: Vec<&str> = cfg.syncs.iter().map(|s| s.name.as_str()).collect();
        return Err(Exit::usage(format!(
            "no sync job named {name:?} (jobs: {})",
            names.join(", ")
        )));
    }
    bucketgate_protocols::logging::init(false, &cfg.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))?;
    let result = rt.block_on(async {
        let budget = MemoryBudget::shared(cfg.transfers.memory_limit.bytes());
        let storage = wiring::build_storage(&cfg, budget)
            .map_err(|errs| Exit::usage(wiring::problem_lines(None, &errs)))?;
        let jobs = wiring::sync_jobs(&cfg, &storage)
            .map_err(|errs| Exit::usage(wiring::problem_lines(None, &errs)))?;
        let (job, _) = jobs
            .into_iter()
            .find(|(j, _)| j.name == name)
            .expect("checked above");
        match sync_cmd::sync_run(job, &cfg.state_dir, dry_run, force).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Exit::runtime("")),
            Err(e) => Err(Exit::runtime(e)),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Prints the last runs of the jobs; a name that is no job of the config exits 2.
pub fn status(arg: &ConfigArg, names: &[String]) -> Result<(), Exit> {
    let cfg = config(arg)?;
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| cfg.sync(n).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let jobs: Vec<&str> = cfg.syncs.iter().map(|s| s.name.as_str()).collect();
        return Err(Exit::usage(format!(
            "no sync job named {} (jobs: {})",
            unknown
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            jobs.join(", ")
        )));
    }
    let names: Vec<String> = if names.is_empty() {
        cfg.syncs.iter().map(|s| s.name.clone()).collect()
    } else {
        names.to_vec()
    };
    sync_cmd::sync_status(&cfg.state_dir, &names);
    Ok(())
}
