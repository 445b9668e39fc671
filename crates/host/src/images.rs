//! Base images: Debian guests built from Debian's mirror with debootstrap, stored as qcow2 in
//! berth's image store with their kernels beside them for direct kernel boot.
//!
//! A build works in a hidden folder of the store and renames it into place only when complete,
//! so an interrupted build leaves nothing half-made. The image carries no machine-id (systemd's
//! first-boot state), no SSH host keys and no cloud-init instance state: every guest made from
//! it starts fresh. The recipe (release, packages, configuration, size) is hashed; a second
//! build of the same recipe is instant.

use berth_disk::ops::{self, ConvertOptions};
use berth_disk::{BackingPolicy, Format};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;

/// Errors from the image store.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Unknown recipe name.
    #[error("unknown image {0:?}: berth builds debian-12")]
    UnknownRecipe(String),
    /// Bad image name.
    #[error("invalid image name {0:?}: use letters, digits, '-', '_' and '.', starting with a letter or digit")]
    BadName(String),
    /// No such image.
    #[error("no image named {0:?} (see `berth image list`)")]
    NotFound(String),
    /// A tool failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its last output lines.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The disk engine failed.
    #[error(transparent)]
    Disk(#[from] berth_disk::Error),
    /// The image's metadata is unreadable.
    #[error("image metadata {}: {message}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// A kernel and initrd for direct boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFiles {
    /// Kernel file name in the image folder.
    pub kernel: String,
    /// Initrd file name in the image folder.
    pub initrd: String,
    /// Kernel version.
    pub version: String,
}

/// What `image.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Image name.
    pub name: String,
    /// "debian".
    pub os: String,
    /// "12".
    pub release: String,
    /// Debian suite, "bookworm".
    pub suite: String,
    /// "x86_64".
    pub arch: String,
    /// Disk file name in the image folder.
    pub disk: String,
    /// Virtual size.
    pub size: u64,
    /// sha256 of the disk file.
    pub sha256: String,
    /// Unix time of the build.
    pub built_at: u64,
    /// Hash of the recipe it was built from.
    pub recipe: String,
    /// The `cloud` kernel flavour (virtio guests).
    pub kernel_cloud: Option<BootFiles>,
    /// The generic kernel flavour (all drivers: full-emulation guests).
    pub kernel_generic: Option<BootFiles>,
    /// The root device for the kernel command line (`LABEL=rootfs`, `UUID=...`).
    #[serde(default)]
    pub root: Option<String>,
}

/// How an imported image's `recipe` field starts (what follows is the file it came from).
pub const IMPORTED_RECIPE: &str = "imported:";

/// A build recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// Debian suite.
    pub suite: &'static str,
    /// Release number.
    pub release: &'static str,
    /// Packages beyond minbase.
    pub packages: Vec<&'static str>,
    /// The suite cloud-init is taken from, when not `suite` (see [`debian12`]).
    pub cloud_init_suite: Option<&'static str>,
    /// Root file system size.
    pub size: u64,
}

/// The Debian 12 cloud guest recipe.
///
/// cloud-init comes from Debian 13 (trixie; it is architecture-independent Python and its
/// dependencies are all in bookworm), as cloud images of older releases get newer cloud-init
/// on Ubuntu. Bookworm's 22.4 starts Python four times per boot, once per stage, and under TCG
/// each start spends 2-5 s importing cloud-init before doing anything: about half of a guest's
/// time to ready. 25.1 runs all four stages in one process that systemd's stage units signal
/// over a socket, so the import is paid once.
pub fn debian12(size: u64) -> Recipe {
    Recipe {
        suite: "bookworm",
        release: "12",
        cloud_init_suite: Some("trixie"),
        packages: vec![
            "linux-image-cloud-amd64",
            "linux-image-amd64",
            "systemd-sysv",
            "udev",
            "dbus",
            "cloud-init",
            "python3-cffi-backend",
            "openssh-server",
            // The network: systemd-networkd (configured by cloud-init) and systemd-resolved.
            "systemd-resolved",
            "ca-certificates",
            "sudo",
            "iproute2",
            "netbase",
            "qemu-guest-agent",
            "locales",
            "e2fsprogs",
            // What trixie's cloud-init needs beyond bookworm's: nc signals its stages.
            "netcat-openbsd",
            "eject",
        ],
        size,
    }
}

/// Files the build writes into the tree: (path, content, mode).
pub fn config_files() -> Vec<(&'static str, &'static str, u32)> {
    vec![
        (
            "etc/fstab",
            "LABEL=rootfs / ext4 defaults,discard,errors=remount-ro 0 1\n",
            0o644,
        ),
        ("etc/hostname", "localhost\n", 0o644),
        (
            "etc/hosts",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
            0o644,
        ),
        ("etc/machine-id", "", 0o444),
        ("etc/locale.gen", "en_US.UTF-8 UTF-8\n", 0o644),
        ("etc/default/locale", "LANG=en_US.UTF-8\n", 0o644),
        // Only NoCloud: no probing for other clouds' metadata services at boot.
        (
            "etc/cloud/cloud.cfg.d/90-berth.cfg",
            "# Written by berth.\ndatasource_list: [ NoCloud, None ]\n",
            0o644,
        ),
        // An initrd with only what finds the root disk on berth's three machine kinds, instead
        // of initramfs-tools' `most` (15 MB for the cloud kernel, 36 MB for the generic one,
        // unpacked and probed at every boot). Names a kernel lacks are skipped.
        (
            "etc/initramfs-tools/conf.d/berth.conf",
            "# Written by berth.\nMODULES=list\n",
            0o644,
        ),
        ("etc/initramfs-tools/modules", INITRD_MODULES, 0o644),
        (
            "etc/initramfs-tools/hooks/berth-fast-init",
            FAST_INIT_HOOK,
            0o755,
        ),
    ]
}

/// An initramfs-tools hook that gives the cloud kernel's initrd (the kernel of the paravirt and
/// hybrid kinds, whose disks are virtio) a short `/init`: load the virtio disk drivers, find
/// the root file system the command line names, mount it and start its init. initramfs-tools'
/// own init (udev, its script phases, waiting for the root device) took 1.5-1.6 s of every boot
/// under TCG; this one takes 0.25-0.5 s. It stays in the initrd as `/init.full`, and anything
/// the short path does not expect (another root device, `break=`, `resume=`, a root that does
/// not show up within 5 s, `berth.fullinit` on the command line) hands over to it. The generic
/// kernel's initrd (the full kind: IDE and SATA) keeps initramfs-tools' init. Runs under
/// klibc's sh with the initrd's own tools (klibc mount and run-init, kmod, util-linux blkid).
const FAST_INIT_HOOK: &str = r#"#!/bin/sh
# Written by berth: a short /init for the cloud kernel's initrd (see the script below).
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
case "$version" in
*-cloud-*) ;;
*) exit 0 ;;
esac
copy_exec /sbin/blkid /sbin
mv "$DESTDIR/init" "$DESTDIR/init.full"
cat >"$DESTDIR/init" <<'BERTH_INIT'
#!/bin/sh
# berth's fast path for a guest on virtio: load the virtio disk drivers, mount the root file
# system named on the kernel command line, and start its init. Anything unexpected hands over to
# initramfs-tools' own init (/init.full), which does everything.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mkdir -p /dev /proc /sys /root
mount -t devtmpfs -o nosuid,mode=0755 udev /dev
mount -t proc -o nodev,noexec,nosuid proc /proc
mount -t sysfs -o nodev,noexec,nosuid sysfs /sys
full() {
	echo "berth fast init: $1; using the full initramfs"
	shift
	umount /root 2>/dev/null
	umount /sys
	umount /proc
	umount /dev
	exec /init.full "$@"
}
root= rootfstype=ext4 rootflags= mode=ro init=/sbin/init
for x in $(cat /proc/cmdline); do
	case $x in
	root=*) root=${x#root=} ;;
	rootfstype=*) rootfstype=${x#rootfstype=} ;;
	rootflags=*) rootflags=,${x#rootflags=} ;;
	init=*) init=${x#init=} ;;
	ro) mode=ro ;;
	rw) mode=rw ;;
	berth.fullinit|break|break=*|resume=*|rootdelay=*|boot=*|ip=*|nfsroot=*) full "$x on the kernel command line" "$@" ;;
	esac
done
modprobe -qab virtio_mmio virtio_pci virtio_blk || full "modprobe failed" "$@"
dev=
n=0
while [ $n -lt 50 ]; do
	case $root in
	LABEL=*|UUID=*|PARTUUID=*|PARTLABEL=*) dev=$(blkid -l -o device -t "$root") ;;
	/dev/*) [ -b "$root" ] && dev=$root ;;
	*) full "root=$root is not a device berth's fast path knows" "$@" ;;
	esac
	[ -n "$dev" ] && break
	sleep 0.1
	n=$((n + 1))
done
[ -n "$dev" ] || full "no $root after 5 s" "$@"
mount -t "$rootfstype" -o "$mode$rootflags" "$dev" /root || full "mounting $dev failed" "$@"
[ -x "/root$init" ] || [ -h "/root$init" ] || full "no $init on $dev" "$@"
mount -n -o move /dev /root/dev
mount -n -o move /proc /root/proc
mount -n -o move /sys /root/sys
exec run-init /root "$init" "$@" </root/dev/console >/root/dev/console 2>&1
BERTH_INIT
chmod 0755 "$DESTDIR/init"
"#;

/// Replaces the tree's cloud-init with the one of suite `$2` from mirror `$1`: only that
/// package (its dependencies are the release's own), and no trace of the other suite in apt's
/// sources, so the guest's `apt upgrade` stays on its release; what the old package left behind
/// is removed.
const CLOUD_INIT_FROM: &str = r#"
list=/etc/apt/sources.list.d/berth-cloud-init.list
echo "deb $1 $2 main" > "$list"
trap 'rm -f "$list"' EXIT
opts="-o Dir::Etc::SourceList=$list -o Dir::Etc::SourceParts=- -o Acquire::Languages=none"
apt-get -q $opts update
cd /tmp
apt-get -q $opts download cloud-init
dpkg -i /tmp/cloud-init_*.deb
rm -f /tmp/cloud-init_*.deb
# Files the old package had and the new one dropped (its SysV scripts would run a stage again).
dpkg-query -W -f='${Conffiles}\n' cloud-init | awk '$NF == "obsolete" { print $1 }' | xargs -r rm -fv
"#;

/// The initrd's modules: virtio on PCI (hybrid) and MMIO (paravirt), IDE and SATA disks (full),
/// ext4 and the checksum it needs.
const INITRD_MODULES: &str = "# Written by berth: the root disk on berth's machine kinds.\n\
virtio_pci\nvirtio_mmio\nvirtio_blk\nvirtio_scsi\nata_piix\nahci\nsd_mod\next4\ncrc32c_generic\n";

/// Units enabled in the image. systemd-networkd brings up what cloud-init writes for it; with
/// ifupdown, which bookworm's images use, the DHCPv6 that cloud-init 25.1's fallback asks for
/// holds the boot for 5 minutes where no DHCPv6 server answers (QEMU's NAT, libvirt's default
/// network), and its dhclient scripts took 1.6-1.8 s of every boot under TCG.
pub const ENABLED_UNITS: &[&str] = &["systemd-networkd.service"];

/// Units a berth guest has no use for, masked in the image: each costs a process (and a module
/// load) at every boot, which under TCG is a few hundred ms of the CPU cloud-init waits for.
/// e2scrub_reap cleans LVM snapshots (the image has no LVM); drm and efi_pstore are for a
/// display and EFI firmware that berth's machines do not have.
pub const MASKED_UNITS: &[&str] = &[
    "e2scrub_reap.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
];

impl Recipe {
    /// A stable hash of everything that shapes the image.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "v1 {} {} {}\n",
            self.suite, self.release, self.size
        ));
        for p in &self.packages {
            h.update(format!("pkg {p}\n"));
        }
        if let Some(suite) = self.cloud_init_suite {
            h.update(format!("cloud-init from {suite}\n"));
        }
        for (path, content, mode) in config_files() {
            h.update(format!("file {path} {mode:o} {}\n{content}", content.len()));
        }
        for unit in MASKED_UNITS {
            h.update(format!("mask {unit}\n"));
        }
        for unit in ENABLED_UNITS {
            h.update(format!("enable {unit}\n"));
        }
        format!("{:x}", h.finalize())[..16].to_string()
    }
}

/// Valid image and instance names.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    berth_api::check_name(name).map_err(|_| ImageError::BadName(name.to_string()))
}

/// A build phase, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// debootstrap downloading and installing packages.
    Bootstrap,
    /// Writing configuration, generating the locale, cleaning.
    Configure,
    /// mkfs.ext4 -d.
    Filesystem,
    /// raw -> qcow2.
    Convert,
    /// Checksum and metadata.
    Finish,
}

/// Progress callback: (phase, one line of detail).
pub type Progress<'a> = &'a mut dyn FnMut(Phase, &str);

/// The image store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Folder holding one sub-folder per image.
    pub dir: PathBuf,
    /// debootstrap's package cache.
    pub cache: PathBuf,
}

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

fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(path).map_err(io("reading", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Compare version strings as `sort -V` does: runs of digits by value, the rest as text.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, t)) if *d == digit => t.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.0, y.0) {
            (true, true) => {
                let (xs, ys) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                xs.len().cmp(&ys.len()).then_with(|| xs.cmp(ys))
            }
            _ => x.1.cmp(&y.1),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
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

struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Store {
    /// The store under berth's data folder.
    pub fn new(dirs: &crate::dirs::Dirs) -> Store {
        Store {
            dir: dirs.images(),
            cache: dirs.root.join("cache/debootstrap"),
        }
    }

    /// An image's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Read an image's metadata.
    pub fn get(&self, name: &str) -> Result<ImageMeta, ImageError> {
        check_name(name)?;
        let p = self.path(name).join("image.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io("reading", &p)(e)),
        };
        serde_json::from_str(&text).map_err(|e| ImageError::Metadata {
            path: p,
            message: e.to_string(),
        })
    }

    /// All images, by name.
    pub fn list(&self) -> Result<Vec<ImageMeta>, ImageError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("reading", &self.dir)(e)),
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(m) = self.get(&name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove an image.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        self.get(name)?;
        let p = self.path(name);
        // Rename first so a half-removed image is never visible under its name.
        let trash = self.dir.join(format!(".rm-{name}-{}", std::process::id()));
        std::fs::rename(&p, &trash).map_err(io("removing", &p))?;
        std::fs::remove_dir_all(&trash).map_err(io("removing", &trash))
    }

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

impl Store {
    /// Import a raw or qcow2 disk holding an ext4 root file system (whole disk or in a
    /// partition) as image `name`. The kernel and initrd are the given files, or the newest
    /// `/boot/vmlinuz-*` and its `initrd.img-*` read out of the image without mounting it.
    pub fn import(
        &self,
        file: &Path,
        name: &str,
        kernel: Option<&Path>,
        initrd: Option<&Path>,
        policy: &BackingPolicy,
    ) -> Result<ImageMeta, ImageError> {
        use berth_identity::image_fs::ImageFs;
        check_name(name)?;
        if self.path(name).exists() {
            return Err(ImageError::Tool {
                tool: "import".into(),
                detail: format!("an image named {name:?} already exists (berth image rm {name})"),
            });
        }
        if kernel.is_some() != initrd.is_some() {
            return Err(ImageError::Tool {
                tool: "import".into(),
                detail: "give both --kernel and --initrd, or neither".into(),
            });
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
            recipe: format!("{IMPORTED_RECIPE}{}", file.display()),
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
            .import(&raw, "mine", None, None, &BackingPolicy::default())
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
                .import(&raw, "mine", None, None, &BackingPolicy::default())
                .is_err(),
            "names are unique"
        );
        let empty = d.path().join("empty.raw");
        std::fs::write(&empty, vec![0u8; 1 << 20]).unwrap();
        assert!(store
            .import(&empty, "nothing", None, None, &BackingPolicy::default())
            .is_err());
        assert!(!store.path("nothing").exists());
        store.remove("mine").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn the_fast_init_hook_and_its_init_are_valid_shell() {
        let init = FAST_INIT_HOOK
            .split("<<'BERTH_INIT'\n")
            .nth(1)
            .and_then(|rest| rest.split("\nBERTH_INIT\n").next())
            .expect("the hook embeds the init");
        assert!(init.starts_with("#!/bin/sh\n"));
        for script in [FAST_INIT_HOOK, init] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(config_files().iter().any(|(p, c, m)| {
            *p == "etc/initramfs-tools/hooks/berth-fast-init" && *c == FAST_INIT_HOOK && *m == 0o755
        }));
    }

    #[test]
    fn versions_sort_by_value() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("6.1.0-10-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(version_cmp("6.1.0-9", "6.1.0-9"), Equal);
        assert_eq!(version_cmp("5.10", "6.1"), Less);
    }

    #[test]
    fn names_and_recipes() {
        assert!(check_name("debian-12").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("").is_err());
        assert_eq!(debian12(2 << 30).hash(), debian12(2 << 30).hash());
        assert_ne!(debian12(2 << 30).hash(), debian12(3 << 30).hash());
        let files = config_files();
        assert!(files
            .iter()
            .any(|(p, c, m)| *p == "etc/machine-id" && c.is_empty() && *m == 0o444));
    }
}
