//! The side-by-side benchmark: bakare against restic, borg, bupstash and rustic (those
//! installed) on one tree, in one run. Each tool, in turn, on a private copy of the tree:
//! init, first backup, no-change backup, backup after a 2 % mutation, full restore. Each step
//! is one whole process: its wall time, its peak RSS (from `wait4`) and the repository's size
//! after it. Ratios are against the fastest peer of the same step.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// One step of one tool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub tool: String,
    pub step: String,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
    pub repo_mib: f64,
    pub ok: bool,
}

/// The tools this benchmark knows, in the order it runs them.
pub const TOOLS: &[&str] = &["bakare", "restic", "rustic", "borg", "bupstash"];

/// Where to find each tool: bakare's binary is given, the others are looked up on PATH.
#[derive(Debug, Clone)]
pub struct Setup {
    pub bakare: PathBuf,
    pub work: PathBuf,
    pub tools: Vec<String>,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

impl Setup {
    /// The tool's binary, or `None` when it is not installed.
    pub fn binary(&self, tool: &str) -> Option<PathBuf> {
        if tool == "bakare" { self.bakare.is_file().then(|| self.bakare.clone()) } else { on_path(tool) }
    }
}

/// Runs `cmd` to the end; its wall time and peak RSS in KiB. Output goes to `log`.
pub fn measure(cmd: &mut Command, log: &Path) -> io::Result<(f64, u64, bool)> {
    let out = fs::File::create(log)?;
    let err = out.try_clone()?;
    let start = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
    let (status, rss_kib) = wait_rusage(child.id())?;
    // The child was reaped by wait4; forget it without a second wait.
    std::mem::forget(child);
    Ok((start.elapsed().as_secs_f64(), rss_kib, status == 0))
}

/// `wait4(pid)`: the exit status (0 for success) and the peak RSS of that one process.
#[allow(unsafe_code)]
fn wait_rusage(pid: u32) -> io::Result<(i32, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data that wait4 fills in; both pointers are valid for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Ok((code, usage.ru_maxrss.max(0) as u64))
}

/// Disk use of a folder (allocated blocks), in MiB.
pub fn disk_mib(dir: &Path) -> f64 {
    let Ok(entries) = crate::tree::walk(dir) else { return 0.0 };
    let blocks: u64 = entries.iter().filter_map(|(p, _)| fs::symlink_metadata(p).ok()).map(|m| m.blocks()).sum();
    blocks as f64 * 512.0 / (1 << 20) as f64
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The commands of one tool's steps: (step, argv), with `{repo}`, `{data}`, `{out}` and
/// `{snap}` (the step's number, for tools that name archives) to fill in.
fn steps(tool: &str) -> Vec<(&'static str, Vec<&'static str>)> {
    match tool {
        "bakare" => vec![
            ("init", vec!["init", "-q", "--repo", "{repo}"]),
            ("backup", vec!["backup", "-q", "--repo", "{repo}", "{data}"]),
            ("restore", vec!["restore", "-q", "--repo", "{repo}", "latest", "--target", "{out}"]),
        ],
        "restic" | "rustic" => vec![
            ("init", vec!["init", "--repo", "{repo}"]),
            ("backup", vec!["backup", "--repo", "{repo}", "{data}"]),
            ("restore", vec!["restore", "--repo", "{repo}", "latest", "--target", "{out}"]),
        ],
        "borg" => vec![
            ("init", vec!["init", "--encryption=repokey-blake2", "{repo}"]),
            ("backup", vec!["create", "--compression", "zstd,3", "{repo}::a{snap}", "{data}"]),
            ("restore", vec!["extract", "{repo}::a{snap}"]),
        ],
        "bupstash" => vec![
            ("init", vec!["init", "-r", "{repo}"]),
            ("backup", vec!["put", "-r", "{repo}", "-k", "{key}", "{data}"]),
            ("restore", vec!["restore", "-r", "{repo}", "-k", "{key}", "--into", "{out}", "id={id}"]),
        ],
        _ => Vec::new(),
    }
}

struct ToolRun<'a> {
    setup: &'a Setup,
    tool: String,
    bin: PathBuf,
    repo: PathBuf,
    data: PathBuf,
    out: PathBuf,
    snap: u32,
    rows: Vec<Row>,
}

impl ToolRun<'_> {
    fn command(&self, argv: &[&str]) -> Command {
        let key = self.setup.work.join("bupstash.key");
        let id = self.bupstash_last_id().unwrap_or_default();
        let mut c = Command::new(&self.bin);
        for a in argv {
            let a = a
                .replace("{repo}", &self.repo.to_string_lossy())
                .replace("{data}", &self.data.to_string_lossy())
                .replace("{out}", &self.out.to_string_lossy())
                .replace("{snap}", &self.snap.to_string())
                .replace("{key}", &key.to_string_lossy())
                .replace("{id}", &id);
            c.arg(a);
        }
        c.env("RESTIC_PASSWORD", "bench").env("RUSTIC_PASSWORD", "bench");
        c.env("BORG_PASSPHRASE", "bench").env("BAKARE_PASSPHRASE", "bench");
        c.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes").env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
        c.env("BAKARE_CACHE_DIR", self.setup.work.join("bakare.cache"));
        c.current_dir(&self.out);
        c
    }

    fn bupstash_last_id(&self) -> Option<String> {
        if self.tool != "bupstash" || self.snap == 0 {
            return None;
        }
        let out = Command::new(&self.bin)
            .args(["list", "-r"])
            .arg(&self.repo)
            .arg("-k")
            .arg(self.setup.work.join("bupstash.key"))
            .args(["--format", "jsonl1"])
            .output()
            .ok()?;
        let last = String::from_utf8_lossy(&out.stdout).lines().last()?.to_string();
        let v: serde_json::Value = serde_json::from_str(&last).ok()?;
        v.get("id")?.as_str().map(str::to_string)
    }

    fn step(&mut self, name: &str, argv: &[&str]) -> io::Result<()> {
        drop_caches();
        let log = self.setup.work.join(format!("{}.{name}.log", self.tool));
        let (wall_s, rss, ok) = measure(&mut self.command(argv), &log)?;
        let row = Row {
            tool: self.tool.clone(),
            step: name.to_string(),
            wall_s,
            peak_rss_mib: rss as f64 / 1024.0,
            repo_mib: disk_mib(&self.repo),
            ok,
        };
        eprintln!("{}", format_row(&row, None));
        self.rows.push(row);
        Ok(())
    }
}

/// Runs every installed tool of `setup.tools` over a copy of `source`.
pub fn run(setup: &Setup, source: &Path, mutate_seed: u64) -> io::Result<Vec<Row>> {
    fs::create_dir_all(&setup.work)?;
    let mut rows = Vec::new();
    for tool in &setup.tools {
        let Some(bin) = setup.binary(tool) else {
            eprintln!("{tool}: not installed, skipped");
            continue;
        };
        let base = setup.work.join(tool);
        let mut r = ToolRun {
            setup,
            tool: tool.clone(),
            bin,
            repo: base.with_extension("repo"),
            data: base.with_extension("data"),
            out: base.with_extension("restore"),
            snap: 0,
            rows: Vec::new(),
        };
        for p in [&r.repo, &r.data, &r.out, &setup.work.join("bakare.cache")] {
            let _ = fs::remove_dir_all(p);
        }
        let _ = fs::remove_file(setup.work.join("bupstash.key"));
        fs::create_dir_all(&r.out)?;
        let copied = Command::new("cp").arg("-a").arg(source).arg(&r.data).status()?;
        if !copied.success() {
            return Err(io::Error::other(format!("cp -a {} failed", source.display())));
        }
        let s = steps(tool);
        let argv = |n: &str| s.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()).unwrap_or_default();
        let mut init = r.command(&argv("init"));
        let _ = init.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        if tool == "bupstash" {
            let _ = r.command(&["new-key", "-o", "{key}"]).stderr(Stdio::null()).status()?;
        }
        for (step, mutate) in [("first", false), ("nochange", false), ("changed", true)] {
            if mutate {
                crate::mutate(&r.data, 2, mutate_seed, false)?;
            }
            r.snap += 1;
            r.step(step, &argv("backup"))?;
        }
        r.step("restore", &argv("restore"))?;
        rows.append(&mut r.rows);
        for p in [&r.data, &r.out] {
            let _ = fs::remove_dir_all(p);
        }
    }
    Ok(rows)
}

/// The fastest successful wall time of each step over the peers (every tool but bakare).
pub fn fastest_peer(rows: &[Row]) -> BTreeMap<String, f64> {
    let mut best: BTreeMap<String, f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.tool != "bakare" && r.ok) {
        let e = best.entry(r.step.clone()).or_insert(f64::INFINITY);
        *e = e.min(r.wall_s);
    }
    best
}

pub fn format_row(r: &Row, fastest: Option<f64>) -> String {
    let ratio = fastest.map(|f| format!("{:6.2}x", r.wall_s / f.max(1e-9))).unwrap_or_else(|| "      -".into());
    format!(
        "{:<9} {:<9} {:8.2} s {:8.1} MiB rss {:9.1} MiB repo  {ratio} of fastest peer  {}",
        r.tool,
        r.step,
        r.wall_s,
        r.peak_rss_mib,
        r.repo_mib,
        if r.ok { "ok" } else { "FAILED" }
    )
}

/// The table, one row per tool and step, with each row's ratio to the fastest peer.
pub fn table(rows: &[Row]) -> String {
    let best = fastest_peer(rows);
    rows.iter().map(|r| format_row(r, best.get(&r.step).copied()) + "\n").collect()
}

/// An SVG of the table: for each measure (wall time, peak RSS, repository size), one group
/// of bars per step, one bar per tool.
pub fn svg(rows: &[Row], title: &str) -> String {
    let tools: Vec<&str> = {
        let mut t: Vec<&str> = Vec::new();
        rows.iter().for_each(|r| {
            if !t.contains(&r.tool.as_str()) {
                t.push(&r.tool)
            }
        });
        t
    };
    let steps: Vec<&str> = {
        let mut s: Vec<&str> = Vec::new();
        rows.iter().for_each(|r| {
            if !s.contains(&r.step.as_str()) {
                s.push(&r.step)
            }
        });
        s
    };
    let colours = ["#d9480f", "#1971c2", "#2f9e44", "#7048e8", "#e8590c", "#495057"];
    type Measure = fn(&Row) -> f64;
    let panels: [(&str, Measure); 3] =
        [("wall time (s)", |r| r.wall_s), ("peak RSS (MiB)", |r| r.peak_rss_mib), ("repository (MiB)", |r| r.repo_mib)];
    let (pw, ph, bar) = (560.0, 220.0, 14.0);
    let height = 60.0 + panels.len() as f64 * (ph + 50.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\">{}</text>\n",
        escape(title),
        w = pw + 180.0
    );
    for (i, t) in tools.iter().enumerate() {
        let x = 10.0 + i as f64 * 100.0;
        s += &format!(
            "<rect x=\"{x}\" y=\"32\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"41\">{}</text>\n",
            colours[i % colours.len()],
            x + 14.0,
            escape(t)
        );
    }
    for (p, (label, measure)) in panels.iter().enumerate() {
        let top = 60.0 + p as f64 * (ph + 50.0);
        let max = rows.iter().map(measure).fold(0.0f64, f64::max).max(1e-9);
        s += &format!("<text x=\"10\" y=\"{}\" font-weight=\"bold\">{label}</text>\n", top + 14.0);
        let group = pw / steps.len().max(1) as f64;
        for (si, step) in steps.iter().enumerate() {
            let gx = 60.0 + si as f64 * group;
            s += &format!("<text x=\"{}\" y=\"{}\">{}</text>\n", gx, top + ph + 16.0, escape(step));
            for (ti, tool) in tools.iter().enumerate() {
                let Some(r) = rows.iter().find(|r| r.tool == *tool && r.step == *step) else { continue };
                let v = measure(r);
                let h = (v / max) * (ph - 30.0);
                let x = gx + ti as f64 * (bar + 2.0);
                let y = top + ph - h;
                s += &format!(
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {v:.2}</title></rect>\n",
                    colours[ti % colours.len()],
                    escape(tool),
                    escape(step)
                );
                s += &format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" transform=\"rotate(-90 {:.1} {:.1})\">{v:.1}</text>\n",
                    x + 10.0,
                    y - 3.0,
                    x + 10.0,
                    y - 3.0
                );
            }
        }
        s += &format!("<line x1=\"55\" y1=\"{b}\" x2=\"{}\" y2=\"{b}\" stroke=\"black\"/>\n", 60.0 + pw, b = top + ph);
    }
    s + "</svg>\n"
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &str, step: &str, wall: f64) -> Row {
        Row { tool: tool.into(), step: step.into(), wall_s: wall, peak_rss_mib: 10.0, repo_mib: 5.0, ok: true }
    }

    #[test]
    fn ratios_are_against_the_fastest_successful_peer() {
        let mut failed = row("borg", "first", 0.1);
        failed.ok = false;
        let rows = vec![row("bakare", "first", 2.0), row("restic", "first", 4.0), row("rustic", "first", 3.0), failed];
        assert_eq!(fastest_peer(&rows).get("first"), Some(&3.0));
        let t = table(&rows);
        assert!(t.lines().next().unwrap().contains("  0.67x of fastest peer"), "{t}");
    }

    #[test]
    fn the_plot_has_a_bar_per_row_and_measure() {
        let rows = vec![row("bakare", "first", 2.0), row("restic", "first", 4.0), row("restic", "restore", 1.0)];
        let s = svg(&rows, "a <tree>");
        assert_eq!(s.matches("<rect x=").count() - 2, rows.len() * 3, "legend plus one bar per row per panel");
        assert!(s.contains("a &lt;tree&gt;"));
    }

    #[test]
    fn measure_reports_the_childs_own_peak_and_status() {
        let tmp = crate::tree::tests::tempdir();
        fs::create_dir_all(&tmp).unwrap();
        let log = tmp.join("log");
        let (_, small, ok) = measure(Command::new("true").arg("x"), &log).unwrap();
        assert!(ok);
        // A process that touches 64 MiB peaks higher than `true` does.
        let (_, _, ok) =
            measure(Command::new("sh").args(["-c", "head -c 67108864 /dev/zero | tail -c 1 >/dev/null; exit 3"]), &log)
                .unwrap();
        assert!(!ok);
        let (_, py, _) =
            measure(Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]), &log).unwrap();
        assert!(py > small + 32 * 1024, "dd with a 64 MiB buffer peaks at {py} KiB, true at {small} KiB");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
