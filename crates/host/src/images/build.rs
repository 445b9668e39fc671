//! Building an image from its recipe: debootstrap into a work folder, the recipe's files,
//! mkfs.ext4 -d, raw to qcow2, the kernels beside it; renamed into place only when complete.

use super::*;
use berth_disk::ops::{self, ConvertOptions};
use berth_disk::{BackingPolicy, Format};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn run_logged(
    cmd: &mut Command,
    tool: &str,
    phase: Phase,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| ImageError::Tool {
        tool: tool.into(),
        detail: format!("cannot start: {e}"),
    })?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            progress(phase, &line);
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().map_err(|e| ImageError::Tool {
        tool: tool.into(),
        detail: e.to_string(),
    })?;
    let err = err_thread.join().unwrap_or_default();
    if !status.success() {
        let mut lines: Vec<String> = tail;
        lines.extend(err.lines().map(str::to_string));
        let n = lines.len();
        return Err(ImageError::Tool {
            tool: tool.into(),
            detail: format!("{status}: {}", lines[n.saturating_sub(8)..].join(" | ")),
        });
    }
    Ok(())
}

/// The newest `/boot/vmlinuz-*<flavour>` in a tree, with its initrd.
fn find_kernel(root: &Path, flavour: &str) -> Option<(PathBuf, PathBuf, String)> {
    let mut found: Vec<String> = std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| {
            if flavour == "generic" {
                v.ends_with("-amd64") && !v.contains("-cloud-")
            } else {
                v.ends_with(&format!("-{flavour}-amd64"))
            }
        })
        .collect();
    found.sort_by(|a, b| version_cmp(a, b));
    let v = found.pop()?;
    let k = root.join("boot").join(format!("vmlinuz-{v}"));
    let i = root.join("boot").join(format!("initrd.img-{v}"));
    i.exists().then_some((k, i, v))
}

impl Store {
    /// Build `recipe_name` (only "debian-12") as image `name`.
    pub fn build(
        &self,
        recipe_name: &str,
        name: &str,
        size: u64,
        mirror: &str,
        progress: Progress<'_>,
    ) -> Result<(ImageMeta, bool), ImageError> {
        check_name(name)?;
        let recipe = match recipe_name {
            "debian-12" | "debian-bookworm" | "bookworm" => debian12(size),
            other => return Err(ImageError::UnknownRecipe(other.to_string())),
        };
        let hash = recipe.hash();
        if let Ok(m) = self.get(name) {
            if m.recipe == hash && self.path(name).join(&m.disk).exists() {
                return Ok((m, true));
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        std::fs::create_dir_all(&self.cache).map_err(io("creating", &self.cache))?;
        let work = self
            .dir
            .join(format!(".build-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
        let cleanup = Cleanup(Some(work.clone()));
        let root = work.join("rootfs");
        // 1. debootstrap
        let mut cmd = Command::new("debootstrap");
        cmd.arg("--variant=minbase")
            .arg(format!("--include={}", recipe.packages.join(",")))
            .arg(format!(
                "--cache-dir={}",
                std::fs::canonicalize(&self.cache)
                    .map_err(io("reading", &self.cache))?
                    .display()
            ))
            .arg(recipe.suite)
            .arg(&root)
            .arg(mirror)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_logged(&mut cmd, "debootstrap", Phase::Bootstrap, progress)?;
        if let Some(suite) = recipe.cloud_init_suite {
            progress(Phase::Bootstrap, &format!("cloud-init from {suite}"));
            // apt in the tree resolves names with the host's resolvers: the tree's own
            // resolv.conf points at systemd-resolved, which does not run in a chroot.
            let resolv = root.join("etc/resolv.conf");
            let link = std::fs::read_link(&resolv).ok();
            let _ = std::fs::remove_file(&resolv);
            std::fs::copy("/etc/resolv.conf", &resolv).map_err(io("copying", &resolv))?;
            let installed = run_logged(
                Command::new("chroot")
                    .arg(&root)
                    .args(["sh", "-ec", CLOUD_INIT_FROM, "sh", mirror, suite])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "installing cloud-init",
                Phase::Bootstrap,
                progress,
            );
            std::fs::remove_file(&resolv).map_err(io("removing", &resolv))?;
            if let Some(target) = link {
                std::os::unix::fs::symlink(target, &resolv).map_err(io("linking", &resolv))?;
            }
            installed?;
        }
        // 2. configure
        progress(Phase::Configure, "writing configuration");
        for (rel, content, mode) in config_files() {
            let p = root.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, content).map_err(io("writing", &p))?;
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(io("chmod", &p))?;
        }
        for unit in MASKED_UNITS {
            let p = root.join("etc/systemd/system").join(unit);
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink("/dev/null", &p).map_err(io("masking", &p))?;
        }
        run_logged(
            Command::new("chroot")
                .arg(&root)
                .args(["systemctl", "enable"])
                .args(ENABLED_UNITS),
            "systemctl enable",
            Phase::Configure,
            progress,
        )?;
        progress(Phase::Configure, "rebuilding the initrds");
        run_logged(
            Command::new("chroot")
                .arg(&root)
                .args(["update-initramfs", "-u", "-k", "all"]),
            "update-initramfs",
            Phase::Configure,
            progress,
        )?;
        let dbus = root.join("var/lib/dbus/machine-id");
        let _ = std::fs::remove_file(&dbus);
        std::fs::create_dir_all(root.join("var/lib/dbus")).map_err(io("creating", &dbus))?;
        std::os::unix::fs::symlink("/etc/machine-id", &dbus).map_err(io("linking", &dbus))?;
        progress(Phase::Configure, "generating the locale");
        run_logged(
            Command::new("chroot").arg(&root).arg("locale-gen"),
            "locale-gen",
            Phase::Configure,
            progress,
        )?;
        progress(
            Phase::Configure,
            "removing host keys, caches and instance state",
        );
        for dir in [
            "etc/ssh",
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "var/lib/cloud",
            "var/log",
        ] {
            let d = root.join(dir);
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().into_owned();
                let p = e.path();
                let remove = match dir {
                    "etc/ssh" => n.starts_with("ssh_host_"),
                    "var/cache/apt/archives" => n.ends_with(".deb"),
                    "var/log" => p.is_file(),
                    _ => n != "partial" && n != "lock",
                };
                if remove {
                    let r = if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    r.map_err(io("removing", &p))?;
                }
            }
        }
        let cloud = find_kernel(&root, "cloud");
        let generic = find_kernel(&root, "generic");
        if cloud.is_none() && generic.is_none() {
            return Err(ImageError::Tool {
                tool: "debootstrap".into(),
                detail: "no kernel in /boot of the new tree".into(),
            });
        }
        let out = work.join("image");
        std::fs::create_dir_all(&out).map_err(io("creating", &out))?;
        let boot = |k: Option<(PathBuf, PathBuf, String)>,
                    tag: &str|
         -> Result<Option<BootFiles>, ImageError> {
            let Some((kp, ip, v)) = k else {
                return Ok(None);
            };
            let (kn, inn) = (format!("vmlinuz-{tag}"), format!("initrd-{tag}.img"));
            std::fs::copy(&kp, out.join(&kn)).map_err(io("copying", &kp))?;
            std::fs::copy(&ip, out.join(&inn)).map_err(io("copying", &ip))?;
            Ok(Some(BootFiles {
                kernel: kn,
                initrd: inn,
                version: v,
            }))
        };
        let kernel_cloud = boot(cloud, "cloud")?;
        let kernel_generic = boot(generic, "generic")?;
        // 3. file system, without mounting
        progress(Phase::Filesystem, "mkfs.ext4 -d");
        let raw = work.join("rootfs.raw");
        run_logged(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&root)
                .args(["-L", "rootfs", "-E", "root_owner=0:0"])
                .arg(&raw)
                .arg(format!("{}K", recipe.size / 1024)),
            "mkfs.ext4",
            Phase::Filesystem,
            progress,
        )?;
        // 4. qcow2 through berth's engine
        progress(Phase::Convert, "raw -> qcow2");
        let disk = out.join("disk.qcow2");
        ops::convert(
            &ConvertOptions::new(&raw, &disk, Format::Qcow2),
            &BackingPolicy::default(),
            &mut |_, _| {},
        )?;
        std::fs::remove_file(&raw).map_err(io("removing", &raw))?;
        std::fs::remove_dir_all(&root).map_err(io("removing", &root))?;
        // 5. metadata, then the image appears under its name
        progress(Phase::Finish, "checksum");
        let meta = ImageMeta {
            name: name.to_string(),
            os: "debian".into(),
            release: recipe.release.into(),
            suite: recipe.suite.into(),
            arch: "x86_64".into(),
            disk: "disk.qcow2".into(),
            size: recipe.size,
            sha256: sha256_file(&disk)?,
            built_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            recipe: hash,
            kernel_cloud,
            kernel_generic,
            root: Some("LABEL=rootfs".into()),
        };
        let mp = out.join("image.json");
        std::fs::write(&mp, serde_json::to_string_pretty(&meta).unwrap_or_default())
            .map_err(io("writing", &mp))?;
        let dest = self.path(name);
        if dest.exists() {
            let trash = self.dir.join(format!(".old-{name}-{}", std::process::id()));
            std::fs::rename(&dest, &trash).map_err(io("replacing", &dest))?;
            let _ = std::fs::remove_dir_all(&trash);
        }
        std::fs::rename(&out, &dest).map_err(io("installing", &dest))?;
        // The work folder (now empty of the image) goes with `cleanup`.
        drop(cleanup);
        Ok((meta, false))
    }
}
