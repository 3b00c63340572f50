//! The offline signature audit: every decision signed with a reviewer's
//! own key in the range is checked without trusting whoever runs Warrant.
//!
//! The fold already re-verified each proof from the event alone (a proof
//! that does not verify, or names another instance, digest, verdict,
//! justification or scope, is refused `BadSignature`). What the fold cannot
//! know is whose key it was: that is the reviewer directory intake
//! published to the principals topic (docs/signatures.md). A signed
//! decision passes when the newest directory version published at or
//! before the decision lists that key under that reviewer.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use warrant_authority::RefusalCode;

use crate::replayed::SignedDecisionSeen;

/// One published reviewer directory: a record of the principals topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedDirectory {
    /// The record key: SHA-256 of the directory bytes.
    pub digest: String,
    /// The record's timestamp (when intake published it), unix ms.
    pub published_at: i64,
    pub reviewers: Vec<DirectoryReviewer>,
}

/// What the audit reads of a published directory; other fields (roles,
/// whether intake also holds an HMAC secret) are for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryReviewer {
    pub principal: String,
    #[serde(default)]
    pub keys: Vec<DirectoryKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryKey {
    pub key_id: String,
    pub public_key: String,
}

#[derive(Debug, Deserialize)]
struct DirectoryBody {
    reviewers: Vec<DirectoryReviewer>,
}

/// Parse one record of the principals topic.
pub fn parse_directory(
    digest: &str,
    published_at: i64,
    value: &[u8],
) -> Result<PublishedDirectory, String> {
    let body: DirectoryBody = serde_json::from_slice(value)
        .map_err(|e| format!("directory {digest} is not a reviewer directory: {e}"))?;
    Ok(PublishedDirectory {
        digest: digest.to_owned(),
        published_at,
        reviewers: body.reviewers,
    })
}

/// What the audit found for one signed decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Finding {
    /// The proof verified and the key was this reviewer's in `directory`.
    SignedByReviewer { directory: String },
    /// The fold refused the proof: it does not verify or does not match.
    BadSignature,
    /// No directory was published at or before the decision.
    NoDirectoryBefore,
    /// The directory in force did not list this key under this reviewer.
    KeyNotTheReviewers { directory: String },
    /// Directories could not be read (an export file): the proof verified,
    /// the key's owner is not checked.
    KeyOwnerNotChecked,
}

impl Finding {
    fn failed(&self) -> bool {
        match self {
            Finding::SignedByReviewer { .. } | Finding::KeyOwnerNotChecked => false,
            Finding::BadSignature
            | Finding::NoDirectoryBefore
            | Finding::KeyNotTheReviewers { .. } => true,
        }
    }
}

/// The audit of a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureReport {
    pub checked: Vec<(SignedDecisionSeen, Finding)>,
    /// Decisions attested by intake (HMAC): nothing to verify offline.
    pub attested_by_intake: u64,
    pub directories: usize,
}

impl SignatureReport {
    pub fn failed(&self) -> bool {
        self.checked.iter().any(|(_, finding)| finding.failed())
    }

    /// One line per failure naming instance and entry, then a summary.
    pub fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut text = String::new();
        for (seen, finding) in &self.checked {
            let problem = match finding {
                Finding::SignedByReviewer { .. } | Finding::KeyOwnerNotChecked => continue,
                Finding::BadSignature => {
                    "the proof does not verify over the event (refused BadSignature)".to_owned()
                }
                Finding::NoDirectoryBefore => {
                    "no reviewer directory was published before it".to_owned()
                }
                Finding::KeyNotTheReviewers { directory } => {
                    format!(
                        "key {} is not {}'s in directory {directory}",
                        crate::text::clean(&seen.key_id),
                        crate::text::clean(&seen.reviewer)
                    )
                }
            };
            let _ = writeln!(
                text,
                "SIGNATURE {} entry {} (partition {}, offset {}) by {}: {problem}",
                seen.instance_id,
                seen.seq,
                seen.position.partition,
                seen.position.offset,
                crate::text::clean(&seen.reviewer)
            );
        }
        let verified = self
            .checked
            .iter()
            .filter(|(_, f)| matches!(f, Finding::SignedByReviewer { .. }))
            .count();
        let unchecked = self
            .checked
            .iter()
            .filter(|(_, f)| matches!(f, Finding::KeyOwnerNotChecked))
            .count();
        let failed = self.checked.iter().filter(|(_, f)| f.failed()).count();
        let _ = write!(
            text,
            "signatures: {verified} signed by the reviewer, {} attested by intake (HMAC)",
            self.attested_by_intake
        );
        if unchecked > 0 {
            let _ = write!(
                text,
                ", {unchecked} verified but the key's owner not checked (no directories)"
            );
        }
        let _ = writeln!(
            text,
            "; {}",
            if failed > 0 {
                format!("{failed} FAILED")
            } else {
                "ok".to_owned()
            }
        );
        out.write_all(text.as_bytes())
    }
}

/// Check every signed decision. `directories`: `None` when they cannot be
/// read (a file source); otherwise every published version, any order.
pub fn audit(
    signed: &[SignedDecisionSeen],
    attested_by_intake: u64,
    directories: Option<&[PublishedDirectory]>,
) -> SignatureReport {
    let mut sorted: Vec<&PublishedDirectory> = directories.unwrap_or_default().iter().collect();
    sorted.sort_by_key(|d| d.published_at);
    let checked = signed
        .iter()
        .map(|seen| {
            let finding = if seen.refusal == Some(RefusalCode::BadSignature) {
                Finding::BadSignature
            } else if directories.is_none() {
                Finding::KeyOwnerNotChecked
            } else {
                match sorted
                    .iter()
                    .rev()
                    .find(|d| d.published_at <= seen.recorded_at)
                {
                    None => Finding::NoDirectoryBefore,
                    Some(directory) => {
                        let holds = directory.reviewers.iter().any(|r| {
                            r.principal == seen.reviewer
                                && r.keys.iter().any(|k| {
                                    k.key_id == seen.key_id && k.public_key == seen.public_key
                                })
                        });
                        if holds {
                            Finding::SignedByReviewer {
                                directory: directory.digest.clone(),
                            }
                        } else {
                            Finding::KeyNotTheReviewers {
                                directory: directory.digest.clone(),
                            }
                        }
                    }
                }
            };
            (seen.clone(), finding)
        })
        .collect();
    SignatureReport {
        checked,
        attested_by_intake,
        directories: directories.map_or(0, <[_]>::len),
    }
}

#[cfg(test)]
mod tests {
    use warrant_authority::LogPosition;

    use super::*;

    fn seen(
        reviewer: &str,
        key_id: &str,
        at: i64,
        refusal: Option<RefusalCode>,
    ) -> SignedDecisionSeen {
        SignedDecisionSeen {
            instance_id: "i".to_owned(),
            seq: 3,
            position: LogPosition {
                partition: 0,
                offset: 7,
            },
            recorded_at: at,
            reviewer: reviewer.to_owned(),
            key_id: key_id.to_owned(),
            public_key: format!("pk-{key_id}"),
            refusal,
        }
    }

    fn directory(digest: &str, at: i64, holders: &[(&str, &str)]) -> PublishedDirectory {
        PublishedDirectory {
            digest: digest.to_owned(),
            published_at: at,
            reviewers: holders
                .iter()
                .map(|(principal, key_id)| DirectoryReviewer {
                    principal: (*principal).to_owned(),
                    keys: vec![DirectoryKey {
                        key_id: (*key_id).to_owned(),
                        public_key: format!("pk-{key_id}"),
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn a_key_counts_only_under_the_directory_in_force_at_the_decision() {
        let directories = [
            directory("d1", 100, &[("alice", "k1")]),
            // Rotation: alice's key k1 replaced by k2 at 200.
            directory("d2", 200, &[("alice", "k2")]),
        ];
        let report = audit(
            &[
                seen("alice", "k1", 150, None),
                seen("alice", "k1", 250, None),
                seen("alice", "k2", 250, None),
                seen("bob", "k2", 250, None),
                seen("alice", "k1", 50, None),
                seen("alice", "k2", 260, Some(RefusalCode::BadSignature)),
            ],
            4,
            Some(&directories),
        );
        let findings: Vec<&Finding> = report.checked.iter().map(|(_, f)| f).collect();
        assert_eq!(
            findings,
            [
                &Finding::SignedByReviewer {
                    directory: "d1".to_owned()
                },
                &Finding::KeyNotTheReviewers {
                    directory: "d2".to_owned()
                },
                &Finding::SignedByReviewer {
                    directory: "d2".to_owned()
                },
                &Finding::KeyNotTheReviewers {
                    directory: "d2".to_owned()
                },
                &Finding::NoDirectoryBefore,
                &Finding::BadSignature,
            ]
        );
        assert!(report.failed());
        let mut text = Vec::new();
        report.write_text(&mut text).expect("write");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.contains(
                "SIGNATURE i entry 3 (partition 0, offset 7) by bob: key k2 is not bob's"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("2 signed by the reviewer, 4 attested by intake (HMAC); 4 FAILED\n"),
            "{text}"
        );
    }

    #[test]
    fn without_directories_only_the_proof_is_checked() {
        let report = audit(&[seen("alice", "k1", 1, None)], 0, None);
        assert!(!report.failed());
        let report = audit(
            &[seen("alice", "k1", 1, Some(RefusalCode::BadSignature))],
            0,
            None,
        );
        assert!(report.failed());
    }

    #[test]
    fn a_published_directory_parses_from_intakes_json() {
        let value = br#"{"reviewers":[{"principal":"dave","roles":["sre"],"keys":[{"key_id":"b600306cfa76723f","public_key":"197f"}],"hmac":false}]}"#;
        let directory = parse_directory("abc", 5, value).expect("parses");
        assert_eq!(directory.reviewers[0].keys[0].key_id, "b600306cfa76723f");
        assert!(parse_directory("abc", 5, b"tokens: []").is_err());
    }
}
