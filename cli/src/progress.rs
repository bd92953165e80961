//! Live progress: a spinner line on a terminal, JSON lines with `--json`, nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bakare_planner::Counters;
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::bytes;

/// Reports progress from a background thread until dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(counters: Arc<Counters>, json: bool, quiet: bool, verb: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stderr().is_terminal();
        let handle = if quiet || (!json && !tty) {
            None
        } else {
            let stop = stop.clone();
            Some(std::thread::spawn(move || tick(&counters, &stop, json, verb)))
        };
        Self { stop, handle }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn tick(c: &Counters, stop: &AtomicBool, json: bool, verb: &str) {
    let started = Instant::now();
    let bar = (!json).then(|| {
        let b = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
            b.set_style(style);
        }
        b
    });
    let period = if json { Duration::from_secs(1) } else { Duration::from_millis(100) };
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() < period {
            continue;
        }
        last = Instant::now();
        let files = Counters::get(&c.files);
        let read = Counters::get(&c.bytes_read).max(Counters::get(&c.bytes_written));
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let current = c.current.lock().map(|s| s.clone()).unwrap_or_default();
        match &bar {
            Some(b) => b.set_message(format!(
                "{verb}: {files} files, {}, {}/s, {} errors  {current}",
                bytes(read),
                bytes((read as f64 / secs) as u64),
                Counters::get(&c.errors)
            )),
            None => out!(
                "{}",
                serde_json::json!({
                    "type": "progress", "verb": verb, "seconds": secs, "files": files,
                    "dirs": Counters::get(&c.dirs), "bytes": read, "errors": Counters::get(&c.errors),
                    "current": current,
                })
            )
            .unwrap_or(()),
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
