//! The recipe of berth's Debian image: what debootstrap installs, the files written into the
//! tree, the units enabled and masked, and the hash that names the result.

use sha2::{Digest, Sha256};

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
pub(super) const CLOUD_INIT_FROM: &str = r#"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::check_name;

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
