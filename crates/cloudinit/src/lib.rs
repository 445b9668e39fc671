//! cloud-init for berth's guests: checking user-data before any guest boots (with cloud-init's
//! own schema, so the verdict is cloud-init's), building a guest's `#cloud-config` from typed
//! values merged with the user's file, and writing NoCloud seed volumes (ISO 9660 or VFAT,
//! label `cidata`).
//!
//! Not for: running cloud-init, or talking to guests.
pub mod compose;
pub mod config;
pub mod schema;
pub mod seed;
pub mod userdata;
pub mod yaml;
