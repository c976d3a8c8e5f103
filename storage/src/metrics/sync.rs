//! Sync runs by job and outcome.

use super::{labels, register_family, CounterFamily};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

static RUNS: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);

pub(super) fn register(reg: &mut Registry) {
    register_family(
        reg,
        "bucketgate_sync_runs_total",
        "Sync runs, by job and outcome.",
        RUNS.clone(),
    );
}

/// A sync run ended with `outcome` (`ok`, `failed`, `dry_run`).
pub fn sync_run(job: &str, outcome: &str) {
    RUNS.get_or_create(&labels(&[("job", job), ("outcome", outcome)]))
        .inc();
}
