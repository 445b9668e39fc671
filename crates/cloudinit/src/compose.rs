//! A guest's user-data: berth's own cloud-config joined with whatever the user gave, of every
//! kind cloud-init takes (`#cloud-config`, `#!` scripts, `#include`, `#cloud-boothook`, jinja
//! templates, cloud-config archives, part handlers, gzip, MIME multipart).
//!
//! The user's cloud-config parts are merged with berth's (see [`config::merge_map`]), so that
//! berth's user and key survive whatever the user set; everything else reaches cloud-init as it
//! was given, as further parts of a MIME multipart archive (base64, so no byte of it can end the
//! archive early). With only cloud-config, the result stays one plain `#cloud-config`.
//!
//! MIME is parsed with `mailparse`; the validator (`userdata`) keeps its own line-based reader,
//! which it needs for file positions.

use crate::config::{self, GuestConfig, MergeError};
use crate::userdata::{detect, Kind};
use base64::Engine;
use serde_json::{Map, Value};
use std::io::Read;
use thiserror::Error;

/// Largest user-data after gzip is undone (cloud-init's own limit is far lower in practice).
pub const MAX_DECOMPRESSED: u64 = 64 << 20;
/// Deepest nesting of gzip and MIME archives in one user-data.
pub const MAX_DEPTH: u32 = 8;

/// Why the user's user-data cannot be joined with berth's.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ComposeError {
    /// A cloud-config part is not a mapping, or not YAML.
    #[error("{0}")]
    CloudConfig(#[from] MergeError),
    /// Not anything cloud-init acts on.
    #[error("{0}")]
    Unrecognised(String),
}

/// One part berth passes on as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// MIME type, as cloud-init's handlers name them (`text/x-shellscript`...).
    pub content_type: String,
    /// File name cloud-init stores it under, if the user gave one.
    pub filename: Option<String>,
    /// The content, decoded.
    pub body: Vec<u8>,
}

/// The user's user-data, split as berth joins it with its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserData {
    /// The cloud-config parts, each a top-level mapping, in order.
    pub cloud_configs: Vec<Map<String, Value>>,
    /// Everything else, in order.
    pub parts: Vec<Part>,
}

impl UserData {
    /// Split user-data bytes (gzip undone, MIME parts taken apart, kinds detected).
    pub fn split(data: &[u8]) -> Result<UserData, ComposeError> {
        let mut out = UserData::default();
        out.add(data, None, 0)?;
        Ok(out)
    }

    fn add(
        &mut self,
        data: &[u8],
        filename: Option<String>,
        depth: u32,
    ) -> Result<(), ComposeError> {
        check_depth(depth)?;
        if data.starts_with(&[0x1f, 0x8b]) {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(data)
                .take(MAX_DECOMPRESSED + 1)
                .read_to_end(&mut text)
                .map_err(|e| {
                    ComposeError::Unrecognised(format!(
                        "gzip-compressed user-data does not decompress: {e}"
                    ))
                })?;
            if text.len() as u64 > MAX_DECOMPRESSED {
                return Err(ComposeError::Unrecognised(format!(
                    "gzip-compressed user-data expands past {MAX_DECOMPRESSED} bytes"
                )));
            }
            return self.add(&text, filename, depth + 1);
        }
        let text = std::str::from_utf8(data).map_err(|e| {
            ComposeError::Unrecognised(format!(
                "user-data is not UTF-8 text (byte {})",
                e.valid_up_to()
            ))
        })?;
        let content_type = match detect(text) {
            Kind::CloudConfig => {
                self.cloud_configs.push(config::parse(text)?);
                return Ok(());
            }
            Kind::Multipart => return self.add_multipart(data, depth),
            Kind::Script => "text/x-shellscript",
            Kind::Include if text.starts_with("#include-once") => "text/x-include-once-url",
            Kind::Include => "text/x-include-url",
            Kind::Boothook => "text/cloud-boothook",
            Kind::JinjaTemplate => "text/jinja2",
            Kind::Archive => "text/cloud-config-archive",
            Kind::PartHandler => "text/part-handler",
            Kind::Unknown => {
                return Err(ComposeError::Unrecognised(
                    "unrecognised user-data: it must start with #cloud-config, #!, #include, \
                     #cloud-boothook, ## template: jinja, or be a MIME multipart archive"
                        .into(),
                ))
            }
        };
        self.parts.push(Part {
            content_type: content_type.into(),
            filename,
            body: data.to_vec(),
        });
        Ok(())
    }

    fn add_multipart(&mut self, data: &[u8], depth: u32) -> Result<(), ComposeError> {
        let mail = mailparse::parse_mail(data).map_err(|e| {
            ComposeError::Unrecognised(format!("the MIME multipart user-data: {e}"))
        })?;
        self.add_mail(&mail, depth)
    }

    fn add_mail(
        &mut self,
        mail: &mailparse::ParsedMail<'_>,
        depth: u32,
    ) -> Result<(), ComposeError> {
        check_depth(depth)?;
        let mimetype = mail.ctype.mimetype.to_ascii_lowercase();
        if mimetype.starts_with("multipart/") {
            for sub in &mail.subparts {
                self.add_mail(sub, depth + 1)?;
            }
            return Ok(());
        }
        let body = mail.get_body_raw().map_err(|e| {
            ComposeError::Unrecognised(format!("a part of the MIME user-data: {e}"))
        })?;
        let filename = mail
            .get_content_disposition()
            .params
            .get("filename")
            .cloned();
        match mimetype.as_str() {
            "text/cloud-config" => {
                let text = std::str::from_utf8(&body).map_err(|_| {
                    ComposeError::Unrecognised("a text/cloud-config part is not UTF-8".into())
                })?;
                self.cloud_configs.push(config::parse(text)?);
                Ok(())
            }
            // cloud-init looks at the content of these to find their kind, as berth does.
            "text/plain"
            | "text/x-not-multipart"
            | "application/octet-stream"
            | "application/x-gzip"
            | "application/gzip" => self.add(&body, filename, depth + 1),
            _ => {
                self.parts.push(Part {
                    content_type: mimetype,
                    filename,
                    body,
                });
                Ok(())
            }
        }
    }

    /// User-data as a user gives it, checked: refused when cloud-init's schema finds errors
    /// (warnings pass), each error as `LABEL:LINE:COLUMN: path: message`, where `label` names
    /// where the bytes came from (a file, a request field). `zoneinfo` is where timezones are
    /// looked up.
    pub fn accept(
        data: &[u8],
        label: &str,
        zoneinfo: Option<&std::path::Path>,
    ) -> Result<UserData, String> {
        let (_, problems) = crate::userdata::validate_bytes(data, zoneinfo);
        let errors: Vec<String> = problems
            .iter()
            .filter(|x| x.severity == crate::schema::Severity::Error)
            .map(|x| {
                let path = if x.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", x.path)
                };
                format!("{label}:{}:{}: {path}{}", x.line, x.column, x.message)
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "the cloud-config has errors; nothing was created:\n{}",
                errors.join("\n")
            ));
        }
        UserData::split(data).map_err(|e| format!("{label}: {e}"))
    }

    /// berth's configuration merged with the user's cloud-config parts (a later part's keys
    /// replace an earlier one's, as cloud-init's default merge does), user winning over berth.
    pub fn merged(&self, berth: &GuestConfig) -> Map<String, Value> {
        let mut theirs = Map::new();
        for c in &self.cloud_configs {
            for (k, v) in c {
                theirs.insert(k.clone(), v.clone());
            }
        }
        config::merge_map(berth, theirs)
    }
}

/// gzip inside MIME inside gzip... ends somewhere.
fn check_depth(depth: u32) -> Result<(), ComposeError> {
    if depth > MAX_DEPTH {
        return Err(ComposeError::Unrecognised(format!(
            "user-data nests gzip or MIME archives more than {MAX_DEPTH} deep"
        )));
    }
    Ok(())
}

/// The user-data for the guest: `merged` as `#cloud-config`, followed by `parts` in a MIME
/// multipart archive when there are any.
pub fn render(merged: &Map<String, Value>, parts: &[Part]) -> String {
    let cloud_config = config::render(merged);
    if parts.is_empty() {
        return cloud_config;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut encoded: Vec<String> = Vec::new();
    for p in parts {
        let mut lines = String::new();
        for chunk in b64.encode(&p.body).as_bytes().chunks(76) {
            lines.push_str(&String::from_utf8_lossy(chunk));
            lines.push('\n');
        }
        encoded.push(lines);
    }
    // A boundary found in no part: base64 has no '=' before its end and no '-', so only the
    // cloud-config text could hold it.
    let mut n = 0u32;
    let boundary = loop {
        let b = format!("==berth-{n}==");
        if !cloud_config.contains(&b) {
            break b;
        }
        n += 1;
    };
    let mut out = format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
         --{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\
         Content-Disposition: attachment; filename=\"berth.cfg\"\n\n{cloud_config}"
    );
    for (i, (p, body)) in parts.iter().zip(&encoded).enumerate() {
        let name = p
            .filename
            .as_deref()
            .filter(|f| !f.contains(['"', '\n', '\r', '/']))
            .map(str::to_string)
            .unwrap_or_else(|| format!("part-{:03}", i + 1));
        out.push_str(&format!(
            "--{boundary}\nContent-Type: {}\nContent-Transfer-Encoding: base64\n\
             Content-Disposition: attachment; filename=\"{name}\"\n\n{body}",
            p.content_type
        ));
    }
    out.push_str(&format!("--{boundary}--\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::User;
    use crate::schema::Severity;
    use crate::userdata::validate_bytes;

    fn berth() -> GuestConfig {
        GuestConfig {
            hostname: Some("g1".into()),
            users: vec![User {
                name: "berth".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA berth".into()],
                sudo: None,
                shell: None,
                groups: Vec::new(),
                lock_passwd: Some(true),
            }],
            ..GuestConfig::default()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    }

    /// What cloud-init gets: valid user-data, with berth's user in its cloud-config.
    fn composed(data: &[u8]) -> (Map<String, Value>, Vec<u8>, UserData) {
        let u = UserData::split(data).unwrap();
        let merged = u.merged(&berth());
        let out = render(&merged, &u.parts).into_bytes();
        let (_, problems) = validate_bytes(&out, None);
        assert!(
            problems.iter().all(|p| p.severity != Severity::Error),
            "{problems:?}\n{}",
            String::from_utf8_lossy(&out)
        );
        let users = merged["users"].as_array().unwrap();
        assert!(users.iter().any(|u| u["name"] == "berth"), "{merged:?}");
        (merged, out, u)
    }

    fn reparsed(out: &[u8]) -> UserData {
        UserData::split(out).unwrap()
    }

    #[test]
    fn a_plain_cloud_config_stays_plain() {
        let (merged, out, _) = composed(b"#cloud-config\nhostname: web\npackages: [vim]\n");
        assert!(out.starts_with(b"#cloud-config\n"));
        assert_eq!(merged["hostname"], "web");
    }

    #[test]
    fn a_script_becomes_a_part_beside_berths_cloud_config() {
        let script = b"#!/bin/sh\necho hi > /root/ran\n";
        let (_, out, u) = composed(script);
        assert!(u.cloud_configs.is_empty());
        assert_eq!(u.parts[0].content_type, "text/x-shellscript");
        let back = reparsed(&out);
        assert_eq!(back.parts.len(), 1);
        assert_eq!(back.parts[0].body, script);
        assert_eq!(back.parts[0].content_type, "text/x-shellscript");
        assert_eq!(back.cloud_configs.len(), 1, "berth's own");
    }

    #[test]
    fn every_plain_kind_is_passed_on() {
        for (text, ctype) in [
            (
                &b"#include\nhttps://example.invalid/a\n"[..],
                "text/x-include-url",
            ),
            (
                b"#include-once\nhttps://example.invalid/a\n",
                "text/x-include-once-url",
            ),
            (b"#cloud-boothook\n#!/bin/sh\ntrue\n", "text/cloud-boothook"),
            (
                b"## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n",
                "text/jinja2",
            ),
            (
                b"#part-handler\ndef list_types():\n  return []\n",
                "text/part-handler",
            ),
        ] {
            let u = UserData::split(text).unwrap();
            assert_eq!(u.parts[0].content_type, ctype);
            let out = render(&u.merged(&berth()), &u.parts);
            assert_eq!(reparsed(out.as_bytes()).parts[0].body, text);
        }
        assert!(matches!(
            UserData::split(b"hello"),
            Err(ComposeError::Unrecognised(_))
        ));
        assert!(UserData::split(b"#cloud-config\n- a list\n").is_err());
    }

    #[test]
    fn gzip_and_multipart_are_taken_apart_and_their_cloud_configs_merged() {
        let mime = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n\
                    --XX\nContent-Type: text/cloud-config\n\n#cloud-config\nhostname: one\n\
                    users: [alice]\n\
                    --XX\nContent-Type: text/x-shellscript\nContent-Disposition: attachment; \
                    filename=\"setup.sh\"\n\n#!/bin/sh\necho hi\n\
                    --XX\nContent-Type: text/cloud-config\nContent-Transfer-Encoding: base64\n\n\
                    I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogdHdvCg==\n\
                    --XX--\n";
        let (merged, out, u) = composed(&gzip(mime.as_bytes()));
        assert_eq!(u.cloud_configs.len(), 2);
        // The later part wins, as cloud-init merges parts; the user's users keep berth's.
        assert_eq!(merged["hostname"], "two");
        let names: Vec<_> = merged["users"].as_array().unwrap().iter().collect();
        assert!(names.iter().any(|n| *n == "alice"), "{names:?}");
        let back = reparsed(&out);
        assert_eq!(back.parts.len(), 1);
        assert_eq!(back.parts[0].filename.as_deref(), Some("setup.sh"));
        assert!(String::from_utf8_lossy(&out).contains("filename=\"setup.sh\""));
    }

    #[test]
    fn hostile_archives_end_in_errors() {
        let mut bomb = b"#cloud-config\n".to_vec();
        bomb.extend(std::iter::repeat_n(b'#', (MAX_DECOMPRESSED + 10) as usize));
        assert!(UserData::split(&gzip(&bomb)).is_err());
        let mut nested = b"#!/bin/sh\n".to_vec();
        for _ in 0..10 {
            nested = gzip(&nested);
        }
        assert!(UserData::split(&nested).is_err());
        assert!(UserData::split(&[0xff, 0xfe, 0]).is_err());
    }
}
