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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A command run through `sh -c` around a backup.
#[derive(Clone, Debug)]
pub struct Hook {
    pub command: String,
    /// Killed after this many seconds.
    pub timeout_secs: u64,
    /// A pre-hook that fails (or times out) stops the backup; else it is logged.
    pub required: bool,
}

/// The pre- and post-hook of a run.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub pre: Option<Hook>,
    pub post: Option<Hook>,
}

impl Hooks {
    pub fn from_args(a: &crate::args::HookArgs) -> Self {
        let hook =
            |command: &String, required| Hook { command: command.clone(), timeout_secs: a.hook_timeout, required };
        Self {
            pre: a.pre_hook.as_ref().map(|c| hook(c, a.pre_hook_required)),
            post: a.post_hook.as_ref().map(|c| hook(c, false)),
        }
    }
}

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

/// The file-creation mask bakare was started with (it runs with 077 itself), which hooks
/// get back: a file a hook writes is as readable as if the user's shell had run it.
pub static USER_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// How long the output is waited for once the hook has ended: a process it started that
/// left its process group (`setsid`) may hold the pipe open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What the collector has read so far: the kept bytes and a count of the others.
type Gathered = std::sync::Arc<std::sync::Mutex<(Vec<u8>, u64)>>;

/// Runs `hook` with `env` added to its environment, waiting at most its timeout, and no
/// longer once `interrupt` is set (SIGINT, SIGTERM): the hook is then stopped.
pub fn run(hook: &Hook, env: &[(&str, String)], interrupt: &AtomicUsize) -> HookRun {
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
    user_umask(&mut cmd);
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
    let gathered = Gathered::default();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let gathered = gathered.clone();
        std::thread::spawn(move || {
            collect(reader, &gathered);
            let _ = done_tx.send(());
        });
    }
    let timeout = Duration::from_secs(hook.timeout_secs.max(1));
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ended::Exited(status),
            Ok(None) if interrupt.load(Ordering::Relaxed) != 0 => break Ended::Interrupted,
            Ok(None) if started.elapsed() >= timeout => break Ended::TimedOut,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Ended::Lost(e.to_string()),
        }
    };
    // Whatever the hook started and left in its group is ended with it.
    if let Some(pgid) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
    let held_open = done_rx.recv_timeout(OUTPUT_GRACE).is_err();
    let mut output = {
        let g = gathered.lock().map(|g| g.clone()).unwrap_or_default();
        lines(&g.0, g.1)
    };
    if held_open {
        output.push("(a process the hook started still holds its output open; not waited for)".into());
    }
    let (status, ok) = match ended {
        Ended::Exited(status) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(0), _) => ("exit 0".to_string(), true),
            (Some(c), _) => (format!("exit {c}"), false),
            (None, Some(sig)) => (format!("killed by signal {sig}"), false),
            (None, None) => ("ended".to_string(), false),
        },
        Ended::TimedOut => (format!("timed out after {} s and was killed", timeout.as_secs()), false),
        Ended::Interrupted => ("stopped: bakare was interrupted".to_string(), false),
        Ended::Lost(e) => (format!("could not be waited for ({e}) and was killed"), false),
    };
    HookRun { status, ok, output, secs: started.elapsed().as_secs_f64() }
}

enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Interrupted,
    Lost(String),
}

/// Reads the hook's output to its end into `gathered`, keeping the first [`KEPT_OUTPUT`]
/// bytes.
fn collect(mut reader: std::io::PipeReader, gathered: &Gathered) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let Ok(mut g) = gathered.lock() else { break };
                let room = KEPT_OUTPUT.saturating_sub(g.0.len()).min(n);
                g.0.extend_from_slice(&buf[..room]);
                g.1 += (n - room) as u64;
            }
        }
    }
}

/// The kept output as lines, and a line counting what was not kept.
fn lines(kept: &[u8], dropped: u64) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(kept).lines().map(str::to_string).collect();
    if dropped > 0 {
        lines.push(format!("({dropped} more bytes of output not kept)"));
    }
    lines
}

/// Gives the hook the user's file-creation mask back.
#[allow(unsafe_code)]
fn user_umask(cmd: &mut Command) {
    let mask = rustix::fs::Mode::from_raw_mode(USER_UMASK.load(Ordering::Relaxed));
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: umask(2) is one, and it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::umask(mask);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(command: &str, timeout_secs: u64) -> Hook {
        Hook { command: command.into(), timeout_secs, required: false }
    }

    fn calm() -> AtomicUsize {
        AtomicUsize::new(0)
    }

    #[test]
    fn a_daemon_that_keeps_the_output_open_does_not_hang_the_backup() {
        // The hook waits until the daemon has left its process group (else killing the
        // group after the hook ends may still reach it, and nothing holds the output open).
        let left = std::env::temp_dir().join(format!("bakare-hook-daemon-{}", std::process::id()));
        let _ = std::fs::remove_file(&left);
        let started = Instant::now();
        let r = run(
            &hook(
                r#"setsid sh -c ': > "$LEFT"; exec sleep 31' & while ! [ -e "$LEFT" ]; do sleep 0.01; done; echo forked"#,
                10,
            ),
            &[("LEFT", left.display().to_string())],
            &calm(),
        );
        let _ = std::fs::remove_file(&left);
        assert!(r.ok, "{}", r.status);
        assert_eq!(r.output[0], "forked");
        assert!(r.output[1].contains("still holds its output open"), "{:?}", r.output);
        assert!(started.elapsed() < Duration::from_secs(8));
        let _ = Command::new("pkill").args(["-f", "^sleep 31$"]).status();
    }

    #[test]
    fn an_interrupt_stops_the_hook() {
        let flag = std::sync::Arc::new(AtomicUsize::new(0));
        let setter = {
            let flag = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                flag.store(2, Ordering::Relaxed);
            })
        };
        let started = Instant::now();
        let r = run(&hook("sleep 30", 60), &[], &flag);
        setter.join().unwrap();
        assert_eq!((r.ok, r.status.as_str()), (false, "stopped: bakare was interrupted"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn output_and_status_are_kept() {
        let r = run(&hook("echo one; echo two >&2; echo $BAKARE_X; exit 3", 10), &[("BAKARE_X", "x".into())], &calm());
        assert_eq!((r.ok, r.status.as_str()), (false, "exit 3"));
        assert_eq!(r.output, ["one", "two", "x"]);
        assert!(run(&hook("true", 10), &[], &calm()).ok);
    }

    #[test]
    fn a_hook_that_hangs_is_killed_with_what_it_started() {
        let started = Instant::now();
        let r = run(&hook("sleep 30 & echo started; sleep 30", 1), &[], &calm());
        assert!(!r.ok);
        assert!(r.status.contains("timed out"), "{}", r.status);
        assert_eq!(r.output, ["started"]);
        assert!(started.elapsed() < Duration::from_secs(10), "the background sleep held the pipe open");
    }

    #[test]
    fn output_is_bounded() {
        let r = run(&hook("head -c 200000 /dev/zero | tr '\\0' 'a'", 10), &[], &calm());
        assert!(r.ok);
        assert_eq!(r.output.len(), 2);
        assert_eq!(r.output[0].len(), KEPT_OUTPUT);
        assert!(r.output[1].contains(&format!("{} more bytes", 200_000 - KEPT_OUTPUT)));
    }
}
