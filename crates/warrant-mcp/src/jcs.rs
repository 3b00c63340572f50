//! RFC 8785 JSON Canonicalization Scheme (JCS) for arbitrary JSON values.
//!
//! Each tool argument becomes one action parameter whose value is the
//! argument's JCS text, so two spellings of the same argument (key order,
//! whitespace, `1.0` against `1`, `"\u0041"` against `"A"`) are one action,
//! one digest and one instance, and what a reviewer reads is what runs.

use serde_json::Value;

/// Why a value has no canonical text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    /// JCS reads every number as an IEEE 754 double (RFC 8785 §3.2.2.3).
    /// An integer whose nearest double is written differently would reach
    /// reviewers, and the upstream, as another number than the caller sent.
    #[error("the number {0} cannot be represented exactly as a JSON (IEEE 754 double) number")]
    InexactNumber(String),
}

/// The canonical text of `value`.
pub fn canonicalize(value: &Value) -> Result<String, JcsError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), JcsError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => out.push_str(&number_text(number)?),
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map orders by UTF-8 bytes (code points); JCS
            // orders by UTF-16 code units, which differs beyond the BMP.
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// ECMAScript's `JSON.stringify` escaping (RFC 8785 §3.2.2.2): `"` and `\`,
/// the five short escapes, other controls as lowercase `\u00xx`, everything
/// else verbatim.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn number_text(number: &serde_json::Number) -> Result<String, JcsError> {
    // An integer is read as the nearest double. Its text is accepted only
    // when it spells the integer that was sent (true of every integer up
    // to 2^53 and of many beyond), so no argument changes value on the way.
    let integer = number
        .as_u64()
        .map(|u| (u as f64, u.to_string()))
        .or_else(|| number.as_i64().map(|i| (i as f64, i.to_string())));
    if let Some((double, sent)) = integer {
        let text = es_number(double);
        if text != sent {
            return Err(JcsError::InexactNumber(sent));
        }
        return Ok(text);
    }
    match number.as_f64() {
        Some(double) if double.is_finite() => Ok(es_number(double)),
        _ => Err(JcsError::InexactNumber(number.to_string())),
    }
}

/// ECMAScript `Number::toString` (ECMA-262 §6.1.6.1.20) of a finite double,
/// which JCS prescribes. Rust's `{:e}` gives the shortest digits that round
/// trip, which are the digits the algorithm calls for; only the layout
/// (plain, decimal point, or exponent) is ECMAScript's own.
pub fn es_number(value: f64) -> String {
    if value == 0.0 {
        // Both zeros: "-0" is not a JSON number ECMAScript ever writes.
        return "0".to_owned();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = match scientific.split_once('e') {
        Some(parts) => parts,
        None => return format!("{sign}{scientific}"),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits = ties_to_even(value.abs(), digits, exponent);
    let k = digits.len() as i32;
    // value = 0.d1d2…dk × 10^n
    let n = exponent + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let (first, rest) = digits.split_at(1);
        let exp_sign = if n - 1 < 0 { "-" } else { "+" };
        let dot = if rest.is_empty() { "" } else { "." };
        format!("{first}{dot}{rest}e{exp_sign}{}", (n - 1).abs())
    };
    format!("{sign}{body}")
}

/// ECMAScript picks, among the shortest digit strings that round trip, the
/// one closest to the exact value, and the even one of two equally close
/// (ECMA-262 Number::toString, step 5). Rust's shortest digits round such a
/// tie up, e.g. 1424953923781206.25 to `…206.3` where ECMAScript writes
/// `…206.2` (an RFC 8785 test vector), so ties are settled here.
fn ties_to_even(value: f64, digits: String, exponent: i32) -> String {
    // 800 places hold every double's exact decimal expansion.
    let exact = format!("{value:.800e}");
    let Some((mantissa, exact_exponent)) = exact.split_once('e') else {
        return digits;
    };
    if exact_exponent.parse::<i32>().ok() != Some(exponent) {
        return digits;
    }
    let all: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let k = digits.len();
    let is_tie = all.len() > k && all[k] == b'5' && all[k + 1..].iter().all(|&b| b == b'0');
    if !is_tie {
        return digits;
    }
    let mut lower: Vec<u8> = all[..k].to_vec();
    let candidate = if lower.last().is_some_and(|&d| (d - b'0').is_multiple_of(2)) {
        lower
    } else {
        // Add one in the last place; a carry past the first digit would
        // change the exponent, which a tie never needs.
        let mut at = k;
        loop {
            if at == 0 {
                return digits;
            }
            at -= 1;
            if lower[at] == b'9' {
                lower[at] = b'0';
            } else {
                lower[at] += 1;
                break;
            }
        }
        lower
    };
    let candidate = String::from_utf8(candidate).unwrap_or_else(|_| digits.clone());
    let (first, rest) = candidate.split_at(1);
    let reparsed: Option<f64> = format!("{first}.{rest}0e{exponent}").parse().ok();
    if reparsed == Some(value) {
        candidate
    } else {
        digits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn double(bits: u64) -> String {
        es_number(f64::from_bits(bits))
    }

    /// RFC 8785 Appendix B: IEEE 754 bit patterns and their JCS text.
    #[test]
    fn rfc8785_appendix_b_numbers() {
        let vectors: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in vectors {
            assert_eq!(double(*bits), *expected, "bits {bits:016x}");
        }
    }

    /// RFC 8785 §3.2.2 / Appendix: the "primitive data types" example.
    #[test]
    fn rfc8785_primitives_example() {
        let input: Value = serde_json::from_str(
            r#"{
              "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
              "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
              "literals": [null, true, false]
            }"#,
        )
        .expect("valid JSON");
        assert_eq!(
            canonicalize(&input).expect("canonical"),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    /// RFC 8785 §3.2.3: properties sorted by UTF-16 code units.
    #[test]
    fn rfc8785_sorting_example() {
        let input: Value = serde_json::from_str(
            r#"{
              "\u20ac": "Euro Sign",
              "\r": "Carriage Return",
              "\ufb33": "Hebrew Letter Dalet With Dagesh",
              "1": "One",
              "\ud83d\ude00": "Emoji: Grinning Face",
              "\u0080": "Control",
              "\u00f6": "Latin Small Letter O With Diaeresis"
            }"#,
        )
        .expect("valid JSON");
        let canonical = canonicalize(&input).expect("canonical");
        let keys: Vec<String> = {
            // Order of the values shows the order of the keys.
            let order = [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh",
            ];
            order.iter().map(|s| (*s).to_owned()).collect()
        };
        let mut last = 0;
        for name in keys {
            let at = canonical.find(&name).expect("value present");
            assert!(at > last, "{name} out of order in {canonical}");
            last = at;
        }
    }

    #[test]
    fn nested_values_and_whitespace() {
        let a = json!({"b": [1, {"y": 2.0, "x": "é"}], "a": null});
        assert_eq!(
            canonicalize(&a).expect("canonical"),
            r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#
        );
    }

    #[test]
    fn refuses_integers_a_double_would_round() {
        let big: Value = serde_json::from_str("9007199254740993").expect("valid JSON");
        assert!(matches!(
            canonicalize(&big),
            Err(JcsError::InexactNumber(_))
        ));
        // 2^53, and integers beyond it that a double spells the same way.
        assert_eq!(
            canonicalize(&json!(9007199254740992u64)).expect("exact"),
            "9007199254740992"
        );
        assert_eq!(
            canonicalize(&json!(-9007199254740992i64)).expect("exact"),
            "-9007199254740992"
        );
        assert_eq!(
            canonicalize(&json!(-23598920202520290i64)).expect("same text"),
            "-23598920202520290"
        );
        assert!(canonicalize(&json!(u64::MAX)).is_err());
    }

    #[test]
    fn canonical_text_is_a_fixed_point() {
        // What the gateway forwards is parsed back from the authorized text;
        // canonicalising it again must give that same text.
        for text in [
            r#"{"a":[1e+30,0.002,-5e-324],"b":"\u001f\"x"}"#,
            r#"333333333.3333333"#,
            r#"[true,null,"😀",{"":{}}]"#,
        ] {
            let value: Value = serde_json::from_str(text).expect("valid JSON");
            assert_eq!(canonicalize(&value).expect("canonical"), text);
        }
    }

    proptest::proptest! {
        /// Every finite double's text reads back as that double, and the
        /// canonical text of a parsed canonical text is itself.
        #[test]
        fn numbers_round_trip(bits in proptest::num::u64::ANY) {
            let value = f64::from_bits(bits);
            proptest::prop_assume!(value.is_finite());
            let text = es_number(value);
            let back: f64 = text.parse().expect("a number");
            proptest::prop_assert!(back == value, "{} -> {}", value, text);
            let json: Value = serde_json::from_str(&text).expect("JSON");
            proptest::prop_assert_eq!(canonicalize(&json).expect("canonical"), text);
        }
    }

    /// Compares with a JavaScript engine: run with JCS_NODE_VECTORS naming a
    /// file of `<hex bits> <JSON.stringify text>` lines (docs/mcp-gateway.md
    /// shows the node one-liner that writes it).
    #[test]
    #[ignore = "needs a vector file written by node"]
    fn agrees_with_javascript() {
        let Ok(path) = std::env::var("JCS_NODE_VECTORS") else {
            return;
        };
        let text = std::fs::read_to_string(path).expect("readable vectors");
        let mut checked = 0;
        for line in text.lines() {
            let Some((bits, expected)) = line.split_once(' ') else {
                continue;
            };
            let bits = u64::from_str_radix(bits, 16).expect("hex bits");
            assert_eq!(
                es_number(f64::from_bits(bits)),
                expected,
                "bits {bits:016x}"
            );
            checked += 1;
        }
        assert!(checked > 0, "no vectors in the file");
    }
}
