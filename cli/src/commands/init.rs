//! `bakare init`: create a repository and its master key.

use anyhow::{Context as _, Result, bail};
use bakare_store::KdfParams;
use bakare_store::{ChunkerParams, Repository};

use crate::Outcome;
use crate::args::InitArgs;
use crate::context::Context;

pub fn run(ctx: &Context, a: &InitArgs) -> Result<Outcome> {
    let backend = ctx.backend()?;
    let location = backend.location();
    if ctx.remote_url()?.is_some() {
        match Repository::read_config(backend.as_ref()) {
            Ok(_) => bail!("a repository already exists at {location}"),
            Err(bakare_store::StoreError::NotARepository { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("checking {location}")),
        }
    } else {
        let path = ctx.repo_path()?;
        if path.exists() && std::fs::read_dir(&path).map(|mut d| d.next().is_some()).unwrap_or(true) {
            if path.join("config").exists() || path.join("config.mirror").exists() {
                bail!("a repository already exists at {}", path.display());
            }
            bail!("{} exists and is not empty; choose an empty or new folder", path.display());
        }
    }
    let kdf = KdfParams { m_kib: a.kdf_memory_kib, t: a.kdf_passes, p: 1 };
    let avg = a.chunk_kib.saturating_mul(1024);
    let chunker = ChunkerParams { min: avg / 2, avg, max: avg.saturating_mul(8).min(16 << 20) };
    let pass = ctx.passphrase(true)?;
    let repo = Repository::init_with_pack_size(backend, pass.as_bytes(), kdf, chunker, a.pack_mib.clamp(1, 1024) << 20)
        .with_context(|| format!("creating repository {location}"))?;
    report(ctx, &repo, &location)?;
    Ok(Outcome::Success)
}

pub fn report(ctx: &Context, repo: &Repository, location: &str) -> std::io::Result<()> {
    let id = repo.config().id_hex();
    let fp = repo.config().data_public().fingerprint();
    if ctx.global.json {
        out!("{}", serde_json::json!({"type": "init", "repository": location, "id": id, "key_fingerprint": fp}))?;
    } else if !ctx.global.quiet {
        out!("created repository {id} at {location}")?;
        out!("master key fingerprint {fp}")?;
        out!("keep the passphrase safe: without it the backups cannot be read")?;
    }
    Ok(())
}
