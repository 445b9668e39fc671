//! Guest identity: SSH key pairs as `ssh-keygen` writes them, an `authorized_keys` editor that
//! behaves like `ssh-copy-id`, and systemd/D-Bus machine-ids (generation, validation, reading
//! them from a root tree or straight out of a disk image without mounting it).
//!
//! The host-wide machine-id registry lives in `berth-state`; this crate only knows the format
//! and where guests keep their id.

pub mod authorized_keys;
pub mod fsutil;
pub mod image_fs;
pub mod keys;
pub mod machine_id;
