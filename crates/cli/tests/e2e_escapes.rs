//! End-to-end, the red-team's escapes (issue 13): what a guest must not reach, and what every
//! process berth starts inside a container must carry. Real guests and containers from the
//! debian-12 image, as root.

mod common;

use common::{e2e_dir, e2e_image};
use std::process::{Command, Output, Stdio};

fn ok_in(netns: Option<&str>, args: &[&str]) -> String {
    common::stdout_of(args, berth_in(netns, args))
        .trim()
        .to_string()
}

fn berth_in(netns: Option<&str>, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_berth");
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    c.args(args)
        .env("BERTH_DIR", e2e_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair: `host` (where berth runs its guest; its
/// default route leads to `outside`) and `outside` (10.200.0.1, standing for the world beyond
/// the host's gateway). Nothing leaves them.
struct Net {
    host: String,
    outside: String,
    servers: Vec<std::process::Child>,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id();
        let n = Net {
            host: format!("berth-h{id}"),
            outside: format!("berth-o{id}"),
            servers: Vec::new(),
        };
        for ns in [&n.host, &n.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (a, b) = (format!("bh{id}"), format!("bo{id}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &n.host]);
        ip(&["link", "set", &b, "netns", &n.outside]);
        ip(&["-n", &n.host, "addr", "add", "10.200.0.2/24", "dev", &a]);
        ip(&["-n", &n.outside, "addr", "add", "10.200.0.1/24", "dev", &b]);
        ip(&["-n", &n.host, "link", "set", &a, "up"]);
        ip(&["-n", &n.outside, "link", "set", &b, "up"]);
        ip(&[
            "-n",
            &n.host,
            "route",
            "add",
            "default",
            "via",
            "10.200.0.1",
        ]);
        n
    }

    /// An HTTP server in `ns` on `addr:port` whose every page is `text`.
    fn serve(&mut self, ns: &str, addr: &str, port: u16, text: &str) {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("index.html"), text).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-m", "http.server"])
            .args(["--bind", addr, &port.to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
        // Until it answers.
        for _ in 0..100 {
            let got = Command::new("ip")
                .args(["netns", "exec", ns, "python3", "-c"])
                .arg(format!(
                    "import urllib.request as u; print(u.urlopen('http://{addr}:{port}/', timeout=1).read().decode())"
                ))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&got.stdout).contains(text) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the test server on {addr}:{port} in {ns} did not answer");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in [&self.host, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Regression for issue 13 item 2: through QEMU's user-mode NAT a guest reached every service on
/// the host's loopback at 10.0.2.2, other guests' SSH forwards included. On passt it reaches the
/// outside through its gateway, and what is forwarded to it, and nothing on the host's loopback.
#[test]
fn a_vm_reaches_the_outside_but_not_the_hosts_loopback() {
    e2e_image();
    let mut net = Net::new();
    let port = 18080;
    net.serve(&net.host.clone(), "127.0.0.1", port, "HOST-LOOPBACK");
    net.serve(&net.outside.clone(), "10.200.0.1", port, "OUTSIDE");
    let ns = Some(net.host.as_str());
    let name = format!("vm-esc-{}", std::process::id());
    let _ = berth_in(ns, &["delete", "--force", &name]);
    struct Del<'a>(&'a str, Option<&'a str>);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            let _ = berth_in(self.1, &["delete", "--force", self.0]);
        }
    }
    let _del = Del(&name, ns);
    ok_in(ns, &["launch", "debian-12", &name, "--timeout", "400"]);
    let fetch = |url: &str| {
        let out = berth_in(
            ns,
            &[
                "exec",
                &name,
                "--",
                "python3",
                "-c",
                &format!(
                    "import urllib.request as u\ntry:\n print(u.urlopen('{url}', timeout=5).read().decode())\nexcept Exception as e:\n print('FAILED', e)"
                ),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let gateway = ok_in(
        ns,
        &[
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "ip -4 route show default | cut -d' ' -f3",
        ],
    );
    assert_eq!(gateway, "10.200.0.1", "the guest's gateway is the host's");
    // The outside, through the gateway: the page of the outside's server.
    assert_eq!(fetch(&format!("http://{gateway}:{port}/")), "OUTSIDE");
    // The address QEMU's NAT mapped to the host's loopback leads nowhere now.
    let old = fetch(&format!("http://10.0.2.2:{port}/"));
    assert!(old.starts_with("FAILED"), "10.0.2.2 answered: {old}");
    // Nor does the host's own address (the guest has it, so it stays inside the guest).
    let own = fetch(&format!("http://10.200.0.2:{port}/"));
    assert!(!own.contains("HOST-LOOPBACK"), "{own}");
    // The guest's own forward (its SSH) still works from the host: exec ran through it.
    let listed = ok_in(ns, &["list"]);
    assert!(listed.contains(&name), "{listed}");
    // Deleting the guest ends its passt too.
    ok_in(ns, &["delete", "--force", &name]);
    let left = Command::new("pgrep")
        .args(["-f", &format!("instances/{name}/net/passt.sock")])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "passt of {name} still runs: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// The confinement lines of `/proc/PID/status` that every process of a container shares.
fn confinement(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| {
            ["Seccomp:", "NoNewPrivs:", "CapEff:", "CapBnd:", "CapPrm:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

/// Regression for issue 13 item 1: `berth exec` into a privileged system container ran without
/// the container's seccomp filter (`Seccomp: 0`; keyctl read the host root's keyring, `unshare
/// -U` worked). Every way berth starts a process in a container (exec, shell) carries the
/// container's filter, capabilities, no_new_privs and cgroup, in every mode.
#[test]
fn every_process_berth_starts_in_a_container_is_confined_as_the_container() {
    e2e_image();
    let id = std::process::id();
    let sys = format!("ct-esc-sys-{id}");
    let sys_u = format!("ct-esc-sysu-{id}");
    let app = format!("ct-esc-app-{id}");
    let app_u = format!("ct-esc-appu-{id}");
    struct Del(Vec<String>);
    impl Drop for Del {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = berth_in(None, &["delete", "--force", n]);
            }
        }
    }
    let _del = Del(vec![sys.clone(), sys_u.clone(), app.clone(), app_u.clone()]);
    for (name, extra) in [(&sys, &[][..]), (&sys_u, &["--unprivileged"][..])] {
        let mut a = vec![
            "launch",
            "debian-12",
            name,
            "--container",
            "--network",
            "none",
        ];
        a.extend(extra);
        a.extend(["--timeout", "120"]);
        ok_in(None, &a);
    }
    // Command containers that stay up for the checks.
    let mut runs = Vec::new();
    for (name, extra) in [(&app, &[][..]), (&app_u, &["--unprivileged"][..])] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(["run", "--name", name, "--network", "none"])
            .args(extra)
            .args(["debian-12", "--", "sleep", "600"])
            .env("BERTH_DIR", e2e_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        runs.push(c.spawn().unwrap());
    }
    for name in [&app, &app_u] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ok_in(None, &["list"]).contains(name.as_str()) {
            assert!(std::time::Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    for name in [&sys, &sys_u, &app, &app_u] {
        let info: serde_json::Value =
            serde_json::from_str(&ok_in(None, &["info", "--json", name])).unwrap();
        let pid = info["pid"].as_u64().unwrap();
        // The container's first process, as the host sees it.
        let own = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let want = confinement(&own);
        assert!(
            want.iter().any(|l| l == "Seccomp:\t2"),
            "{name}'s own process has no seccomp filter: {want:?}"
        );
        // exec
        let status = ok_in(None, &["exec", name, "--", "cat", "/proc/self/status"]);
        assert_eq!(confinement(&status), want, "berth exec into {name}");
        // shell (a login shell reading its commands from stdin)
        let mut sh = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["shell", name])
            .env("BERTH_DIR", e2e_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        sh.stdin
            .take()
            .unwrap()
            .write_all(b"cat /proc/self/status\nexit\n")
            .unwrap();
        let out = sh.wait_with_output().unwrap();
        assert_eq!(
            confinement(&String::from_utf8_lossy(&out.stdout)),
            want,
            "berth shell into {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // In the container's cgroup: nothing outside its namespace root.
        let cg = ok_in(None, &["exec", name, "--", "cat", "/proc/self/cgroup"]);
        assert!(
            !cg.contains(".."),
            "berth exec into {name} is outside its cgroup: {cg}"
        );
        let host_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(host_cg.contains(&format!("berth/{name}")), "{host_cg}");
        // What the filter and the capability set forbid.
        let escape = ok_in(
            None,
            &[
                "exec",
                name,
                "--",
                "sh",
                "-c",
                "unshare -Urm true 2>/dev/null && echo unshared || echo refused",
            ],
        );
        assert_eq!(escape, "refused", "unshare -U in {name}");
    }
    for n in [&app, &app_u] {
        let _ = berth_in(None, &["delete", "--force", n]);
    }
    for mut r in runs {
        let _ = r.wait();
    }
}
