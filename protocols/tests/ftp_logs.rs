//! What an FTP session writes to the gateway's log: one short line per event, in text and JSON,
//! at `info` and at `debug` (libunftp's spans, kilobytes of `Debug` dumps, are left out).

use crate::ftp_harness;

use bucketgate_protocols::logging;
use ftp_harness::{reply_text, Harness, Setup};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

/// The longest line an event may take. An audit line is about 250 bytes in text and 350 in
/// JSON; before libunftp's spans were left out, lines ran to 5 KB and more.
const MAX_LINE: usize = 600;

/// Where a layer writes: lines kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Logs in, uploads, downloads, lists, asks for a size, fails to download a missing file and
/// to write in a read-only folder, makes and removes a folder, deletes, and leaves.
async fn session(h: &Harness) {
    let mut c = h.client().await;
    c.put_file("notes.txt", &mut Cursor::new(b"some notes".to_vec()))
        .await
        .unwrap();
    let mut s = c.retr_as_stream("notes.txt").await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    s.finish().await.unwrap();
    assert_eq!(got, b"some notes");
    assert_eq!(c.size("notes.txt").await.unwrap(), 10);
    assert_eq!(c.list(None).await.unwrap().len(), 2);
    let missing = c.retr_as_stream("missing.txt").await.err().unwrap();
    assert!(reply_text(&missing).starts_with("550"), "{missing}");
    let refused = c
        .put_file("ro/new.txt", &mut Cursor::new(b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(reply_text(&refused).starts_with("550"), "{refused}");
    c.mkdir("folder").await.unwrap();
    c.rmdir("folder").await.unwrap();
    c.rm("notes.txt").await.unwrap();
    c.quit().await.unwrap();
}

/// Every line is at most [`MAX_LINE`] bytes, and the download's audit line is there, naming the
/// user, the operation, the path and the result.
fn check(level: &str, text: &str, json: &str) {
    for (format, out) in [("text", text), ("json", json)] {
        for line in out.lines() {
            assert!(
                line.len() <= MAX_LINE,
                "a {} byte {format} line at {level}: {line}",
                line.len()
            );
        }
        let audit = out
            .lines()
            .find(|l| l.contains("open_read") && l.contains("notes.txt"))
            .unwrap_or_else(|| {
                panic!("no audit line of the download in the {format} log at {level}:\n{out}")
            });
        assert!(audit.contains("alice") && audit.contains("ok"), "{audit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ftp_session_logs_one_short_line_per_event_at_info_and_debug() {
    let (text, json) = (Captured::default(), Captured::default());
    let (filter, level) = reload::Layer::new(EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(logging::layer(false, false, text.clone()))
        .with(logging::layer(true, false, json.clone()))
        .init();
    let h = Harness::start(Setup::default()).await;

    session(&h).await;
    check("info", &text.take(), &json.take());

    level.reload(EnvFilter::new("debug")).unwrap();
    session(&h).await;
    let (text, json) = (text.take(), json.take());
    check("debug", &text, &json);
    // At debug libunftp's own records are in the log too, bounded as well.
    assert!(text.contains("libunftp"), "{text}");
}
