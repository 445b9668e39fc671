//! Instances as text, for people (`--json` prints the API's own types instead).

use berth_api::{ContainerDetails, Instance, Status, VmDetails};
use berth_disk::units::human_size;

/// `berth info NAME`.
pub fn info(i: &Instance) {
    println!("Name:        {}", i.name);
    match (i.state.state, i.state.reason.as_str()) {
        (Status::Running | Status::Paused, _) | (_, "") => {
            println!("State:       {}", i.state.state)
        }
        (s, r) => println!("State:       {s} ({r})"),
    }
    match (&i.vm, &i.container) {
        (Some(v), _) => vm(i, v),
        (_, Some(c)) => container(i, c),
        _ => println!("Type:        {} (not made yet)", i.instance_type),
    }
}

fn vm(i: &Instance, v: &VmDetails) {
    println!("Kind:        {} ({})", v.kind, v.accel);
    println!("CPUs:        {}", v.cpus);
    println!("Memory:      {} MiB", v.memory_mib);
    println!(
        "Disk:        {} used of {}",
        human_size(v.disk_usage.unwrap_or(0)),
        human_size(v.disk_size)
    );
    println!("Image:       {}", i.image);
    if let Some(id) = &i.machine_id {
        println!("Machine-id:  {id}");
    }
    for f in &v.forwards {
        println!("Forward:     127.0.0.1:{} -> {}", f.host, f.guest);
    }
    if let Some(u) = v.uptime_seconds {
        println!("Uptime:      {u} s");
    }
    if let Some(u) = &v.qemu_usage {
        usage(u, "Threads:    ");
    }
    if let Some(n) = &v.nic {
        net_io(n);
    }
}

fn net_io(n: &berth_api::NetBytes) {
    println!(
        "Network I/O: {} received, {} sent",
        human_size(n.received_bytes),
        human_size(n.sent_bytes)
    );
}

/// Live usage lines (`tasks`: what its task count is called).
fn usage(u: &berth_api::Usage, tasks: &str) {
    if let Some(m) = u.memory_bytes {
        println!("Memory used: {}", human_size(m));
    }
    if let Some(t) = u.cpu_ns {
        println!("CPU time:    {:.3} s", t as f64 / 1e9);
    }
    if let Some(p) = u.pids {
        println!("{tasks} {p}");
    }
    if let (Some(r), Some(w)) = (u.io_read_bytes, u.io_write_bytes) {
        println!(
            "I/O:         {} read, {} written",
            human_size(r),
            human_size(w)
        );
    }
}

fn container(i: &Instance, c: &ContainerDetails) {
    println!(
        "Type:        {}",
        if c.system {
            "system container"
        } else {
            "container (one command)"
        }
    );
    if let Some(id) = &i.machine_id {
        println!("Machine-id:  {id}");
    }
    println!("Image:       {}", i.image);
    println!("Command:     {}", c.command.join(" "));
    match c.address {
        Some(a) => println!("Network:     {} ({a})", c.network),
        None => println!("Network:     {}", c.network),
    }
    for f in &c.forwards {
        println!("Forward:     host port {} -> {}", f.host, f.guest);
    }
    println!("cgroup:      {}", c.cgroup);
    for (k, v) in &c.limits {
        println!("Limit:       {k} = {v}");
    }
    if let Some(u) = &c.usage {
        usage(u, "Processes:  ");
    }
    if let Some(n) = &c.net {
        net_io(n);
    }
}
