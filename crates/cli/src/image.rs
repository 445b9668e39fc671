//! `berth image ...`: base images in berth's store.

use crate::output::{dirs, print_json};
use crate::Status;
use anyhow::Result;
use berth_disk::units::{human_size, parse_size};
use berth_host::images::{Phase, Store};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

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
    Import {
        /// The disk image.
        file: std::path::PathBuf,
        /// Image name.
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
    /// List images.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image.
    Rm {
        /// Image name.
        name: String,
    },
}

pub fn run(cmd: ImageCommand) -> Result<Status> {
    let store = Store::new(&dirs()?);
    match cmd {
        ImageCommand::Build {
            recipe,
            name,
            size,
            mirror,
        } => {
            // A build is minutes of work: it finishes whether or not anyone still reads.
            berth_container::direct::ignore_sigpipe();
            let name = name.unwrap_or_else(|| recipe.clone());
            let mirror = mirror
                .or_else(|| {
                    std::env::var("BERTH_DEBIAN_MIRROR")
                        .ok()
                        .filter(|m| !m.is_empty())
                })
                .unwrap_or_else(|| "http://deb.debian.org/debian".into());
            let pb = if std::io::stderr().is_terminal() {
                ProgressBar::new_spinner()
            } else {
                ProgressBar::hidden()
            };
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {prefix:<12} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            let started = std::time::Instant::now();
            let (meta, cached) =
                store.build(&recipe, &name, size, &mirror, &mut |phase, line| {
                    let p = match phase {
                        Phase::Bootstrap => "debootstrap",
                        Phase::Configure => "configure",
                        Phase::Filesystem => "filesystem",
                        Phase::Convert => "qcow2",
                        Phase::Finish => "finish",
                    };
                    pb.set_prefix(p);
                    pb.set_message(line.to_string());
                })?;
            pb.finish_and_clear();
            if cached {
                crate::output::tell!(
                    "Image {} is up to date (recipe {}).",
                    meta.name,
                    meta.recipe
                );
            } else {
                crate::output::tell!(
                    "Built image {} ({} {}, {}) in {:.0} s.",
                    meta.name,
                    meta.os,
                    meta.release,
                    human_size(meta.size),
                    started.elapsed().as_secs_f64()
                );
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
            let policy = berth_disk::BackingPolicy::new(Some(store.dir.clone()), allow);
            let meta = store.import(&file, &name, kernel.as_deref(), initrd.as_deref(), &policy)?;
            println!(
                "Imported {} as image {} ({} {}, root {}).",
                file.display(),
                meta.name,
                meta.os,
                meta.release,
                meta.root.as_deref().unwrap_or("?")
            );
            Ok(Status(0))
        }
        ImageCommand::List { json } => {
            let images = store.list()?;
            if json {
                print_json(&images)?;
            } else {
                println!(
                    "{:<20} {:<8} {:<8} {:<10} {:<10} SHA256",
                    "NAME", "OS", "RELEASE", "ARCH", "SIZE"
                );
                for m in &images {
                    println!(
                        "{:<20} {:<8} {:<8} {:<10} {:<10} {}",
                        m.name,
                        m.os,
                        m.release,
                        m.arch,
                        human_size(m.size),
                        &m.sha256[..16.min(m.sha256.len())]
                    );
                }
            }
            Ok(Status(0))
        }
        ImageCommand::Rm { name } => {
            // Overlays and container layers sit on the image: removing it would lose them.
            let users: Vec<String> = crate::client::local()?
                .list()?
                .into_iter()
                .filter(|i| i.image == name)
                .map(|i| i.name)
                .collect();
            if !users.is_empty() {
                anyhow::bail!(
                    "image {name} is in use by {}; delete them first (nothing was removed)",
                    users.join(", ")
                );
            }
            store.remove(&name)?;
            println!("Removed image {name}.");
            Ok(Status(0))
        }
    }
}
