//! NoCloud seed volumes, as `cloud-localds` makes them: a volume labelled `cidata` holding
//! `user-data`, `meta-data` and optionally `network-config` and `vendor-data` at its root.
//! ISO 9660 with Rock Ridge and Joliet (what genisoimage writes for cloud-localds), or VFAT.
//! The volume is built in memory and written atomically.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Seed volume format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeedFormat {
    /// ISO 9660 (default; what cloud-localds makes).
    #[default]
    Iso,
    /// FAT.
    Vfat,
}

/// The files of a seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedFiles {
    /// `user-data`.
    pub user_data: Vec<u8>,
    /// `meta-data`.
    pub meta_data: Vec<u8>,
    /// `network-config`, if any.
    pub network_config: Option<Vec<u8>>,
    /// `vendor-data`, if any.
    pub vendor_data: Option<Vec<u8>>,
}

impl SeedFiles {
    /// (name, content) pairs in the volume.
    pub fn entries(&self) -> Vec<(&'static str, &[u8])> {
        let mut v: Vec<(&'static str, &[u8])> = vec![
            ("meta-data", &self.meta_data),
            ("user-data", &self.user_data),
        ];
        if let Some(n) = &self.network_config {
            v.push(("network-config", n));
        }
        if let Some(n) = &self.vendor_data {
            v.push(("vendor-data", n));
        }
        v
    }
}

/// Errors writing a seed.
#[derive(Debug, Error)]
pub enum SeedError {
    /// The ISO writer failed.
    #[error("building the ISO 9660 volume: {0}")]
    Iso(String),
    /// The FAT writer failed.
    #[error("building the VFAT volume")]
    Vfat(#[source] std::io::Error),
    /// Writing the file failed.
    #[error("writing {}", .0.display())]
    Io(std::path::PathBuf, #[source] std::io::Error),
    /// The destination exists.
    #[error("{} already exists; pass --force to overwrite it", .0.display())]
    Exists(std::path::PathBuf),
    /// The destination is not a regular file, or could not be written.
    #[error(transparent)]
    File(#[from] berth_files::FileError),
}

/// A fresh instance id, as cloud-init expects one (`iid-` and 16 hex digits).
pub fn new_instance_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the kernel's random source is available");
    format!(
        "iid-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// `meta-data` as cloud-localds writes it.
pub fn meta_data(instance_id: &str, hostname: Option<&str>) -> String {
    let mut s = format!("instance-id: {}\n", yaml_scalar(instance_id));
    if let Some(h) = hostname {
        s.push_str(&format!("local-hostname: {}\n", yaml_scalar(h)));
    }
    s
}

/// A string as a YAML scalar that PyYAML reads back as that string.
fn yaml_scalar(s: &str) -> String {
    if crate::yaml::resolve_plain(s) == serde_json::Value::String(s.to_string())
        && !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// Build the volume's bytes.
pub fn build(files: &SeedFiles, format: SeedFormat) -> Result<Vec<u8>, SeedError> {
    match format {
        SeedFormat::Iso => build_iso(files),
        SeedFormat::Vfat => build_vfat(files),
    }
}

fn build_iso(files: &SeedFiles) -> Result<Vec<u8>, SeedError> {
    use hadris_iso::read::PathSeparator;
    use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
    use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};
    let input = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: files
            .entries()
            .into_iter()
            .map(|(name, content)| IsoFile::File {
                name: Arc::new(name.to_string()),
                contents: content.to_vec(),
            })
            .collect(),
    };
    let options = IsoFormatOptions {
        volume_name: "cidata".to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("berth".to_string()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures::extensions(),
        strict_charset: false,
    };
    let total: usize = files.entries().iter().map(|(_, c)| c.len()).sum();
    let buf = Cursor::new(Vec::with_capacity(total + (1 << 20)));
    let out =
        IsoImageWriter::create(buf, input, options).map_err(|e| SeedError::Iso(e.to_string()))?;
    Ok(out.into_inner())
}

fn build_vfat(files: &SeedFiles) -> Result<Vec<u8>, SeedError> {
    use std::io::Write;
    let total: u64 = files.entries().iter().map(|(_, c)| c.len() as u64).sum();
    // Room for the data, the FATs and slack; at least 1 MiB (as cloud-localds does), whole MiB.
    let size = ((total * 2 + (1 << 20)).div_ceil(1 << 20)) << 20;
    let mut img = Cursor::new(vec![0u8; size as usize]);
    let mut id = [0u8; 4];
    getrandom::getrandom(&mut id).expect("the kernel's random source is available");
    fatfs::format_volume(
        &mut img,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"cidata     ")
            .volume_id(u32::from_le_bytes(id)),
    )
    .map_err(SeedError::Vfat)?;
    {
        let fs =
            fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).map_err(SeedError::Vfat)?;
        {
            let root = fs.root_dir();
            for (name, content) in files.entries() {
                let mut f = root.create_file(name).map_err(SeedError::Vfat)?;
                f.truncate().map_err(SeedError::Vfat)?;
                f.write_all(content).map_err(SeedError::Vfat)?;
                f.flush().map_err(SeedError::Vfat)?;
            }
        }
        fs.unmount().map_err(SeedError::Vfat)?;
    }
    Ok(img.into_inner())
}

/// Build and write a seed to `path` atomically (0644). Refuses to overwrite unless `force`.
pub fn write(
    path: &Path,
    files: &SeedFiles,
    format: SeedFormat,
    force: bool,
) -> Result<(), SeedError> {
    match berth_files::output::check_target(path, force, "a seed") {
        Err(berth_files::FileError::Exists(p)) => return Err(SeedError::Exists(p)),
        other => other?,
    }
    let bytes = build(files, format)?;
    let out = berth_files::output::Output::create(path, force, Some(0o644), "a seed")?;
    use std::io::Write;
    out.file()
        .write_all(&bytes)
        .map_err(|e| SeedError::Io(path.to_path_buf(), e))?;
    out.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_quotes_what_yaml_would_misread() {
        assert_eq!(
            meta_data("iid-1", Some("web1")),
            "instance-id: iid-1\nlocal-hostname: web1\n"
        );
        assert_eq!(meta_data("yes", None), "instance-id: \"yes\"\n");
        assert!(new_instance_id().starts_with("iid-"));
    }

    #[test]
    fn iso_has_the_cidata_label_and_the_files() {
        let files = SeedFiles {
            user_data: b"#cloud-config\n".to_vec(),
            meta_data: b"instance-id: x\n".to_vec(),
            ..SeedFiles::default()
        };
        let iso = build(&files, SeedFormat::Iso).unwrap();
        // Primary volume descriptor at sector 16: "CD001", volume id at offset 40.
        assert_eq!(&iso[16 * 2048 + 1..16 * 2048 + 6], b"CD001");
        assert!(
            iso[16 * 2048 + 40..16 * 2048 + 72].starts_with(b"cidata"),
            "{:?}",
            &iso[16 * 2048 + 40..16 * 2048 + 72]
        );
        let vfat = build(&files, SeedFormat::Vfat).unwrap();
        assert_eq!(vfat.len() % (1 << 20), 0);
    }
}
