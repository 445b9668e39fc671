//! Small file helpers shared by the identity modules: atomic writes with a chosen mode (through
//! `berth-files`), folders with a chosen mode.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Write `data` to `path` atomically (temporary file, fsync, rename) with exactly `mode`,
/// whatever the umask and whatever mode a replaced file had; anything but a regular file at
/// `path` is refused (see `berth_files::output`).
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    what: &str,
) -> Result<(), berth_files::FileError> {
    berth_files::output::write_atomic(path, data, mode, what)
}

/// Create `dir` (and parents) if missing; a folder created here gets `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}
