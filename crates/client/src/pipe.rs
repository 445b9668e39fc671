//! A byte stream that one thread writes and another reads, for an image that travels from one
//! host to another through this process (`berth image copy`): what the source writes is what
//! the target reads, a bounded number of chunks in between, so nothing is held whole in memory
//! and nothing touches this machine's disk.
//!
//! A channel of chunks rather than an OS pipe: the writer's failure reaches the reader as an
//! error with its message (an OS pipe would show the reader a plain end of file, and the
//! target would take a short stream for the whole), and no SIGPIPE is involved when the reader
//! stops early.

use berth_api::Error;
use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// How much one chunk carries.
const CHUNK: usize = 1 << 20;

/// How many chunks wait between the writer and the reader.
const DEPTH: usize = 8;

/// The reading end of what `produce` writes, run on a thread of its own. The stream ends when
/// `produce` returns; an error it returns is the reader's last read.
pub fn reader_of(
    produce: impl FnOnce(&mut (dyn Write + Send)) -> Result<(), Error> + Send + 'static,
) -> Box<dyn Read + Send> {
    let (tx, rx) = sync_channel(DEPTH);
    std::thread::spawn(move || {
        let mut w = std::io::BufWriter::with_capacity(CHUNK, Sender(tx.clone()));
        let r = produce(&mut w).and_then(|()| {
            w.flush()
                .map_err(|e| Error::internal(format!("sending the stream: {e}")))
        });
        if let Err(e) = r {
            let _ = tx.send(Err(e));
        }
    });
    Box::new(Reader {
        rx,
        chunk: Vec::new(),
        at: 0,
    })
}

type Chunk = Result<Vec<u8>, Error>;

struct Sender(SyncSender<Chunk>);

impl Write for Sender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(Ok(buf.to_vec())).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader stopped")
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Reader {
    rx: Receiver<Chunk>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(std::io::Error::other(e.message)),
                // The writer is done, and said nothing went wrong.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_is_read_and_a_failure_is_the_last_read() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let mut r = reader_of(move |w| {
            for part in sent.chunks(4000) {
                w.write_all(part).unwrap();
            }
            Ok(())
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);

        let mut r = reader_of(|w| {
            w.write_all(b"half").unwrap();
            Err(Error::internal("the disk went away"))
        });
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("the disk went away"), "{e}");
    }

    #[test]
    fn a_reader_that_stops_ends_the_writer() {
        let (done_tx, done) = std::sync::mpsc::channel();
        let r = reader_of(move |w| {
            let r = (0..1000).try_for_each(|_| w.write_all(&[0u8; CHUNK]));
            done_tx.send(r.is_err()).unwrap();
            Ok(())
        });
        drop(r);
        assert!(done.recv().unwrap(), "the writer saw the reader go");
    }
}
