//! Canonical actions (docs/canonical-actions.md): one spelling per action.
//!
//! Rules match on `kind` and on a `target` prefix, so a proposer who could
//! write `Service.Restart`, ` prod/payments` or `./prod/payments` could
//! fall through to a laxer rule than `service.restart` on `prod/payments`
//! gets. Intake therefore refuses every action that is not already in
//! canonical form; it never rewrites one, because the proposer's digest
//! must be the digest of what it sent.

use warrant_schema::Action;

/// Longest `kind`, in bytes (it is ASCII).
pub const MAX_KIND_LEN: usize = 128;
/// Longest `target` or parameter key, in characters.
pub const MAX_TARGET_LEN: usize = 1024;

/// Why an action is not canonical: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct NotCanonical {
    /// `action.kind`, `action.target` or `action.parameters[<key>]`.
    pub field: String,
    pub problem: String,
}

/// Refuse any action whose kind, target or parameter keys are not in
/// canonical form. Parameter values are free text: they are digested, not
/// matched on.
pub fn check_action(action: &Action) -> Result<(), NotCanonical> {
    check_kind(&action.kind).map_err(|problem| NotCanonical {
        field: "action.kind".to_owned(),
        problem,
    })?;
    check_target(&action.target).map_err(|problem| NotCanonical {
        field: "action.target".to_owned(),
        problem,
    })?;
    for key in action.parameters.keys() {
        check_text(key).map_err(|problem| NotCanonical {
            field: format!("action.parameters key {:?}", shorten(key)),
            problem,
        })?;
    }
    Ok(())
}

/// `kind`: 1–128 lowercase ASCII letters, digits, `_` and `-`, in
/// non-empty `.`-separated segments.
pub fn check_kind(kind: &str) -> Result<(), String> {
    if kind.is_empty() || kind.len() > MAX_KIND_LEN {
        return Err(format!(
            "must be 1 to {MAX_KIND_LEN} characters, is {}",
            kind.chars().count()
        ));
    }
    if let Some(bad) = kind
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
    {
        return Err(format!(
            "may hold only lowercase ASCII letters, digits, '_', '-' and '.', not {bad:?}"
        ));
    }
    if kind.split('.').any(str::is_empty) {
        return Err("must not have an empty '.'-separated segment".to_owned());
    }
    Ok(())
}

/// `target`: free text under [`check_text`]'s rules, in non-empty
/// `/`-separated segments none of which is `.` or `..`. Case-sensitive.
/// `\` and `%` are refused: an executor that reads either as a separator
/// or an escape (`prod%2Fpayments`, `prod\payments`) would act on a
/// target no rule prefix covered.
pub fn check_target(target: &str) -> Result<(), String> {
    check_text(target)?;
    if let Some(bad) = target.chars().find(|c| matches!(c, '\\' | '%')) {
        return Err(format!(
            "must not hold {bad:?}: it could be read as a separator or an escape"
        ));
    }
    for segment in target.split('/') {
        match segment {
            "" => return Err("must not have an empty '/'-separated segment".to_owned()),
            "." | ".." => return Err(format!("must not have a {segment:?} segment")),
            _ => {}
        }
    }
    Ok(())
}

/// 1–1024 characters of UTF-8 that read as what they are: no control or
/// invisible (format, bidi, filler) characters, no whitespace but the plain
/// space and none around the text, and in Unicode NFKC form, so fullwidth
/// `ｐｒｏｄ`, a zero-width space or a bidi override cannot spell a target
/// (or a name) that looks like another but matches differently.
pub fn check_text(text: &str) -> Result<(), String> {
    let length = text.chars().count();
    if length == 0 || length > MAX_TARGET_LEN {
        return Err(format!(
            "must be 1 to {MAX_TARGET_LEN} characters, is {length}"
        ));
    }
    if let Some(bad) = text.chars().find(|c| c.is_control()) {
        return Err(format!("must not hold control character {bad:?}"));
    }
    if let Some(bad) = text.chars().find(|&c| is_invisible(c)) {
        return Err(format!(
            "must not hold invisible character U+{:04X}",
            u32::from(bad)
        ));
    }
    if text.trim() != text {
        return Err("must not begin or end with whitespace".to_owned());
    }
    if let Some(bad) = text.chars().find(|&c| c.is_whitespace() && c != ' ') {
        return Err(format!(
            "must not hold whitespace other than the plain space, not U+{:04X}",
            u32::from(bad)
        ));
    }
    if !unicode_normalization::is_nfkc(text) {
        return Err(
            "must be in Unicode NFKC form (no fullwidth, compatibility or decomposed spellings)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Characters that render as nothing (or reorder what follows): Unicode
/// format characters, bidi controls, variation selectors, fillers and tag
/// characters. Text holding one can look like text that does not.
pub fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x2800
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Whether `text` holds anything a person would see (an override's
/// justification must).
pub fn is_visible_text(text: &str) -> bool {
    text.chars()
        .any(|c| !c.is_whitespace() && !c.is_control() && !is_invisible(c))
}

/// Whether `prefix` (a rule's target) covers `target` by whole segments:
/// `prod` and `prod/` cover `prod` and `prod/x`, never `production/x`.
/// The empty prefix covers everything.
pub fn target_has_prefix(target: &str, prefix: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() {
        return true;
    }
    match target.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn action(kind: &str, target: &str) -> Action {
        Action {
            kind: kind.to_owned(),
            target: target.to_owned(),
            parameters: BTreeMap::new(),
        }
    }

    #[test]
    fn canonical_actions_pass() {
        for (kind, target) in [
            ("service.restart", "prod/payments"),
            ("payments.refund.partial", "prod/eu/acct-9"),
            ("db_migrate", "staging"),
            ("a-b.c_d.9", "Prod/Payments Cluster/\u{fc}"),
        ] {
            assert_eq!(
                check_action(&action(kind, target)),
                Ok(()),
                "{kind} {target}"
            );
        }
    }

    #[test]
    fn every_laxer_spelling_of_a_kind_is_refused() {
        for kind in [
            "Service.Restart",
            "service.restart ",
            " service.restart",
            "service..restart",
            ".service",
            "service.",
            "service/restart",
            "service.restart\u{0}",
            "",
            "ѕervice.restart", // Cyrillic s
        ] {
            let error = check_action(&action(kind, "prod/x")).expect_err(kind);
            assert_eq!(error.field, "action.kind", "{kind}");
        }
        assert!(check_kind(&"a".repeat(128)).is_ok());
        assert!(check_kind(&"a".repeat(129)).is_err());
    }

    #[test]
    fn every_laxer_spelling_of_a_target_is_refused() {
        for target in [
            " prod/payments",
            "prod/payments ",
            "./prod/payments",
            "prod/./payments",
            "prod/../payments",
            "prod//payments",
            "/prod/payments",
            "prod/payments/",
            "prod/\npayments",
            "prod/\u{7f}",
            "",
        ] {
            let error = check_action(&action("service.restart", target)).expect_err(target);
            assert_eq!(error.field, "action.target", "{target:?}");
        }
        assert!(check_target(&"é".repeat(1024)).is_ok());
        assert!(check_target(&"é".repeat(1025)).is_err());
    }

    #[test]
    fn invisible_compatibility_and_escape_spellings_of_a_target_are_refused() {
        for target in [
            "\u{200b}prod/payments/api",
            "\u{feff}prod/payments",
            "prod\u{2060}/payments",
            "\u{3164}prod/payments",
            "\u{180e}prod/payments",
            "\u{202e}prod/payments",
            "pro\u{ad}d/payments",
            "ｐｒｏｄ/payments",
            "prod／payments",
            "prod%2Fpayments%2Fapi",
            "prod\\payments",
            "staging/%2e%2e/prod",
            "staging/．．/prod",
            "prod/pay\u{a0}ments",
            "prod\u{2800}/x",
        ] {
            assert!(check_target(target).is_err(), "{target:?} was accepted");
        }
        // Precomposed letters are NFKC. Other scripts, and combining marks
        // without a precomposed form (`prod\u{301}`), spell other targets:
        // no rule for `prod` matches them, and an executor that acts on
        // them acts on what they say.
        assert_eq!(check_target("prod/zürich"), Ok(()));
        assert_eq!(check_target("prod/payments cluster"), Ok(()));
        assert!(is_visible_text("ok"));
        assert!(!is_visible_text("\u{200b} \u{2060}"));
    }

    #[test]
    fn parameter_keys_follow_the_text_rules_and_values_are_free() {
        let mut ok = action("service.restart", "prod/x");
        ok.parameters
            .insert("strategy/kind".to_owned(), "  anything\n goes ".to_owned());
        assert_eq!(check_action(&ok), Ok(()));
        for key in ["", " reason", "reason ", "re\tason"] {
            let mut bad = action("service.restart", "prod/x");
            bad.parameters.insert(key.to_owned(), "v".to_owned());
            let error = check_action(&bad).expect_err(key);
            assert!(error.field.starts_with("action.parameters key"), "{error}");
        }
    }

    #[test]
    fn rule_prefixes_match_whole_segments() {
        assert!(target_has_prefix("prod/payments", "prod"));
        assert!(target_has_prefix("prod/payments", "prod/"));
        assert!(target_has_prefix("prod", "prod"));
        assert!(target_has_prefix("prod", "prod/"));
        assert!(target_has_prefix("prod/payments/api", "prod/payments"));
        assert!(target_has_prefix("anything", ""));
        assert!(!target_has_prefix("production/x", "prod"));
        assert!(!target_has_prefix("production/x", "prod/"));
        assert!(!target_has_prefix("prod-eu/x", "prod"));
        assert!(!target_has_prefix("Prod/payments", "prod"));
        assert!(!target_has_prefix("pro", "prod"));
    }
}
