//! Putting the host's firewall back exactly as it was after berth's iptables fallback.
//!
//! With Debian's iptables (the nf_tables backend), the first `iptables -t nat -N ...` creates the
//! nftables table `ip nat` with all its base chains, and removing berth's own chains later leaves
//! that table (and `ip filter`) behind, empty, on a host that had none; on a host where libvirt
//! already had an `ip nat` table it left base chains libvirt never made. So berth notes which of
//! these tables and chains existed before it set anything up (a [`Snapshot`], kept under /run for
//! the network namespace), and at teardown removes, if empty, what was not there before.
//! Pure: listings in, `nft` commands out.

use std::collections::BTreeMap;

/// The tables berth's iptables rules touch (family `ip`).
pub const TABLES: [&str; 2] = ["nat", "filter"];

/// For each table: `None` if it does not exist, else its chains with whether each is empty.
pub type Snapshot = BTreeMap<String, Option<Vec<(String, bool)>>>;

/// The chains of one `nft list table ip NAME` listing, each with whether it holds no rule (a
/// base chain's `type ... hook ...;` line is not a rule).
pub fn chains(listing: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut current: Option<(String, bool)> = None;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            if let Some(c) = current.take() {
                out.push(c);
            }
            let name = rest.trim_end_matches('{').trim().to_string();
            current = Some((name, true));
        } else if t == "}" {
            if let Some(c) = current.take() {
                out.push(c);
            }
        } else if let Some((_, empty)) = current.as_mut() {
            if !t.is_empty() && !t.starts_with("type ") && !t.starts_with("policy ") {
                *empty = false;
            }
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    out
}

/// The `nft` commands (argv after `nft`) that remove, from `now`, what `before` did not have:
/// whole tables that did not exist, when all their chains are empty; otherwise empty chains
/// that did not exist. Nothing that holds a rule is removed.
pub fn plan(before: &Snapshot, now: &Snapshot) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for (table, chains) in now {
        let Some(chains) = chains else { continue };
        match before.get(table) {
            Some(Some(had)) => {
                for (c, empty) in chains {
                    if *empty && !had.iter().any(|(h, _)| h == c) {
                        cmds.push(
                            ["delete", "chain", "ip", table, c]
                                .map(String::from)
                                .to_vec(),
                        );
                    }
                }
            }
            // Not there before (or not noted: then nothing is known to be ours).
            Some(None) if chains.iter().all(|(_, e)| *e) => {
                cmds.push(["delete", "table", "ip", table].map(String::from).to_vec());
            }
            _ => {}
        }
    }
    cmds
}

/// A snapshot as text (one line per table: `TABLE -` when absent, else `TABLE CHAIN...`).
pub fn encode(s: &Snapshot) -> String {
    s.iter()
        .map(|(t, c)| match c {
            None => format!("{t} -\n"),
            Some(c) => {
                let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
                format!("{t} {}\n", names.join(" ")).replace("  ", " ")
            }
        })
        .collect()
}

/// The inverse of [`encode`] (chains read back as non-empty: only their names matter).
pub fn decode(text: &str) -> Snapshot {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let t = f.next()?.to_string();
            let rest: Vec<&str> = f.collect();
            Some(if rest == ["-"] {
                (t, None)
            } else {
                (
                    t,
                    Some(rest.iter().map(|c| (c.to_string(), false)).collect()),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBVIRT_NAT: &str = "table ip nat {
\tchain LIBVIRT_PRT {
\t\tip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade
\t}

\tchain POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tcounter packets 0 bytes 0 jump LIBVIRT_PRT
\t}
}
";

    const AFTER_BERTH: &str = "table ip nat {
\tchain LIBVIRT_PRT {
\t\tip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade
\t}

\tchain POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tcounter packets 0 bytes 0 jump LIBVIRT_PRT
\t}

\tchain PREROUTING {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t}

\tchain OUTPUT {
\t\ttype nat hook output priority -100; policy accept;
\t}
}
";

    #[test]
    fn chains_and_their_rules_are_read() {
        assert_eq!(
            chains(LIBVIRT_NAT),
            [("LIBVIRT_PRT".into(), false), ("POSTROUTING".into(), false)]
        );
    }

    #[test]
    fn what_was_there_stays_and_what_berth_added_goes() {
        // libvirt's table: only the base chains berth's rules made are removed.
        let before: Snapshot = [
            ("nat".to_string(), Some(chains(LIBVIRT_NAT))),
            ("filter".to_string(), None),
        ]
        .into();
        let empty_filter = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy accept;\n\t}\n}\n";
        let now: Snapshot = [
            ("nat".to_string(), Some(chains(AFTER_BERTH))),
            ("filter".to_string(), Some(chains(empty_filter))),
        ]
        .into();
        let cmds: Vec<String> = plan(&decode(&encode(&before)), &now)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "delete table ip filter",
                "delete chain ip nat PREROUTING",
                "delete chain ip nat OUTPUT"
            ]
        );
        // A host with no tables: both go, but never a table someone put a rule in meanwhile.
        let none: Snapshot = [("nat".to_string(), None), ("filter".to_string(), None)].into();
        let now: Snapshot = [
            ("nat".to_string(), Some(chains(LIBVIRT_NAT))),
            ("filter".to_string(), Some(chains(empty_filter))),
        ]
        .into();
        assert_eq!(
            plan(&none, &now)
                .iter()
                .map(|c| c.join(" "))
                .collect::<Vec<_>>(),
            ["delete table ip filter"]
        );
    }
}
