//! Consistency check of a qcow2 image, as `qemu-img check` does it: recount every reference
//! (header, L1/L2 tables, data clusters, refcount structures, snapshots, bitmaps) and compare with
//! the stored refcounts. Reports leaks (stored > referenced) and corruptions (stored <
//! referenced, references outside the file, misaligned entries, wrong COPIED flags), and repairs
//! leaks (or everything repairable) on request.

use super::meta::{L2Entry, Qcow2File};
use super::refcount::Qcow2Mut;
use super::{FormatError, OFFSET_MASK, OFLAG_COPIED};
use serde::Serialize;

/// Largest number of host clusters berth will track in one check (2^28 counters, 1 GiB).
pub const MAX_CHECK_CLUSTERS: u64 = 1 << 28;

/// What to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Only report.
    None,
    /// Drop refcounts of leaked clusters.
    Leaks,
    /// Leaks, refcounts that are too low, and COPIED flags.
    All,
}

/// Result of a check, with the field names `qemu-img check --output=json` uses.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// Image file name.
    pub filename: String,
    /// Always "qcow2".
    pub format: String,
    /// Errors that stopped parts of the check.
    pub check_errors: u64,
    /// Corruptions found (and not repaired).
    #[serde(skip_serializing_if = "is_zero")]
    pub corruptions: u64,
    /// Leaked clusters found (and not repaired).
    #[serde(skip_serializing_if = "is_zero")]
    pub leaks: u64,
    /// Corruptions repaired.
    #[serde(skip_serializing_if = "is_zero")]
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    #[serde(skip_serializing_if = "is_zero")]
    pub leaks_fixed: u64,
    /// End of the last used cluster.
    pub image_end_offset: u64,
    /// Guest clusters in the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters with data in this image.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with the previous one.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
    /// Human-readable findings, one per line.
    #[serde(skip)]
    pub messages: Vec<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl CheckReport {
    /// Exit status as `qemu-img check` defines it: 0 clean, 2 corrupt, 3 leaks only, 1 when the
    /// check itself could not finish.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

struct Counter<'a> {
    q: &'a Qcow2File,
    refs: Vec<u32>,
    report: CheckReport,
    /// (l2 offset, index, host cluster) of entries whose COPIED flag must be checked.
    copied_checks: Vec<(u64, bool)>,
}

impl Counter<'_> {
    fn cs(&self) -> u64 {
        self.q.cluster_size()
    }

    /// Count one reference to every cluster in `[off, off + len)`. Returns false if outside.
    fn inc(&mut self, off: u64, len: u64, what: &str) -> bool {
        if len == 0 {
            return true;
        }
        let cs = self.cs();
        let first = off / cs;
        let Some(last) = off.checked_add(len - 1).map(|e| e / cs) else {
            self.corrupt(format!("ERROR {what} at {off:#x}: offset overflows"));
            return false;
        };
        if last >= self.refs.len() as u64 {
            self.corrupt(format!(
                "ERROR {what} at {off:#x} is past the end of the image file"
            ));
            return false;
        }
        for c in first..=last {
            let r = &mut self.refs[c as usize];
            *r = r.saturating_add(1);
        }
        true
    }

    fn corrupt(&mut self, msg: String) {
        self.report.corruptions += 1;
        self.report.messages.push(msg);
    }

    fn walk_l1(&mut self, l1: &[u64], active: bool, label: &str) {
        let cs = self.cs();
        let bits = self.q.header.cluster_bits;
        for (i, &l1e) in l1.iter().enumerate() {
            // Fragmentation is counted within each L2 table, as QEMU does.
            let mut last_host: Option<u64> = None;
            let l2_off = l1e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            if l2_off % cs != 0 {
                self.corrupt(format!(
                    "ERROR {label} L1 entry {i}: L2 table offset {l2_off:#x} is not cluster aligned"
                ));
                continue;
            }
            if !self.inc(l2_off, cs, &format!("{label} L2 table {i}")) {
                continue;
            }
            if active {
                self.copied_checks.push((l2_off, l1e & OFLAG_COPIED != 0));
            }
            let l2 = match self.q.read_l2(l2_off) {
                Ok(t) => t,
                Err(e) => {
                    self.report.check_errors += 1;
                    self.report
                        .messages
                        .push(format!("ERROR reading L2 table {l2_off:#x}: {e}"));
                    continue;
                }
            };
            for (j, &raw) in l2.iter().enumerate() {
                let entry = L2Entry::decode(raw, bits);
                match entry {
                    L2Entry::Unallocated | L2Entry::Zero { host: None, .. } => {}
                    L2Entry::Normal { host, copied }
                    | L2Entry::Zero {
                        host: Some(host),
                        copied,
                    } => {
                        if host % cs != 0 {
                            self.corrupt(format!(
                                "ERROR offset={host:#x}: cluster is not properly aligned; L2 entry {j} of table {l2_off:#x} corrupted"
                            ));
                            continue;
                        }
                        if !self.inc(
                            host,
                            cs,
                            &format!("data cluster (L2 {l2_off:#x} entry {j})"),
                        ) {
                            continue;
                        }
                        if active {
                            self.copied_checks.push((host, copied));
                            if matches!(entry, L2Entry::Normal { .. }) {
                                self.report.allocated_clusters += 1;
                                if last_host.is_some_and(|p| p + cs != host) {
                                    self.report.fragmented_clusters += 1;
                                }
                                last_host = Some(host);
                            }
                        }
                    }
                    L2Entry::Compressed { .. } => {
                        let (start, end) = entry.host_range(cs).unwrap_or((0, 0));
                        if !self.inc(
                            start,
                            end - start,
                            &format!("compressed cluster (L2 {l2_off:#x} entry {j})"),
                        ) {
                            continue;
                        }
                        if active {
                            self.report.allocated_clusters += 1;
                            self.report.compressed_clusters += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Check `q` and report. With `repair` other than [`Repair::None`], `q` must be writable; the
/// returned report then describes the image after repair.
pub fn check(q: Qcow2File, filename: &str, repair: Repair) -> Result<CheckReport, FormatError> {
    let first = count(&q, filename)?;
    if repair == Repair::None || (first.report.leaks == 0 && first.report.corruptions == 0) {
        return Ok(first.report);
    }
    let mut m = Qcow2Mut::new_for_repair(q);
    let (leaks_fixed, corruptions_fixed) = apply_repair(&mut m, &first, repair)?;
    let mut again = count(&m.q, filename)?.report;
    again.leaks_fixed = leaks_fixed;
    again.corruptions_fixed = corruptions_fixed;
    let mut messages = first.report.messages;
    messages.append(&mut again.messages);
    again.messages = messages;
    Ok(again)
}

/// The report, plus what repair needs: clusters whose stored refcount differs from the
/// references counted, and how many COPIED flags are wrong.
struct Counted {
    report: CheckReport,
    /// (cluster, stored, referenced) where they differ.
    mismatches: Vec<(u64, u64, u64)>,
    copied_wrong: u64,
}

fn count(q: &Qcow2File, filename: &str) -> Result<Counted, FormatError> {
    let cs = q.cluster_size();
    let nb = q.file_len.div_ceil(cs);
    if nb > MAX_CHECK_CLUSTERS {
        return Err(FormatError::Refused(format!(
            "the image file has {nb} clusters; berth checks at most {MAX_CHECK_CLUSTERS}"
        )));
    }
    let mut c = Counter {
        q,
        refs: vec![0u32; nb as usize],
        report: CheckReport {
            filename: filename.to_string(),
            format: "qcow2".into(),
            total_clusters: q.header.size.div_ceil(cs),
            ..CheckReport::default()
        },
        copied_checks: Vec::new(),
    };
    c.inc(0, cs, "header");
    let l1_bytes = u64::from(q.header.l1_size) * 8;
    c.inc(q.header.l1_table_offset, l1_bytes, "L1 table");
    c.walk_l1(&q.l1, true, "active");
    // Snapshots.
    match q.snapshots() {
        Ok(snaps) => {
            let table_len = snapshot_table_len(&snaps);
            c.inc(q.header.snapshots_offset, table_len, "snapshot table");
            for sn in &snaps {
                c.inc(
                    sn.l1_table_offset,
                    u64::from(sn.l1_size) * 8,
                    &format!("snapshot {:?} L1 table", sn.name),
                );
                match q.read_snapshot_l1(sn) {
                    Ok(l1) => c.walk_l1(&l1, false, &format!("snapshot {:?}", sn.name)),
                    Err(e) => c.corrupt(format!("ERROR snapshot {:?}: {e}", sn.name)),
                }
            }
        }
        Err(e) => c.corrupt(format!("ERROR snapshot table: {e}")),
    }
    // Refcount structures.
    let reftable_bytes = u64::from(q.header.refcount_table_clusters) * cs;
    c.inc(
        q.header.refcount_table_offset,
        reftable_bytes,
        "refcount table",
    );
    for (i, &e) in q.reftable.iter().enumerate() {
        let off = e & !511;
        if off == 0 {
            continue;
        }
        c.inc(off, cs, &format!("refcount block {i}"));
    }
    count_bitmaps(&mut c);

    // Compare with stored refcounts.
    let per = q.refblock_entries();
    let mut mismatches = Vec::new();
    let mut highest = 0u64;
    for (i, r) in c.refs.iter().enumerate() {
        if *r > 0 {
            highest = i as u64 + 1;
        }
    }
    let mut block_cache: Option<(u64, Vec<u8>)> = None;
    for cluster in 0..nb {
        let idx = (cluster / per) as usize;
        let stored = match q.reftable.get(idx).map(|e| e & !511) {
            None | Some(0) => 0,
            Some(rb) => {
                if block_cache.as_ref().is_none_or(|(o, _)| *o != rb) {
                    block_cache = Some((rb, q.read_refblock(rb)?));
                }
                let (_, data) = block_cache.as_ref().expect("set above");
                super::meta::get_refcount(data, cluster % per, q.header.refcount_order)
            }
        };
        let referenced = u64::from(c.refs[cluster as usize]);
        if stored > 0 {
            highest = highest.max(cluster + 1);
        }
        if stored == referenced {
            continue;
        }
        mismatches.push((cluster, stored, referenced));
        if stored < referenced {
            c.corrupt(format!(
                "ERROR cluster {cluster} refcount={stored} reference={referenced}"
            ));
        } else {
            c.report.leaks += 1;
            c.report.messages.push(format!(
                "Leaked cluster {cluster} refcount={stored} reference={referenced}"
            ));
        }
    }
    // COPIED flags of the active tables, against the stored refcounts.
    let mut copied_wrong = 0;
    let checks = std::mem::take(&mut c.copied_checks);
    for (host, copied) in checks {
        let cluster = host / cs;
        let stored = match mismatches.binary_search_by_key(&cluster, |m| m.0) {
            Ok(i) => mismatches[i].1,
            Err(_) => u64::from(c.refs.get(cluster as usize).copied().unwrap_or(0)),
        };
        if (stored == 1) != copied {
            copied_wrong += 1;
            c.corrupt(format!(
                "ERROR OFLAG_COPIED cluster {host:#x}: refcount={stored}, COPIED={copied}"
            ));
        }
    }
    c.report.image_end_offset = highest * cs;
    Ok(Counted {
        report: c.report,
        mismatches,
        copied_wrong,
    })
}

fn count_bitmaps(c: &mut Counter<'_>) {
    let Some(b) = c.q.header.bitmaps else {
        return;
    };
    if b.nb_bitmaps == 0 {
        return;
    }
    c.inc(b.directory_offset, b.directory_size, "bitmap directory");
    let mut dir = vec![0u8; b.directory_size as usize];
    use std::os::unix::fs::FileExt;
    if let Err(e) = c.q.file.read_exact_at(&mut dir, b.directory_offset) {
        c.report.check_errors += 1;
        c.report
            .messages
            .push(format!("ERROR reading the bitmap directory: {e}"));
        return;
    }
    let cs = c.cs();
    let mut at = 0usize;
    for n in 0..b.nb_bitmaps {
        if at + 24 > dir.len() {
            c.corrupt(format!("ERROR bitmap directory entry {n} is truncated"));
            return;
        }
        let table_off = u64::from_be_bytes(dir[at..at + 8].try_into().unwrap_or_default());
        let table_size = u32::from_be_bytes(dir[at + 8..at + 12].try_into().unwrap_or_default());
        let name_size = u16::from_be_bytes([dir[at + 18], dir[at + 19]]) as usize;
        let extra =
            u32::from_be_bytes(dir[at + 20..at + 24].try_into().unwrap_or_default()) as usize;
        let table_bytes = u64::from(table_size) * 8;
        if table_off % cs != 0 || table_bytes > 64 << 20 {
            c.corrupt(format!("ERROR bitmap {n} table offset/size invalid"));
        } else if c.inc(table_off, table_bytes, &format!("bitmap {n} table")) && table_size > 0 {
            if let Ok(entries) =
                super::meta::read_table(&c.q.file, table_off, u64::from(table_size), "bitmap table")
            {
                for e in entries {
                    let off = e & OFFSET_MASK;
                    if off != 0 {
                        c.inc(off, cs, &format!("bitmap {n} data"));
                    }
                }
            }
        }
        at = (at + 24 + extra + name_size).div_ceil(8) * 8;
    }
}

/// Bytes the snapshot table occupies.
pub fn snapshot_table_len(snaps: &[super::meta::Snapshot]) -> u64 {
    snaps.iter().map(|s| s.on_disk_len).sum()
}

fn apply_repair(
    m: &mut Qcow2Mut,
    found: &Counted,
    repair: Repair,
) -> Result<(u64, u64), FormatError> {
    let mut leaks_fixed = 0;
    let mut corruptions_fixed = 0;
    for &(cluster, stored, referenced) in &found.mismatches {
        if stored > referenced {
            m.set(cluster, referenced)?;
            leaks_fixed += 1;
        } else if repair == Repair::All {
            m.set(cluster, referenced)?;
            corruptions_fixed += 1;
        }
    }
    m.flush_refcounts()?;
    if repair == Repair::All && found.copied_wrong > 0 {
        m.fix_copied_flags()?;
        corruptions_fixed += found.copied_wrong;
    }
    if repair == Repair::All && (m.q.header.is_dirty() || m.q.header.is_corrupt()) {
        m.q.header.incompatible_features &=
            !(super::header::INCOMPAT_DIRTY | super::header::INCOMPAT_CORRUPT);
        m.write_header()?;
    }
    m.sync()?;
    Ok((leaks_fixed, corruptions_fixed))
}
