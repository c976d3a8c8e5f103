//! The sync engine between two local folders: directions, deletions, conflicts, filters,
//! safety checks, dry runs, locking, history and the scheduler.

use crate::sync_common as common;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::sync::{
    conflict_name, is_conflict_name, run_job, run_scheduled, ConflictPolicy, Direction, EventKind,
    FileLeaseStore, LeaseStore, MaxDelete, RunOptions,
};
use bucketgate_storage::ErrorKind;
use common::*;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

use ConflictPolicy::{KeepBoth, Newer};

/// The jobs' history as the files under `state` hold it (no state store here).
async fn status(state: &std::path::Path) -> Vec<bucketgate_storage::sync::JobStatus> {
    let log = bucketgate_storage::sync::FileRunLog::new(state);
    bucketgate_storage::sync::status(&log, state).await.unwrap()
}
use Direction::{Pull, Push, TwoWay};

#[tokio::test]
async fn push_copies_new_and_changed_files_and_keeps_target_files_without_delete() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "a.txt", b"A");
    write(&s, "d/b.txt", b"B");
    mkdir(&s, "e");
    write(&r, "x.txt", b"X");
    let job = env.job(Push, false, Newer);

    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (3, 0, 0, 0, 0, 0, 0), "a.txt, d/b.txt, e/");
    assert_eq!(names(&r), ["a.txt", "d/", "d/b.txt", "e/", "x.txt"]);
    assert!(!s.join("x.txt").exists(), "push never pulls");
    // Copies keep the source's mtime.
    let mt = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mt(s.join("a.txt")), mt(r.join("a.txt")));

    assert_eq!(
        counts(&env.run(&job).await),
        (0, 0, 0, 0, 0, 0, 0),
        "nothing new"
    );

    write(&s, "a.txt", b"A2");
    rm(&s, "d/b.txt");
    write(&s, "c.txt", b"C");
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (2, 0, 0, 0, 0, 0, 0));
    assert_eq!(read(&r, "a.txt").unwrap(), b"A2");
    assert_eq!(
        read(&r, "d/b.txt").unwrap(),
        b"B",
        "no delete: the remote keeps it"
    );

    // A push restores the source's version over a target-side edit.
    write(&r, "a.txt", b"edited on the remote");
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (1, 0, 0, 0, 0, 0, 0));
    assert_eq!(read(&r, "a.txt").unwrap(), b"A2");
}

#[tokio::test]
async fn push_with_delete_spreads_site_deletions_only() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "a.txt", b"A");
    write(&s, "d/b.txt", b"B");
    write(&s, "f.txt", b"F");
    mkdir(&s, "e");
    write(&r, "x.txt", b"remote only");
    let job = env.job(Push, true, Newer);
    env.run(&job).await;

    rm(&s, "d/b.txt");
    rm(&s, "e");
    // Deleted at the site but changed on the remote since: the remote's change is kept.
    rm(&s, "f.txt");
    write(&r, "f.txt", b"changed on the remote");
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (0, 0, 2, 0, 0, 0, 0), "d/b.txt and e/");
    assert_eq!(names(&r), ["a.txt", "d/", "f.txt", "x.txt"]);
    assert_eq!(names(&s), ["a.txt", "d/"]);
}

#[tokio::test]
async fn pull_mirrors_the_remote_with_and_without_delete() {
    for delete in [false, true] {
        let env = Env::new();
        let (s, r) = (env.s(), env.r());
        write(&r, "in/1.csv", b"one");
        write(&r, "in/2.csv", b"two");
        mkdir(&r, "empty");
        write(&s, "local-only.txt", b"mine");
        let job = env.job(Pull, delete, Newer);
        let sum = env.run(&job).await;
        assert_eq!(counts(&sum), (0, 3, 0, 0, 0, 0, 0));
        assert_eq!(
            names(&s),
            ["empty/", "in/", "in/1.csv", "in/2.csv", "local-only.txt"]
        );
        assert!(!r.join("local-only.txt").exists(), "pull never pushes");

        write(&r, "in/1.csv", b"one, updated");
        rm(&r, "in/2.csv");
        let sum = env.run(&job).await;
        assert_eq!(read(&s, "in/1.csv").unwrap(), b"one, updated");
        if delete {
            assert_eq!(counts(&sum), (0, 1, 0, 1, 0, 0, 0));
            assert!(!s.join("in/2.csv").exists());
        } else {
            assert_eq!(counts(&sum), (0, 1, 0, 0, 0, 0, 0));
            assert_eq!(read(&s, "in/2.csv").unwrap(), b"two");
        }
        assert_eq!(read(&s, "local-only.txt").unwrap(), b"mine");
        assert_eq!(counts(&env.run(&job).await), (0, 0, 0, 0, 0, 0, 0));
    }
}

#[tokio::test]
async fn two_way_without_delete_keeps_the_union() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "a.txt", b"A");
    write(&r, "b.txt", b"B");
    let job = env.job(TwoWay, false, KeepBoth);
    assert_eq!(counts(&env.run(&job).await), (1, 1, 0, 0, 0, 0, 0));
    assert_eq!(tree(&s), tree(&r));

    rm(&s, "a.txt");
    write(&r, "b.txt", b"B2");
    let sum = env.run(&job).await;
    assert_eq!(
        counts(&sum),
        (0, 2, 0, 0, 0, 0, 0),
        "a.txt restored, b.txt updated"
    );
    assert_eq!(tree(&s), tree(&r));
    assert_eq!(read(&s, "b.txt").unwrap(), b"B2");
}

#[tokio::test]
async fn two_way_with_delete_spreads_deletions_both_ways_and_changes_beat_deletions() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    for f in ["a", "b", "c", "d"] {
        write(&s, &format!("{f}.txt"), f.as_bytes());
    }
    mkdir(&r, "dir/sub");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    assert_eq!(tree(&s), tree(&r));

    rm(&s, "a.txt");
    rm(&r, "b.txt");
    rm(&r, "dir");
    // c: changed at the site, deleted on the remote → the change wins.
    write(&s, "c.txt", b"c, changed");
    rm(&r, "c.txt");
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (1, 0, 1, 3, 0, 0, 0), "{sum:?}");
    assert_eq!(names(&s), ["c.txt", "d.txt"]);
    assert_eq!(tree(&s), tree(&r));
    assert_eq!(read(&r, "c.txt").unwrap(), b"c, changed");
}

#[tokio::test]
async fn conflict_newer_mtime_wins() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "r.txt", b"base");
    let job = env.job(TwoWay, true, Newer);
    env.run(&job).await;
    let t = now_secs() - 1000;

    write_at(&s, "r.txt", b"site version", t);
    write_at(&r, "r.txt", b"remote version, newer", t + 100);
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (0, 1, 0, 0, 1, 0, 0));
    assert_eq!(read(&s, "r.txt").unwrap(), b"remote version, newer");

    write_at(&s, "r.txt", b"site again, newer", t + 300);
    write_at(&r, "r.txt", b"remote again", t + 200);
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (1, 0, 0, 0, 1, 0, 0));
    assert_eq!(read(&r, "r.txt").unwrap(), b"site again, newer");
    assert_eq!(tree(&s), tree(&r));
    assert!(!names(&s).iter().any(|n| is_conflict_name(n)));
}

#[tokio::test]
async fn conflict_keep_both_names_the_older_copy() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "docs/report.tar.gz", b"base");
    write(&s, ".bashrc", b"base");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;

    // 2024-05-01 10:15:00 UTC
    let t = 1_714_558_500;
    write_at(&s, "docs/report.tar.gz", b"site, newer", t + 3600);
    write_at(&r, "docs/report.tar.gz", b"remote, older", t);
    write_at(&s, ".bashrc", b"site, older", t);
    write_at(&r, ".bashrc", b"remote, newer", t + 60);
    // Both new and different, nothing recorded: a conflict as well.
    write_at(&s, "n", b"site n", t + 1);
    write_at(&r, "n", b"remote n, newer", t + 2);

    let (opts, events) = recorder();
    let sum = run_job(&job, &env.state, opts).await.unwrap();
    assert_eq!(sum.conflicts, 3, "{sum:?}");
    assert_eq!(sum.errors, 0);
    assert_eq!(sum.copied_to_remote + sum.copied_to_site, 6);
    let conflict_events = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Conflict)
        .count();
    assert_eq!(conflict_events, 3);

    let want_report = "docs/report (conflict 2024-05-01 101500 UTC).tar.gz";
    let want_bashrc = ".bashrc (conflict 2024-05-01 101500 UTC)";
    let want_n = "n (conflict 2024-05-01 101501 UTC)";
    assert_eq!(
        conflict_name("docs/report.tar.gz", UNIX_EPOCH + Duration::from_secs(t)),
        want_report
    );
    for side in [&s, &r] {
        assert_eq!(read(side, "docs/report.tar.gz").unwrap(), b"site, newer");
        assert_eq!(read(side, want_report).unwrap(), b"remote, older");
        assert_eq!(read(side, ".bashrc").unwrap(), b"remote, newer");
        assert_eq!(read(side, want_bashrc).unwrap(), b"site, older");
        assert_eq!(read(side, "n").unwrap(), b"remote n, newer");
        assert_eq!(read(side, want_n).unwrap(), b"site n");
    }
    assert_eq!(tree(&s), tree(&r));
    assert_eq!(counts(&env.run(&job).await), (0, 0, 0, 0, 0, 0, 0));
}

#[tokio::test]
async fn filters_limit_copies_and_deletions() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    for f in [
        "a.txt",
        "b.tmp",
        "c.bin",
        "docs/x.pdf",
        "private/p.txt",
        "sub/deep/s.txt",
        "sub/t.tmp",
    ] {
        write(&s, f, f.as_bytes());
    }
    write(&r, "private/keep.txt", b"remote, excluded");
    write(&r, "old.tmp", b"remote, excluded");
    let mut job = env.job(Push, true, Newer);
    job.include = vec!["**/*.txt".into(), "docs/**".into()];
    job.exclude = vec!["**/*.tmp".into(), "private/**".into()];
    env.run(&job).await;
    let files = |root| {
        names(root)
            .into_iter()
            .filter(|n| !n.ends_with('/'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        files(&r),
        [
            "a.txt",
            "docs/x.pdf",
            "old.tmp",
            "private/keep.txt",
            "sub/deep/s.txt"
        ]
    );
    // Excluded paths are never deleted, even with delete on.
    rm(&s, "a.txt");
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (0, 0, 1, 0, 0, 0, 0));
    assert_eq!(
        files(&r),
        [
            "docs/x.pdf",
            "old.tmp",
            "private/keep.txt",
            "sub/deep/s.txt"
        ]
    );

    job.include = vec!["[".into()];
    let e = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
}

#[tokio::test]
async fn a_glob_with_a_trailing_slash_leaves_out_the_folder_and_all_inside() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "secrets/id_rsa", b"private key");
    write(&s, "secrets/deep/token", b"token");
    write(&s, "app/secrets", b"a file called secrets, elsewhere");
    write(&s, "readme.txt", b"hello");
    let mut job = env.job(Push, true, Newer);
    job.exclude = vec!["secrets/".into()];
    let sum = env.run(&job).await;
    assert_eq!(sum.errors, 0);
    assert_eq!(names(&r), ["app/", "app/secrets", "readme.txt"]);
}

#[tokio::test]
async fn a_refused_run_is_in_the_history_and_the_bar_total_is_the_summary() {
    let env = Env::new();
    write(&env.s(), "r.txt", b"base");
    write(&env.s(), "same.txt", b"same");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    // Another run holds the job.
    let lock_path = env.state.join("locks/acme-inbound.lock");
    let held = std::fs::File::open(&lock_path).unwrap();
    held.lock().unwrap();
    assert!(run_job(&job, &env.state, RunOptions::default())
        .await
        .is_err());
    drop(held);
    let last = status(&env.state).await[0].last().unwrap().clone();
    assert_eq!(last.result, "refused", "{last:?}");
    assert!(last.error.unwrap().contains("already running"));

    // A conflict copies both versions, a path changed the same way on both sides none.
    write_at(&env.s(), "r.txt", b"site version, older", 1_700_000_000);
    write_at(&env.r(), "r.txt", b"remote version", 1_700_000_100);
    write(&env.s(), "same.txt", b"same, changed");
    write(&env.r(), "same.txt", b"same, changed");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = RunOptions {
        progress: Some(Arc::new(move |p| s2.lock().unwrap().push(p))),
        ..Default::default()
    };
    let sum = run_job(&job, &env.state, opts).await.unwrap();
    assert_eq!(sum.conflicts, 1, "{sum:?}");
    assert_eq!(sum.bytes, 14 + 19);
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (sum.bytes, sum.bytes),
        "the bar ends where the summary does"
    );
}

#[tokio::test]
async fn an_empty_site_listing_never_deletes_the_remote() {
    for direction in [TwoWay, Push] {
        let env = Env::new();
        let (s, r) = (env.s(), env.r());
        write(&s, "a.txt", b"A");
        write(&s, "d/b.txt", b"B");
        let job = env.job(direction, true, KeepBoth);
        env.run(&job).await;
        let before = tree(&r);

        // The site folder vanished (a wrong path, a disk not mounted): the run fails.
        std::fs::remove_dir_all(&s).unwrap();
        let e = run_job(&job, &env.state, RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.to_string()
                .contains("site folder /users/alice/inbound does not exist"),
            "{e}"
        );
        assert_eq!(tree(&r), before);
        assert_eq!(status(&env.state).await[0].last().unwrap().result, "failed");

        // A freshly made file system mounted there: only an empty `lost+found/`. Folders hold
        // nothing: the side counts as empty, and nothing is deleted.
        mkdir(&s, "lost+found");
        let sum = env.run(&job).await;
        assert_eq!(sum.deleted_remote, 0, "{sum:?}");
        assert!(sum.skipped >= 2, "{sum:?}");
        assert!(sum.messages.iter().any(|m| m.contains("listed empty")));
        let mut want = before.clone();
        want.insert("lost+found/".into(), Vec::new());
        assert_eq!(tree(&r), want);

        // Back again: everything is as it was, nothing to do.
        write(&s, "a.txt", b"A");
        write(&s, "d/b.txt", b"B");
        let sum = env.run(&job).await;
        assert_eq!(sum.deleted_remote + sum.deleted_site + sum.conflicts, 0);
        assert_eq!(tree(&r), want);
    }
}

#[tokio::test]
async fn a_pull_job_creates_its_site_folder_on_its_first_run_only() {
    let env = Env::new();
    write(&env.r(), "a.txt", b"A");
    let job = env.job(Pull, true, Newer);
    assert_eq!(env.run(&job).await.copied_to_site, 1);
    std::fs::remove_dir_all(env.s()).unwrap();
    let e = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!env.s().exists());
}

#[tokio::test]
async fn deletions_past_max_delete_refuse_the_run_until_forced() {
    for direction in [Push, TwoWay] {
        let env = Env::new();
        let (s, r) = (env.s(), env.r());
        for i in 0..10 {
            write(&s, &format!("f{i}.txt"), format!("file {i}").as_bytes());
        }
        let job = env.job(direction, true, KeepBoth);
        env.run(&job).await;
        // One file left at the site: spreading that would delete nine of ten on the remote.
        for i in 1..10 {
            rm(&s, &format!("f{i}.txt"));
        }
        write(&s, "new.txt", b"new");
        let before = tree(&r);
        let e = run_job(&job, &env.state, RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitReached, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("9 of the 10 files in the remote prefix") && msg.contains("--force"),
            "{msg}"
        );
        assert_eq!(tree(&r), before, "[{direction:?}] nothing changed");
        let last = status(&env.state).await[0].last().unwrap().clone();
        assert_eq!(last.result, "failed");
        assert!(last.error.unwrap().contains("max_delete"));
        // A dry run says the same.
        let dry = RunOptions {
            dry_run: true,
            ..Default::default()
        };
        assert!(run_job(&job, &env.state, dry).await.is_err());
        // Forced: the deletions are what the user wants.
        let forced = RunOptions {
            force: true,
            ..Default::default()
        };
        let sum = run_job(&job, &env.state, forced).await.unwrap();
        assert_eq!((sum.deleted_remote, sum.copied_to_remote), (9, 1));
        assert_eq!(names(&r), ["f0.txt", "new.txt"]);
    }

    // A count: at most two files per side.
    let env = Env::new();
    for i in 0..10 {
        write(&env.s(), &format!("f{i}.txt"), b"x");
    }
    let mut job = env.job(Push, true, Newer);
    job.max_delete = MaxDelete::Count(2);
    env.run(&job).await;
    for i in 0..3 {
        rm(&env.s(), &format!("f{i}.txt"));
    }
    let e = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitReached);
    assert_eq!(names(&env.r()).len(), 10);
    // Two of them removed by hand: one left to delete, within the limit.
    rm(&env.r(), "f0.txt");
    rm(&env.r(), "f1.txt");
    assert_eq!(env.run(&job).await.deleted_remote, 1);
}

#[tokio::test]
async fn keep_both_never_overwrites_an_earlier_conflict_copy() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "r.txt", b"base");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    let t = 1_714_558_500;
    let first = "r (conflict 2024-05-01 101500 UTC).txt";
    let second = "r (conflict 2024-05-01 101500 UTC #2).txt";

    // Two conflicts in a row whose losing versions carry the same mtime.
    write_at(&s, "r.txt", b"site one", t);
    write_at(&r, "r.txt", b"remote one, newer", t + 60);
    assert_eq!(env.run(&job).await.conflicts, 1);
    write_at(&s, "r.txt", b"site two", t);
    write_at(&r, "r.txt", b"remote two, newer", t + 120);
    let sum = env.run(&job).await;
    assert_eq!((sum.conflicts, sum.errors), (1, 0), "{sum:?}");
    for side in [&s, &r] {
        assert_eq!(read(side, "r.txt").unwrap(), b"remote two, newer");
        assert_eq!(read(side, first).unwrap(), b"site one");
        assert_eq!(read(side, second).unwrap(), b"site two");
    }
    // A user's own file that happens to hold the next name is not touched either.
    write_at(&s, "r.txt", b"site three", t);
    write_at(&r, "r.txt", b"remote three, newer", t + 180);
    write(&s, "r (conflict 2024-05-01 101500 UTC #3).txt", b"mine");
    let sum = env.run(&job).await;
    assert_eq!((sum.conflicts, sum.errors), (1, 0), "{sum:?}");
    assert_eq!(
        read(&s, "r (conflict 2024-05-01 101500 UTC #3).txt").unwrap(),
        b"mine"
    );
    assert_eq!(
        read(&r, "r (conflict 2024-05-01 101500 UTC #4).txt").unwrap(),
        b"site three"
    );
    assert_eq!(tree(&s), tree(&r));
    assert_eq!(counts(&env.run(&job).await), (0, 0, 0, 0, 0, 0, 0));
}

#[tokio::test]
async fn a_file_dated_in_the_future_does_not_win_every_conflict() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "r.txt", b"base");
    let job = env.job(TwoWay, true, Newer);
    env.run(&job).await;
    // 2100-01-01: a remote with a broken clock. The site's edit is the later one in truth.
    write_at(&r, "r.txt", b"remote, dated 2100", 4_102_444_800);
    write(&s, "r.txt", b"site, edited now");
    let sum = env.run(&job).await;
    assert_eq!(sum.conflicts, 1, "{sum:?}");
    assert_eq!(read(&r, "r.txt").unwrap(), b"site, edited now");
    assert_eq!(read(&s, "r.txt").unwrap(), b"site, edited now");
}

#[tokio::test]
async fn an_empty_remote_listing_never_deletes_the_site() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "a.txt", b"A");
    write(&r, "b.txt", b"B");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    let before = tree(&s);
    std::fs::remove_dir_all(&r).unwrap();
    let sum = env.run(&job).await;
    assert_eq!((sum.deleted_site, sum.copied_to_remote), (0, 0), "{sum:?}");
    assert_eq!(tree(&s), before);
}

#[tokio::test]
async fn a_failed_listing_changes_nothing() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "a.txt", b"A");
    write(&r, "b.txt", b"B");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    let (site_before, state_before) = (
        tree(&s),
        std::fs::read(env.state.join("sync/acme-inbound.state")).unwrap(),
    );
    // The remote prefix is now a file: walking it fails.
    std::fs::remove_dir_all(&r).unwrap();
    std::fs::write(&r, b"not a folder").unwrap();
    let e = run_job(&job, &env.state, RunOptions::default()).await;
    assert!(e.is_err());
    assert_eq!(tree(&s), site_before);
    assert_eq!(
        std::fs::read(env.state.join("sync/acme-inbound.state")).unwrap(),
        state_before
    );
    let st = status(&env.state).await;
    assert_eq!(st[0].last().unwrap().result, "failed");
}

#[tokio::test]
async fn dry_run_changes_nothing_and_predicts_the_real_run() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, "a.txt", b"A");
    write(&s, "gone.txt", b"G");
    write(&r, "b.txt", b"B");
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    write(&s, "new.txt", b"N");
    write(&r, "b.txt", b"B2");
    rm(&r, "gone.txt");
    write_at(&s, "a.txt", b"A site", 1_700_000_000);
    write_at(&r, "a.txt", b"A remote", 1_700_000_100);
    let snapshot = |env: &Env| {
        (
            tree(&env.s()),
            tree(&env.r()),
            std::fs::read(env.state.join("sync/acme-inbound.state")).unwrap(),
            std::fs::read(env.state.join("sync/acme-inbound.history.jsonl")).unwrap(),
        )
    };
    let before = snapshot(&env);
    let (mut opts, events) = recorder();
    opts.dry_run = true;
    let dry = run_job(&job, &env.state, opts).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(snapshot(&env), before, "a dry run writes nothing");
    assert!(!events.lock().unwrap().is_empty());
    let real = env.run(&job).await;
    assert_eq!(counts(&dry), counts(&real));
    assert_eq!(counts(&real), (2, 2, 0, 1, 1, 0, 0), "{real:?}");
}

#[tokio::test]
async fn a_lost_state_or_an_unrecorded_copy_makes_no_conflict() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    for i in 0..20 {
        write(&s, &format!("f{i}.txt"), format!("file {i}").as_bytes());
    }
    let job = env.job(TwoWay, true, KeepBoth);
    env.run(&job).await;
    // The state is lost: both sides hold the same files, which is recognised.
    std::fs::remove_file(env.state.join("sync/acme-inbound.state")).unwrap();
    assert_eq!(counts(&env.run(&job).await), (0, 0, 0, 0, 0, 0, 0));
    // A change already copied to the other side (with another mtime) but not recorded: the
    // contents are compared, not declared a conflict.
    write(&s, "f1.txt", b"changed");
    std::fs::copy(s.join("f1.txt"), r.join("f1.txt")).unwrap();
    set_mtime(&r, "f1.txt", 1_600_000_000);
    assert_eq!(counts(&env.run(&job).await), (0, 0, 0, 0, 0, 0, 0));
    assert!(!names(&s).iter().any(|n| is_conflict_name(n)));
    assert_eq!(tree(&s), tree(&r));
}

#[tokio::test]
async fn one_backend_on_both_sides_copies_server_side() {
    let dir = tempfile::tempdir().unwrap();
    let one: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("root")).unwrap());
    let s = dir.path().join("root/site");
    write_at(&s, "a/b.txt", b"hello", 1_650_000_000);
    let mut job = Env::new().job(Push, true, Newer);
    job.site = (one.clone(), "site".into());
    job.remote = (one.clone(), "mirror".into());
    let state = dir.path().join("state");
    let sum = run_job(&job, &state, RunOptions::default()).await.unwrap();
    assert_eq!(sum.copied_to_remote, 1, "{sum:?}");
    let m = dir.path().join("root/mirror/a/b.txt");
    assert_eq!(std::fs::read(&m).unwrap(), b"hello");
    assert_eq!(
        std::fs::metadata(&m).unwrap().modified().unwrap(),
        UNIX_EPOCH + Duration::from_secs(1_650_000_000)
    );
    // Overlapping folders of one backend are refused.
    job.remote = (one.clone(), "site/inner".into());
    let e = run_job(&job, &state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
}

#[tokio::test]
async fn a_job_never_overlaps_itself() {
    let env = Env::new();
    write(&env.s(), "a.txt", b"A");
    let job = env.job(Push, false, Newer);
    let lock_path = env.state.join("locks/acme-inbound.lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let held = std::fs::File::create(&lock_path).unwrap();
    held.lock().unwrap();
    let e = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("already running"));
    assert!(status(&env.state).await.is_empty() || status(&env.state).await[0].running);
    drop(held);
    env.run(&job).await;
    assert!(env.r().join("a.txt").exists());
}

#[tokio::test]
async fn a_lease_held_by_another_instance_stops_the_run_until_it_expires() {
    let env = Env::new();
    write(&env.s(), "a.txt", b"A");
    let store = Arc::new(FileLeaseStore::new(env.dir.path().join("leases")).unwrap());
    let mut job = env.job(Push, false, Newer);
    job.lease = Some(store.clone());
    let body = |expires_ms: u64| {
        bytes::Bytes::from(format!(
            r#"{{"job":"acme-inbound","holder":"other-host","expires_ms":{expires_ms},"nonce":1}}"#
        ))
    };
    let v = store
        .create_if_absent("acme-inbound", body(now_secs() * 1000 + 3_600_000))
        .await
        .unwrap()
        .unwrap();
    let e = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("another instance"), "{e}");
    assert!(!env.r().join("a.txt").exists());

    // The other holder died: its lease lapses.
    store
        .replace_if_match("acme-inbound", &v, body(now_secs() * 1000 - 1000))
        .await
        .unwrap()
        .unwrap();
    let opts = RunOptions {
        lease_ttl: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    run_job(&job, &env.state, opts).await.unwrap();
    assert!(env.r().join("a.txt").exists());
    assert!(
        store.read("acme-inbound").await.unwrap().is_none(),
        "released"
    );
}

#[tokio::test]
async fn a_quiet_run_leaves_the_state_file_alone() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    write(&env.s(), "a.txt", b"A");
    write(&env.s(), "d/b.txt", b"B");
    let job = env.job(TwoWay, true, Newer);
    env.run(&job).await;
    let state = env.state.join("sync/acme-inbound.state");
    let ino = std::fs::metadata(&state).unwrap().ino();
    let s = env.run(&job).await;
    assert_eq!(counts(&s), (0, 0, 0, 0, 0, 0, 0));
    assert_eq!(
        std::fs::metadata(&state).unwrap().ino(),
        ino,
        "nothing changed: the state was not rewritten"
    );
    // A change is recorded (the state is replaced), and the next quiet run keeps that one.
    write(&env.r(), "c.txt", b"C");
    let s = env.run(&job).await;
    assert_eq!(s.copied_to_site, 1);
    let ino2 = std::fs::metadata(&state).unwrap().ino();
    assert_ne!(ino2, ino);
    env.run(&job).await;
    assert_eq!(std::fs::metadata(&state).unwrap().ino(), ino2);
    // And the records it kept are the right ones: a deletion still spreads.
    rm(&env.s(), "a.txt");
    let s = env.run(&job).await;
    assert_eq!(s.deleted_remote, 1);
    assert!(!env.r().join("a.txt").exists());
}

#[tokio::test]
async fn a_run_with_nothing_to_do_takes_no_lease() {
    let env = Env::new();
    write(&env.s(), "a.txt", b"A");
    let store = Arc::new(FileLeaseStore::new(env.dir.path().join("leases")).unwrap());
    let mut job = env.job(Push, false, Newer);
    job.lease = Some(store.clone());
    env.run(&job).await;
    assert!(store.read("acme-inbound").await.unwrap().is_none());

    // Another instance holds the lease: a run that finds both sides in step neither fails nor
    // touches the other's lease; one with work to do is refused.
    let other = bytes::Bytes::from(format!(
        r#"{{"job":"acme-inbound","holder":"other-host","expires_ms":{},"nonce":1}}"#,
        now_secs() * 1000 + 3_600_000
    ));
    store
        .create_if_absent("acme-inbound", other.clone())
        .await
        .unwrap()
        .unwrap();
    let s = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap();
    assert_eq!((s.copied_to_remote, s.errors), (0, 0));
    let (held, _) = store.read("acme-inbound").await.unwrap().unwrap();
    assert_eq!(held, other, "the other instance's lease is untouched");
    write(&env.s(), "b.txt", b"B");
    let e = run_job(&job, &env.state, RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(!env.r().join("b.txt").exists());
}

#[tokio::test]
async fn history_and_status() {
    let env = Env::new();
    write(&env.s(), "a.txt", b"12345");
    let job = env.job(Push, false, Newer);
    env.run(&job).await;
    env.run(&job).await;
    let st = status(&env.state).await;
    assert_eq!(st.len(), 1);
    let j = &st[0];
    assert_eq!(j.name, "acme-inbound");
    assert_eq!(j.recent.len(), 2);
    assert!(!j.running);
    let first = &j.recent[0];
    assert!(first.ok());
    assert_eq!((first.copied_up, first.bytes), (1, 5));
    assert_eq!(j.last().unwrap().copied_up, 0);
    assert!(j.last_ok.is_some());
    assert!(first.start.ends_with('Z') && first.end >= first.start);
}

#[tokio::test]
async fn progress_reports_events_and_totals() {
    let env = Env::new();
    write(&env.s(), "a.txt", &[7u8; 10_000]);
    write(&env.s(), "b.txt", b"b");
    let job = env.job(Push, false, Newer);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = RunOptions {
        progress: Some(Arc::new(move |p| s2.lock().unwrap().push(p))),
        ..Default::default()
    };
    run_job(&job, &env.state, opts).await.unwrap();
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.phase, bucketgate_storage::sync::Phase::Done);
    assert_eq!((last.files_total, last.files_done), (2, 2));
    assert_eq!((last.bytes_total, last.bytes_done), (10_001, 10_001));
    let copied: Vec<_> = seen
        .iter()
        .filter_map(|p| p.event.as_ref())
        .filter(|e| e.kind == EventKind::CopiedToRemote)
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(copied.len(), 2);
}

#[tokio::test]
async fn the_scheduler_repeats_jobs_and_stops_on_shutdown() {
    let env = Env::new();
    write(&env.s(), "a.txt", b"A");
    let job = env.job(Push, false, Newer);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_scheduled(
        vec![(job, Duration::from_millis(300))],
        env.state.clone(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    write(&env.s(), "b.txt", b"B");
    tokio::time::sleep(Duration::from_millis(800)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .unwrap();
    assert!(env.r().join("b.txt").exists());
    let runs = status(&env.state).await[0].recent.clone();
    assert!(runs.len() >= 3, "{runs:#?}");
}

#[tokio::test]
async fn names_that_are_not_utf8_or_reserved_are_left_alone() {
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    write(&s, ".bucketgate-sync/lease", b"internal");
    write(&s, "ok.txt", b"ok");
    let job = env.job(Push, true, Newer);
    env.run(&job).await;
    assert_eq!(names(&r), ["ok.txt"]);
}
