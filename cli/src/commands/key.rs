//! `bakare key export --put-only FILE`: the key an unattended machine keeps; `key list`,
//! `key add`, `key passwd` and `key remove`: the passphrases that open the repository.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context as _, Result, bail};
use bakare_crypto::write_key_file;

use crate::Outcome;
use crate::args::{KeyExportArgs, NewPassphraseArgs};
use crate::context::Context;

pub fn export(ctx: &Context, a: &KeyExportArgs) -> Result<Outcome> {
    let repo = ctx.open(false)?;
    let bytes = write_key_file(repo.access().write_key());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.file)
        .with_context(|| format!("creating {}", a.file.display()))?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", a.file.display()))?;
    if ctx.global.json {
        out!("{}", serde_json::json!({"type": "key_export", "file": a.file, "put_only": a.put_only}))?;
    } else if !ctx.global.quiet {
        out!("wrote put-only key to {}: it can add backups but cannot read any", a.file.display())?;
    }
    Ok(Outcome::Success)
}

/// A key file as `key list --json` and `cat keys` show it.
pub fn key_json(k: &bakare_store::KeyFileInfo) -> serde_json::Value {
    serde_json::json!({
        "id": k.path.rsplit('/').next(), "path": k.path, "current": k.current, "problem": k.problem,
        "kdf": k.kdf.map(|p| serde_json::json!({"m_kib": p.m_kib, "t": p.t, "p": p.p})),
    })
}

/// The short form of a key file's id, as `key list` shows it.
fn short(path: &str) -> &str {
    let id = path.rsplit('/').next().unwrap_or(path);
    id.get(..12).unwrap_or(id)
}

pub fn list(ctx: &Context) -> Result<Outcome> {
    let (repo, pass) = ctx.open_master()?;
    let keys = repo.key_files(pass.as_bytes())?;
    if ctx.global.json {
        let list: Vec<_> = keys.iter().map(key_json).collect();
        out!("{}", serde_json::Value::Array(list))?;
        return Ok(Outcome::Success);
    }
    out!("  {:<12}  {:<26}  note", "id", "kdf (argon2id)")?;
    for k in &keys {
        let kdf = k
            .kdf
            .map(|p| {
                let memory = crate::output::bytes(u64::from(p.m_kib) * 1024).replace(".0 ", " ");
                format!("{memory}, {} passes, {} lanes", p.t, p.p)
            })
            .unwrap_or_default();
        let mark = if k.current { "*" } else { " " };
        let note = match (&k.problem, k.current) {
            (Some(p), _) => format!("damaged: {p}"),
            (None, true) => "the passphrase in use".to_string(),
            (None, false) => String::new(),
        };
        out!("{mark} {:<12}  {kdf:<26}  {note}", short(&k.path))?;
    }
    Ok(Outcome::Success)
}

/// The new passphrase: from the file, BAKARE_NEW_PASSPHRASE, or asked twice at a terminal.
fn new_passphrase(a: &NewPassphraseArgs) -> Result<String> {
    use std::io::IsTerminal as _;
    let p = if let Some(f) = &a.new_passphrase_file {
        std::fs::read_to_string(f)
            .with_context(|| format!("reading new passphrase file {}", f.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else if let Ok(p) = std::env::var("BAKARE_NEW_PASSPHRASE") {
        p
    } else if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("new passphrase: ").context("reading passphrase")?;
        if rpassword::prompt_password("new passphrase again: ").context("reading passphrase")? != p {
            bail!("the passphrases do not match");
        }
        p
    } else {
        bail!("no new passphrase: use --new-passphrase-file, set BAKARE_NEW_PASSPHRASE, or run on a terminal");
    };
    if p.is_empty() {
        bail!("empty passphrase");
    }
    Ok(p)
}

/// `key add`, or with `replace` `key passwd`: the new key files are written before any old
/// one is removed, so an interruption leaves both passphrases working, never neither.
pub fn add(ctx: &Context, a: &NewPassphraseArgs, replace: bool) -> Result<Outcome> {
    let (repo, pass) = ctx.open_master()?;
    let new = new_passphrase(a)?;
    if new == pass {
        bail!("the new passphrase is the one in use");
    }
    let keys = repo.key_files(pass.as_bytes())?;
    let kdf = keys.iter().find(|k| k.current).and_then(|k| k.kdf).unwrap_or_default();
    let added = repo.add_key(new.as_bytes(), kdf)?;
    let mut removed = Vec::new();
    if replace {
        let all = repo.key_files(new.as_bytes())?;
        for k in keys.iter().filter(|k| k.current) {
            repo.remove_key_file(&k.path, &all)?;
            removed.push(k.path.clone());
        }
    }
    if ctx.global.json {
        out!("{}", serde_json::json!({"type": "key", "added": added, "removed": removed}))?;
    } else if !ctx.global.quiet {
        let ids: Vec<_> = added.iter().map(|p| short(p)).collect();
        out!("added key files {} for the new passphrase", ids.join(", "))?;
        if replace {
            out!("removed the {} key files of the old passphrase", removed.len())?;
        }
    }
    Ok(Outcome::Success)
}

pub fn remove(ctx: &Context, id: &str) -> Result<Outcome> {
    let (repo, pass) = ctx.open_master()?;
    let keys = repo.key_files(pass.as_bytes())?;
    let id = id.to_ascii_lowercase();
    let matching: Vec<_> =
        keys.iter().filter(|k| k.path.rsplit('/').next().is_some_and(|n| n.starts_with(&id))).collect();
    let key = match matching.as_slice() {
        [] => bail!("no key file {id:?} (see `bakare key list`)"),
        [one] => *one,
        more => bail!("key id {id:?} is ambiguous: it matches {} key files", more.len()),
    };
    if key.current {
        bail!("key file {} is opened by the passphrase in use: change it with `bakare key passwd`", short(&key.path));
    }
    repo.remove_key_file(&key.path, &keys)?;
    if !ctx.global.quiet {
        out!("removed key file {}", short(&key.path))?;
    }
    Ok(Outcome::Success)
}
