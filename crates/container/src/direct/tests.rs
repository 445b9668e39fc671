//! The runtime's unit tests: planning, and containers started for real where root allows.

use super::spawn::decode_failure;
use super::*;
use crate::spec::{build, Network, Plan};

fn plan() -> Plan {
    Plan {
        args: vec!["sh".into(), "-c".into(), "true".into()],
        ..crate::spec::test_plan()
    }
}

fn v1() -> Vec<CgroupView> {
    ["memory", "pids", "cpu,cpuacct"]
        .iter()
        .map(|h| CgroupView {
            host: Path::new("/sys/fs/cgroup").join(h).join("berth/web"),
            name: Some(h.to_string()),
        })
        .collect()
}

fn at<'a>(p: &'a Prepared, dest: &str) -> Vec<&'a MountOp> {
    let want = format!("/var/lib/berth/containers/web/rootfs{dest}");
    p.mounts
        .iter()
        .filter(|m| m.target.to_str().unwrap() == want)
        .collect()
}

#[test]
fn the_default_spec_plans_isolation_in_full() {
    let p = prepare(&build(&plan()).unwrap(), &v1()).unwrap();
    for ns in [
        UnshareFlags::NEWNS,
        UnshareFlags::NEWPID,
        UnshareFlags::NEWUTS,
        UnshareFlags::NEWIPC,
        UnshareFlags::NEWNET,
    ] {
        assert_ne!(p.clone_flags & ns.bits() as u64, 0, "{ns:?}");
    }
    assert_eq!(p.clone_flags & UnshareFlags::NEWUSER.bits() as u64, 0);
    assert!(p.cgroup_ns && !p.user_ns);
    // Docker's 14 capabilities, nothing that administers the host.
    assert_eq!(p.caps.bits().count_ones(), 14);
    for cap in [
        CapabilitySet::SYS_ADMIN,
        CapabilitySet::SYS_MODULE,
        CapabilitySet::SYS_BOOT,
    ] {
        assert!(!p.caps.contains(cap), "{cap:?}");
    }
    assert!(p.caps.contains(CapabilitySet::CHOWN | CapabilitySet::KILL));
    assert!(p.no_new_privs);
    let denied = p.seccomp.as_ref().unwrap();
    for sc in ["mount", "init_module", "kexec_load", "keyctl"] {
        assert!(denied.iter().any(|(d, _)| d == sc), "{sc}");
    }
    assert!(denied.iter().all(|(_, errno)| *errno == 1), "EPERM");
    // New filesystems never honour device nodes; /sys goes read-only at once.
    let proc_ = at(&p, "/proc");
    assert_eq!(proc_[0].how, How::Mount);
    assert!(proc_[0].flags.contains(MountFlags::NODEV));
    let sys = at(&p, "/sys")[0];
    assert!(sys.flags.contains(MountFlags::RDONLY | MountFlags::NODEV));
    assert_eq!(
        at(&p, "/dev")[0].data.to_str().unwrap(),
        "mode=755,size=65536k"
    );
    // v1: a tmpfs with each hierarchy's group bound in, then all of it read-only.
    let cg = at(&p, "/sys/fs/cgroup");
    assert_eq!(cg.first().unwrap().how, How::Mount);
    assert_eq!(cg.last().unwrap().how, How::ReadOnlyTree);
    let mem = at(&p, "/sys/fs/cgroup/memory")[0];
    assert_eq!(mem.how, How::Bind);
    assert_eq!(
        mem.source.to_str().unwrap(),
        "/sys/fs/cgroup/memory/berth/web"
    );
    assert_eq!(at(&p, "/sys/fs/cgroup/cpu,cpuacct").len(), 1);
    assert_eq!(p.join_tasks.len(), 3);
    assert!(p.join_v2.is_none());
    assert!(p
        .masked
        .iter()
        .any(|m| m.to_str().unwrap() == "/proc/kcore"));
    assert!(p
        .readonly
        .iter()
        .any(|m| m.to_str().unwrap() == "/proc/sysrq-trigger"));
    assert_eq!(p.hostname.as_deref(), Some(&b"web"[..]));
    assert_eq!(p.args[0].to_str().unwrap(), "sh");
    assert!(p.path.contains(&PathBuf::from("/usr/bin")));
    assert!(p
        .rlimits
        .iter()
        .any(|(r, s, h)| *r == rustix::process::Resource::Nofile && *s == 1024 && *h == 1024));
}

#[test]
fn v2_binds_the_group_and_clones_into_it() {
    let view = [CgroupView {
        host: "/sys/fs/cgroup/berth/web".into(),
        name: None,
    }];
    let p = prepare(&build(&plan()).unwrap(), &view).unwrap();
    let cg = at(&p, "/sys/fs/cgroup");
    assert_eq!(
        cg.iter().map(|m| m.how).collect::<Vec<_>>(),
        [How::Bind, How::ReadOnlyTree]
    );
    assert_eq!(
        p.join_v2.as_deref(),
        Some(Path::new("/sys/fs/cgroup/berth/web"))
    );
    assert!(p.join_tasks.is_empty());
}

#[test]
fn unprivileged_maps_ids_and_adds_a_user_namespace() {
    let mut pl = plan();
    pl.id_base = Some(1_000_000);
    let p = prepare(&build(&pl).unwrap(), &v1()).unwrap();
    assert!(p.user_ns);
    assert_ne!(p.clone_flags & UnshareFlags::NEWUSER.bits() as u64, 0);
    assert_eq!(p.uid_map, "0 1000000 65536\n");
    assert_eq!(p.gid_map, "0 1000000 65536\n");
}

#[test]
fn host_network_keeps_the_hosts_namespace() {
    let mut pl = plan();
    pl.network = Network::Host;
    let p = prepare(&build(&pl).unwrap(), &v1()).unwrap();
    assert_eq!(p.clone_flags & UnshareFlags::NEWNET.bits() as u64, 0);
}

#[test]
fn what_it_does_not_implement_is_refused_by_name() {
    let mut pl = plan();
    pl.terminal = true;
    let e = prepare(&build(&pl).unwrap(), &v1()).unwrap_err();
    assert!(e.to_string().contains("terminal"), "{e}");

    let mut pl = plan();
    pl.network = Network::Join("/run/netns/x".into());
    let e = prepare(&build(&pl).unwrap(), &v1()).unwrap_err();
    assert!(e.to_string().contains("existing namespace"), "{e}");

    let mut spec = build(&plan()).unwrap();
    let mut mounts = spec.mounts().clone().unwrap();
    mounts[0].set_destination("/proc/../../etc".into());
    spec.set_mounts(Some(mounts));
    let e = prepare(&spec, &v1()).unwrap_err();
    assert!(e.to_string().contains("leaves the container's root"), "{e}");
}

#[test]
fn mount_options_split_into_flags_and_data() {
    let opts = |v: &[&str]| mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let (f, d, ro) = opts(&[
        "nosuid",
        "noexec",
        "mode=1777",
        "size=64k",
        "ro",
        "rprivate",
    ]);
    assert_eq!(f, MountFlags::NOSUID | MountFlags::NOEXEC);
    assert_eq!(d, "mode=1777,size=64k");
    assert!(ro);
    let (f, _, ro) = opts(&["rbind", "rw"]);
    assert_eq!(f, MountFlags::BIND | MountFlags::REC);
    assert!(!ro);
}

#[test]
fn mount_targets_are_made_but_never_through_a_link() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let mut seen = std::collections::HashSet::new();
    make_within(&root, &root.join("dev/pts"), Make::Dir, &mut seen).unwrap();
    assert!(root.join("dev/pts").is_dir());
    make_within(&root, &root.join("etc/hosts"), Make::File, &mut seen).unwrap();
    assert!(root.join("etc/hosts").is_file());
    // An image whose /sys points at the host's /etc does not get a mount there.
    std::os::unix::fs::symlink("/etc", root.join("sys")).unwrap();
    let e = make_within(&root, &root.join("sys/fs/cgroup"), Make::Dir, &mut seen).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
    assert!(!Path::new("/etc/fs").exists());
    // Directories on the way are looked at once per root; the targets themselves always.
    assert!(seen.contains(&root.join("dev")) && seen.contains(&root.join("etc")));
    assert!(!seen.contains(&root.join("dev/pts")) && !seen.contains(&root.join("sys")));
    std::fs::remove_dir(root.join("dev/pts")).unwrap();
    std::os::unix::fs::symlink("/tmp", root.join("dev/pts")).unwrap();
    let e = make_within(&root, &root.join("dev/pts"), Make::Dir, &mut seen).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
}

#[test]
fn the_filter_travels_to_the_child_whole() {
    let p = prepare(&build(&plan()).unwrap(), &v1()).unwrap();
    let program = p
        .seccomp_program()
        .unwrap()
        .expect("the default spec has a filter");
    assert!(program.len() > crate::spec::DENIED_SYSCALLS.len());
    let bytes = encode_filter(Some(&program));
    let back = read_filter(&mut &bytes[..]).unwrap().unwrap();
    assert_eq!(back.len(), program.len());
    for (a, b) in back.iter().zip(&program) {
        assert_eq!((a.code, a.jt, a.jf, a.k), (b.code, b.jt, b.jf, b.k));
    }
    assert!(read_filter(&mut &encode_filter(None)[..])
        .unwrap()
        .is_none());
    // Cut short, or claiming more than the kernel takes: an error, not a partial filter.
    assert!(read_filter(&mut &bytes[..bytes.len() - 3]).is_err());
    assert!(read_filter(&mut &5000u32.to_le_bytes()[..]).is_err());
}

#[test]
fn the_compiled_filter_refuses_what_it_lists() {
    if !rustix::process::geteuid().is_root() {
        return; // installing a filter without no_new_privs needs CAP_SYS_ADMIN
    }
    let p = prepare(&build(&plan()).unwrap(), &v1()).unwrap();
    let program = p.seccomp_program().unwrap().unwrap();
    // A thread of its own: a filter binds the thread that installs it, for good.
    let keyctl = std::thread::spawn(move || {
        install_filter(&program).unwrap();
        // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): allowed unfiltered.
        // SAFETY: a plain system call with integer arguments.
        #[allow(unsafe_code)]
        let r = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
        (r, std::io::Error::last_os_error().raw_os_error())
    })
    .join()
    .unwrap();
    assert_eq!(keyctl, (-1, Some(libc::EPERM)));
}

#[test]
fn the_child_tells_a_missing_command_from_a_failed_setup() {
    let f = |m: &str| decode_failure(m);
    assert!(matches!(
        f(&format!("{TAG_NOT_FOUND}nosuch: command not found")),
        DirectError::CommandNotFound(m) if m == "nosuch: command not found"
    ));
    assert!(matches!(
        f(&format!("{TAG_NOT_EXECUTABLE}/etc/passwd: cannot run it")),
        DirectError::CommandNotExecutable(m) if m == "/etc/passwd: cannot run it"
    ));
    assert!(matches!(f("mounting /proc: EPERM"), DirectError::Child(_)));
}
