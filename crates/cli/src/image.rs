//! `berth image ...`: base images in berth's store.

use crate::client::{self, Disk};
use crate::output::print_json;
use crate::Status;
use anyhow::{Context, Result};
use berth_api::{Event, Image, ImageBuild, ImageSource};
use berth_disk::units::{human_size, parse_size};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ImageCommand {
    /// Build a Debian 12 cloud guest image from Debian's mirror with debootstrap.
    ///
    /// The root file system is made without mounting (mkfs.ext4 -d) and stored as qcow2, with
    /// the cloud and generic kernels beside it for direct kernel boot. The image has no
    /// machine-id, SSH host keys or cloud-init state. A second build of the same recipe is
    /// instant; an interrupted build leaves nothing behind.
    Build {
        /// What to build (debian-12).
        recipe: String,
        /// Where to build it: `REMOTE:` (a daemon's host), or `REMOTE:NAME` (default: here).
        target: Option<String>,
        /// Image name (default: the recipe name).
        #[arg(long)]
        name: Option<String>,
        /// Root file system size.
        #[arg(long, default_value = "2G", value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
        size: u64,
        /// Debian mirror (default: $BERTH_DEBIAN_MIRROR or http://deb.debian.org/debian).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Import a qcow2 or raw disk holding an ext4 root file system (whole disk or partitioned).
    ///
    /// The kernel and initrd are the given files, or the newest /boot/vmlinuz-* and its
    /// initrd.img-* read out of the image without mounting it. The disk is stored as qcow2.
    /// To a remote (`--name REMOTE:NAME`) the disk and kernel are sent to its daemon (a disk
    /// on backing files is sent as one).
    Import {
        /// The disk image.
        file: std::path::PathBuf,
        /// Image name, `REMOTE:NAME` for a daemon's host.
        #[arg(long)]
        name: String,
        /// Kernel for direct boot.
        #[arg(long, requires = "initrd")]
        kernel: Option<std::path::PathBuf>,
        /// Its initrd.
        #[arg(long, requires = "kernel")]
        initrd: Option<std::path::PathBuf>,
        /// Also allow backing files of FILE under DIR.
        #[arg(long = "allow-backing-dir", value_name = "DIR")]
        allow: Vec<std::path::PathBuf>,
    },
    /// Copy an image to another host (or under another name), byte for byte.
    ///
    /// The image keeps its fingerprint (its disk's SHA-256): when the target already holds an
    /// image with that fingerprint nothing is sent. The target checks what it receives (the
    /// metadata, the disk's fingerprint and size, no backing file) and installs it whole or
    /// not at all.
    Copy {
        /// The image: `NAME` (on the default remote) or `REMOTE:NAME`.
        source: String,
        /// Where to: `REMOTE:` (same name) or `REMOTE:NAME`.
        target: String,
        /// Print the image on the target as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List images.
    List {
        /// `REMOTE:` (default: the default remote).
        remote: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (refused while instances are made from it).
    Rm {
        /// Image name, `REMOTE:NAME` for a daemon's host.
        name: String,
    },
}

/// A spinner on stderr (hidden when it is not a terminal) that shows each progress event.
fn spinner() -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix:<12} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn show(pb: &ProgressBar, ev: &Event) {
    match ev.message.split_once(": ") {
        Some((step, line)) if !step.contains(' ') => {
            pb.set_prefix(step.to_string());
            pb.set_message(line.to_string());
        }
        _ => pb.set_message(ev.message.clone()),
    }
}

/// A disk's own copy without backing files, when it has them (in a scratch folder that goes
/// with the answer).
pub(crate) struct Standalone {
    scratch: PathBuf,
    file: PathBuf,
}

impl Standalone {
    pub(crate) fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `file` as one image: none when it has no backing file, else a standalone qcow2 copy.
pub(crate) fn standalone(
    file: &Path,
    allow: &[PathBuf],
) -> Result<Option<Standalone>, berth_api::Error> {
    let policy = berth_disk::BackingPolicy::new(None, allow.to_vec());
    let bad = |e: berth_disk::Error| {
        berth_api::Error::invalid("file", format!("{}: {e}", file.display()))
    };
    let chain = berth_disk::ops::info(file, None, true, &policy).map_err(bad)?;
    if chain.len() < 2 {
        return Ok(None);
    }
    let scratch = std::env::temp_dir().join(format!("berth-upload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| berth_api::Error::internal(format!("making {}: {e}", scratch.display())))?;
    let out = Standalone {
        file: scratch.join("disk.qcow2"),
        scratch,
    };
    berth_disk::ops::convert(
        &berth_disk::ops::ConvertOptions::new(file, out.path(), berth_disk::Format::Qcow2),
        &policy,
        &mut |_, _| {},
    )
    .map_err(bad)?;
    Ok(Some(out))
}

/// `REMOTE:NAME`, `REMOTE:` or `NAME` as an image's target: its client and name, if any.
fn target(raw: &str) -> Result<(Box<dyn client::Client>, Option<String>)> {
    let (c, name) = client::target(raw)?;
    Ok((c, Some(name).filter(|n| !n.is_empty())))
}

fn describe(i: &Image) -> String {
    format!("{} {}, {}", i.os, i.release, human_size(i.size))
}

pub fn run(cmd: ImageCommand) -> Result<Status> {
    match cmd {
        ImageCommand::Build {
            recipe,
            target: at,
            name,
            size,
            mirror,
        } => {
            // A build is minutes of work: it finishes whether or not anyone still reads.
            berth_container::direct::ignore_sigpipe();
            let (c, named) = match &at {
                Some(t) => target(t)?,
                None => (client::local()?, None),
            };
            let r = ImageBuild {
                recipe,
                name: name.or(named),
                size: Some(size),
                mirror,
            };
            let pb = spinner();
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let clock = std::time::Instant::now();
            let image = c.image_build(&r, &mut |ev| show(&pb, &ev))?;
            pb.finish_and_clear();
            match &image.source {
                ImageSource::Built { recipe } if image.created_at < started => {
                    crate::output::tell!("Image {} is up to date (recipe {recipe}).", image.name)
                }
                _ => crate::output::tell!(
                    "Built image {} ({}) in {:.0} s.",
                    image.name,
                    describe(&image),
                    clock.elapsed().as_secs_f64()
                ),
            }
            Ok(Status(0))
        }
        ImageCommand::Import {
            file,
            name,
            kernel,
            initrd,
            allow,
        } => {
            let (c, named) = target(&name)?;
            let name = named.context("no image name given (--name NAME or REMOTE:NAME)")?;
            let disk = Disk {
                file: &file,
                boot: kernel.as_deref().zip(initrd.as_deref()),
                allow: &allow,
            };
            let pb = spinner();
            pb.set_message(format!("importing {}", file.display()));
            let image = c.image_import(&name, &disk, &mut |ev| show(&pb, &ev))?;
            pb.finish_and_clear();
            println!(
                "Imported {} as image {} ({}, kernel {}).",
                file.display(),
                image.name,
                describe(&image),
                image.kernel.as_deref().unwrap_or("?")
            );
            Ok(Status(0))
        }
        ImageCommand::Copy {
            source,
            target: to,
            json,
        } => {
            // A broken connection to either host is an error to report, not the end of berth.
            berth_container::direct::ignore_sigpipe();
            copy(&source, &to, json)
        }
        ImageCommand::List { remote, json } => {
            let images = client::remote(remote.as_deref())?.images()?;
            if json {
                print_json(&images)?;
            } else {
                println!(
                    "{:<20} {:<8} {:<8} {:<10} {:<10} {:<17} USED BY",
                    "NAME", "OS", "RELEASE", "ARCH", "SIZE", "FINGERPRINT"
                );
                for m in &images {
                    println!(
                        "{:<20} {:<8} {:<8} {:<10} {:<10} {:<17} {}",
                        m.name,
                        m.os,
                        m.release,
                        m.arch,
                        human_size(m.size),
                        short(&m.fingerprint),
                        m.used_by.join(",")
                    );
                }
            }
            Ok(Status(0))
        }
        ImageCommand::Rm { name } => {
            let (c, named) = target(&name)?;
            let name = named.context("no image name given")?;
            c.image_delete(&name)?;
            println!("Removed image {name}.");
            Ok(Status(0))
        }
    }
}

/// Counts what passes through it onto a progress bar.
pub(crate) struct Counted {
    pub(crate) inner: Box<dyn std::io::Read + Send>,
    pub(crate) pb: ProgressBar,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

pub(crate) fn short(fingerprint: &str) -> &str {
    &fingerprint[..16.min(fingerprint.len())]
}

/// What sending an image to a host came to.
pub(crate) enum Sent {
    /// The host had it already, under this name.
    Already(Image),
    /// Sent, in so many seconds.
    Copied(Image, f64),
}

/// The host part of `REMOTE:[NAME]`, as `REMOTE:` (`local:` when there is none).
pub(crate) fn host_of(to: &str) -> String {
    to.split_once(':')
        .map_or_else(|| "local:".to_string(), |(r, _)| format!("{r}:"))
}

/// Send image `from` of `src` to `dst` (called `host`) as `name`, unless `dst` holds it
/// (the same fingerprint) under any name; a name `dst` uses for another image is refused before
/// anything is sent.
pub(crate) fn send(
    src: &dyn client::Client,
    from: &str,
    dst: &dyn client::Client,
    name: &str,
    host: &str,
) -> Result<Sent> {
    let image = src.image(from)?;
    let there = dst.images()?;
    if let Some(same) = there.iter().find(|i| i.fingerprint == image.fingerprint) {
        return Ok(Sent::Already(same.clone()));
    }
    if let Some(other) = there.iter().find(|i| i.name == name) {
        return Err(berth_api::Error::conflict(format!(
            "{host} already has an image named {name:?}, another one (fingerprint {}, not {}): \
             copy it under another name ({host}NAME)",
            short(&other.fingerprint),
            short(&image.fingerprint),
        ))
        .into());
    }
    let pb = crate::output::progress_bar(&format!("copying image {from}"));
    pb.set_length(image.stored_bytes);
    let clock = std::time::Instant::now();
    let input = Counted {
        inner: src.image_export(from)?,
        pb: pb.clone(),
    };
    let copied = dst.image_receive(name, Box::new(input), &mut |ev| {
        pb.set_message(ev.message.clone())
    })?;
    pb.finish_and_clear();
    Ok(Sent::Copied(copied, clock.elapsed().as_secs_f64()))
}

/// `berth image copy SOURCE TARGET`.
fn copy(source: &str, to: &str, json: bool) -> Result<Status> {
    let (src, from) = target(source)?;
    let from = from.with_context(|| format!("{source:?} names no image (NAME or REMOTE:NAME)"))?;
    let (dst, named) = target(to)?;
    let name = named.unwrap_or_else(|| from.clone());
    let host = host_of(to);
    match send(src.as_ref(), &from, dst.as_ref(), &name, &host)? {
        Sent::Already(same) if json => print_json(&same)?,
        Sent::Already(same) => println!(
            "Image {from} is already on {host} as {} (fingerprint {}): nothing sent.",
            same.name,
            short(&same.fingerprint)
        ),
        Sent::Copied(copied, _) if json => print_json(&copied)?,
        Sent::Copied(copied, secs) => println!(
            "Copied image {from} to {host} as {} ({}, fingerprint {}) in {secs:.1} s.",
            copied.name,
            describe(&copied),
            short(&copied.fingerprint),
        ),
    }
    Ok(Status(0))
}
