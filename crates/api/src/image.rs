//! Base images: what berth says of one, and the requests that make them (a build from a recipe,
//! an import of a disk sent by content as an image archive).

use crate::error::Error;
use crate::request::check_name;
use serde::{Deserialize, Serialize};

/// How an image came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageSource {
    /// Built by berth from a recipe (its hash: the same recipe builds the same image).
    Built {
        /// The recipe's hash.
        recipe: String,
    },
    /// Imported from a disk.
    Imported {
        /// What it was imported from (a file name, as the importing client named it).
        from: String,
    },
}

/// One image in a host's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// The OS (`debian`, or what the image's `/etc/os-release` says).
    pub os: String,
    /// Its release (`12`).
    pub release: String,
    /// Its architecture (`x86_64`).
    pub arch: String,
    /// The disk's virtual size in bytes.
    pub size: u64,
    /// The disk file's size on the host in bytes.
    pub stored_bytes: u64,
    /// The SHA-256 of its disk file: the same fingerprint on two hosts is the same image.
    pub fingerprint: String,
    /// When it was made (Unix time).
    pub created_at: i64,
    /// The kernel version a VM boots directly.
    pub kernel: Option<String>,
    /// How it came to be.
    pub source: ImageSource,
    /// The instances made from it (it cannot be removed while there are any).
    pub used_by: Vec<String>,
}

/// Build an image from a recipe (the only one: `debian-12`, from Debian's mirror).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    /// What to build (`debian-12`).
    pub recipe: String,
    /// The image's name (default: the recipe's).
    #[serde(default)]
    pub name: Option<String>,
    /// Its root file system's size in bytes (default 2 GiB).
    #[serde(default)]
    pub size: Option<u64>,
    /// The Debian mirror (default: the host's `BERTH_DEBIAN_MIRROR`, else deb.debian.org).
    #[serde(default)]
    pub mirror: Option<String>,
}

/// The recipes berth builds (Debian 12, by its names).
pub const RECIPES: [&str; 3] = ["debian-12", "debian-bookworm", "bookworm"];

/// The smallest root file system a build makes.
pub const IMAGE_SIZE_MIN: u64 = 512 << 20;
/// The default root file system size of a build.
pub const IMAGE_SIZE_DEFAULT: u64 = 2 << 30;

impl ImageBuild {
    /// The name the image gets.
    pub fn image_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.recipe)
    }

    /// The checks that need no system.
    pub fn check(&self) -> Result<(), Error> {
        if !RECIPES.contains(&self.recipe.as_str()) {
            return Err(Error::invalid(
                "recipe",
                format!(
                    "unknown recipe {:?}: berth builds {}",
                    self.recipe, RECIPES[0]
                ),
            ));
        }
        check_name(self.image_name())?;
        match self.size {
            Some(s) if s < IMAGE_SIZE_MIN => Err(Error::invalid(
                "size",
                format!("size {s} bytes is too small for a root file system (at least 512M)"),
            )),
            Some(s) if s > i64::MAX as u64 => Err(Error::invalid(
                "size",
                format!("size {s} bytes is larger than a disk can be"),
            )),
            _ => Ok(()),
        }?;
        if let Some(m) = &self.mirror {
            if !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/"))
                || m.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::invalid(
                    "mirror",
                    format!("{m:?} is not a mirror URL (http://, https:// or file:/)"),
                ));
            }
        }
        Ok(())
    }
}

/// An image archive, as `PUT /1.0/images/NAME` takes it: an uncompressed tar whose members
/// are regular files named as these are, each at most once ([`ARCHIVE_DISK`] required).
pub const ARCHIVE_DISK: &str = "disk";
/// The kernel for direct boot, optional (with [`ARCHIVE_INITRD`]): without them berth reads the
/// newest `/boot/vmlinuz-*` out of the disk.
pub const ARCHIVE_KERNEL: &str = "kernel";
/// Its initrd.
pub const ARCHIVE_INITRD: &str = "initrd";
/// A text file naming what the disk was imported from, optional.
pub const ARCHIVE_FROM: &str = "from";

/// What an image archive may hold.
pub const ARCHIVE_MEMBERS: [&str; 4] = [ARCHIVE_DISK, ARCHIVE_KERNEL, ARCHIVE_INITRD, ARCHIVE_FROM];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_checked_without_the_system() {
        let b = |j: &str| serde_json::from_str::<ImageBuild>(j).map_err(|e| e.to_string());
        let ok = b(r#"{"recipe":"debian-12"}"#).unwrap();
        assert_eq!((ok.check(), ok.image_name()), (Ok(()), "debian-12"));
        assert!(b(r#"{"recipe":"debian-12","sise":1}"#)
            .unwrap_err()
            .contains("unknown field `sise`"));
        let field = |j: &str| b(j).unwrap().check().unwrap_err().field.unwrap();
        assert_eq!(field(r#"{"recipe":"debian-12","name":"../x"}"#), "name");
        assert_eq!(field(r#"{"recipe":""}"#), "recipe");
        assert_eq!(field(r#"{"recipe":"debian-12","size":1024}"#), "size");
        assert_eq!(
            field(r#"{"recipe":"debian-12","mirror":"ftp://x; rm -rf /"}"#),
            "mirror"
        );
    }
}
