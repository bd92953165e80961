//! Live progress: a spinner line on a terminal, JSON lines with `--json`, nothing otherwise.
//! The line's message is cut to the terminal's width (`wide_msg`): a longer one would wrap,
//! and every redraw would leave lines behind.

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

/// What a run is expected to cover: files and bytes (a backup: its set's last run, or a
/// count made while it runs; a restore: the snapshot's totals).
#[derive(Clone, Copy, Debug)]
pub struct Expected {
    pub files: u64,
    pub bytes: u64,
}

/// Totals that arrive while the run goes (a first backup's parallel count): the spinner
/// becomes a bar with an ETA once they are set.
pub type Later = Arc<std::sync::OnceLock<Expected>>;

impl Ticker {
    /// With `verbose`, also lists the files found new or changed (through the bar, so
    /// that lines and bar do not overwrite each other).
    pub fn start(
        counters: Arc<Counters>,
        json: bool,
        quiet: bool,
        verbose: bool,
        verb: &'static str,
        expected: Option<Expected>,
        later: Option<Later>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stderr().is_terminal();
        if verbose && let Ok(mut changes) = counters.changes.lock() {
            *changes = Some(Vec::new());
        }
        let show = !quiet && (json || tty);
        let handle = if !show && !verbose {
            None
        } else {
            let stop = stop.clone();
            Some(std::thread::spawn(move || tick(&counters, &stop, json, show, verb, expected, later)))
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

/// Bytes a run has covered: read or reused (backup), written (restore).
fn done(c: &Counters) -> u64 {
    (Counters::get(&c.bytes_read) + Counters::get(&c.bytes_reused)).max(Counters::get(&c.bytes_written))
}

/// Prints the files queued as new or changed since the last call.
fn list_changes(c: &Counters, bar: Option<&ProgressBar>, json: bool) {
    let Some(changes) = c.changes.lock().ok().and_then(|mut q| q.as_mut().map(std::mem::take)) else { return };
    for (change, path) in changes {
        let line = change_line(change, &path, None, json);
        match bar {
            Some(b) => b.suspend(|| out!("{line}").unwrap_or(())),
            None => out!("{line}").unwrap_or(()),
        }
    }
}

/// The line `-v` prints for a file found new or changed (`new      PATH`), or its JSON line
/// (with the size when known).
pub fn change_line(
    change: bakare_planner::FileChange,
    path: &std::path::Path,
    size: Option<u64>,
    json: bool,
) -> String {
    let word = if change == bakare_planner::FileChange::New { "new" } else { "changed" };
    if json {
        let mut v = serde_json::json!({"type": "file", "change": word, "path": path.to_string_lossy()});
        if let (Some(size), Some(o)) = (size, v.as_object_mut()) {
            o.insert("size".into(), size.into());
        }
        v.to_string()
    } else {
        format!("{word:<8} {}", path.display())
    }
}

/// The bar's look once the size of the run is known: a rate and an ETA.
fn bar_style(b: &ProgressBar, bytes: u64) {
    b.set_length(bytes.max(1));
    // 60 columns before the message, which takes what is left of the line.
    let template =
        "{spinner} {elapsed_precise} [{bar:16}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        b.set_style(style.progress_chars("=> "));
    }
}

fn tick(
    c: &Counters,
    stop: &AtomicBool,
    json: bool,
    show: bool,
    verb: &str,
    mut expected: Option<Expected>,
    later: Option<Later>,
) {
    let started = Instant::now();
    let bar = (show && !json).then(|| match expected {
        Some(e) => {
            let b = ProgressBar::new(e.bytes.max(1));
            bar_style(&b, e.bytes);
            b
        }
        None => {
            let b = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {wide_msg}") {
                b.set_style(style);
            }
            b
        }
    });
    let period = if json { Duration::from_secs(1) } else { Duration::from_millis(100) };
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() < period {
            continue;
        }
        last = Instant::now();
        list_changes(c, bar.as_ref(), json);
        if expected.is_none()
            && let Some(e) = later.as_ref().and_then(|l| l.get())
        {
            expected = Some(*e);
            if let Some(b) = &bar {
                bar_style(b, e.bytes);
            }
        }
        if !show {
            continue;
        }
        let files = Counters::get(&c.files) + Counters::get(&c.files_memo);
        let covered = done(c);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = covered as f64 / secs;
        let current = c.current.lock().map(|s| s.clone()).unwrap_or_default();
        let errors = Counters::get(&c.errors);
        // The spinner turns at every redraw, even while one large file is read.
        if let Some(b) = &bar {
            b.tick();
        }
        match (&bar, expected) {
            (Some(b), Some(e)) => {
                // The estimate may be short (the tree grew): grow the bar rather than stall.
                if covered > b.length().unwrap_or(0) {
                    b.set_length(covered);
                }
                b.set_position(covered);
                b.set_message(format!("{files}/{} files, {errors} errors  {current}", e.files));
            }
            (Some(b), None) => b.set_message(format!(
                "{verb}: {files} files, {}, {}/s, {errors} errors  {current}",
                bytes(covered),
                bytes(rate as u64),
            )),
            (None, _) => {
                let eta = expected
                    .filter(|e| rate > 0.0 && e.bytes > covered)
                    .map(|e| ((e.bytes - covered) as f64 / rate).round() as u64);
                out!(
                    "{}",
                    serde_json::json!({
                        "type": "progress", "verb": verb, "seconds": secs, "files": files,
                        "dirs": Counters::get(&c.dirs), "bytes": covered, "bytes_read": Counters::get(&c.bytes_read),
                        "bytes_per_second": rate.round() as u64, "errors": errors, "current": current,
                        "expected_files": expected.map(|e| e.files), "expected_bytes": expected.map(|e| e.bytes),
                        "eta_seconds": eta,
                    })
                )
                .unwrap_or(());
            }
        }
    }
    list_changes(c, bar.as_ref(), json);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// A spinner line `verb: N/M packs, X read` at a terminal while a maintenance run counts
/// into `progress`; nothing when `silent` or not at a terminal. Stops when dropped.
pub fn show_packs(progress: Arc<bakare_store::progress::Progress>, silent: bool, verb: &'static str) -> Option<Shown> {
    show_steps(progress, silent, verb, "packs")
}

/// As [`show_packs`], counting `units`; bytes shown only when some were read.
pub fn show_steps(
    progress: Arc<bakare_store::progress::Progress>,
    silent: bool,
    verb: &'static str,
    units: &'static str,
) -> Option<Shown> {
    if silent || !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let b = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {wide_msg}") {
            b.set_style(style);
        }
        while !flag.load(Ordering::Relaxed) {
            let (done, total, read) = progress.get();
            if total > 0 && read > 0 {
                b.set_message(format!("{verb}: {done}/{total} {units}, {} read", bytes(read)));
            } else if total > 0 {
                b.set_message(format!("{verb}: {done}/{total} {units}"));
            }
            b.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
        b.finish_and_clear();
    });
    Some(Shown { stop, handle: Some(handle) })
}

/// A progress line shown until dropped.
pub struct Shown {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
