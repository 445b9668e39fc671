//! `#cloud-config` validation with cloud-init's own JSON schema (see `schema/README.md`), so the
//! verdict is cloud-init's. On top: positions (`LINE:COLUMN`) and key paths for every problem,
//! warnings for unknown top-level keys and unknown time zones, and notes for deprecated keys
//! with their successor.

use crate::yaml::{self, Document, Mark};
use serde_json::Value;
use std::sync::OnceLock;

/// cloud-init 22.4.2's schema, vendored.
pub const SCHEMA_JSON: &str = include_str!("../schema/schema-cloud-config-v1.json");

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// cloud-init rejects the file.
    Error,
    /// cloud-init accepts it, but it is probably not what was meant.
    Warning,
    /// Accepted; for information (deprecations).
    Note,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Severity.
    pub severity: Severity,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// Key path as cloud-init prints it (`users.0.sudo`), empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| serde_json::from_str(SCHEMA_JSON).expect("the vendored schema is valid JSON"))
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        // Python's FormatChecker checks "date" always; "uri" and "hostname" only with optional
        // libraries that Debian's cloud-init does not pull in, so they are not checked there.
        jsonschema::draft4::options()
            .should_validate_formats(true)
            .with_format("date", |s: &str| is_iso_date(s))
            .with_format("uri", |_: &str| true)
            .with_format("hostname", |_: &str| true)
            .build(schema())
            .expect("the vendored schema compiles")
    })
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (
        s[0..4].parse::<u32>(),
        s[5..7].parse::<u32>(),
        s[8..10].parse::<u32>(),
    ) else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1 && (1..=days).contains(&d)
}

fn dotted(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

fn problem(doc: Option<&Document>, severity: Severity, pointer: &str, message: String) -> Problem {
    let mark = doc
        .map(|d| d.mark_of(pointer))
        .unwrap_or(Mark { line: 1, col: 1 });
    Problem {
        severity,
        line: mark.line,
        column: mark.col,
        path: dotted(pointer),
        message,
    }
}

/// Every top-level key some module of the schema knows.
fn known_top_level() -> &'static Vec<String> {
    static K: OnceLock<Vec<String>> = OnceLock::new();
    K.get_or_init(|| {
        let s = schema();
        let mut out = Vec::new();
        for part in s["allOf"].as_array().into_iter().flatten() {
            let Some(r) = part["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                continue;
            };
            if let Some(props) = s["$defs"][r]["properties"].as_object() {
                out.extend(props.keys().cloned());
            }
        }
        out
    })
}

fn resolve_ref(v: &Value) -> &Value {
    match v
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => &schema()["$defs"][name],
        None => v,
    }
}

/// Walk instance and schema together along properties, items and allOf/$ref, noting keys whose
/// schema is marked deprecated.
fn deprecations(
    inst: &Value,
    sch: &Value,
    ptr: &str,
    out: &mut Vec<(String, String)>,
    depth: usize,
) {
    if depth > 12 {
        return;
    }
    let sch = resolve_ref(sch);
    for sub in sch
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        deprecations(inst, sub, ptr, out, depth + 1);
    }
    match inst {
        Value::Object(map) => {
            for (k, v) in map {
                let child = format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1"));
                if let Some(ps) = sch.get("properties").and_then(|p| p.get(k)) {
                    let ps = resolve_ref(ps);
                    if ps.get("deprecated").and_then(Value::as_bool) == Some(true) {
                        let why = ps
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("deprecated")
                            .replace("``", "");
                        out.push((child.clone(), format!("deprecated: {why}")));
                    }
                    deprecations(v, ps, &child, out, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = sch.get("items") {
                for (i, v) in items.iter().enumerate() {
                    deprecations(v, is, &format!("{ptr}/{i}"), out, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// Validate `#cloud-config` text. Problems are sorted by position.
pub fn validate_cloud_config(text: &str, zoneinfo: Option<&std::path::Path>) -> Vec<Problem> {
    let mut out = Vec::new();
    if !text.starts_with("#cloud-config") {
        out.push(Problem {
            severity: Severity::Error,
            line: 1,
            column: 1,
            path: String::new(),
            message: "a cloud-config must begin with \"#cloud-config\"".into(),
        });
        return out;
    }
    let doc = match yaml::load(text) {
        Ok(d) => d,
        Err(e) => {
            out.push(Problem {
                severity: Severity::Error,
                line: e.mark.line,
                column: e.mark.col,
                path: String::new(),
                message: format!("invalid YAML: {}", e.message),
            });
            return out;
        }
    };
    let Value::Object(top) = &doc.value else {
        let what = if doc.value.is_null() {
            "empty"
        } else {
            "not a mapping of keys to values"
        };
        out.push(problem(
            Some(&doc),
            Severity::Error,
            "",
            format!("the cloud-config is {what} (cloud-init needs a YAML dict)"),
        ));
        return out;
    };
    for err in validator().iter_errors(&doc.value) {
        let ptr = err.instance_path.as_str().to_string();
        out.push(problem(Some(&doc), Severity::Error, &ptr, err.to_string()));
    }
    for k in top.keys() {
        if !known_top_level().iter().any(|n| n == k) {
            let ptr = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
            let mut p = problem(
                Some(&doc),
                Severity::Warning,
                &ptr,
                format!("unknown key {k:?}: no cloud-init module reads it"),
            );
            if let Some(m) = doc.key_marks.get(&ptr) {
                p.line = m.line;
                p.column = m.col;
            }
            out.push(p);
        }
    }
    if let (Some(Value::String(tz)), Some(dir)) = (top.get("timezone"), zoneinfo) {
        let known =
            !tz.is_empty() && !tz.contains("..") && !tz.starts_with('/') && dir.join(tz).is_file();
        if !known {
            out.push(problem(
                Some(&doc),
                Severity::Warning,
                "/timezone",
                format!(
                    "time zone {tz:?} is not in tzdata ({}); the guest will keep UTC",
                    dir.display()
                ),
            ));
        }
    }
    let mut deps = Vec::new();
    deprecations(&doc.value, schema(), "", &mut deps, 0);
    for (ptr, why) in deps {
        let mut p = problem(Some(&doc), Severity::Note, &ptr, why);
        if let Some(m) = doc.key_marks.get(&ptr) {
            p.line = m.line;
            p.column = m.col;
        }
        out.push(p);
    }
    out.sort_by_key(|p| (p.line, p.column, p.severity));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<Problem> {
        validate_cloud_config(text, None)
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .collect()
    }

    #[test]
    fn the_mission_example_is_valid_with_deprecation_notes() {
        let text = "#cloud-config\ntimezone: Africa/Dar_es_Salaam\nhostname: test-system\n\n# update\napt_update: true\napt_upgrade: true\n\npackages:\n- nginx\n";
        let all = validate_cloud_config(text, None);
        assert!(all.iter().all(|p| p.severity != Severity::Error), "{all:?}");
        let notes: Vec<_> = all
            .iter()
            .filter(|p| p.severity == Severity::Note)
            .collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(
            (notes[0].line, notes[0].column, notes[0].path.as_str()),
            (6, 1, "apt_update")
        );
        assert!(
            notes[0].message.contains("package_update"),
            "{}",
            notes[0].message
        );
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let e = errors("#cloud-config\nusers:\n  - name: bob\n    lock_passwd: maybe\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 3, "{e:?}");
        let e = errors("#cloud-config\nhostname: 123\n");
        assert_eq!(
            (e[0].line, e[0].column, e[0].path.as_str()),
            (2, 11, "hostname")
        );
    }

    #[test]
    fn unknown_keys_warn_and_bad_headers_fail() {
        let all = validate_cloud_config("#cloud-config\nhostnam: x\n", None);
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].severity, all[0].line, all[0].column),
            (Severity::Warning, 2, 1)
        );
        assert_eq!(errors("hostname: x\n").len(), 1);
        assert_eq!(errors("#cloud-config\n").len(), 1);
        assert_eq!(errors("#cloud-config\n- a\n").len(), 1);
    }

    #[test]
    fn dates_are_checked_like_python() {
        assert!(is_iso_date("2024-02-29"));
        assert!(!is_iso_date("2023-02-29"));
        assert!(!is_iso_date("2020-13-01"));
    }
}
