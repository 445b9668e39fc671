//! Helpers shared by the CLI's integration tests: run the `berth` binary with a given state
//! folder (`BERTH_DIR`), and insist on success.
#![allow(dead_code)]

pub mod ct;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Run `berth ARGS` with `BERTH_DIR=state` (through a daemon on it with
/// [`THROUGH_DAEMON`] set).
pub fn run(state: &Path, args: &[&str]) -> Output {
    command(state).args(args).output().expect("berth runs")
}

/// `berth` with `BERTH_DIR=state` (through a daemon on it with [`THROUGH_DAEMON`] set), to be
/// given its arguments.
pub fn command(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.env("BERTH_DIR", state);
    if let Some(conf) = through_daemon(state) {
        c.env("BERTH_CONF", conf);
    }
    c
}

/// With this set (to 1), every command [`run`] runs goes through a `berth daemon` on its data
/// dir, the client's default remote: the same tests, through the API over the wire.
pub const THROUGH_DAEMON: &str = "BERTH_E2E_THROUGH_DAEMON";

/// The client config whose default remote is a daemon on `state` (started on first use, ended
/// when this test process ends), when [`THROUGH_DAEMON`] asks for one. (Its shell is kept, never
/// waited for: it lives as long as this process.)
#[allow(clippy::zombie_processes)]
fn through_daemon(state: &Path) -> Option<PathBuf> {
    type Daemons =
        std::sync::Mutex<std::collections::HashMap<PathBuf, (PathBuf, std::process::Child)>>;
    static DAEMONS: OnceLock<Daemons> = OnceLock::new();
    if std::env::var(THROUGH_DAEMON).ok().as_deref() != Some("1") {
        return None;
    }
    let mut map = DAEMONS.get_or_init(Default::default).lock().unwrap();
    if let Some((conf, _)) = map.get(state) {
        return Some(conf.clone());
    }
    let bin = env!("CARGO_BIN_EXE_berth");
    let sock = state.join("berth.sock");
    // The daemon ends when this process does: the shell's `read` sees its input close.
    let child = Command::new("sh")
        .args(["-c", "\"$0\" daemon & d=$!; read _; kill $d; wait $d", bin])
        .env("BERTH_DIR", state)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("a daemon starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the e2e daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let conf = std::env::temp_dir().join(format!("berth-e2e-conf-{}", std::process::id()));
    std::fs::create_dir_all(&conf).unwrap();
    let addr = format!("unix://{}", sock.display());
    for args in [
        vec!["remote", "add", "e2e", addr.as_str()],
        vec!["remote", "switch", "e2e"],
    ] {
        let out = Command::new(bin)
            .args(&args)
            .env("BERTH_DIR", state)
            .env("BERTH_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    map.insert(state.to_path_buf(), (conf.clone(), child));
    Some(conf)
}

/// Run `berth ARGS` and return its stdout; panics with both outputs on failure.
pub fn run_ok(state: &Path, args: &[&str]) -> String {
    stdout_of(args, run(state, args))
}

/// The stdout of `berth ARGS`, which ended as `out`; panics with both outputs on failure.
pub fn stdout_of(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "berth {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `berth shell TARGET` (`base` is `berth` as it is set up) on a terminal of 91x33 columns and rows (made by script(1)) that
/// becomes 100x40 after 6 s, with `input` typed: what the terminal showed, and its status.
pub fn shell_on_pty(base: Command, target: &str, input: &str) -> (String, Option<i32>) {
    use std::io::Write;
    let line = format!(
        "stty cols 91 rows 33; (sleep 6; stty cols 100 rows 40 </dev/tty) & exec {} shell {target}",
        base.get_program().to_string_lossy()
    );
    let mut c = Command::new("script");
    c.args(["-qefc", &line, "/dev/null"]);
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script runs");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    (text, out.status.code())
}

/// `berth shell TARGET` on a pty ([`shell_on_pty`]): its standard input and output are a
/// terminal, named `/dev/pts/N` and owned by the shell's user, of this terminal's size and resized
/// with it, and the shell's exit status comes back as berth's.
pub fn shell_has_a_pty(base: Command, target: &str) {
    let (shown, code) = shell_on_pty(
        base,
        target,
        "test -t 0 && test -t 1 && echo on-a-$((6*7)); t=$(tty); echo \"tty $t\"; \
         test -O \"$t\" && echo owned-by-me; echo size $(stty size); sleep 10; \
         echo size $(stty size); exit 7\n",
    );
    assert_eq!(code, Some(7), "{target}: {shown}");
    assert!(shown.contains("on-a-42"), "{target}: no terminal: {shown}");
    assert!(
        shown.lines().any(|l| l
            .strip_prefix("tty /dev/pts/")
            .is_some_and(|n| n.trim().parse::<u32>().is_ok())),
        "{target}: the terminal has no name there: {shown}"
    );
    assert!(
        shown.contains("owned-by-me"),
        "{target}: the terminal is not the shell user's: {shown}"
    );
    assert!(
        shown.contains("size 33 91"),
        "{target}: not this size: {shown}"
    );
    assert!(
        shown.contains("size 40 100"),
        "{target}: not resized: {shown}"
    );
}

/// Where the end-to-end tests keep their state and the cached base image (outside the repo).
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(std::env::var("BERTH_E2E_DIR").unwrap_or_else(|_| "/var/tmp/berth-e2e".into()))
}

/// Build (or reuse) the debian-12 image in [`e2e_dir`] once per test process.
pub fn e2e_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        std::fs::create_dir_all(e2e_dir()).unwrap();
        run_ok(&e2e_dir(), &["image", "build", "debian-12"]);
    });
}

/// `berth console NAME` is interactive both ways: a user name typed into the guest's serial getty
/// brings its password prompt back, and Ctrl-] detaches with status 0, leaving the guest running.
pub fn console_answers(state_dir: &Path, name: &str) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.env("BERTH_DIR", state_dir);
    console_answers_with(c, name);
}

/// [`console_answers`] with `berth` as `berth` is set up (its environment), for `name` (which may
/// be `REMOTE:NAME`).
pub fn console_answers_with(mut berth: Command, name: &str) {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let mut child = berth
        .args(["console", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut input = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Keep typing the user name until getty asks for its password (the first keystrokes may
    // arrive while getty is still starting).
    loop {
        input.write_all(b"console-check\r").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        if String::from_utf8_lossy(&seen.lock().unwrap()).contains("Password:") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no password prompt on the console; it showed:\n{}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
    }
    input.write_all(&[0x1d]).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "console exited with {status}: {err}");
    assert!(err.contains(&format!("Detached from {name}")), "{err}");
}

/// An instance that is deleted (with `--force`) when the test ends, however it ends.
pub struct Instance {
    /// The data dir.
    pub state: PathBuf,
    /// Its name.
    pub name: String,
}

impl Instance {
    /// The instance NAME in `state` (nothing is made).
    pub fn named(state: &Path, name: String) -> Instance {
        Instance {
            state: state.to_path_buf(),
            name,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let out = run(&self.state, &["delete", "--force", &self.name]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("no instance") {
                eprintln!("deleting {} failed: {err}", self.name);
            }
        }
    }
}

/// A `berth daemon` on a data dir, ended with SIGKILL when dropped (what it leaves is the test's
/// to check); requests go to its socket through curl.
pub struct Daemon {
    /// The data dir.
    pub state: PathBuf,
    child: std::process::Child,
}

impl Daemon {
    /// Start one on `state` and wait until its socket answers.
    pub fn start(state: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("daemon")
            .env("BERTH_DIR", state)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("berth daemon starts");
        let d = Daemon {
            state: state.to_path_buf(),
            child,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while d.call("GET", "/1.0", None).0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "berth daemon did not answer on {}",
                d.socket().display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        d
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join("berth.sock")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `METHOD PATH` with a JSON body: the HTTP status and the answer (0 and null when the
    /// socket did not answer).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(self.socket())
            .args(["-X", method, "-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            c.args(["--data-binary", b]);
        }
        let out = c
            .arg(format!("http://berth{path}"))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A changing request (answered 202 with an operation) followed to its end: the HTTP
    /// status of the request and, when it began one, the operation as it ended.
    pub fn operate(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (s, v) = self.call(method, path, body);
        if s != 202 {
            return (s, v);
        }
        assert_eq!(v["type"], "async", "{v}");
        let op = v["operation"].as_str().expect("an operation's path");
        let (ws, wv) = self.call("GET", &format!("{op}/wait?timeout=600"), None);
        assert_eq!(ws, 200, "waiting for {op}: {wv}");
        (s, wv["metadata"].clone())
    }

    /// End it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CLI user on another machine, in effect: `berth` with a config folder of its own
/// (`BERTH_CONF`, where its remotes live) and an empty data dir of its own, so that whatever it
/// reaches it reaches through a remote.
pub struct Client {
    conf: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Client {
    /// A fresh one.
    pub fn new() -> Client {
        Client {
            conf: tempfile::tempdir().unwrap(),
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// Run `berth ARGS` as this client.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("berth runs")
    }

    /// Its own data dir (its `local:` host).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Its config folder (where remotes.json and its TLS identity live).
    pub fn conf_dir(&self) -> &Path {
        self.conf.path()
    }

    /// `berth` as this client, to be given its arguments.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.env("BERTH_DIR", self.data.path())
            .env("BERTH_CONF", self.conf.path());
        c
    }

    /// Run `berth ARGS` as this client with `input` on its standard input.
    pub fn run_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("berth runs");
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("berth ends");
        feeder.join().unwrap();
        out
    }

    /// Run `berth ARGS` as this client and return its stdout; panics on failure.
    pub fn run_ok(&self, args: &[&str]) -> String {
        stdout_of(args, self.run(args))
    }
}

/// A second host on this machine: a data dir of its own (with no image: a test sends it one)
/// and a `berth daemon --listen` in a network namespace of its own, reached over a veth pair
/// (`10.251.N.1` here, `10.251.N.2` there). Dropped: its instances deleted, the daemon ended,
/// the namespace and the folder removed.
pub struct SecondHost {
    /// Its data dir.
    pub dir: tempfile::TempDir,
    /// Its namespace.
    pub netns: String,
    /// Where its daemon listens (`10.251.N.2:8443`).
    pub address: String,
    /// This host's end of the veth pair to it.
    pub link: String,
    daemon: Option<std::process::Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SecondHost {
    /// Make it and start its daemon.
    pub fn start() -> SecondHost {
        e2e_image();
        let n = std::process::id() % 250 + 1;
        let netns = format!("bt-h2-{}", std::process::id());
        let (here, there) = (format!("bth{n}a"), format!("bth{n}b"));
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &here]).output();
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &there, "netns", &netns]);
        ip(&["addr", "add", &format!("10.251.{n}.1/30"), "dev", &here]);
        ip(&["link", "set", &here, "up"]);
        for args in [
            vec![
                "-n",
                netns.as_str(),
                "addr",
                "add",
                &format!("10.251.{n}.2/30"),
                "dev",
                &there,
            ],
            vec!["-n", netns.as_str(), "link", "set", &there, "up"],
            vec!["-n", netns.as_str(), "link", "set", "lo", "up"],
            // passt takes its addresses from the interface with the default route.
            vec![
                "-n",
                netns.as_str(),
                "route",
                "add",
                "default",
                "via",
                &format!("10.251.{n}.1"),
            ],
        ] {
            ip(&args);
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-h2-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut h = SecondHost {
            dir,
            netns,
            address: format!("10.251.{n}.2:8443"),
            link: here,
            daemon: None,
        };
        h.start_daemon();
        h
    }

    /// Start its daemon (again) and wait until it answers on its socket.
    pub fn start_daemon(&mut self) {
        let child = self
            .command()
            .args(["daemon", "--listen", &self.address])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("the second host's daemon starts");
        self.daemon = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !self.dir.path().join("https.json").exists()
            || std::os::unix::net::UnixStream::connect(self.dir.path().join("berth.sock")).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the second host's daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// End its daemon with SIGKILL, as a crash would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `berth ARGS` on the host itself: in-process, its data dir, in its network namespace
    /// (entered with nsenter: `ip netns exec` would remount /sys and hide the cgroup hierarchy).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("berth runs")
    }

    /// `berth` on the host, in its network namespace, to be given its arguments.
    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(env!("CARGO_BIN_EXE_berth"))
            .env("BERTH_DIR", self.dir.path());
        c
    }

    /// [`SecondHost::run`], insisting on success: its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        stdout_of(args, self.run(args))
    }
}

impl Drop for SecondHost {
    fn drop(&mut self) {
        let listed = self.run(&["list", "--json"]);
        if let Ok(all) = serde_json::from_slice::<serde_json::Value>(&listed.stdout) {
            for i in all.as_array().into_iter().flatten() {
                if let Some(n) = i["name"].as_str() {
                    let _ = self.run(&["delete", "--force", n]);
                }
            }
        }
        self.kill_daemon();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}
