//! `authorized_keys` as sshd reads it, and the edit `ssh-copy-id` makes to it.
//!
//! Our own parser, because the `ssh-key` crate rejects valid lines (quoted options with spaces,
//! options without a comment). A line is `[options] keytype base64 [comment]`; options are
//! comma separated and may hold double-quoted values with spaces, commas and `\"`. Keys are
//! compared by their decoded key blob, never by text, so the same key with another comment or
//! other options counts as present. Existing lines are kept byte for byte.

use std::path::Path;
use thiserror::Error;

/// Key types OpenSSH accepts in authorized_keys.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// A parse failure, with the 1-based line number.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// An option value's quote is never closed.
    #[error("line {0}: unterminated quoted option")]
    UnterminatedQuote(usize),
    /// No known key type where one must be.
    #[error(
        "line {0}: no key type found (expected one of ssh-ed25519, ssh-rsa, ecdsa-sha2-*, ...)"
    )]
    NoKeyType(usize),
    /// The key data is missing or not base64.
    #[error("line {0}: key data is missing or not valid base64")]
    BadKeyData(usize),
    /// The blob's embedded type differs from the line's key type.
    #[error("line {0}: key data is a {1} key but the line says {2}")]
    TypeMismatch(usize, String, String),
}

/// One key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    /// The options field, verbatim (empty if none).
    pub options: String,
    /// Key type.
    pub key_type: String,
    /// The base64 text as written.
    pub base64: String,
    /// Decoded key blob (what identity compares).
    pub blob: Vec<u8>,
    /// Comment, verbatim (may be empty).
    pub comment: String,
}

impl KeyLine {
    /// The line as `ssh-keygen` prints a public key: `type base64 [comment]`.
    pub fn public_line(&self) -> String {
        if self.comment.is_empty() {
            format!("{} {}", self.key_type, self.base64)
        } else {
            format!("{} {} {}", self.key_type, self.base64, self.comment)
        }
    }
}

/// Split off a leading options field (up to the first unquoted blank).
fn split_options(line: &str, n: usize) -> Result<(&str, &str), ParseError> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            ' ' | '\t' if !in_quote => return Ok((&line[..i], line[i..].trim_start())),
            _ => {}
        }
    }
    if in_quote {
        return Err(ParseError::UnterminatedQuote(n));
    }
    Ok((line, ""))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = T.iter().position(|&t| t == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if s.is_empty() || bits >= 6 {
        return None;
    }
    Some(out)
}

/// The key type named inside a key blob (its first SSH string).
fn blob_type(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(0..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4 + len)?;
    String::from_utf8(name.to_vec()).ok()
}

/// Parse one line. `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str, n: usize) -> Result<Option<KeyLine>, ParseError> {
    let t = line
        .trim_start_matches([' ', '\t'])
        .trim_end_matches(['\r', '\n']);
    if t.trim().is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let first = t.split([' ', '\t']).next().unwrap_or("");
    let (options, rest) = if KEY_TYPES.contains(&first) {
        ("", t)
    } else {
        split_options(t, n)?
    };
    let mut fields = rest.splitn(2, [' ', '\t']);
    let key_type = fields.next().unwrap_or("").to_string();
    if !KEY_TYPES.contains(&key_type.as_str()) {
        return Err(ParseError::NoKeyType(n));
    }
    let rest = fields.next().unwrap_or("").trim_start();
    let mut fields = rest.splitn(2, [' ', '\t']);
    let base64 = fields.next().unwrap_or("").to_string();
    let blob = decode_base64(&base64).ok_or(ParseError::BadKeyData(n))?;
    let inner = blob_type(&blob).ok_or(ParseError::BadKeyData(n))?;
    if inner != key_type {
        return Err(ParseError::TypeMismatch(n, inner, key_type));
    }
    let comment = fields.next().unwrap_or("").trim().to_string();
    Ok(Some(KeyLine {
        options: options.to_string(),
        key_type,
        base64,
        blob,
        comment,
    }))
}

/// Parse a whole file's text: every key line (errors name their line).
pub fn parse(text: &str) -> Result<Vec<KeyLine>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(k) = parse_line(line, i + 1)? {
            out.push(k);
        }
    }
    Ok(out)
}

/// Errors from [`add_keys`].
#[derive(Debug, Error)]
pub enum AddError {
    /// A file could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file or authorized_keys does not parse.
    #[error("{}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        #[source]
        source: ParseError,
    },
    /// The public key file holds no key.
    #[error("{} holds no public key", .0.display())]
    NoKey(std::path::PathBuf),
    /// A file that is not a regular one, too large, or not text.
    #[error(transparent)]
    File(#[from] berth_files::FileError),
}

/// Text to append to `existing` so that every key of `new_keys` is present (compared by key
/// blob); returns the new full text and how many keys were added. Existing bytes are kept.
pub fn merge(existing: &str, new_keys: &[KeyLine]) -> Result<(String, usize), ParseError> {
    let have = parse(existing)?;
    let mut out = existing.to_string();
    let mut added = 0;
    let mut seen: Vec<&[u8]> = have.iter().map(|k| k.blob.as_slice()).collect();
    for k in new_keys {
        if seen.contains(&k.blob.as_slice()) {
            continue;
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&k.public_line());
        out.push('\n');
        seen.push(&k.blob);
        added += 1;
    }
    Ok((out, added))
}

/// What `ssh-copy-id -i PUBKEY` does to the remote `authorized_keys`, done to a local file:
/// append the keys not already present, create the file 0600 and its folder 0700 if missing,
/// keep an existing file's lines and mode. Returns the number of keys added.
pub fn add_keys(pubkey: &Path, authorized_keys: &Path) -> Result<usize, AddError> {
    let text = berth_files::input::read_text_capped(
        pubkey,
        berth_files::input::PUBLIC_KEY_CAP,
        "the public key file",
    )?;
    let keys = parse(&text).map_err(|source| AddError::Parse {
        path: pubkey.to_path_buf(),
        source,
    })?;
    if keys.is_empty() {
        return Err(AddError::NoKey(pubkey.to_path_buf()));
    }
    add_key_lines(&keys, authorized_keys)
}

/// [`add_keys`] for keys already parsed.
pub fn add_key_lines(keys: &[KeyLine], authorized_keys: &Path) -> Result<usize, AddError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| AddError::Io { what, path, source }
    };
    // Checked before reading: a device or FIFO is neither read nor replaced.
    berth_files::output::check_target(authorized_keys, true, "authorized_keys")?;
    let (existing, mode) = match berth_files::input::read_capped(
        authorized_keys,
        berth_files::input::PUBLIC_KEY_CAP,
        "the authorized_keys file",
    ) {
        Ok(b) => {
            let mode = std::fs::metadata(authorized_keys)
                .map_err(io("reading", authorized_keys))?
                .permissions()
                .mode()
                & 0o7777;
            (String::from_utf8_lossy(&b).into_owned(), mode)
        }
        Err(berth_files::FileError::Io { source: e, .. })
            if e.kind() == std::io::ErrorKind::NotFound =>
        {
            if let Some(dir) = authorized_keys
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                crate::fsutil::ensure_dir(dir, 0o700).map_err(io("creating", dir))?;
            }
            (String::new(), 0o600)
        }
        Err(e) => return Err(e.into()),
    };
    let (text, added) = merge(&existing, keys).map_err(|source| AddError::Parse {
        path: authorized_keys.to_path_buf(),
        source,
    })?;
    if added > 0 || existing.is_empty() {
        berth_files::output::write_atomic(
            authorized_keys,
            text.as_bytes(),
            mode,
            "authorized_keys",
        )?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn parses_lines_the_ssh_key_crate_rejects() {
        let quoted = format!("command=\"echo hi, there\",no-pty {ED} me@host");
        let k = parse_line(&quoted, 1).unwrap().unwrap();
        assert_eq!(k.options, "command=\"echo hi, there\",no-pty");
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.comment, "me@host");
        let no_comment = format!("no-agent-forwarding {ED}");
        let k = parse_line(&no_comment, 1).unwrap().unwrap();
        assert_eq!(k.options, "no-agent-forwarding");
        assert_eq!(k.comment, "");
        let escaped = format!("command=\"echo \\\"quoted\\\" word\" {ED} c");
        assert_eq!(parse_line(&escaped, 1).unwrap().unwrap().comment, "c");
        assert_eq!(parse_line("# comment", 1), Ok(None));
        assert_eq!(parse_line("   ", 1), Ok(None));
    }

    #[test]
    fn refuses_broken_lines_with_their_number() {
        assert_eq!(
            parse_line("command=\"never closed ssh-ed25519 AAAA", 4),
            Err(ParseError::UnterminatedQuote(4))
        );
        assert_eq!(parse_line("ssh-foo AAAA", 2), Err(ParseError::NoKeyType(2)));
        assert_eq!(
            parse_line("ssh-ed25519 !!!", 3),
            Err(ParseError::BadKeyData(3))
        );
        let rsa_claim = ED.replace("ssh-ed25519", "ssh-rsa");
        assert!(matches!(
            parse_line(&rsa_claim, 5),
            Err(ParseError::TypeMismatch(5, _, _))
        ));
    }

    #[test]
    fn merge_compares_keys_not_text_and_keeps_bytes() {
        let existing = format!("from=\"10.0.0.*\" {ED} old comment\r\n# keep me\n");
        let new = parse(&format!("{ED} another comment\n")).unwrap();
        let (text, added) = merge(&existing, &new).unwrap();
        assert_eq!(added, 0);
        assert_eq!(text, existing);
        let other =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBD0Xbq8S9Yl4Dh0BkKG3Yt6h2wA0mL1dVqS2q6vSNmx x@y";
        let (text, added) = merge("no newline at end", &parse(other).unwrap())
            .unwrap_or_else(|_| (String::new(), 99));
        // "no newline at end" is not a key line: merge refuses to guess.
        assert_eq!((text.as_str(), added), ("", 99));
        let (text, added) = merge(&existing, &parse(other).unwrap()).unwrap();
        assert_eq!(added, 1);
        assert!(text.starts_with(&existing) && text.ends_with(&format!("{other}\n")));
    }
}
