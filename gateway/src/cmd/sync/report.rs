//! What `bucketgate sync run` and `sync status` show: the progress (an indicatif bar on a
//! terminal, one line per path otherwise), the summary of a run, the table of past runs.

use bucketgate_storage::sync::{Event, EventKind, JobStatus, Phase, Progress, RunRecord, Summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prints each job's last runs: a line for one that never ran, a table of up to five runs
/// for the others.
pub fn print_status(jobs: Vec<JobStatus>) {
    if jobs.is_empty() {
        println!("no sync job has run yet");
        return;
    }
    for j in jobs {
        let running = if j.running { "  (running now)" } else { "" };
        match j.last() {
            None => println!("{}: never ran{running}", j.name),
            Some(last) => {
                println!(
                    "{}: last run {} {}{running}",
                    j.name,
                    last.end,
                    last.result.to_uppercase()
                );
                if !last.ok() {
                    match &j.last_ok {
                        Some(ok) => println!("  last successful run: {}", ok.end),
                        None => println!("  no successful run yet"),
                    }
                }
            }
        }
        if j.recent.is_empty() {
            continue;
        }
        println!(
            "  {:<20} {:<6} {:>8} {:>6} {:>6} {:>7} {:>9} {:>7} {:>6} {:>10}",
            "started",
            "result",
            "time",
            "up",
            "down",
            "deleted",
            "conflicts",
            "skipped",
            "errors",
            "bytes"
        );
        for r in j.recent.iter().rev().take(5) {
            print_run(r);
        }
    }
}

fn print_run(r: &RunRecord) {
    println!(
        "  {:<20} {:<6} {:>8} {:>6} {:>6} {:>7} {:>9} {:>7} {:>6} {:>10}",
        r.start,
        r.result,
        human_duration(Duration::from_millis(r.elapsed_ms)),
        r.copied_up,
        r.copied_down,
        r.deleted,
        r.conflicts,
        r.skipped,
        r.errors,
        human_bytes(r.bytes)
    );
    if let Some(e) = &r.error {
        println!("  {:<20} {e}", "");
    }
}

pub fn print_summary(name: &str, s: &Summary) {
    let verdict = match (s.ok(), s.dry_run) {
        (true, true) => "dry run, nothing changed",
        (false, true) => "dry run, nothing changed; some paths could not be checked",
        (true, false) => "ok",
        (false, false) => "finished with errors",
    };
    let would = if s.dry_run { "would be " } else { "" };
    println!("sync {name}: {verdict}");
    println!(
        "  {would}copied:  {} to the remote, {} to the site",
        s.copied_to_remote, s.copied_to_site
    );
    println!(
        "  {would}deleted: {} on the remote, {} on the site",
        s.deleted_remote, s.deleted_site
    );
    println!("  conflicts: {}", s.conflicts);
    println!("  skipped:   {}", s.skipped);
    println!("  errors:    {}", s.errors);
    let secs = s.elapsed.as_secs_f64().max(0.001);
    if s.dry_run {
        println!("  {would}copied bytes: {}", human_bytes(s.bytes));
        println!("  time:      {}", human_duration(s.elapsed));
    } else {
        println!(
            "  bytes:     {} in {} ({}/s)",
            human_bytes(s.bytes),
            human_duration(s.elapsed),
            human_bytes((s.bytes as f64 / secs) as u64)
        );
    }
    for m in &s.messages {
        println!("  note: {m}");
    }
}

/// Shows progress: an indicatif bar on a terminal, one line per path otherwise.
#[derive(Clone)]
pub struct Reporter {
    bar: Option<ProgressBar>,
    dry_run: bool,
    /// Plain mode: when the last "listing" line was printed (at most one every few seconds).
    last_line: Arc<Mutex<(Option<Instant>, Option<Phase>)>>,
}

impl Reporter {
    pub fn new(tty: bool, dry_run: bool) -> Reporter {
        let bar = tty.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} listing… {msg}").expect("static template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Reporter {
            bar,
            dry_run,
            last_line: Arc::new(Mutex::new((None, None))),
        }
    }

    pub fn update(&self, p: &Progress) {
        match &self.bar {
            Some(bar) => self.update_bar(bar, p),
            None => self.update_plain(p),
        }
    }

    fn update_bar(&self, bar: &ProgressBar, p: &Progress) {
        match p.phase {
            Phase::Listing => bar.set_message(format!(
                "{} site, {} remote entries",
                p.listed_site, p.listed_remote
            )),
            Phase::Transferring | Phase::Done => {
                if bar.length() != Some(p.bytes_total.max(1)) {
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} \
                             {binary_bytes_per_sec} ETA {eta} {msg}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    );
                    bar.set_length(p.bytes_total.max(1));
                }
                bar.set_position(p.bytes_done.min(p.bytes_total));
                bar.set_message(format!("{}/{} files", p.files_done, p.files_total));
                if let Some(ev) = &p.event {
                    if matches!(ev.kind, EventKind::Error | EventKind::Conflict) {
                        bar.println(self.line(ev));
                    }
                }
            }
        }
    }

    fn update_plain(&self, p: &Progress) {
        if let Some(ev) = &p.event {
            println!("{}", self.line(ev));
            return;
        }
        let mut last = self.last_line.lock().expect("not poisoned");
        let phase_changed = last.1 != Some(p.phase);
        let due = last
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        match p.phase {
            Phase::Listing if due || phase_changed => {
                println!(
                    "listing: {} site, {} remote entries",
                    p.listed_site, p.listed_remote
                );
            }
            Phase::Transferring if phase_changed => println!(
                "listed {} site, {} remote entries: {} paths to handle, {}",
                p.listed_site,
                p.listed_remote,
                p.files_total,
                human_bytes(p.bytes_total)
            ),
            Phase::Transferring if due => println!(
                "progress: {}/{} paths, {}/{}",
                p.files_done,
                p.files_total,
                human_bytes(p.bytes_done),
                human_bytes(p.bytes_total)
            ),
            _ => return,
        }
        *last = (Some(Instant::now()), Some(p.phase));
    }

    fn line(&self, ev: &Event) -> String {
        let what = match ev.kind {
            EventKind::CopiedToRemote => "up      ",
            EventKind::CopiedToSite => "down    ",
            EventKind::DeletedRemote => "del-rem ",
            EventKind::DeletedSite => "del-site",
            EventKind::Conflict => "conflict",
            EventKind::Skipped => "skipped ",
            EventKind::Error => "ERROR   ",
        };
        let would = if self.dry_run && !matches!(ev.kind, EventKind::Error) {
            "(dry) "
        } else {
            ""
        };
        let mut s = format!("{would}{what} {}", ev.path);
        if ev.bytes > 0 {
            s.push_str(&format!(" ({})", human_bytes(ev.bytes)));
        }
        if let Some(m) = &ev.message {
            s.push_str(": ");
            s.push_str(m);
        }
        s
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, (s % 3600.0 / 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_duration(Duration::from_millis(3400)), "3.4s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn the_bar_takes_every_phase() {
        let r = Reporter::new(true, false);
        let mut p = Progress {
            phase: Phase::Listing,
            listed_site: 3,
            listed_remote: 0,
            files_total: 0,
            files_done: 0,
            bytes_total: 0,
            bytes_done: 0,
            event: None,
        };
        r.update(&p);
        p.phase = Phase::Transferring;
        p.files_total = 2;
        p.bytes_total = 100;
        r.update(&p);
        p.bytes_done = 100;
        p.files_done = 1;
        p.event = Some(Event {
            kind: EventKind::Error,
            path: "x".into(),
            bytes: 0,
            message: Some("boom".into()),
        });
        r.update(&p);
        p.phase = Phase::Done;
        r.update(&p);
        r.finish();
    }
}
