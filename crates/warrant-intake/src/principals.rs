//! Who may do what: the principals file (`--principals`).
//!
//! Services, policy engines and executors authenticate with bearer tokens;
//! only the SHA-256 of each token is kept in memory (the file may hold the
//! token itself or `token_sha256`), and a presented token is looked up by
//! its hash, so no comparison ever runs over secret bytes. A policy engine's
//! token carries its fixed signal `source`. Reviewers sign the decision
//! webhook with HMAC-SHA256; each has at most two active secrets so a key
//! can rotate without downtime, and the roles recorded for a decision are
//! the ones listed here, never the ones in a request.
//!
//! Kafka ingress has no token: whoever may write an ingress topic is the
//! identity of every record on it. The file declares that identity per
//! ingress topic (`ingress.proposals.principal`, `ingress.signals.source`),
//! Kafka ACLs make it true, and a record that names anyone else is
//! dead-lettered (docs/identities.md).
//!
//! An identity is one principal whatever its case or padding: names are
//! compared exactly, so the loader refuses two names that differ only by
//! case or surrounding whitespace (they would count as two approvers, or
//! slip past the self-approval check), names with surrounding whitespace
//! or control characters, and names in Warrant's own namespaces.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::signature;

/// Shortest secret or token accepted: anything shorter is guessable.
pub const MIN_SECRET_LEN: usize = 16;
/// Active secrets per reviewer: the current one and the one being rotated in.
pub const MAX_REVIEWER_SECRETS: usize = 2;
/// Prefixes Warrant itself stamps as `submitted_by` (`kafka:<topic>` for
/// ingress, `warrant:sweeper`, `reviewer:<name>`); no configured principal
/// may take one, or it could pass for that door.
pub const RESERVED_NAMESPACES: [&str; 3] = ["kafka:", "warrant:", "reviewer:"];

/// What a bearer token is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Proposes actions and withdraws its own proposals.
    Service,
    /// Reports policy signals, always under its fixed `source`.
    Policy,
    /// Asks to run authorized actions and reports what ran.
    Executor,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Policy => "policy",
            Kind::Executor => "executor",
        }
    }
}

/// The authenticated holder of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: String,
    pub kind: Kind,
    /// The signal source of a policy engine; `None` for other kinds.
    pub source: Option<String>,
}

/// A reviewer from the directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub principal: String,
    pub roles: Vec<String>,
    secrets: Vec<Vec<u8>>,
    /// Ed25519 public keys (at most two, for rotation), by key id.
    pub keys: Vec<ReviewerKey>,
}

/// One of a reviewer's own public keys (docs/signatures.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ReviewerKey {
    /// First 16 hex digits of the SHA-256 of the key.
    pub key_id: String,
    /// The 32-byte public key, lowercase hex.
    pub public_key: String,
}

impl std::fmt::Debug for Reviewer {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer")
            .field("principal", &self.principal)
            .field("roles", &self.roles)
            .field("secrets", &self.secrets.len())
            .field("keys", &self.keys)
            .finish()
    }
}

impl Reviewer {
    pub fn secrets(&self) -> impl Iterator<Item = &[u8]> {
        self.secrets.iter().map(Vec::as_slice)
    }
}

/// Who every record on an ingress topic is from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressIdentities {
    /// The proposer principal of every record on the proposals topic;
    /// `None`: the topic is not declared and its records are dead-lettered.
    pub proposals: Option<String>,
    /// The policy source of every record on the signals topic.
    pub signals: Option<String>,
}

/// The loaded, validated principals file.
#[derive(Clone, Default)]
pub struct Principals {
    tokens: BTreeMap<[u8; 32], Caller>,
    reviewers: BTreeMap<String, Reviewer>,
    ingress: IngressIdentities,
}

impl std::fmt::Debug for Principals {
    // Never print secrets or token hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principals")
            .field("tokens", &self.tokens.len())
            .field("reviewers", &self.reviewers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    #[error("principals file is not valid YAML of the expected shape: {0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("token #{index} ({principal}): {message}")]
    Token {
        index: usize,
        principal: String,
        message: String,
    },
    #[error("reviewer {principal:?}: {message}")]
    Reviewer { principal: String, message: String },
    #[error("the same token is given to {first:?} and {second:?}")]
    SharedToken { first: String, second: String },
    #[error("reviewers {first:?} and {second:?} share a secret, so a signature could not tell them apart")]
    SharedSecret { first: String, second: String },
    #[error("the principals file defines neither tokens nor reviewers")]
    Empty,
    #[error("{what} {name:?}: {problem}")]
    BadName {
        what: &'static str,
        name: String,
        problem: String,
    },
    #[error("{first:?} and {second:?} differ only by case or surrounding whitespace, so they would be two principals for one identity")]
    LookAlike { first: String, second: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<TokenFile>,
    #[serde(default)]
    reviewers: Vec<ReviewerFile>,
    #[serde(default)]
    ingress: IngressFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IngressFile {
    #[serde(default)]
    proposals: Option<IngressProposalsFile>,
    #[serde(default)]
    signals: Option<IngressSignalsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressProposalsFile {
    principal: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressSignalsFile {
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    principal: String,
    kind: Kind,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewerFile {
    principal: String,
    roles: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    /// `ed25519:<64 hex digits>`, the line `warrant keygen` prints.
    #[serde(default)]
    keys: Vec<String>,
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Principals {
    /// Parse and validate the principals file. Every mistake is refused at
    /// load, naming the entry, so a running intake never guesses.
    pub fn parse(text: &[u8]) -> Result<Principals, PrincipalsError> {
        let file: File = serde_yaml::from_slice(text).map_err(PrincipalsError::Yaml)?;
        if file.tokens.is_empty() && file.reviewers.is_empty() {
            return Err(PrincipalsError::Empty);
        }
        let mut principals = Principals::default();
        let mut names = Names::default();
        for entry in &file.tokens {
            names.check("token principal", &entry.principal)?;
            if let Some(source) = &entry.source {
                check_name("policy source", source)?;
            }
        }
        for entry in &file.reviewers {
            names.check("reviewer", &entry.principal)?;
        }
        if let Some(proposals) = &file.ingress.proposals {
            names.check("ingress.proposals.principal", &proposals.principal)?;
        }
        if let Some(signals) = &file.ingress.signals {
            check_name("ingress.signals.source", &signals.source)?;
        }
        principals.ingress = IngressIdentities {
            proposals: file.ingress.proposals.map(|p| p.principal),
            signals: file.ingress.signals.map(|s| s.source),
        };
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let (hash, caller) = validate_token(index + 1, entry)?;
            if let Some(first) = principals.tokens.get(&hash) {
                return Err(PrincipalsError::SharedToken {
                    first: first.principal.clone(),
                    second: caller.principal,
                });
            }
            principals.tokens.insert(hash, caller);
        }
        let mut secret_owner: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        let mut key_owner: BTreeMap<String, String> = BTreeMap::new();
        for entry in file.reviewers {
            let reviewer = validate_reviewer(entry)?;
            if principals.reviewers.contains_key(&reviewer.principal) {
                return Err(PrincipalsError::Reviewer {
                    principal: reviewer.principal,
                    message: "is listed twice".to_owned(),
                });
            }
            for secret in &reviewer.secrets {
                if let Some(first) = secret_owner.insert(secret.clone(), reviewer.principal.clone())
                {
                    if first != reviewer.principal {
                        return Err(PrincipalsError::SharedSecret {
                            first,
                            second: reviewer.principal,
                        });
                    }
                }
            }
            for key in &reviewer.keys {
                if let Some(first) =
                    key_owner.insert(key.key_id.clone(), reviewer.principal.clone())
                {
                    if first != reviewer.principal {
                        return Err(PrincipalsError::SharedSecret {
                            first,
                            second: reviewer.principal,
                        });
                    }
                }
            }
            principals
                .reviewers
                .insert(reviewer.principal.clone(), reviewer);
        }
        Ok(principals)
    }

    /// Who the records of each ingress topic are from.
    pub fn ingress(&self) -> &IngressIdentities {
        &self.ingress
    }

    /// The caller a bearer token belongs to.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        self.tokens.get(&token_hash(token.as_bytes()))
    }

    pub fn reviewer(&self, principal: &str) -> Option<&Reviewer> {
        self.reviewers.get(principal)
    }

    pub fn reviewers(&self) -> impl Iterator<Item = &Reviewer> {
        self.reviewers.values()
    }

    /// The reviewer holding the key `key_id`, and that key.
    pub fn key(&self, key_id: &str) -> Option<(&Reviewer, &ReviewerKey)> {
        self.reviewers.values().find_map(|reviewer| {
            reviewer
                .keys
                .iter()
                .find(|key| key.key_id == key_id)
                .map(|key| (reviewer, key))
        })
    }

    /// The reviewer directory without any secret: names, roles and public
    /// keys, as published to the principals topic so an auditor can tie a
    /// key to a reviewer at a time. Deterministic (sorted by name), so its
    /// digest names the directory version.
    pub fn directory(&self) -> Directory {
        Directory {
            reviewers: self
                .reviewers
                .values()
                .map(|reviewer| DirectoryEntry {
                    principal: reviewer.principal.clone(),
                    roles: reviewer.roles.clone(),
                    keys: reviewer.keys.clone(),
                    hmac: !reviewer.secrets.is_empty(),
                })
                .collect(),
        }
    }

    /// Number of tokens and reviewers, for the start-up log line.
    pub fn counts(&self) -> (usize, usize) {
        (self.tokens.len(), self.reviewers.len())
    }

    /// The reviewer whose secret produced one of `tags` over `message`, and
    /// which tag it was, trying only `only` when given. One MAC is computed
    /// per secret (never per tag), each compared in constant time.
    pub fn signer<T: AsRef<[u8]>>(
        &self,
        message: &[u8],
        tags: &[T],
        only: Option<&str>,
    ) -> Option<(&Reviewer, usize)> {
        self.reviewers
            .values()
            .filter(|reviewer| only.is_none_or(|name| reviewer.principal == name))
            .find_map(|reviewer| {
                reviewer
                    .secrets()
                    .find_map(|secret| signature::matching_tag(secret, message, tags))
                    .map(|tag| (reviewer, tag))
            })
    }
}

/// The published reviewer directory (`warrant.principals`): never secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Directory {
    pub reviewers: Vec<DirectoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub principal: String,
    pub roles: Vec<String>,
    pub keys: Vec<ReviewerKey>,
    /// Whether intake also holds an HMAC secret for this reviewer (its
    /// decisions can then be attested by intake, not proven by a key).
    pub hmac: bool,
}

impl Directory {
    /// The exact bytes published: compact JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Every principal name seen so far, by its case- and padding-folded form.
#[derive(Default)]
struct Names(BTreeMap<String, String>);

impl Names {
    /// Refuse a bad name, or one that folds to a name already seen but is
    /// spelled differently. The same exact name may appear again (one
    /// principal with a service and an executor token, say).
    fn check(&mut self, what: &'static str, name: &str) -> Result<(), PrincipalsError> {
        check_name(what, name)?;
        for namespace in RESERVED_NAMESPACES {
            if name.to_lowercase().starts_with(namespace) {
                return Err(PrincipalsError::BadName {
                    what,
                    name: name.to_owned(),
                    problem: format!("names in Warrant's own namespace {namespace:?} are reserved"),
                });
            }
        }
        let folded = name.trim().to_lowercase();
        match self.0.get(&folded) {
            Some(first) if first != name => Err(PrincipalsError::LookAlike {
                first: first.clone(),
                second: name.to_owned(),
            }),
            Some(_) => Ok(()),
            None => {
                self.0.insert(folded, name.to_owned());
                Ok(())
            }
        }
    }
}

/// Non-empty, and text that reads as what it is: no control or invisible
/// characters, no whitespace but single spaces inside, NFKC form (the
/// canonical text rules of actions), so `bob` and `bob\u{200b}` or `ｂob`
/// cannot be two reviewers for one person.
fn check_name(what: &'static str, name: &str) -> Result<(), PrincipalsError> {
    let problem = if name.trim().is_empty() {
        "must not be empty".to_owned()
    } else if name.trim() != name {
        "must not begin or end with whitespace".to_owned()
    } else if name.chars().any(char::is_control) {
        "must not hold control characters".to_owned()
    } else {
        match warrant_authority::check_text(name) {
            Ok(()) => return Ok(()),
            Err(problem) => problem,
        }
    };
    Err(PrincipalsError::BadName {
        what,
        name: name.to_owned(),
        problem,
    })
}

fn validate_token(index: usize, entry: TokenFile) -> Result<([u8; 32], Caller), PrincipalsError> {
    let fail = |message: &str| PrincipalsError::Token {
        index,
        principal: entry.principal.clone(),
        message: message.to_owned(),
    };
    if entry.principal.trim().is_empty() {
        return Err(fail("principal must not be empty"));
    }
    let hash = match (&entry.token, &entry.token_sha256) {
        (Some(token), None) => {
            if token.len() < MIN_SECRET_LEN {
                return Err(fail(&format!(
                    "token must be at least {MIN_SECRET_LEN} characters"
                )));
            }
            token_hash(token.as_bytes())
        }
        (None, Some(hex_hash)) => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(hex_hash.trim(), &mut hash)
                .map_err(|_| fail("token_sha256 must be 64 hex digits"))?;
            hash
        }
        (Some(_), Some(_)) => return Err(fail("give token or token_sha256, not both")),
        (None, None) => return Err(fail("needs token or token_sha256")),
    };
    let source = match (entry.kind, &entry.source) {
        (Kind::Policy, Some(source)) if !source.trim().is_empty() => Some(source.clone()),
        (Kind::Policy, _) => return Err(fail("a policy engine needs a non-empty source")),
        (Kind::Service | Kind::Executor, None) => None,
        (Kind::Service | Kind::Executor, Some(_)) => {
            return Err(fail("only a policy engine has a source"))
        }
    };
    Ok((
        hash,
        Caller {
            principal: entry.principal,
            kind: entry.kind,
            source,
        },
    ))
}

fn validate_reviewer(entry: ReviewerFile) -> Result<Reviewer, PrincipalsError> {
    let fail = |message: String| PrincipalsError::Reviewer {
        principal: entry.principal.clone(),
        message,
    };
    if entry.principal.trim().is_empty() {
        return Err(fail("principal must not be empty".to_owned()));
    }
    if entry.roles.is_empty() || entry.roles.iter().any(|role| role.trim().is_empty()) {
        return Err(fail(
            "needs at least one role, and no empty role".to_owned(),
        ));
    }
    if entry.secrets.len() > MAX_REVIEWER_SECRETS {
        return Err(fail(format!(
            "has {} secrets; at most {MAX_REVIEWER_SECRETS} (the current one and the one being rotated in)",
            entry.secrets.len()
        )));
    }
    if entry.keys.len() > MAX_REVIEWER_SECRETS {
        return Err(fail(format!(
            "has {} keys; at most {MAX_REVIEWER_SECRETS} (the current one and the one being rotated in)",
            entry.keys.len()
        )));
    }
    if entry.secrets.is_empty() && entry.keys.is_empty() {
        return Err(fail(
            "needs an Ed25519 key (keys) or an HMAC secret (secrets) to sign decisions with"
                .to_owned(),
        ));
    }
    let mut keys: Vec<ReviewerKey> = Vec::with_capacity(entry.keys.len());
    for text in &entry.keys {
        let key = text
            .strip_prefix("ed25519:")
            .ok_or(())
            .and_then(|hex_key| {
                warrant_authority::signed::parse_public_key(hex_key).map_err(|_| ())
            })
            .map_err(|()| {
                fail(format!(
                    "key {:?} is not ed25519:<64 lowercase hex digits> of a valid Ed25519 public key",
                    text.chars().take(80).collect::<String>()
                ))
            })?;
        let key = ReviewerKey {
            key_id: warrant_authority::signed::key_id(key.as_bytes()),
            public_key: hex::encode(key.as_bytes()),
        };
        if keys.contains(&key) {
            return Err(fail("lists the same key twice".to_owned()));
        }
        keys.push(key);
    }
    if entry.secrets.iter().any(|s| s.len() < MIN_SECRET_LEN) {
        return Err(fail(format!(
            "every secret must be at least {MIN_SECRET_LEN} characters"
        )));
    }
    let distinct: BTreeSet<&String> = entry.secrets.iter().collect();
    if distinct.len() != entry.secrets.len() {
        return Err(fail("lists the same secret twice".to_owned()));
    }
    Ok(Reviewer {
        keys,
        principal: entry.principal.clone(),
        roles: entry.roles.clone(),
        secrets: entry
            .secrets
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/examples/principals.yaml");

    fn error_of(text: &str) -> String {
        match Principals::parse(text.as_bytes()) {
            Ok(_) => panic!("should have been refused: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_example_file_loads() {
        let principals = Principals::parse(EXAMPLE.as_bytes()).expect("example is valid");
        assert_eq!(principals.counts(), (3, 4));
        let opa = principals
            .caller("example-policy-opa-token-0001")
            .expect("opa token");
        assert_eq!(opa.principal, "policy:opa");
        assert_eq!(opa.kind, Kind::Policy);
        assert_eq!(opa.source.as_deref(), Some("opa"));
        let remediator = principals
            .caller("example-service-remediator-token-0001")
            .expect("service token");
        assert_eq!(remediator.kind, Kind::Service);
        assert_eq!(remediator.source, None);
        assert_eq!(
            principals
                .caller("example-executor-deployer-token-0001")
                .map(|c| c.kind),
            Some(Kind::Executor)
        );
        assert!(principals.caller("example-policy-opa-token-0002").is_none());
        assert_eq!(
            principals.reviewer("carol").map(|r| r.roles.clone()),
            Some(vec!["ic".to_owned()])
        );
        assert_eq!(
            principals.reviewer("alice").map(|r| r.secrets().count()),
            Some(2)
        );
    }

    #[test]
    fn token_hashes_are_accepted_instead_of_tokens() {
        let hash = hex::encode(token_hash(b"a-token-of-enough-length"));
        let text = format!(
            "tokens:\n  - principal: svc:a\n    kind: service\n    token_sha256: \"{hash}\"\n"
        );
        let principals = Principals::parse(text.as_bytes()).expect("valid");
        assert_eq!(
            principals
                .caller("a-token-of-enough-length")
                .map(|c| c.principal.as_str()),
            Some("svc:a")
        );
        assert!(
            principals.caller(&hash).is_none(),
            "the hash is not the token"
        );
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        let token = |extra: &str| {
            format!("tokens:\n  - principal: p:x\n    kind: policy\n    token: \"0123456789abcdef\"\n{extra}")
        };
        assert!(error_of(&token(""))
            .contains("token #1 (p:x): a policy engine needs a non-empty source"));
        assert!(
            error_of("tokens:\n  - principal: s\n    kind: service\n    token: short\n")
                .contains("at least 16")
        );
        assert!(error_of("tokens:\n  - principal: s\n    kind: service\n    token: \"0123456789abcdef\"\n    source: x\n")
            .contains("only a policy engine has a source"));
        assert!(error_of(
            "tokens:\n  - principal: s\n    kind: admin\n    token: \"0123456789abcdef\"\n"
        )
        .contains("unknown variant `admin`"));
        assert!(error_of("tokens:\n  - principal: s\n    kind: service\n")
            .contains("needs token or token_sha256"));
        assert!(error_of(
            "tokens:\n  - {principal: a, kind: service, token: \"0123456789abcdef\"}\n  - {principal: b, kind: executor, token: \"0123456789abcdef\"}\n"
        )
        .contains("the same token is given to \"a\" and \"b\""));
        assert!(
            error_of("reviewers:\n  - {principal: r, roles: [sre], secrets: [a, b, c]}\n")
                .contains("has 3 secrets; at most 2")
        );
        assert!(error_of(
            "reviewers:\n  - {principal: r, roles: [], secrets: [\"0123456789abcdef\"]}\n"
        )
        .contains("needs at least one role"));
        assert!(error_of(
            "reviewers:\n  - {principal: r, roles: [x], secrets: [\"0123456789abcdef\"]}\n  - {principal: s, roles: [x], secrets: [\"0123456789abcdef\"]}\n"
        )
        .contains("share a secret"));
        assert!(error_of(
            "reviewers:\n  - {principal: r, roles: [x], secrets: [\"0123456789abcdef\"]}\n  - {principal: r, roles: [x], secrets: [\"0123456789abcdeg\"]}\n"
        )
        .contains("listed twice"));
        assert!(error_of("reviewers: []\nadmins: []\n").contains("unknown field `admins`"));
        assert!(error_of("{}\n").contains("neither tokens nor reviewers"));
    }

    #[test]
    fn the_signer_is_whoever_holds_the_key() {
        let principals = Principals::parse(EXAMPLE.as_bytes()).expect("valid");
        let message = b"1700000000.{}";
        let bob = principals.reviewer("bob").expect("bob");
        let secret = bob.secrets().next().expect("a secret").to_vec();
        let mac = signature::sign(&secret, message);
        let signed_by = |message: &[u8], tags: &[Vec<u8>], only| {
            principals
                .signer(message, tags, only)
                .map(|(r, tag)| (r.principal.clone(), tag))
        };
        assert_eq!(
            signed_by(message, std::slice::from_ref(&mac), None),
            Some(("bob".to_owned(), 0))
        );
        assert_eq!(
            signed_by(message, std::slice::from_ref(&mac), Some("bob")),
            Some(("bob".to_owned(), 0))
        );
        assert_eq!(
            signed_by(message, std::slice::from_ref(&mac), Some("alice")),
            None
        );
        assert_eq!(
            signed_by(b"1700000000.{ }", std::slice::from_ref(&mac), None),
            None
        );
        // The matching tag is found wherever it sits among bogus ones.
        assert_eq!(
            signed_by(message, &[vec![0u8; 32], vec![1u8; 32], mac.clone()], None),
            Some(("bob".to_owned(), 2))
        );
        // Both of alice's secrets are active during a rotation.
        let alice = principals.reviewer("alice").expect("alice");
        for secret in alice.secrets() {
            let mac = signature::sign(secret, message);
            assert_eq!(
                principals
                    .signer(message, &[mac], None)
                    .map(|(r, _)| r.principal.as_str()),
                Some("alice")
            );
        }
    }

    #[test]
    fn one_identity_cannot_load_as_two_principals() {
        for (text, expected) in [
            (
                "reviewers:\n  - {principal: alice, roles: [sre], secrets: [\"0123456789abcdef\"]}\n  - {principal: Alice, roles: [sre], secrets: [\"0123456789abcdeg\"]}\n",
                "\"alice\" and \"Alice\" differ only by case",
            ),
            (
                "tokens:\n  - {principal: Alice, kind: service, token: \"0123456789abcdef\"}\nreviewers:\n  - {principal: alice, roles: [sre], secrets: [\"0123456789abcdeg\"]}\n",
                "\"Alice\" and \"alice\" differ only by case",
            ),
            (
                "reviewers:\n  - {principal: \" bob\", roles: [sre], secrets: [\"0123456789abcdef\"]}\n",
                "reviewer \" bob\": must not begin or end with whitespace",
            ),
            (
                "tokens:\n  - {principal: \"svc\\tx\", kind: service, token: \"0123456789abcdef\"}\n",
                "must not hold control characters",
            ),
            (
                "tokens:\n  - {principal: \"kafka:warrant.proposals\", kind: service, token: \"0123456789abcdef\"}\n",
                "namespace \"kafka:\" are reserved",
            ),
            (
                "tokens:\n  - {principal: \"Warrant:sweeper\", kind: service, token: \"0123456789abcdef\"}\n",
                "namespace \"warrant:\" are reserved",
            ),
            (
                "reviewers:\n  - {principal: \"reviewer:bob\", roles: [sre], secrets: [\"0123456789abcdef\"]}\n",
                "namespace \"reviewer:\" are reserved",
            ),
            (
                "reviewers:\n  - {principal: bob, roles: [sre], secrets: [\"0123456789abcdef\"]}\ningress:\n  proposals: {principal: BOB}\n",
                "\"bob\" and \"BOB\" differ only by case",
            ),
            (
                "reviewers:\n  - {principal: \"bob\\u200b\", roles: [sre], secrets: [\"0123456789abcdef\"]}\n",
                "must not hold invisible character U+200B",
            ),
            (
                "reviewers:\n  - {principal: \"\\uff42ob\", roles: [sre], secrets: [\"0123456789abcdef\"]}\n",
                "must be in Unicode NFKC form",
            ),
        ] {
            let error = error_of(text);
            assert!(error.contains(expected), "{error}");
        }
        // One principal may hold several tokens under its exact name.
        let text = "tokens:\n  - {principal: svc, kind: service, token: \"0123456789abcdef\"}\n  - {principal: svc, kind: executor, token: \"0123456789abcdeg\"}\n";
        assert!(Principals::parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn reviewers_may_hold_their_own_keys_instead_of_secrets() {
        let key = "197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61";
        let text = format!(
            "reviewers:\n  - {{principal: dave, roles: [sre], keys: [\"ed25519:{key}\"]}}\n"
        );
        let principals = Principals::parse(text.as_bytes()).expect("valid");
        let (dave, found) = principals.key("b600306cfa76723f").expect("the key");
        assert_eq!(
            (dave.principal.as_str(), found.public_key.as_str()),
            ("dave", key)
        );
        let directory = principals.directory();
        assert_eq!(directory.reviewers[0].keys[0].key_id, "b600306cfa76723f");
        assert!(!directory.reviewers[0].hmac);
        let published = String::from_utf8(directory.to_bytes()).expect("utf-8");
        assert!(!published.contains("secret"), "{published}");
        for (bad, expected) in [
            (
                format!("[\"{key}\"]"),
                "is not ed25519:<64 lowercase hex digits>",
            ),
            (
                format!("[\"ed25519:{}\"]", key.to_uppercase()),
                "is not ed25519:",
            ),
            (
                format!("[\"ed25519:{key}\", \"ed25519:{key}\"]"),
                "the same key twice",
            ),
            (
                "[]".to_owned(),
                "needs an Ed25519 key (keys) or an HMAC secret",
            ),
        ] {
            let text = format!("reviewers:\n  - {{principal: dave, roles: [sre], keys: {bad}}}\n");
            assert!(
                error_of(&text).contains(expected),
                "{bad}: {}",
                error_of(&text)
            );
        }
        let shared = format!("reviewers:\n  - {{principal: dave, roles: [sre], keys: [\"ed25519:{key}\"]}}\n  - {{principal: erin, roles: [sre], keys: [\"ed25519:{key}\"]}}\n");
        assert!(error_of(&shared).contains("share a secret"));
    }

    #[test]
    fn ingress_topics_are_declared_with_their_identity() {
        let principals = Principals::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(
            principals.ingress(),
            &IngressIdentities {
                proposals: Some("agent:remediator".to_owned()),
                signals: Some("opa".to_owned()),
            }
        );
        let undeclared = Principals::parse(
            b"tokens:\n  - {principal: svc, kind: service, token: \"0123456789abcdef\"}\n",
        )
        .expect("valid");
        assert_eq!(undeclared.ingress(), &IngressIdentities::default());
        assert!(
            error_of("tokens: []\nreviewers: []\ningress:\n  signals: {principal: x}\n")
                .contains("unknown field `principal`")
        );
    }

    #[test]
    fn debug_output_reveals_no_secret() {
        let principals = Principals::parse(EXAMPLE.as_bytes()).expect("valid");
        let shown = format!("{principals:?}");
        assert!(!shown.contains("example-"), "{shown}");
    }
}
