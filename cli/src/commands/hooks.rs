//! `--pre-hook` / `--post-hook`: commands run around a backup.
//!
//! Each runs as `sh -c COMMAND` in its own process group with standard input closed, its
//! standard output and error gathered into one (the first [`KEPT_OUTPUT`] bytes kept), and
//! is killed with its whole group after its timeout. The pre-hook's output goes into the
//! snapshot's log; the post-hook runs after the snapshot is written, so its output is
//! printed only. The post-hook is told how the backup ended through its environment.
//! Neither sees `BAKARE_PASSPHRASE`.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bakare_store::Hook;

/// Bytes of a hook's output kept; more is counted.
const KEPT_OUTPUT: usize = 64 << 10;

/// How a hook ended.
pub struct HookRun {
    /// "exit 0", "exit 3", "killed by signal 9", "timed out after 5 s", "could not start: ..."
    pub status: String,
    pub ok: bool,
    /// Its output, one line each.
    pub output: Vec<String>,
    pub secs: f64,
}

impl HookRun {
    /// The lines for the snapshot's log (and the terminal): the status, then the output.
    pub fn lines(&self, which: &str, hook: &Hook) -> Vec<String> {
        let mut lines = vec![format!("{which}-hook `{}`: {} after {:.1} s", hook.command, self.status, self.secs)];
        lines.extend(self.output.iter().map(|l| format!("{which}-hook: {l}")));
        lines
    }
}

/// Runs `hook` with `env` added to its environment, waiting at most its timeout.
pub fn run(hook: &Hook, env: &[(&str, String)]) -> HookRun {
    let started = Instant::now();
    let failed = |status: String| HookRun { status, ok: false, output: Vec::new(), secs: 0.0 };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("could not start: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("could not start: {e}")),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&hook.command).stdin(Stdio::null()).stdout(writer).stderr(writer2).process_group(0);
    // The repository's passphrase is not the hook's business.
    cmd.env_remove("BAKARE_PASSPHRASE").env_remove("BAKARE_NEW_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("could not start: {e}")),
    };
    // The Command holds the pipe's write ends until dropped: the reader sees the end of the
    // output only once the hook (and whatever it left running) closed theirs.
    drop(cmd);
    let collector = std::thread::spawn(move || collect(reader));
    let timeout = Duration::from_secs(hook.timeout_secs.max(1));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= timeout => break Err(()),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break Err(()),
        }
    };
    // Whatever the hook started and left behind is ended with it: a process group that
    // outlived the hook would hold the output pipe open.
    if let Some(pgid) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    let status = match status {
        Ok(s) => s,
        Err(()) => {
            let _ = child.wait();
            let output = collector.join().unwrap_or_default();
            return HookRun {
                status: format!("timed out after {} s and was killed", timeout.as_secs()),
                ok: false,
                output,
                secs: started.elapsed().as_secs_f64(),
            };
        }
    };
    let output = collector.join().unwrap_or_default();
    let (text, ok) = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
        (Some(0), _) => ("exit 0".to_string(), true),
        (Some(c), _) => (format!("exit {c}"), false),
        (None, Some(sig)) => (format!("killed by signal {sig}"), false),
        (None, None) => ("ended".to_string(), false),
    };
    HookRun { status: text, ok, output, secs: started.elapsed().as_secs_f64() }
}

/// Reads the hook's output to its end, keeping the first [`KEPT_OUTPUT`] bytes as lines.
fn collect(mut reader: std::io::PipeReader) -> Vec<String> {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = KEPT_OUTPUT.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
        }
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&kept).lines().map(str::to_string).collect();
    if dropped > 0 {
        lines.push(format!("({dropped} more bytes of output not kept)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(command: &str, timeout_secs: u64) -> Hook {
        Hook { command: command.into(), timeout_secs, required: false }
    }

    #[test]
    fn output_and_status_are_kept() {
        let r = run(&hook("echo one; echo two >&2; echo $BAKARE_X; exit 3", 10), &[("BAKARE_X", "x".into())]);
        assert_eq!((r.ok, r.status.as_str()), (false, "exit 3"));
        assert_eq!(r.output, ["one", "two", "x"]);
        assert!(run(&hook("true", 10), &[]).ok);
    }

    #[test]
    fn a_hook_that_hangs_is_killed_with_what_it_started() {
        let started = Instant::now();
        let r = run(&hook("sleep 30 & echo started; sleep 30", 1), &[]);
        assert!(!r.ok);
        assert!(r.status.contains("timed out"), "{}", r.status);
        assert_eq!(r.output, ["started"]);
        assert!(started.elapsed() < Duration::from_secs(10), "the background sleep held the pipe open");
    }

    #[test]
    fn output_is_bounded() {
        let r = run(&hook("head -c 200000 /dev/zero | tr '\\0' 'a'", 10), &[]);
        assert!(r.ok);
        assert_eq!(r.output.len(), 2);
        assert_eq!(r.output[0].len(), KEPT_OUTPUT);
        assert!(r.output[1].contains(&format!("{} more bytes", 200_000 - KEPT_OUTPUT)));
    }
}
