//! Any ruleset file: parsing never panics, and a ruleset that loads
//! resolves any action (here, a few fixed ones) without panicking, its
//! `when:` conditions included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warrant_authority::{Facts, Ruleset};

fuzz_target!(|data: &[u8]| {
    if let Ok(ruleset) = Ruleset::parse(data) {
        for (kind, target) in [
            ("service.restart", "prod/payments/api"),
            ("db.migrate", "staging/billing"),
            ("", ""),
        ] {
            let action = warrant_schema::Action {
                kind: kind.to_owned(),
                target: target.to_owned(),
                parameters: Default::default(),
            };
            let proposer = warrant_schema::Proposer {
                principal: "agent:fuzz".to_owned(),
                kind: warrant_schema::ProposerKind::Agent,
                model: None,
            };
            let _ = ruleset.resolve(&Facts {
                action: &action,
                proposer: &proposer,
                context_refs: &[],
            });
        }
    }
});
