//! `berth copy [REMOTE:]NAME [REMOTE:][NEWNAME]`: a stopped VM cloned onto any host, this one
//! included. Its image goes first when the target lacks it (content-addressed: not when the
//! target holds it under any name); the copy gets a new machine-id registered on its host (so a
//! new MAC, and new SSH host keys and its own hostname at its first boot), and stays stopped.

use crate::client::{self, Client, Identity};
use crate::image::{host_of, send, short, Counted, Sent};
use crate::output::print_json;
use crate::Status;
use anyhow::{Context, Result};
use berth_api::{Instance, InstanceType};
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
    // A broken connection to either host is an error to report, not the end of berth.
    berth_container::direct::ignore_sigpipe();
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
    send_image(src.as_ref(), &instance, dst.as_ref(), &host)?;
    let clock = std::time::Instant::now();
    let copied = transfer(src.as_ref(), &instance, dst.as_ref(), &name, Identity::New)?;
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

/// Send `instance`'s image from `src` to `dst` (called `host`) unless it holds it already.
pub(crate) fn send_image(
    src: &dyn Client,
    instance: &Instance,
    dst: &dyn Client,
    host: &str,
) -> Result<()> {
    let image = &instance.image;
    match send(src, image, dst, image, host)
        .with_context(|| format!("sending {}'s image {image} to {host}", instance.name))?
    {
        Sent::Already(_) => {}
        Sent::Copied(i, secs) => eprintln!(
            "Sent image {image} to {host} first (fingerprint {}, {secs:.1} s).",
            short(&i.fingerprint)
        ),
    }
    Ok(())
}

/// Stream `instance` from `src` to `dst` as `name`, with a progress bar: a copy
/// (`Identity::New`) or a move's transfer (`Identity::Keep`, after its depart step).
pub(crate) fn transfer(
    src: &dyn Client,
    instance: &Instance,
    dst: &dyn Client,
    name: &str,
    identity: Identity,
) -> Result<Instance, berth_api::Error> {
    let what = match identity {
        Identity::New => "copying",
        Identity::Keep => "moving",
    };
    let pb = crate::output::progress_bar(&format!("{what} {}", instance.name));
    if let Some(vm) = &instance.vm {
        pb.set_length(vm.disk_usage.unwrap_or(0));
    }
    let input = Counted {
        inner: src.instance_export(&instance.name, identity == Identity::Keep)?,
        pb: pb.clone(),
    };
    let r = dst.instance_receive(name, identity, Box::new(input), &mut |ev| {
        pb.set_message(ev.message.clone())
    });
    pb.finish_and_clear();
    r
}
