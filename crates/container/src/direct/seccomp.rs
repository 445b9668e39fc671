//! The seccomp filter's trip from parent to child: encoded after the go, read and installed
//! by the child just before exec.

use super::*;

/// The seccomp filter as the child receives it after the go: the number of BPF instructions
/// (u32, little-endian; 0 for none), then the instructions as the kernel lays them out.
pub(super) fn encode_filter(program: Option<&[libc::sock_filter]>) -> Vec<u8> {
    let program = program.unwrap_or_default();
    let mut out = (program.len() as u32).to_le_bytes().to_vec();
    for i in program {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// BPF instructions from their bytes (8 each, in the kernel's layout); None if a part is left.
pub(super) fn decode_program(bytes: &[u8]) -> Option<Vec<libc::sock_filter>> {
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// The child's side of [`encode_filter`]. The kernel takes at most 4096 instructions.
pub(super) fn read_filter(from: &mut impl Read) -> std::io::Result<Option<Vec<libc::sock_filter>>> {
    let mut n = [0u8; 4];
    from.read_exact(&mut n)?;
    let n = u32::from_le_bytes(n) as usize;
    if n == 0 {
        return Ok(None);
    }
    if n > 4096 {
        return Err(std::io::Error::other(format!(
            "{n} instructions is over the kernel's limit"
        )));
    }
    let mut bytes = vec![0u8; n * 8];
    from.read_exact(&mut bytes)?;
    Ok(decode_program(&bytes))
}

/// Install the BPF `program` as this thread's seccomp filter (no_new_privs or CAP_SYS_ADMIN
/// needed, as for `seccomp_load`).
#[allow(unsafe_code)]
pub(super) fn install_filter(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::Error::other("filter too long"))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, `len` instructions that live across the call; the
    // kernel copies the program and does not keep the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
