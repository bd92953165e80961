//! `bakare resume [SESSION]`: continue an interrupted backup.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use bakare_planner::{BackupOptions, Excludes, find_session, finish_committed, prepare_resume};

use crate::Outcome;
use crate::args::ResumeArgs;
use crate::commands::backup::{policy, post_hook, pre_hook, run_backup, this_host};
use crate::context::Context;

pub fn run(ctx: &Context, a: &ResumeArgs) -> Result<Outcome> {
    let mut repo = ctx.open(true)?;
    let host = this_host();
    let found = find_session(&repo, &host, a.session.as_deref(), a.checkpoint.heartbeat_secs)?;
    let session = match (found, &a.session) {
        (Some(s), _) => s,
        (None, Some(p)) => bail!("no interrupted backup with id {p:?} in this repository"),
        // A script that resumes after every run must not fail when there is nothing to do
        // (a kill during start-up leaves no session).
        (None, None) => {
            // A backup that may still be running (renewed lately) is named, not taken over.
            let (sessions, _) = repo.sessions()?;
            if let Some(s) = sessions.iter().rev().find(|s| !s.paths.is_empty()) {
                let id = s.id_hex();
                let short = id.get(..8).unwrap_or_default();
                bail!(
                    "no stopped backup of host {host:?}; backup {short} of host {:?} may still be running (its \
                     heartbeat is recent): if it is not, `bakare resume {short}` continues it",
                    s.host
                );
            }
            if ctx.global.json {
                out!("{}", serde_json::json!({"type": "resume", "session": null, "message": "nothing to resume"}))?;
            } else if !ctx.global.quiet {
                say!("bakare: nothing to resume: no interrupted backup of host {host:?} in this repository");
            }
            return Ok(Outcome::Success);
        }
    };
    if let Some(snapshot) = finish_committed(&repo, &session)? {
        if ctx.global.json {
            out!(
                "{}",
                serde_json::json!({"type": "resume", "session": session.id_hex(), "snapshot": snapshot.to_hex(),
                "message": "already committed"})
            )?;
        } else if !ctx.global.quiet {
            say!(
                "bakare: backup {} had already committed snapshot {} before it stopped; nothing to resume",
                session.id_hex().get(..8).unwrap_or_default(),
                snapshot.short()
            );
        }
        return Ok(Outcome::Success);
    }
    repo.set_compression_level(session.options.compression);
    repo.set_parity(session.options.parity);
    let memo = ctx.memo(&repo)?;
    let prepared = prepare_resume(&repo, &memo, &session)?;
    if !ctx.global.quiet && !ctx.global.json {
        say!(
            "bakare: resuming backup {} ({} packs adopted, {} files from its checkpoints)",
            session.id_hex().get(..8).unwrap_or_default(),
            prepared.adopted_packs,
            prepared.imported_files
        );
    }
    let o = &session.options;
    let interrupt = crate::interrupt::install();
    let exclude_files: Vec<PathBuf> =
        o.exclude_files.iter().map(|b| PathBuf::from(String::from_utf8_lossy(b).into_owned())).collect();
    let opts = BackupOptions {
        excludes: Excludes::new(&o.excludes, &exclude_files, o.git_ignore)
            .context("the session's exclude rules")?
            .with_iexcludes(&o.iexcludes)
            .context("the session's exclude rules")?
            .with_selection(&o.selection),
        host: session.host.clone(),
        user: o.user.clone(),
        tags: o.tags.clone(),
        force_rehash: false,
        session_options: o.clone(),
        resume: Some(session.clone()),
        checkpoints: policy(&a.checkpoint),
        interrupt: interrupt.clone(),
        devices: Default::default(),
        live: Default::default(),
        log: Vec::new(),
        time_ns: None,
        watch: crate::commands::watch::folder(ctx)?.map(|f| f.join(bakare_planner::watch::SOCKET)),
        walk_all: false,
    };
    let paths: Vec<PathBuf> =
        session.paths.iter().map(|b| PathBuf::from(String::from_utf8_lossy(b).into_owned())).collect();
    // Hooks come from this command (or its configuration), never from the session record.
    let hooks = crate::commands::hooks::Hooks::from_args(&a.hooks);
    let result = pre_hook(ctx, &hooks, &paths, &interrupt).and_then(|log| {
        let opts = BackupOptions { log, ..opts };
        run_backup(ctx, Arc::new(repo), memo, &paths, opts)
    });
    post_hook(ctx, &hooks, result, &interrupt)
}
