//! systemd/D-Bus machine-ids: 32 lowercase hexadecimal characters and a newline in
//! `/etc/machine-id` (`/var/lib/dbus/machine-id` is D-Bus's name for it, usually a symlink).
//!
//! Generation follows systemd (`sd_id128_randomize`: 128 random bits marked as a version 4
//! UUID); validation reports exactly why a value is refused; reading follows D-Bus
//! (`dbus-uuidgen --get`: the D-Bus path first, then `/etc/machine-id`) with symlinks resolved
//! inside the guest's tree, never on the host.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

/// A valid machine-id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId([u8; 16]);

/// Why a text is not a valid machine-id.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InvalidId {
    /// Empty (systemd's "not yet set" state on first boot).
    #[error("the machine-id is empty")]
    Empty,
    /// The literal `uninitialized` systemd writes before first boot completes.
    #[error("the machine-id is \"uninitialized\" (systemd's first-boot placeholder)")]
    Uninitialized,
    /// Not 32 characters.
    #[error("wrong length: {0} characters, a machine-id has 32")]
    WrongLength(usize),
    /// Uppercase hex digit.
    #[error("uppercase hex digit {0:?} at position {1}: a machine-id is lowercase")]
    Uppercase(char, usize),
    /// A character that is not hex.
    #[error("non-hex character {0:?} at position {1}")]
    NonHex(char, usize),
    /// All zeros (systemd's null id).
    #[error("the all-zero id is systemd's null id, not a machine-id")]
    AllZero,
    /// More than one line, or trailing garbage.
    #[error("trailing data after the id")]
    Trailing,
}

impl MachineId {
    /// A fresh random id, as systemd makes one.
    pub fn generate() -> MachineId {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b).expect("the kernel's random source is available");
        // sd_id128_randomize: RFC 4122 version 4, variant 1.
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        if b.iter().all(|&x| x == 0) {
            return MachineId::generate();
        }
        MachineId(b)
    }

    /// Parse file content (an optional single trailing newline is allowed, as in the file).
    pub fn parse(text: &str) -> Result<MachineId, InvalidId> {
        let t = text.strip_suffix('\n').unwrap_or(text);
        if t.is_empty() {
            return Err(InvalidId::Empty);
        }
        if t == "uninitialized" {
            return Err(InvalidId::Uninitialized);
        }
        if t.contains('\n') {
            return Err(InvalidId::Trailing);
        }
        let chars: Vec<char> = t.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if c.is_ascii_hexdigit() {
                if c.is_ascii_uppercase() {
                    return Err(InvalidId::Uppercase(*c, i));
                }
            } else if i < 32 {
                return Err(InvalidId::NonHex(*c, i));
            }
        }
        if chars.len() != 32 {
            return Err(InvalidId::WrongLength(chars.len()));
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[i * 2..i * 2 + 2], 16)
                .map_err(|_| InvalidId::NonHex('?', i * 2))?;
        }
        if b.iter().all(|&x| x == 0) {
            return Err(InvalidId::AllZero);
        }
        Ok(MachineId(b))
    }

    /// The file content: the id and a newline.
    pub fn to_file_content(&self) -> String {
        format!("{self}\n")
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for MachineId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<MachineId, InvalidId> {
        MachineId::parse(s)
    }
}

/// Where a guest keeps its machine-id.
pub const ETC_MACHINE_ID: &str = "/etc/machine-id";
/// D-Bus's name for it.
pub const DBUS_MACHINE_ID: &str = "/var/lib/dbus/machine-id";

/// What was found in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A valid id, and the guest path it was read from.
    Valid(MachineId, String),
    /// A file exists but holds no valid id.
    Invalid(InvalidId, String),
    /// Neither file exists.
    Missing,
}

/// Errors reading or writing a root tree.
#[derive(Debug, Error)]
pub enum TreeError {
    /// A file system call failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A symlink chain that does not end.
    #[error("too many levels of symlinks at {0} inside the guest tree")]
    SymlinkLoop(String),
    /// The machine-id file could not be written (not a regular file, I/O).
    #[error(transparent)]
    File(#[from] berth_files::FileError),
}

/// Map a guest path to a host path under `root`, resolving symlinks inside the tree (absolute
/// targets are relative to `root`; `..` never climbs above it).
pub fn resolve_in_root(root: &Path, guest: &str) -> Result<PathBuf, TreeError> {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = guest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let mut host = root.to_path_buf();
        host.extend(&parts);
        host.push(&part);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(TreeError::SymlinkLoop(guest.to_string()));
                }
                let target = std::fs::read_link(&host).map_err(|source| TreeError::Io {
                    what: "reading symlink",
                    path: host.clone(),
                    source,
                })?;
                if target.is_absolute() {
                    parts.clear();
                }
                let comps: Vec<String> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                pending.extend(comps.into_iter().rev());
            }
            _ => parts.push(part),
        }
    }
    let mut host = root.to_path_buf();
    host.extend(&parts);
    Ok(host)
}

/// Read the machine-id of a root tree as `dbus-uuidgen --get` would: the D-Bus file first,
/// then `/etc/machine-id`.
pub fn read_from_root(root: &Path) -> Result<Found, TreeError> {
    read_with(|guest| {
        let host = resolve_in_root(root, guest)?;
        match std::fs::read(&host) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => Ok(None),
            Err(source) => Err(TreeError::Io {
                what: "reading",
                path: host,
                source,
            }),
        }
    })
}

/// The lookup order, over any way of reading a guest file.
pub fn read_with<E>(mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>, E>) -> Result<Found, E> {
    let mut first_invalid = None;
    for path in [DBUS_MACHINE_ID, ETC_MACHINE_ID] {
        if let Some(bytes) = read(path)? {
            let text = String::from_utf8_lossy(&bytes);
            match MachineId::parse(&text) {
                Ok(id) => return Ok(Found::Valid(id, path.to_string())),
                Err(e) => {
                    first_invalid.get_or_insert(Found::Invalid(e, path.to_string()));
                }
            }
        }
    }
    Ok(first_invalid.unwrap_or(Found::Missing))
}

/// What [`ensure_in_root`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// A valid id was there already.
    Existing(MachineId),
    /// A new id was written.
    Written(MachineId),
}

/// As `dbus-uuidgen --ensure`: keep a valid id; otherwise write `id` (or a fresh one) to
/// `/etc/machine-id` (mode 0444) and make `/var/lib/dbus/machine-id` a link to it where the
/// tree has D-Bus's folder.
pub fn ensure_in_root(root: &Path, id: Option<MachineId>) -> Result<Ensured, TreeError> {
    if let Found::Valid(existing, _) = read_from_root(root)? {
        return Ok(Ensured::Existing(existing));
    }
    let id = id.unwrap_or_else(MachineId::generate);
    write_to_root(root, id)?;
    Ok(Ensured::Written(id))
}

/// Write `id` into a root tree: `/etc/machine-id` (0444) and the D-Bus link.
pub fn write_to_root(root: &Path, id: MachineId) -> Result<(), TreeError> {
    let etc = resolve_in_root(root, "/etc")?;
    crate::fsutil::ensure_dir(&etc, 0o755).map_err(|source| TreeError::Io {
        what: "creating",
        path: etc.clone(),
        source,
    })?;
    let target = resolve_in_root(root, ETC_MACHINE_ID)?;
    berth_files::output::write_atomic(
        &target,
        id.to_file_content().as_bytes(),
        0o444,
        "a machine-id",
    )?;
    let dbus_dir = resolve_in_root(root, "/var/lib/dbus")?;
    if dbus_dir.is_dir() {
        let link = dbus_dir.join("machine-id");
        let is_link_to_etc =
            std::fs::read_link(&link).is_ok_and(|t| t == Path::new(ETC_MACHINE_ID));
        if !is_link_to_etc {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(ETC_MACHINE_ID, &link).map_err(|source| TreeError::Io {
                what: "linking",
                path: link.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_v4_and_distinct() {
        let a = MachineId::generate();
        let b = MachineId::generate();
        assert_ne!(a, b);
        let text = a.to_file_content();
        assert_eq!(text.len(), 33);
        assert!(text.ends_with('\n'));
        assert_eq!(MachineId::parse(&text), Ok(a));
        assert_eq!(&text[12..13], "4", "version nibble");
        assert!(matches!(&text[16..17], "8" | "9" | "a" | "b"), "variant");
    }

    #[test]
    fn validation_names_the_fault() {
        assert_eq!(MachineId::parse(""), Err(InvalidId::Empty));
        assert_eq!(
            MachineId::parse("uninitialized\n"),
            Err(InvalidId::Uninitialized)
        );
        assert_eq!(MachineId::parse("abc"), Err(InvalidId::WrongLength(3)));
        assert_eq!(
            MachineId::parse("0123456789ABCDEF0123456789abcdef"),
            Err(InvalidId::Uppercase('A', 10))
        );
        assert_eq!(
            MachineId::parse("0123456789xbcdef0123456789abcdef"),
            Err(InvalidId::NonHex('x', 10))
        );
        assert_eq!(MachineId::parse(&"0".repeat(32)), Err(InvalidId::AllZero));
        assert_eq!(
            MachineId::parse("0123456789abcdef0123456789abcdef0"),
            Err(InvalidId::WrongLength(33))
        );
        assert!(MachineId::parse("0123456789abcdef0123456789abcdef\n").is_ok());
        assert_eq!(
            MachineId::parse("0123456789abcdef0123456789abcdef\n\n"),
            Err(InvalidId::Trailing)
        );
    }

    #[test]
    fn reading_follows_dbus_then_etc_inside_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(read_from_root(r).unwrap(), Found::Missing);
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
        std::fs::write(r.join("etc/machine-id"), "").unwrap();
        assert!(matches!(
            read_from_root(r).unwrap(),
            Found::Invalid(InvalidId::Empty, _)
        ));
        // An absolute symlink must resolve inside the tree, not to the host's /etc/machine-id.
        std::os::unix::fs::symlink("/etc/machine-id", r.join("var/lib/dbus/machine-id")).unwrap();
        let id = MachineId::generate();
        std::fs::write(r.join("etc/machine-id"), id.to_file_content()).unwrap();
        assert_eq!(
            read_from_root(r).unwrap(),
            Found::Valid(id, DBUS_MACHINE_ID.into())
        );
    }

    #[test]
    fn ensure_writes_once_with_mode_0444_and_links_dbus() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
        let Ensured::Written(id) = ensure_in_root(r, None).unwrap() else {
            panic!("expected a new id")
        };
        let mode = std::fs::metadata(r.join("etc/machine-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(
            std::fs::read_link(r.join("var/lib/dbus/machine-id")).unwrap(),
            PathBuf::from("/etc/machine-id")
        );
        assert_eq!(ensure_in_root(r, None).unwrap(), Ensured::Existing(id));
    }
}
