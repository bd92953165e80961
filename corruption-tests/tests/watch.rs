//! `bakare watch` against the truth. A real daemon watches a generated tree while thousands
//! of seeded operations change it (files created, written, appended, truncated, renamed within
//! and across folders, deleted, hard-linked, chmod-ed, chown-ed, given xattrs and touched;
//! deep folders made, moved and removed; a burst that overflows the kernel's event queue; the daemon killed with
//! SIGKILL and started again; writes through mmap). After every batch, a backup that lists
//! only what the watcher reported must give the root tree a walk of every folder
//! (`--walk-all`) gives, and the walk of every folder must name no folder the watcher
//! missed, except after a write through mmap, which produces no event: then it must name
//! that file's folder.
//!
//! Needs root (fanotify filesystem marks); skips with a message without. `WATCH_ROUNDS` sets
//! the number of batches (40 in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bakare_corruption_tests::{Cli, Rng, gen_tree, ok, signal};

/// The tests here run one at a time: a watcher sees its whole filesystem, and one test's
/// bursts could overflow another's queue.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `bakare watch` process on `src`, with the cache folder of the `Cli`'s default host.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(cli: &Cli, src: &Path) -> Self {
        Self::start_on(cli, &[src])
    }

    fn start_on(cli: &Cli, roots: &[&Path]) -> Self {
        let mut args = vec!["watch"];
        args.extend(roots.iter().map(|r| r.to_str().unwrap()));
        let mut cmd = cli.cmd(&args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap();
        let started = Instant::now();
        while !cli.run(&["watch", "--status"]).status.success() {
            assert!(started.elapsed() < Duration::from_secs(20), "the watcher did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tree of `files` files (`mean_kib` on average) made from `seed` in a new temporary
/// folder, and a repository beside it.
fn fixture(files: u32, mean_kib: u32, seed: u32) -> (tempfile::TempDir, PathBuf, Cli) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    gen_tree(&src, files, mean_kib, seed);
    let cli = Cli::new(tmp.path().join("run"));
    cli.init();
    (tmp, src, cli)
}

/// This test's turn, if watching can work here (root); else a message and `None`.
fn watching() -> Option<std::sync::MutexGuard<'static, ()>> {
    let turn = serial();
    can_watch().then_some(turn)
}

fn can_watch() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: `bakare watch` needs root (fanotify filesystem marks)");
        return false;
    }
    true
}

/// Every folder and file under `root` (not `root` itself), in walk order; files with other
/// names (hard links) only with `linked`.
fn listing(root: &Path, linked: bool) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    dirs.push(p.clone());
                    stack.push(p);
                }
                Ok(m) if m.is_file() && (linked || std::os::unix::fs::MetadataExt::nlink(&m) == 1) => files.push(p),
                _ => {}
            }
        }
    }
    (dirs, files)
}

fn pick<'a>(rng: &mut Rng, v: &'a [PathBuf]) -> Option<&'a PathBuf> {
    if v.is_empty() { None } else { v.get(rng.below(v.len())) }
}

fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.below(max + 1);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// One random operation; whether it changed anything.
fn operate(rng: &mut Rng, src: &Path, dirs: &[PathBuf], files: &[PathBuf], counter: &mut u64, links: bool) -> bool {
    *counter += 1;
    let n = *counter;
    let mut all_dirs = vec![src.to_path_buf()];
    all_dirs.extend_from_slice(dirs);
    let dir = pick(rng, &all_dirs).cloned().unwrap();
    let file = pick(rng, files).cloned();
    let r: std::io::Result<()> = match rng.below(18) {
        8 if !links => fs::write(dir.join(format!("new{n}")), bytes(rng, 100)),
        0 | 1 => fs::write(dir.join(format!("new{n}")), bytes(rng, 6000)),
        2 => file.map_or(Ok(()), |f| fs::write(f, bytes(rng, 6000))),
        3 => file.map_or(Ok(()), |f| {
            use std::io::Write;
            fs::OpenOptions::new().append(true).open(f)?.write_all(&bytes(rng, 500))
        }),
        4 => file.map_or(Ok(()), |f| fs::OpenOptions::new().write(true).open(f)?.set_len(rng.below(100) as u64)),
        5 => file.map_or(Ok(()), |f| fs::rename(&f, f.with_file_name(format!("renamed{n}")))),
        6 => file.map_or(Ok(()), |f| fs::rename(&f, dir.join(format!("moved{n}")))),
        7 => file.map_or(Ok(()), fs::remove_file),
        8 => file.map_or(Ok(()), |f| fs::hard_link(&f, dir.join(format!("link{n}")))),
        9 => file.map_or(Ok(()), |f| fs::set_permissions(f, fs::Permissions::from_mode(0o600 + rng.below(64) as u32))),
        10 => file.map_or(Ok(()), |f| {
            let t = filetime::FileTime::from_unix_time(1_600_000_000 + rng.below(1_000_000) as i64, 0);
            filetime::set_file_mtime(f, t)
        }),
        11 => {
            // A deep new folder with a file at each level.
            let mut d = dir.join(format!("deep{n}"));
            let mut r = Ok(());
            for level in 0..1 + rng.below(5) {
                r = r.and_then(|()| fs::create_dir(&d)).and_then(|()| fs::write(d.join(format!("f{level}")), b"x"));
                d = d.join(format!("d{level}"));
            }
            r
        }
        12 => match pick(rng, dirs) {
            Some(d) if rng.below(3) == 0 => fs::remove_dir_all(d),
            _ => Ok(()),
        },
        13 => match pick(rng, dirs) {
            // Within its parent, or to another folder (not below itself).
            Some(d) if !dir.starts_with(d) => fs::rename(d, dir.join(format!("mvdir{n}"))),
            _ => Ok(()),
        },
        14 => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700 + rng.below(0o77) as u32)),
        // An owner or an extended attribute changed, on a file or a folder: only the ctime
        // says so, and the entry's record must follow.
        15 => {
            let target = if rng.below(2) == 0 { file.unwrap_or(dir) } else { dir };
            let id = 1000 + rng.below(5) as u32;
            rustix::fs::chown(&target, Some(rustix::fs::Uid::from_raw(id)), Some(rustix::fs::Gid::from_raw(id)))
                .map_err(std::io::Error::from)
        }
        16 => {
            let target = if rng.below(2) == 0 { file.unwrap_or(dir) } else { dir };
            let value = format!("v{}", rng.below(1000));
            rustix::fs::setxattr(&target, "user.bakare-test", value.as_bytes(), rustix::fs::XattrFlags::empty())
                .map_err(std::io::Error::from)
        }
        _ => std::os::unix::fs::symlink(format!("../target{n}"), dir.join(format!("sym{n}"))),
    };
    r.is_ok()
}

/// A file mapped shared and kept open, as a database keeps its files: a write through the
/// mapping makes no event, and neither does anything until the file is closed.
struct Mapped {
    folder: PathBuf,
    ptr: *mut std::ffi::c_void,
    len: usize,
    _file: fs::File,
}

impl Mapped {
    fn new(file: &Path) -> Option<Self> {
        let f = fs::OpenOptions::new().read(true).write(true).open(file).ok()?;
        let len = f.metadata().ok()?.len() as usize;
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh shared mapping of a file this test owns; only `write` touches it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &f,
                0,
            )
        }
        .ok()?;
        Some(Self { folder: file.parent()?.to_path_buf(), ptr, len, _file: f })
    }

    /// Changes the first byte through the mapping, and writes it back.
    fn write(&self) {
        // SAFETY: the mapping is `len` > 0 bytes, readable and writable, and lives while
        // `self` does.
        unsafe {
            let b = self.ptr.cast::<u8>();
            b.write(b.read().wrapping_add(1));
            let _ = rustix::mm::msync(self.ptr, self.len, rustix::mm::MsyncFlags::SYNC);
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// The tree id of folder `path` in the snapshot with root tree `root`.
fn tree_of(cli: &Cli, root: &str, path: &Path) -> String {
    let mut id = root.to_string();
    for name in path.components().skip(1) {
        let out = cli.run(&["cat", "tree", &id]);
        ok(&out, "cat tree");
        let tree: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let entry =
            tree["entries"].as_array().unwrap().iter().find(|e| e["name"] == name.as_os_str().to_str().unwrap());
        id = entry.unwrap()["node"]["tree"].as_str().unwrap().to_string();
    }
    id
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.contains("\"summary\"")).unwrap_or_else(|| {
        panic!("no summary: {text} {}", String::from_utf8_lossy(&out.stderr));
    });
    serde_json::from_str(line).unwrap()
}

#[test]
fn backups_of_changed_folders_equal_walks_of_every_folder() {
    let Some(_serial) = watching() else { return };
    let rounds: u64 = std::env::var("WATCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let (tmp, src, cli) = fixture(800, 4, 17);
    let mut daemon = Some(Daemon::start(&cli, &src));
    let s = src.to_str().unwrap();
    let first = summary(&cli.run(&["--json", "backup", s]));
    assert!(first["full_walk_because"].as_str().unwrap().contains("first backup"), "{first}");
    let mut rng = Rng::new(0x5EED);
    let mut bursts = 0u64;
    let (mut mapped, mut kept): (Option<Mapped>, Vec<Mapped>) = (None, Vec::new());
    let (mut ops, mut counter, mut changed_runs, mut full_runs, mut mmaps, mut flagged) = (0u64, 0u64, 0, 0, 0, 0);
    let mut reasons = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..rounds {
        // A change to a file with other names makes a backup walk everything (their folders
        // changed too, unnamed): hard links are made and changed in one round of ten.
        let links = round % 10 == 4;
        let (dirs, files) = listing(&src, links);
        let mut mmapped = None;
        let mut expect_break = false;
        match round % 10 {
            3 => {
                // The daemon killed and started again: events in between are lost.
                if let Some(d) = daemon.take() {
                    d.kill();
                }
                for _ in 0..20 {
                    ops += u64::from(operate(&mut rng, &src, &dirs, &files, &mut counter, false));
                }
                daemon = Some(Daemon::start(&cli, &src));
                expect_break = true;
            }
            6 => {
                // A burst the stopped daemon cannot read: the kernel's queue overflows.
                let d = daemon.as_ref().unwrap();
                assert!(signal(&d.child, "-STOP"));
                let burst = src.join(format!("burst{round}"));
                fs::create_dir(&burst).unwrap();
                for i in 0..12_000 {
                    fs::write(burst.join(i.to_string()), b"").unwrap();
                }
                bursts += 12_000;
                assert!(signal(&d.child, "-CONT"));
                expect_break = true;
            }
            8 => {
                if let Some(m) = mapped.take() {
                    m.write();
                    ops += 1;
                    mmaps += 1;
                    mmapped = Some(m.folder.clone());
                    // Kept open (and so silent) until the test ends.
                    kept.push(m);
                }
            }
            _ => {
                for _ in 0..if round % 2 == 0 { 60 } else { 6 } {
                    let (dirs, files) =
                        if rng.below(8) == 0 { listing(&src, links) } else { (dirs.clone(), files.clone()) };
                    ops += u64::from(operate(&mut rng, &src, &dirs, &files, &mut counter, links));
                }
            }
        }
        if round % 10 == 7 {
            // Mapped before this round's backups; written through in the next round.
            // Not in the burst's folder, which goes below (a write to a deleted file changes
            // nothing a backup sees).
            let burst = |f: &Path| {
                f.strip_prefix(&src)
                    .ok()
                    .and_then(|r| r.iter().next())
                    .is_some_and(|c| c.to_string_lossy().starts_with("burst"))
            };
            mapped = files.iter().rev().filter(|f| !burst(f)).find_map(|f| Mapped::new(f));
            // The burst's folder goes again.
            for entry in fs::read_dir(&src).unwrap() {
                let p = entry.unwrap().path();
                if p.file_name().unwrap().to_string_lossy().starts_with("burst") {
                    fs::remove_dir_all(p).unwrap();
                }
            }
        }
        let fast = summary(&cli.run(&["--json", "backup", s]));
        let walked = summary(&cli.run(&["--json", "backup", "--walk-all", s]));
        match fast["full_walk_because"].as_str() {
            None => changed_runs += 1,
            Some(why) => {
                full_runs += 1;
                *reasons.entry(why.to_string()).or_default() += 1;
            }
        }
        if expect_break {
            let why = fast["full_walk_because"].as_str().unwrap_or_default();
            assert!(why.contains("restarted or may have missed events"), "round {round}: {fast}");
        }
        let misses: Vec<&str> =
            walked["watcher_misses"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        // The folder holding the source: its tree holds the source's own metadata, and what
        // is above it changes with the machine (other programs' files in /tmp).
        let (a, b) = (
            tree_of(&cli, fast["tree"].as_str().unwrap(), tmp.path()),
            tree_of(&cli, walked["tree"].as_str().unwrap(), tmp.path()),
        );
        match &mmapped {
            Some(folder) if a != b => {
                // Only the verification walk sees a write through mmap, and it says where.
                assert!(misses.contains(&folder.to_str().unwrap()), "round {round}: {misses:?}, expected {folder:?}");
                flagged += 1;
            }
            _ => {
                if a != b {
                    let (a, b) = (fast["snapshot"].as_str().unwrap(), walked["snapshot"].as_str().unwrap());
                    let diff = cli.run(&["diff", a, b]);
                    panic!("round {round}: {fast}\n{walked}\n{}", String::from_utf8_lossy(&diff.stdout));
                }
                assert!(misses.is_empty(), "round {round}: misses {misses:?}");
            }
        }
    }
    println!(
        "{ops} operations and {bursts} files created in bursts, in {rounds} rounds: {changed_runs} backups listed only changed folders, {full_runs} \
         walked everything ({reasons:?}); {mmaps} writes through mmap, {flagged} found and named by the \
         verification walk; 0 misses otherwise"
    );
    // The watcher must actually be used (a harness where every run walks proves nothing).
    assert!(changed_runs * 3 >= rounds, "{changed_runs} of {rounds}");
    assert!(flagged > 0, "no write through mmap was seen by the verification walk");
    ok(&cli.run(&["verify"]), "verify");
}

/// A watched backup asks the filesystem only about the entries events named: every other
/// entry of a changed folder is written from its memo record. A folder's own entry changed
/// (chmod, chown, an xattr: an event naming it in its parent, none below it) must reach its
/// record, or a later backup that lists the parent for another reason writes the old one.
#[test]
fn entries_no_event_named_are_written_from_the_memo_as_they_are() {
    let Some(_serial) = watching() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (parent, child) = (src.join("p"), src.join("p/d"));
    fs::create_dir_all(&child).unwrap();
    for i in 0..50 {
        fs::write(parent.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    fs::write(child.join("inside"), b"x").unwrap();
    let cli = Cli::new(tmp.path().join("run"));
    cli.init();
    let _daemon = Daemon::start(&cli, &src);
    let s = src.to_str().unwrap();
    let backup = |args: &[&str]| summary(&cli.run(&[&["--json", "backup"], args, &[s]].concat()));
    backup(&[]);
    let same_as_walk = |fast: &serde_json::Value, step: &str| {
        assert_eq!(fast["full_walk_because"], serde_json::Value::Null, "{step}: {fast}");
        let walked = backup(&["--walk-all"]);
        let (a, b) = (fast["tree"].as_str().unwrap(), walked["tree"].as_str().unwrap());
        assert_eq!(tree_of(&cli, a, tmp.path()), tree_of(&cli, b, tmp.path()), "{step}: {fast}\n{walked}");
    };
    let steps: [(&str, &dyn Fn()); 3] = [
        ("chmod", &|| fs::set_permissions(&child, fs::Permissions::from_mode(0o711)).unwrap()),
        ("chown", &|| {
            let id = Some(rustix::fs::Uid::from_raw(4321));
            rustix::fs::chown(&child, id, Some(rustix::fs::Gid::from_raw(4321))).unwrap();
        }),
        ("xattr", &|| {
            rustix::fs::setxattr(&child, "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
        }),
    ];
    for (i, (step, change)) in steps.iter().enumerate() {
        change();
        same_as_walk(&backup(&[]), step);
        // The parent listed again for a new file beside the folder: the folder itself is
        // named by no event now, and its entry comes from its record.
        fs::write(parent.join(format!("new{i}")), b"n").unwrap();
        same_as_walk(&backup(&[]), &format!("after {step}"));
    }
}

/// Without root there are no fanotify filesystem marks: `bakare watch` says so and stops, and
/// backups walk every folder, as they do without a watcher.
#[test]
fn without_root_the_watcher_says_why_and_backups_walk_everything() {
    let _serial = serial();
    let root = rustix::process::geteuid().is_root();
    if root && !bakare_corruption_tests::on_path("setpriv") {
        eprintln!("skipping: no setpriv to drop root with");
        return;
    }
    let (tmp, src, cli) = fixture(50, 2, 3);
    // Everything the unprivileged user touches is theirs.
    if root {
        for p in [tmp.path().to_path_buf(), cli.dir.clone()] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        }
        ok(&std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(tmp.path()).output().unwrap(), "chown");
    }
    let as_user = |args: &[&str]| {
        let mut c = cli.cmd(args);
        if root {
            let program = c.get_program().to_owned();
            let argv: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
            let envs: Vec<_> = c.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
            let mut d = std::process::Command::new("setpriv");
            d.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(program).args(argv);
            for (k, v) in envs {
                if let Some(v) = v {
                    d.env(k, v);
                }
            }
            c = d;
        }
        c.output().unwrap()
    };
    let s = src.to_str().unwrap();
    let watch = as_user(&["watch", s]);
    assert!(!watch.status.success());
    let msg = String::from_utf8_lossy(&watch.stderr);
    assert!(msg.contains("needs fanotify filesystem marks (root"), "{msg}");
    assert!(msg.contains("walks the whole tree"), "{msg}");
    for _ in 0..2 {
        let out = as_user(&["--json", "backup", s]);
        ok(&out, "backup without a watcher");
        let sum = summary(&out);
        assert!(sum["full_walk_because"].as_str().unwrap().contains("no watcher"), "{sum}");
    }
    let status = as_user(&["watch", "--status"]);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stdout).contains("no watcher is running"));
}

/// Two watched folders on one filesystem through two mounts (a bind mount): a handle opened
/// through one mount reads back as a path within that mount only, so each event's folder is
/// read back through every marked mount. With one mount per filesystem, the changes under
/// one of the folders were dropped as outside both.
#[test]
fn folders_on_one_filesystem_through_two_mounts_are_both_watched() {
    let Some(_serial) = watching() else { return };
    if !bakare_corruption_tests::on_path("mount") {
        eprintln!("skipping: no mount to bind-mount with");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, other, bind) = (tmp.path().join("src"), tmp.path().join("other"), tmp.path().join("bind"));
    gen_tree(&src, 40, 1, 5);
    gen_tree(&other, 40, 1, 6);
    fs::create_dir(&bind).unwrap();
    ok(&std::process::Command::new("mount").arg("--bind").arg(&other).arg(&bind).output().unwrap(), "mount --bind");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(bind.clone());
    let cli = Cli::new(tmp.path().join("run"));
    cli.init();
    let _daemon = Daemon::start_on(&cli, &[&src, &bind]);
    for root in [&src, &bind] {
        let r = root.to_str().unwrap();
        ok(&cli.run(&["backup", "-q", r]), "first backup");
        let (_, files) = listing(root, false);
        fs::write(&files[files.len() / 2], b"changed").unwrap();
        let fast = summary(&cli.run(&["--json", "backup", r]));
        assert_eq!(fast["changed_folders"].as_u64(), Some(1), "{root:?}: {fast}");
        let walked = summary(&cli.run(&["--json", "backup", "--walk-all", r]));
        // Compared below /tmp, which other programs change.
        let tree = |s: &serde_json::Value| tree_of(&cli, s["tree"].as_str().unwrap(), tmp.path());
        assert_eq!(tree(&fast), tree(&walked), "{root:?}");
        assert_eq!(walked["watcher_misses"].as_array().map(Vec::len), Some(0), "{walked}");
    }
}

/// The daemon's own database is in a watched folder here (as `bakare watch ~` with the cache
/// in `~/.cache`): its writes must not wake it again, or it would never rest.
#[test]
fn an_idle_watcher_stays_idle_even_when_it_watches_its_own_files() {
    let Some(_serial) = watching() else { return };
    let (tmp, src, cli) = fixture(30, 1, 9);
    let _daemon = Daemon::start(&cli, tmp.path());
    ok(&cli.run(&["backup", "-q", src.to_str().unwrap()]), "backup");
    fs::write(src.join("one more"), b"x").unwrap();
    let generation = || {
        let out = cli.run(&["--json", "watch", "--status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["generation"].as_u64().unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = generation();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(generation(), before, "the watcher kept recording while nothing changed");
}

/// `watch --continuous`: each change is backed up once it settles, by the same crash-safe
/// backup as any other; the daemon killed with SIGKILL in the middle of one leaves a valid
/// repository, and the next start backs the change up.
#[test]
fn continuous_mode_backs_up_changes_and_survives_kill_9() {
    let Some(_serial) = watching() else { return };
    let (_tmp, src, cli) = fixture(200, 2, 21);
    let s = src.to_str().unwrap();
    let count = || {
        let out = cli.run(&["--json", "snapshots"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).map_or(0, |v| v.as_array().map_or(0, Vec::len))
    };
    let wait_for = |n: usize, what: &str| {
        let t = Instant::now();
        while count() < n {
            assert!(t.elapsed() < Duration::from_secs(120), "{what}: no snapshot {n} after 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        t.elapsed()
    };
    let start = || {
        let mut cmd = cli.cmd(&["watch", "--continuous", "--debounce", "1s", s]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd.spawn().unwrap()
    };
    let mut daemon = start();
    wait_for(1, "the first backup");
    let mut latencies = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        fs::write(src.join(format!("edit{i}")), format!("edit {i}")).unwrap();
        wait_for(2 + i, "an edit");
        latencies.push(t.elapsed());
    }
    println!("close() to snapshot with --debounce 1s: {latencies:?}");
    // A larger change, and the daemon killed while it is being backed up.
    gen_tree(&src.join("big"), 1500, 8, 22);
    std::thread::sleep(Duration::from_millis(1300));
    let _ = daemon.kill();
    let _ = daemon.wait();
    ok(&cli.run(&["verify"]), "verify after kill -9");
    let before = count();
    let mut daemon = start();
    wait_for(before + 1, "the backup after the restart");
    let _ = daemon.kill();
    let _ = daemon.wait();
    ok(&cli.run(&["verify", "--read-data"]), "verify --read-data");
    let restored = cli.restored(&format!("latest:{s}"));
    assert_eq!(restored, bakare_corruption_tests::contents(&src), "the last snapshot is the tree");
}
