//! Content digests: the action digest executors present, and SHA-256 helpers.

use sha2::{Digest, Sha256};
use warrant_schema::Action;

/// Lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of
/// `{"kind", "target", "parameters"}` (docs/contract.md §3).
///
/// For our string-only object JCS reduces to: keys sorted by UTF-16 code
/// units, no whitespace, and strings escaped as ECMAScript's `JSON.stringify`
/// does, which is what `serde_json` writes for a `str` (`\"`, `\\`, the five
/// short escapes, other control characters as lowercase `\u00xx`, everything
/// else verbatim).
pub fn action_digest(action: &Action) -> String {
    sha256_hex(canonical_action_json(action).as_bytes())
}

/// The exact bytes [`action_digest`] hashes, for executors that want to
/// check their own canonicalisation.
pub fn canonical_action_json(action: &Action) -> String {
    let mut parameters: Vec<(&String, &String)> = action.parameters.iter().collect();
    // BTreeMap orders by UTF-8 bytes (= code points); JCS orders by UTF-16
    // code units, which differs only for keys beyond the BMP.
    parameters.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));

    let mut out = String::with_capacity(64 + 32 * parameters.len());
    out.push_str("{\"kind\":");
    push_json_string(&mut out, &action.kind);
    out.push_str(",\"parameters\":{");
    for (index, (key, value)) in parameters.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_json_string(&mut out, key);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push_str("},\"target\":");
    push_json_string(&mut out, &action.target);
    out.push('}');
    out
}

fn push_json_string(out: &mut String, value: &str) {
    // Serialising a &str cannot fail; fall back to an empty string rather
    // than panic if serde_json ever disagrees.
    out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| String::from("\"\"")));
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn action(kind: &str, target: &str, parameters: &[(&str, &str)]) -> Action {
        Action {
            kind: kind.to_owned(),
            target: target.to_owned(),
            parameters: parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn equals_pythons_sorted_compact_json() {
        // python3 -c 'import json,hashlib; print(hashlib.sha256(json.dumps(
        //   {"kind":"service.restart","target":"prod/payments/api","parameters":
        //   {"reason":"memory leak, p99 > 2s","strategy":"rolling"}},
        //   sort_keys=True,separators=(",",":"),ensure_ascii=False).encode()).hexdigest())'
        assert_eq!(
            action_digest(&warrant_schema::samples::action()),
            warrant_schema::samples::ACTION_DIGEST
        );
    }

    #[test]
    fn escapes_like_json_stringify() {
        let tricky = action(
            "k\"\\",
            "t\n\u{1}\u{7f}é",
            &[("\t", "\u{2028}"), ("a", "😀")],
        );
        assert_eq!(
            canonical_action_json(&tricky),
            "{\"kind\":\"k\\\"\\\\\",\"parameters\":{\"\\t\":\"\u{2028}\",\"a\":\"😀\"},\"target\":\"t\\n\\u0001\u{7f}é\"}"
        );
        // python3: same dict, json.dumps(sort_keys=True, separators=(",",":"), ensure_ascii=False)
        assert_eq!(
            action_digest(&tricky),
            "9578b64234e94c53681384490a34da4e289f0024536885bd8df4daa19b840a47"
        );
    }

    #[test]
    fn sorts_keys_by_utf16_code_units() {
        // U+FF61 sorts after U+1F600 in UTF-8 but before it in UTF-16.
        let a = action("k", "t", &[("\u{1F600}", "1"), ("\u{FF61}", "2")]);
        assert_eq!(
            canonical_action_json(&a),
            "{\"kind\":\"k\",\"parameters\":{\"\u{1F600}\":\"1\",\"\u{FF61}\":\"2\"},\"target\":\"t\"}"
        );
    }
}
