//! YAML as cloud-init reads it (PyYAML `safe_load`, YAML 1.1 scalars: `yes`/`on` are booleans,
//! `0o17`-style octals are not, `010` is octal, `1:30` is sexagesimal), into JSON values for the
//! schema check, keeping the line and column of every node so errors point into the file.

use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// A YAML syntax or construction error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where.
    pub mark: Mark,
    /// What.
    pub message: String,
}

/// A loaded document: its value, and where each node (by JSON pointer) starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The value (`null` for an empty document).
    pub value: Value,
    /// JSON pointer -> position of the node's value.
    pub marks: BTreeMap<String, Mark>,
    /// JSON pointer -> position of the mapping key that leads to the node.
    pub key_marks: BTreeMap<String, Mark>,
}

impl Document {
    /// The position for a JSON pointer: the node itself, or its nearest ancestor.
    pub fn mark_of(&self, pointer: &str) -> Mark {
        let mut p = pointer.to_string();
        loop {
            if let Some(m) = self.marks.get(&p).or_else(|| self.key_marks.get(&p)) {
                return *m;
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return Mark { line: 1, col: 1 },
            }
        }
    }
}

fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Map {
        map: Map<String, Value>,
        key: Option<(String, Mark)>,
        ptr: String,
        anchor: usize,
        merges: Vec<Value>,
    },
    Seq {
        items: Vec<Value>,
        ptr: String,
        anchor: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    /// Anchored values with their weight (see [`weight`]).
    anchors: BTreeMap<usize, (Value, usize)>,
    /// The weight that aliases have added so far.
    expanded: usize,
    root: Option<Value>,
    docs: usize,
    marks: BTreeMap<String, Mark>,
    key_marks: BTreeMap<String, Mark>,
    error: Option<YamlError>,
}

/// How much alias expansion a document may add: 4 Mi of nodes plus string bytes, the size of the
/// largest user-data berth reads (`berth_files::input::USER_DATA_CAP`) written out in full.
pub const MAX_ALIAS_EXPANSION: usize = 4 << 20;

/// A value's size for the alias bound: one per node, plus the bytes of its strings and keys.
fn weight(v: &Value) -> usize {
    match v {
        Value::String(s) => 1 + s.len(),
        Value::Array(a) => a.iter().fold(1usize, |n, x| n.saturating_add(weight(x))),
        Value::Object(o) => o.iter().fold(1usize, |n, (k, x)| {
            n.saturating_add(k.len()).saturating_add(weight(x))
        }),
        _ => 1,
    }
}

fn to_mark(m: Marker) -> Mark {
    Mark {
        line: m.line(),
        col: m.col() + 1,
    }
}

/// PyYAML's implicit resolution of a plain scalar.
pub fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    if let Some(n) = resolve_int(s) {
        return n;
    }
    if let Some(f) = resolve_float(s) {
        return f;
    }
    if is_timestamp(s) {
        // A datetime in Python: not a string, so string-typed fields reject it as cloud-init does.
        return serde_json::json!({ "$yaml-timestamp": s });
    }
    Value::String(s.to_string())
}

fn resolve_int(s: &str) -> Option<Value> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return None;
    }
    let clean: String = body.chars().filter(|&c| c != '_').collect();
    let parsed: Option<i128> = if let Some(b) = body.strip_prefix("0b") {
        (!b.is_empty() && b.chars().all(|c| c == '0' || c == '1' || c == '_'))
            .then(|| i128::from_str_radix(&clean[2..], 2).ok())?
    } else if let Some(h) = body.strip_prefix("0x") {
        (!h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '_'))
            .then(|| i128::from_str_radix(&clean[2..], 16).ok())?
    } else if body.len() > 1 && body.starts_with('0') {
        body.chars()
            .all(|c| ('0'..='7').contains(&c) || c == '_')
            .then(|| i128::from_str_radix(&clean, 8).ok())?
    } else if body.contains(':') {
        // Sexagesimal: [1-9][0-9_]*(:[0-5]?[0-9])+
        let mut parts = body.split(':');
        let first = parts.next()?;
        if first.is_empty()
            || first.starts_with('0')
            || !first.chars().all(|c| c.is_ascii_digit() || c == '_')
        {
            return None;
        }
        let mut v: i128 = first.replace('_', "").parse().ok()?;
        for p in parts {
            if p.is_empty()
                || p.len() > 2
                || !p.chars().all(|c| c.is_ascii_digit())
                || p.parse::<u32>().ok()? > 59
                || (p.len() == 2 && p.as_bytes()[0] > b'5')
            {
                return None;
            }
            v = v * 60 + p.parse::<i128>().ok()?;
        }
        Some(v)
    } else if body == "0"
        || (body.as_bytes()[0].is_ascii_digit()
            && body.as_bytes()[0] != b'0'
            && body.chars().all(|c| c.is_ascii_digit() || c == '_'))
    {
        clean.parse().ok()
    } else {
        None
    };
    let v = parsed?;
    let v = if neg { -v } else { v };
    Some(match i64::try_from(v) {
        Ok(i) => Value::Number(Number::from(i)),
        Err(_) => Number::from_f64(v as f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
    })
}

fn resolve_float(s: &str) -> Option<Value> {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let neg = s.starts_with('-');
    let special = match body {
        ".inf" | ".Inf" | ".INF" => Some(f64::MAX),
        ".nan" | ".NaN" | ".NAN" if body.len() == s.len() => Some(0.0),
        _ => None,
    };
    if let Some(v) = special {
        // JSON has no inf/nan; any number keeps the type check right.
        return Number::from_f64(if neg { -v } else { v }).map(Value::Number);
    }
    // [0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)? | \.[0-9_]+([eE][-+][0-9]+)?
    let (mant, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let dot = mant.find('.')?;
    let (int, frac) = (&mant[..dot], &mant[dot + 1..]);
    let int_ok = if int.is_empty() {
        !frac.is_empty() && frac.as_bytes()[0].is_ascii_digit()
    } else {
        int.as_bytes()[0].is_ascii_digit() && int.chars().all(|c| c.is_ascii_digit() || c == '_')
    };
    if !int_ok || !frac.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    if let Some(e) = exp {
        let digits = e.strip_prefix(['-', '+'])?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    let text: String = s.chars().filter(|&c| c != '_').collect();
    let v: f64 = text.parse().ok()?;
    Number::from_f64(v).map(Value::Number)
}

fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[0..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5].is_ascii_digit()
        && (b[6] == b'-' || (b[6].is_ascii_digit() && b[7] == b'-'))
        && (b.len() == 10 && b[8..10].iter().all(u8::is_ascii_digit)
            || b.len() > 10
                && s[8..].chars().next().is_some_and(|c| c.is_ascii_digit())
                && (s.contains('T') || s.contains('t') || s.contains(' ') || s.contains(':')))
}

impl Builder {
    fn fail(&mut self, mark: Mark, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                mark,
                message: message.into(),
            });
        }
    }

    fn child_ptr(&self) -> Option<(String, Option<Mark>)> {
        match self.stack.last() {
            None => Some((String::new(), None)),
            Some(Frame::Seq { items, ptr, .. }) => Some((format!("{ptr}/{}", items.len()), None)),
            Some(Frame::Map {
                key: Some((k, km)),
                ptr,
                ..
            }) => Some((format!("{ptr}/{}", escape(k)), Some(*km))),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    /// Deliver a finished value to its parent (or as the root).
    fn deliver(&mut self, v: Value, mark: Mark, anchor: usize) {
        if anchor != 0 {
            let w = weight(&v);
            self.anchors.insert(anchor, (v.clone(), w));
        }
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map {
                map, key, merges, ..
            }) => match key.take() {
                None => {
                    let k = match &v {
                        Value::String(s) => s.clone(),
                        Value::Null => "null".into(),
                        other => other.to_string(),
                    };
                    *key = Some((k, mark));
                }
                Some((k, _)) if k == "<<" => merges.push(v),
                Some((k, _)) => {
                    map.insert(k, v);
                }
            },
        }
    }

    fn scalar_value(
        &mut self,
        s: String,
        style: TScalarStyle,
        tag: Option<Tag>,
        mark: Mark,
    ) -> Value {
        match tag {
            Some(t) if t.handle == "!!" || t.handle == "tag:yaml.org,2002:" => {
                match t.suffix.as_str() {
                    "str" | "binary" => Value::String(s),
                    "int" => resolve_int(&s).unwrap_or_else(|| {
                        self.fail(mark, format!("invalid literal for !!int: {s:?}"));
                        Value::Null
                    }),
                    "float" => resolve_float(&s)
                        .or_else(|| resolve_int(&s))
                        .unwrap_or_else(|| {
                            self.fail(mark, format!("invalid literal for !!float: {s:?}"));
                            Value::Null
                        }),
                    "bool" => match resolve_plain(&s) {
                        Value::Bool(b) => Value::Bool(b),
                        _ => {
                            self.fail(mark, format!("invalid literal for !!bool: {s:?}"));
                            Value::Null
                        }
                    },
                    "null" => Value::Null,
                    other => {
                        self.fail(
                            mark,
                            format!("could not determine a constructor for the tag '!!{other}'"),
                        );
                        Value::Null
                    }
                }
            }
            Some(t) if t.handle == "!" && t.suffix.is_empty() => Value::String(s),
            Some(t) => {
                self.fail(
                    mark,
                    format!(
                        "could not determine a constructor for the tag '{}{}'",
                        t.handle, t.suffix
                    ),
                );
                Value::Null
            }
            None if style == TScalarStyle::Plain => resolve_plain(&s),
            None => Value::String(s),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        let mark = to_mark(marker);
        match ev {
            Event::DocumentStart => {
                self.docs += 1;
                if self.docs > 1 {
                    self.fail(
                        mark,
                        "expected a single document in the stream, but found another document",
                    );
                }
            }
            Event::Scalar(s, style, anchor, tag) => {
                let v = self.scalar_value(s, style, tag, mark);
                if let Some((ptr, km)) = self.child_ptr() {
                    self.marks.insert(ptr.clone(), mark);
                    if let Some(km) = km {
                        self.key_marks.insert(ptr, km);
                    }
                }
                self.deliver(v, mark, anchor);
            }
            Event::Alias(id) => {
                let Some((v, w)) = self.anchors.get(&id).cloned() else {
                    self.fail(mark, "found undefined alias");
                    return;
                };
                // Each alias is a copy here (PyYAML shares one object): bound what copies add,
                // so that a "billion laughs" document ends in an error, not in all memory.
                self.expanded = self.expanded.saturating_add(w);
                if self.expanded > MAX_ALIAS_EXPANSION {
                    self.fail(
                        mark,
                        format!(
                            "aliases expand to more than {MAX_ALIAS_EXPANSION} nodes and bytes                              (an alias bomb?); berth refuses such a document"
                        ),
                    );
                    return;
                }
                if let Some((ptr, _)) = self.child_ptr() {
                    self.marks.insert(ptr, mark);
                }
                self.deliver(v, mark, 0);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let Some((ptr, km)) = self.child_ptr() else {
                    self.fail(
                        mark,
                        "found a complex (sequence or mapping) key, which cloud-config cannot use",
                    );
                    return;
                };
                self.marks.insert(ptr.clone(), mark);
                if let Some(km) = km {
                    self.key_marks.insert(ptr.clone(), km);
                }
                if matches!(ev, Event::SequenceStart(..)) {
                    self.stack.push(Frame::Seq {
                        items: Vec::new(),
                        ptr,
                        anchor,
                    });
                } else {
                    self.stack.push(Frame::Map {
                        map: Map::new(),
                        key: None,
                        ptr,
                        anchor,
                        merges: Vec::new(),
                    });
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    self.deliver(Value::Array(items), mark, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut map,
                    anchor,
                    merges,
                    ..
                }) = self.stack.pop()
                {
                    for m in merges {
                        let sources = match m {
                            Value::Array(a) => a,
                            other => vec![other],
                        };
                        for src in sources {
                            match src {
                                Value::Object(o) => {
                                    for (k, v) in o {
                                        map.entry(k).or_insert(v);
                                    }
                                }
                                _ => self.fail(
                                    mark,
                                    "expected a mapping or list of mappings for merging",
                                ),
                            }
                        }
                    }
                    self.deliver(Value::Object(map), mark, anchor);
                }
            }
            _ => {}
        }
    }
}

/// Load one YAML document as PyYAML's `safe_load` would.
pub fn load(text: &str) -> Result<Document, YamlError> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: BTreeMap::new(),
        expanded: 0,
        root: None,
        docs: 0,
        marks: BTreeMap::new(),
        key_marks: BTreeMap::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        let m = e.marker();
        return Err(YamlError {
            mark: Mark {
                line: m.line(),
                col: m.col() + 1,
            },
            message: e.info().to_string(),
        });
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(Document {
        value: b.root.unwrap_or(Value::Null),
        marks: b.marks,
        key_marks: b.key_marks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_resolve_like_pyyaml() {
        for (text, want) in [
            ("yes", json!(true)),
            ("Off", json!(false)),
            ("~", json!(null)),
            ("010", json!(8)),
            ("0x1f", json!(31)),
            ("1_000", json!(1000)),
            ("1:30", json!(90)),
            ("-7", json!(-7)),
            ("1.5", json!(1.5)),
            ("1e3", json!("1e3")),
            ("0o17", json!("0o17")),
            ("y", json!("y")),
            ("08", json!("08")),
            ("Africa/Dar_es_Salaam", json!("Africa/Dar_es_Salaam")),
        ] {
            assert_eq!(resolve_plain(text), want, "{text}");
        }
        assert!(resolve_plain("2001-12-14").is_object());
    }

    #[test]
    fn alias_bombs_end_in_an_error() {
        // Nine levels of ten aliases each: 10^9 nodes if expanded.
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = load(&doc).unwrap_err();
        assert!(e.message.contains("alias bomb"), "{}", e.message);
        // A big string repeated is bounded too.
        let big = "x".repeat(1 << 20);
        let doc = format!("s: &s {big}\nt: [*s, *s, *s, *s, *s]\n");
        assert!(load(&doc).unwrap_err().message.contains("alias bomb"));
        // Ordinary use of anchors is untouched.
        let doc = "base: &b {a: 1}\nx: *b\ny:\n  <<: *b\n  c: 2\n";
        load(doc).unwrap();
    }

    #[test]
    fn loads_with_marks_anchors_and_merges() {
        let doc =
            load("a: &x\n  k: 1\nb:\n  <<: *x\n  j: 'yes'\nlist:\n  - one\n  - two: 2\n").unwrap();
        assert_eq!(
            doc.value,
            json!({"a": {"k": 1}, "b": {"k": 1, "j": "yes"}, "list": ["one", {"two": 2}]})
        );
        assert_eq!(doc.mark_of("/list/1/two"), Mark { line: 8, col: 10 });
        assert_eq!(doc.key_marks["/list/1/two"], Mark { line: 8, col: 5 });
        assert_eq!(doc.mark_of("/b/j").line, 5);
        assert_eq!(doc.mark_of("/nope").line, 1);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = load("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.mark.line >= 1, "{e:?}");
        let e = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("single document"));
        let e = load("a: !!python/object foo\n").unwrap_err();
        assert!(e.message.contains("constructor"));
    }
}
