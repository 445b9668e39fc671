//! `berth move [REMOTE:]NAME REMOTE:[NEWNAME]`: a stopped VM moved to another host, whole: its
//! overlay, settings, machine-id (so its MAC and cloud-init instance: the same host keys, no
//! first-boot again) and its own SSH key. Its image goes first when the target lacks it.
//!
//! The steps (see `berth_api::MoveStep`): the source marks it moving (it cannot start there),
//! the target receives it arriving (its machine-id registered there, refused before the disk
//! travels if that id or the name is taken), the source removes it and releases the id, the
//! target makes it its own. A failure before the source let it go undoes the move; one after
//! leaves it arriving at the target, and `berth move` again finishes it. At no moment can it
//! run on two hosts, and its disk is at the source until the target holds a whole copy.

use crate::client::{self, Client, Identity};
use crate::copy::{send_image, transfer};
use crate::output::print_json;
use crate::Status;
use anyhow::{bail, Context, Result};
use berth_api::{ErrorKind, Instance, InstanceDelete, InstanceMove, InstanceType, MoveStep};
use clap::Args;

// `berth move`.
#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The instance to move (a stopped VM): NAME or REMOTE:NAME.
    pub source: String,
    /// Where, and under what name: REMOTE: (the same name there) or REMOTE:NEWNAME.
    pub target: String,
    /// Undo a move cut short instead: the instance stays on its host (what reached the target
    /// is deleted there).
    #[arg(long)]
    pub undo: bool,
    /// Print the moved instance as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Both ends of a move.
struct Ends {
    src: Box<dyn Client>,
    dst: Box<dyn Client>,
    from: String,
    name: String,
    origin: String,
    host: String,
}

impl Ends {
    fn step(&self, on_target: bool, step: MoveStep) -> Result<(), berth_api::Error> {
        let (c, name, peer) = if on_target {
            (&self.dst, &self.name, &self.origin)
        } else {
            (&self.src, &self.from, &self.host)
        };
        c.instance_move(
            name,
            &InstanceMove {
                step,
                peer: peer.clone(),
            },
        )
    }

    /// The instance at the target, if it is there.
    fn at_target(&self) -> Result<Option<Instance>> {
        match self.dst.info(&self.name) {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("asking {} for {}", self.host, self.name)),
        }
    }
}

fn moving(i: &Instance) -> bool {
    i.state.state == berth_api::Status::Moving
}

pub fn run(a: MoveArgs) -> Result<Status> {
    // A host that goes away mid-move is a failure to undo (berth's own steps after it), not
    // the end of berth with the move half done.
    berth_container::direct::ignore_sigpipe();
    let remotes = crate::remote::load()?;
    let (st, from) = remotes.split(&a.source)?;
    anyhow::ensure!(
        !from.is_empty(),
        "{:?} names no instance (NAME or REMOTE:NAME)",
        a.source
    );
    let Some((remote, named)) = a.target.split_once(':') else {
        bail!(
            "{:?} names no host: berth move NAME REMOTE: or REMOTE:NEWNAME",
            a.target
        );
    };
    let dt = remotes.target(remote)?;
    if st == dt {
        bail!(berth_api::Error::invalid(
            "target",
            format!("{from} is on {remote}: already; berth move takes an instance to another host")
        ));
    }
    let origin = match a.source.split_once(':') {
        Some((r, _)) => format!("{r}:"),
        None => format!("{}:", remotes.default),
    };
    let ends = Ends {
        src: client::of(st)?,
        dst: client::of(dt)?,
        from: from.to_string(),
        name: if named.is_empty() { from } else { named }.to_string(),
        origin,
        host: format!("{remote}:"),
    };
    if a.undo {
        return undo(&ends);
    }
    let clock = std::time::Instant::now();
    let moved = go(&ends)?;
    if a.json {
        print_json(&moved)?;
    } else {
        println!(
            "Moved {} from {} to {} as {} (machine-id {}) in {:.1} s; it is stopped: berth start {}{}",
            ends.from,
            ends.origin,
            ends.host,
            moved.name,
            moved.machine_id.as_deref().unwrap_or("?"),
            clock.elapsed().as_secs_f64(),
            ends.host,
            moved.name
        );
    }
    Ok(Status(0))
}

/// The move, from wherever an earlier one was cut short.
fn go(e: &Ends) -> Result<Instance> {
    let instance = match e.src.info(&e.from) {
        Ok(i) => i,
        Err(x) if x.kind == ErrorKind::NotFound => {
            // Gone from the source: a move that let it go there and was cut short before the
            // target made it its own.
            return match e.at_target()? {
                Some(i) if moving(&i) => finish(e),
                _ => Err(x.into()),
            };
        }
        Err(x) => return Err(x.into()),
    };
    if instance.instance_type == InstanceType::Container {
        bail!("{} is a container: berth moves VMs only so far", e.from);
    }
    let resumed = moving(&instance);
    if !resumed && instance.state.state != berth_api::Status::Stopped {
        bail!(berth_api::Error::invalid(
            "source",
            format!(
                "{} is {}: stop it first (berth stop {}); berth does not move a running VM yet",
                e.from, instance.state.state, e.from
            )
        ));
    }
    match e.at_target()? {
        None => {}
        // A move cut short after the target took it whole: the source lets it go.
        Some(i) if resumed && moving(&i) && i.machine_id == instance.machine_id => {
            return depart_and_finish(e);
        }
        // What a receipt cut short left there (the berth taking it in was killed): the source
        // still holds the guest whole, so that goes and the move starts again.
        Some(i) if resumed && i.state.state == berth_api::Status::Broken => {
            eprintln!(
                "Removing {}{}, what an earlier try of this move left there unfinished.",
                e.host, e.name
            );
            e.dst
                .delete(&e.name, &InstanceDelete { force: true })
                .with_context(|| format!("removing the unfinished {} on {}", e.name, e.host))?;
        }
        Some(_) => bail!(berth_api::Error::conflict(format!(
            "{} already has an instance named {:?}",
            e.host, e.name
        ))),
    }
    send_image(e.src.as_ref(), &instance, e.dst.as_ref(), &e.host)?;
    e.step(false, MoveStep::Depart)
        .with_context(|| format!("marking {} as moving on {}", e.from, e.origin))?;
    if let Err(x) = transfer(
        e.src.as_ref(),
        &instance,
        e.dst.as_ref(),
        &e.name,
        Identity::Keep,
    ) {
        let undone = match e.step(false, MoveStep::Stay) {
            Ok(()) => format!("{} stays on {}, stopped", e.from, e.origin),
            Err(y) => format!(
                "and undoing the move failed too ({y}): {} is moving on {}; berth move --undo \
                 {} {} keeps it there",
                e.from, e.origin, e.from, e.host
            ),
        };
        return Err(anyhow::Error::new(x)
            .context(format!("sending {} to {} failed; {undone}", e.from, e.host)));
    }
    depart_and_finish(e)
}

/// The target holds it whole, arriving: the source lets it go, then the target makes it its
/// own.
fn depart_and_finish(e: &Ends) -> Result<Instance> {
    if let Err(x) = e.step(false, MoveStep::Departed) {
        // Let go, and the answer lost? Then only the target has it.
        match e.src.info(&e.from) {
            Err(y) if y.kind == ErrorKind::NotFound => {}
            Ok(_) => {
                let undone = e
                    .dst
                    .delete(&e.name, &InstanceDelete { force: true })
                    .and_then(|()| e.step(false, MoveStep::Stay));
                let how = match undone {
                    Ok(()) => format!("the move is undone: {} stays on {}", e.from, e.origin),
                    Err(_) => format!(
                        "{} is still moving on {} and arriving on {}: berth move again \
                         finishes it, berth move --undo keeps it on {}",
                        e.from, e.origin, e.host, e.origin
                    ),
                };
                return Err(anyhow::Error::new(x)
                    .context(format!("{} did not let {} go; {how}", e.origin, e.from)));
            }
            Err(_) => {
                return Err(anyhow::Error::new(x).context(format!(
                    "{} did not answer whether it let {} go; {} holds it whole, arriving: \
                     berth move {}{} {}{} again finishes the move",
                    e.origin, e.from, e.host, e.origin, e.from, e.host, e.name
                )))
            }
        }
    }
    finish(e)
}

/// The source has let it go: the target makes it its own.
fn finish(e: &Ends) -> Result<Instance> {
    e.step(true, MoveStep::Arrived).with_context(|| {
        format!(
            "{} has left {} and is on {}, arriving; berth move {}{} {}{} again finishes the \
             move",
            e.from, e.origin, e.host, e.origin, e.from, e.host, e.name
        )
    })?;
    Ok(e.dst.info(&e.name)?)
}

/// `--undo`: what reached the target goes, and the instance stays on its host.
fn undo(e: &Ends) -> Result<Status> {
    let instance = match e.src.info(&e.from) {
        Ok(i) => i,
        Err(x) if x.kind == ErrorKind::NotFound => {
            bail!(anyhow::Error::new(x).context(format!(
                "{} has left {} already: the move can only be finished (berth move {}{} {}{})",
                e.from, e.origin, e.origin, e.from, e.host, e.name
            )))
        }
        Err(x) => return Err(x.into()),
    };
    if !moving(&instance) {
        println!("{} is not moving; nothing to undo.", e.from);
        return Ok(Status(0));
    }
    match e.at_target() {
        Ok(Some(i)) if moving(&i) && i.machine_id == instance.machine_id => {
            e.dst
                .delete(&e.name, &InstanceDelete { force: true })
                .with_context(|| format!("deleting what reached {}", e.host))?;
        }
        Ok(_) => {}
        Err(x) => eprintln!(
            "warning: {x:#}; if {} holds {} arriving, delete it there (berth delete --force {}{})",
            e.host, e.name, e.host, e.name
        ),
    }
    e.step(false, MoveStep::Stay)?;
    println!("{} stays on {}, stopped.", e.from, e.origin);
    Ok(Status(0))
}
