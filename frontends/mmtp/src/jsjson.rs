//! `JSON.stringify` as JavaScript does it, for the content hash and signatures.
//!
//! The original client hashes and signs `JSON.stringify(content)`. mailgate first checks the
//! content bytes exactly as they arrived (the original client's own serialisation); only when
//! they do not match (a client that pretty-printed, say) does it re-serialise the parsed value
//! the way JavaScript would: keys in insertion order except that array-index keys come first in
//! ascending numeric order, no whitespace, `"`, `\` and control characters escaped with
//! lower-case `\u00xx` (U+2028 and U+007F stay raw), numbers formatted like
//! `Number.prototype.toString`.

use serde_json::Value;
use std::fmt::Write;

/// `JSON.stringify(value)`.
pub fn stringify(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// `JSON.stringify` of an object, without wrapping it in a `Value` first.
pub fn stringify_object(map: &serde_json::Map<String, Value>) -> String {
    let mut out = String::new();
    write_object(&mut out, map);
    out
}

fn write_object(out: &mut String, map: &serde_json::Map<String, Value>) {
    // Array-index keys first, ascending; then the others in insertion order.
    let mut index_keys: Vec<(u32, &String)> = map
        .keys()
        .filter_map(|k| array_index(k).map(|i| (i, k)))
        .collect();
    index_keys.sort_unstable();
    let ordered = index_keys
        .iter()
        .map(|(_, k)| *k)
        .chain(map.keys().filter(|k| array_index(k).is_none()));
    out.push('{');
    for (i, key) in ordered.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        if let Some(v) = map.get(key) {
            write_value(out, v);
        }
    }
    out.push('}');
}

/// A canonical array index: "0" or digits without a leading zero, below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || key.len() > 10 || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u64>()
        .ok()
        .filter(|n| *n < u64::from(u32::MAX))
        .map(|n| n as u32)
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        // Integers beyond 2^53 lose precision in JavaScript; format them as JS would.
        if i.unsigned_abs() <= (1u64 << 53) {
            let _ = write!(out, "{i}");
            return;
        }
    }
    if let Some(u) = n.as_u64() {
        if u <= (1u64 << 53) {
            let _ = write!(out, "{u}");
            return;
        }
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.is_finite() {
        let mut buf = ryu_js::Buffer::new();
        out.push_str(buf.format_finite(f));
    } else {
        out.push_str("null");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_javascript() {
        // Expected strings are what Node's JSON.stringify prints for the same values.
        let v: Value = serde_json::from_str(
            r#"{ "b": 1, "a": [1.0, 2.5, 1e21, -0.0, 1e-7], "10": "x", "2": "y", "02": "z",
                 "s": "q\"\\/\b\f\n\r\t\u0001\u001f\u007f\u2028é📨" }"#,
        )
        .unwrap();
        assert_eq!(
            stringify(&v),
            "{\"2\":\"y\",\"10\":\"x\",\"b\":1,\"a\":[1,2.5,1e+21,0,1e-7],\"02\":\"z\",\"s\":\"q\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}\u{2028}é📨\"}"
        );
        assert_eq!(stringify(&json!(null)), "null");
        assert_eq!(
            stringify(&json!({"k": [true, false, {}]})),
            "{\"k\":[true,false,{}]}"
        );
    }

    #[test]
    fn compact_input_round_trips_byte_for_byte() {
        let text = r#"{"subject":"Hi","body":"Hello, \"bob\"\n\u0001"}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(stringify(&v), text);
    }
}
