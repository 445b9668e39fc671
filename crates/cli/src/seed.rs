//! `berth seed ...`: NoCloud seed volumes and user-data validation.

use crate::output::print_json;
use crate::Status;
use anyhow::Result;
use berth_cloudinit::schema::Severity;
use berth_cloudinit::seed::{self, SeedFiles, SeedFormat};
use berth_cloudinit::userdata;
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeedFormatArg {
    Iso,
    Vfat,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum SeedCommand {
    /// Write a NoCloud seed volume labelled "cidata", as cloud-localds does.
    ///
    /// Without --meta-data, berth writes one with the instance id (--instance-id, default a
    /// fresh one) and --hostname. The user-data is checked first; errors stop the write.
    Create {
        /// The seed volume to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// user-data file (default: an empty #cloud-config).
        #[arg(long = "user-data")]
        user_data: Option<PathBuf>,
        /// meta-data file.
        #[arg(long = "meta-data", conflicts_with_all = ["hostname", "instance_id"])]
        meta_data: Option<PathBuf>,
        /// network-config file (v1 or v2).
        #[arg(long = "network-config")]
        network_config: Option<PathBuf>,
        /// vendor-data file.
        #[arg(long = "vendor-data")]
        vendor_data: Option<PathBuf>,
        /// local-hostname for the generated meta-data.
        #[arg(long)]
        hostname: Option<String>,
        /// instance-id for the generated meta-data.
        #[arg(long = "instance-id")]
        instance_id: Option<String>,
        /// Volume format.
        #[arg(long, value_enum, default_value = "iso")]
        format: SeedFormatArg,
        /// Write even if the user-data has errors.
        #[arg(long)]
        no_validate: bool,
        /// Overwrite the output if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check user-data files before any guest boots.
    ///
    /// Accepts #cloud-config, #! scripts, #include, #cloud-boothook, gzip and MIME multipart, as
    /// cloud-init does. cloud-configs are checked against cloud-init's own schema: errors (the
    /// guest's cloud-init would reject the file) print as FILE:LINE:COLUMN with the key path;
    /// unknown keys and unknown time zones are warnings; deprecated keys get a note naming the
    /// successor. Exit status: 0 valid (warnings allowed), 1 errors found, 125 a file could not
    /// be read.
    Validate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// A seed part or user-data file, capped as every user-data berth reads.
fn read(p: &Path) -> Result<Vec<u8>> {
    Ok(berth_files::input::read_capped(
        p,
        berth_files::input::USER_DATA_CAP,
        "user-data or a seed part",
    )?)
}

fn zoneinfo() -> Option<PathBuf> {
    let z = PathBuf::from("/usr/share/zoneinfo");
    z.is_dir().then_some(z)
}

#[derive(serde::Serialize)]
struct FileReport {
    file: String,
    kind: userdata::Kind,
    valid: bool,
    problems: Vec<berth_cloudinit::schema::Problem>,
}

fn print_problems(file: &str, problems: &[berth_cloudinit::schema::Problem]) {
    for p in problems {
        let sev = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        if p.path.is_empty() {
            eprintln!("{file}:{}:{}: {sev}: {}", p.line, p.column, p.message);
        } else {
            eprintln!(
                "{file}:{}:{}: {sev}: {}: {}",
                p.line, p.column, p.path, p.message
            );
        }
    }
}

pub fn run(cmd: SeedCommand) -> Result<Status> {
    match cmd {
        SeedCommand::Create {
            output,
            user_data,
            meta_data,
            network_config,
            vendor_data,
            hostname,
            instance_id,
            format,
            no_validate,
            force,
        } => {
            let user = match &user_data {
                Some(p) => read(p)?,
                None => b"#cloud-config\n{}\n".to_vec(),
            };
            if let (Some(p), false) = (&user_data, no_validate) {
                let (_, problems) = userdata::validate_bytes(&user, zoneinfo().as_deref());
                let name = p.display().to_string();
                print_problems(&name, &problems);
                if problems.iter().any(|x| x.severity == Severity::Error) {
                    anyhow::bail!(
                        "{name} has errors; nothing was written (--no-validate writes it anyway)"
                    );
                }
            }
            let meta = match &meta_data {
                Some(p) => read(p)?,
                None => seed::meta_data(
                    &instance_id.unwrap_or_else(seed::new_instance_id),
                    hostname.as_deref(),
                )
                .into_bytes(),
            };
            let files = SeedFiles {
                user_data: user,
                meta_data: meta,
                network_config: network_config.as_deref().map(read).transpose()?,
                vendor_data: vendor_data.as_deref().map(read).transpose()?,
            };
            let fmt = match format {
                SeedFormatArg::Iso => SeedFormat::Iso,
                SeedFormatArg::Vfat => SeedFormat::Vfat,
            };
            seed::write(&output, &files, fmt, force)?;
            println!("Wrote NoCloud seed {} (label cidata)", output.display());
            Ok(Status(0))
        }
        SeedCommand::Validate { json, files } => {
            let mut reports = Vec::new();
            for f in &files {
                let data = read(f)?;
                let (kind, problems) = userdata::validate_bytes(&data, zoneinfo().as_deref());
                let valid = !problems.iter().any(|p| p.severity == Severity::Error);
                reports.push(FileReport {
                    file: f.display().to_string(),
                    kind,
                    valid,
                    problems,
                });
            }
            if json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    print_problems(&r.file, &r.problems);
                    if r.valid {
                        println!(
                            "{}: valid {}",
                            r.file,
                            serde_json::to_value(r.kind)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default()
                        );
                    } else {
                        println!("{}: invalid", r.file);
                    }
                }
            }
            Ok(Status(if reports.iter().all(|r| r.valid) {
                0
            } else {
                1
            }))
        }
    }
}
