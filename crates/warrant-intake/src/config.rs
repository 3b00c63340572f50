//! The two files intake loads, the ruleset and the principals, and the
//! shared handle through which a SIGHUP swaps both at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use warrant_authority::Ruleset;

use crate::principals::Principals;
use crate::Error;

/// A validated ruleset with the exact bytes it was parsed from (what
/// `warrant.rulesets` stores under its digest).
#[derive(Debug, Clone)]
pub struct LoadedRuleset {
    pub ruleset: Ruleset,
    pub text: Vec<u8>,
}

impl LoadedRuleset {
    pub fn parse(text: Vec<u8>) -> Result<LoadedRuleset, warrant_authority::RulesetError> {
        let ruleset = Ruleset::parse(&text)?;
        Ok(LoadedRuleset { ruleset, text })
    }

    pub fn load(path: &Path) -> Result<LoadedRuleset, Error> {
        let text = read(path)?;
        LoadedRuleset::parse(text).map_err(|source| Error::Ruleset {
            path: path.to_owned(),
            source,
        })
    }
}

pub fn load_principals(path: &Path) -> Result<Principals, Error> {
    let text = read(path)?;
    Principals::parse(&text).map_err(|source| Error::Principals {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// What every request reads: the ruleset and principals in force.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ruleset: Arc<LoadedRuleset>,
    pub principals: Arc<Principals>,
}

/// The current [`Snapshot`], swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Shared(Arc<RwLock<Snapshot>>);

impl Shared {
    pub fn new(ruleset: LoadedRuleset, principals: Principals) -> Shared {
        Shared(Arc::new(RwLock::new(Snapshot {
            ruleset: Arc::new(ruleset),
            principals: Arc::new(principals),
        })))
    }

    pub fn snapshot(&self) -> Snapshot {
        // A poisoned lock still holds a complete snapshot: swaps are one assignment.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, ruleset: Arc<LoadedRuleset>, principals: Arc<Principals>) {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Snapshot {
            ruleset,
            principals,
        };
    }
}

/// Where the files live, for reloads.
#[derive(Debug, Clone)]
pub struct Paths {
    pub ruleset: PathBuf,
    pub principals: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_ruleset_loads_and_resolves() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/ruleset.yaml");
        let loaded = LoadedRuleset::load(&path).expect("example ruleset is valid");
        assert_eq!(
            loaded.ruleset.digest(),
            warrant_authority::sha256_hex(&std::fs::read(&path).expect("readable"))
        );
        let restart = warrant_schema::samples::action();
        assert_eq!(loaded.ruleset.resolve(&restart).id, "prod-restarts");
        let mut other = restart.clone();
        other.target = "staging/payments/api".to_owned();
        assert_eq!(loaded.ruleset.resolve(&other).id, "everything-else");
        // Every role the example rules name is held by some example reviewer.
        let principals = load_principals(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/principals.yaml"),
        )
        .expect("example principals are valid");
        for rule in loaded.ruleset.rules() {
            for role in rule
                .requirement
                .approver_roles
                .iter()
                .chain(&rule.requirement.override_roles)
            {
                assert!(
                    principals.reviewers().any(|r| r.roles.contains(role)),
                    "no example reviewer holds {role} (rule {})",
                    rule.id
                );
            }
        }
    }

    #[test]
    fn missing_and_invalid_files_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.yaml");
        let error = LoadedRuleset::load(&missing).expect_err("missing");
        assert!(error.to_string().contains("nope.yaml"), "{error}");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "version: x\nrules: []\n").expect("write");
        let error = LoadedRuleset::load(&bad).expect_err("no rules");
        assert!(error.to_string().contains("bad.yaml"), "{error}");
        let error = load_principals(&bad).expect_err("not principals");
        assert!(error.to_string().contains("bad.yaml"), "{error}");
    }
}
