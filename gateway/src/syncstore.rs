//! The sync engine on the state store: its run history ([`StoreRunLog`], every store), and its
//! job leases ([`StoreLeases`], a shared PostgreSQL store only; an embedded store leaves the
//! lease in the bucket, see docs/architecture.md, "State store").

use async_trait::async_trait;
use bucketgate_state::StateStore;
use bucketgate_storage::error::{Error, ErrorKind, Result};
use bucketgate_storage::sync::{LeaseStore, RunLog, RunRecord, SyncJob};
use bytes::Bytes;
use std::sync::Arc;

fn store_err(e: bucketgate_state::StateError) -> Error {
    Error::new(ErrorKind::Backend, e.to_string()).set_retryable(true)
}

/// Sync runs as rows of the state store (`sync_runs`): on a shared store, every instance lists
/// every instance's runs.
pub struct StoreRunLog(pub Arc<dyn StateStore>);

fn parse(job: &str, s: &str) -> Option<RunRecord> {
    match serde_json::from_str(s) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(job = %job, error = %e, "sync history: a stored run is unreadable; skipped");
            None
        }
    }
}

#[async_trait]
impl RunLog for StoreRunLog {
    async fn append(&self, rec: &RunRecord) -> Result<()> {
        let json = serde_json::to_string(rec).expect("plain struct");
        self.0
            .add_sync_run(&rec.job, rec.ok(), &json)
            .await
            .map_err(store_err)
    }

    async fn runs(&self, job: &str, last: usize) -> Result<Vec<RunRecord>> {
        Ok(self
            .0
            .sync_runs(job, last)
            .await
            .map_err(store_err)?
            .iter()
            .filter_map(|s| parse(job, s))
            .collect())
    }

    async fn last_ok(&self, job: &str) -> Result<Option<RunRecord>> {
        Ok(self
            .0
            .last_ok_sync_run(job)
            .await
            .map_err(store_err)?
            .and_then(|s| parse(job, &s)))
    }

    async fn jobs(&self) -> Result<Vec<String>> {
        self.0.sync_jobs().await.map_err(store_err)
    }
}

/// Job leases as rows of a shared store (`sync_leases`), written only by compare-and-swap in
/// one statement each, so two instances can never both hold one (see [`LeaseStore`]).
pub struct StoreLeases(pub Arc<dyn StateStore>);

#[async_trait]
impl LeaseStore for StoreLeases {
    fn describe(&self) -> String {
        "the state store".into()
    }

    async fn create_if_absent(&self, key: &str, body: Bytes) -> Result<Option<String>> {
        self.0.lease_create(key, &body).await.map_err(store_err)
    }

    async fn read(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        Ok(self
            .0
            .lease_read(key)
            .await
            .map_err(store_err)?
            .map(|(b, v)| (Bytes::from(b), v)))
    }

    async fn replace_if_match(
        &self,
        key: &str,
        version: &str,
        body: Bytes,
    ) -> Result<Option<String>> {
        self.0
            .lease_replace(key, version, &body)
            .await
            .map_err(store_err)
    }

    async fn delete_if_match(&self, key: &str, version: &str) -> Result<bool> {
        self.0.lease_delete(key, version).await.map_err(store_err)
    }
}

/// Records the jobs' runs in `store`, and on a shared store takes their leases there instead
/// of in the bucket.
pub fn attach(jobs: &mut [(SyncJob, Option<std::time::Duration>)], store: &Arc<dyn StateStore>) {
    for (job, _) in jobs {
        job.history = Some(Arc::new(StoreRunLog(store.clone())));
        if store.shared() {
            job.lease = Some(Arc::new(StoreLeases(store.clone())));
        }
    }
}

/// Moves this installation's history files into `store` (once; see
/// [`bucketgate_storage::sync::import_files`]), logging what it did.
pub async fn import_history(state_dir: &std::path::Path, store: &Arc<dyn StateStore>) {
    match bucketgate_storage::sync::import_files(state_dir, &StoreRunLog(store.clone())).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "sync history: {n} runs moved from the history files into the state store"
        ),
        Err(e) => tracing::warn!(
            "sync history: the history files were not moved into the state store: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bucketgate_state::PgStore;
    use bucketgate_storage::sync::Lease;
    use bucketgate_testkit::postgres::Postgres;
    use std::time::{Duration, Instant};

    const TTL: Duration = Duration::from_secs(3);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    async fn leases(url: &str) -> Arc<dyn LeaseStore> {
        let store: Arc<dyn StateStore> = Arc::new(PgStore::open(url).await.unwrap());
        Arc::new(StoreLeases(store))
    }

    /// The sync engine's lease over PostgreSQL, between two instances (two pools): of two
    /// instances taking a job's lease at once exactly one gets it, every round, the other a
    /// `Conflict`; a holder killed mid-run (its runtime dropped, renewals and all) keeps the
    /// job from the other only until its lease lapses.
    #[test]
    fn one_holder_per_job_and_a_killed_holder_lapses() {
        let pg = Postgres::start();
        let url = pg.url();
        let rt = runtime();
        let b = rt.block_on(async {
            let (a, b) = (leases(&url).await, leases(&url).await);
            for round in 0..20 {
                let job = format!("job{round}");
                let (x, y) = tokio::join!(
                    Lease::acquire(a.clone(), &job, "a", TTL),
                    Lease::acquire(b.clone(), &job, "b", TTL)
                );
                let (won, lost) = match (x, y) {
                    (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
                    (Ok(_), Ok(_)) => panic!("round {round}: both instances hold the lease"),
                    (Err(x), Err(y)) => panic!("round {round}: neither holds it: {x}; {y}"),
                };
                assert_eq!(lost.kind(), ErrorKind::Conflict, "{lost}");
                won.release().await;
            }
            b
        });

        // Instance A takes the job and dies: its runtime goes, and its renewals with it.
        let killed = runtime();
        killed.block_on(async {
            let a = leases(&url).await;
            std::mem::forget(Lease::acquire(a, "kill", "a", TTL).await.unwrap());
        });
        drop(killed);
        let since = Instant::now();
        rt.block_on(async {
            let e = Lease::acquire(b.clone(), "kill", "b", TTL)
                .await
                .err()
                .expect("B took the job of a holder whose lease is still live");
            assert!(e.to_string().contains("running on another instance"), "{e}");
            loop {
                match Lease::acquire(b.clone(), "kill", "b", TTL).await {
                    Ok(l) => {
                        println!("B took the job {:?} after A died", since.elapsed());
                        l.release().await;
                        break;
                    }
                    Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
                }
                // A bound on a hung test, far above the 3 s lease.
                assert!(since.elapsed() < Duration::from_secs(60), "never lapsed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}
