//! Where event lines are written: stdout, or a file rotated by size; and,
//! if configured, the webhook (webhook.rs), which has a queue of its own.
//!
//! The writer runs on its own thread behind a bounded channel: the consumer
//! never waits for it. A failing sink logs once when it starts failing and
//! once when it recovers, and every line it could not write is counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prometheus::IntCounterVec;

use crate::config::EventOutput;

/// Lines the channel holds before the consumer sheds.
pub const CHANNEL_LINES: usize = 8192;
/// A sink counts as recovered when a write succeeds at least this long
/// after its last failure.
const RECOVERY_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// Most lines the writer takes from the channel for one write: what is
/// already queued goes out in one system call (no line waits for a batch to
/// fill), and a batch stays small enough to keep memory flat.
pub const BATCH_LINES: usize = 512;

/// What writing a batch did: lines before `written` are in the sink; the
/// rest were not written, because of `error`.
#[derive(Debug)]
pub struct BatchResult {
    pub written: usize,
    pub error: Option<io::Error>,
}

impl BatchResult {
    fn all(lines: &[String]) -> BatchResult {
        BatchResult {
            written: lines.len(),
            error: None,
        }
    }
}

/// `lines` joined, each with its newline.
fn joined(lines: &[String]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    buf
}

pub enum Sink {
    Stdout(io::Stdout),
    File(RotatingFile),
}

impl Sink {
    pub fn open(output: &EventOutput, max_bytes: u64, keep: u32) -> Sink {
        match output {
            EventOutput::Stdout => Sink::Stdout(io::stdout()),
            EventOutput::File(p) => Sink::File(RotatingFile::new(p.clone(), max_bytes, keep)),
        }
    }

    /// Writes lines (without their newlines) and flushes: one write for the
    /// lot, or one per file when the batch crosses a rotation.
    pub fn write_lines(&mut self, lines: &[String]) -> BatchResult {
        match self {
            Sink::Stdout(s) => {
                let mut s = s.lock();
                match s.write_all(&joined(lines)).and_then(|()| s.flush()) {
                    Ok(()) => BatchResult::all(lines),
                    // Part of it may have gone out; stdout cannot be taken back.
                    Err(e) => BatchResult {
                        written: 0,
                        error: Some(e),
                    },
                }
            }
            Sink::File(f) => f.write_lines(lines),
        }
    }
}

/// A file rotated when the next line would take it past `max_bytes`:
/// `path` becomes `path.1`, `path.1` becomes `path.2`, ... and `path.{keep}`
/// is removed, so at most `keep` rotated files stay beside the live one.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> RotatingFile {
        RotatingFile {
            path,
            max_bytes,
            keep,
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, i: u32) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for i in (1..self.keep).rev() {
            let from = self.rotated(i);
            if from.exists() {
                std::fs::rename(&from, self.rotated(i + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.size = 0;
        Ok(())
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    /// Writes the lines in as few writes as rotation allows: each run of
    /// lines that fits the live file goes out in one `write`. If a run fails
    /// (a disk that is nearly full), the rest are tried one line at a time,
    /// so that every whole line that fits is kept; stops at the first line
    /// that fails on its own.
    pub fn write_lines(&mut self, lines: &[String]) -> BatchResult {
        let mut written = 0;
        let mut most = lines.len();
        while written < lines.len() {
            match self.write_run(&lines[written..], most) {
                Ok(n) => written += n,
                Err(_) if most > 1 => most = 1,
                Err(error) => {
                    return BatchResult {
                        written,
                        error: Some(error),
                    };
                }
            }
        }
        BatchResult::all(lines)
    }

    /// Writes the longest run of `lines` (at least one, at most `most`) that
    /// fits the live file, rotating first if even the first line does not;
    /// returns how many.
    fn write_run(&mut self, lines: &[String], most: usize) -> io::Result<usize> {
        self.open()?;
        let first = lines[0].len() as u64 + 1;
        if self.size > 0 && self.size + first > self.max_bytes {
            self.rotate()?;
            self.open()?;
        }
        let mut end = self.size;
        let mut count = 0;
        for l in &lines[..most.min(lines.len())] {
            let n = l.len() as u64 + 1;
            // The first line always goes (a line longer than the limit gets a file of its own).
            if count > 0 && end + n > self.max_bytes {
                break;
            }
            end += n;
            count += 1;
        }
        let file = self.file.as_mut().expect("open");
        match file.write_all(&joined(&lines[..count])) {
            Ok(()) => {
                self.size = end;
                Ok(count)
            }
            Err(e) => {
                // A full disk may have taken part of the run: cut it off, so
                // that the file holds whole lines only and a reader never
                // meets half a record. Then reopen on the next batch: the
                // file may have been removed or the disk freed.
                let _ = file.set_len(self.size);
                self.file = None;
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The consumer's end: never blocks.
#[derive(Clone)]
pub struct LineSender {
    tx: SyncSender<String>,
    dropped: IntCounterVec,
    /// The webhook's own queue, if one is configured: it gets every line too.
    webhook: Option<super::webhook::WebhookSender>,
}

impl LineSender {
    /// Also hands every line to the webhook sink (through its own queue).
    pub fn with_webhook(mut self, webhook: super::webhook::WebhookSender) -> LineSender {
        self.webhook = Some(webhook);
        self
    }

    /// Queues a line; if the writer is behind, sheds it and counts it.
    /// The webhook, if any, gets its own copy and sheds on its own.
    pub fn send(&self, line: String) {
        if let Some(w) = &self.webhook {
            w.send(line.clone());
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.with_label_values(&["channel_full"]).inc(),
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.with_label_values(&["write_error"]).inc()
            }
        }
    }
}

/// Starts the writer thread for `sink`. `dropped` counts lines lost, by stage.
pub fn spawn_writer(mut sink: Sink, dropped: IntCounterVec, capacity: usize) -> LineSender {
    let (tx, rx): (SyncSender<String>, Receiver<String>) = sync_channel(capacity);
    let counter = dropped.clone();
    std::thread::Builder::new()
        .name("tg-events".into())
        .spawn(move || {
            // When the last failure was; cleared (and the recovery said) once
            // a write succeeds a while after it, so that a disk at the edge
            // of full, where some batches fit and others do not, is reported
            // once rather than flapping in the log.
            let mut last_failure: Option<std::time::Instant> = None;
            let mut batch = Vec::with_capacity(BATCH_LINES);
            // Block for one line, then take whatever else is already queued.
            while let Ok(line) = rx.recv() {
                batch.push(line);
                while batch.len() < BATCH_LINES {
                    match rx.try_recv() {
                        Ok(l) => batch.push(l),
                        Err(_) => break,
                    }
                }
                let result = sink.write_lines(&batch);
                let lost = batch.len() - result.written;
                batch.clear();
                match result.error {
                    None => {
                        if last_failure.is_some_and(|t| t.elapsed() >= RECOVERY_QUIET) {
                            last_failure = None;
                            tracing::info!("event sink writes again");
                        }
                    }
                    Some(e) => {
                        counter
                            .with_label_values(&["write_error"])
                            .inc_by(lost as u64);
                        let first = last_failure.is_none();
                        last_failure = Some(std::time::Instant::now());
                        if first {
                            let target = match &sink {
                                Sink::Stdout(_) => "stdout".to_string(),
                                Sink::File(f) => f.path().display().to_string(),
                            };
                            tracing::error!(sink = target, error = %e, "cannot write events; counting them in tierguard_events_dropped_total{{stage=\"write_error\"}} until it recovers");
                        }
                    }
                }
            }
        })
        .expect("spawn event writer thread");
    LineSender {
        tx,
        dropped,
        webhook: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tg-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let d = tmp("rot");
        let path = d.join("events.jsonl");
        let mut f = RotatingFile::new(path.clone(), 100, 3);
        let line = "x".repeat(39); // 40 bytes with the newline: two per file
        let lines: Vec<String> = (0..20)
            .map(|i| format!("{line}{}", i % 10)[1..].to_string())
            .collect();
        // One line at a time, then a batch that crosses several rotations.
        for l in &lines[..7] {
            let r = f.write_lines(std::slice::from_ref(l));
            assert_eq!((r.written, r.error.is_none()), (1, true));
        }
        let r = f.write_lines(&lines[7..]);
        assert_eq!((r.written, r.error.is_none()), (13, true));
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "events.jsonl",
                "events.jsonl.1",
                "events.jsonl.2",
                "events.jsonl.3"
            ]
        );
        for n in &names {
            let len = std::fs::metadata(d.join(n)).unwrap().len();
            assert!(len <= 100, "{n} is {len} bytes");
        }
        // The newest lines are in the live file, the ones before in .1.
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.ends_with("xxx9\n"), "{live}");
        let one = std::fs::read_to_string(d.join("events.jsonl.1")).unwrap();
        assert!(one.ends_with("xxx7\n"), "{one}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_batch_goes_out_whole_and_in_order() {
        let d = tmp("batch");
        let path = d.join("events.jsonl");
        let mut f = RotatingFile::new(path.clone(), 1 << 20, 2);
        let lines: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i}}}")).collect();
        let r = f.write_lines(&lines);
        assert_eq!(r.written, 100);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, lines.join("\n") + "\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_file_counts_and_recovers() {
        let d = tmp("fail");
        let path = d.join("missing-dir").join("events.jsonl");
        let dropped = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["stage"]).unwrap();
        let tx = spawn_writer(
            Sink::open(&EventOutput::File(path.clone()), 1 << 20, 2),
            dropped.clone(),
            16,
        );
        tx.send("one".into());
        let wait = |n: u64| {
            for _ in 0..200 {
                if dropped.with_label_values(&["write_error"]).get() >= n {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("write error not counted");
        };
        wait(1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        tx.send("two".into());
        for _ in 0..200 {
            if std::fs::read_to_string(&path).is_ok_and(|t| t == "two\n") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(dropped.with_label_values(&["write_error"]).get(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_channel_sheds_and_counts() {
        let dropped = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["stage"]).unwrap();
        let (tx, _rx) = sync_channel(2);
        let s = LineSender {
            tx,
            dropped: dropped.clone(),
            webhook: None,
        };
        for _ in 0..5 {
            s.send("l".into());
        }
        assert_eq!(dropped.with_label_values(&["channel_full"]).get(), 3);
    }
}
