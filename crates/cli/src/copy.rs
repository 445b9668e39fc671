//! `berth copy [REMOTE:]NAME [REMOTE:][NEWNAME]`: a stopped VM cloned onto any host, this one
//! included. Its image goes first when the target lacks it (content-addressed: not when the
//! target holds it under any name); the copy gets a new machine-id registered on its host (so a
//! new MAC, and new SSH host keys and its own hostname at its first boot), and stays stopped.

use crate::client::{self, Identity};
use crate::image::{host_of, send, short, Counted, Sent};
use crate::output::print_json;
use crate::Status;
use anyhow::{Context, Result};
use berth_api::InstanceType;
use clap::Args;

// `berth copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The instance to copy (a stopped VM): NAME or REMOTE:NAME.
    pub source: String,
    /// Where, and under what name: NEWNAME, REMOTE: (the same name there) or REMOTE:NEWNAME.
    pub target: String,
    /// Print the copy as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CopyArgs) -> Result<Status> {
    let (src, from) = client::target(&a.source)?;
    anyhow::ensure!(
        !from.is_empty(),
        "{:?} names no instance (NAME or REMOTE:NAME)",
        a.source
    );
    let (dst, named) = client::target(&a.target)?;
    let name = if named.is_empty() {
        from.clone()
    } else {
        named
    };
    let host = host_of(&a.target);
    let instance = src.info(&from)?;
    if instance.instance_type == InstanceType::Container {
        anyhow::bail!("{from} is a container: berth copies VMs only so far");
    }
    // Refused before anything travels (the source refuses too, but only as its stream's end).
    if instance.state.state != berth_api::Status::Stopped {
        anyhow::bail!(berth_api::Error::invalid(
            "name",
            format!(
                "{from} is {}: stop it first (berth stop {}); berth does not copy a running VM yet",
                instance.state.state, a.source
            )
        ));
    }
    // Refused before the image travels: a name the target uses already.
    match dst.info(&name) {
        Ok(_) => anyhow::bail!(berth_api::Error::conflict(format!(
            "{host} already has an instance named {name:?}"
        ))),
        Err(e) if e.kind == berth_api::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let image = &instance.image;
    match send(src.as_ref(), image, dst.as_ref(), image, &host)
        .with_context(|| format!("sending {from}'s image {image} to {host}"))?
    {
        Sent::Already(_) => {}
        Sent::Copied(i, secs) => eprintln!(
            "Sent image {image} to {host} first (fingerprint {}, {secs:.1} s).",
            short(&i.fingerprint)
        ),
    }
    let pb = crate::output::progress_bar(&format!("copying {from}"));
    if let Some(vm) = &instance.vm {
        pb.set_length(vm.disk_usage.unwrap_or(0));
    }
    let clock = std::time::Instant::now();
    let input = Counted {
        inner: src.instance_export(&from)?,
        pb: pb.clone(),
    };
    let copied = dst.instance_receive(&name, Identity::New, Box::new(input), &mut |ev| {
        pb.set_message(ev.message.clone())
    })?;
    pb.finish_and_clear();
    if a.json {
        print_json(&copied)?;
    } else {
        println!(
            "Copied {from} to {host} as {} (machine-id {}) in {:.1} s; it is stopped: berth start {}{}",
            copied.name,
            copied.machine_id.as_deref().unwrap_or("?"),
            clock.elapsed().as_secs_f64(),
            if host == "local:" { "" } else { host.as_str() },
            copied.name
        );
    }
    Ok(Status(0))
}
