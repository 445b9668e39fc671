//! An opened qcow2 file's metadata: header, active L1 table, refcount table, and on-demand reads
//! of L2 tables and refcount blocks, each checked against the file before use.
//!
//! Memory stays bounded by the header limits (L1 at most 32 MiB, refcount table at most 8 MiB);
//! L2 tables and refcount blocks are read one cluster at a time.

use super::header::{Header, MAX_L1_BYTES};
use super::{be64_entries, FormatError, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A decoded L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated here: reads from the backing file, or zeroes without one.
    Unallocated,
    /// Reads as zeroes; `host` is a preallocated cluster, if any.
    Zero {
        /// Preallocated host cluster, if any.
        host: Option<u64>,
        /// COPIED flag.
        copied: bool,
    },
    /// Data in a host cluster.
    Normal {
        /// Host offset, cluster aligned.
        host: u64,
        /// COPIED flag.
        copied: bool,
    },
    /// Compressed data.
    Compressed {
        /// Host byte offset where the compressed stream starts.
        host: u64,
        /// Number of 512-byte sectors, counted from the sector holding `host`.
        sectors: u64,
    },
}

impl L2Entry {
    /// Decode a raw entry for an image with `cluster_bits`.
    pub fn decode(raw: u64, cluster_bits: u32) -> L2Entry {
        if raw & OFLAG_COMPRESSED != 0 {
            let x = 62 - (cluster_bits - 8);
            let host = raw & ((1u64 << x) - 1);
            let sectors = ((raw >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
            return L2Entry::Compressed { host, sectors };
        }
        let host = raw & OFFSET_MASK;
        let copied = raw & OFLAG_COPIED != 0;
        if raw & OFLAG_ZERO != 0 {
            return L2Entry::Zero {
                host: (host != 0).then_some(host),
                copied,
            };
        }
        if host == 0 {
            return L2Entry::Unallocated;
        }
        L2Entry::Normal { host, copied }
    }

    /// Encode a compressed entry.
    pub fn encode_compressed(host: u64, len: u64, cluster_bits: u32) -> u64 {
        let x = 62 - (cluster_bits - 8);
        let first_sector = host / 512;
        let last_sector = (host + len - 1) / 512;
        let additional = last_sector - first_sector;
        OFLAG_COMPRESSED | (additional << x) | host
    }

    /// Host byte range `[start, end)` this entry occupies, if any.
    pub fn host_range(&self, cluster_size: u64) -> Option<(u64, u64)> {
        match *self {
            L2Entry::Unallocated | L2Entry::Zero { host: None, .. } => None,
            L2Entry::Zero { host: Some(h), .. } | L2Entry::Normal { host: h, .. } => {
                Some((h, h + cluster_size))
            }
            L2Entry::Compressed { host, sectors } => Some((host, (host & !511) + sectors * 512)),
        }
    }
}

/// An internal snapshot's table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Unique id string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, seconds.
    pub date_sec: u32,
    /// Creation time, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of saved VM state.
    pub vm_state_size: u64,
    /// Virtual disk size at creation (v3 extra data).
    pub disk_size: Option<u64>,
    /// Instruction count (`-1` if none).
    pub icount: Option<u64>,
    /// Extra data beyond what berth knows, kept verbatim.
    pub extra_rest: Vec<u8>,
    /// Bytes this entry occupies in the table as read (0 for a new entry).
    pub on_disk_len: u64,
}

/// Upper bound on the whole snapshot table (QEMU: `QCOW_MAX_SNAPSHOTS_SIZE`).
pub const MAX_SNAPSHOT_TABLE: u64 = 1 << 30;
/// Upper bound on one entry's extra data (QEMU: `QCOW_MAX_SNAPSHOT_EXTRA_DATA`).
pub const MAX_SNAPSHOT_EXTRA: u32 = 1024;

impl Snapshot {
    /// Serialise one table entry, padded to 8 bytes.
    pub fn serialize(&self) -> Vec<u8> {
        let mut extra = Vec::new();
        extra.extend_from_slice(&self.vm_state_size.to_be_bytes());
        extra.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        extra.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        extra.extend_from_slice(&self.extra_rest);
        let mut out = Vec::new();
        out.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        let small_state = u32::try_from(self.vm_state_size).unwrap_or(0);
        out.extend_from_slice(&small_state.to_be_bytes());
        out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
        while out.len() % 8 != 0 {
            out.push(0);
        }
        out
    }
}

/// An opened qcow2 image's metadata.
#[derive(Debug)]
pub struct Qcow2File {
    /// The image file.
    pub file: File,
    /// The parsed header.
    pub header: Header,
    /// File length when opened.
    pub file_len: u64,
    /// Active L1 table, raw entries.
    pub l1: Vec<u64>,
    /// Refcount table, raw entries.
    pub reftable: Vec<u64>,
}

impl Qcow2File {
    /// Open `path` and load its header, L1 and refcount tables.
    pub fn open(path: &Path, writable: bool) -> Result<Qcow2File, FormatError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(FormatError::io(format!("opening {}", path.display())))?;
        Qcow2File::from_file(file)
    }

    /// Load metadata from an already opened file.
    pub fn from_file(file: File) -> Result<Qcow2File, FormatError> {
        let file_len = file
            .metadata()
            .map_err(FormatError::io("reading file size"))?
            .len();
        // Read the first cluster (at most 2 MiB) or the whole file if shorter.
        let first = std::cmp::min(file_len, 2 << 20) as usize;
        let mut buf = vec![0u8; first];
        file.read_exact_at(&mut buf, 0)
            .map_err(FormatError::io("reading the qcow2 header"))?;
        let header = Header::parse(&buf, file_len)?;
        let l1 = read_table(
            &file,
            header.l1_table_offset,
            u64::from(header.l1_size),
            "L1 table",
        )?;
        let reftable_entries =
            u64::from(header.refcount_table_clusters) * header.cluster_size() / 8;
        let reftable = read_table(
            &file,
            header.refcount_table_offset,
            reftable_entries,
            "refcount table",
        )?;
        let me = Qcow2File {
            file,
            header,
            file_len,
            l1,
            reftable,
        };
        for (i, e) in me.l1.iter().enumerate() {
            me.check_table_offset(*e & OFFSET_MASK, &format!("L1 entry {i}"))?;
        }
        for (i, e) in me.reftable.iter().enumerate() {
            me.check_table_offset(*e & !511, &format!("refcount table entry {i}"))?;
        }
        Ok(me)
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// A table pointer (0 = none) must be cluster aligned and its cluster within the file.
    pub fn check_table_offset(&self, off: u64, what: &str) -> Result<(), FormatError> {
        if off == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        if off % cs != 0 {
            return Err(FormatError::Corrupt {
                what: what.into(),
                why: format!("offset {off:#x} is not cluster aligned"),
            });
        }
        if off.checked_add(cs).is_none_or(|end| end > self.file_len) {
            return Err(FormatError::Corrupt {
                what: what.into(),
                why: format!(
                    "offset {off:#x} is past the end of the file ({} bytes)",
                    self.file_len
                ),
            });
        }
        if off < cs {
            return Err(FormatError::Corrupt {
                what: what.into(),
                why: "points into the header cluster".into(),
            });
        }
        Ok(())
    }

    /// Read the L2 table at `off` (already checked to lie in the file).
    pub fn read_l2(&self, off: u64) -> Result<Vec<u64>, FormatError> {
        self.check_table_offset(off, "L2 table")?;
        read_table(&self.file, off, self.header.l2_entries(), "L2 table")
    }

    /// Read a refcount block's raw bytes.
    pub fn read_refblock(&self, off: u64) -> Result<Vec<u8>, FormatError> {
        self.check_table_offset(off, "refcount block")?;
        let mut buf = vec![0u8; self.cluster_size() as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(FormatError::io(format!(
                "reading refcount block at {off:#x}"
            )))?;
        Ok(buf)
    }

    /// Entries per refcount block.
    pub fn refblock_entries(&self) -> u64 {
        self.cluster_size() * 8 / u64::from(self.header.refcount_bits())
    }

    /// Stored refcount of the host cluster with index `cluster`.
    pub fn refcount(&self, cluster: u64) -> Result<u64, FormatError> {
        let per = self.refblock_entries();
        let idx = cluster / per;
        let Some(&rb) = self.reftable.get(idx as usize) else {
            return Ok(0);
        };
        let rb = rb & !511;
        if rb == 0 {
            return Ok(0);
        }
        let block = self.read_refblock(rb)?;
        Ok(get_refcount(
            &block,
            cluster % per,
            self.header.refcount_order,
        ))
    }

    /// Decode the L2 entry for guest cluster index `gc` (reads one L2 table).
    pub fn l2_entry(&self, gc: u64) -> Result<L2Entry, FormatError> {
        let per = self.header.l2_entries();
        let l1_idx = (gc / per) as usize;
        let Some(&l1e) = self.l1.get(l1_idx) else {
            return Ok(L2Entry::Unallocated);
        };
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            return Ok(L2Entry::Unallocated);
        }
        let l2 = self.read_l2(l2_off)?;
        Ok(L2Entry::decode(
            l2[(gc % per) as usize],
            self.header.cluster_bits,
        ))
    }

    /// Parse the snapshot table.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, FormatError> {
        let n = self.header.nb_snapshots;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(n as usize);
        let mut at = self.header.snapshots_offset;
        let end_limit = std::cmp::min(self.file_len, at.saturating_add(MAX_SNAPSHOT_TABLE));
        let read = |at: u64, len: u64, what: &str| -> Result<Vec<u8>, FormatError> {
            if at.checked_add(len).is_none_or(|e| e > end_limit) {
                return Err(FormatError::Corrupt {
                    what: "snapshot table".into(),
                    why: format!("{what} runs past the end of the file or the table size limit"),
                });
            }
            let mut b = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut b, at)
                .map_err(FormatError::io("reading the snapshot table"))?;
            Ok(b)
        };
        for i in 0..n {
            let fixed = read(at, 40, "an entry")?;
            let l1_table_offset = u64::from_be_bytes(fixed[0..8].try_into().unwrap_or_default());
            let l1_size = u32::from_be_bytes(fixed[8..12].try_into().unwrap_or_default());
            let id_len = u64::from(u16::from_be_bytes([fixed[12], fixed[13]]));
            let name_len = u64::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            let date_sec = u32::from_be_bytes(fixed[16..20].try_into().unwrap_or_default());
            let date_nsec = u32::from_be_bytes(fixed[20..24].try_into().unwrap_or_default());
            let vm_clock_nsec = u64::from_be_bytes(fixed[24..32].try_into().unwrap_or_default());
            let vm_state_small = u32::from_be_bytes(fixed[32..36].try_into().unwrap_or_default());
            let extra_len = u32::from_be_bytes(fixed[36..40].try_into().unwrap_or_default());
            if extra_len > MAX_SNAPSHOT_EXTRA {
                return Err(FormatError::Corrupt {
                    what: format!("snapshot {i}"),
                    why: format!("extra data of {extra_len} bytes exceeds {MAX_SNAPSHOT_EXTRA}"),
                });
            }
            let var_len = u64::from(extra_len) + id_len + name_len;
            let var = read(at + 40, var_len, "an entry's strings")?;
            let (extra, strings) = var.split_at(extra_len as usize);
            let (id, name) = strings.split_at(id_len as usize);
            let field = |k: usize| -> Option<u64> {
                extra
                    .get(k * 8..k * 8 + 8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
            };
            let vm_state_size = field(0).unwrap_or(u64::from(vm_state_small));
            if u64::from(l1_size) * 8 > MAX_L1_BYTES {
                return Err(FormatError::Corrupt {
                    what: format!("snapshot {i}"),
                    why: format!("L1 table of {l1_size} entries exceeds the limit"),
                });
            }
            if l1_size > 0
                && (l1_table_offset % self.cluster_size() != 0
                    || l1_table_offset < self.cluster_size()
                    || l1_table_offset
                        .checked_add(u64::from(l1_size) * 8)
                        .is_none_or(|e| e > self.file_len))
            {
                return Err(FormatError::Corrupt {
                    what: format!("snapshot {i}"),
                    why: format!("L1 table offset {l1_table_offset:#x} is invalid"),
                });
            }
            out.push(Snapshot {
                l1_table_offset,
                l1_size,
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                date_sec,
                date_nsec,
                vm_clock_nsec,
                vm_state_size,
                disk_size: field(1),
                icount: field(2).filter(|&v| v != u64::MAX),
                extra_rest: extra.get(24..).map(<[u8]>::to_vec).unwrap_or_default(),
                on_disk_len: (40 + var_len).div_ceil(8) * 8,
            });
            at = (at + 40 + var_len).div_ceil(8) * 8;
        }
        Ok(out)
    }

    /// Read a snapshot's L1 table.
    pub fn read_snapshot_l1(&self, sn: &Snapshot) -> Result<Vec<u64>, FormatError> {
        let l1 = read_table(
            &self.file,
            sn.l1_table_offset,
            u64::from(sn.l1_size),
            "snapshot L1 table",
        )?;
        for (i, e) in l1.iter().enumerate() {
            self.check_table_offset(
                *e & OFFSET_MASK,
                &format!("snapshot {:?} L1 entry {i}", sn.name),
            )?;
        }
        Ok(l1)
    }
}

/// Read `entries` big-endian u64s at `off`.
pub(crate) fn read_table(
    file: &File,
    off: u64,
    entries: u64,
    what: &'static str,
) -> Result<Vec<u64>, FormatError> {
    if entries == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; (entries * 8) as usize];
    file.read_exact_at(&mut buf, off)
        .map_err(FormatError::io(format!("reading the {what} at {off:#x}")))?;
    Ok(be64_entries(&buf))
}

/// Refcount `index` from a refcount block of width `1 << order` bits.
pub fn get_refcount(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    match bits {
        64 => u64::from_be_bytes(
            block[index as usize * 8..index as usize * 8 + 8]
                .try_into()
                .unwrap_or_default(),
        ),
        32 => u64::from(u32::from_be_bytes(
            block[index as usize * 4..index as usize * 4 + 4]
                .try_into()
                .unwrap_or_default(),
        )),
        16 => u64::from(u16::from_be_bytes([
            block[index as usize * 2],
            block[index as usize * 2 + 1],
        ])),
        8 => u64::from(block[index as usize]),
        _ => {
            // Sub-byte widths: entries fill each byte from the least significant bit.
            let bit = index * bits;
            let byte = block[(bit / 8) as usize];
            (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
        }
    }
}

/// Store `value` (already checked to fit) at `index` in a refcount block.
pub fn set_refcount(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    let i = index as usize;
    match bits {
        64 => block[i * 8..i * 8 + 8].copy_from_slice(&value.to_be_bytes()),
        32 => block[i * 4..i * 4 + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        16 => block[i * 2..i * 2 + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        8 => block[i] = value as u8,
        _ => {
            let bit = index * bits;
            let shift = bit % 8;
            let mask = (((1u64 << bits) - 1) << shift) as u8;
            let byte = &mut block[(bit / 8) as usize];
            *byte = (*byte & !mask) | (((value << shift) as u8) & mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths_round_trip() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            set_refcount(&mut block, 3, order, max);
            set_refcount(&mut block, 4, order, 1);
            assert_eq!(get_refcount(&block, 3, order), max, "order {order}");
            assert_eq!(get_refcount(&block, 4, order), 1, "order {order}");
            assert_eq!(get_refcount(&block, 2, order), 0, "order {order}");
        }
    }

    #[test]
    fn compressed_entries_round_trip() {
        for bits in 9..=21u32 {
            let raw = L2Entry::encode_compressed(0x12345 * 512 + 17, 1000, bits);
            match L2Entry::decode(raw, bits) {
                L2Entry::Compressed { host, sectors } => {
                    assert_eq!(host, 0x12345 * 512 + 17);
                    assert_eq!(sectors, (17 + 1000 - 1) / 512 + 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
