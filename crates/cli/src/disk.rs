//! `berth disk ...`: argument structs and thin handlers over `berth_disk::ops`.

use crate::output::{dirs, print_json, progress_bar};
use crate::Status;
use anyhow::{bail, Context, Result};
use berth_disk::ops::{self, CompareOutcome, NewSize};
use berth_disk::qcow2::check::Repair;
use berth_disk::units::{human_size, parse_size};
use berth_disk::{BackingPolicy, Format};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Fmt {
    Qcow2,
    Raw,
}

impl From<Fmt> for Format {
    fn from(f: Fmt) -> Format {
        match f {
            Fmt::Qcow2 => Format::Qcow2,
            Fmt::Raw => Format::Raw,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Prealloc {
    Off,
    Metadata,
    Falloc,
    Full,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RepairArg {
    Leaks,
    All,
}

// Where backing files may come from, beyond the image's folder and berth's image store.
#[derive(Debug, Args, Clone, Default)]
pub struct PolicyArgs {
    /// Also allow backing files under DIR (repeatable). By default only the image's own folder
    /// and berth's image store are allowed.
    #[arg(long = "allow-backing-dir", value_name = "DIR")]
    allow: Vec<PathBuf>,
}

impl PolicyArgs {
    fn policy(&self) -> Result<BackingPolicy> {
        let store = dirs().ok().map(|d| d.images());
        Ok(BackingPolicy::new(store, self.allow.clone()))
    }
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum DiskCommand {
    /// Create a disk image: thin qcow2 (grows as data arrives) or sparse/preallocated raw.
    ///
    /// SIZE takes bytes or a K/M/G/T/P/E suffix (binary, as qemu-img). An overlay on a backing
    /// file takes its size from the backing file when SIZE is omitted; the backing format must
    /// be given and is recorded in the image (berth never probes it).
    Create {
        /// Image format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "qcow2")]
        format: Fmt,
        /// Backing file (qcow2 only), stored as given, resolved relative to the new image.
        #[arg(short = 'b', long)]
        backing: Option<String>,
        /// Format of the backing file.
        #[arg(short = 'F', long = "backing-format", value_enum)]
        backing_format: Option<Fmt>,
        /// Preallocation: off (thin/sparse), metadata (qcow2 tables), falloc, full (zeroes).
        #[arg(long, value_enum, default_value = "off")]
        preallocation: Prealloc,
        /// qcow2 cluster size, 512 to 2M.
        #[arg(long = "cluster-size", value_parser = size_arg)]
        cluster_size: Option<u64>,
        /// Overwrite PATH if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The new image.
        path: PathBuf,
        /// Virtual size (e.g. 10G).
        #[arg(value_parser = size_arg)]
        size: Option<u64>,
    },
    /// Show an image's format, sizes, backing file, snapshots and flags.
    ///
    /// The JSON uses the field names of `qemu-img info --output=json`.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also show every backing file below the image.
        #[arg(long = "backing-chain")]
        backing_chain: bool,
        /// Image format (detected from the file when omitted).
        #[arg(short = 'f', long = "format", value_enum)]
        format: Option<Fmt>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The image.
        path: PathBuf,
    },
    /// Check a qcow2 image's refcounts, L1/L2 tables and offsets.
    ///
    /// Exit status (as qemu-img check): 0 no problems; 2 corruption found; 3 leaked clusters
    /// only (harmless wasted space); 1 the check could not be completed; 125 the image could
    /// not be opened. `--repair leaks` drops leaked clusters,
    /// `--repair all` also fixes refcounts that are too low and COPIED flags.
    Check {
        /// Repair leaks, or all repairable errors.
        #[arg(short = 'r', long, value_enum)]
        repair: Option<RepairArg>,
        /// Print JSON (field names as `qemu-img check --output=json`).
        #[arg(long)]
        json: bool,
        /// The image.
        path: PathBuf,
    },
    /// Convert between raw and qcow2, flattening backing chains; zeroes stay unallocated.
    Convert {
        /// Source format (detected when omitted).
        #[arg(short = 'f', long = "format", value_enum)]
        format: Option<Fmt>,
        /// Destination format.
        #[arg(short = 'O', long = "output-format", value_enum)]
        output_format: Fmt,
        /// Write compressed qcow2 clusters.
        #[arg(short = 'c', long)]
        compress: bool,
        /// Destination cluster size (qcow2).
        #[arg(long = "cluster-size", value_parser = size_arg)]
        cluster_size: Option<u64>,
        /// Overwrite DST if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Source image.
        src: PathBuf,
        /// Destination image (appears only when complete).
        dst: PathBuf,
    },
    /// Change an image's virtual size: SIZE, +SIZE or -SIZE.
    ///
    /// Shrinking needs --shrink and is refused if any data would be lost.
    Resize {
        /// Allow shrinking.
        #[arg(long)]
        shrink: bool,
        /// Image format (detected when omitted).
        #[arg(short = 'f', long = "format", value_enum)]
        format: Option<Fmt>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The image.
        path: PathBuf,
        /// New size, or +SIZE / -SIZE relative to the current one.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Show which ranges hold data, read as zeroes, or come from which backing layer.
    Map {
        /// Print JSON (as `qemu-img map --output=json`).
        #[arg(long)]
        json: bool,
        /// Image format (detected when omitted).
        #[arg(short = 'f', long = "format", value_enum)]
        format: Option<Fmt>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The image.
        path: PathBuf,
    },
    /// Compare the guest-visible content of two images.
    ///
    /// Exit status: 0 identical, 1 different, 125 an image could not be read.
    Compare {
        /// Format of A.
        #[arg(short = 'f', value_enum)]
        format_a: Option<Fmt>,
        /// Format of B.
        #[arg(short = 'F', value_enum)]
        format_b: Option<Fmt>,
        /// Images of different sizes are different (otherwise the extra part must be zeroes).
        #[arg(short = 's', long)]
        strict: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// First image.
        a: PathBuf,
        /// Second image.
        b: PathBuf,
    },
    /// Internal qcow2 snapshots (interchangeable with `qemu-img snapshot`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Change an image's backing file, keeping its guest-visible content (unless --unsafe).
    Rebase {
        /// New backing file; omit to make the image standalone.
        #[arg(short = 'b', long)]
        backing: Option<String>,
        /// Format of the new backing file.
        #[arg(short = 'F', long = "backing-format", value_enum)]
        backing_format: Option<Fmt>,
        /// Only rewrite the header (the content will change if the backing files differ).
        #[arg(short = 'u', long = "unsafe")]
        unsafe_mode: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The image.
        path: PathBuf,
    },
    /// Merge an overlay into its backing file, then empty the overlay.
    Commit {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The overlay.
        path: PathBuf,
    },
    /// Write guest data into an image at OFFSET, from a file, stdin (-) or a byte pattern.
    Write {
        /// Read the data from FILE ("-" for stdin).
        #[arg(long, conflicts_with = "pattern")]
        from: Option<PathBuf>,
        /// Write LENGTH copies of this byte (0-255).
        #[arg(short = 'P', long, requires = "length", value_parser = byte_arg)]
        pattern: Option<u8>,
        /// Length for --pattern.
        #[arg(short = 'l', long, value_parser = size_arg)]
        length: Option<u64>,
        /// Image format (detected when omitted).
        #[arg(short = 'f', long = "format", value_enum)]
        format: Option<Fmt>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The image.
        path: PathBuf,
        /// Guest offset.
        #[arg(value_parser = size_arg)]
        offset: u64,
    },
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum SnapshotCommand {
    /// Create an internal snapshot of the image's current content.
    Create {
        /// The image.
        path: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// List internal snapshots.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The image.
        path: PathBuf,
    },
    /// Revert the image to a snapshot (by id or name).
    Apply {
        /// The image.
        path: PathBuf,
        /// Snapshot id or name.
        name: String,
    },
    /// Delete a snapshot (by id or name).
    Delete {
        /// The image.
        path: PathBuf,
        /// Snapshot id or name.
        name: String,
    },
}

fn byte_arg(s: &str) -> Result<u8, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse::<u8>(),
    };
    parsed.map_err(|_| format!("invalid byte {s:?}: expected 0-255 or 0x00-0xff"))
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn fmt_opt(f: Option<Fmt>) -> Option<Format> {
    f.map(Format::from)
}

pub fn run(cmd: DiskCommand) -> Result<Status> {
    match cmd {
        DiskCommand::Create {
            format,
            backing,
            backing_format,
            preallocation,
            cluster_size,
            force,
            policy,
            path,
            size,
        } => {
            let o = ops::CreateOptions {
                path: path.clone(),
                format: format.into(),
                size,
                backing,
                backing_format: fmt_opt(backing_format),
                preallocation: match preallocation {
                    Prealloc::Off => ops::Preallocation::Off,
                    Prealloc::Metadata => ops::Preallocation::Metadata,
                    Prealloc::Falloc => ops::Preallocation::Falloc,
                    Prealloc::Full => ops::Preallocation::Full,
                },
                cluster_size,
                force,
            };
            let size = ops::create(&o, &policy.policy()?)?;
            println!(
                "Formatted {} as {}, {} ({size} bytes)",
                path.display(),
                Format::from(format),
                human_size(size)
            );
            Ok(Status(0))
        }
        DiskCommand::Info {
            json,
            backing_chain,
            format,
            policy,
            path,
        } => {
            let infos = ops::info(&path, fmt_opt(format), backing_chain, &policy.policy()?)?;
            if json {
                if backing_chain {
                    print_json(&infos)?;
                } else {
                    print_json(&infos[0])?;
                }
            } else {
                for (i, info) in infos.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    print!("{info}");
                }
            }
            Ok(Status(0))
        }
        DiskCommand::Check { repair, json, path } => {
            let repair = match repair {
                None => Repair::None,
                Some(RepairArg::Leaks) => Repair::Leaks,
                Some(RepairArg::All) => Repair::All,
            };
            let report = ops::check(&path, repair)?;
            if json {
                print_json(&report)?;
            } else {
                for m in &report.messages {
                    eprintln!("{m}");
                }
                if report.leaks_fixed > 0 || report.corruptions_fixed > 0 {
                    println!(
                        "Repaired {} leaked clusters and {} corruptions.",
                        report.leaks_fixed, report.corruptions_fixed
                    );
                }
                if report.corruptions > 0 {
                    println!("{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.", report.corruptions);
                }
                if report.leaks > 0 {
                    println!("{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.", report.leaks);
                }
                if report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0 {
                    println!("No errors were found on the image.");
                }
                println!(
                    "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                    report.allocated_clusters,
                    report.total_clusters,
                    pct(report.allocated_clusters, report.total_clusters),
                    pct(report.fragmented_clusters, report.allocated_clusters),
                    pct(report.compressed_clusters, report.allocated_clusters)
                );
                println!("Image end offset: {}", report.image_end_offset);
            }
            Ok(Status(report.exit_code() as u8))
        }
        DiskCommand::Convert {
            format,
            output_format,
            compress,
            cluster_size,
            force,
            policy,
            src,
            dst,
        } => {
            let o = ops::ConvertOptions {
                src,
                src_format: fmt_opt(format),
                dst,
                dst_format: output_format.into(),
                compress,
                cluster_size,
                force,
            };
            let pb = progress_bar("converting");
            let stats = ops::convert(&o, &policy.policy()?, &mut |done, total| {
                pb.set_length(total);
                pb.set_position(done);
            })?;
            pb.finish_and_clear();
            tracing::info!(?stats, "converted");
            Ok(Status(0))
        }
        DiskCommand::Resize {
            shrink,
            format,
            policy,
            path,
            size,
        } => {
            let new = if let Some(rest) = size.strip_prefix('+') {
                NewSize::Grow(parse_size(rest).with_context(|| format!("size {size:?}"))?)
            } else if let Some(rest) = size.strip_prefix('-') {
                NewSize::Shrink(parse_size(rest).with_context(|| format!("size {size:?}"))?)
            } else {
                NewSize::Absolute(parse_size(&size).with_context(|| format!("size {size:?}"))?)
            };
            let n = ops::resize(&path, fmt_opt(format), new, shrink, &policy.policy()?)?;
            println!("Image resized to {} ({n} bytes).", human_size(n));
            Ok(Status(0))
        }
        DiskCommand::Map {
            json,
            format,
            policy,
            path,
        } => {
            let entries = ops::map(&path, fmt_opt(format), &policy.policy()?)?;
            if json {
                print_json(&entries)?;
            } else {
                println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
                for e in entries.iter().filter(|e| e.data) {
                    let mapped = e
                        .offset
                        .map(|o| format!("{o:#x}"))
                        .unwrap_or_else(|| "compressed".into());
                    println!(
                        "{:<16}{:<16}{:<16}{}",
                        format!("{:#x}", e.start),
                        format!("{:#x}", e.length),
                        mapped,
                        e.filename.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(Status(0))
        }
        DiskCommand::Compare {
            format_a,
            format_b,
            strict,
            policy,
            a,
            b,
        } => {
            let pb = progress_bar("comparing");
            let outcome = ops::compare(
                &a,
                fmt_opt(format_a),
                &b,
                fmt_opt(format_b),
                strict,
                &policy.policy()?,
                &mut |d, t| {
                    pb.set_length(t);
                    pb.set_position(d);
                },
            )?;
            pb.finish_and_clear();
            match outcome {
                CompareOutcome::Identical { size_mismatch } => {
                    if size_mismatch {
                        println!("Warning: Image size mismatch!");
                    }
                    println!("Images are identical.");
                    Ok(Status(0))
                }
                CompareOutcome::Mismatch {
                    offset,
                    size_mismatch,
                } => {
                    if size_mismatch {
                        println!("Warning: Image size mismatch!");
                    }
                    println!("Content mismatch at offset {offset}!");
                    Ok(Status(1))
                }
            }
        }
        DiskCommand::Snapshot(cmd) => snapshot(cmd),
        DiskCommand::Rebase {
            backing,
            backing_format,
            unsafe_mode,
            policy,
            path,
        } => {
            let o = ops::RebaseOptions {
                backing,
                backing_format: fmt_opt(backing_format),
                unsafe_mode,
            };
            let pb = progress_bar("rebasing");
            ops::rebase(&path, &o, &policy.policy()?, &mut |d, t| {
                pb.set_length(t);
                pb.set_position(d);
            })?;
            pb.finish_and_clear();
            Ok(Status(0))
        }
        DiskCommand::Commit { policy, path } => {
            let pb = progress_bar("committing");
            ops::commit(&path, &policy.policy()?, &mut |d, t| {
                pb.set_length(t);
                pb.set_position(d);
            })?;
            pb.finish_and_clear();
            println!("Image committed.");
            Ok(Status(0))
        }
        DiskCommand::Write {
            from,
            pattern,
            length,
            format,
            policy,
            path,
            offset,
        } => {
            let mut input: Box<dyn std::io::Read> = match (&from, pattern) {
                (Some(f), _) if f.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
                (Some(f), _) => Box::new(
                    std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
                ),
                (None, Some(p)) => {
                    Box::new(std::io::Read::take(std::io::repeat(p), length.unwrap_or(0)))
                }
                (None, None) => {
                    bail!("give the data with --from FILE or --pattern BYTE --length N")
                }
            };
            let n = ops::write(
                &path,
                fmt_opt(format),
                offset,
                &mut input,
                &policy.policy()?,
            )?;
            println!("wrote {n} bytes at offset {offset}");
            Ok(Status(0))
        }
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn snapshot(cmd: SnapshotCommand) -> Result<Status> {
    match cmd {
        SnapshotCommand::Create { path, name } => {
            let sn = ops::snapshot_create(&path, &name)?;
            println!(
                "Created snapshot {} (id {}) of {}",
                sn.name,
                sn.id,
                path.display()
            );
        }
        SnapshotCommand::List { json, path } => {
            let snaps = ops::snapshot_list(&path)?;
            let infos: Vec<ops::SnapshotInfo> = snaps.iter().map(ops::SnapshotInfo::from).collect();
            if json {
                print_json(&infos)?;
            } else {
                println!("Snapshot list:");
                println!("{:<10}{:<20}{:>11}", "ID", "TAG", "VM SIZE");
                for s in &infos {
                    println!(
                        "{:<10}{:<20}{:>11}",
                        s.id,
                        s.name,
                        human_size(s.vm_state_size)
                    );
                }
            }
        }
        SnapshotCommand::Apply { path, name } => {
            ops::snapshot_apply(&path, &name)?;
            println!("Reverted {} to snapshot {name}", path.display());
        }
        SnapshotCommand::Delete { path, name } => {
            let sn = ops::snapshot_delete(&path, &name)?;
            println!(
                "Deleted snapshot {} (id {}) of {}",
                sn.name,
                sn.id,
                path.display()
            );
        }
    }
    Ok(Status(0))
}
