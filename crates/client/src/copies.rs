//! The ends of an instance's copy or move from one host to another (`berth copy`, `berth
//! move`): its export, a stream of its transfer archive; the send of such a stream to a
//! daemon, which installs it as an instance; a move's steps.

use super::{segment, Remote};
use berth_api::{Error, Event, Instance, InstanceMove, Nothing};
use std::io::Read;

impl Remote {
    /// Instance `name` (a stopped VM, or for a move one that departs) as it travels to another
    /// host, read from this daemon as the reader takes it. A failure on the way is the
    /// stream's last read.
    pub fn instance_export(&self, name: &str, moving: bool) -> Result<Box<dyn Read + Send>, Error> {
        let path = format!("/1.0/instances/{}/export?move={moving}", segment(name)?);
        // Refused here, where a missing instance would otherwise show as a broken stream.
        self.info(name)?;
        Ok(self.download_stream(path))
    }

    /// Send what another host's [`Remote::instance_export`] streams as instance `name`: with
    /// `identity` `new` (a copy: a new machine-id) or `keep` (the same guest, moved).
    pub fn instance_send(
        &self,
        name: &str,
        identity: &str,
        input: Box<dyn Read + Send>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Instance, Error> {
        match self.info(name) {
            Ok(_) => {
                return Err(Error::conflict(format!(
                    "{} already has an instance named {name:?}",
                    self.endpoint
                )))
            }
            Err(e) if e.kind == berth_api::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let path = format!("/1.0/instances/{}?identity={identity}", segment(name)?);
        self.send_stream(&path, input, events)?
            .outcome()?
            .ok_or_else(|| {
                Error::internal(format!(
                    "{} took {name} but did not say what it made",
                    self.endpoint
                ))
            })
    }

    /// A step of instance `name`'s move.
    pub fn instance_move(&self, name: &str, r: &InstanceMove) -> Result<(), Error> {
        let path = format!("/1.0/instances/{}/move", segment(name)?);
        self.sync::<Nothing>("POST", &path, Some(r)).map(drop)
    }
}
