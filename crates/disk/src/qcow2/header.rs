//! The qcow2 header and its extensions: parsing with strict limits, and serialising back.
//!
//! This is the first thing berth reads from an untrusted image, so every field is checked against
//! the file's real size and against the limits QEMU itself enforces before any table is loaded.
//! It does not read tables (see [`super::meta`]).

use super::FormatError;

/// `QFI\xfb`
pub const MAGIC: u32 = 0x5146_49fb;
/// Largest L1 table QEMU accepts, in bytes (`QCOW_MAX_L1_SIZE`).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts, in bytes (`QCOW_MAX_REFTABLE_SIZE`).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU accepts (`QCOW_MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Smallest and largest cluster sizes (512 B to 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Incompatible feature bit: the image was not closed cleanly (lazy refcounts).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit: the image is marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit: the compression type field is meaningful.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature bit: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature bit: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Header extension type: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension type: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension type: persistent dirty bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension type: full disk encryption header.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension type: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// A header extension kept as raw bytes (berth rewrites only the ones it understands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Extension type.
    pub kind: u32,
    /// Payload, without padding.
    pub data: Vec<u8>,
}

/// Location of the persistent bitmap directory (bitmaps extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Number of bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Directory size in bytes.
    pub directory_size: u64,
    /// Directory offset in the file.
    pub directory_offset: u64,
}

/// A parsed qcow2 header (version 2 or 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 if none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// 0 = none, 1 = AES, 2 = LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Size of the refcount table in clusters.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (0..=6).
    pub refcount_order: u32,
    /// Length of the fixed header (72 for v2, >= 104 for v3).
    pub header_length: u32,
    /// 0 = zlib, 1 = zstd.
    pub compression_type: u8,
    /// The backing file name, as stored.
    pub backing_file: Option<String>,
    /// The backing format, from its extension.
    pub backing_format: Option<String>,
    /// The bitmaps extension, if present.
    pub bitmaps: Option<BitmapsExt>,
    /// Names of features from the feature table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// Every extension in file order, as raw bytes.
    pub extensions: Vec<Extension>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1u32 << self.refcount_order
    }

    /// Entries per L2 table (and per L1-covered range).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// L1 entries needed to map `size` bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        let per_l2 = self.l2_entries() * self.cluster_size();
        size.div_ceil(per_l2)
    }

    /// The image was left dirty (lazy refcounts in use and not closed cleanly).
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// The image is marked corrupt.
    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// Lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Parse and validate a header from the first cluster of a file of `file_len` bytes.
    ///
    /// `buf` must hold at least the first 4 KiB of the file (or all of it if smaller); the
    /// header, its extensions and the backing file name must lie in the first cluster.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header, FormatError> {
        if buf.len() < 72 {
            return Err(FormatError::Truncated {
                what: "qcow2 header",
                need: 72,
                have: buf.len() as u64,
            });
        }
        if be32(buf, 0) != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(FormatError::Unsupported(format!(
                "qcow2 version {version} (berth reads versions 2 and 3)"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(FormatError::Invalid {
                field: "cluster_bits",
                value: cluster_bits as u64,
                why: "must be between 9 (512 B) and 21 (2 MiB)".into(),
            });
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            bitmaps: None,
            feature_names: Vec::new(),
            extensions: Vec::new(),
        };
        if version == 3 {
            if buf.len() < 104 {
                return Err(FormatError::Truncated {
                    what: "qcow2 v3 header",
                    need: 104,
                    have: buf.len() as u64,
                });
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 || h.header_length % 8 != 0 && h.header_length != 104 {
                return Err(FormatError::Invalid {
                    field: "header_length",
                    value: h.header_length as u64,
                    why: "must be at least 104".into(),
                });
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(FormatError::Invalid {
                    field: "header_length",
                    value: h.header_length as u64,
                    why: "header does not fit in the first cluster".into(),
                });
            }
            if h.header_length > 104 {
                if buf.len() < 105 {
                    return Err(FormatError::Truncated {
                        what: "qcow2 v3 header",
                        need: 105,
                        have: buf.len() as u64,
                    });
                }
                h.compression_type = buf[104];
            }
        }
        if h.refcount_order > 6 {
            return Err(FormatError::Invalid {
                field: "refcount_order",
                value: h.refcount_order as u64,
                why: "refcount width must be 1 to 64 bits (order 0..6)".into(),
            });
        }
        if h.crypt_method != 0 {
            return Err(FormatError::Unsupported(format!(
                "encrypted images (crypt_method {})",
                h.crypt_method
            )));
        }
        let known_incompat = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        // Extensions come before the decision on unknown features, so that the error can name them.
        if version == 3 || h.header_length == 72 {
            h.parse_extensions(buf, cluster_size)?;
        }
        let unknown = h.incompatible_features & !known_incompat;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|bit| unknown & (1u64 << bit) != 0)
                .map(|bit| {
                    h.feature_names
                        .iter()
                        .find(|(t, b, _)| *t == 0 && u32::from(*b) == bit)
                        .map(|(_, _, n)| n.clone())
                        .unwrap_or_else(|| format!("unknown bit {bit}"))
                })
                .collect();
            return Err(FormatError::Unsupported(format!(
                "incompatible features: {}",
                names.join(", ")
            )));
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(FormatError::Unsupported(
                "external data files (the image keeps its data in another file)".into(),
            ));
        }
        if h.incompatible_features & INCOMPAT_EXTL2 != 0 {
            return Err(FormatError::Unsupported(
                "extended L2 entries (subclusters)".into(),
            ));
        }
        if h.compression_type != 0 {
            return Err(FormatError::Unsupported(format!(
                "compression type {} (berth reads zlib-compressed clusters only)",
                h.compression_type
            )));
        }
        h.validate_layout(file_len)?;
        if h.backing_file_offset != 0 {
            if h.backing_file_size == 0 || h.backing_file_size > MAX_BACKING_NAME {
                return Err(FormatError::Invalid {
                    field: "backing_file_size",
                    value: h.backing_file_size as u64,
                    why: format!("must be 1 to {MAX_BACKING_NAME} bytes"),
                });
            }
            let end = h
                .backing_file_offset
                .saturating_add(u64::from(h.backing_file_size));
            if end > cluster_size || end > buf.len() as u64 {
                return Err(FormatError::Invalid {
                    field: "backing_file_offset",
                    value: h.backing_file_offset,
                    why: "backing file name must lie in the first cluster".into(),
                });
            }
            let raw = &buf[h.backing_file_offset as usize..end as usize];
            let name = std::str::from_utf8(raw).map_err(|_| FormatError::Invalid {
                field: "backing file name",
                value: h.backing_file_offset,
                why: "not valid UTF-8".into(),
            })?;
            if name.contains('\0') {
                return Err(FormatError::Invalid {
                    field: "backing file name",
                    value: h.backing_file_offset,
                    why: "contains a NUL byte".into(),
                });
            }
            h.backing_file = Some(name.to_string());
        } else if h.backing_format.is_some() {
            // A format without a file is harmless; QEMU ignores it too.
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8], cluster_size: u64) -> Result<(), FormatError> {
        let limit = std::cmp::min(buf.len() as u64, cluster_size);
        let limit = if self.backing_file_offset != 0 && self.backing_file_offset < limit {
            self.backing_file_offset
        } else {
            limit
        };
        let mut at = u64::from(self.header_length);
        loop {
            if at + 8 > limit {
                // A v2 image may simply have no extension area.
                if self.version == 2 {
                    return Ok(());
                }
                return Err(FormatError::Invalid {
                    field: "header extensions",
                    value: at,
                    why: "extension area runs past the first cluster without an end marker".into(),
                });
            }
            let kind = be32(buf, at as usize);
            let len = u64::from(be32(buf, at as usize + 4));
            if kind == 0 {
                return Ok(());
            }
            let data_start = at + 8;
            let data_end = data_start + len;
            if data_end > limit {
                return Err(FormatError::Invalid {
                    field: "header extension length",
                    value: len,
                    why: format!("extension {kind:#x} at offset {at} runs past the first cluster"),
                });
            }
            let data = &buf[data_start as usize..data_end as usize];
            match kind {
                EXT_BACKING_FORMAT => {
                    let fmt = std::str::from_utf8(data).map_err(|_| FormatError::Invalid {
                        field: "backing format extension",
                        value: at,
                        why: "not valid UTF-8".into(),
                    })?;
                    self.backing_format = Some(fmt.trim_end_matches('\0').to_string());
                }
                EXT_FEATURE_TABLE => {
                    for entry in data.chunks_exact(48) {
                        let name_end = entry[2..].iter().position(|&b| b == 0).unwrap_or(46);
                        let name = String::from_utf8_lossy(&entry[2..2 + name_end]).into_owned();
                        self.feature_names.push((entry[0], entry[1], name));
                    }
                }
                EXT_BITMAPS => {
                    if data.len() < 24 {
                        return Err(FormatError::Invalid {
                            field: "bitmaps extension length",
                            value: len,
                            why: "must be 24 bytes".into(),
                        });
                    }
                    self.bitmaps = Some(BitmapsExt {
                        nb_bitmaps: be32(data, 0),
                        directory_size: be64(data, 8),
                        directory_offset: be64(data, 16),
                    });
                }
                EXT_DATA_FILE if self.incompatible_features & INCOMPAT_DATA_FILE != 0 => {
                    return Err(FormatError::Unsupported(
                        "external data files (the image keeps its data in another file)".into(),
                    ));
                }
                _ => {}
            }
            self.extensions.push(Extension {
                kind,
                data: data.to_vec(),
            });
            at = data_end.div_ceil(8) * 8;
        }
    }

    /// Check table offsets and sizes against the file and QEMU's limits.
    fn validate_layout(&self, file_len: u64) -> Result<(), FormatError> {
        let cs = self.cluster_size();
        let aligned = |field: &'static str, value: u64| -> Result<(), FormatError> {
            if value % cs != 0 {
                return Err(FormatError::Invalid {
                    field,
                    value,
                    why: format!("not aligned to the cluster size ({cs})"),
                });
            }
            Ok(())
        };
        let within = |field: &'static str, offset: u64, len: u64| -> Result<(), FormatError> {
            match offset.checked_add(len) {
                Some(end) if end <= file_len => Ok(()),
                _ => Err(FormatError::Invalid {
                    field,
                    value: offset,
                    why: format!(
                        "table of {len} bytes runs past the end of the file ({file_len} bytes)"
                    ),
                }),
            }
        };
        // Virtual size: QEMU limits it by what a maximal L1 table can map, and to 2^63-512.
        let max_l1 = MAX_L1_BYTES / 8;
        let max_size = std::cmp::min(
            (max_l1 as u128) * (self.l2_entries() as u128) * (cs as u128),
            (i64::MAX as u128) - 511,
        );
        if (self.size as u128) > max_size {
            return Err(FormatError::Invalid {
                field: "size",
                value: self.size,
                why: format!("virtual size exceeds the qcow2 limit for {cs}-byte clusters"),
            });
        }
        if u64::from(self.l1_size) > max_l1 {
            return Err(FormatError::Invalid {
                field: "l1_size",
                value: u64::from(self.l1_size),
                why: format!("L1 table larger than {MAX_L1_BYTES} bytes"),
            });
        }
        if u64::from(self.l1_size) < self.l1_entries_for(self.size) {
            return Err(FormatError::Invalid {
                field: "l1_size",
                value: u64::from(self.l1_size),
                why: "L1 table too small for the virtual size".into(),
            });
        }
        if self.l1_size > 0 {
            aligned("l1_table_offset", self.l1_table_offset)?;
            if self.l1_table_offset == 0 {
                return Err(FormatError::Invalid {
                    field: "l1_table_offset",
                    value: 0,
                    why: "L1 table overlaps the header".into(),
                });
            }
            within(
                "l1_table_offset",
                self.l1_table_offset,
                u64::from(self.l1_size) * 8,
            )?;
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 {
            return Err(FormatError::Invalid {
                field: "refcount_table_clusters",
                value: 0,
                why: "an image needs a refcount table".into(),
            });
        }
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(FormatError::Invalid {
                field: "refcount_table_clusters",
                value: u64::from(self.refcount_table_clusters),
                why: format!("refcount table larger than {MAX_REFTABLE_BYTES} bytes"),
            });
        }
        aligned("refcount_table_offset", self.refcount_table_offset)?;
        if self.refcount_table_offset == 0 {
            return Err(FormatError::Invalid {
                field: "refcount_table_offset",
                value: 0,
                why: "refcount table overlaps the header".into(),
            });
        }
        within(
            "refcount_table_offset",
            self.refcount_table_offset,
            reftable_bytes,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(FormatError::Invalid {
                field: "nb_snapshots",
                value: u64::from(self.nb_snapshots),
                why: format!("more than {MAX_SNAPSHOTS} snapshots"),
            });
        }
        if self.nb_snapshots > 0 {
            aligned("snapshots_offset", self.snapshots_offset)?;
            // Each entry is at least 40 bytes.
            within(
                "snapshots_offset",
                self.snapshots_offset,
                u64::from(self.nb_snapshots) * 40,
            )?;
        }
        if let Some(b) = self.bitmaps {
            if b.nb_bitmaps > 65535 {
                return Err(FormatError::Invalid {
                    field: "bitmaps extension nb_bitmaps",
                    value: u64::from(b.nb_bitmaps),
                    why: "more than 65535 bitmaps".into(),
                });
            }
            if b.directory_size > 64 << 20 {
                return Err(FormatError::Invalid {
                    field: "bitmaps extension directory_size",
                    value: b.directory_size,
                    why: "bitmap directory larger than 64 MiB".into(),
                });
            }
            if b.nb_bitmaps > 0 {
                aligned("bitmap directory offset", b.directory_offset)?;
                within(
                    "bitmap directory offset",
                    b.directory_offset,
                    b.directory_size,
                )?;
            }
        }
        Ok(())
    }

    /// Serialise the header, its extensions (with `backing_format` and the end marker) and the
    /// backing file name into one buffer that must fit the first cluster.
    pub fn serialize(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = vec![0u8; self.header_length as usize];
        let put32 =
            |o: &mut Vec<u8>, at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |o: &mut Vec<u8>, at: usize, v: u64| o[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut out, 0, MAGIC);
        put32(&mut out, 4, self.version);
        put32(&mut out, 20, self.cluster_bits);
        put64(&mut out, 24, self.size);
        put32(&mut out, 32, self.crypt_method);
        put32(&mut out, 36, self.l1_size);
        put64(&mut out, 40, self.l1_table_offset);
        put64(&mut out, 48, self.refcount_table_offset);
        put32(&mut out, 56, self.refcount_table_clusters);
        put32(&mut out, 60, self.nb_snapshots);
        put64(&mut out, 64, self.snapshots_offset);
        if self.version == 3 {
            put64(&mut out, 72, self.incompatible_features);
            put64(&mut out, 80, self.compatible_features);
            put64(&mut out, 88, self.autoclear_features);
            put32(&mut out, 96, self.refcount_order);
            put32(&mut out, 100, self.header_length);
            if self.header_length > 104 {
                out[104] = self.compression_type;
            }
        }
        let push_ext = |out: &mut Vec<u8>, kind: u32, data: &[u8]| {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            while out.len() % 8 != 0 {
                out.push(0);
            }
        };
        if let (Some(fmt), Some(_)) = (&self.backing_format, &self.backing_file) {
            push_ext(&mut out, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        for ext in &self.extensions {
            if ext.kind != EXT_BACKING_FORMAT {
                push_ext(&mut out, ext.kind, &ext.data);
            }
        }
        push_ext(&mut out, 0, &[]);
        let (bf_off, bf_len) = match &self.backing_file {
            Some(name) => {
                if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
                    return Err(FormatError::Invalid {
                        field: "backing file name",
                        value: name.len() as u64,
                        why: format!("must be 1 to {MAX_BACKING_NAME} bytes"),
                    });
                }
                let off = out.len() as u64;
                out.extend_from_slice(name.as_bytes());
                (off, name.len() as u32)
            }
            None => (0, 0),
        };
        put64(&mut out, 8, bf_off);
        put32(&mut out, 16, bf_len);
        if out.len() as u64 > self.cluster_size() {
            return Err(FormatError::Invalid {
                field: "header",
                value: out.len() as u64,
                why: "header, extensions and backing name do not fit in the first cluster".into(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 10 << 30,
            crypt_method: 0,
            l1_size: 20,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 0,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            bitmaps: None,
            feature_names: vec![],
            extensions: vec![],
        }
    }

    #[test]
    fn serialise_then_parse_round_trips() {
        let h = sample();
        let mut bytes = h.serialize().unwrap();
        bytes.resize(4 << 16, 0);
        let back = Header::parse(&bytes, 4 << 16).unwrap();
        assert_eq!(back.size, h.size);
        assert_eq!(back.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(back.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(back.l1_size, 20);
    }

    #[test]
    fn refuses_absurd_l1_size() {
        let mut h = sample();
        h.l1_size = u32::MAX;
        let mut bytes = h.serialize().unwrap();
        bytes.resize(4 << 16, 0);
        let err = Header::parse(&bytes, 4 << 16).unwrap_err();
        assert!(err.to_string().contains("l1_size"), "{err}");
    }

    #[test]
    fn refuses_tables_past_end_of_file() {
        let mut h = sample();
        h.refcount_table_offset = 1 << 40;
        let mut bytes = h.serialize().unwrap();
        bytes.resize(4 << 16, 0);
        let err = Header::parse(&bytes, 4 << 16).unwrap_err();
        assert!(err.to_string().contains("refcount_table_offset"), "{err}");
    }

    #[test]
    fn refuses_bad_magic_and_short_input() {
        assert!(matches!(
            Header::parse(&[0u8; 10], 10),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            Header::parse(&[0u8; 200], 200),
            Err(FormatError::BadMagic)
        ));
    }
}
