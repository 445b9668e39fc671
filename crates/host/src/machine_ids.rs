//! The host-wide machine-id registry and its audit: every registered guest, and every disk
//! image found in the image store (or named by the user), with its machine-id; any id seen twice
//! is flagged (the classic problem of cloned images sharing one).

use crate::dirs::Dirs;
use berth_disk::BackingPolicy;
use berth_identity::image_fs::ImageFs;
use berth_identity::machine_id::{Found, MachineId};
use berth_state::{StateError, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One audited thing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// "vm", "container", "image", ...
    pub kind: String,
    /// Guest name or image path.
    pub name: String,
    /// The id, if there is a valid one.
    pub machine_id: Option<String>,
    /// Why there is no id ("empty (first boot pending)", "unreadable: ...").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Another entry has the same id.
    pub duplicate: bool,
}

/// Audit result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Audit {
    /// Everything looked at.
    pub entries: Vec<AuditEntry>,
    /// Ids seen more than once, with who has them.
    pub duplicates: BTreeMap<String, Vec<String>>,
}

/// Draw a fresh id that no registered guest has, and register it to `kind/name`.
pub fn allocate(store: &Store, kind: &str, name: &str) -> Result<MachineId, StateError> {
    let id = store.allocate_machine_id(kind, name, || MachineId::generate().to_string())?;
    Ok(MachineId::parse(&id).expect("generated ids are valid"))
}

/// A fresh id for the data dir's registry: registered to `owner` (kind, name) when given,
/// else only drawn so that no registered guest has it.
pub fn new_id(dirs: &Dirs, owner: Option<(&str, &str)>) -> Result<MachineId, StateError> {
    let store = Store::open(&dirs.root)?;
    match owner {
        Some((kind, name)) => allocate(&store, kind, name),
        None => loop {
            let id = MachineId::generate();
            if store.machine_id_holder(&id.to_string())?.is_none() {
                return Ok(id);
            }
        },
    }
}

/// [`audit`] of the data dir's registry and image store, plus `paths`.
pub fn audit_dirs(dirs: &Dirs, paths: &[PathBuf]) -> Result<Audit, StateError> {
    let store = Store::open(&dirs.root)?;
    let policy = BackingPolicy::new(Some(dirs.images()), Vec::new());
    audit(&store, &[dirs.images()], paths, &policy)
}

/// Images to audit: regular files directly in `dir` (not recursive), sorted.
fn images_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Audit the registry and the images in `image_dirs` plus `paths` (files or folders).
pub fn audit(
    store: &Store,
    image_dirs: &[PathBuf],
    paths: &[PathBuf],
    policy: &BackingPolicy,
) -> Result<Audit, StateError> {
    let mut entries: Vec<AuditEntry> = store
        .machine_ids()?
        .into_iter()
        .map(|r| AuditEntry {
            kind: r.kind,
            name: r.name,
            machine_id: Some(r.id),
            note: None,
            duplicate: false,
        })
        .collect();
    let mut files = Vec::new();
    for d in image_dirs {
        files.extend(images_in(d));
    }
    for p in paths {
        if p.is_dir() {
            files.extend(images_in(p));
        } else {
            files.push(p.clone());
        }
    }
    for f in files {
        let (machine_id, note) =
            match ImageFs::open(&f, None, policy).and_then(|fs| fs.machine_id()) {
                Ok(Found::Valid(id, _)) => (Some(id.to_string()), None),
                Ok(Found::Invalid(why, path)) => (None, Some(format!("{path}: {why}"))),
                Ok(Found::Missing) => (None, Some("no machine-id file".into())),
                Err(e) => (None, Some(format!("unreadable: {e}"))),
            };
        entries.push(AuditEntry {
            kind: "image".into(),
            name: f.display().to_string(),
            machine_id,
            note,
            duplicate: false,
        });
    }
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &entries {
        if let Some(id) = &e.machine_id {
            by_id
                .entry(id.clone())
                .or_default()
                .push(format!("{} {}", e.kind, e.name));
        }
    }
    by_id.retain(|_, v| v.len() > 1);
    for e in &mut entries {
        e.duplicate = e
            .machine_id
            .as_ref()
            .is_some_and(|id| by_id.contains_key(id));
    }
    Ok(Audit {
        entries,
        duplicates: by_id,
    })
}
