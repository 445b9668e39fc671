//! `berth key ...`: generate key pairs, add public keys to an authorized_keys file.

use crate::output::dirs;
use crate::Status;
use anyhow::{Context, Result};
use berth_identity::authorized_keys;
use berth_identity::keys::{self, KeySpec, KeyType};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyTypeArg {
    Ed25519,
    Ecdsa,
    Rsa,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum KeyCommand {
    /// Generate an SSH key pair: PATH (private, mode 0600) and PATH.pub (0644), in OpenSSH format.
    ///
    /// Without -f, writes berth's own key under its data folder (keys/id_<type>). A folder
    /// created for the key gets mode 0700. Refuses to overwrite without --force.
    Generate {
        /// Key type.
        #[arg(short = 't', long = "type", value_enum, default_value = "ed25519")]
        key_type: KeyTypeArg,
        /// Bits: RSA 2048-16384 (default 3072), ECDSA 256/384/521 (default 256).
        #[arg(short = 'b', long)]
        bits: Option<u32>,
        /// Private key file.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Comment (default: user@host).
        #[arg(short = 'C', long)]
        comment: Option<String>,
        /// Passphrase to encrypt the private key with (empty: none).
        #[arg(short = 'N', long, default_value = "")]
        passphrase: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Add public keys to an authorized_keys file, as ssh-copy-id does to the remote one.
    ///
    /// Only keys not already present are appended (compared by key, not by text); existing lines
    /// and their options stay byte for byte; a missing file is created 0600 and its folder 0700.
    Add {
        /// Public key file (one or more keys).
        pubkey: PathBuf,
        /// The authorized_keys file to edit.
        #[arg(long = "to", value_name = "AUTHORIZED_KEYS")]
        to: PathBuf,
    },
}

fn default_comment() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{user}@{host}")
}

pub fn run(cmd: KeyCommand) -> Result<Status> {
    match cmd {
        KeyCommand::Generate {
            key_type,
            bits,
            file,
            comment,
            passphrase,
            force,
        } => {
            let (kt, name) = match key_type {
                KeyTypeArg::Ed25519 => (KeyType::Ed25519, "id_ed25519"),
                KeyTypeArg::Ecdsa => (KeyType::Ecdsa, "id_ecdsa"),
                KeyTypeArg::Rsa => (KeyType::Rsa, "id_rsa"),
            };
            let path = match file {
                Some(f) => f,
                None => dirs()?.keys().join(name),
            };
            let spec = KeySpec {
                key_type: kt,
                bits,
                comment: comment.unwrap_or_else(default_comment),
                passphrase,
            };
            let pair = keys::generate_to(&spec, &path, force)?;
            println!("Your identification has been saved in {}", path.display());
            println!(
                "Your public key has been saved in {}",
                keys::public_path(&path).display()
            );
            print!("{}", pair.public_openssh);
            Ok(Status(0))
        }
        KeyCommand::Add { pubkey, to } => {
            let added = authorized_keys::add_keys(&pubkey, &to)
                .with_context(|| format!("adding {} to {}", pubkey.display(), to.display()))?;
            if added == 0 {
                println!("All keys were already in {}; nothing added.", to.display());
            } else {
                println!("Number of key(s) added: {added} to {}", to.display());
            }
            Ok(Status(0))
        }
    }
}
