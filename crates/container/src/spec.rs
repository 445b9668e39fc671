//! The OCI runtime spec (`config.json`) berth generates for a container: pure, no I/O.
//!
//! Isolation by default: mount, pid, uts, ipc, net and cgroup namespaces; Docker's 14
//! capabilities ([`DEFAULT_CAPS`]: no `CAP_SYS_ADMIN`, `CAP_SYS_MODULE`, `CAP_SYS_BOOT`...);
//! `no_new_privs`; a seccomp filter that allows everything but [`DENIED_SYSCALLS`] (kexec, module
//! loading, keyrings, mounting, swap, ...); runc's masked and read-only `/proc` and `/sys` paths; a
//! minimal `/dev` (tmpfs with the standard nodes, devpts, shm, mqueue).

use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, MountBuilder,
    RootBuilder, Spec,
};
use thiserror::Error;

/// Why a spec could not be built.
#[derive(Debug, Error)]
pub enum SpecError {
    /// A builder refused a value.
    #[error("building the OCI spec: {0}")]
    Oci(#[from] libcontainer::oci_spec::OciSpecError),
    /// No command to run.
    #[error("no command given: the container needs a program to run")]
    NoCommand,
}

/// Docker's default capability set, which berth keeps.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Syscalls the default seccomp filter refuses with EPERM.
pub const DENIED_SYSCALLS: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "add_key",
    "request_key",
    "keyctl",
    "mount",
    "umount2",
    "fsopen",
    "fsmount",
    "move_mount",
    "open_tree",
    "pivot_root",
    "swapon",
    "swapoff",
    "acct",
    "open_by_handle_at",
    "lookup_dcookie",
    "quotactl",
    "nfsservctl",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "perf_event_open",
    "bpf",
    "userfaultfd",
];

/// How the container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Its own network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
    /// A network namespace berth prepared (bind-mounted at this path).
    Join(PathBuf),
}

/// What berth wants of one container.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The merged root filesystem.
    pub rootfs: PathBuf,
    /// The program and its arguments.
    pub args: Vec<String>,
    /// Extra environment (`KEY=VALUE`), after PATH and TERM.
    pub env: Vec<String>,
    /// Hostname inside.
    pub hostname: String,
    /// cgroup path relative to the hierarchy's root (e.g. `/berth/web`).
    pub cgroups_path: PathBuf,
    /// Networking.
    pub network: Network,
    /// Give the process a terminal (for interactive use).
    pub terminal: bool,
    /// A system container: the image's init (systemd) as PID 1. It gets what podman gives
    /// systemd: tmpfs on /run, /run/lock and /tmp, a writable cgroup mount (its own subtree,
    /// through the cgroup namespace), and `container=berth` so systemd knows where it is. It
    /// keeps the same capabilities and seccomp filter as any container: no CAP_SYS_ADMIN, no
    /// mounting, so units that want their own namespaces fail and systemd may say `degraded`.
    pub system: bool,
    /// A file that stands in for `/dev/console` (bind-mounted over it), so that what init
    /// prints to the console lands there.
    pub console: Option<PathBuf>,
    /// Run in a user namespace: IDs 0..[`ID_RANGE`] inside are this base and up outside (the
    /// root filesystem must be owned accordingly; see `rootfs::shift_tree`).
    pub id_base: Option<u32>,
}

/// How many user and group IDs an unprivileged container gets.
pub const ID_RANGE: u32 = 65_536;

/// Build the spec for `plan`.
pub fn build(plan: &Plan) -> Result<Spec, SpecError> {
    if plan.args.is_empty() || plan.args[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut spec = Spec::default();
    spec.set_hostname(Some(plan.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(plan.rootfs.clone())
            .readonly(false)
            .build()?,
    ));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(plan.args.clone()));
    process.set_terminal(Some(plan.terminal));
    process.set_no_new_privileges(Some(true));
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(plan.env.iter().cloned());
    process.set_env(Some(env));
    let caps: std::collections::HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps.clone())
            .inheritable(std::collections::HashSet::new())
            .ambient(std::collections::HashSet::new())
            .build()?,
    ));
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(plan.cgroups_path.clone()));
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect();
    match &plan.network {
        Network::Host => {}
        Network::None => {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(LinuxNamespaceType::Network);
            namespaces.push(ns);
        }
        Network::Join(path) => {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(LinuxNamespaceType::Network);
            ns.set_path(Some(path.clone()));
            namespaces.push(ns);
        }
    }
    if let Some(base) = plan.id_base {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(LinuxNamespaceType::User);
        namespaces.push(ns);
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(base)
            .size(ID_RANGE)
            .build()?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_seccomp(Some(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(
                    DENIED_SYSCALLS
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc_eperm())
                .build()?])
            .build()?,
    ));
    spec.set_linux(Some(linux));

    if plan.system {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys/fs/cgroup") {
                let opts = m
                    .options()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| o != "ro")
                    .chain(std::iter::once("rw".to_string()))
                    .collect();
                m.set_options(Some(opts));
            }
        }
        for (dest, opts) in [
            ("/run", "mode=755,size=20%"),
            ("/run/lock", "mode=1777,size=5m"),
            ("/tmp", "mode=1777"),
        ] {
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(
                        ["nosuid", "nodev"]
                            .iter()
                            .map(|s| s.to_string())
                            .chain(opts.split(',').map(String::from))
                            .collect::<Vec<_>>(),
                    )
                    .build()?,
            );
        }
        spec.set_mounts(Some(mounts));
    }
    if let Some(console) = &plan.console {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/dev/console")
                .typ("bind")
                .source(console.clone())
                .options(vec!["bind".to_string(), "rw".to_string()])
                .build()?,
        );
        spec.set_mounts(Some(mounts));
    }
    Ok(spec)
}

/// EPERM, without a libc dependency for one constant.
fn libc_eperm() -> u32 {
    rustix::io::Errno::PERM.raw_os_error() as u32
}

/// A plain plan for tests in this crate.
#[cfg(test)]
pub(crate) fn test_plan() -> Plan {
    Plan {
        rootfs: "/var/lib/berth/containers/web/rootfs".into(),
        args: vec!["/bin/true".into()],
        env: vec!["container=berth".into()],
        hostname: "web".into(),
        cgroups_path: "/berth/web".into(),
        network: Network::None,
        terminal: false,
        system: false,
        console: None,
        id_base: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        test_plan()
    }

    #[test]
    fn system_containers_get_what_systemd_needs_and_nothing_more() {
        let mut p = plan();
        p.args = vec!["/sbin/init".into()];
        p.system = true;
        let s = build(&p).unwrap();
        let mounts = s.mounts().as_ref().unwrap();
        let at = |d: &str| mounts.iter().find(|m| m.destination() == Path::new(d));
        for d in ["/run", "/run/lock", "/tmp"] {
            assert_eq!(at(d).unwrap().typ().as_deref(), Some("tmpfs"), "{d}");
        }
        let cg = at("/sys/fs/cgroup").unwrap().options().clone().unwrap();
        assert!(cg.contains(&"rw".to_string()) && !cg.contains(&"ro".to_string()));
        let caps = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        // An application container keeps the read-only cgroup mount and no extra tmpfs.
        let app = build(&plan()).unwrap();
        let app_mounts = app.mounts().as_ref().unwrap();
        assert!(!app_mounts
            .iter()
            .any(|m| m.destination() == Path::new("/run")));
    }

    fn ns_types(s: &Spec) -> Vec<LinuxNamespaceType> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn isolated_by_default() {
        let s = build(&plan()).unwrap();
        let types = ns_types(&s);
        for t in [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Cgroup,
        ] {
            assert!(types.contains(&t), "{t:?} missing from {types:?}");
        }
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), 14);
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert!(!bounding.contains(&Capability::SysModule));
        assert!(p
            .env()
            .as_ref()
            .unwrap()
            .contains(&"container=berth".to_string()));
        let linux = s.linux().as_ref().unwrap();
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sysrq-trigger".to_string()));
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        let seccomp = linux.seccomp().as_ref().unwrap();
        let denied = seccomp.syscalls().as_ref().unwrap()[0].names();
        for sc in [
            "init_module",
            "finit_module",
            "kexec_load",
            "mount",
            "keyctl",
        ] {
            assert!(denied.contains(&sc.to_string()), "{sc}");
        }
        assert_eq!(s.hostname().as_deref(), Some("web"));
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(std::path::Path::new("/berth/web"))
        );
        // It serialises to the JSON runtimes read.
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"noNewPrivileges\":true"), "{json}");
    }

    #[test]
    fn network_modes() {
        let mut p = plan();
        p.network = Network::Host;
        assert!(!ns_types(&build(&p).unwrap()).contains(&LinuxNamespaceType::Network));
        p.network = Network::Join("/run/netns/berth-web".into());
        let s = build(&p).unwrap();
        let ns = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            net.path().as_deref(),
            Some(std::path::Path::new("/run/netns/berth-web"))
        );
    }

    #[test]
    fn unprivileged_maps_root_to_the_base() {
        let mut p = plan();
        p.id_base = Some(1_000_000);
        let s = build(&p).unwrap();
        assert!(ns_types(&s).contains(&LinuxNamespaceType::User));
        let m = &s.linux().as_ref().unwrap().uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (m.container_id(), m.host_id(), m.size()),
            (0, 1_000_000, ID_RANGE)
        );
        assert!(!ns_types(&build(&plan()).unwrap()).contains(&LinuxNamespaceType::User));
    }

    #[test]
    fn no_command_is_an_error() {
        let mut p = plan();
        p.args.clear();
        assert!(matches!(build(&p), Err(SpecError::NoCommand)));
    }
}
