//! berth's orchestrator: where berth keeps its state and images, and the host-wide views built
//! on the state database (the machine-id registry and its audit). Instances and the image store
//! come with the VM and container work. The only user of `berth-state`.

pub mod containers;
pub mod dirs;
pub mod drivers;
pub mod executor;
pub mod images;
pub mod locks;
pub mod machine_ids;
pub mod nic;
mod passt;
pub mod procs;
pub mod requests;
mod ssh_probe;
pub mod vm_record;
pub mod vms;
