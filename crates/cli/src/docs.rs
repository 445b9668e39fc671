//! Shell completions and man pages, generated from the clap tree so they never drift from it.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};
use std::path::PathBuf;

use crate::Status;

/// A shell berth writes completions for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

// `berth completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

// `berth man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The folder to write the pages to (berth.1, berth-launch.1, ...).
    pub dir: PathBuf,
}

pub fn completion(a: CompletionArgs) -> Result<Status> {
    let mut cmd = crate::Cli::command();
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "berth", &mut std::io::stdout());
    Ok(Status(0))
}

/// Write `cmd`'s page and its subcommands' (hidden ones left out) under `dir`.
fn pages(cmd: &clap::Command, prefix: &str, dir: &std::path::Path) -> Result<usize> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_string()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.clone())
        .render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    berth_files::output::write_atomic(&path, &text, 0o644, "a man page")?;
    let mut n = 1;
    // clap's own `help` subcommands are left out: each page has its --help.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        n += pages(sub, &name, dir)?;
    }
    Ok(n)
}

pub fn man(a: ManArgs) -> Result<Status> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    let n = pages(&cmd, "", &a.dir)?;
    println!("Wrote {n} man pages to {}.", a.dir.display());
    Ok(Status(0))
}
