//! The user's terminal, as berth's interactive commands (`shell`, `exec -t`, `console`) need it:
//! standard input made raw for as long as a [`RawMode`] lives, so that what is typed (^C
//! included) reaches the guest's terminal as it is, and the terminal's [`size`].
//!
//! Used by the client for a remote pty or console and by the container runtime for the pty it
//! relays in a container. Not a terminal emulator: bytes pass through unchanged.

use rustix::termios::{OptionalActions, Termios, Winsize};

/// Standard input's terminal in raw mode for as long as this lives; its old mode comes back on
/// drop. Nothing is changed when `wanted` is false or standard input is no terminal.
#[derive(Debug)]
pub struct RawMode(Option<Termios>);

impl RawMode {
    /// Make standard input's terminal raw (when `wanted`).
    pub fn enter(wanted: bool) -> RawMode {
        let stdin = rustix::stdio::stdin();
        if !wanted || !rustix::termios::isatty(stdin) {
            return RawMode(None);
        }
        let old = rustix::termios::tcgetattr(stdin).ok();
        if let Some(o) = &old {
            let mut raw = o.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(stdin, OptionalActions::Now, &raw);
        }
        RawMode(old)
    }

    /// Whether standard input was made raw (it is a terminal and was asked to be).
    pub fn is_raw(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(o) = &self.0 {
            let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, o);
        }
    }
}

/// This process's terminal size, as (columns, rows): of standard output, else of standard
/// input; `None` when neither is a terminal.
pub fn size() -> Option<(u16, u16)> {
    let ws: Winsize = rustix::termios::tcgetwinsize(rustix::stdio::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(rustix::stdio::stdin()))
        .ok()?;
    Some((ws.ws_col, ws.ws_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_changes_without_a_terminal_or_when_not_wanted() {
        // Under the test harness standard input is not a terminal (or, when it is, not wanted).
        assert!(!RawMode::enter(false).is_raw());
        if !rustix::termios::isatty(rustix::stdio::stdin()) {
            assert!(!RawMode::enter(true).is_raw());
        }
    }
}
