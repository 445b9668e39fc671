//! Container networking: the `berth0` bridge with its own subnet and NAT to the outside, a veth
//! pair per container (its end renamed `eth0` inside), TCP port forwards, and tc shaping.
//!
//! Everything berth adds to the firewall lives in its own nftables table (`ip berth`), so setting
//! up and tearing down never touches the host's own rules; without `nft`, the same rules go into
//! iptables chains of berth's own (`BERTH-*`) with one jump each. Forwards are elements of an
//! nftables map, added and removed per container; the rules themselves never change.
//!
//! The rules, command lines and address choices are pure functions ([`nft_ruleset`],
//! [`iptables_setup`], [`attach_commands`], [`tbf`], [`allocate`]), unit-tested; [`Host`] runs
//! them with `ip`, `nft`/`iptables`, `tc` and `nsenter` from iproute2 and util-linux. (berth
//! calls the tools rather than speaking netlink itself: each step is one documented command a
//! user can repeat by hand, and none is on a hot path.)

mod host;
pub mod leases;
pub mod restore;
mod rules;

pub use host::{link_exists, Host};
pub use rules::*;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors from network setup; each names the command that failed and what it printed.
#[derive(Debug, Error)]
pub enum NetError {
    /// A tool failed.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A tool is missing.
    #[error("{0} was not found (install iproute2 and nftables)")]
    Missing(String),
    /// No address left in the subnet.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// Reading or writing a host setting failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The bridge and its subnet (a /24).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    /// Interface name.
    pub name: String,
    /// The host's address on the bridge (the containers' gateway); the subnet is its /24.
    pub gateway: Ipv4Addr,
}

impl Default for Bridge {
    fn default() -> Bridge {
        Bridge {
            name: "berth0".into(),
            gateway: Ipv4Addr::new(10, 87, 0, 1),
        }
    }
}

impl Bridge {
    /// The subnet as `a.b.c.0/24`.
    pub fn subnet(&self) -> String {
        let o = self.gateway.octets();
        format!("{}.{}.{}.0/24", o[0], o[1], o[2])
    }
}

/// Which firewall tool is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// nftables, berth's own table.
    Nft,
    /// iptables, berth's own chains.
    Iptables,
}
