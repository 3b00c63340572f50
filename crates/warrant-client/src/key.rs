//! A reviewer's key file: one Ed25519 key, as JSON, readable by its owner
//! only.
//!
//! ```json
//! {
//!   "format": "warrant.key.v1",
//!   "scheme": "ed25519",
//!   "principal": "erin",
//!   "key_id": "b600306cfa76723f",
//!   "public_key": "<64 lowercase hex digits>",
//!   "secret_key": "<64 lowercase hex digits: the Ed25519 seed>"
//! }
//! ```
//!
//! `principal` is a label for the person holding the file and is never
//! sent: intake knows the reviewer from the key alone (its public half in
//! the principals file). `public_key` and `key_id` are redundant with the
//! secret and are checked against it on load, so a file whose halves were
//! mixed up is refused instead of signing as someone else.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use warrant_authority::signed;
use zeroize::{Zeroize as _, Zeroizing};

/// The value of the `format` field this build writes and reads.
pub const KEY_FILE_FORMAT: &str = "warrant.key.v1";

/// Why a key file could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: already exists; refusing to overwrite a key (choose another --out, or remove the old file yourself)", .path.display())]
    Exists { path: PathBuf },
    #[error("{}: cannot {op}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a Warrant key file: {reason}", .path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: the public key or key id does not belong to the secret key in the same file", .path.display())]
    Mismatch { path: PathBuf },
    #[error("{}: readable by others (mode {mode:o}); a private key must be readable by its owner only: chmod 600 it, or make a new one", .path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

/// The file as it is written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    format: String,
    scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    key_id: String,
    public_key: String,
    secret_key: String,
}

impl Drop for KeyFileJson {
    fn drop(&mut self) {
        // The parsed text of the secret is wiped like the key itself.
        self.secret_key.zeroize();
    }
}

/// A reviewer's signing key. The secret half never leaves this value
/// except into its own key file; `Debug` shows only the public half.
pub struct ReviewerKey {
    signing: SigningKey,
    key_id: String,
    principal: Option<String>,
}

impl fmt::Debug for ReviewerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReviewerKey")
            .field("key_id", &self.key_id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl ReviewerKey {
    /// A new key from 32 random bytes of the operating system.
    pub fn generate(principal: Option<String>) -> Result<ReviewerKey, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|error| KeyError::Random(error.to_string()))?;
        Ok(ReviewerKey::from_seed(&seed, principal))
    }

    /// The key of a given 32-byte Ed25519 seed (tests, and loading).
    pub fn from_seed(seed: &[u8; 32], principal: Option<String>) -> ReviewerKey {
        let signing = SigningKey::from_bytes(seed);
        let key_id = signed::key_id(signing.verifying_key().as_bytes());
        ReviewerKey {
            signing,
            key_id,
            principal,
        }
    }

    /// [`signed::key_id`] of the public key: what intake looks the
    /// reviewer up by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The label written in the key file, if any.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// The public key, 64 lowercase hex digits.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// The public key as the principals file lists it under a reviewer's
    /// `keys:`, `ed25519:<hex>`.
    pub fn principals_entry(&self) -> String {
        format!("{}:{}", signed::ED25519, self.public_key_hex())
    }

    /// The Ed25519 signature of `message`, 128 lowercase hex digits.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    fn to_json(&self) -> Result<Zeroizing<String>, serde_json::Error> {
        let file = KeyFileJson {
            format: KEY_FILE_FORMAT.to_owned(),
            scheme: signed::ED25519.to_owned(),
            principal: self.principal.clone(),
            key_id: self.key_id.clone(),
            public_key: self.public_key_hex(),
            secret_key: hex::encode(self.signing.to_bytes()),
        };
        let mut text = Zeroizing::new(serde_json::to_string_pretty(&file)?);
        text.push('\n');
        Ok(text)
    }

    /// Write the key to a new file at `path`, readable and writable by its
    /// owner only (0600 on Unix). An existing file is never overwritten:
    /// losing a registered key locks a reviewer out, and a key file is
    /// not something to replace by accident.
    pub fn create(&self, path: &Path) -> Result<(), KeyError> {
        let text = self.to_json().map_err(|error| KeyError::Format {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        let io = |op| {
            let path = path.to_owned();
            move |source| KeyError::Io { op, path, source }
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            // Set at creation, so the secret is never readable by others,
            // not even between creating and chmod-ing the file.
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io("create")(source)
            }
        })?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            drop(file);
            // A half-written key file would fail to load later, far from
            // the cause; remove it now and say why.
            let _ = std::fs::remove_file(path);
            return Err(io("write")(source));
        }
        Ok(())
    }

    /// Read a key file written by [`ReviewerKey::create`]. Refused when it
    /// is readable by group or others (as ssh refuses such keys), is not
    /// this format, or its public half is not its secret's.
    pub fn load(path: &Path) -> Result<ReviewerKey, KeyError> {
        let io = |op| {
            let path = path.to_owned();
            move |source| KeyError::Io { op, path, source }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .map_err(io("read"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io("read"))?);
        ReviewerKey::parse(&text).map_err(|reason| match reason {
            ParseError::Format(reason) => KeyError::Format {
                path: path.to_owned(),
                reason,
            },
            ParseError::Mismatch => KeyError::Mismatch {
                path: path.to_owned(),
            },
        })
    }

    fn parse(text: &str) -> Result<ReviewerKey, ParseError> {
        let file: KeyFileJson =
            serde_json::from_str(text).map_err(|error| ParseError::Format(error.to_string()))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(ParseError::Format(format!(
                "format {:?}, expected {KEY_FILE_FORMAT:?}",
                file.format
            )));
        }
        if file.scheme != signed::ED25519 {
            return Err(ParseError::Format(format!(
                "scheme {:?}, expected {:?}",
                file.scheme,
                signed::ED25519
            )));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        let lowercase = file
            .secret_key
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lowercase || hex::decode_to_slice(file.secret_key.as_bytes(), seed.as_mut()).is_err() {
            return Err(ParseError::Format(
                "secret_key is not 64 lowercase hex digits".to_owned(),
            ));
        }
        let key = ReviewerKey::from_seed(&seed, file.principal.clone());
        if key.public_key_hex() != file.public_key || key.key_id != file.key_id {
            return Err(ParseError::Mismatch);
        }
        Ok(key)
    }
}

enum ParseError {
    Format(String),
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ReviewerKey {
        ReviewerKey::from_seed(&[7u8; 32], Some("erin".to_owned()))
    }

    #[test]
    fn a_created_key_file_loads_back_as_the_same_key_and_is_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("erin.key");
        key().create(&path).expect("created");
        let loaded = ReviewerKey::load(&path).expect("loaded");
        assert_eq!(loaded.key_id(), key().key_id());
        assert_eq!(loaded.public_key_hex(), key().public_key_hex());
        assert_eq!(loaded.principal(), Some("erin"));
        assert_eq!(loaded.sign_hex(b"m"), key().sign_hex(b"m"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["format"], KEY_FILE_FORMAT);
        assert_eq!(json["scheme"], "ed25519");
        assert_eq!(json["key_id"], key().key_id());
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("erin.key");
        std::fs::write(&path, "precious").expect("write");
        let error = key().create(&path).expect_err("refused");
        assert!(matches!(error, KeyError::Exists { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "precious");
    }

    #[test]
    fn generated_keys_differ_and_match_their_key_id() {
        let a = ReviewerKey::generate(None).expect("random");
        let b = ReviewerKey::generate(None).expect("random");
        assert_ne!(a.public_key_hex(), b.public_key_hex());
        let public = signed::parse_public_key(&a.public_key_hex()).expect("a valid key");
        assert_eq!(a.key_id(), signed::key_id(public.as_bytes()));
        assert_eq!(
            a.principals_entry(),
            format!("ed25519:{}", a.public_key_hex())
        );
    }

    #[test]
    fn a_signature_verifies_with_the_public_key() {
        let key = key();
        let public = signed::parse_public_key(&key.public_key_hex()).expect("key");
        let signature = signed::parse_signature(&key.sign_hex(b"hello")).expect("sig");
        assert_eq!(signed::verify(&public, b"hello", &signature), Ok(()));
        assert!(signed::verify(&public, b"hellO", &signature).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("erin.key");
        key().create(&path).expect("created");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = ReviewerKey::load(&path).expect_err("refused");
        assert!(
            matches!(error, KeyError::Permissions { mode: 0o644, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_file_whose_halves_do_not_match_is_refused() {
        let other = ReviewerKey::from_seed(&[8u8; 32], None);
        let mut json: serde_json::Value =
            serde_json::from_str(&key().to_json().expect("json")).expect("parse");
        json["public_key"] = other.public_key_hex().into();
        json["key_id"] = other.key_id().into();
        assert!(matches!(
            ReviewerKey::parse(&json.to_string()),
            Err(ParseError::Mismatch)
        ));
        let mut upper = json.clone();
        upper["secret_key"] = hex::encode([0xabu8; 32]).to_uppercase().into();
        assert!(matches!(
            ReviewerKey::parse(&upper.to_string()),
            Err(ParseError::Format(_))
        ));
        let mut unknown = json;
        unknown["comment"] = "hi".into();
        assert!(matches!(
            ReviewerKey::parse(&unknown.to_string()),
            Err(ParseError::Format(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", key());
        assert!(shown.contains(key().key_id()));
        assert!(!shown.contains(&hex::encode([7u8; 32])));
    }
}
