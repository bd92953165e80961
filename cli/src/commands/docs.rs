//! `bakare completions SHELL` and `bakare man DIR`: generated from the command line's own
//! definition (clap_complete, clap_mangen), so they never disagree with `--help`.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::Outcome;
use crate::args::Cli;
use crate::context::Context;

pub fn completions(shell: clap_complete::Shell) -> Result<Outcome> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "bakare", &mut out);
    out!("{}", String::from_utf8_lossy(&out))?;
    Ok(Outcome::Success)
}

pub fn man(ctx: &Context, dir: &Path) -> Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
    if !ctx.global.quiet {
        let count = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        say!("bakare: wrote {count} man pages into {} (try `man -l {}/bakare.1`)", dir.display(), dir.display());
    }
    Ok(Outcome::Success)
}
