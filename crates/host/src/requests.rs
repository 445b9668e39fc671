//! API requests turned into what the drivers take: user-data and keys parsed from their
//! content, defaults filled in, every value checked with the request field it came from.
//! Pure but for the timezone lookup of cloud-config validation.

use crate::{containers, vms};
use berth_api::{Accel, Blob, Error, GuestKind, InstanceCreate, Network};
use berth_cgroups::Limits;
use berth_cloudinit::compose::UserData;
use berth_qemu::host::AccelRequest;
use berth_qemu::vm::{Forward, Kind};
use std::path::Path;

/// Where cloud-config timezones are looked up.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Default vCPUs and memory of a VM.
pub const VM_CPUS: u32 = 2;
/// 1 GiB.
pub const VM_MEMORY: u64 = 1 << 30;

/// User-data from a request, checked as cloud-init would (`label` names where it came from in
/// errors: a file for the CLI, the request field for the daemon).
pub fn user_data(blob: Option<&Blob>, label: &str) -> Result<UserData, Error> {
    let Some(blob) = blob else {
        return Ok(UserData::default());
    };
    let cap = berth_files::input::USER_DATA_CAP;
    if blob.len_hint() as u64 > cap {
        return Err(Error::invalid(
            "cloud_init",
            format!("the user-data is larger than {} MiB", cap >> 20),
        ));
    }
    let bytes = blob.to_bytes("cloud_init")?;
    UserData::accept(&bytes, label, Some(Path::new(ZONEINFO)))
        .map_err(|m| Error::invalid("cloud_init", m))
}

/// Public keys as authorized_keys lines; `label(i)` names the i-th text in errors.
pub fn public_keys(
    texts: &[String],
    label: impl Fn(usize) -> String,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let parsed = berth_identity::authorized_keys::parse(text)
            .map_err(|e| Error::invalid("vm.ssh_keys", format!("{}: {e}", label(i))))?;
        if parsed.is_empty() {
            return Err(Error::invalid(
                "vm.ssh_keys",
                format!("{} holds no public key", label(i)),
            ));
        }
        out.extend(parsed.iter().map(|p| p.public_line()));
    }
    Ok(out)
}

/// A VM's launch options from a create request (its type already checked).
pub fn vm_options(r: &InstanceCreate, user: UserData, keys: Vec<String>) -> vms::LaunchOptions {
    let vm = r.vm.clone().unwrap_or_default();
    vms::LaunchOptions {
        image: r.image.clone(),
        name: r.name.clone(),
        cpus: vm.cpus.unwrap_or(VM_CPUS),
        memory_mib: vm.memory.unwrap_or(VM_MEMORY) >> 20,
        disk: r.disk,
        user_data: user,
        extra_keys: keys,
        kind: vm.kind.map(|k| match k {
            GuestKind::Full => Kind::Full,
            GuestKind::Hybrid => Kind::Hybrid,
            GuestKind::Paravirt => Kind::Paravirt,
        }),
        accel: match vm.accel {
            None => AccelRequest::Auto,
            Some(Accel::Kvm) => AccelRequest::Kvm,
            Some(Accel::Tcg) => AccelRequest::Tcg,
        },
        forwards: r
            .forwards
            .iter()
            .map(|f| Forward {
                host: f.host,
                guest: f.guest,
            })
            .collect(),
        disk_cache: vm.disk_cache.unwrap_or_else(|| "writeback".into()),
    }
}

/// Limits from `KEY=VALUE` assignments, in order; `field` names the request field in errors.
pub fn limits(assignments: &[String], field: &str) -> Result<Limits, Error> {
    let mut l = Limits::default();
    for a in assignments {
        l.set(a)
            .map_err(|e| Error::invalid(field, format!("{field}: {e}")))?;
    }
    Ok(l)
}

/// A system container's launch options from a create request (its type already checked).
pub fn container_options(
    r: &InstanceCreate,
    user: UserData,
) -> Result<containers::LaunchOptions, Error> {
    let c = r.container.clone().unwrap_or_default();
    Ok(containers::LaunchOptions {
        image: r.image.clone(),
        name: r.name.clone(),
        limits: limits(&c.limits, "container.limits")?,
        user_data: user,
        network: c.network.unwrap_or(Network::Bridge).to_string(),
        forwards: r.forwards.iter().map(|f| (f.host, f.guest)).collect(),
        disk: r.disk,
        unprivileged: c.unprivileged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_name_their_field() {
        let e = user_data(
            Some(&Blob::Text("#cloud-config\nusers: 3\n".into())),
            "u.yaml",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cloud_init"));
        assert!(e.message.contains("u.yaml:2:"), "{}", e.message);
        assert!(user_data(None, "x").unwrap().parts.is_empty());
        let e = public_keys(&["not a key".into()], |i| format!("key {i}")).unwrap_err();
        assert!(e.message.starts_with("key 0"), "{}", e.message);
        let e = public_keys(&["# only a comment\n".into()], |_| "k.pub".into()).unwrap_err();
        assert_eq!(e.message, "k.pub holds no public key");
        let e = limits(&["memory=lots".into()], "container.limits").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("container.limits"));
        assert!(e.message.contains("memory"), "{}", e.message);
    }
}
