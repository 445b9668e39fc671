//! `GET /1.0/metrics`: every instance in Prometheus' text format (version 0.0.4), as Incus
//! serves its metrics: its state, and while it runs its CPU seconds, memory, tasks, storage
//! bytes and network bytes (a container's link on berth0, a VM's NIC).

use berth_api::{Instance, Status, Usage};
use std::fmt::Write as _;

/// A label value as the text format quotes it.
fn quoted(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }
}

fn usage_of(i: &Instance) -> Option<&Usage> {
    match (&i.vm, &i.container) {
        (Some(v), _) => v.qemu_usage.as_ref(),
        (_, Some(c)) => c.usage.as_ref(),
        _ => None,
    }
}

/// The metrics of `instances` (each with its live usage, as `info` gives it).
pub fn render(instances: &[Instance]) -> String {
    let mut state = Family::new(
        "berth_instance_state",
        "gauge",
        "1 for the state the instance is in.",
    );
    let mut cpu = Family::new(
        "berth_instance_cpu_seconds_total",
        "counter",
        "CPU time the instance has used (a VM's QEMU process, a container's cgroup).",
    );
    let mut mem = Family::new(
        "berth_instance_memory_bytes",
        "gauge",
        "Memory in use (a VM's QEMU resident set, a container's cgroup).",
    );
    let mut tasks = Family::new(
        "berth_instance_tasks",
        "gauge",
        "Processes and threads (a VM's QEMU threads, a container's tasks).",
    );
    let mut rd = Family::new(
        "berth_instance_disk_read_bytes_total",
        "counter",
        "Bytes read from storage.",
    );
    let mut wr = Family::new(
        "berth_instance_disk_written_bytes_total",
        "counter",
        "Bytes written to storage.",
    );
    let mut rx = Family::new(
        "berth_instance_network_receive_bytes_total",
        "counter",
        "Bytes the instance received on its network link (a container's on berth0, a VM's NIC).",
    );
    let mut tx = Family::new(
        "berth_instance_network_transmit_bytes_total",
        "counter",
        "Bytes the instance sent on its network link (a container's on berth0, a VM's NIC).",
    );
    for i in instances {
        let labels = format!("name=\"{}\",type=\"{}\"", quoted(&i.name), i.instance_type);
        for s in [
            Status::Creating,
            Status::Running,
            Status::Paused,
            Status::Stopped,
            Status::Broken,
            Status::Moving,
        ] {
            let on = if i.state.state == s { 1.0 } else { 0.0 };
            state.samples.push((format!("{labels},state=\"{s}\""), on));
        }
        if let Some(u) = usage_of(i) {
            let add = |f: &mut Family, v: Option<u64>, scale: f64| {
                if let Some(v) = v {
                    f.samples.push((labels.clone(), v as f64 * scale));
                }
            };
            add(&mut cpu, u.cpu_ns, 1e-9);
            add(&mut mem, u.memory_bytes, 1.0);
            add(&mut tasks, u.pids, 1.0);
            add(&mut rd, u.io_read_bytes, 1.0);
            add(&mut wr, u.io_write_bytes, 1.0);
        }
        let net = i.container.as_ref().and_then(|c| c.net);
        if let Some(n) = net.or_else(|| i.vm.as_ref().and_then(|v| v.nic)) {
            rx.samples.push((labels.clone(), n.received_bytes as f64));
            tx.samples.push((labels.clone(), n.sent_bytes as f64));
        }
    }
    let mut out = String::new();
    for f in [state, cpu, mem, tasks, rd, wr, rx, tx] {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in f.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_become_families_with_escaped_labels() {
        let i: Instance = serde_json::from_value(serde_json::json!({
            "name": "we\"b", "type": "container",
            "state": {"state": "running", "reason": ""},
            "image": "debian-12", "created_at": 0,
            "system": true, "command": [], "network": "bridge", "cgroup": "berth/web",
            "limits": {},
            "usage": {"memory_bytes": 1048576, "cpu_ns": 1500000000, "pids": 3,
                      "io_read_bytes": 10, "io_write_bytes": 20},
            "net": {"received_bytes": 5, "sent_bytes": 6}
        }))
        .unwrap();
        let text = render(&[i]);
        assert!(
            text.contains(
                "berth_instance_state{name=\"we\\\"b\",type=\"container\",state=\"running\"} 1"
            ),
            "{text}"
        );
        assert!(text
            .contains("berth_instance_cpu_seconds_total{name=\"we\\\"b\",type=\"container\"} 1.5"));
        assert!(text.contains(
            "berth_instance_network_transmit_bytes_total{name=\"we\\\"b\",type=\"container\"} 6"
        ));
        assert!(text.contains("# TYPE berth_instance_memory_bytes gauge"));
    }

    #[test]
    fn a_vms_nic_is_its_network_bytes() {
        let i: Instance = serde_json::from_value(serde_json::json!({
            "name": "vm", "type": "vm",
            "state": {"state": "running", "reason": ""},
            "image": "debian-12", "created_at": 0,
            "kind": "hybrid", "accel": "tcg", "cpus": 1, "memory_mib": 512, "disk_size": 1,
            "forwards": [], "ssh": {"user": "u", "port": 1, "key": "/k"},
            "nic": {"received_bytes": 7000, "sent_bytes": 800}
        }))
        .unwrap();
        let text = render(&[i]);
        for line in [
            "berth_instance_network_receive_bytes_total{name=\"vm\",type=\"vm\"} 7000",
            "berth_instance_network_transmit_bytes_total{name=\"vm\",type=\"vm\"} 800",
        ] {
            assert!(text.contains(line), "{text}");
        }
    }
}
