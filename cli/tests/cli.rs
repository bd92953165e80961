//! The `bakare` binary as users run it: real processes, real files, insta snapshots of what
//! people read (help and error messages).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        // Others (the unprivileged user of the unreadable-file test) must reach the repository.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        Self { tmp }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn cmd(&self) -> Command {
        self.cmd_of(env!("CARGO_BIN_EXE_bakare"))
    }

    fn cmd_of(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("BAKARE_REPOSITORY", self.path("repo"))
            .env("BAKARE_PASSPHRASE", "correct horse")
            .current_dir(self.tmp.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn init(&self) {
        self.ok(&["init", "--kdf-memory-kib", "64", "--kdf-passes", "1"]);
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// stderr with the temporary folder and repository ids replaced, for snapshots.
    fn stderr(&self, out: &Output) -> String {
        let tmp = self.tmp.path().to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&out.stderr).replace(&tmp, "[TMP]");
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| match l.strip_prefix("repository ").and_then(|r| r.split_once(" at ")) {
                Some((id, rest)) if id.len() == 8 => format!("repository [ID] at {rest}"),
                _ => l.to_string(),
            })
            .collect();
        if text.ends_with('\n') {
            lines.push(String::new());
        }
        lines.join("\n")
    }

    /// Runs bakare on a pseudo-terminal (util-linux `script`), as a person at a terminal.
    fn run_on_terminal(&self, args: &str) -> Option<Output> {
        let script = ["/usr/bin/script", "/bin/script"].into_iter().find(|p| Path::new(p).exists())?;
        let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_bakare"));
        let mut c = self.cmd_of(script);
        Some(c.env_remove("BAKARE_REPOSITORY").args(["-qec", &cmd, "/dev/null"]).env("TERM", "dumb").output().unwrap())
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn help_texts() {
    let env = Env::new();
    let commands: [&[&str]; 17] = [
        &[],
        &["init"],
        &["backup"],
        &["resume"],
        &["snapshots"],
        &["ls"],
        &["restore"],
        &["verify"],
        &["find"],
        &["history"],
        &["diff"],
        &["forget"],
        &["prune"],
        &["key", "export"],
        &["cache"],
        &["copy"],
        &["mount"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let name = if cmd.is_empty() { "help".to_string() } else { format!("help_{}", cmd.join("_")) };
        insta::assert_snapshot!(name, env.ok(&args));
    }
}

#[test]
fn backup_restore_round_trip_with_json() {
    let env = Env::new();
    env.init();
    env.write("src/a.txt", b"hello");
    env.write("src/d/b.bin", &vec![7u8; 3 << 20]);
    let out = env.ok(&["--json", "backup", "src"]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["files_new"], 2);
    assert_eq!(summary["bytes_read"], 5 + (3 << 20));
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["--json", "snapshots"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let src = env.path("src").canonicalize().unwrap();
    let listing = env.ok(&["ls", &format!("latest:{}", src.display())]);
    assert_eq!(listing, format!("{0}/a.txt\n{0}/d\n", src.display()));
    env.ok(&["restore", &format!("latest:{}", src.display()), "--target", "out"]);
    assert_eq!(fs::read(env.path("out/a.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(env.path("out/d/b.bin")).unwrap(), vec![7u8; 3 << 20]);
    // A single file restores under its own name.
    env.ok(&["restore", &format!("latest:{}/a.txt", src.display()), "--target", "one"]);
    assert_eq!(fs::read(env.path("one/a.txt")).unwrap(), b"hello");
    // A name of 250 bytes (the temporary name a file is written under must not be longer).
    let long = "x".repeat(250);
    env.write(&format!("long/{long}"), b"long name");
    env.ok(&["backup", "-q", "long"]);
    let long_src = env.path("long").canonicalize().unwrap();
    env.ok(&["restore", &format!("latest:{}", long_src.display()), "--target", "long-out"]);
    assert_eq!(fs::read(env.path("long-out").join(&long)).unwrap(), b"long name");
}

#[test]
fn only_a_person_at_a_terminal_gets_the_default_repository_created() {
    let env = Env::new();
    env.write("src/a.txt", b"hello");
    // No terminal (cron): no repository is created, and the error says how to make one.
    let cron = env.cmd().env_remove("BAKARE_REPOSITORY").args(["backup", "src"]).output().unwrap();
    assert_eq!(code(&cron), 1);
    insta::assert_snapshot!("err_default_repository_without_terminal", env.stderr(&cron));
    assert!(!env.path("xdg-data/bakare/repo").exists(), "nothing created");
    let Some(out) = env.run_on_terminal("backup src") else {
        eprintln!("skipped the terminal half: util-linux `script` is not installed");
        return;
    };
    let said = String::from_utf8_lossy(&out.stdout).replace(env.tmp.path().to_str().unwrap(), "[TMP]");
    assert!(out.status.success(), "{said}");
    assert!(said.contains("no repository yet at [TMP]/xdg-data/bakare/repo: creating one there"), "{said}");
    assert!(said.contains("created repository"), "{said}");
    assert!(env.path("xdg-data/bakare/repo/config").is_file());
    let again = env.run_on_terminal("backup src").unwrap();
    assert!(!String::from_utf8_lossy(&again.stdout).contains("created repository"));
}

#[test]
fn a_mistyped_repository_is_never_created() {
    let env = Env::new();
    env.init();
    env.write("src/a.txt", b"hello");
    // --repo and BAKARE_REPOSITORY name a place: a typo there (or an unmounted disk) fails,
    // even on a terminal.
    let typo = env.run(&["backup", "--repo", "rpeo", "src"]);
    assert_eq!(code(&typo), 1);
    insta::assert_snapshot!("err_repository_typo", env.stderr(&typo));
    let env_typo = env.cmd().env("BAKARE_REPOSITORY", env.path("mnt/backup")).args(["backup", "src"]).output().unwrap();
    assert_eq!(code(&env_typo), 1);
    assert!(!env.path("rpeo").exists() && !env.path("mnt").exists(), "nothing created");
    if let Some(t) = env.run_on_terminal(&format!("backup --repo {} src", env.path("rpeo2").display())) {
        assert!(!t.status.success());
        assert!(!env.path("rpeo2").exists(), "not on a terminal either");
    }
    // Every command says which repository it opened.
    let ok = env.run(&["backup", "src"]);
    assert!(env.stderr(&ok).starts_with("repository [ID] at [TMP]/repo\n"), "{}", env.stderr(&ok));
}

#[test]
fn error_messages() {
    let env = Env::new();
    let not_repo = env.run(&["snapshots"]);
    assert_eq!(code(&not_repo), 1);
    insta::assert_snapshot!("err_not_a_repository", env.stderr(&not_repo));

    env.init();
    let again = env.run(&["init"]);
    insta::assert_snapshot!("err_init_twice", env.stderr(&again));

    let wrong = env.cmd().env("BAKARE_PASSPHRASE", "wrong").args(["snapshots"]).output().unwrap();
    assert_eq!(code(&wrong), 1);
    insta::assert_snapshot!("err_wrong_passphrase", env.stderr(&wrong));

    let missing = env.run(&["backup", "no/such/folder"]);
    assert_eq!(code(&missing), 1);
    insta::assert_snapshot!("err_source_missing", env.stderr(&missing));

    let none = env.run(&["ls", "latest"]);
    insta::assert_snapshot!("err_no_snapshots", env.stderr(&none));

    env.write("src/a", b"a");
    env.ok(&["backup", "src"]);
    let unknown = env.run(&["restore", "deadbeef", "--target", "t"]);
    insta::assert_snapshot!("err_no_such_snapshot", env.stderr(&unknown));
    let bad_back = env.run(&["ls", "latest~5"]);
    insta::assert_snapshot!("err_latest_too_far", env.stderr(&bad_back));

    env.write("full/x", b"x");
    let full = env.run(&["restore", "latest", "--target", "full"]);
    assert_eq!(code(&full), 1);
    insta::assert_snapshot!("err_target_not_empty", env.stderr(&full));
    assert_eq!(fs::read(env.path("full/x")).unwrap(), b"x", "nothing was written");
    env.ok(&["restore", "latest", "--target", "full", "--overwrite"]);

    let no_pass = env.cmd().env_remove("BAKARE_PASSPHRASE").args(["snapshots"]).output().unwrap();
    insta::assert_snapshot!("err_no_passphrase", env.stderr(&no_pass));
}

#[test]
fn ambiguous_snapshot_prefix() {
    let env = Env::new();
    env.init();
    env.write("src/a", b"a");
    // 17 snapshots: two of them must share a first hex digit.
    for i in 0..17 {
        env.ok(&["backup", "src", "--tag", &i.to_string()]);
    }
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["--json", "snapshots"])).unwrap();
    let ids: Vec<String> = snaps.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    let shared = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|p| ids.iter().filter(|id| id.starts_with(p.as_str())).count() > 1)
        .unwrap();
    let out = env.run(&["ls", &shared]);
    assert_eq!(code(&out), 1);
    let msg = env.stderr(&out).replace(&format!("\"{shared}\""), "\"[PREFIX]\"");
    let count = ids.iter().filter(|id| id.starts_with(shared.as_str())).count();
    insta::assert_snapshot!("err_ambiguous_snapshot", msg.replace(&format!("matches {count} "), "matches [N] "));
    // latest~1 is the one before the newest.
    let second = env.ok(&["--json", "ls", "latest~1"]);
    assert!(!second.is_empty());
}

#[test]
fn newer_repository_format_is_refused() {
    let env = Env::new();
    env.init();
    for name in ["config", "config.mirror"] {
        let p = env.path("repo").join(name);
        let mut bytes = fs::read(&p).unwrap();
        bytes[7] = 9;
        fs::write(&p, bytes).unwrap();
    }
    let out = env.run(&["snapshots"]);
    assert_eq!(code(&out), 1);
    insta::assert_snapshot!("err_newer_format", env.stderr(&out));
    let backup = env.run(&["backup", "."]);
    assert_eq!(code(&backup), 1, "a backup must not write into a newer repository");
}

#[test]
fn put_only_key_backs_up_but_reads_nothing() {
    let env = Env::new();
    env.init();
    env.ok(&["key", "export", "--put-only", "put.key"]);
    let mode = fs::metadata(env.path("put.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    env.write("src/a", b"secret content");
    let with_key = |args: &[&str]| {
        env.cmd()
            .env_remove("BAKARE_PASSPHRASE")
            .env("BAKARE_KEY_FILE", env.path("put.key"))
            .args(args)
            .output()
            .unwrap()
    };
    let b = with_key(&["backup", "src"]);
    assert!(b.status.success(), "{}", env.stderr(&b));
    let b2 = with_key(&["--json", "backup", "src"]);
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&b2.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["bytes_read"], 14);
    assert_eq!(summary["files_unchanged"], 1, "deduplicates with only the put-only key");
    for args in [&["snapshots"][..], &["ls", "latest"], &["restore", "latest", "--target", "out"], &["find", "a"]] {
        let out = with_key(args);
        assert_eq!(code(&out), 1, "{args:?}");
        insta::assert_snapshot!(format!("err_put_only_{}", args[0]), env.stderr(&out));
    }
    // The master key reads what the put-only key wrote.
    assert_eq!(env.ok(&["--json", "snapshots"]).matches("\"id\"").count(), 2);
    env.ok(&["restore", "latest", "--target", "out"]);
}

/// Runs bakare as an unprivileged user when the tests run as root (root reads everything).
fn unprivileged(env: &Env) -> Command {
    let is_root = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    let mut c = env.cmd();
    if is_root {
        let bin = env!("CARGO_BIN_EXE_bakare");
        let mut s = Command::new("setpriv");
        s.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.tmp.path())
            .env("BAKARE_REPOSITORY", env.path("repo"))
            .env("BAKARE_PASSPHRASE", "correct horse")
            .current_dir(env.tmp.path());
        c = s;
    }
    c
}

fn chmod_tree(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    if p.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chmod_tree(&e.unwrap().path(), mode);
        }
    }
}

#[test]
fn a_folder_unreadable_at_backup_time_is_not_restored_silently_empty() {
    let env = Env::new();
    env.init();
    env.write("src/ok", b"fine");
    env.write("src/locked/inside", b"secret");
    chmod_tree(&env.path("repo"), 0o777);
    chmod_tree(&env.path("src"), 0o755);
    fs::set_permissions(env.path("src/ok"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(env.path("src/locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = unprivileged(&env).args(["backup", "src"]).output().unwrap();
    assert_eq!(code(&out), 3, "{}", env.stderr(&out));
    let src = env.path("src").canonicalize().unwrap();
    let restored = env.run(&["restore", &format!("latest:{}", src.display()), "--target", "out"]);
    assert_eq!(code(&restored), 4, "{}", env.stderr(&restored));
    let said = env.stderr(&restored);
    assert!(said.contains("not restored completely: out/locked: folder incomplete"), "{said}");
    assert!(said.contains("folder incomplete"), "{said}");
    assert_eq!(fs::read(env.path("out/ok")).unwrap(), b"fine");
}

#[test]
fn an_unreadable_file_is_recorded_and_the_rest_backed_up() {
    let env = Env::new();
    env.init();
    env.write("src/good1", b"one");
    env.write("src/bad", b"cannot read me");
    env.write("src/sub/good2", b"two");
    chmod_tree(&env.path("repo"), 0o777);
    chmod_tree(&env.path("src"), 0o755);
    fs::set_permissions(env.path("src/good1"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(env.path("src/sub/good2"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(env.path("src/bad"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = unprivileged(&env).args(["--json", "backup", "src"]).output().unwrap();
    assert_eq!(code(&out), 3, "{}", env.stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let errors: Vec<_> = lines.iter().filter(|l| l["type"] == "file_error").collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["path"].as_str().unwrap().ends_with("src/bad"));
    assert!(errors[0]["message"].as_str().unwrap().contains("Permission denied"));
    let summary = lines.last().unwrap();
    assert_eq!(summary["errors"], 1);
    assert_eq!(summary["files_new"], 2);
    let src = env.path("src").canonicalize().unwrap();
    let restored = env.run(&["restore", &format!("latest:{}", src.display()), "--target", "out"]);
    // Everything else is restored; what was not is named, and the exit code says so.
    assert_eq!(code(&restored), 4, "{}", env.stderr(&restored));
    assert_eq!(fs::read(env.path("out/good1")).unwrap(), b"one");
    assert_eq!(fs::read(env.path("out/sub/good2")).unwrap(), b"two");
    assert!(!env.path("out/bad").exists());
    let said = env.stderr(&restored);
    insta::assert_snapshot!("restore_incomplete", said);
    let long = env.ok(&["--json", "ls", &format!("latest:{}/bad", src.display())]);
    assert!(long.contains("Permission denied"), "{long}");
}

#[test]
fn the_local_blob_index_never_offers_what_the_repository_lost() {
    let env = Env::new();
    env.init();
    for i in 0..20 {
        env.write(&format!("src/f{i}"), format!("file {i} ").repeat(5000).as_bytes());
    }
    env.ok(&["backup", "-q", "src"]);
    let cache = env.path(".cache/bakare");
    let dir = fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    assert!(dir.join("index.redb").exists(), "the blob index is kept on disk");
    // Everything the index file knows vanishes from the repository (as if garbage
    // collection and repair had run elsewhere); the memo goes too, so every file is read.
    for sub in ["index", "packs", "snapshots", "snapshots.mirror"] {
        fs::remove_dir_all(env.path(&format!("repo/{sub}"))).unwrap();
        fs::create_dir_all(env.path(&format!("repo/{sub}"))).unwrap();
    }
    fs::remove_file(dir.join("state.redb")).unwrap();
    env.write("src/new", b"a new file");
    let out = json_lines(&env.ok(&["--json", "backup", "src"]));
    let summary = out.iter().find(|v| v["type"] == "summary").unwrap();
    assert!(summary["bytes_added"].as_u64().unwrap() > 1000, "stored again, not deduplicated: {summary}");
    let verify = env.run(&["verify", "--read-data"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    env.ok(&["restore", "latest", "--target", "out"]);
    let src = fs::canonicalize(env.path("src")).unwrap();
    let restored = env.path("out").join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(restored.join("f7")).unwrap(), fs::read(src.join("f7")).unwrap());

    // A damaged index file is started anew, and the backup is still right.
    fs::write(dir.join("index.redb"), vec![0x33; 20000]).unwrap();
    env.write("src/f3", b"changed");
    env.ok(&["backup", "-q", "src"]);
    assert!(env.run(&["verify", "--read-data"]).status.success());
}

#[test]
fn a_damaged_local_state_is_checked_in_a_child_and_started_anew() {
    let env = Env::new();
    env.init();
    env.write("src/a", b"hello");
    env.ok(&["backup", "-q", "src"]);
    let cache = env.path(".cache/bakare");
    let dir = fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    let state = dir.join("state.redb");
    assert!(state.exists());
    fs::write(&state, vec![0x5a; 8192]).unwrap();
    let out = env.run(&["backup", "-q", "src"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is unusable") && err.contains("starting a new one"), "{err}");
    assert!(dir.join("state.redb.corrupt").exists());
    let again = env.run(&["backup", "-q", "src"]);
    assert!(again.status.success() && again.stderr.is_empty(), "{}", String::from_utf8_lossy(&again.stderr));
    // The check itself, as the backup runs it.
    let checked = env.run(&["debug", "check-state", state.to_str().unwrap()]);
    assert!(checked.status.success());
    let garbage = env.path("garbage.redb");
    fs::write(&garbage, vec![1; 4096]).unwrap();
    assert_eq!(code(&env.run(&["debug", "check-state", garbage.to_str().unwrap()])), 1);
}

/// JSON lines of a command's output.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `s` as a regular expression matching itself.
fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c.is_alphanumeric() || c == '/' { c.to_string() } else { format!("\\{c}") }).collect()
}

/// The matches of `find --json`, without its summary line.
fn matches(out: &str) -> Vec<serde_json::Value> {
    json_lines(out).into_iter().filter(|v| v["type"] == "match").collect()
}

/// The summary line of `find --json`.
fn summary(out: &str) -> serde_json::Value {
    json_lines(out).into_iter().find(|v| v["type"] == "summary").unwrap()
}

#[test]
fn find_history_and_diff_across_snapshots() {
    let env = Env::new();
    env.init();
    env.write("src/bakare.toml", b"[repo]\npath = 1\n");
    env.write("src/docs/readme.md", b"read me");
    env.write("src/notes/todo.txt", b"buy milk");
    env.write("src/notes/todo.txt.bak", b"buy bread");
    env.ok(&["backup", "-q", "src"]);
    env.write("src/bakare.toml", b"[repo]\npath = 2\n");
    fs::rename(env.path("src/notes/todo.txt"), env.path("src/notes/done.txt")).unwrap();
    env.ok(&["backup", "-q", "src"]);
    let readme = env.path("src/docs/readme.md");
    filetime::set_file_mtime(&readme, filetime::FileTime::from_unix_time(1_500_000_000, 0)).unwrap();
    env.ok(&["backup", "-q", "src"]);
    let src = fs::canonicalize(env.path("src")).unwrap().to_string_lossy().into_owned();

    // A typo still finds the file; its three versions say what changed.
    let hits = matches(&env.ok(&["--json", "find", "bakrae"]));
    assert_eq!(hits[0]["path"], format!("{src}/bakare.toml"));
    let changed: Vec<_> = hits[0]["versions"].as_array().unwrap().iter().map(|v| v["changed"].clone()).collect();
    assert_eq!(changed, [serde_json::Value::Null, true.into(), false.into()]);
    // The exact name ranks first.
    let hits = matches(&env.ok(&["--json", "find", "todo.txt"]));
    assert_eq!(hits[0]["path"], format!("{src}/notes/todo.txt"));
    assert!(hits.iter().any(|h| h["path"] == format!("{src}/notes/todo.txt.bak")));
    // Narrowed to a folder, and to one snapshot.
    let hits = matches(&env.ok(&["--json", "find", "read", "--path", &format!("{src}/docs")]));
    assert_eq!(hits.len(), 1);
    let hits = matches(&env.ok(&["--json", "find", "done", "--snapshot", "latest~2"]));
    assert!(hits.iter().all(|h| h["path"] != format!("{src}/notes/done.txt")), "not in the first snapshot");

    // History of the renamed file: one version, then the same content elsewhere.
    let h = json_lines(&env.ok(&["--json", "history", &format!("{src}/notes/todo.txt")]));
    assert_eq!(h[0]["versions"].as_array().unwrap().len(), 1);
    assert_eq!(h[0]["moved_to"][0][1], format!("{src}/notes/done.txt"));
    // The human output, with times and snapshot ids masked.
    let human = |out: String| {
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "[TIME]");
        settings.add_filter(r"  [0-9a-f]{8}  ", "  [SNAP]  ");
        settings.add_filter(r"in [0-9a-f]{8}:", "in [SNAP]:");
        settings.add_filter(r"  [0-9a-f]{8} … [0-9a-f]{8}  ", "  [SNAP] … [SNAP]  ");
        settings.add_filter(&regex_escape(&src), "[SRC]");
        (settings, out)
    };
    let (settings, out) = human(env.ok(&["find", "todo", "--limit", "2"]));
    settings.bind(|| insta::assert_snapshot!("find_human", out));
    let (settings, out) = human(env.ok(&["history", &format!("{src}/notes/todo.txt")]));
    settings.bind(|| insta::assert_snapshot!("history_human", out));
    let missing = env.run(&["history", &format!("{src}/nope")]);
    assert_eq!(code(&missing), 1);

    // diff: the rename and the edit, then a metadata-only change.
    let tmp = env.tmp.path().to_string_lossy().into_owned();
    let canon = fs::canonicalize(env.tmp.path()).unwrap().to_string_lossy().into_owned();
    // Only what is below the source: /tmp above it changes as other tests run.
    let redact = |s: String| {
        let s = s.replace(&canon, "[TMP]").replace(&tmp, "[TMP]");
        s.lines().filter(|l| l.contains("[TMP]/src")).collect::<Vec<_>>().join("\n")
    };
    insta::assert_snapshot!("diff_rename_and_edit", redact(env.ok(&["diff", "latest~2", "latest~1"])));
    insta::assert_snapshot!("diff_metadata_only", redact(env.ok(&["diff", "latest~1", "latest"])));

    // Against the live folder: an edit of the same size, a touch, a new and a removed file.
    env.write("src/bakare.toml", b"[repo]\npath = 3\n");
    let bak = env.path("src/notes/todo.txt.bak");
    filetime::set_file_mtime(&bak, filetime::FileTime::from_unix_time(1_400_000_000, 0)).unwrap();
    env.write("src/new.txt", b"new");
    fs::remove_file(env.path("src/notes/done.txt")).unwrap();
    let objects = || {
        fs::read_dir(env.path("repo/packs")).unwrap().count()
            + fs::read_dir(env.path("repo/snapshots")).unwrap().count()
    };
    let before = objects();
    let live = env.ok(&["diff", "latest", "--local", "--path", "src"]);
    insta::assert_snapshot!("diff_local", redact(live));
    assert_eq!(objects(), before, "diff --local writes nothing");
}

#[test]
fn the_name_index_is_incremental_sealed_and_rebuilt_when_damaged() {
    let env = Env::new();
    env.init();
    for d in 0..20 {
        for f in 0..5 {
            env.write(&format!("src/d{d:02}/file{f}.txt"), format!("{d} {f}").as_bytes());
        }
    }
    env.ok(&["backup", "-q", "src"]);
    env.write("src/d07/file3.txt", b"changed");
    env.ok(&["backup", "-q", "src"]);
    let src = fs::canonicalize(env.path("src")).unwrap();
    let depth = src.components().count() as u64;

    // The first call indexes both snapshots, the second nothing.
    let first = env.ok(&["--json", "find", "file3"]);
    let s = summary(&first);
    assert_eq!(s["index"]["snapshots_indexed"], 2);
    let full = s["index"]["trees_read"].as_u64().unwrap();
    assert!(full >= 21 + depth, "the first snapshot is read whole: {s}");
    assert_eq!(matches(&first).len(), 20);
    let again = summary(&env.ok(&["--json", "find", "file3"]));
    assert_eq!(again["index"]["snapshots_indexed"], 0);
    assert_eq!(again["index"]["trees_read"], 0);

    // One changed file: only the folders on its path are read, old and new.
    env.write("src/d13/file1.txt", b"changed too");
    env.ok(&["backup", "-q", "src"]);
    let out = env.ok(&["--json", "find", "d13/file1"]);
    let s = summary(&out);
    assert_eq!(s["index"]["snapshots_indexed"], 1);
    assert!(s["index"]["trees_read"].as_u64().unwrap() <= 2 * (depth + 1), "{s}");
    let hit = &matches(&out)[0];
    assert_eq!(hit["path"], format!("{}/d13/file1.txt", src.display()));
    let changed: Vec<_> = hit["versions"].as_array().unwrap().iter().map(|v| v["changed"].clone()).collect();
    assert_eq!(changed, [serde_json::Value::Null, false.into(), true.into()]);

    // No name in the clear.
    let cache = env.path(".cache/bakare");
    let dir = fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    let index = dir.join("names.redb");
    let bytes = fs::read(&index).unwrap();
    assert!(!bytes.windows(9).any(|w| w == b"file3.txt"), "names are sealed");

    // Forgetting the newest snapshot: the next one starts a new lineage, and the forgotten
    // one is no longer shown.
    env.ok(&["forget", "latest"]);
    env.write("src/d13/file1.txt", b"changed a third time");
    env.ok(&["backup", "-q", "src"]);
    let hit = &matches(&env.ok(&["--json", "find", "d13/file1"]))[0];
    let changed: Vec<_> = hit["versions"].as_array().unwrap().iter().map(|v| v["changed"].clone()).collect();
    assert_eq!(changed, [serde_json::Value::Null, false.into(), true.into()]);

    // A damaged index is built again, with the same answer; so is one without a cache.
    let before = matches(&env.ok(&["--json", "find", "file"]));
    fs::write(&index, vec![0x5a; 16384]).unwrap();
    let out = env.run(&["--json", "find", "file"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.stderr(&out).contains("built again"), "{}", env.stderr(&out));
    assert_eq!(matches(&String::from_utf8_lossy(&out.stdout)), before);
    assert_eq!(matches(&env.ok(&["--json", "--no-cache", "find", "file"])), before);
    assert!(!env.path("src").join("names.redb").exists());
}

#[test]
fn forget_and_prune_with_and_without_dry_run() {
    let env = Env::new();
    env.init();
    env.write("src/a", b"one");
    env.ok(&["backup", "-q", "src"]);
    env.write("src/a", b"two");
    env.ok(&["backup", "-q", "src"]);
    let snapshots = || env.ok(&["--json", "snapshots"]).matches("\"id\"").count();
    let plan = json_lines(&env.ok(&["--json", "forget", "--keep-last", "1", "--dry-run"]));
    assert_eq!(plan[0]["removed"].as_array().unwrap().len(), 1);
    assert_eq!(snapshots(), 2, "a dry run removes nothing");
    let dry = json_lines(&env.ok(&["--json", "prune", "--dry-run"]));
    assert_eq!(dry[0]["snapshots"], 2);
    let human = env.ok(&["forget", "--keep-last", "1", "--dry-run"]);
    insta::with_settings!({filters => vec![
        (r"[0-9a-f]{8} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[ID] [TIME]"),
        (r"host \S+ paths \S+", "host [HOST] paths [SRC]"),
    ]}, {
        insta::assert_snapshot!("forget_dry_run", human);
    });
    let human = env.ok(&["prune", "--dry-run", "--min-pack-age-hours", "0"]);
    insta::with_settings!({filters => vec![(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[TIME]"), (r"\d+\.\d KiB|\d+ B", "[SIZE]")]}, {
        insta::assert_snapshot!("prune_dry_run", human);
    });
    assert_eq!(code(&env.run(&["forget"])), 1, "no policy and no snapshot: refused");
    env.ok(&["-q", "forget", "--keep-last", "1", "--prune"]);
    assert_eq!(snapshots(), 1);
    // With the forgotten snapshot's packs old enough, the dry run shows its plan step by step.
    let human = env.ok(&["prune", "--dry-run", "--min-pack-age-hours", "0"]);
    assert!(human.contains("the plan, in order:\n  1. "), "{human}");
    assert!(human.contains(". mark ") && human.contains("packs/"), "{human}");
    let dry = json_lines(&env.ok(&["--json", "prune", "--dry-run", "--min-pack-age-hours", "0"]));
    assert!(dry[0]["steps"].as_array().is_some_and(|s| !s.is_empty()), "{dry:?}");
    let pruned = json_lines(&env.ok(&["--json", "prune"]));
    assert_eq!(pruned[0]["marked_packs"], 0, "a day must pass before anything is marked");
    assert!(pruned[0]["young_packs"].as_u64().unwrap() > 0);
    assert!(fs::read_dir(env.path("repo/sessions")).unwrap().next().is_none(), "prune's session is gone");
    env.ok(&["restore", "latest", "--target", "out"]);
}

/// Messages people found misleading: causes printed twice, "1 snapshots", `history` on a
/// folder, `forget ID --dry-run` not naming what it would remove, usage lines listing
/// options set in the environment as if required, out-of-range options accepted, and a
/// panic when stderr cannot be written.
#[test]
fn messages_say_what_is_so_once() {
    let env = Env::new();
    let twice = env.run(&["--repo", "/etc/passwd/x", "snapshots"]);
    assert_eq!(code(&twice), 1);
    insta::assert_snapshot!("err_cause_once", env.stderr(&twice));

    env.init();
    env.write("src/d/a", b"one");
    env.ok(&["backup", "-q", "src"]);
    let one = env.ok(&["snapshots"]);
    assert!(one.ends_with("\n1 snapshot\n"), "{one}");

    let src = env.path("src").canonicalize().unwrap();
    // A folder's history: its versions are its trees.
    env.ok(&["backup", "-q", "src"]);
    env.write("src/d/b", b"two");
    env.ok(&["backup", "-q", "src"]);
    let folder = env.ok(&["history", src.join("d").to_str().unwrap()]);
    let lines: Vec<&str> = folder.lines().collect();
    assert_eq!(lines.len(), 3, "{folder}");
    assert!(lines[0].ends_with("/d/  (folder)"), "{folder}");
    assert!(lines[1].contains("1 entry  first seen, the same in 1 more snapshot"), "{folder}");
    assert!(lines[2].contains("2 entries  1 added, 0 removed, 0 changed"), "{folder}");
    env.ok(&["forget", "latest", "latest~1"]);

    let forget = env.ok(&["forget", "latest", "--dry-run"]);
    let id = env.ok(&["--json", "snapshots"]);
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let short = &id[0]["id"].as_str().unwrap()[..8];
    assert!(forget.contains(&format!("  {short} ")) && forget.contains("  remove\n"), "{forget}");
    assert!(forget.ends_with("would remove 1 snapshot\n"), "{forget}");

    let usage = env.cmd().env("BAKARE_PASSPHRASE_FILE", "/nonexistent").args(["backup"]).output().unwrap();
    assert_eq!(code(&usage), 2);
    insta::assert_snapshot!("err_usage_with_environment", env.stderr(&usage));

    assert_eq!(code(&env.run(&["--threads", "0", "snapshots"])), 2);
    assert_eq!(code(&env.run(&["--memory-limit", "1", "snapshots"])), 2);
    assert_eq!(code(&env.cmd().env("BAKARE_THREADS", "0").args(["snapshots"]).output().unwrap()), 2);

    // stderr on a full disk: the error is lost, the exit code is not (no panic, 101).
    let full = fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = env.cmd().args(["--repo", "/nonexistent/repo", "snapshots"]).stderr(full).output().unwrap();
    assert_eq!(code(&out), 1);
}

/// The local caches hold file names (the memo) and the repository holds everything: both
/// are their user's alone, 0600 files in 0700 folders, and caches an older bakare left
/// readable to others are made private.
#[test]
fn caches_and_repositories_are_private() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.init();
    env.write("src/a", b"one");
    env.ok(&["--cache-dir", "cache", "backup", "-q", "src"]);
    let mut stack = vec![env.path("cache"), env.path("repo")];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", p.display(), m.mode() & 0o777);
        seen += 1;
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 10);
    let memo = fs::read_dir(env.path("cache")).unwrap().next().unwrap().unwrap().path().join("state.redb");
    fs::set_permissions(&memo, fs::Permissions::from_mode(0o644)).unwrap();
    env.ok(&["--cache-dir", "cache", "backup", "-q", "src"]);
    assert_eq!(fs::metadata(&memo).unwrap().mode() & 0o777, 0o600, "an old cache file is made private");
}

/// `--files-from` (comments, blank lines, globs, `-` for standard input),
/// `--files-from-verbatim` (lines as they are) and `--files-from-raw` (NUL-separated, any
/// bytes): every listed path is backed up, and a bad list stops before anything is written.
#[test]
fn paths_from_files_as_restic_reads_them() {
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    let env = Env::new();
    env.init();
    for f in ["a/one.txt", "b/two.log", "b/three.log", "c/#hash", "d/ sp", "e/x"] {
        env.write(f, f.as_bytes());
    }
    let odd = std::ffi::OsStr::from_bytes(b"bad-\xff-name");
    fs::write(env.path("e").join(odd), b"raw").unwrap();
    let root = env.tmp.path().canonicalize().unwrap();
    let r = |p: &str| format!("{}/{p}", root.display());
    env.write("list", format!("# a comment\n\n{}\n  {}  \n{}\n", r("a"), r("b/*.log"), r("c/#hash")).as_bytes());
    env.write("verbatim", format!("{}\n", r("d/ sp")).as_bytes());
    let mut raw = r("e/x").into_bytes();
    raw.push(0);
    raw.extend_from_slice(root.join("e").join(odd).as_os_str().as_bytes());
    raw.push(0);
    fs::write(env.path("raw"), raw).unwrap();
    let mut child = env
        .cmd()
        .args(["--json", "backup", "--files-from", "list", "--files-from", "-"])
        .args(["--files-from-verbatim", "verbatim", "--files-from-raw", "raw"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{}\n", r("a/one.txt")).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = env.ok(&["ls", "-R", "latest"]);
    for f in ["a/one.txt", "b/two.log", "b/three.log", "c/#hash", "d/ sp", "e/x", "e/bad-\u{fffd}-name"] {
        assert!(listed.lines().any(|l| l == r(f)), "{f} missing from:\n{listed}");
    }
    // The listed file only, not its folder's other files.
    env.write("c/other", b"o");
    env.ok(&["backup", "-q", "--files-from", "list"]);
    assert!(!env.ok(&["ls", "-R", "latest"]).contains("c/other"));
    // A pattern that matches nothing, a missing path and an empty list say so.
    env.write("nomatch", format!("{}\n", r("zzz/*.none")).as_bytes());
    env.write("missing", format!("{}\n", r("not-there")).as_bytes());
    env.write("empty", b"# nothing\n");
    let snapshots = env.ok(&["snapshots"]);
    for (list, says) in [("nomatch", "matches nothing"), ("missing", "not-there"), ("empty", "no paths to back up")] {
        let out = env.run(&["backup", "--files-from", list]);
        assert_eq!(code(&out), 1, "{list}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{list}: {}", env.stderr(&out));
    }
    assert_eq!(env.ok(&["snapshots"]), snapshots, "a bad list made a snapshot");
}

/// After backing up a second folder, `latest:PATH` still names the newest snapshot that
/// holds PATH (it used to be the newest of all, which did not); `--host`, `--path` and
/// `--tag` narrow `latest` and `snapshots`; a missing path names the snapshot looked in.
#[test]
fn latest_is_the_newest_snapshot_that_holds_the_path() {
    let env = Env::new();
    env.init();
    env.write("docs/a.txt", b"a1");
    env.write("code/b.rs", b"b1");
    env.ok(&["backup", "-q", "--tag", "paper", "docs"]);
    env.write("docs/a.txt", b"a2");
    env.ok(&["backup", "-q", "--tag", "paper", "docs"]);
    env.ok(&["backup", "-q", "--host", "laptop", "code"]);
    let docs = env.path("docs").canonicalize().unwrap().to_string_lossy().into_owned();
    let src = env.path("code").canonicalize().unwrap().to_string_lossy().into_owned();
    assert_eq!(env.ok(&["ls", &format!("latest:{docs}")]), format!("{docs}/a.txt\n"));
    assert_eq!(env.ok(&["ls", "latest", &docs]), format!("{docs}/a.txt\n"), "restic's form");
    env.ok(&["restore", "-q", &format!("latest~1:{docs}"), "--target", "old"]);
    assert_eq!(fs::read(env.path("old/a.txt")).unwrap(), b"a1");
    env.ok(&["restore", "-q", &format!("latest:{docs}"), "--target", "new"]);
    assert_eq!(fs::read(env.path("new/a.txt")).unwrap(), b"a2");
    // `latest` alone is still the newest of all, and the filters narrow it.
    let newest = env.ok(&["ls", "-R", "latest"]);
    assert!(newest.contains("b.rs") && !newest.contains("a.txt"), "{newest}");
    let by_tag = env.ok(&["ls", "--tag", "paper", "-R", "latest"]);
    assert!(by_tag.contains("a.txt") && !by_tag.contains("b.rs"), "{by_tag}");
    let by_host = env.ok(&["ls", "--host", "laptop", "-R", "latest"]);
    assert!(by_host.contains("b.rs") && !by_host.contains("a.txt"), "{by_host}");
    // What no snapshot holds, and a path missing from a named snapshot, say where they looked.
    let out = env.run(&["ls", &format!("latest:{docs}/nope/x")]);
    assert_eq!(code(&out), 1);
    let said = env.stderr(&out);
    assert!(said.contains("is not in snapshot") && said.contains("host "), "{said}");
    let out = env.run(&["ls", &format!("latest:{}/elsewhere", env.tmp.path().display())]);
    assert!(env.stderr(&out).contains("latest: none of the 3 snapshots hold"), "{}", env.stderr(&out));
    let out = env.run(&["ls", "--tag", "paper", &format!("latest~2:{docs}")]);
    assert!(env.stderr(&out).contains("only 2 of the 3 snapshots hold"), "{}", env.stderr(&out));
    // `snapshots` filters, and the newest of each host and set of paths.
    let rows = |args: &[&str]| env.ok(args).lines().filter(|l| l.ends_with(&docs) || l.ends_with(&src)).count();
    assert_eq!(rows(&["snapshots"]), 3);
    assert_eq!(rows(&["snapshots", "--tag", "paper"]), 2);
    assert_eq!(rows(&["snapshots", "--host", "laptop"]), 1);
    assert_eq!(rows(&["snapshots", "--path", &format!("{docs}/")]), 2);
    assert_eq!(rows(&["snapshots", "--latest", "1"]), 2);
    assert!(env.ok(&["snapshots"]).lines().next().unwrap().contains("tags"));
}

/// What a restic user scripts with: `--passphrase-command` (alias `--password-command`),
/// `--repository-file`, and the completions and man pages generated from the same
/// definition as `--help`.
#[test]
fn passphrase_command_repository_file_completions_and_man_pages() {
    let env = Env::new();
    env.init();
    env.write("src/a", b"a");
    let no_env = |args: &[&str]| {
        let mut c = env.cmd();
        c.env_remove("BAKARE_PASSPHRASE").env_remove("BAKARE_REPOSITORY").args(args);
        c.output().unwrap()
    };
    env.write("where", format!("\n{}\n", env.path("repo").display()).as_bytes());
    let out =
        no_env(&["--repository-file", "where", "--password-command", "echo 'correct horse'", "backup", "-q", "src"]);
    assert!(out.status.success(), "{}", env.stderr(&out));
    let out = no_env(&["-r", "repo", "--passphrase-command", "echo wrong", "snapshots"]);
    assert_ne!(code(&out), 0);
    let out = no_env(&["-r", "repo", "--passphrase-command", "exit 3", "snapshots"]);
    assert!(env.stderr(&out).contains("the passphrase command \"exit 3\" failed"), "{}", env.stderr(&out));
    let out = no_env(&["-r", "repo", "snapshots"]);
    assert!(env.stderr(&out).contains("--passphrase-command"), "{}", env.stderr(&out));
    env.write("nowhere", b"\n\n");
    let out = no_env(&["--repository-file", "nowhere", "snapshots"]);
    assert!(env.stderr(&out).contains("names no repository"), "{}", env.stderr(&out));
    // Generated help for shells and man.
    let bash = env.ok(&["completions", "bash"]);
    assert!(bash.contains("_bakare()") && bash.contains("--exclude-caches"), "{bash}");
    assert!(env.ok(&["completions", "fish"]).contains("complete -c bakare"));
    env.ok(&["man", "man-pages"]);
    let page = fs::read_to_string(env.path("man-pages/bakare-backup.1")).unwrap();
    assert!(page.contains("one\\-file\\-system") || page.contains("one-file-system"), "{page}");
    assert!(env.path("man-pages/bakare.1").exists());
}

/// Tags after the fact (`tag --add/--remove/--set`, each snapshot written anew) and the
/// retention rules that use tags and time spans (`forget --keep-tag`, `--keep-within`).
#[test]
fn tags_after_the_fact_and_keep_tag_and_keep_within() {
    let env = Env::new();
    env.init();
    for i in 0..3 {
        env.write("src/f", format!("v{i}").as_bytes());
        env.ok(&["backup", "-q", "src"]);
    }
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--json", "snapshots"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&env.ok(&all)).unwrap();
        v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    };
    let before = ids(&[]);
    let said = env.ok(&["tag", "--add", "release", "--add", "v1", "latest~2"]);
    assert!(said.contains("tags: release,v1"), "{said}");
    let tagged = ids(&["--tag", "release"]);
    assert_eq!(tagged.len(), 1);
    assert!(!before.contains(&tagged[0]), "a retagged snapshot gets a new id");
    assert_eq!(ids(&[]).len(), 3, "the old one is gone");
    env.ok(&["tag", "--tag", "release", "--remove", "v1"]);
    assert_eq!(ids(&["--tag", "v1"]).len(), 0);
    assert_eq!(ids(&["--tag", "release"]).len(), 1);
    // Nothing to change: nothing written.
    let same = ids(&[]);
    assert!(env.ok(&["tag", "--add", "release", "--tag", "release"]).contains("changed 0 snapshots"));
    assert_eq!(ids(&[]), same);
    // The tagged oldest outlives --keep-last 1; the middle one goes.
    let out = env.ok(&["forget", "--keep-last", "1", "--keep-tag", "release"]);
    assert!(out.contains("keep (tag)") && out.contains("removed 1 snapshot"), "{out}");
    assert_eq!(ids(&[]).len(), 2);
    // All were taken within the last hour of the newest.
    let out = env.ok(&["forget", "--keep-within", "1h", "--dry-run"]);
    assert!(out.contains("would remove 0 snapshots"), "{out}");
    // `--path` with a trailing `/` names the same path, as in every other command.
    let src = env.path("src").canonicalize().unwrap();
    let out = env.ok(&["forget", "--keep-last", "1", "--dry-run", "--path", &format!("{}/", src.display())]);
    assert!(out.contains("would remove 1 snapshot"), "{out}");
    let out = env.run(&["forget", "--keep-within", "7"]);
    assert!(env.stderr(&out).contains("every number needs a unit"), "{}", env.stderr(&out));
    env.ok(&["tag", "--set", "", "--tag", "release"]);
    assert_eq!(ids(&["--tag", "release"]).len(), 0);
}

/// `dump`: a file's bytes to standard output; a folder as a tar archive that extracts to the
/// same files; one damaged file neither stops the archive nor harms the others (exit 4).
#[test]
fn dump_a_file_and_a_folder_as_tar_past_damage() {
    if std::process::Command::new("tar").arg("--version").output().is_err() {
        eprintln!("skipping: no tar here to read the archive");
        return;
    }
    let env = Env::new();
    env.init();
    env.write("src/a.txt", b"alpha");
    env.write("src/sub/b.txt", &b"beta ".repeat(1000));
    let mut big = Vec::with_capacity(3 << 20);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while big.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    env.write("src/big.bin", &big);
    std::os::unix::fs::symlink("a.txt", env.path("src/link")).unwrap();
    fs::set_permissions(env.path("src"), fs::Permissions::from_mode(0o750)).unwrap();
    env.ok(&["backup", "-q", "src"]);
    let src = env.path("src").canonicalize().unwrap().to_string_lossy().into_owned();
    let out = env.run(&["dump", &format!("latest:{src}/sub/b.txt")]);
    assert_eq!(out.stdout, b"beta ".repeat(1000));
    // A path no snapshot holds, said in words that fit one snapshot.
    let out = env.run(&["dump", "latest", "/nonexistent"]);
    assert_eq!(code(&out), 1);
    assert!(
        env.stderr(&out).contains("latest: the repository's one snapshot is not among those that hold /nonexistent"),
        "{}",
        env.stderr(&out)
    );
    let out = env.run(&["dump", "latest", &src]);
    assert!(out.status.success(), "{}", env.stderr(&out));
    fs::write(env.path("src.tar"), &out.stdout).unwrap();
    fs::create_dir(env.path("x")).unwrap();
    let untar = |dir: &str| {
        let s = Command::new("tar").args(["xf", "src.tar", "-C", dir]).current_dir(env.tmp.path()).status().unwrap();
        assert!(s.success());
    };
    untar("x");
    // The folder's own entry comes first, with its mode.
    let list = Command::new("tar").args(["tf", "src.tar"]).current_dir(env.tmp.path()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().next(), Some("src/"));
    assert_eq!(fs::metadata(env.path("x/src")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(fs::read(env.path("x/src/big.bin")).unwrap(), big);
    assert_eq!(fs::read(env.path("x/src/sub/b.txt")).unwrap(), b"beta ".repeat(1000));
    assert_eq!(fs::read_link(env.path("x/src/link")).unwrap(), Path::new("a.txt"));
    // The largest pack holds big.bin's data: damage its middle.
    let mut packs = Vec::new();
    let mut stack = vec![env.path("repo/packs")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { packs.push((fs::metadata(&p).unwrap().len(), p)) }
        }
    }
    packs.sort();
    let (len, largest) = packs.last().unwrap().clone();
    let mut bytes = fs::read(&largest).unwrap();
    for b in &mut bytes[len as usize / 2..len as usize / 2 + 64] {
        *b ^= 0x5A;
    }
    fs::write(&largest, bytes).unwrap();
    let out = env.run(&["dump", "latest", &src]);
    assert_eq!(code(&out), 4, "{}", env.stderr(&out));
    assert!(env.stderr(&out).contains("damaged: src/big.bin"), "{}", env.stderr(&out));
    fs::write(env.path("src.tar"), &out.stdout).unwrap();
    fs::create_dir(env.path("y")).unwrap();
    untar("y");
    assert_eq!(fs::metadata(env.path("y/src/big.bin")).unwrap().len(), big.len() as u64, "the size is kept");
    assert_eq!(fs::read(env.path("y/src/a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(env.path("y/src/sub/b.txt")).unwrap(), b"beta ".repeat(1000));
    // A symlink has no contents to dump.
    let out = env.run(&["dump", &format!("latest:{src}/link")]);
    assert!(env.stderr(&out).contains("is a symlink to a.txt"), "{}", env.stderr(&out));
}

/// `restore --include/--exclude` as restic has them: only what an include matches, with the
/// folders on the way (their times kept) and no folder with nothing included below it.
#[test]
fn restore_only_what_includes_match_less_what_excludes_match() {
    let env = Env::new();
    env.init();
    env.write("src/docs/a.pdf", b"a");
    env.write("src/docs/B.PDF", b"b");
    env.write("src/docs/notes.txt", b"n");
    env.write("src/docs/old/c.pdf", b"c");
    env.write("src/music/x.mp3", b"x");
    env.write("src/music/sub/y.mp3", b"y");
    fs::create_dir(env.path("src/empty")).unwrap();
    let old = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    filetime::set_file_mtime(env.path("src/docs"), old).unwrap();
    env.ok(&["backup", "-q", "src"]);
    let src = env.path("src").canonicalize().unwrap().to_string_lossy().into_owned();
    let files = |dir: &str| {
        let mut found = Vec::new();
        let mut stack = vec![env.path(dir)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(env.path(dir)).unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    found.push(format!("{rel}/"));
                    stack.push(p);
                } else {
                    found.push(rel);
                }
            }
        }
        found.sort();
        found
    };
    let out =
        env.run(&["restore", &format!("latest:{src}"), "-t", "r1", "-i", "*.pdf", "-e", &format!("{src}/docs/old")]);
    assert!(out.status.success(), "{}", env.stderr(&out));
    assert_eq!(files("r1"), ["docs/", "docs/a.pdf"]);
    let docs = fs::metadata(env.path("r1/docs")).unwrap();
    assert_eq!(filetime::FileTime::from_last_modification_time(&docs), old, "a folder on the way keeps its time");
    // Ignoring case; a folder included is included whole, less what is excluded.
    env.ok(&[
        "restore",
        "latest",
        "-t",
        "r2",
        "--iinclude",
        "*.pdf",
        "--include",
        &format!("{src}/music"),
        "--exclude",
        "sub",
    ]);
    let rel = src.trim_start_matches('/');
    let want: Vec<String> =
        ["", "/docs/", "/docs/B.PDF", "/docs/a.pdf", "/docs/old/", "/docs/old/c.pdf", "/music/", "/music/x.mp3"]
            .iter()
            .map(|f| format!("{rel}{f}"))
            .collect();
    let got: Vec<String> = files("r2").into_iter().filter(|f| f.len() >= rel.len()).collect();
    assert_eq!(
        got,
        want.iter().map(|f| if f.len() == rel.len() { format!("{f}/") } else { f.clone() }).collect::<Vec<_>>()
    );
    // Nothing matched: said, and nothing made.
    let out = env.run(&["restore", "latest", "-t", "r3", "-i", "*.doc"]);
    assert!(env.stderr(&out).contains("nothing in snapshot"), "{}", env.stderr(&out));
    assert_eq!(files("r3"), Vec::<String>::new());
    // Patterns see the start's own path and the folders above it, however it was spelt.
    let out = env.run(&["restore", &format!("latest:{src}//docs/"), "-t", "r4", "-i", &src, "-e", "notes.txt"]);
    assert!(out.status.success() && !env.stderr(&out).contains("nothing"), "{}", env.stderr(&out));
    assert_eq!(files("r4"), ["B.PDF", "a.pdf", "old/", "old/c.pdf"]);
    let out = env.run(&["restore", &format!("latest:{src}/docs/a.pdf"), "-t", "r5", "-e", &format!("{src}/docs")]);
    assert!(
        env.stderr(&out).contains("nothing in snapshot") && env.stderr(&out).contains("--exclude"),
        "{}",
        env.stderr(&out)
    );
    assert_eq!(files("r5"), Vec::<String>::new());
    // What is included but is not a file (a link) counts as matched.
    std::os::unix::fs::symlink("a.pdf", env.path("src/docs/link")).unwrap();
    env.ok(&["backup", "-q", "src"]);
    let out = env.run(&["restore", "latest", "-t", "r6", "-i", "link"]);
    assert!(out.status.success() && !env.stderr(&out).contains("nothing"), "{}", env.stderr(&out));
    assert_eq!(
        fs::read_link(env.path("r6").join(src.trim_start_matches('/')).join("docs/link")).unwrap(),
        Path::new("a.pdf")
    );
}

/// `key list/add/passwd/remove`: a second passphrase opens the repository; the one in use
/// cannot be removed (only changed, new key files first); the old one stops working.
#[test]
fn keys_are_added_changed_and_removed_never_the_last() {
    let env = Env::new();
    env.init();
    env.write("src/a", b"a");
    env.ok(&["backup", "-q", "src"]);
    let list = |pass: &str| -> Vec<serde_json::Value> {
        let out = env.cmd().env("BAKARE_PASSPHRASE", pass).args(["--json", "key", "list"]).output().unwrap();
        assert!(out.status.success(), "{}", env.stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    };
    let current = |keys: &[serde_json::Value]| keys.iter().filter(|k| k["current"] == true).count();
    let keys = list("correct horse");
    assert_eq!((keys.len(), current(&keys)), (2, 2));
    // The table names the key derivation's memory in its unit (this one's 64 KiB was "0 MiB").
    let table = env.ok(&["key", "list"]);
    assert!(table.contains("64 KiB, 1 passes"), "{table}");
    env.write("second", b"battery staple\n");
    env.ok(&["key", "add", "--new-passphrase-file", "second"]);
    let keys = list("battery staple");
    assert_eq!((keys.len(), current(&keys)), (4, 2), "the second passphrase opens its own two");
    // One of the first passphrase's key files, removed with the second in use.
    let first: Vec<String> =
        keys.iter().filter(|k| k["current"] == false).map(|k| k["id"].as_str().unwrap().to_string()).collect();
    let out = env.cmd().env("BAKARE_PASSPHRASE", "battery staple").args(["key", "remove", &first[0][..10]]).output();
    assert!(out.unwrap().status.success());
    assert_eq!(list("correct horse").len(), 3);
    // The key in use is refused.
    let mine = keys.iter().find(|k| k["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    let out = env.cmd().env("BAKARE_PASSPHRASE", "battery staple").args(["key", "remove", &mine]).output().unwrap();
    assert!(env.stderr(&out).contains("key passwd"), "{}", env.stderr(&out));
    // passwd: the new one works, the old one no more; the data reads.
    env.write("third", b"tr0ub4dor");
    let out = env
        .cmd()
        .env("BAKARE_PASSPHRASE", "battery staple")
        .args(["key", "passwd", "--new-passphrase-file", "third"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", env.stderr(&out));
    let out = env.cmd().env("BAKARE_PASSPHRASE", "battery staple").args(["snapshots"]).output().unwrap();
    assert_ne!(code(&out), 0, "the old passphrase still opens");
    assert_eq!(list("tr0ub4dor").len(), 3, "one of the first passphrase's files and the new two");
    let out = env.cmd().env("BAKARE_PASSPHRASE", "tr0ub4dor").args(["restore", "-q", "latest", "-t", "out"]).output();
    assert!(out.unwrap().status.success());
}

/// `stats`: the restore size adds up per snapshot, the unique data does not (deduplicated),
/// and the ratios follow from them.
#[test]
fn stats_count_restore_size_and_unique_data() {
    let env = Env::new();
    env.init();
    env.write("src/a", &b"hello world ".repeat(10_000));
    env.write("src/b", b"short");
    env.ok(&["backup", "-q", "src"]);
    env.ok(&["backup", "-q", "--host", "twin", "src"]);
    let stats = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json", "stats"];
        all.extend_from_slice(args);
        serde_json::from_str(&env.ok(&all)).unwrap()
    };
    let one_size = 120_000 + 5;
    let all = stats(&[]);
    assert_eq!(all["snapshots"], 2);
    assert_eq!(all["restore_bytes"], 2 * one_size);
    assert_eq!(all["raw_bytes"], one_size, "the second snapshot adds no data");
    assert_eq!(all["dedup_ratio"].as_f64().unwrap(), 2.0);
    assert!(all["compression_ratio"].as_f64().unwrap() > 10.0, "{all}");
    assert!(all["stored_bytes"].as_u64().unwrap() < 20_000, "{all}");
    let twin = stats(&["--host", "twin", "--per-snapshot"]);
    assert_eq!(twin["snapshots"], 1);
    assert_eq!(twin["restore_bytes"], one_size);
    assert_eq!(twin["per_snapshot"][0]["files"], 2);
    let human = env.ok(&["stats"]);
    assert!(human.contains("deduplication:     2.00x"), "{human}");
    // A hard link's data is restored once: counted once, whichever folders its names are in.
    env.write("linked/one/data", &[7u8; 50_000]);
    fs::create_dir_all(env.path("linked/two")).unwrap();
    fs::hard_link(env.path("linked/one/data"), env.path("linked/two/same")).unwrap();
    fs::hard_link(env.path("linked/one/data"), env.path("linked/one/again")).unwrap();
    env.ok(&["backup", "-q", "--host", "links", "linked"]);
    let links = stats(&["--host", "links", "--per-snapshot"]);
    assert_eq!(links["restore_bytes"], 50_000, "{links}");
    assert_eq!(links["per_snapshot"][0]["files"], 3);
}

/// `cat`: config, snapshot, tree and pack as JSON, each leading to the next.
#[test]
fn cat_walks_from_the_snapshot_to_its_blobs() {
    let env = Env::new();
    env.init();
    env.write("src/x.txt", b"content of x");
    env.ok(&["backup", "-q", "src"]);
    let cat = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["cat"];
        all.extend_from_slice(args);
        serde_json::from_str(&env.ok(&all)).unwrap()
    };
    assert_eq!(cat(&["config"])["id"].as_str().unwrap().len(), 32);
    let snap = cat(&["snapshot", "latest"]);
    let mut tree = cat(&["tree", snap["root"].as_str().unwrap()]);
    // Down the path to src, then its file.
    while tree["entries"][0]["node"]["type"] == "dir" {
        let next = tree["entries"][0]["node"]["tree"].as_str().unwrap().to_string();
        tree = cat(&["tree", &next]);
    }
    assert_eq!(tree["entries"][0]["name"], "x.txt");
    let chunk = tree["entries"][0]["node"]["chunks"][0].as_str().unwrap().to_string();
    // The pack that holds that chunk lists it.
    let mut found = false;
    for dir in fs::read_dir(env.path("repo/packs")).unwrap() {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            let name = pack.unwrap().file_name().to_string_lossy().into_owned();
            let blobs = cat(&["pack", &name])["blobs"].as_array().unwrap().clone();
            found |= blobs.iter().any(|b| b["id"] == chunk.as_str() && b["kind"] == "data" && b["raw_len"] == 12);
        }
    }
    assert!(found, "no pack lists the file's chunk");
    // The index segments, and in one of them the same chunk.
    let segments = cat(&["index"]);
    let listed = segments.as_array().unwrap().iter().any(|seg| {
        cat(&["index", seg.as_str().unwrap()])["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["blobs"].as_array().unwrap().iter().any(|b| b["id"] == chunk.as_str()))
    });
    assert!(listed, "no index segment lists the file's chunk");
    let out = env.run(&["cat", "tree", "xyz"]);
    assert!(env.stderr(&out).contains("is not a blob id"));
}

/// `snapshots` in local time (the zone from TZ), in UTC with `--utc`, and grouped.
#[test]
fn snapshots_in_local_time_and_grouped() {
    let env = Env::new();
    env.init();
    env.write("a/f", b"1");
    env.write("b/f", b"2");
    env.ok(&["backup", "-q", "--host", "h1", "a"]);
    env.ok(&["backup", "-q", "--host", "h2", "a"]);
    env.ok(&["backup", "-q", "--host", "h1", "b"]);
    let run = |tz: &str, args: &[&str]| -> String {
        let out = env.cmd().env("TZ", tz).arg("snapshots").args(args).output().unwrap();
        assert!(out.status.success(), "{}", env.stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    if Path::new("/usr/share/zoneinfo/Asia/Kolkata").exists() {
        let local = run("Asia/Kolkata", &[]);
        assert!(local.lines().nth(1).is_some_and(|l| l.contains(" IST ")), "{local}");
    }
    let utc = run("Asia/Kolkata", &["--utc"]);
    assert!(utc.starts_with("id        time (UTC)") && !utc.contains("IST"), "{utc}");
    let by_host = run("UTC", &["--group-by", "host"]);
    assert!(by_host.contains("host h1:\n") && by_host.contains("host h2:\n"), "{by_host}");
    assert!(by_host.ends_with("3 snapshots\n"), "{by_host}");
    let newest = run("UTC", &["--group-by", "host", "--latest", "1"]);
    assert!(newest.ends_with("2 snapshots\n"), "{newest}");
    let grouped: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "snapshots", "--group-by", "host,paths"])).unwrap();
    assert_eq!(grouped.as_array().unwrap().len(), 3);
}

#[test]
fn hooks_run_around_a_backup_and_their_output_is_logged() {
    let env = Env::new();
    env.init();
    env.write("src/f", b"data");
    let log = |id: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["cat", "snapshot", id])).unwrap();
        v["log"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()
    };
    // The post-hook's environment, written where the test can read it.
    let post = "env | grep -E '^BAKARE_(HOOK|OUTCOME|EXIT_CODE|SNAPSHOT_ID|PASSPHRASE)=' | sort > post.env";
    let out =
        env.run(&["--json", "backup", "src", "--pre-hook", "echo dumping; echo to stderr >&2", "--post-hook", post]);
    assert_eq!(code(&out), 0, "{}", env.stderr(&out));
    let id = summary(&String::from_utf8_lossy(&out.stdout))["snapshot"].as_str().unwrap().to_string();
    let lines = log(&id);
    assert!(lines[0].starts_with("pre-hook `echo dumping; echo to stderr >&2`: exit 0 after"), "{lines:?}");
    assert_eq!(lines[1..], ["pre-hook: dumping", "pre-hook: to stderr"]);
    let seen = fs::read_to_string(env.path("post.env")).unwrap();
    assert_eq!(
        seen,
        format!("BAKARE_EXIT_CODE=0\nBAKARE_HOOK=post\nBAKARE_OUTCOME=success\nBAKARE_SNAPSHOT_ID={id}\n"),
        "the post-hook is told the outcome, and never the passphrase"
    );
    // What the hook wrote has the user's file-creation mask, not bakare's own 077.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let umask = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap().trim();
    let umask = u32::from_str_radix(umask, 8).unwrap();
    let mode = fs::metadata(env.path("post.env")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !umask, "the hook's file, with umask {umask:03o}");
    let shown = env.ok(&["snapshots", "--log", "--latest", "1"]);
    assert!(shown.contains("    pre-hook: dumping\n"), "{shown}");

    // A failing pre-hook is logged and the backup goes on...
    let out = env.run(&["--json", "backup", "src", "--pre-hook", "exit 7", "--post-hook", post]);
    assert_eq!(code(&out), 0, "{}", env.stderr(&out));
    let id = summary(&String::from_utf8_lossy(&out.stdout))["snapshot"].as_str().unwrap().to_string();
    assert!(log(&id)[0].contains("exit 7"), "{:?}", log(&id));
    // ...unless it is required: no snapshot, exit 1, and the post-hook hears of it.
    let before = env.ok(&["snapshots"]);
    let out = env.run(&["backup", "src", "--pre-hook", "exit 7", "--pre-hook-required", "--post-hook", post]);
    assert_eq!(code(&out), 1);
    assert!(
        env.stderr(&out).contains("the pre-hook `exit 7` failed (exit 7): backup not started"),
        "{}",
        env.stderr(&out)
    );
    assert_eq!(env.ok(&["snapshots"]), before);
    let seen = fs::read_to_string(env.path("post.env")).unwrap();
    assert_eq!(seen, "BAKARE_EXIT_CODE=1\nBAKARE_HOOK=post\nBAKARE_OUTCOME=failed\nBAKARE_SNAPSHOT_ID=\n");
    // A hook that hangs is killed after its timeout.
    let out = env.run(&["backup", "src", "--pre-hook", "sleep 60", "--pre-hook-required", "--hook-timeout", "1"]);
    assert_eq!(code(&out), 1);
    assert!(env.stderr(&out).contains("timed out after 1 s"), "{}", env.stderr(&out));
}

#[test]
fn a_configuration_file_gives_defaults_and_profiles() {
    let env = Env::new();
    env.init();
    env.write("src/f", b"data");
    env.write("other/g", b"more");
    let repo2 = env.path("repo2");
    env.write(
        ".config/bakare/config.toml",
        format!(
            "[backup]\npaths = [\"src\"]\ntag = [\"from-config\"]\npre-hook = \"echo configured\"\n\n\
             [profile.second.global]\nrepo = \"{}\"\n[profile.second.backup]\npaths = [\"other\"]\n",
            repo2.display()
        )
        .as_bytes(),
    );
    let out = env.run(&["--json", "backup"]);
    assert_eq!(code(&out), 0, "{}", env.stderr(&out));
    let id = summary(&String::from_utf8_lossy(&out.stdout))["snapshot"].as_str().unwrap().to_string();
    let snap: serde_json::Value = serde_json::from_str(&env.ok(&["cat", "snapshot", &id])).unwrap();
    assert_eq!(snap["tags"], serde_json::json!(["from-config"]));
    assert!(snap["paths"][0].as_str().unwrap().ends_with("/src"), "{snap}");
    assert_eq!(snap["log"][1], "pre-hook: configured");
    // The command line wins over the file: its paths, its tag.
    let out = env.run(&["--json", "backup", "other", "--tag", "cli"]);
    let id = summary(&String::from_utf8_lossy(&out.stdout))["snapshot"].as_str().unwrap().to_string();
    let snap: serde_json::Value = serde_json::from_str(&env.ok(&["cat", "snapshot", &id])).unwrap();
    assert_eq!(snap["tags"], serde_json::json!(["cli"]), "an option given replaces the file's, lists too");
    assert!(snap["paths"][0].as_str().unwrap().ends_with("/other"), "{snap}");
    // A profile's repository, where the environment names none.
    let second = |args: &[&str]| env.cmd().env_remove("BAKARE_REPOSITORY").args(args).output().unwrap();
    let init = second(&["--profile", "second", "init", "--kdf-memory-kib", "64", "--kdf-passes", "1"]);
    assert_eq!(code(&init), 0, "{}", env.stderr(&init));
    assert!(repo2.join("config").exists());
    let out = second(&["backup", "--profile", "second", "-q"]);
    assert_eq!(code(&out), 0, "{}", env.stderr(&out));
    let listed = String::from_utf8(second(&["--profile", "second", "snapshots"]).stdout).unwrap();
    assert!(listed.contains("/other") && listed.contains("1 snapshot"), "{listed}");
    // Mistakes are named, and nothing runs.
    let bad = env.cmd().env("BAKARE_CONFIG", env.path("nope.toml")).arg("snapshots").output().unwrap();
    assert_eq!(code(&bad), 2);
    assert!(env.stderr(&bad).contains("configuration file [TMP]/nope.toml: No such file"), "{}", env.stderr(&bad));
    env.write("typo.toml", b"[backup]\nexclud = [\"x\"]\n");
    let bad = env.run(&["--config", "typo.toml", "backup", "src"]);
    assert_eq!(code(&bad), 2);
    assert!(env.stderr(&bad).contains("`backup.exclud` is not an option of `bakare backup`"), "{}", env.stderr(&bad));
    let bad = env.run(&["--profile", "third", "snapshots"]);
    assert!(env.stderr(&bad).contains("no profile \"third\""), "{}", env.stderr(&bad));
}

#[test]
fn verbose_iexclude_time_and_hints_for_restic_habits() {
    let env = Env::new();
    env.init();
    env.write("src/keep.txt", b"1");
    env.write("src/photo.JPG", b"2");
    env.write("src/Cache/x", b"3");
    let out = env.run(&[
        "backup",
        "-v",
        "src",
        "--iexclude",
        "*.jpg",
        "--iexclude",
        "cache/",
        "--time",
        "2025-12-24T17:00:00Z",
    ]);
    assert_eq!(code(&out), 0, "{}", env.stderr(&out));
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("new") || l.starts_with("changed"))
        .map(|l| l.replace(&env.tmp.path().to_string_lossy().into_owned(), "[TMP]"))
        .collect();
    assert_eq!(listed, ["new      [TMP]/src/keep.txt"]);
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["--json", "snapshots"])).unwrap();
    assert_eq!(snaps[0]["time_ns"], 1_766_595_600_000_000_000i64);
    env.write("src/keep.txt", b"22");
    let out = env.run(&["--json", "-v", "backup", "src", "--iexclude", "*.jpg", "--iexclude", "cache/"]);
    let files: Vec<serde_json::Value> =
        json_lines(&String::from_utf8_lossy(&out.stdout)).into_iter().filter(|v| v["type"] == "file").collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0]["change"], "changed");
    let bad = env.run(&["backup", "src", "--time", "yesterday"]);
    assert_eq!(code(&bad), 2);
    for (typed, says) in [("check", "`bakare verify`"), ("unlock", "nothing in bakare takes a lock")] {
        let out = env.run(&[typed]);
        assert_eq!(code(&out), 2);
        assert!(env.stderr(&out).contains(says), "{typed}: {}", env.stderr(&out));
    }
}

#[test]
fn cache_folders_are_listed_and_old_ones_cleaned_up() {
    let env = Env::new();
    env.init();
    env.write("src/f", b"data");
    env.ok(&["backup", "-q", "src"]);
    let base = env.path(".cache/bakare");
    let current: Vec<_> = fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(current.len(), 1, "{current:?}");
    // A repository used here 40 days ago, and nothing since.
    let old = base.join("0123456789abcdef0123456789abcdef");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("state.redb"), vec![0u8; 5000]).unwrap();
    fs::write(old.join("last-used"), b"").unwrap();
    let then = filetime::FileTime::from_unix_time(filetime::FileTime::now().unix_seconds() - 40 * 86_400, 0);
    for f in ["state.redb", "last-used"] {
        filetime::set_file_mtime(old.join(f), then).unwrap();
    }
    let listed = env.ok(&["cache"]);
    assert!(
        listed.contains("0123456789abcdef0123456789abcdef") && listed.contains("old: --cleanup removes it"),
        "{listed}"
    );
    let out = env.run(&["backup", "src"]);
    assert!(env.stderr(&out).contains("1 cache folder of repositories not used for 30 days"), "{}", env.stderr(&out));
    let cleaned = env.ok(&["cache", "--cleanup"]);
    assert!(cleaned.starts_with("removed 1 cache folder"), "{cleaned}");
    assert!(!old.exists());
    assert!(base.join(&current[0]).exists(), "the repository in use keeps its folder");
    assert!(env.ok(&["cache"]).ends_with("1 cache folder\n"));
}

#[test]
fn copy_moves_snapshots_between_repositories_once_and_past_damage() {
    let env = Env::new();
    env.init();
    let src_repo = env.path("source-repo");
    let from = src_repo.to_str().unwrap();
    env.ok(&["--repo", from, "init", "--kdf-memory-kib", "64", "--kdf-passes", "1"]);
    env.write("src/a.txt", b"alpha");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    env.write("src/big.bin", &big);
    env.ok(&["--repo", from, "backup", "-q", "src"]);
    env.write("src/b.txt", b"beta");
    env.ok(&["--repo", from, "backup", "-q", "src"]);
    let copy = |more: &[&str]| {
        env.cmd()
            .env("BAKARE_FROM_PASSPHRASE", "correct horse")
            .args(["copy", "--from-repo", from])
            .args(more)
            .output()
            .unwrap()
    };
    let out = copy(&[]);
    assert_eq!(code(&out), 0, "{}", env.stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.ends_with("2 snapshots copied, 0 snapshots copied before\n"), "{said}");
    // The second snapshot added little: deduplicated against the first copy.
    let added: Vec<&str> = said.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert!(added[1].ends_with(" B added") || added[1].contains("KiB"), "{said}");
    let again = copy(&[]);
    assert!(String::from_utf8_lossy(&again.stdout).ends_with("0 snapshots copied, 2 snapshots copied before\n"));
    let verify = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&verify), 0, "{}", env.stderr(&verify));
    // Restored from the copy, the files are the source's.
    let target = env.path("out");
    env.ok(&["restore", "-q", "latest", "--target", target.to_str().unwrap()]);
    let inside = target.join(env.path("src").canonicalize().unwrap().strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(inside.join("b.txt")).unwrap(), b"beta");
    let log = env.ok(&["snapshots", "--log"]);
    assert!(log.contains("copied from snapshot "), "{log}");

    // Damage in the source's data: that file is copied as an error, the rest as it is.
    let mut packs: Vec<PathBuf> = Vec::new();
    let mut stack = vec![src_repo.join("packs")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { packs.push(p) }
        }
    }
    packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    let mut bytes = fs::read(&packs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&packs[0], bytes).unwrap();
    let fresh = env.path("fresh-repo");
    env.ok(&["--repo", fresh.to_str().unwrap(), "init", "--kdf-memory-kib", "64", "--kdf-passes", "1"]);
    let out = env
        .cmd()
        .env("BAKARE_FROM_PASSPHRASE", "correct horse")
        .args(["--repo", fresh.to_str().unwrap(), "copy", "--from-repo", from, "latest"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", env.stderr(&out));
    assert!(env.stderr(&out).contains("big.bin: not copied: its data is damaged"), "{}", env.stderr(&out));
    let verify = env.run(&["--repo", fresh.to_str().unwrap(), "verify", "--read-data"]);
    assert_eq!(code(&verify), 0, "{}", env.stderr(&verify));
    let out2 = env.path("out2");
    let restore =
        env.run(&["--repo", fresh.to_str().unwrap(), "restore", "-q", "latest", "--target", out2.to_str().unwrap()]);
    assert_eq!(code(&restore), 4, "the damaged file is not restored: {}", env.stderr(&restore));
    let inside = out2.join(env.path("src").canonicalize().unwrap().strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("b.txt")).unwrap(), b"beta");
}

/// Whether this machine can mount (says why not when it cannot).
fn can_mount() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let ok = Path::new("/dev/fuse").exists() && fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !ok {
        eprintln!("skipping: mounting needs /dev/fuse and root");
    }
    ok
}

/// The common mistake, a mount point not made yet, is said plainly (it was "needs
/// /dev/fuse, and root or fusermount: No such file or directory"), before anything is asked.
#[test]
fn mount_names_a_missing_mount_point() {
    let env = Env::new();
    env.init();
    let out = env.run(&["mount", &env.path("my mount").display().to_string()]);
    assert_eq!(code(&out), 1);
    let said = env.stderr(&out);
    assert!(said.contains("my mount does not exist: make it first (mkdir -p '"), "{said}");
    env.write("file", b"x");
    let out = env.run(&["mount", &env.path("file").display().to_string()]);
    assert!(env.stderr(&out).contains("file is not a folder"), "{}", env.stderr(&out));
    // A mount whose process was killed stays until unmounted: said so.
    if !can_mount() {
        return;
    }
    env.write("src/a", b"a");
    env.ok(&["backup", "-q", "src"]);
    let mnt = env.path("mnt");
    let mut mounted = start_mount(&env, &mnt, &[]);
    let child = mounted.child.as_mut().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let out = env.run(&["mount", &mnt.display().to_string()]);
    assert!(
        env.stderr(&out).contains("is still mounted by a process that ended: unmount it first"),
        "{}",
        env.stderr(&out)
    );
    drop(mounted);
    assert!(fs::read_dir(&mnt).unwrap().next().is_none(), "unmounted, empty");
}

/// A running `bakare mount`: a test that fails before [`stop_mount`] still ends it and
/// leaves nothing mounted.
struct Mounted {
    child: Option<std::process::Child>,
    mnt: PathBuf,
}

impl Mounted {
    fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Starts `bakare mount` on `mnt` (made here) with `more` options; returns once its
/// snapshots show.
fn start_mount(env: &Env, mnt: &Path, more: &[&str]) -> Mounted {
    fs::create_dir_all(mnt).unwrap();
    let child = env.cmd().arg("mount").args(more).arg(mnt).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut mounted = Mounted { child: Some(child), mnt: mnt.to_path_buf() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !mnt.join("snapshots/latest").exists() {
        assert!(std::time::Instant::now() < deadline, "the mount never appeared");
        let ended = mounted.child.as_mut().map(|c| c.try_wait().unwrap().is_some());
        assert_eq!(ended, Some(false), "bakare mount ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    mounted
}

/// Ctrl-C: the mount goes and the command ends well.
fn stop_mount(env: &Env, mnt: &Path, mut mounted: Mounted) {
    let child = mounted.child.take().unwrap();
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", env.stderr(&out));
    assert!(!mnt.join("snapshots").exists(), "still mounted: {}", env.stderr(&out));
}

/// 100,000 files looked at through the mount, with `--memory-limit 48M`: the mount's peak
/// RSS (from once it is up) stays under it. It used to keep every inode it ever made, about
/// 420 bytes each with its folder's entry copied in: it peaked at 55 MiB here (34 MiB now). Folders looked at again
/// after the kernel was told to drop their names still list and read right.
#[test]
fn mount_memory_stays_within_the_limit_however_many_files_are_looked_at() {
    if !can_mount() {
        return;
    }
    let env = Env::new();
    env.init();
    let (folders, files) = (100, 1000);
    for d in 0..folders {
        let dir = env.path(&format!("src/d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            fs::write(dir.join(format!("file-with-a-longish-name-{f:04}.txt")), format!("{d}/{f}")).unwrap();
        }
    }
    env.ok(&["backup", "-q", "src"]);
    // A space in the mount point: mountinfo escapes it (`\040`), and a mount that did not
    // read it back so thought itself unmounted after 10 s and ended.
    let mnt = env.path("mount point");
    let child = start_mount(&env, &mnt, &["--memory-limit", "48M"]);
    let status = format!("/proc/{}/status", child.id());
    let peak_mib = || {
        let s = fs::read_to_string(&status).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    // Counted from here, once the repository is open.
    fs::write(format!("/proc/{}/clear_refs", child.id()), "5").unwrap();
    let root = mnt.join("snapshots/latest").join(env.path("src").canonicalize().unwrap().strip_prefix("/").unwrap());
    let walk = |every: usize| {
        let mut seen = 0;
        for d in 0..folders {
            let dir = root.join(format!("d{d:03}"));
            for (i, e) in fs::read_dir(&dir).unwrap().enumerate() {
                let e = e.unwrap();
                let meta = fs::symlink_metadata(e.path()).unwrap();
                assert!(meta.is_file());
                if i % every == 0 {
                    let name = e.file_name().into_string().unwrap();
                    let f: u32 =
                        name.trim_start_matches("file-with-a-longish-name-").trim_end_matches(".txt").parse().unwrap();
                    assert_eq!(fs::read_to_string(e.path()).unwrap(), format!("{d}/{f}"));
                }
                seen += 1;
            }
        }
        seen
    };
    // A process working in the first folder: it stays the process's folder however many
    // names are handed back to the kernel (a folder's name is never: the kernel would
    // unhash it under the process, whose getcwd then fails).
    let mut resident = Command::new("sleep").arg("120").current_dir(root.join("d000")).spawn().unwrap();
    assert_eq!(walk(10), folders * files);
    // Again: the first folders' names were handed back by now, and are looked up anew.
    assert_eq!(walk(97), folders * files);
    let cwd = fs::read_link(format!("/proc/{}/cwd", resident.id())).unwrap();
    let _ = resident.kill();
    let _ = resident.wait();
    assert!(!cwd.to_string_lossy().ends_with("(deleted)"), "the folder went from under its process: {cwd:?}");
    let peak = peak_mib();
    stop_mount(&env, &mnt, child);
    assert!(peak < 48, "the mount peaked at {peak} MiB with --memory-limit 48M");
}

#[test]
fn mount_shows_every_snapshot_and_reads_every_file() {
    use std::os::unix::fs::MetadataExt as _;
    if !can_mount() {
        return;
    }
    let env = Env::new();
    env.init();
    env.write("src/a.txt", b"alpha");
    env.write("src/empty", b"");
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    env.write("src/deep/er/big.bin", &big);
    std::os::unix::fs::symlink("a.txt", env.path("src/link")).unwrap();
    fs::set_permissions(env.path("src/a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let attr = |args: &[&str]| std::process::Command::new(args[0]).args(&args[1..]).output().ok();
    let xattr = attr(&["setfattr", "-n", "user.note", "-v", "kept", env.path("src/a.txt").to_str().unwrap()])
        .is_some_and(|o| o.status.success());
    env.ok(&["backup", "-q", "--tag", "first", "src"]);
    env.write("src/b.txt", b"beta");
    env.ok(&["backup", "-q", "src"]);
    let mnt = env.path("mnt");
    let child = start_mount(&env, &mnt, &["--xattrs"]);
    let src = env.path("src").canonicalize().unwrap();
    let rel = src.strip_prefix("/").unwrap();
    let latest = mnt.join("snapshots/latest").join(rel);
    // `ls -i` reads the listing's inode numbers, `stat` the looked-up one: the same, also
    // for names listed before any was looked up.
    let listed: Vec<(PathBuf, u64)> = fs::read_dir(&latest)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.path(), std::os::unix::fs::DirEntryExt::ino(&e)))
        .collect();
    for (p, ino) in listed {
        assert_eq!(ino, fs::symlink_metadata(&p).unwrap().ino(), "{p:?}");
    }
    // Every file read back through the mount, byte for byte, with its mode and mtime.
    let mut stack = vec![PathBuf::new()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(src.join(&dir)).unwrap() {
            let e = e.unwrap();
            let r = dir.join(e.file_name());
            let (orig, seen) =
                (fs::symlink_metadata(src.join(&r)).unwrap(), fs::symlink_metadata(latest.join(&r)).unwrap());
            assert_eq!(orig.mode(), seen.mode(), "{r:?}");
            if orig.is_dir() {
                stack.push(r);
            } else if orig.is_symlink() {
                assert_eq!(fs::read_link(src.join(&r)).unwrap(), fs::read_link(latest.join(&r)).unwrap());
            } else {
                assert_eq!(orig.mtime(), seen.mtime(), "{r:?}");
                assert_eq!(fs::read(src.join(&r)).unwrap(), fs::read(latest.join(&r)).unwrap(), "{r:?}");
                files += 1;
            }
        }
    }
    assert_eq!(files, 4);
    // A read from the middle of the large file, across a chunk boundary.
    let mut f = fs::File::open(latest.join("deep/er/big.bin")).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(5_000_000)).unwrap();
    let mut piece = vec![0u8; 3_000_000];
    std::io::Read::read_exact(&mut f, &mut piece).unwrap();
    assert_eq!(piece, big[5_000_000..8_000_000]);
    if xattr {
        let got =
            attr(&["getfattr", "--only-values", "-n", "user.note", latest.join("a.txt").to_str().unwrap()]).unwrap();
        assert_eq!(String::from_utf8_lossy(&got.stdout), "kept", "an extended attribute through the mount");
    } else {
        eprintln!("no setfattr here, or no user xattrs on this file system: extended attributes not checked");
    }
    // The other views: two snapshots by time and by id, the first under its tag and host.
    let count = |p: &str| fs::read_dir(mnt.join(p)).unwrap().count();
    assert_eq!((count("snapshots"), count("ids")), (3, 2), "two snapshots and `latest`");
    assert!(mnt.join("tags/first/latest").join(rel).join("a.txt").exists());
    assert!(!mnt.join("tags/first/latest").join(rel).join("b.txt").exists());
    let host = fs::read_dir(mnt.join("hosts")).unwrap().next().unwrap().unwrap().path();
    assert!(host.join("latest").join(rel).join("b.txt").exists());
    // Ctrl-C unmounts and ends it.
    stop_mount(&env, &mnt, child);
}

#[test]
fn dry_run_says_what_would_be_read_and_writes_nothing() {
    let env = Env::new();
    env.init();
    env.write("src/same.txt", b"same");
    env.write("src/edit.txt", b"before");
    // Older than the memo's racy window (a file changed just before it was read is read
    // again next time, and a dry run counts it so).
    let old = filetime::FileTime::from_unix_time(filetime::FileTime::now().unix_seconds() - 3600, 0);
    for f in ["src/same.txt", "src/edit.txt"] {
        filetime::set_file_mtime(env.path(f), old).unwrap();
    }
    env.ok(&["backup", "-q", "src"]);
    env.write("src/edit.txt", b"after!!");
    env.write("src/new.txt", b"new");
    let listing = |p: &str| -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(env.path(p)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let (packs, snaps) = (listing("repo/packs"), env.ok(&["snapshots"]));
    let out = env.ok(&["backup", "-n", "-v", "src"]);
    let src = env.path("src").canonicalize().unwrap();
    let src = src.display();
    assert!(
        out.contains(&format!("changed  {src}/edit.txt\n")) && out.contains(&format!("new      {src}/new.txt\n")),
        "{out}"
    );
    assert!(!out.contains("same.txt"), "{out}");
    assert!(out.contains("would read: 10 B from 2 files (1 new, 1 changed)\nunchanged:  1 file"), "{out}");
    assert_eq!((listing("repo/packs"), env.ok(&["snapshots"])), (packs, snaps), "a dry run wrote to the repository");
    // The real backup then finds the same.
    let real = summary(&env.ok(&["--json", "backup", "src"]));
    assert_eq!((real["files_new"].as_u64(), real["files_changed"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn stdin_is_backed_up_as_one_file() {
    use std::io::Write as _;
    let env = Env::new();
    env.init();
    let dump: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    let pipe_with = |name: &str, more: &[&str], data: &[u8]| {
        let mut child = env
            .cmd()
            .args(["--json", "backup", "--stdin", "--stdin-filename", name, "--tag", "db"])
            .args(more)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", env.stderr(&out));
        summary(&String::from_utf8_lossy(&out.stdout))
    };
    let pipe = |name: &str| pipe_with(name, &[], &dump);
    let first = pipe("db.sql");
    assert_eq!(first["bytes_read"].as_u64(), Some(3_000_000));
    let again = pipe("db.sql");
    assert!(again["bytes_added"].as_u64().unwrap() < 10_000, "the same dump again is deduplicated: {again}");
    let out = env.cmd().args(["dump", "latest:/db.sql"]).output().unwrap();
    assert_eq!(out.stdout, dump);
    // --compression is honoured on standard input too.
    let text: Vec<u8> = b"INSERT INTO t VALUES (1, 'the same row');\n".iter().copied().cycle().take(1 << 20).collect();
    let plain = pipe_with("plain.sql", &["--compression", "off"], &text);
    assert!(plain["bytes_added"].as_u64().unwrap() > 1 << 20, "stored as it is: {plain}");
    let mut other = text.clone();
    other[0] = b'-';
    let packed = pipe_with("packed.sql", &[], &other);
    assert!(packed["bytes_added"].as_u64().unwrap() < 100_000, "compressed: {packed}");
    let bad = env.run(&["backup", "--stdin", "--stdin-filename", "a/b"]);
    assert_eq!(code(&bad), 1);
    assert!(env.stderr(&bad).contains("a file name (no /) is needed"), "{}", env.stderr(&bad));
}
