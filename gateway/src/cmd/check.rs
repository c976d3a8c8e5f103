//! `bucketgate check`: every config error at once, each with its YAML path and line.

use crate::wiring::{self, Source};
use crate::{ConfigArg, Exit};
use bucketgate_storage::budget::MemoryBudget;

/// Runs the check; exit 0 when valid, 2 with the list of errors otherwise.
pub fn run(arg: &ConfigArg) -> Result<(), Exit> {
    let path = match wiring::source(arg)? {
        Source::File(p) => p,
        Source::Embedded => {
            println!(
                "no config file (--config, BUCKETGATE_CONFIG or ./bucketgate.yaml): \
                 `serve` would run the embedded demo default"
            );
            return Ok(());
        }
    };
    let loaded = wiring::load(&path)?;
    let cfg = &loaded.config;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))?;
    let budget = MemoryBudget::shared(cfg.transfers.memory_limit.bytes());
    let problems: Vec<(String, String)> = match wiring::build_storage(cfg, budget) {
        Err(errs) => errs,
        // Listing the tree is what proves each mount point is empty.
        Ok(storage) => rt.block_on(wiring::check_mount_points(cfg, &storage)),
    };
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    for (i, r) in cfg.remotes.iter().enumerate() {
        if r.is_anonymous() {
            println!(
                "note: remotes[{i}] ({}) has no keys: requests are sent anonymously",
                r.name
            );
        }
    }
    if !problems.is_empty() {
        return Err(Exit::usage(format!(
            "{}: {} error(s)\n{}",
            path.display(),
            problems.len(),
            wiring::problem_lines(Some(&loaded), &problems)
        )));
    }
    println!(
        "{}: OK ({} users, {} remotes, {} mounts, {} syncs)",
        path.display(),
        cfg.users.len(),
        cfg.remotes.len(),
        cfg.mounts.len(),
        cfg.syncs.len()
    );
    Ok(())
}
