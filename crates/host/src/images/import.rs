//! Importing a raw or qcow2 disk that holds an ext4 root file system.

use super::*;
use berth_disk::ops::{self, ConvertOptions};
use berth_disk::{BackingPolicy, Format};

impl Store {
    /// Import a raw or qcow2 disk holding an ext4 root file system (whole disk or in a
    /// partition) as image `name`. The kernel and initrd are the given files, or the newest
    /// `/boot/vmlinuz-*` and its `initrd.img-*` read out of the image without mounting it.
    pub fn import(
        &self,
        file: &Path,
        from: &str,
        name: &str,
        kernel: Option<&Path>,
        initrd: Option<&Path>,
        policy: &BackingPolicy,
    ) -> Result<ImageMeta, ImageError> {
        use berth_identity::image_fs::ImageFs;
        check_name(name)?;
        if self.path(name).exists() {
            return Err(ImageError::Exists(name.to_string()));
        }
        if kernel.is_some() != initrd.is_some() {
            return Err(ImageError::HalfBoot);
        }
        let fs = ImageFs::open(file, None, policy).map_err(|e| ImageError::Tool {
            tool: "import".into(),
            detail: e.to_string(),
        })?;
        let fs_err = |e: berth_identity::image_fs::ImageFsError| ImageError::Tool {
            tool: "import".into(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let work = self
            .dir
            .join(format!(".import-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
        let cleanup = Cleanup(Some(work.clone()));
        let (kernel_file, initrd_file, version) = match (kernel, initrd) {
            (Some(k), Some(i)) => {
                std::fs::copy(k, work.join("vmlinuz")).map_err(io("copying", k))?;
                std::fs::copy(i, work.join("initrd.img")).map_err(io("copying", i))?;
                (
                    "vmlinuz".to_string(),
                    "initrd.img".to_string(),
                    "given".to_string(),
                )
            }
            _ => {
                let names = fs.list("/boot").map_err(fs_err)?.unwrap_or_default();
                let mut versions: Vec<String> = names
                    .iter()
                    .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
                    .filter(|v| names.iter().any(|n| n == &format!("initrd.img-{v}")))
                    .collect();
                versions.sort_by(|a, b| version_cmp(a, b));
                let v = versions.pop().ok_or_else(|| ImageError::Tool {
                    tool: "import".into(),
                    detail: format!("{} has no /boot/vmlinuz-* with a matching initrd.img-*; give --kernel and --initrd", file.display()),
                })?;
                for (from, to) in [
                    (format!("/boot/vmlinuz-{v}"), "vmlinuz"),
                    (format!("/boot/initrd.img-{v}"), "initrd.img"),
                ] {
                    let bytes =
                        fs.read(&from)
                            .map_err(fs_err)?
                            .ok_or_else(|| ImageError::Tool {
                                tool: "import".into(),
                                detail: format!("{from} vanished"),
                            })?;
                    let dest = work.join(to);
                    std::fs::write(&dest, bytes).map_err(io("writing", &dest))?;
                }
                ("vmlinuz".to_string(), "initrd.img".to_string(), v)
            }
        };
        let os_release = fs
            .read("/etc/os-release")
            .map_err(fs_err)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let field = |k: &str| {
            os_release
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let root = match (fs.whole_disk(), fs.label()) {
            (true, Some(l)) => format!("LABEL={l}"),
            _ => format!("UUID={}", fs.uuid()),
        };
        drop(fs);
        let disk = work.join("disk.qcow2");
        ops::convert(
            &ConvertOptions::new(file, &disk, Format::Qcow2),
            policy,
            &mut |_, _| {},
        )?;
        let size = berth_disk::ops::info(&disk, Some(Format::Qcow2), false, policy)?
            .first()
            .map(|i| i.virtual_size)
            .unwrap_or(0);
        let boot = BootFiles {
            kernel: kernel_file,
            initrd: initrd_file,
            version,
        };
        let meta = ImageMeta {
            name: name.to_string(),
            os: if field("ID").is_empty() {
                "unknown".into()
            } else {
                field("ID")
            },
            release: field("VERSION_ID"),
            suite: field("VERSION_CODENAME"),
            arch: "x86_64".into(),
            disk: "disk.qcow2".into(),
            size,
            sha256: sha256_file(&disk)?,
            built_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            recipe: format!("{IMPORTED_RECIPE}{from}"),
            kernel_cloud: Some(boot.clone()),
            kernel_generic: Some(boot),
            root: Some(root),
        };
        let mp = work.join("image.json");
        std::fs::write(&mp, serde_json::to_string_pretty(&meta).unwrap_or_default())
            .map_err(io("writing", &mp))?;
        let dest = self.path(name);
        std::fs::rename(&work, &dest).map_err(io("installing", &dest))?;
        std::mem::forget(cleanup);
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn import_reads_kernel_and_os_release_out_of_the_image() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        for (p, c) in [
            ("boot/vmlinuz-6.1.0-9-amd64", "old kernel"),
            ("boot/initrd.img-6.1.0-9-amd64", "old initrd"),
            ("boot/vmlinuz-6.1.0-10-amd64", "kernel"),
            ("boot/initrd.img-6.1.0-10-amd64", "initrd"),
            (
                "etc/os-release",
                "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
            ),
        ] {
            std::fs::create_dir_all(tree.join(p).parent().unwrap()).unwrap();
            std::fs::write(tree.join(p), c).unwrap();
        }
        let raw = d.path().join("src.raw");
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .args(["-L", "myroot"])
            .arg(&raw)
            .arg("32M")
            .status()
            .unwrap();
        assert!(st.success());
        let store = Store {
            dir: d.path().join("images"),
            cache: d.path().join("cache"),
        };
        let meta = store
            .import(
                &raw,
                "src.raw",
                "mine",
                None,
                None,
                &BackingPolicy::default(),
            )
            .unwrap();
        assert_eq!(
            (
                meta.os.as_str(),
                meta.release.as_str(),
                meta.root.as_deref()
            ),
            ("debian", "12", Some("LABEL=myroot"))
        );
        assert_eq!(
            meta.kernel_cloud.as_ref().unwrap().version,
            "6.1.0-10-amd64",
            "newest by version, not by text"
        );
        let dir = store.path("mine");
        assert_eq!(
            std::fs::read_to_string(dir.join("vmlinuz")).unwrap(),
            "kernel"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("initrd.img")).unwrap(),
            "initrd"
        );
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(
            store
                .import(
                    &raw,
                    "src.raw",
                    "mine",
                    None,
                    None,
                    &BackingPolicy::default()
                )
                .is_err(),
            "names are unique"
        );
        let empty = d.path().join("empty.raw");
        std::fs::write(&empty, vec![0u8; 1 << 20]).unwrap();
        assert!(store
            .import(
                &empty,
                "empty.raw",
                "nothing",
                None,
                None,
                &BackingPolicy::default()
            )
            .is_err());
        assert!(!store.path("nothing").exists());
        store.remove("mine").unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}
