//! qcow2 internal snapshots: create, apply (revert) and delete, in the same on-disk form QEMU
//! uses, so `qemu-img snapshot -l` sees berth's snapshots and berth uses QEMU's.
//!
//! Each operation orders its writes so that an interruption leaves at most leaked clusters:
//! references are counted before anything points at them, and dropped only after nothing does.

use super::meta::{Qcow2File, Snapshot};
use super::refcount::Qcow2Mut;
use super::{entries_to_be, FormatError, OFLAG_COPIED};

/// Find a snapshot by id or, failing that, by name.
pub fn find<'a>(snaps: &'a [Snapshot], id_or_name: &str) -> Option<(usize, &'a Snapshot)> {
    snaps
        .iter()
        .enumerate()
        .find(|(_, s)| s.id == id_or_name)
        .or_else(|| snaps.iter().enumerate().find(|(_, s)| s.name == id_or_name))
}

fn not_found(name: &str) -> FormatError {
    FormatError::Refused(format!("no snapshot with id or name {name:?}"))
}

/// Serialise a whole table.
fn table_bytes(snaps: &[Snapshot]) -> Vec<u8> {
    snaps.iter().flat_map(Snapshot::serialize).collect()
}

fn clusters_for(bytes: u64, cs: u64) -> u64 {
    bytes.div_ceil(cs).max(1)
}

/// Write `snaps` as a new table, point the header at it, and release the old table.
fn replace_table(m: &mut Qcow2Mut, snaps: &[Snapshot]) -> Result<(), FormatError> {
    let cs = m.q.cluster_size();
    let old_off = m.q.header.snapshots_offset;
    let old_len: u64 = m.q.snapshots()?.iter().map(|s| s.on_disk_len).sum();
    let new_off = if snaps.is_empty() {
        0
    } else {
        let bytes = table_bytes(snaps);
        let off = m.alloc(clusters_for(bytes.len() as u64, cs))?;
        m.write_at(off, &bytes)?;
        off
    };
    m.flush_refcounts()?;
    m.q.header.nb_snapshots = snaps.len() as u32;
    m.q.header.snapshots_offset = new_off;
    m.write_header()?;
    if old_len > 0 {
        m.free(old_off, clusters_for(old_len, cs) * cs)?;
    }
    Ok(())
}

/// Create snapshot `name` of the image's current state.
pub fn create(q: Qcow2File, name: &str, date: (u32, u32)) -> Result<Snapshot, FormatError> {
    if name.is_empty() || name.len() > 65535 {
        return Err(FormatError::Refused(
            "a snapshot name must be 1 to 65535 bytes".into(),
        ));
    }
    let mut m = Qcow2Mut::new(q)?;
    let mut snaps = m.q.snapshots()?;
    if snaps.iter().any(|s| s.name == name) {
        return Err(FormatError::Refused(format!(
            "a snapshot named {name:?} already exists"
        )));
    }
    if snaps.len() as u32 >= super::header::MAX_SNAPSHOTS {
        return Err(FormatError::Refused(
            "the image has the maximum number of snapshots".into(),
        ));
    }
    let cs = m.q.cluster_size();
    let active = m.q.l1.clone();
    // Count the new references first; this fails cleanly (nothing written) on refcount overflow.
    m.update_tree(&active, 1)?;
    let l1_bytes = entries_to_be(&active.iter().map(|e| e & !OFLAG_COPIED).collect::<Vec<_>>());
    let l1_off = if active.is_empty() {
        0
    } else {
        let off = m.alloc(clusters_for(l1_bytes.len() as u64, cs))?;
        m.write_at(off, &l1_bytes)?;
        off
    };
    let next_id = snaps
        .iter()
        .filter_map(|s| s.id.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let sn = Snapshot {
        l1_table_offset: l1_off,
        l1_size: active.len() as u32,
        id: next_id.to_string(),
        name: name.to_string(),
        date_sec: date.0,
        date_nsec: date.1,
        vm_clock_nsec: 0,
        vm_state_size: 0,
        disk_size: Some(m.q.header.size),
        icount: None,
        extra_rest: Vec::new(),
        on_disk_len: 0,
    };
    snaps.push(sn.clone());
    replace_table(&mut m, &snaps)?;
    m.flush_refcounts()?;
    m.fix_copied_flags()?;
    m.sync()?;
    Ok(sn)
}

/// Revert the image to snapshot `id_or_name` (the snapshot stays).
pub fn apply(q: Qcow2File, id_or_name: &str) -> Result<(), FormatError> {
    let mut m = Qcow2Mut::new(q)?;
    let snaps = m.q.snapshots()?;
    let (_, sn) = find(&snaps, id_or_name).ok_or_else(|| not_found(id_or_name))?;
    let sn = sn.clone();
    let cs = m.q.cluster_size();
    let sn_l1 = m.q.read_snapshot_l1(&sn)?;
    let new_size = sn.disk_size.unwrap_or(m.q.header.size);
    let needed = std::cmp::max(u64::from(sn.l1_size), m.q.header.l1_entries_for(new_size));
    let old_l1 = m.q.l1.clone();
    let old_l1_off = m.q.header.l1_table_offset;
    m.update_tree(&sn_l1, 1)?;
    let in_place = needed <= u64::from(m.q.header.l1_size) && old_l1_off != 0;
    let mut new_l1 = sn_l1.clone();
    let new_len = if in_place {
        u64::from(m.q.header.l1_size)
    } else {
        needed
    };
    new_l1.resize(new_len as usize, 0);
    let new_off = if in_place {
        old_l1_off
    } else {
        m.alloc(clusters_for(new_len * 8, cs))?
    };
    m.flush_refcounts()?;
    m.write_at(new_off, &entries_to_be(&new_l1))?;
    m.q.l1 = new_l1;
    m.q.header.l1_table_offset = new_off;
    m.q.header.l1_size = new_len as u32;
    m.q.header.size = new_size;
    m.write_header()?;
    m.update_tree(&old_l1, -1)?;
    if !in_place && !old_l1.is_empty() {
        m.free(old_l1_off, clusters_for(old_l1.len() as u64 * 8, cs) * cs)?;
    }
    m.flush_refcounts()?;
    m.fix_copied_flags()?;
    m.sync()
}

/// Delete snapshot `id_or_name`, releasing clusters only it used.
pub fn delete(q: Qcow2File, id_or_name: &str) -> Result<Snapshot, FormatError> {
    let mut m = Qcow2Mut::new(q)?;
    let mut snaps = m.q.snapshots()?;
    let (idx, _) = find(&snaps, id_or_name).ok_or_else(|| not_found(id_or_name))?;
    let sn = snaps.remove(idx);
    let cs = m.q.cluster_size();
    let sn_l1 = m.q.read_snapshot_l1(&sn)?;
    replace_table(&mut m, &snaps)?;
    m.update_tree(&sn_l1, -1)?;
    if sn.l1_size > 0 {
        m.free(
            sn.l1_table_offset,
            clusters_for(u64::from(sn.l1_size) * 8, cs) * cs,
        )?;
    }
    m.flush_refcounts()?;
    m.fix_copied_flags()?;
    m.sync()?;
    Ok(sn)
}
