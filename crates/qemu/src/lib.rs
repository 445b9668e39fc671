//! QEMU for berth: what the host can run (the accelerator probe, `berth host check`), and how a
//! VM spec becomes a QEMU command line. Building the command line is pure and unit-tested;
//! running things (the probe, QEMU itself) is kept in separate, small functions.
//!
//! Not for: talking to a running QEMU (that is `berth-qmp`), or storing instances (`berth-host`).

pub mod host;
pub mod passt;
pub mod probe;
pub mod stream;
pub mod vm;
