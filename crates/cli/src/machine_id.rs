//! `berth machine-id ...`: systemd/D-Bus machine-ids and the host-wide registry.

use crate::output::{dirs, print_json};
use crate::Status;
use anyhow::{bail, Result};
use berth_disk::BackingPolicy;
use berth_identity::image_fs::ImageFs;
use berth_identity::machine_id::{self, Ensured, Found, MachineId};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum MachineIdCommand {
    /// Print a new random machine-id (128 random bits, formatted as systemd does).
    ///
    /// The id is also checked against berth's registry; with --register KIND/NAME it is recorded
    /// there for that guest, and no other guest will ever be handed the same id.
    New {
        /// Record the id in the registry for this owner (e.g. vm/web1).
        #[arg(long, value_name = "KIND/NAME")]
        register: Option<String>,
    },
    /// Check a machine-id: exit 0 if valid, 1 with the reason otherwise.
    Validate {
        /// The id to check.
        #[arg(conflicts_with = "file", required_unless_present = "file")]
        id: Option<String>,
        /// Read the id from this file (e.g. /etc/machine-id).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Read the machine-id of a root tree (--root DIR) or of a disk image's ext4 file system,
    /// without mounting, looking where `dbus-uuidgen --get` looks.
    Get {
        /// A root directory tree.
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        root: Option<PathBuf>,
        /// A raw or qcow2 disk image.
        image: Option<PathBuf>,
    },
    /// As `dbus-uuidgen --ensure` on a root tree: silent if a valid id exists, otherwise write a
    /// new one (mode 0444) and link the D-Bus path to it.
    Ensure {
        /// The root directory tree.
        #[arg(long)]
        root: PathBuf,
    },
    /// List every registered guest and every image (in berth's image store and the given
    /// paths) with its machine-id, flagging ids seen twice. Exit 0 if none repeat, 1 otherwise.
    Audit {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// More images, or folders of images, to include.
        paths: Vec<PathBuf>,
    },
}

pub fn run(cmd: MachineIdCommand) -> Result<Status> {
    match cmd {
        MachineIdCommand::New { register } => {
            let owner = match &register {
                Some(owner) => {
                    let Some(pair) = owner
                        .split_once('/')
                        .filter(|(k, n)| !k.is_empty() && !n.is_empty())
                    else {
                        bail!("--register takes KIND/NAME (e.g. vm/web1), got {owner:?}");
                    };
                    Some(pair)
                }
                None => None,
            };
            println!("{}", berth_host::machine_ids::new_id(&dirs()?, owner)?);
            Ok(Status(0))
        }
        MachineIdCommand::Validate { id, file } => {
            let (text, what) = match (id, file) {
                (Some(id), _) => (id, "machine-id".to_string()),
                (None, Some(f)) => (
                    berth_files::input::read_text_capped(
                        &f,
                        berth_files::input::SMALL_CAP,
                        "a machine-id file",
                    )?,
                    f.display().to_string(),
                ),
                (None, None) => bail!("give an ID or --file PATH"),
            };
            match MachineId::parse(&text) {
                Ok(_) => Ok(Status(0)),
                Err(e) => {
                    eprintln!("berth: {what} is not valid: {e}");
                    Ok(Status(1))
                }
            }
        }
        MachineIdCommand::Get { root, image } => {
            let found = match (root, image) {
                (Some(r), _) => machine_id::read_from_root(&r)?,
                (None, Some(img)) => {
                    let store = dirs().ok().map(|d| d.images());
                    ImageFs::open(&img, None, &BackingPolicy::new(store, Vec::new()))?
                        .machine_id()?
                }
                (None, None) => bail!("give --root DIR or an IMAGE"),
            };
            match found {
                Found::Valid(id, _) => {
                    println!("{id}");
                    Ok(Status(0))
                }
                Found::Invalid(why, path) => bail!("{path} holds no valid machine-id: {why}"),
                Found::Missing => bail!(
                    "no machine-id found (neither {} nor {})",
                    machine_id::DBUS_MACHINE_ID,
                    machine_id::ETC_MACHINE_ID
                ),
            }
        }
        MachineIdCommand::Ensure { root } => {
            match machine_id::ensure_in_root(&root, None)? {
                Ensured::Existing(_) => {}
                Ensured::Written(id) => tracing::info!(%id, "wrote a new machine-id"),
            }
            Ok(Status(0))
        }
        MachineIdCommand::Audit { json, paths } => {
            let audit = berth_host::machine_ids::audit_dirs(&dirs()?, &paths)?;
            if json {
                print_json(&audit)?;
            } else {
                println!("{:<10} {:<34} {:<4} NAME", "KIND", "MACHINE-ID", "DUP");
                for e in &audit.entries {
                    let id = e
                        .machine_id
                        .clone()
                        .unwrap_or_else(|| format!("- ({})", e.note.clone().unwrap_or_default()));
                    println!(
                        "{:<10} {:<34} {:<4} {}",
                        e.kind,
                        id,
                        if e.duplicate { "YES" } else { "" },
                        e.name
                    );
                }
                for (id, who) in &audit.duplicates {
                    println!("duplicate machine-id {id}: {}", who.join(", "));
                }
            }
            Ok(Status(if audit.duplicates.is_empty() { 0 } else { 1 }))
        }
    }
}
