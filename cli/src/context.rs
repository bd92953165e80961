//! Where the repository is, how its key is obtained, and opening it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use bakare_crypto::open_write_key_file;
use bakare_store::KdfParams;
use bakare_store::backend::{Backend, LocalBackend, RemoteBackend, RemoteOptions, RemoteUrl, RetryPolicy, Retrying};
use bakare_store::{Access, Budget, ChunkerParams, Repository, StoreError};

use crate::args::Global;

pub struct Context {
    pub global: Global,
    /// The run's memory budget, made once from --memory-limit and handed to the repository
    /// handle (which hands it on) and the local files.
    pub budget: Budget,
    /// The cache folders were made private (once per command).
    private: std::sync::Once,
    /// The command's one handle on the repository's storage: a remote one holds its
    /// connections (an ssh login each), which every part of the command shares.
    backend: std::sync::OnceLock<Arc<dyn Backend>>,
    /// The repository's config, read once per command (each read is a round trip).
    config: std::sync::OnceLock<bakare_store::Config>,
    /// Where the passphrase may come from in the environment, and the prompt for it: the
    /// source of a `copy` has its own.
    passphrase_env: &'static str,
    prompt: &'static str,
}

impl Context {
    pub fn new(global: Global) -> Self {
        let budget = Budget::new(global.memory_limit);
        Self {
            global,
            budget,
            private: std::sync::Once::new(),
            backend: std::sync::OnceLock::new(),
            config: std::sync::OnceLock::new(),
            passphrase_env: "BAKARE_PASSPHRASE",
            prompt: "passphrase: ",
        }
    }

    /// A context for the repository a `copy` reads from: `repo`, its passphrase from
    /// BAKARE_FROM_PASSPHRASE, `file` or `command`, this command's other options.
    pub fn source(&self, repo: PathBuf, file: Option<PathBuf>, command: Option<String>) -> Self {
        let global = Global {
            repo: Some(repo),
            repository_file: None,
            passphrase_file: file,
            passphrase_command: command,
            key_file: None,
            ..self.global.clone()
        };
        Self { passphrase_env: "BAKARE_FROM_PASSPHRASE", prompt: "source repository passphrase: ", ..Self::new(global) }
    }

    pub fn repo_path(&self) -> Result<PathBuf> {
        match &self.global.repo {
            Some(p) => Ok(p.clone()),
            None => dirs::data_dir()
                .map(|d| d.join("bakare").join("repo"))
                .ok_or_else(|| anyhow!("no --repo given and no data folder known for this user")),
        }
    }

    /// The remote repository --repo names, if it names one.
    pub fn remote_url(&self) -> Result<Option<RemoteUrl>> {
        let Some(repo) = &self.global.repo else { return Ok(None) };
        match repo.to_str().and_then(RemoteUrl::parse) {
            None => Ok(None),
            Some(Ok(url)) => Ok(Some(url)),
            Some(Err(e)) => bail!("--repo {e}"),
        }
    }

    /// The storage of the repository (made on first use, then shared).
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        if let Some(b) = self.backend.get() {
            return Ok(b.clone());
        }
        let made = self.make_backend()?;
        Ok(self.backend.get_or_init(|| made).clone())
    }

    /// The repository's config (`config`, or its mirror) on `backend` (this command's:
    /// [`Context::backend`]), read on first use.
    pub fn read_config(&self, backend: &dyn Backend) -> Result<bakare_store::Config, StoreError> {
        if let Some(c) = self.config.get() {
            return Ok(c.clone());
        }
        let read = Repository::read_config(backend)?;
        Ok(self.config.get_or_init(|| read).clone())
    }

    fn make_backend(&self) -> Result<Arc<dyn Backend>> {
        let Some(url) = self.remote_url()? else {
            return Ok(Arc::new(LocalBackend::new(self.repo_path()?)));
        };
        let g = &self.global;
        // Each upload holds a pack (up to 18 MiB) twice: at most half the budget for them.
        let uploads =
            usize::try_from(g.memory_limit / 2 / (40 << 20)).unwrap_or(usize::MAX).clamp(1, g.connections.max(1));
        let options = RemoteOptions {
            stall_timeout: g.stall_timeout,
            spool: self.cache_base()?.map(|b| b.join("spool")),
            parallel_writes: uploads,
            known_hosts: g.sftp_known_hosts.clone(),
            ssh_key: g.sftp_key.clone(),
        };
        let remote = RemoteBackend::new(url.clone(), options).with_context(|| format!("opening {url}"))?;
        let policy = RetryPolicy { budget: g.retry_budget, connections: g.connections, ..RetryPolicy::default() };
        Ok(Arc::new(Retrying::new(remote, policy)))
    }

    /// The memo of this repository on this machine, or a disabled one with --no-cache.
    pub fn memo(&self, repo: &Repository) -> Result<bakare_planner::Memo> {
        self.memo_of(repo.config())
    }

    /// The memo of the repository with this config (it needs no key, so it can be opened
    /// while the key is being unlocked).
    pub fn memo_of(&self, config: &bakare_store::Config) -> Result<bakare_planner::Memo> {
        let Some(folder) = self.cache_folder(config)? else {
            return Ok(bakare_planner::Memo::disabled());
        };
        let path = folder.join("state.redb");
        if !path.exists() {
            return Ok(bakare_planner::Memo::open(&path, &self.budget));
        }
        if !bakare_planner::Memo::needs_check(&path) {
            return Ok(bakare_planner::Memo::open_unchecked(&path, &self.budget));
        }
        Ok(bakare_planner::Memo::open_after_check(&path, check_in_child(&path), &self.budget))
    }

    /// This machine's cache folder for the repository with this config, or `None` with
    /// --no-cache. Folders and files an older bakare made readable to others are made
    /// private (the memo holds file names).
    pub fn cache_folder(&self, config: &bakare_store::Config) -> Result<Option<PathBuf>> {
        let Some(base) = self.cache_base()? else { return Ok(None) };
        let folder = base.join(config.id_hex());
        self.private.call_once(|| {
            make_private(&base, &folder);
            // When this repository was last used here, for `bakare cache --cleanup`.
            if folder.is_dir() {
                let _ = std::fs::write(folder.join(crate::commands::cache::LAST_USED), b"");
            }
        });
        Ok(Some(folder))
    }

    /// The folders this command writes to on this machine: the cache folder and a local
    /// repository (as they resolve now). A filesystem snapshot must not hide them.
    pub fn writable_folders(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(Some(cache)) = self.cache_base() {
            out.push(cache);
        }
        if let (Ok(None), Ok(repo)) = (self.remote_url(), self.repo_path()) {
            out.push(repo);
        }
        out.into_iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect()
    }

    /// This machine's cache folder for all repositories, or `None` with --no-cache.
    pub fn cache_base(&self) -> Result<Option<PathBuf>> {
        if self.global.no_cache {
            return Ok(None);
        }
        match &self.global.cache_dir {
            Some(d) => Ok(Some(d.clone())),
            None => dirs::cache_dir()
                .map(|d| Some(d.join("bakare")))
                .ok_or_else(|| anyhow!("no --cache-dir given and no cache folder known for this user")),
        }
    }

    /// The passphrase from BAKARE_PASSPHRASE, --passphrase-file or the terminal.
    pub fn passphrase(&self, confirm: bool) -> Result<String> {
        if let Ok(p) = std::env::var(self.passphrase_env) {
            return Ok(p);
        }
        if let Some(f) = &self.global.passphrase_file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading passphrase file {}", f.display()))?;
            return Ok(text.trim_end_matches(['\n', '\r']).to_string());
        }
        if let Some(cmd) = &self.global.passphrase_command {
            return passphrase_from_command(cmd);
        }
        if !std::io::stdin().is_terminal() {
            if self.passphrase_env != "BAKARE_PASSPHRASE" {
                bail!(
                    "no passphrase for the source repository: set {}, use --from-passphrase-file or \
                     --from-passphrase-command, or run on a terminal",
                    self.passphrase_env
                );
            }
            bail!(
                "no passphrase: set BAKARE_PASSPHRASE, use --passphrase-file or --passphrase-command, or run on a \
                 terminal"
            );
        }
        let p = rpassword::prompt_password(self.prompt).context("reading passphrase")?;
        if confirm && rpassword::prompt_password("passphrase again: ").context("reading passphrase")? != p {
            bail!("the passphrases do not match");
        }
        if p.is_empty() {
            bail!("empty passphrase");
        }
        Ok(p)
    }

    /// Opens the repository with the master key (passphrase) or, when `allow_put_only`
    /// and --key-file is given, with the put-only key.
    /// The index is read on first use, not here: a backup in which nothing changed never
    /// needs it.
    pub fn open(&self, allow_put_only: bool) -> Result<Repository> {
        let backend = self.backend()?;
        let location = backend.location();
        if let Some(kf) = &self.global.key_file {
            let bytes = std::fs::read(kf).with_context(|| format!("reading key file {}", kf.display()))?;
            let key = open_write_key_file(&bytes).with_context(|| format!("key file {}", kf.display()))?;
            if !allow_put_only {
                bail!("{}", StoreError::NeedsMasterKey);
            }
            let repo = Repository::open_with_key(backend, Access::Write(key)).map_err(|e| match e {
                StoreError::NotARepository { .. } => anyhow::Error::from(NoRepository(location.clone())),
                e => anyhow::Error::from(e).context(format!("opening repository {location}")),
            })?;
            return self.local_index(repo);
        }
        // Check it is a repository before asking for a passphrase.
        let config = self.check_config(backend.as_ref())?;
        let pass = self.passphrase(false)?;
        let repo = Repository::open_with_passphrase_and_config(backend, config, pass.as_bytes())
            .with_context(|| format!("opening repository {location}"))?;
        self.local_index(repo)
    }

    /// Reads the repository's config (no key needed), or says there is no repository there
    /// and how to create one.
    fn check_config(&self, backend: &dyn Backend) -> Result<bakare_store::Config> {
        let location = backend.location();
        match self.read_config(backend) {
            Ok(c) => Ok(c),
            Err(StoreError::NotARepository { .. }) => Err(NoRepository(location).into()),
            Err(e) => Err(e).with_context(|| format!("opening repository {location}")),
        }
    }

    /// Says on stderr which repository a command opened (a typo in --repo shows at once).
    pub fn say_opened(&self, repo: &Repository) {
        if !self.global.quiet && !self.global.json {
            let id = repo.config().id_hex();
            say!("repository {} at {}", id.get(..8).unwrap_or(&id), repo.backend().location());
        }
    }

    /// Keeps the repository's blob index in `index.redb` in its cache folder rather than in
    /// memory (none with --no-cache; in memory if the file is busy or unusable).
    fn local_index(&self, mut repo: Repository) -> Result<Repository> {
        repo.set_budget(self.budget.clone());
        self.say_opened(&repo);
        if let Some(folder) = self.cache_folder(repo.config())? {
            // Failing that, the index is read into memory as before: nothing is lost.
            let _ = repo.use_local_index(&folder.join("index.redb"));
            if repo.backend().is_remote() {
                // Busy (another bakare) or unusable: trees are downloaded, as without it.
                let _ = std::fs::create_dir_all(&folder);
                let _ = repo.use_tree_cache(&folder.join("trees.redb"));
            }
        }
        Ok(repo)
    }

    /// Opens with the master key and keeps the passphrase (repair may seal a new key file).
    pub fn open_master(&self) -> Result<(Repository, String)> {
        if self.global.key_file.is_some() {
            bail!("{}", StoreError::NeedsMasterKey);
        }
        let backend = self.backend()?;
        let location = backend.location();
        let config = self.check_config(backend.as_ref())?;
        let pass = self.passphrase(false)?;
        let repo = Repository::open_with_passphrase_and_config(backend, config, pass.as_bytes())
            .with_context(|| format!("opening repository {location}"))?;
        Ok((self.local_index(repo)?, pass))
    }

    /// Opens the repository. Only the default repository of a person at a terminal is
    /// created here, after saying where: a repository named by --repo or BAKARE_REPOSITORY
    /// (a typo, an unmounted disk) or a run without a terminal (cron) needs `bakare init`,
    /// so that a backup never goes silently to a new, wrong place.
    pub fn open_or_init(&self) -> Result<(Repository, bool)> {
        let backend = self.backend()?;
        let location = backend.location();
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        match self.read_config(backend.as_ref()) {
            Err(StoreError::NotARepository { .. })
                if self.global.key_file.is_none() && self.global.repo.is_none() && interactive =>
            {
                say!(
                    "bakare: no repository yet at {location}: creating one there (the default; --repo or \
                     BAKARE_REPOSITORY choose another, `bakare init` creates one explicitly)"
                );
                let pass = self.passphrase(true)?;
                let repo = Repository::init(backend, pass.as_bytes(), KdfParams::default(), ChunkerParams::default())
                    .with_context(|| format!("creating repository {location}"))?;
                Ok((self.local_index(repo)?, true))
            }
            _ => Ok((self.open(true)?, false)),
        }
    }
}

/// Takes group and other bits off `base`, `folder` and the files directly in `folder`
/// (best effort: a cache that cannot be changed still works).
fn make_private(base: &std::path::Path, folder: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let tighten = |p: &std::path::Path, mode: u32| {
        if let Ok(m) = std::fs::symlink_metadata(p)
            && !m.file_type().is_symlink()
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
    };
    tighten(base, 0o700);
    tighten(folder, 0o700);
    for e in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let p = e.path();
        tighten(&p, if p.is_dir() { 0o700 } else { 0o600 });
    }
}

/// There is no repository where the command looked.
#[derive(Debug)]
pub struct NoRepository(pub String);

impl std::fmt::Display for NoRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no repository at {0}; create one with `bakare init --repo {0}`", self.0)
    }
}

impl std::error::Error for NoRepository {}

/// Runs `bakare debug check-state PATH` in a child process: redb's integrity check, where a
/// crash or an abort cannot take this process down. A child that cannot be started is no
/// verdict on the file: the file is then opened here (where a panic is still caught).
fn check_in_child(path: &std::path::Path) -> Result<(), String> {
    let Ok(exe) = std::env::current_exe() else { return Ok(()) };
    let out = std::process::Command::new(exe)
        .args(["debug", "check-state"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    let Ok(out) = out else { return Ok(()) };
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(_) => Err(said.strip_prefix("bakare: error: ").unwrap_or(&said).to_string()),
        None => Err(format!("checking it crashed the checker ({})", out.status)),
    }
}

/// Warns about index segments that could not be read (their blobs are saved again, or found
/// by `bakare verify --repair`).
pub fn warn_index(repo: &Repository) {
    for w in repo.index_warnings() {
        say!("bakare: warning: skipped a damaged index segment ({w})");
    }
}

/// The first line `cmd` prints (run with `sh -c`), as `--passphrase-command` takes it.
fn passphrase_from_command(cmd: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the passphrase command {cmd:?}"))?;
    if !out.status.success() {
        bail!("the passphrase command {cmd:?} failed ({})", out.status);
    }
    let text = String::from_utf8(out.stdout).context("the passphrase command printed something that is not UTF-8")?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        bail!("the passphrase command {cmd:?} printed no passphrase");
    }
    Ok(line.to_string())
}
