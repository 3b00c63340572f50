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

/// What `warrant-intake --check-config` reports: both files loaded and
/// validated with the loaders intake runs on, without touching Kafka.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigCheck {
    pub ruleset_version: String,
    /// SHA-256 of the ruleset file's bytes: what proposals will carry.
    pub ruleset_digest: String,
    pub rules: usize,
    pub tokens: usize,
    pub reviewers: usize,
    /// `rule-id: role` for every role a rule names that no reviewer holds:
    /// instances under such a rule could never be approved (or overridden)
    /// and would only expire.
    pub unheld_roles: Vec<String>,
}

impl ConfigCheck {
    /// Whether intake may run on these files. Loading already refuses every
    /// malformed file; a role nobody holds loads but cannot work.
    pub fn passed(&self) -> bool {
        self.unheld_roles.is_empty()
    }
}

/// Load and cross-check the two files.
pub fn check(paths: &Paths) -> Result<ConfigCheck, Error> {
    let loaded = LoadedRuleset::load(&paths.ruleset)?;
    let principals = load_principals(&paths.principals)?;
    let (tokens, reviewers) = principals.counts();
    let mut unheld_roles = Vec::new();
    for rule in loaded.ruleset.rules() {
        let requirement = &rule.requirement;
        for role in requirement
            .approver_roles
            .iter()
            .chain(&requirement.override_roles)
        {
            let entry = format!("{}: {role}", rule.id);
            if !principals.reviewers().any(|r| r.roles.contains(role))
                && !unheld_roles.contains(&entry)
            {
                unheld_roles.push(entry);
            }
        }
    }
    Ok(ConfigCheck {
        ruleset_version: loaded.ruleset.version().to_owned(),
        ruleset_digest: loaded.ruleset.digest().to_owned(),
        rules: loaded.ruleset.rules().len(),
        tokens,
        reviewers,
        unheld_roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples")
            .join(name)
    }

    fn example_paths() -> Paths {
        Paths {
            ruleset: example("ruleset.yaml"),
            principals: example("principals.yaml"),
        }
    }

    #[test]
    fn the_example_ruleset_loads_and_resolves() {
        let path = example("ruleset.yaml");
        let loaded = LoadedRuleset::load(&path).expect("example ruleset is valid");
        assert_eq!(
            loaded.ruleset.digest(),
            warrant_authority::sha256_hex(&std::fs::read(&path).expect("readable"))
        );
        let proposed = warrant_schema::samples::action_proposed();
        let rule_of = |action: &warrant_schema::Action| {
            loaded
                .ruleset
                .resolve(&warrant_authority::Facts {
                    action,
                    proposer: &proposed.proposer,
                    context_refs: &proposed.context_refs,
                })
                .rule
                .id
                .clone()
        };
        let restart = warrant_schema::samples::action();
        assert_eq!(rule_of(&restart), "prod-restarts");
        let mut other = restart.clone();
        other.target = "staging/payments/api".to_owned();
        assert_eq!(rule_of(&other), "everything-else");
    }

    #[test]
    fn the_example_files_pass_the_check() {
        let check = check(&example_paths()).expect("example files load");
        assert!(check.passed(), "{check:?}");
        assert_eq!(check.rules, 6, "{check:?}");
        assert!(check.tokens >= 1 && check.reviewers >= 2, "{check:?}");
    }

    #[test]
    fn the_check_names_a_role_no_reviewer_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let principals = std::fs::read_to_string(example("principals.yaml")).expect("readable");
        // Rename the role every reviewer with it holds: the rules still name it.
        let path = dir.path().join("principals.yaml");
        std::fs::write(&path, principals.replace("sre", "site-reliability")).expect("write");
        let paths = Paths {
            ruleset: example("ruleset.yaml"),
            principals: path,
        };
        let check = check(&paths).expect("both files still load");
        assert!(!check.passed());
        assert!(
            check.unheld_roles.iter().any(|r| r == "prod-restarts: sre"),
            "{:?}",
            check.unheld_roles
        );
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
