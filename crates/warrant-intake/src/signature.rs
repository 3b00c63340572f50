//! The reviewers' webhook signature (docs/contract.md §6):
//! `X-Warrant-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>`
//! with `X-Warrant-Timestamp: <unix seconds>` no more than
//! [`MAX_CLOCK_SKEW_SECS`] from intake's clock.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from intake's clock, either way.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
pub const TIMESTAMP_HEADER: &str = "x-warrant-timestamp";
pub const SIGNATURE_HEADER: &str = "x-warrant-signature";
/// Optional: names the reviewer whose key signed, so an unknown name is a
/// 403 and only that reviewer's keys are tried. Never trusted on its own.
pub const REVIEWER_HEADER: &str = "x-warrant-reviewer";
/// A signature header value starting with this is a reviewer's own
/// Ed25519 signature, not an HMAC (docs/signatures.md).
pub const ED25519_PREFIX: &str = "ed25519=";
/// Most tags one signature header may carry: one per secret of a reviewer
/// in rotation, with room to spare.
pub const MAX_SIGNATURE_TAGS: usize = 4;

/// HMAC-SHA256 of `message` under `key`.
pub fn sign(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Whether `tag` is the HMAC-SHA256 of `message` under `key`, compared in
/// constant time (`hmac`'s `verify_slice` uses `subtle`).
pub fn verify(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    matching_tag(key, message, std::slice::from_ref(&tag)).is_some()
}

/// Which of `tags` (if any) is the HMAC-SHA256 of `message` under `key`.
/// The MAC is computed once, however many tags a sender offers, and each
/// comparison is constant-time (`CtOutput`'s equality uses `subtle`): an
/// unauthenticated request with many bogus tags costs one MAC per secret.
pub fn matching_tag<T: AsRef<[u8]>>(key: &[u8], message: &[u8], tags: &[T]) -> Option<usize> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(message);
    let expected = mac.finalize();
    tags.iter().position(|tag| {
        let tag = tag.as_ref();
        tag.len() == 32
            && expected
                == hmac::digest::CtOutput::new(
                    *hmac::digest::generic_array::GenericArray::from_slice(tag),
                )
    })
}

/// The bytes a reviewer signs: `timestamp + "." + raw body`.
pub fn signed_message(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    message
}

/// The header value a reviewer sends: `v1=<hex>`.
pub fn header_value(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(sign(secret, &signed_message(timestamp, body)))
    )
}

/// Why a signature header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Warrant-Timestamp header")]
    MissingTimestamp,
    #[error("X-Warrant-Timestamp must be an integer number of unix seconds")]
    BadTimestamp,
    #[error("X-Warrant-Timestamp is {skew} s away from intake's clock; at most {MAX_CLOCK_SKEW_SECS} s is accepted")]
    Stale { skew: i64 },
    #[error("missing X-Warrant-Signature header")]
    MissingSignature,
    #[error(
        "X-Warrant-Signature must be v1=<64 hex digits> (several may be given, comma-separated)"
    )]
    BadSignatureFormat,
}

/// Check the timestamp against `now_secs`; returns it as sent (the exact
/// text is what was signed).
pub fn check_timestamp(header: Option<&str>, now_secs: i64) -> Result<&str, SignatureError> {
    let text = header.ok_or(SignatureError::MissingTimestamp)?;
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let sent: i64 = text.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(sent);
    if skew.abs() > MAX_CLOCK_SKEW_SECS {
        return Err(SignatureError::Stale { skew });
    }
    Ok(text)
}

/// The `v1` tags in a signature header (`v1=<hex>[,v1=<hex>]`): several
/// let a sender sign with its old and new secret during a rotation.
pub fn parse_signatures(header: Option<&str>) -> Result<Vec<[u8; 32]>, SignatureError> {
    let text = header.ok_or(SignatureError::MissingSignature)?;
    let mut tags = Vec::new();
    for part in text.split(',') {
        let hex_tag = part
            .trim()
            .strip_prefix("v1=")
            .ok_or(SignatureError::BadSignatureFormat)?;
        let mut tag = [0u8; 32];
        hex::decode_to_slice(hex_tag, &mut tag).map_err(|_| SignatureError::BadSignatureFormat)?;
        tags.push(tag);
    }
    if tags.is_empty() || tags.len() > MAX_SIGNATURE_TAGS {
        return Err(SignatureError::BadSignatureFormat);
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_test_case_2() {
        // https://www.rfc-editor.org/rfc/rfc4231#section-4.3
        let tag = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &tag));
        let mut wrong = tag.clone();
        wrong[31] ^= 1;
        assert!(!verify(b"Jefe", b"what do ya want for nothing?", &wrong));
        assert!(!verify(
            b"Jefe",
            b"what do ya want for nothing?",
            &tag[..31]
        ));
        assert!(!verify(b"jefe", b"what do ya want for nothing?", &tag));
    }

    #[test]
    fn rfc_4231_test_case_6_long_key() {
        // A key longer than the block size is hashed first.
        let key = [0xaau8; 131];
        assert_eq!(
            hex::encode(sign(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_header_signs_timestamp_dot_body() {
        let header = header_value(b"secret", "1700000000", b"{\"a\":1}");
        let expected = hex::encode(sign(b"secret", b"1700000000.{\"a\":1}"));
        assert_eq!(header, format!("v1={expected}"));
        let tags = parse_signatures(Some(&header)).expect("parses");
        assert_eq!(hex::encode(tags[0]), expected);
    }

    #[test]
    fn timestamps_outside_the_window_are_stale() {
        let now = 1_700_000_000;
        assert_eq!(check_timestamp(Some("1700000000"), now), Ok("1700000000"));
        assert_eq!(check_timestamp(Some("1699999700"), now), Ok("1699999700"));
        assert_eq!(check_timestamp(Some("1700000300"), now), Ok("1700000300"));
        assert_eq!(
            check_timestamp(Some("1699999699"), now),
            Err(SignatureError::Stale { skew: 301 })
        );
        assert_eq!(
            check_timestamp(Some("1700000301"), now),
            Err(SignatureError::Stale { skew: -301 })
        );
        for bad in [
            "",
            "-1",
            "+5",
            "1.5",
            "17e8",
            "9999999999999999999999",
            " 1",
        ] {
            assert_eq!(
                check_timestamp(Some(bad), now),
                Err(SignatureError::BadTimestamp),
                "{bad}"
            );
        }
        assert_eq!(
            check_timestamp(None, now),
            Err(SignatureError::MissingTimestamp)
        );
    }

    #[test]
    fn signature_headers_are_parsed_strictly() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            parse_signatures(Some(&format!("v1={hex64}"))).map(|t| t.len()),
            Ok(1)
        );
        assert_eq!(
            parse_signatures(Some(&format!("v1={hex64}, v1={hex64}"))).map(|t| t.len()),
            Ok(2)
        );
        for bad in [
            String::new(),
            hex64.clone(),
            format!("v0={hex64}"),
            format!("v1={}", &hex64[..62]),
            format!("v1={hex64}zz"),
            "v1=".to_owned(),
        ] {
            assert_eq!(
                parse_signatures(Some(&bad)),
                Err(SignatureError::BadSignatureFormat),
                "{bad}"
            );
        }
        assert_eq!(
            parse_signatures(None),
            Err(SignatureError::MissingSignature)
        );
    }
}
