//! `testkit`: bakare's tree generator, mutator and peer benchmark as one command.
//!
//!     testkit create DIR --files N [--seed S] [--mean-kib K] [--big N] [--plain]
//!     testkit mutate DIR --percent P [--seed S] [--folders]
//!     testkit peers SOURCE [--work DIR] [--tools "bakare restic borg"] [--json F] [--svg F]

use std::path::PathBuf;
use std::process::ExitCode;

use bakare_testkit::{TreeSpec, create, mutate, peers};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "testkit", about = "Trees like a user's, changed like a user would, and the peer benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a deterministic tree: the same arguments give the same tree, byte for byte.
    Create {
        dir: PathBuf,
        #[arg(long)]
        files: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The mean file size of the long tail, in KiB.
        #[arg(long, default_value_t = 24.0)]
        mean_kib: f64,
        /// Add N files of 64 MiB sharing 16 MiB regions.
        #[arg(long, default_value_t = 0)]
        big: u32,
        /// Plain files and folders only: no symlinks, empty folders or odd names.
        #[arg(long)]
        plain: bool,
    },
    /// Change about PERCENT % of the files as a user would.
    Mutate {
        dir: PathBuf,
        #[arg(long)]
        percent: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also rename a folder and add one per 200 changes.
        #[arg(long)]
        folders: bool,
    },
    /// bakare against the peers installed here on one tree: wall time, peak RSS, repository size.
    Peers {
        source: PathBuf,
        #[arg(long, default_value = "/tmp/bakare-testkit-peers")]
        work: PathBuf,
        /// Which tools, of: bakare restic rustic borg bupstash (missing ones are skipped).
        #[arg(long, default_value = "bakare restic rustic borg bupstash")]
        tools: String,
        /// bakare's binary (default: target/release/bakare of this checkout).
        #[arg(long)]
        bakare: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        mutate_seed: u64,
        /// Write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw the table as an SVG to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testkit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> std::io::Result<()> {
    match cli.command {
        Cmd::Create { dir, files, seed, mean_kib, big, plain } => {
            let made = create(&dir, &TreeSpec::new(files).seed(seed).mean_kib(mean_kib).big(big).extras(!plain))?;
            println!("{made:?}");
        }
        Cmd::Mutate { dir, percent, seed, folders } => println!("{}", mutate(&dir, percent, seed, folders)?),
        Cmd::Peers { source, work, tools, bakare, mutate_seed, json, svg } => {
            let bakare =
                bakare.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/bakare"));
            let setup = peers::Setup { bakare, work, tools: tools.split_whitespace().map(str::to_string).collect() };
            let rows = peers::run(&setup, &source, mutate_seed)?;
            let (n, bytes) = summary(&source);
            println!(
                "source: {} ({n} files, {:.0} MiB), {} cores",
                source.display(),
                bytes as f64 / 1048576.0,
                cores()
            );
            print!("{}", peers::table(&rows));
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&rows).map_err(std::io::Error::other)?)?;
            }
            if let Some(path) = svg {
                let title = format!("{} ({n} files, {:.0} MiB)", source.display(), bytes as f64 / 1048576.0);
                std::fs::write(path, peers::svg(&rows, &title))?;
            }
        }
    }
    Ok(())
}

fn summary(root: &std::path::Path) -> (u64, u64) {
    let entries = bakare_testkit::walk(root).unwrap_or_default();
    let files: Vec<u64> = entries
        .iter()
        .filter_map(|(p, _)| std::fs::symlink_metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()))
        .collect();
    (files.len() as u64, files.iter().sum())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
