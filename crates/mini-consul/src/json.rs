//! JSON the way Consul's Go code reads and writes it.
//!
//! Reading: `encoding/json` with `DisallowUnknownFields` — keys match struct fields
//! case-insensitively, an unknown key is `json: unknown field "X"`, `null` leaves a field unset, an
//! empty body is `EOF`, and only the first JSON value of the body is read. [`J`] keeps object keys
//! in document order so the first offending key is the one reported, as Go does.
//!
//! Writing: a dev agent pretty-prints (4-space indent, trailing newline) and, like Go, escapes
//! `<`, `>`, `&`, U+2028 and U+2029.

use std::fmt;
use std::io;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::ser::{Formatter, PrettyFormatter};

/// A JSON value with object keys in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    /// Go's name for the JSON kind, as in `cannot unmarshal <kind> into ...`.
    pub fn kind(&self) -> String {
        match self {
            J::Null => "null".into(),
            J::Bool(_) => "bool".into(),
            J::Int(_) => "number".into(),
            J::Float(_) => "number".into(),
            J::Str(_) => "string".into(),
            J::Arr(_) => "array".into(),
            J::Obj(_) => "object".into(),
        }
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<J, E> {
                Ok(J::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<J, E> {
                Ok(J::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<J, E> {
                Ok(i64::try_from(v).map(J::Int).unwrap_or(J::Float(v as f64)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<J, E> {
                Ok(J::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<J, E> {
                Ok(J::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<J, E> {
                Ok(J::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(J::Arr(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, J>()? {
                    out.push((k, v));
                }
                Ok(J::Obj(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads the first JSON value of a request body, with Go's error texts.
pub fn read_body(body: &[u8]) -> Result<J, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("EOF".into());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    J::deserialize(&mut de).map_err(|e| go_syntax_error(body, &e))
}

/// Approximates Go's `encoding/json` syntax error texts from a serde_json error.
fn go_syntax_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected EOF".into();
    }
    // serde_json counts lines from 1 and columns (bytes) from 1, pointing at the bad byte.
    let mut offset = 0;
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if n + 1 == e.line() {
            offset += e.column().saturating_sub(1);
            break;
        }
        offset += line.len() + 1;
    }
    let ch = std::str::from_utf8(&body[offset.min(body.len())..])
        .ok()
        .and_then(|s| s.chars().next())
        .map(|c| {
            if c == '\'' {
                "\\'".to_owned()
            } else {
                c.to_string()
            }
        })
        .unwrap_or_else(|| "?".into());
    let text = e.to_string();
    let context = if text.starts_with("expected `,` or `}`") {
        "after object key:value pair"
    } else if text.starts_with("expected `,` or `]`") {
        "after array element"
    } else if text.starts_with("expected `:`") {
        "after object key"
    } else if text.starts_with("key must be a string") {
        "looking for beginning of object key string"
    } else if text.starts_with("invalid escape") {
        "in string escape code"
    } else if text.starts_with("control character") {
        "in string literal"
    } else {
        "looking for beginning of value"
    };
    format!("invalid character '{ch}' {context}")
}

/// Decodes a JSON object into a struct's fields, as Go does with unknown fields disallowed:
/// returns `(field, value)` pairs in document order with the key mapped to the field's canonical
/// name. `null` yields no fields. `go_type` names the target in type errors.
pub fn fields<'a>(
    v: &'a J,
    known: &[&'static str],
    go_type: &str,
) -> Result<Vec<(&'static str, &'a J)>, String> {
    match v {
        J::Null => Ok(Vec::new()),
        J::Obj(pairs) => pairs
            .iter()
            .map(|(k, v)| {
                let field = known
                    .iter()
                    .find(|f| **f == k)
                    .or_else(|| known.iter().find(|f| f.eq_ignore_ascii_case(k)))
                    .ok_or_else(|| format!("json: unknown field {k:?}"))?;
                Ok((*field, v))
            })
            .collect(),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            other.kind()
        )),
    }
}

fn type_error(v: &J, field: &str, go_type: &str) -> String {
    let kind = match v {
        J::Float(f) => format!("number {f}"),
        other => other.kind(),
    };
    format!("json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}")
}

/// A string field (`null` → `None`).
pub fn string(v: &J, field: &str) -> Result<Option<String>, String> {
    match v {
        J::Null => Ok(None),
        J::Str(s) => Ok(Some(s.clone())),
        other => Err(type_error(other, field, "string")),
    }
}

/// An `int` field (`null` → `None`); fractions are type errors, as in Go.
pub fn int(v: &J, field: &str) -> Result<Option<i64>, String> {
    match v {
        J::Null => Ok(None),
        J::Int(i) => Ok(Some(*i)),
        other => Err(type_error(other, field, "int")),
    }
}

/// A `bool` field (`null` → `None`).
pub fn boolean(v: &J, field: &str) -> Result<Option<bool>, String> {
    match v {
        J::Null => Ok(None),
        J::Bool(b) => Ok(Some(*b)),
        other => Err(type_error(other, field, "bool")),
    }
}

/// A `[]string` field (`null` → `None`).
pub fn strings(v: &J, field: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        J::Null => Ok(None),
        J::Arr(items) => items
            .iter()
            .map(|i| string(i, field).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(type_error(other, field, "[]string")),
    }
}

/// A `map[string]T` field (`null` → `None`), each value decoded by `each`.
pub fn map<T>(
    v: &J,
    field: &str,
    go_type: &str,
    mut each: impl FnMut(&J) -> Result<T, String>,
) -> Result<Option<Vec<(String, T)>>, String> {
    match v {
        J::Null => Ok(None),
        J::Obj(pairs) => pairs
            .iter()
            .map(|(k, v)| Ok((k.clone(), each(v)?)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(type_error(other, field, go_type)),
    }
}

/// Go's duration decoding in Consul's `UnmarshalJSON`s: a string is parsed with
/// `time.ParseDuration`, a number is nanoseconds, anything else is ignored.
pub fn duration(v: &J) -> Result<Option<i64>, String> {
    match v {
        J::Str(s) => crate::duration::parse(s).map(Some),
        J::Int(i) => Ok(Some(*i)),
        J::Float(f) => Ok(Some(*f as i64)),
        _ => Ok(None),
    }
}

/// Serializes the way a dev agent answers: indented by four spaces, a trailing newline, and
/// Go's HTML-safe escaping.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        GoFormatter(PrettyFormatter::with_indent(b"    ")),
    );
    value
        .serialize(&mut ser)
        .expect("serializing to memory cannot fail");
    out.push(b'\n');
    out
}

struct GoFormatter<'a>(PrettyFormatter<'a>);

impl Formatter for GoFormatter<'_> {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(esc.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_go() {
        assert_eq!(read_body(b"").unwrap_err(), "EOF");
        assert_eq!(read_body(b"  \n").unwrap_err(), "EOF");
        assert_eq!(read_body(b"{\"a\":").unwrap_err(), "unexpected EOF");
        assert_eq!(
            read_body(b"x").unwrap_err(),
            "invalid character 'x' looking for beginning of value"
        );
        assert_eq!(read_body(b"{} trailing").unwrap(), J::Obj(vec![]));
        let v = read_body(br#"{"name":"a","NAME":"b"}"#).unwrap();
        let f = fields(&v, &["Name"], "x").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            fields(&v, &["ID"], "x").unwrap_err(),
            "json: unknown field \"name\""
        );
    }

    #[test]
    fn writes_like_go() {
        let s = String::from_utf8(encode(&serde_json::json!({"a": "<&>", "b": []}))).unwrap();
        assert_eq!(
            s,
            "{\n    \"a\": \"\\u003c\\u0026\\u003e\",\n    \"b\": []\n}\n"
        );
    }
}
