//! user-data as cloud-init reads it: `#cloud-config`, `#!` scripts, `#include` lists,
//! `#cloud-boothook`, jinja templates, gzip, and multipart MIME archives whose parts are any of
//! these. Each part is checked by its kind; cloud-config parts get the full schema check, with
//! positions relative to the whole file where the part is stored as plain text.

use crate::schema::{validate_cloud_config, Problem, Severity};
use base64::Engine;
use std::io::Read;
use std::path::Path;

/// What a user-data part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `#cloud-config`
    CloudConfig,
    /// `#!...` script
    Script,
    /// `#include` / `#include-once` URL list
    Include,
    /// `#cloud-boothook`
    Boothook,
    /// `## template: jinja`
    JinjaTemplate,
    /// `#cloud-config-archive`
    Archive,
    /// `#part-handler`
    PartHandler,
    /// MIME multipart
    Multipart,
    /// Not something cloud-init acts on.
    Unknown,
}

/// Detect the kind from the start of the text.
pub fn detect(text: &str) -> Kind {
    let first = text.lines().next().unwrap_or("").trim_end();
    if first.starts_with("#cloud-config-archive") {
        Kind::Archive
    } else if first.starts_with("#cloud-config") {
        Kind::CloudConfig
    } else if first.starts_with("#!") {
        Kind::Script
    } else if first.starts_with("#include") {
        Kind::Include
    } else if first.starts_with("#cloud-boothook") {
        Kind::Boothook
    } else if first.to_ascii_lowercase().starts_with("## template:") {
        Kind::JinjaTemplate
    } else if first.starts_with("#part-handler") {
        Kind::PartHandler
    } else if text.lines().take(20).any(|l| {
        l.to_ascii_lowercase().starts_with("content-type:")
            && l.to_ascii_lowercase().contains("multipart/")
    }) {
        Kind::Multipart
    } else {
        Kind::Unknown
    }
}

fn shift(mut ps: Vec<Problem>, line_offset: usize, note: Option<&str>) -> Vec<Problem> {
    for p in &mut ps {
        p.line += line_offset;
        if let Some(n) = note {
            p.message = format!("{n}: {}", p.message);
        }
    }
    ps
}

fn error(line: usize, message: impl Into<String>) -> Problem {
    Problem {
        severity: Severity::Error,
        line,
        column: 1,
        path: String::new(),
        message: message.into(),
    }
}

/// Validate user-data bytes. `zoneinfo` is the tzdata folder for time zone checks.
pub fn validate_bytes(data: &[u8], zoneinfo: Option<&Path>) -> (Kind, Vec<Problem>) {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(data)
            .take(64 << 20)
            .read_to_end(&mut text)
        {
            return (
                Kind::Unknown,
                vec![error(
                    1,
                    format!("gzip-compressed user-data does not decompress: {e}"),
                )],
            );
        }
        let (k, ps) = validate_bytes(&text, zoneinfo);
        return (k, shift(ps, 0, Some("in the gzip-compressed content")));
    }
    match std::str::from_utf8(data) {
        Ok(text) => validate_text(text, zoneinfo),
        Err(e) => (
            Kind::Unknown,
            vec![error(
                1,
                format!("user-data is not UTF-8 text (byte {})", e.valid_up_to()),
            )],
        ),
    }
}

/// Validate user-data text.
pub fn validate_text(text: &str, zoneinfo: Option<&Path>) -> (Kind, Vec<Problem>) {
    let kind = detect(text);
    let problems = match kind {
        Kind::CloudConfig => validate_cloud_config(text, zoneinfo),
        Kind::Script | Kind::Boothook | Kind::PartHandler => Vec::new(),
        Kind::Include => validate_include(text),
        Kind::JinjaTemplate => vec![Problem {
            severity: Severity::Note,
            line: 1,
            column: 1,
            path: String::new(),
            message: "jinja templates are rendered by cloud-init in the guest; berth does not check the rendered result".into(),
        }],
        Kind::Archive => validate_archive(text, zoneinfo),
        Kind::Multipart => validate_multipart(text, zoneinfo),
        Kind::Unknown => vec![error(1, "unrecognised user-data: it must start with #cloud-config, #!, #include, #cloud-boothook, ## template: jinja, or be a MIME multipart archive (cloud-init would ignore it)")],
    };
    (kind, problems)
}

fn validate_include(text: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if !(l.starts_with("http://") || l.starts_with("https://") || l.starts_with("file://")) {
            out.push(error(
                i + 1,
                format!("#include line {l:?} is not an http(s):// or file:// URL"),
            ));
        }
    }
    out
}

fn validate_archive(text: &str, zoneinfo: Option<&Path>) -> Vec<Problem> {
    let doc = match crate::yaml::load(text) {
        Ok(d) => d,
        Err(e) => {
            return vec![Problem {
                severity: Severity::Error,
                line: e.mark.line,
                column: e.mark.col,
                path: String::new(),
                message: format!("invalid YAML: {}", e.message),
            }]
        }
    };
    let Some(parts) = doc.value.as_array() else {
        return vec![error(
            1,
            "#cloud-config-archive must be a YAML list of parts",
        )];
    };
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let ptr = format!("/{i}");
        let mark = doc.mark_of(&ptr);
        let content = match part {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => match o.get("content") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => {
                    out.push(error(
                        mark.line,
                        format!("archive part {i} has no string 'content'"),
                    ));
                    continue;
                }
            },
            _ => {
                out.push(error(
                    mark.line,
                    format!("archive part {i} must be a string or a mapping"),
                ));
                continue;
            }
        };
        let (_, ps) = validate_text(&content, zoneinfo);
        out.extend(shift(
            ps,
            0,
            Some(&format!("in archive part {i} (line {})", mark.line)),
        ));
    }
    out
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Parse headers starting at `lines[start]`; returns them and the index of the first body line.
fn parse_headers(lines: &[&str], start: usize) -> (Vec<(String, String)>, usize) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut i = start;
    while i < lines.len() {
        let l = lines[i].trim_end_matches('\r');
        if l.is_empty() {
            return (headers, i + 1);
        }
        if l.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(l.trim());
            }
        } else if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        i += 1;
    }
    (headers, i)
}

fn validate_multipart(text: &str, zoneinfo: Option<&Path>) -> Vec<Problem> {
    let lines: Vec<&str> = text.split('\n').collect();
    let (headers, body_start) = parse_headers(&lines, 0);
    let Some(ctype) = header_value(&headers, "Content-Type") else {
        return vec![error(1, "MIME user-data without a Content-Type header")];
    };
    let Some(boundary) = param(ctype, "boundary") else {
        return vec![error(1, "multipart Content-Type without a boundary")];
    };
    let delim = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut out = Vec::new();
    let mut starts = Vec::new();
    let mut end_seen = false;
    for (i, l) in lines.iter().enumerate().skip(body_start) {
        let l = l.trim_end_matches('\r').trim_end();
        if l == close {
            starts.push(i);
            end_seen = true;
            break;
        }
        if l == delim {
            starts.push(i);
        }
    }
    if !end_seen {
        out.push(Problem {
            severity: Severity::Warning,
            line: lines.len(),
            column: 1,
            path: String::new(),
            message: format!("multipart archive has no closing boundary {close:?}"),
        });
        starts.push(lines.len());
    }
    if starts.len() < 2 {
        out.push(error(body_start + 1, "multipart archive has no parts"));
        return out;
    }
    for w in starts.windows(2) {
        let (hdrs, body) = parse_headers(&lines, w[0] + 1);
        let part_body = lines[body.min(w[1])..w[1]].join("\n");
        let ptype = header_value(&hdrs, "Content-Type")
            .unwrap_or("text/plain")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let encoding = header_value(&hdrs, "Content-Transfer-Encoding")
            .unwrap_or("")
            .to_ascii_lowercase();
        let (content, offset, note) = if encoding == "base64" {
            let raw: String = part_body.split_whitespace().collect();
            match base64::engine::general_purpose::STANDARD.decode(raw) {
                Ok(b) => (
                    String::from_utf8_lossy(&b).into_owned(),
                    0,
                    Some(format!("in the base64 part starting at line {}", w[0] + 1)),
                ),
                Err(e) => {
                    out.push(error(body + 1, format!("part is not valid base64: {e}")));
                    continue;
                }
            }
        } else {
            (part_body, body, None)
        };
        let ps = match ptype.as_str() {
            "text/cloud-config" => {
                let content = if content.starts_with("#cloud-config") {
                    content
                } else {
                    format!("#cloud-config\n{content}")
                };
                validate_cloud_config(&content, zoneinfo)
            }
            "text/x-shellscript"
            | "text/cloud-boothook"
            | "text/part-handler"
            | "text/x-shellscript-per-boot"
            | "text/x-shellscript-per-instance"
            | "text/x-shellscript-per-once" => Vec::new(),
            "text/x-include-url" | "text/x-include-once-url" => {
                validate_include(&format!("#include\n{content}"))
            }
            "text/jinja2" | "text/cloud-config-archive" | "text/x-include-url-once" => {
                validate_text(&content, zoneinfo).1
            }
            "text/plain" | "text/x-not-multipart" => validate_text(&content, zoneinfo).1,
            other => vec![Problem {
                severity: Severity::Warning,
                line: w[0] + 1,
                column: 1,
                path: String::new(),
                message: format!(
                    "part of type {other:?} is not handled by cloud-init's default handlers"
                ),
            }],
        };
        out.extend(shift(ps, offset, note.as_deref()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds() {
        assert_eq!(detect("#cloud-config\n"), Kind::CloudConfig);
        assert_eq!(detect("#!/bin/sh\necho\n"), Kind::Script);
        assert_eq!(detect("#include\nhttps://x\n"), Kind::Include);
        assert_eq!(
            detect("Content-Type: multipart/mixed; boundary=\"X\"\n"),
            Kind::Multipart
        );
        assert_eq!(detect("hello"), Kind::Unknown);
    }

    #[test]
    fn multipart_parts_are_checked_with_file_positions() {
        let text = "Content-Type: multipart/mixed; boundary=\"==B==\"\nMIME-Version: 1.0\n\n--==B==\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--==B==\nContent-Type: text/cloud-config\n\n#cloud-config\nhostname: 42\n--==B==--\n";
        let (kind, ps) = validate_text(text, None);
        assert_eq!(kind, Kind::Multipart);
        let errs: Vec<_> = ps
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect();
        assert_eq!(errs.len(), 1, "{ps:?}");
        assert_eq!(errs[0].line, 13, "{errs:?}");
    }

    #[test]
    fn includes_need_urls_and_gzip_is_opened() {
        let (_, ps) = validate_text("#include\nhttps://example.invalid/a\nnot a url\n", None);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].line, 3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, b"#cloud-config\nhostname: 7\n").unwrap();
        let (kind, ps) = validate_bytes(&gz.finish().unwrap(), None);
        assert_eq!(kind, Kind::CloudConfig);
        assert_eq!(ps.len(), 1);
    }
}
