//! End-to-end: containers made from the debian-12 image's tree by `berth run`, on this host's
//! cgroups (v1 here), each limit shown to bite from inside, not just written.

mod common;

use common::ct::*;
use common::{e2e_dir, e2e_image};

#[test]
fn exit_status_hostname_and_isolation() {
    let name = format!("ct-iso-{}", std::process::id());
    let (code, out, err) = sh(
        &["--name", &name],
        "hostname; ps -e -o pid= | wc -l; \
         (echo 1 > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-writable; \
         mkdir -p /mnt/t && (mount -t tmpfs none /mnt/t 2>/dev/null && echo mounted); \
         python3 -c 'import ctypes; print(\"init_module\", ctypes.CDLL(None).init_module(None, 0, b\"\"))'; \
         python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
           print(\"keyctl\", l.syscall(250, 0, -3, 0), ctypes.get_errno())'; \
         grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; \
         mknod /root/zero c 1 5 && (head -c 1 /root/zero >/dev/null 2>&1 && echo node-opened); \
         echo dev-zero $(head -c 3 /dev/zero | wc -c); \
         exit 7",
    );
    assert_eq!(code, 7, "exit status passed through; stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], name, "{out}");
    // Only the container's own processes: sh, ps, wc (and the subshell).
    let procs: usize = lines[1].trim().parse().unwrap();
    assert!(procs <= 4, "host processes visible: {procs}");
    assert!(!out.contains("sysrq-writable"), "{out}");
    assert!(!out.contains("mounted"), "{out}");
    assert!(
        out.contains("init_module -1"),
        "module loading refused: {out}"
    );
    assert!(
        out.contains("NoNewPrivs: 1") && out.contains("Seccomp: 2"),
        "{out}"
    );
    // keyctl needs no capability: only the seccomp filter refuses it (EPERM).
    assert!(out.contains("keyctl -1 1"), "keyctl not filtered: {out}");
    // Device nodes made inside do not open (every mount is nodev); the standard ones do.
    assert!(!out.contains("node-opened"), "{out}");
    assert!(out.contains("dev-zero 3"), "{out}");
    // --rm leaves nothing: no instance, folder or cgroup.
    assert!(!names().contains(&name));
    assert!(!e2e_dir().join("containers").join(&name).exists());
    assert!(!cgroup_of(&name).exists());
}

#[test]
fn memory_limit_oom_kills_inside_only() {
    let (code, out, err) = sh(
        &["--memory", "64M"],
        "python3 -c 'x = bytearray(256 * 1024 * 1024); print(\"allocated\")'; echo \"python $?\"",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("allocated"), "{out}");
    assert!(out.contains("python 137"), "OOM-killed (SIGKILL): {out}");
    // Under the limit the same program is fine.
    let (_, out, _) = sh(
        &["--memory", "64M"],
        "python3 -c 'x = bytearray(16 * 1024 * 1024); print(\"allocated\")'",
    );
    assert!(out.contains("allocated"), "{out}");
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    // dash gives up at the first refused fork, so the loop is Python's: it counts refusals.
    let (code, out, err) = sh(
        &["--pids", "20"],
        "python3 -c '
import os, signal, time
kids, refused = [], 0
for i in range(60):
    try:
        pid = os.fork()
    except BlockingIOError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
for p in (\"/sys/fs/cgroup/pids/pids.current\", \"/sys/fs/cgroup/pids.current\"):
    if os.path.exists(p):
        current = int(open(p).read())
print(len(kids), refused, current)
for k in kids:
    os.kill(k, signal.SIGKILL)
'",
    );
    assert_eq!(code, 0, "{err}");
    let f: Vec<u32> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (kids, refused, current) = (f[0], f[1], f[2]);
    assert!(
        kids < 20 && refused > 40,
        "forked {kids}, refused {refused}"
    );
    assert!(current <= 20, "pids.current {current} above the limit");
}

#[test]
fn cpu_quota_gives_about_half_a_core() {
    // Busy for 3 s of wall time, then compare the container's CPU time with it.
    let (code, out, err) = sh(
        &["--cpus", "0.5"],
        "python3 -c '
import time
def usage():
    for p in (\"/sys/fs/cgroup/cpuacct/cpuacct.usage\", \"/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage\"):
        try:
            return int(open(p).read()) / 1e9
        except OSError:
            pass
    for l in open(\"/sys/fs/cgroup/cpu.stat\"):
        if l.startswith(\"usage_usec\"):
            return int(l.split()[1]) / 1e6
u0, t0 = usage(), time.time()
while time.time() - t0 < 3:
    pass
print((usage() - u0) / (time.time() - t0))
'",
    );
    assert_eq!(code, 0, "{err}");
    let share: f64 = out.trim().parse().unwrap_or_else(|_| panic!("{out}"));
    assert!(
        (0.35..=0.65).contains(&share),
        "CPU share {share:.2} under --cpus 0.5"
    );
}

#[test]
fn kept_container_lists_and_deletes_clean() {
    e2e_image();
    let name = format!("ct-keep-{}", std::process::id());
    let out = berth(&[
        "run",
        "--name",
        &name,
        "--pids",
        "50",
        "debian-12",
        "--",
        "/bin/sh",
        "-c",
        "echo kept > /root/f",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = common::run_ok(&e2e_dir(), &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(me["type"], "container");
    assert_eq!(me["state"]["state"], "stopped");
    assert_eq!(me["state"]["reason"], "exited with 0");
    // The write landed in the container's own upper layer, not in the shared image tree.
    let upper = e2e_dir()
        .join("containers")
        .join(&name)
        .join("upper/root/f");
    assert_eq!(std::fs::read_to_string(&upper).unwrap(), "kept\n");
    assert!(!e2e_dir().join("images/debian-12/rootfs/root/f").exists());
    // The image cannot be removed from under the container.
    let rm = berth(&["image", "rm", "debian-12"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains(&name));
    assert!(e2e_dir().join("images/debian-12/disk.qcow2").exists());
    // A second run with the same name is refused and changes nothing.
    let again = berth(&["run", "--name", &name, "debian-12", "--", "/bin/true"]);
    assert_eq!(again.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    common::run_ok(&e2e_dir(), &["delete", &name]);
    assert!(!names().contains(&name));
    assert!(!e2e_dir().join("containers").join(&name).exists());
    assert!(!cgroup_of(&name).exists());
}

#[test]
fn bad_limits_are_refused_before_anything_is_made() {
    e2e_image();
    for (i, (flag, value)) in [
        ("--memory", "lots"),
        ("--cpus", "0"),
        ("--pids", "0"),
        ("--cpuset", "3-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("ct-bad-{}-{i}", std::process::id());
        let out = berth(&[
            "run",
            "--rm",
            "--name",
            &name,
            flag,
            value,
            "debian-12",
            "--",
            "/bin/true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(value),
            "{flag} {value}: {err}"
        );
        assert!(!names().contains(&name));
        assert!(!e2e_dir().join("containers").join(&name).exists());
    }
    let name = format!("ct-bad-{}-image", std::process::id());
    let out = berth(&["run", "--name", &name, "no-such-image", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-image"));
    assert!(!names().contains(&name));
}

/// MiB/s of 12 MiB written with O_DIRECT to /root/d in a container (then removed).
const DIRECT_WRITE: &str = "python3 -c '
import mmap, os, time
fd = os.open(\"/root/d\", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
t = time.time()
for i in range(12):
    os.write(fd, buf)
os.close(fd)
print(12 / (time.time() - t))
'; rm /root/d";

#[test]
fn disk_caps_writes_and_io_max_throttles_them() {
    // Direct writes to the container's own disk under --io-max wbps=4M, then a fill past --disk.
    let (code, out, err) = sh(
        &["--disk", "64M", "--io-max", "disk:wbps=4M"],
        &format!(
            "{DIRECT_WRITE}; dd if=/dev/zero of=/root/big bs=1M count=100 2>&1 | grep -c 'No space left'"
        ),
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let throttled: f64 = lines[0].parse().unwrap();
    assert!(
        (2.5..=5.5).contains(&throttled),
        "{throttled:.1} MiB/s under wbps=4M"
    );
    assert_eq!(lines[1], "1", "writes past --disk fail with ENOSPC: {out}");
    // Without --io-max the same writes are far faster.
    let (_, out, err) = sh(&["--disk", "64M"], DIRECT_WRITE);
    let free: f64 = out.trim().parse().unwrap_or_else(|_| panic!("{out} {err}"));
    assert!(free > 20.0, "{free:.1} MiB/s without --io-max");
}

#[test]
fn ctrl_c_reaches_the_command_and_nothing_is_left() {
    e2e_image();
    let name = format!("ct-sig-{}", std::process::id());
    // Once the command is up, Ctrl-C berth.
    let mut child = run_until_up(
        &name,
        &[],
        &[
            "python3",
            "-c",
            "import time; print('up', flush=True); time.sleep(60)",
        ],
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "128 + SIGINT from the command");
    assert!(!names().contains(&name));
    assert!(!cgroup_of(&name).exists());
}

#[test]
fn exec_joins_a_running_command_container() {
    e2e_image();
    let name = format!("ct-exec-{}", std::process::id());
    let mut child = run_until_up(
        &name,
        &["--memory", "64M"],
        &["sh", "-c", "echo up; exec sleep 30"],
    );
    // Its hostname, its processes (sleep is PID 1), its limits, its restrictions; the exit
    // status comes back.
    let got = berth(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "hostname; ps -o pid=,comm= -p 1; cat /sys/fs/cgroup/memory/memory.limit_in_bytes          /sys/fs/cgroup/memory.max 2>/dev/null; grep -c . /proc/self/uid_map;          grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; exit 4",
    ]);
    let text = String::from_utf8_lossy(&got.stdout).into_owned();
    assert_eq!(
        got.status.code(),
        Some(4),
        "{text} {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines[0], name, "{text}");
    assert_eq!(lines[1], "1 sleep", "{text}");
    assert_eq!(lines[2], (64u64 << 20).to_string(), "{text}");
    assert!(
        text.contains("NoNewPrivs: 1") && text.contains("Seccomp: 2"),
        "{text}"
    );
    // A command missing in the image is a clear error.
    let missing = berth(&["exec", &name, "--", "no-such-command"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-command: command not found"),
        "{missing:?}"
    );
    // sleep as PID 1 ignores SIGINT: the second Ctrl-C ends it.
    for _ in 0..2 {
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    child.wait().unwrap();
    assert!(!names().contains(&name));
}

#[test]
fn unprivileged_root_is_an_unprivileged_id_outside() {
    e2e_image();
    let name = format!("ct-userns-{}", std::process::id());
    let out = common::run_ok(
        &e2e_dir(),
        &[
            "run",
            "--name",
            &name,
            "--unprivileged",
            "debian-12",
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; echo hi > /root/made-inside; stat -c %u /etc/passwd",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "1000000", "65536"],
        "{out}"
    );
    assert_eq!(
        lines[2], "0",
        "the image's files look root-owned inside: {out}"
    );
    // On the host, what root made inside belongs to the unprivileged ID.
    let made = e2e_dir()
        .join("containers")
        .join(&name)
        .join("upper/root/made-inside");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap());
    assert_eq!(uid, 1_000_000);
    ok(&["delete", &name]);

    // A system container boots unprivileged too, its systemd groups kept under berth's.
    let sys = Ct(format!("ct-usys-{}", std::process::id()));
    launch_ct(&sys.0, &["--unprivileged", "--network", "none"]);
    assert_eq!(info(&sys.0)["id_base"], 1_000_000);
    let pid = info(&sys.0)["pid"].as_u64().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = st.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains("1000000"), "{uid_line}");
    // A command exec'd into it is in its user namespace too: root inside, not the host's root.
    let out = exec(
        &sys.0,
        "cat /proc/self/uid_map; echo hi > /root/made-by-exec; systemctl show -p Version --value",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["0", "1000000", "65536"],
        "{out}"
    );
    assert!(!lines[1].is_empty(), "systemctl reaches systemd: {out}");
    let made = e2e_dir()
        .join("containers")
        .join(&sys.0)
        .join("upper/root/made-by-exec");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap());
    assert_eq!(uid, 1_000_000);
    // Its shell's pty is the container's, and its root's (the host's 1000000).
    common::shell_has_a_pty(common::command(&e2e_dir()), &sys.0);
}

#[test]
fn a_reader_that_goes_away_does_not_lose_the_container() {
    e2e_image();
    let name = format!("ct-pipe-{}", std::process::id());
    // berth logs every phase to stderr, whose reader is gone before the first line: berth
    // must still remove the container and pass the status on, and the command must start
    // with SIGPIPE's default disposition, not berth's.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "--rm", "--name", &name, "debian-12", "--"])
        .args(["sh", "-c", "grep SigIgn /proc/self/status; exit 3"])
        .env("BERTH_DIR", e2e_dir())
        .env("BERTH_LOG", "berth_host=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let ignored = text
        .trim()
        .strip_prefix("SigIgn:")
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no SigIgn line: {text}"));
    assert_eq!(ignored & (1 << (13 - 1)), 0, "SIGPIPE (13) ignored inside");
    assert!(!names().contains(&name));
    assert!(!cgroup_of(&name).exists());
}
