//! A VM's network bytes: neither QEMU (`-netdev stream` keeps no counters, QMP has none for a
//! netdev) nor passt counts them, so berth puts a relay of its own between the two, as a NIC's
//! driver would count: QEMU connects to the relay's socket in the VM's folder, the relay connects
//! to passt, and it passes the stream on both ways unchanged, counting its frames
//! ([`berth_qemu::stream::FrameCount`]) into `nic.counters` (JSON, replaced at most twice a
//! second while traffic flows, and when it ends).
//!
//! The relay is `berth nic-relay`, started before QEMU with its listening socket as standard
//! input (so QEMU can connect the moment it starts) in a process group of its own, like passt.
//! It serves one QEMU: when either side closes it closes the other and ends, and passt
//! (`--one-off`) ends with it.

use crate::vm_record::VmPaths;
use berth_qemu::stream::FrameCount;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the relay has counted since QEMU connected (one boot of the VM's QEMU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicCounts {
    /// Bytes of the frames passt sent the guest.
    pub received_bytes: u64,
    /// Frames passt sent the guest.
    pub received_frames: u64,
    /// Bytes of the frames the guest sent.
    pub sent_bytes: u64,
    /// Frames the guest sent.
    pub sent_frames: u64,
}

/// Start the relay for the VM whose files are `paths`, passt already listening on its socket.
pub fn start(paths: &VmPaths) -> Result<(), String> {
    end(paths.folder());
    let socket = paths.nic_socket();
    let counters = paths.nic_counters();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&counters);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding berth's own program: {e}"))?;
    let log = paths.folder().join("nic.log");
    let log =
        std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    Command::new(&exe)
        .arg("nic-relay")
        .arg("--socket")
        .arg(&socket)
        .arg("--passt")
        .arg(&paths.passt_socket)
        .arg("--counters")
        .arg(&counters)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the NIC relay ({}): {e}", exe.display()))?;
    Ok(())
}

/// End the relay of the VM in `folder` if it still runs (it ends by itself when QEMU goes; this
/// is for a QEMU that never connected). Idempotent.
pub fn end(folder: &Path) {
    crate::procs::end(folder, crate::procs::nic_relay);
}

/// The counts of the VM's relay, if it has any.
pub fn counts(paths: &VmPaths) -> Option<NicCounts> {
    let text = std::fs::read(paths.nic_counters()).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The relay itself (`berth nic-relay`): accept QEMU on `listener`, connect to passt's `passt`,
/// relay until either side closes, counting into `counters`.
pub fn relay(listener: UnixListener, passt: &Path, counters: &Path) -> std::io::Result<()> {
    let (qemu, _) = listener.accept()?;
    drop(listener);
    let passt = UnixStream::connect(passt).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("connecting to passt at {}: {e}", passt.display()),
        )
    })?;
    // received bytes and frames, sent bytes and frames.
    let counts: Arc<[AtomicU64; 4]> = Arc::default();
    let (done_tx, done) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let mut pumps = Vec::new();
    for (from, to, slot) in [
        (passt.try_clone()?, qemu.try_clone()?, 0),
        (qemu.try_clone()?, passt.try_clone()?, 2),
    ] {
        let (counts, done_tx) = (counts.clone(), done_tx.clone());
        pumps.push(std::thread::spawn(move || {
            let r = pump(&from, &to, &counts[slot..slot + 2]);
            // The other direction ends too: its read sees the end, its write an error.
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = done_tx.send(r);
        }));
    }
    drop(done_tx);
    let mut written = NicCounts::default();
    let mut result = Ok(());
    let mut ended = 0;
    while ended < 2 {
        match done.recv_timeout(Duration::from_millis(500)) {
            Ok(r) => {
                ended += 1;
                if result.is_ok() {
                    result = r;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        written = save(counters, &counts, written)?;
    }
    for p in pumps {
        let _ = p.join();
    }
    save(counters, &counts, written)?;
    result
}

/// Copy `from` to `to`, counting frames into `counts` (bytes, frames).
fn pump(mut from: &UnixStream, mut to: &UnixStream, counts: &[AtomicU64]) -> std::io::Result<()> {
    let mut buf = vec![0u8; 128 << 10];
    let mut frames = FrameCount::default();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        frames.feed(&buf[..n]);
        counts[0].store(frames.bytes, Ordering::Relaxed);
        counts[1].store(frames.frames, Ordering::Relaxed);
    }
}

/// Write the counts to `path` (whole, by rename) if they changed since `last`; what was written.
fn save(path: &Path, counts: &[AtomicU64; 4], last: NicCounts) -> std::io::Result<NicCounts> {
    let [rb, rf, sb, sf] = counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let now = NicCounts {
        received_bytes: rb,
        received_frames: rf,
        sent_bytes: sb,
        sent_frames: sf,
    };
    if now == last && path.exists() {
        return Ok(last);
    }
    let text = serde_json::to_vec(&now).expect("counts serialise");
    berth_files::output::write_atomic(path, &text, 0o644, "the NIC's counts")
        .map_err(std::io::Error::other)?;
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay passes both directions on byte for byte and counts their frames.
    #[test]
    fn the_relay_passes_frames_both_ways_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let (nic, passt_path, counters) = (
            d.path().join("nic.sock"),
            d.path().join("passt.sock"),
            d.path().join("nic.counters"),
        );
        let passt = UnixListener::bind(&passt_path).unwrap();
        let listener = UnixListener::bind(&nic).unwrap();
        let (p, c) = (passt_path.clone(), counters.clone());
        let relay = std::thread::spawn(move || relay(listener, &p, &c));
        let frame = |len: usize, b: u8| {
            let mut f = (len as u32).to_be_bytes().to_vec();
            f.extend(std::iter::repeat_n(b, len));
            f
        };
        let mut qemu = UnixStream::connect(&nic).unwrap();
        let (mut far, _) = passt.accept().unwrap();
        // Guest to passt: two frames; passt to guest: one, written in two pieces.
        let out = [frame(60, 1), frame(1514, 2)].concat();
        qemu.write_all(&out).unwrap();
        let mut got = vec![0u8; out.len()];
        far.read_exact(&mut got).unwrap();
        assert_eq!(got, out);
        let back = frame(342, 3);
        far.write_all(&back[..10]).unwrap();
        far.write_all(&back[10..]).unwrap();
        let mut got = vec![0u8; back.len()];
        qemu.read_exact(&mut got).unwrap();
        assert_eq!(got, back);
        // QEMU goes: the relay closes passt's side and ends, its counts written.
        drop(qemu);
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        relay.join().unwrap().unwrap();
        let n: NicCounts = serde_json::from_slice(&std::fs::read(&counters).unwrap()).unwrap();
        assert_eq!(
            n,
            NicCounts {
                received_bytes: 342,
                received_frames: 1,
                sent_bytes: 1574,
                sent_frames: 2,
            }
        );
    }
}
