//! The v2 and v1 code paths against fake cgroup trees in a temp dir, and hierarchy detection
//! against real mountinfo texts.

use super::*;

const HYBRID: &str = "\
24 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
33 31 0:28 / /sys/fs/cgroup/cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpuacct
34 31 0:29 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
35 31 0:30 / /sys/fs/cgroup/pids rw,relatime shared:13 - cgroup cgroup rw,pids
36 31 0:31 / /sys/fs/cgroup/systemd rw,relatime shared:14 - cgroup cgroup rw,name=systemd
37 31 0:32 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw
";

const UNIFIED: &str = "\
24 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

const MERGED_CPU: &str = "\
32 31 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 31 0:30 / /mnt/odd\\040dir rw,relatime - cgroup cgroup rw,pids
";

#[test]
fn detects_hybrid_as_v1_and_unified_as_v2() {
    let h = Hierarchy::from_mountinfo(HYBRID).unwrap();
    let Hierarchy::V1(map) = &h else {
        panic!("{h:?}")
    };
    assert_eq!(map["memory"], Path::new("/sys/fs/cgroup/memory"));
    assert_eq!(map["cpuacct"], Path::new("/sys/fs/cgroup/cpuacct"));
    assert!(!map.contains_key("systemd"));
    assert_eq!(h.version(), Version::V1);

    assert_eq!(
        Hierarchy::systemd_v1_mount(HYBRID),
        Some(PathBuf::from("/sys/fs/cgroup/systemd"))
    );
    assert_eq!(Hierarchy::systemd_v1_mount(UNIFIED), None);

    let h = Hierarchy::from_mountinfo(UNIFIED).unwrap();
    assert_eq!(h, Hierarchy::V2("/sys/fs/cgroup".into()));

    let h = Hierarchy::from_mountinfo(MERGED_CPU).unwrap();
    let Hierarchy::V1(map) = &h else {
        panic!("{h:?}")
    };
    assert_eq!(map["cpu"], map["cpuacct"]);
    assert_eq!(map["pids"], Path::new("/mnt/odd dir"));

    // Not octal, or not ASCII after the backslash: taken as is (found by fuzzing).
    let odd = "1 2 0:3 / /a\\1\u{2f7}x rw - cgroup cgroup rw,memory\n";
    assert!(Hierarchy::from_mountinfo(odd).is_ok());
    assert!(matches!(
        Hierarchy::from_mountinfo("garbage\n\n1 2 3 - x"),
        Err(CgroupError::NoHierarchy(_))
    ));
}

#[test]
fn this_hosts_hierarchy_is_found() {
    // Whatever the host runs, detection must name one, and the group path must land under it.
    let h = Hierarchy::detect().unwrap();
    let g = Cgroup::new(h, "/berth/x/../y");
    assert_eq!(g.relative(), Path::new("berth/x/y"));
    assert!(!g.dirs().is_empty());
}

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn get(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn limits(kv: &[&str]) -> Limits {
    let mut l = Limits::default();
    for a in kv {
        l.set(a).unwrap();
    }
    l
}

/// A fake unified tree: the root and berth's parent offer controllers, as the kernel's would.
fn fake_v2() -> (tempfile::TempDir, Cgroup) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    for d in [root.clone(), root.join("berth")] {
        put(
            &d.join("cgroup.controllers"),
            "cpuset cpu io memory pids hugetlb\n",
        );
        put(&d.join("cgroup.subtree_control"), "");
    }
    let g = Cgroup::new(Hierarchy::V2(root), "berth/web");
    (t, g)
}

#[test]
fn v2_create_apply_usage_remove() {
    let (t, g) = fake_v2();
    g.create().unwrap();
    let dir = t.path().join("berth/web");
    assert!(dir.is_dir());
    // Controllers were enabled on the way down, hugetlb (not berth's) was not.
    assert_eq!(
        get(&t.path().join("cgroup.subtree_control")),
        "+cpu +cpuset +io +memory +pids"
    );
    // The kernel would create the interface files; the fake tree gets them by hand.
    for f in [
        "memory.max",
        "memory.swap.max",
        "cpu.max",
        "cpu.weight",
        "pids.max",
        "io.max",
        "cpuset.cpus",
        "cgroup.procs",
    ] {
        put(&dir.join(f), "");
    }
    let l = limits(&["memory=64M", "memory-swap=96M", "cpus=0.5", "pids=32"]);
    g.apply(&l, &[], None).unwrap();
    assert_eq!(get(&dir.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(get(&dir.join("memory.swap.max")), (32u64 << 20).to_string());
    assert_eq!(get(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(get(&dir.join("pids.max")), "32");

    // `berth set NAME cpus=none pids=64`
    let new = limits(&["memory=64M", "memory-swap=96M", "pids=64"]);
    g.apply(&new, &[], Some((&l, &[]))).unwrap();
    assert_eq!(get(&dir.join("cpu.max")), "max 100000");
    assert_eq!(get(&dir.join("pids.max")), "64");

    // A limit whose file the kernel does not offer is a clear error naming the file.
    let e = g
        .apply(&limits(&["io-weight=200"]), &[], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("io.weight") && e.contains("does not exist"),
        "{e}"
    );

    put(&dir.join("memory.current"), "1234\n");
    put(&dir.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
    put(&dir.join("pids.current"), "3\n");
    put(
        &dir.join("io.stat"),
        "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n7:3 rbytes=1 wbytes=2 rios=1 wios=1\n",
    );
    put(&dir.join("cgroup.procs"), "10\n11\n");
    // A child group (systemd in a system container makes them) counts too.
    put(&dir.join("init.scope/cgroup.procs"), "12\n");
    let u = g.usage();
    assert_eq!(u.memory_bytes, Some(1234));
    assert_eq!(u.cpu_ns, Some(2_500_000));
    assert_eq!(u.pids, Some(3));
    assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(101), Some(202)));
    assert_eq!(g.pids().unwrap(), [10, 11, 12]);
    assert_eq!(g.oom_kills(), None, "no memory.events yet");
    put(
        &dir.join("memory.events"),
        "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
    );
    assert_eq!(g.oom_kills(), Some(2));

    // The fake dir holds regular files, which a real cgroup dir never does; empty it first,
    // keeping an empty child group: removal goes depth first.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(dir.join("system.slice/ssh.service")).unwrap();
    g.remove().unwrap();
    assert!(!g.exists());
    g.remove().unwrap();
}

#[test]
fn v1_create_copies_cpuset_and_orders_memory() {
    let t = tempfile::tempdir().unwrap();
    let mut map = BTreeMap::new();
    for c in ["memory", "cpu", "cpuset", "pids"] {
        map.insert(c.to_string(), t.path().join(c));
        std::fs::create_dir_all(t.path().join(c)).unwrap();
    }
    put(&t.path().join("cpuset/cpuset.cpus"), "0-1\n");
    put(&t.path().join("cpuset/cpuset.mems"), "0\n");
    let g = Cgroup::new(Hierarchy::V1(map), "berth/db");
    // berth/ inherits the root's cpuset, berth/db inherits berth/'s.
    let parent = t.path().join("cpuset/berth");
    std::fs::create_dir_all(&parent).unwrap();
    put(&parent.join("cpuset.cpus"), "0-1\n");
    put(&parent.join("cpuset.mems"), "0\n");
    g.create().unwrap();
    assert_eq!(get(&t.path().join("cpuset/berth/db/cpuset.cpus")), "0-1");
    assert_eq!(get(&t.path().join("cpuset/berth/db/cpuset.mems")), "0");
    for d in ["memory", "cpu", "pids"] {
        assert!(t.path().join(d).join("berth/db").is_dir(), "{d}");
    }
    let mem = t.path().join("memory/berth/db");
    for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
        put(&mem.join(f), "");
    }
    for f in ["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"] {
        put(&t.path().join("cpu/berth/db").join(f), "");
    }
    put(&t.path().join("pids/berth/db/pids.max"), "");
    let l = limits(&[
        "memory=32M",
        "memory-swap=64M",
        "cpus=2",
        "cpu-weight=50",
        "pids=9",
    ]);
    g.apply(&l, &[], None).unwrap();
    assert_eq!(
        get(&mem.join("memory.limit_in_bytes")),
        (32u64 << 20).to_string()
    );
    assert_eq!(
        get(&mem.join("memory.memsw.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        get(&t.path().join("cpu/berth/db/cpu.cfs_quota_us")),
        "200000"
    );
    assert_eq!(get(&t.path().join("cpu/berth/db/cpu.shares")), "512");
    assert_eq!(get(&t.path().join("pids/berth/db/pids.max")), "9");
    put(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    assert_eq!(g.oom_kills(), Some(1));

    // blkio is not mounted in this fake: an I/O limit names the missing controller.
    let e = g
        .apply(&limits(&["io-weight=10"]), &[], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blkio"), "{e}");
    // Swap accounting missing: a clear error with the kernel switch.
    std::fs::remove_file(mem.join("memory.memsw.limit_in_bytes")).unwrap();
    let e = g.apply(&l, &[], None).unwrap_err().to_string();
    assert!(e.contains("swapaccount"), "{e}");
}

#[test]
fn v1_create_makes_missing_parents_and_copies_cpusets_down() {
    let t = tempfile::tempdir().unwrap();
    let mut map = BTreeMap::new();
    for c in ["memory", "cpuset"] {
        map.insert(c.to_string(), t.path().join(c));
        std::fs::create_dir_all(t.path().join(c)).unwrap();
    }
    put(&t.path().join("cpuset/cpuset.cpus"), "0-3\n");
    put(&t.path().join("cpuset/cpuset.mems"), "0\n");
    // berth/ exists in cpuset with a narrower set; berth/pool/ does not exist anywhere.
    put(&t.path().join("cpuset/berth/cpuset.cpus"), "1\n");
    put(&t.path().join("cpuset/berth/cpuset.mems"), "0\n");
    let g = Cgroup::new(Hierarchy::V1(map.clone()), "berth/pool/web");
    g.create().unwrap();
    for level in ["berth/pool", "berth/pool/web"] {
        assert_eq!(
            get(&t.path().join("cpuset").join(level).join("cpuset.cpus")),
            "1"
        );
        assert!(t.path().join("memory").join(level).is_dir(), "{level}");
    }
    // An existing group is left as it is.
    put(&t.path().join("cpuset/berth/pool/web/cpuset.cpus"), "0\n");
    g.create().unwrap();
    assert_eq!(
        get(&t.path().join("cpuset/berth/pool/web/cpuset.cpus")),
        "0\n"
    );
    // A hierarchy whose mount point is gone is an error naming it, not a walk up the tree.
    map.insert("pids".into(), t.path().join("gone"));
    let e = Cgroup::new(Hierarchy::V1(map), "berth/db")
        .create()
        .unwrap_err();
    assert!(e.to_string().contains("gone"), "{e}");
    assert!(!t.path().join("gone").exists());
}

#[test]
fn every_v1_hierarchy_is_listed_with_its_proc_cgroup_name() {
    let all = Hierarchy::v1_mounts(HYBRID);
    assert!(all.contains(&("name=systemd".into(), "/sys/fs/cgroup/systemd".into())));
    assert!(all.contains(&("cpu".into(), "/sys/fs/cgroup/cpu".into())));
    assert!(!all
        .iter()
        .any(|(_, p)| p == Path::new("/sys/fs/cgroup/unified")));
    let merged = Hierarchy::v1_mounts(MERGED_CPU);
    assert_eq!(
        merged[0],
        ("cpu,cpuacct".into(), "/sys/fs/cgroup/cpu,cpuacct".into())
    );
    assert_eq!(merged[2].1, Path::new("/mnt/odd dir"));
    assert!(Hierarchy::v1_mounts(UNIFIED).is_empty());
}
