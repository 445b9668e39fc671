//! The exec, run and console websockets (`/1.0/instances/NAME/exec`, `/1.0/run`,
//! `/1.0/instances/NAME/console`; the console's carries data only), framed as Kubernetes' channel protocol:
//! binary frames carry data, their first byte naming the stream ([`STDIN`], [`STDOUT`],
//! [`STDERR`]); text frames carry [`StreamControl`] messages as JSON. The client's first message
//! is [`StreamControl::Start`] (or [`StreamControl::Run`] on `/1.0/run`); the server's last is [`StreamControl::Exit`] or
//! [`StreamControl::Error`]. An interactive exec runs on a pty: its output and errors come as
//! one stream ([`STDOUT`]), and [`StreamControl::Resize`] changes its size.

use crate::error::Error;
use crate::exec::{ExecExit, InstanceExec, InstanceRun};
use serde::{Deserialize, Serialize};

/// The command's standard input (client to server).
pub const STDIN: u8 = 0;
/// Its standard output (server to client).
pub const STDOUT: u8 = 1;
/// Its standard error (server to client).
pub const STDERR: u8 = 2;

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamControl {
    /// Run this command (the client's first message).
    Start {
        /// The command.
        exec: InstanceExec,
        /// With `exec.interactive`: the client's terminal size, which the command's pty gets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<WindowSize>,
    },
    /// Run this command in a new application container (the first message on `/1.0/run`).
    Run {
        /// The command and its container.
        run: InstanceRun,
    },
    /// The client's standard input has ended.
    Eof,
    /// Send the command this signal (a number, as `kill -N`).
    Signal {
        /// The signal.
        signal: i32,
    },
    /// The client's terminal changed size (an interactive command's pty gets it, and its
    /// programs a SIGWINCH).
    Resize {
        /// The new size.
        window: WindowSize,
    },
    /// The command ended (the server's last message).
    Exit {
        /// How.
        exit: ExecExit,
    },
    /// The command could not be run (the server's last message).
    Error {
        /// Why.
        error: Error,
    },
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// A data frame: the stream's byte, then the bytes.
pub fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(stream);
    v.extend_from_slice(data);
    v
}

/// A data frame's stream and bytes (none for an empty frame).
pub fn unframe(frame: &[u8]) -> Option<(u8, &[u8])> {
    frame.split_first().map(|(s, d)| (*s, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_control_messages_read_back() {
        let f = frame(STDOUT, b"hi");
        assert_eq!(unframe(&f), Some((STDOUT, &b"hi"[..])));
        assert_eq!(unframe(&[]), None);
        let m = StreamControl::Signal { signal: 2 };
        let t = serde_json::to_string(&m).unwrap();
        assert_eq!(t, r#"{"type":"signal","signal":2}"#);
        assert_eq!(serde_json::from_str::<StreamControl>(&t).unwrap(), m);
        assert!(
            serde_json::from_str::<StreamControl>(r#"{"type":"signal","signal":2,"x":1}"#).is_err()
        );
    }
}
