//! A reviewer's decision from the command line's flags: parsed and checked
//! before anything is fetched, signed or sent.

use std::collections::BTreeMap;

use warrant_client::{Decision, SignedScope};
use warrant_schema::DecisionVerdict;

/// `--constraint K=V`, each key at most once.
pub fn constraints(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("--constraint {pair:?}: expected KEY=VALUE"));
        };
        if key.trim().is_empty() {
            return Err(format!("--constraint {pair:?}: the key is empty"));
        }
        if map.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("--constraint {key:?} is given twice"));
        }
    }
    Ok(map)
}

/// `--not-after`: RFC 3339 or unix milliseconds, and not already past
/// (an approval that has expired before it is signed authorizes nothing).
pub fn not_after(text: Option<&str>, now_millis: i64) -> Result<Option<i64>, String> {
    let Some(text) = text else {
        return Ok(None);
    };
    let at = warrant_replay::time::parse_time(text).map_err(|why| format!("--not-after {why}"))?;
    if at <= now_millis {
        return Err(format!(
            "--not-after {text:?} is not in the future ({})",
            warrant_replay::time::format_millis(at)
        ));
    }
    Ok(Some(at))
}

/// The flags of one decision.
#[derive(Debug, Clone, Default)]
pub struct Flags<'a> {
    pub justification: &'a str,
    pub not_after: Option<&'a str>,
    pub max_executions: Option<i32>,
    pub constraints: &'a [String],
    pub evidence: &'a [String],
}

/// The decision the flags describe, or what is wrong with them.
pub fn decision(
    verdict: DecisionVerdict,
    flags: &Flags<'_>,
    now_millis: i64,
) -> Result<Decision, String> {
    // The fold refuses an override without a reason (JustificationRequired);
    // saying so here costs the reviewer no signature.
    if verdict == DecisionVerdict::Override && flags.justification.trim().is_empty() {
        return Err("an override needs a --justification that says why".to_owned());
    }
    Ok(Decision {
        verdict,
        justification: flags.justification.to_owned(),
        scope: SignedScope {
            constraints: constraints(flags.constraints)?,
            not_after: not_after(flags.not_after, now_millis)?,
            max_executions: flags.max_executions,
        },
        evidence_refs: flags.evidence.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn constraints_are_key_value_pairs_each_key_once() {
        let pairs = ["strategy=rolling".to_owned(), "note=a=b".to_owned()];
        let map = constraints(&pairs).expect("valid");
        assert_eq!(map["strategy"], "rolling");
        assert_eq!(map["note"], "a=b", "only the first = splits");
        assert!(constraints(&["novalue".to_owned()]).is_err());
        assert!(constraints(&["=x".to_owned()]).is_err());
        assert!(constraints(&["a=1".to_owned(), "a=2".to_owned()])
            .expect_err("twice")
            .contains("twice"));
    }

    #[test]
    fn not_after_takes_rfc3339_or_unix_millis_in_the_future() {
        assert_eq!(not_after(None, NOW), Ok(None));
        assert_eq!(
            not_after(Some("1800000060000"), NOW),
            Ok(Some(1_800_000_060_000))
        );
        // NOW is 2027-01-15T08:00:00Z; an hour later, in UTC and at +01:00.
        let later = Ok(Some(NOW + 3_600_000));
        assert_eq!(not_after(Some("2027-01-15T09:00:00Z"), NOW), later);
        assert_eq!(not_after(Some("2027-01-15T10:00:00+01:00"), NOW), later);
        assert!(not_after(Some("1799999999999"), NOW)
            .expect_err("past")
            .contains("not in the future"));
        assert!(not_after(Some("next tuesday"), NOW).is_err());
    }

    #[test]
    fn an_override_without_a_reason_is_refused_before_signing() {
        let blank = Flags {
            justification: "  ",
            ..Flags::default()
        };
        assert!(decision(DecisionVerdict::Override, &blank, NOW).is_err());
        let approve = decision(DecisionVerdict::Approve, &blank, NOW).expect("allowed");
        assert_eq!(approve.scope, SignedScope::default());
        let full = Flags {
            justification: "outage",
            not_after: Some("1800000060000"),
            max_executions: Some(2),
            constraints: &["region=eu".to_owned()],
            evidence: &["https://status.example/1".to_owned()],
        };
        let decided = decision(DecisionVerdict::Override, &full, NOW).expect("valid");
        assert_eq!(decided.scope.not_after, Some(1_800_000_060_000));
        assert_eq!(decided.scope.max_executions, Some(2));
        assert_eq!(decided.scope.constraints["region"], "eu");
        assert_eq!(decided.evidence_refs, ["https://status.example/1"]);
    }
}
