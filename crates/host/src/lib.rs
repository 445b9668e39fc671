//! berth's orchestrator. For now it knows where berth keeps its state and images; instances,
//! the image store and the state database come with the VM and container work.

pub mod dirs;
