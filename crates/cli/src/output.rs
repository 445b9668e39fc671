//! Printing helpers shared by commands: JSON, progress bars, data directories.

use anyhow::{Context, Result};
use berth_host::dirs::Dirs;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;

/// Print `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    println!("{text}");
    Ok(())
}

/// A byte progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress_bar(label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// berth's data directories for this user.
pub fn dirs() -> Result<Dirs> {
    Ok(Dirs::from_env(rustix::process::geteuid().as_raw())?)
}

/// `println!` for commands that must outlive their reader (`launch`, `image build`, after
/// [`berth_container::direct::ignore_sigpipe`]): a write to a reader that went away is dropped,
/// where `println!` would panic and SIGPIPE's default would end berth halfway through its work.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// [`tell!`] on stderr.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) use {say, tell};
