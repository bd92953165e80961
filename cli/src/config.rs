//! The configuration file: default options for each command, and named profiles.
//!
//! ```toml
//! [global]                       # every command
//! repository = "sftp://nas/backups"
//! passphrase-command = "pass show bakare"
//!
//! [backup]                       # `bakare backup`; keys are the long options
//! paths = ["/home/me", "/etc"]   # used when no path is given
//! exclude = ["*.tmp"]
//! exclude-caches = true
//! fs-snapshot = "auto"
//! pre-hook = "pg_dump app > /home/me/app.sql"
//!
//! [forget]
//! keep-daily = 7
//!
//! [profile.offsite.global]       # `--profile offsite`: over the sections above
//! repository = "s3://bucket/bakare"
//! ```
//!
//! The file is `--config FILE`, else `BAKARE_CONFIG`, else `~/.config/bakare/config.toml`
//! when it exists. Its options count for less than the command line's and the environment's:
//! an option given either way (or one that conflicts with one given) is not taken from the
//! file; a list given on the command line replaces the file's. They are given to clap as more arguments, so they are checked as the command line's
//! are; a key that is no option of its section is an error naming it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory as _};

use crate::args::Cli;

/// Environment variables that set options outside clap (`Global::fill_from_env`).
const ENV_OF: &[(&str, &str)] = &[
    ("repo", "BAKARE_REPOSITORY"),
    ("repository_file", "BAKARE_REPOSITORY_FILE"),
    ("passphrase_file", "BAKARE_PASSPHRASE_FILE"),
    ("passphrase_command", "BAKARE_PASSPHRASE_COMMAND"),
    ("key_file", "BAKARE_KEY_FILE"),
    ("cache_dir", "BAKARE_CACHE_DIR"),
    ("sftp_key", "BAKARE_SFTP_KEY"),
    ("threads", "BAKARE_THREADS"),
];

/// `argv` with the configuration file's options for its command added. Returns `argv` as it
/// is when there is no file, or when `argv` does not parse (clap then says why).
pub fn apply(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Ok(matches) = Cli::command().ignore_errors(true).try_get_matches_from(&argv) else { return Ok(argv) };
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    // A global option given after the command is in the command's matches.
    let global = |id: &str| {
        let sub = matches.subcommand().and_then(|(_, m)| m.try_get_one::<String>(id).ok().flatten().cloned());
        sub.or_else(|| matches.try_get_one::<String>(id).ok().flatten().cloned())
    };
    let config = matches
        .subcommand()
        .and_then(|(_, m)| m.try_get_one::<PathBuf>("config").ok().flatten().cloned())
        .or_else(|| matches.try_get_one::<PathBuf>("config").ok().flatten().cloned());
    let (path, explicit) = match (config, env("BAKARE_CONFIG")) {
        (Some(p), _) => (p, true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => match dirs::config_dir() {
            Some(d) => (d.join("bakare/config.toml"), false),
            None => return Ok(argv),
        },
    };
    let profile = global("profile").or_else(|| env("BAKARE_PROFILE").map(|p| p.to_string_lossy().into_owned()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // A profile asked for needs its file: without one the command would run elsewhere.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit && profile.is_none() => return Ok(argv),
        Err(e) => return Err(format!("configuration file {}: {e}", path.display())),
    };
    let Some((command, sub)) = matches.subcommand() else { return Ok(argv) };
    let options = options_for(&text, command, profile.as_deref())
        .map_err(|e| format!("configuration file {}: {e}", path.display()))?;
    let (tokens, paths) =
        tokens(command, sub, &options).map_err(|e| format!("configuration file {}: {e}", path.display()))?;
    let mut argv = argv;
    let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let had_separator = at < argv.len();
    argv.splice(at..at, tokens);
    if !paths.is_empty() {
        if !had_separator {
            argv.push("--".into());
        }
        argv.extend(paths);
    }
    Ok(argv)
}

/// The `(section.key, value)` options for `command` in the order they apply (a later one over
/// an earlier one): `[global]`, `[command]`, then the profile's two.
fn options_for(text: &str, command: &str, profile: Option<&str>) -> Result<Vec<(String, toml::Value)>, String> {
    let mut known: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
    known.push("global".into());
    let mut file: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let profiles = match file.remove("profile") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err("`profile` must be a table of profiles ([profile.NAME.SECTION])".into()),
    };
    let mut layers = vec![file];
    if let Some(name) = profile {
        match profiles.get(name) {
            Some(toml::Value::Table(t)) => layers.push(t.clone()),
            _ => {
                let known: Vec<&String> = profiles.keys().collect();
                return Err(format!("no profile {name:?} (profiles: {known:?})"));
            }
        }
    }
    let mut ordered = Vec::new();
    for layer in layers {
        if let Some((section, _)) = layer.iter().find(|(_, v)| !v.is_table()) {
            return Err(format!("`{section}` must be a section ([{section}]) of options"));
        }
        if let Some(section) = layer.keys().find(|k| !known.contains(k)) {
            return Err(format!("[{section}] is no section: the sections are global and the commands' names"));
        }
        // A command's own section over the global one.
        for section in ["global", command] {
            let Some(toml::Value::Table(table)) = layer.get(section) else { continue };
            for (key, value) in table {
                ordered.push((format!("{section}.{key}"), value.clone()));
            }
        }
    }
    Ok(ordered)
}

/// Arguments for the options of `command` not given otherwise; and the source paths
/// (`backup.paths`) when none were given.
fn tokens(
    command: &str,
    sub: &ArgMatches,
    options: &[(String, toml::Value)],
) -> Result<(Vec<OsString>, Vec<OsString>), String> {
    let mut cli = Cli::command();
    cli.build();
    let cmd = cli.find_subcommand(command).ok_or_else(|| format!("no command {command}"))?;
    let given = |id: &str| {
        matches!(sub.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
            || ENV_OF.iter().any(|(i, var)| *i == id && std::env::var_os(var).is_some_and(|v| !v.is_empty()))
    };
    // Whether `arg`, or an option that conflicts with it (either way round), was given.
    let taken = |arg: &clap::Arg| {
        given(arg.get_id().as_str())
            || cmd.get_arg_conflicts_with(arg).iter().any(|c| given(c.get_id().as_str()))
            || cmd.get_arguments().any(|other| {
                given(other.get_id().as_str())
                    && cmd.get_arg_conflicts_with(other).iter().any(|c| c.get_id() == arg.get_id())
            })
    };
    // Each option once, by what it is rather than how the file spells it (`repo` or its
    // alias `repository`): a later layer's value replaces an earlier one's.
    let mut chosen: Vec<(&clap::Arg, &String, &toml::Value)> = Vec::new();
    let mut paths = Vec::new();
    for (name, value) in options {
        let key = name.rsplit('.').next().unwrap_or(name);
        if command == "backup" && key == "paths" {
            let listed = ["paths", "files_from", "files_from_verbatim", "files_from_raw"].iter().any(|id| given(id));
            paths = if listed { Vec::new() } else { values(name, value)?.into_iter().map(OsString::from).collect() };
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|al| al.contains(&key)))
            .filter(|a| a.get_long() != Some("config") && a.get_long() != Some("profile"))
            .ok_or_else(|| format!("`{name}` is not an option of `bakare {command}`"))?;
        chosen.retain(|(a, _, _)| a.get_id() != arg.get_id());
        chosen.push((arg, name, value));
    }
    chosen.sort_by_key(|(a, _, _)| a.get_long().unwrap_or_default().to_string());
    let mut out = Vec::new();
    for (arg, name, value) in chosen {
        if taken(arg) {
            continue;
        }
        let key = arg.get_long().unwrap_or_default();
        let long = key;
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => out.push(format!("--{long}").into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(format!("`{name}` is true or false")),
            },
            ArgAction::Append => {
                for v in values(name, value)? {
                    out.push(format!("--{long}={v}").into());
                }
            }
            _ => {
                let mut v = values(name, value)?;
                if v.len() != 1 {
                    return Err(format!("`{name}` takes one value"));
                }
                out.push(format!("--{long}={}", v.remove(0)).into());
            }
        }
    }
    Ok((out, paths))
}

/// A value, or each of an array's, as text.
fn values(name: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!("`{name}`: a value must be text, a number or true/false")),
    };
    match value {
        toml::Value::Array(a) => a.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn apply_text(text: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let matches = Cli::command().ignore_errors(true).try_get_matches_from(argv(args)).unwrap();
        let profile = matches.get_one::<String>("profile").cloned();
        let (command, sub) = matches.subcommand().unwrap();
        let options = options_for(text, command, profile.as_deref())?;
        let (tokens, paths) = tokens(command, sub, &options)?;
        Ok(tokens.into_iter().chain(paths).map(|t| t.to_string_lossy().into_owned()).collect())
    }

    const FILE: &str = r#"
        [global]
        cache-dir = "/c"
        [backup]
        paths = ["/home", "/etc"]
        exclude = ["*.tmp", "*.o"]
        one-file-system = true
        no-xattrs = false
        hook-timeout = 30
        [forget]
        keep-daily = 7
        [profile.off.global]
        repo = "s3://b/p"
        [profile.off.backup]
        paths = ["/srv"]
    "#;

    #[test]
    fn sections_and_profiles_give_options() {
        let t = apply_text(FILE, &["bakare", "backup"]).unwrap();
        assert_eq!(
            t,
            [
                "--cache-dir=/c",
                "--exclude=*.tmp",
                "--exclude=*.o",
                "--hook-timeout=30",
                "--one-file-system",
                "/home",
                "/etc"
            ]
        );
        let t = apply_text(FILE, &["bakare", "--profile", "off", "backup"]).unwrap();
        assert!(t.contains(&"--repo=s3://b/p".to_string()) && t.ends_with(&["/srv".to_string()]), "{t:?}");
        assert_eq!(apply_text(FILE, &["bakare", "forget"]).unwrap(), ["--cache-dir=/c", "--keep-daily=7"]);
    }

    #[test]
    fn the_command_line_wins() {
        let t = apply_text(FILE, &["bakare", "backup", "--hook-timeout", "5", "--cache-dir", "/x", "/only"]).unwrap();
        assert_eq!(t, ["--exclude=*.tmp", "--exclude=*.o", "--one-file-system"]);
    }

    #[test]
    fn an_option_is_one_whatever_its_spelling_and_conflicts_count_both_ways() {
        let text = "[global]\nrepository = \"/a\"\n[profile.p.global]\nrepo = \"/b\"\n";
        assert_eq!(apply_text(text, &["bakare", "--profile", "p", "snapshots"]).unwrap(), ["--repo=/b"]);
        // --repository-file conflicts with --repo (declared on it): the file's repo yields.
        let t = apply_text(text, &["bakare", "--repository-file", "/f", "snapshots"]).unwrap();
        assert!(t.is_empty(), "{t:?}");
        let t = apply_text("[backup]\npaths = [\"/x\"]\n", &["bakare", "backup", "--files-from", "list"]).unwrap();
        assert!(t.is_empty(), "config paths with --files-from: {t:?}");
    }

    #[test]
    fn mistakes_are_named() {
        let e = apply_text("[backup]\nexclud = [\"x\"]\n", &["bakare", "backup", "/a"]).unwrap_err();
        assert_eq!(e, "`backup.exclud` is not an option of `bakare backup`");
        let e = apply_text(FILE, &["bakare", "--profile", "nope", "backup"]).unwrap_err();
        assert!(e.contains("no profile \"nope\""), "{e}");
        let e = apply_text("[backup]\none-file-system = \"yes\"\n", &["bakare", "backup", "/a"]).unwrap_err();
        assert_eq!(e, "`backup.one-file-system` is true or false");
        assert!(apply_text("[backup\n", &["bakare", "backup", "/a"]).is_err());
        let e = apply_text("[bakup]\nexclude = [\"x\"]\n", &["bakare", "backup", "/a"]).unwrap_err();
        assert!(e.starts_with("[bakup] is no section"), "{e}");
    }
}
