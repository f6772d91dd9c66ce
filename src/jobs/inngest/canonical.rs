//! RFC 8785 (JCS) canonical JSON: the bytes rowcast sends to an Inngest app
//! and signs. The SDK parses a request body and re-canonicalises it before
//! checking the signature, so the body must already be in this form: object
//! keys sorted by UTF-16 code units, no whitespace, strings escaped as
//! `JSON.stringify` does, numbers written as JavaScript writes them. Pure.

use std::cmp::Ordering;
use std::fmt::Write;

use serde_json::Value;

/// `value` as canonical JSON.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value);
    out
}

fn write(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i.unsigned_abs() < 1 << 53 => write!(out, "{i}").expect("writing to a String"),
            (_, Some(u)) if u < 1 << 53 => write!(out, "{u}").expect("writing to a String"),
            _ => out.push_str(&js_number(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| utf16_order(a.0, b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(out, v);
            }
            out.push('}');
        }
    }
}

fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// A number as JavaScript's `String(n)` writes it (ECMA-262 Number::toString),
/// from the shortest digits that read back as the same double.
pub fn js_number(n: f64) -> String {
    if n == 0.0 {
        return "0".into();
    }
    if !n.is_finite() {
        return "null".into();
    }
    let sci = format!("{:e}", n.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} writes an exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    // n = 0.digits × 10^point
    let point = exp.parse::<i32>().expect("{:e} writes an integer exponent") + 1;
    let sign = if n < 0.0 { "-" } else { "" };
    let body = if k <= point && point <= 21 {
        format!("{digits}{}", "0".repeat((point - k) as usize))
    } else if 0 < point && point <= 21 {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    } else if -6 < point && point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else {
        let e = point - 1;
        let e = if e >= 0 { format!("+{e}") } else { e.to_string() };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sort_by_utf16_units_and_nothing_is_spaced() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x", "\u{e000}": 1, "\u{1f600}": 2});
        assert_eq!(to_string(&v), "{\"a\":\"x\",\"b\":[1,{\"a\":true,\"z\":null}],\"\u{1f600}\":2,\"\u{e000}\":1}");
    }

    #[test]
    fn strings_escape_as_json_stringify_does() {
        assert_eq!(to_string(&json!("a\"b\\c\n\u{1}\u{7f}é")), "\"a\\\"b\\\\c\\n\\u0001\u{7f}é\"");
    }

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (1.5e-10, "1.5e-10"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (n, js) in cases {
            assert_eq!(js_number(n), js, "{n:e}");
        }
        assert_eq!(to_string(&json!([1, -7, 9007199254740991u64, 2.5])), "[1,-7,9007199254740991,2.5]");
        assert_eq!(to_string(&json!(9007199254740993u64)), "9007199254740992");
    }
}
