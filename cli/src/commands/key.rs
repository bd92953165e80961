//! `bakare key export --put-only FILE`: the key an unattended machine keeps.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context as _, Result};
use bakare_crypto::write_key_file;

use crate::Outcome;
use crate::args::KeyExportArgs;
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
