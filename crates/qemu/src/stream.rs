//! The frames of QEMU's `-netdev stream` (what QEMU and passt say on their socket): each
//! Ethernet frame after its length, 4 bytes big-endian. Counting them as they pass gives a VM's
//! network bytes as its NIC would count them (frames and their bytes, no length fields), which
//! neither QEMU nor passt keeps (berth's relay between the two counts them, `berth_host::nic`).

/// Frames and their bytes, counted from one direction of the stream, however it is cut up.
#[derive(Debug, Clone, Default)]
pub struct FrameCount {
    /// Whole frames seen.
    pub frames: u64,
    /// Their bytes, and those of the frame being read.
    pub bytes: u64,
    /// Bytes of the length field read so far, and the field.
    header_read: usize,
    header: [u8; 4],
    /// Bytes of the current frame still to come.
    left: u64,
}

impl FrameCount {
    /// Count `data`, the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = (self.left).min(data.len() as u64);
                self.left -= n;
                self.bytes += n;
                data = &data[n as usize..];
                if self.left == 0 {
                    self.frames += 1;
                }
                continue;
            }
            let n = (4 - self.header_read).min(data.len());
            self.header[self.header_read..self.header_read + n].copy_from_slice(&data[..n]);
            self.header_read += n;
            data = &data[n..];
            if self.header_read == 4 {
                self.header_read = 0;
                self.left = u64::from(u32::from_be_bytes(self.header));
                if self.left == 0 {
                    self.frames += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: &[usize]) -> Vec<u8> {
        let mut s = Vec::new();
        for &len in frames {
            s.extend_from_slice(&(len as u32).to_be_bytes());
            s.extend((0..len).map(|i| i as u8));
        }
        s
    }

    #[test]
    fn frames_are_counted_without_their_length_fields_however_the_stream_is_cut() {
        let frames = [60, 1514, 0, 65520, 42, 3];
        let s = stream(&frames);
        let want = (6, frames.iter().sum::<usize>() as u64);
        for cut in [1, 2, 3, 4, 5, 7, 64, 1500, 4096, s.len()] {
            let mut c = FrameCount::default();
            for chunk in s.chunks(cut) {
                c.feed(chunk);
            }
            assert_eq!((c.frames, c.bytes), want, "in chunks of {cut}");
            assert_eq!((c.header_read, c.left), (0, 0), "in chunks of {cut}");
        }
    }

    #[test]
    fn a_frame_under_way_counts_its_bytes_so_far_but_not_as_a_frame() {
        let mut c = FrameCount::default();
        c.feed(&stream(&[100])[..54]);
        assert_eq!((c.frames, c.bytes), (0, 50));
        c.feed(&[0; 50]);
        assert_eq!((c.frames, c.bytes), (1, 100));
        c.feed(&[0, 0]);
        assert_eq!((c.frames, c.bytes), (1, 100));
    }
}
