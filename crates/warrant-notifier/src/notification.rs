//! What a notification is: its kind, its stable id, and the JSON document
//! every channel is sent (a Slack message is rendered from the same
//! document, see `slack_message`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warrant_schema::{Action, ProposerKind, TimestampMillis};

/// Namespace of notification ids (UUIDv5). Fixed forever: changing it would
/// give every notification a new id and defeat receivers' deduplication.
const NOTIFICATION_NAMESPACE: Uuid = Uuid::from_u128(0x3b8e_51d4_7a20_4f6c_9d13_c0a7_5e28_f941);

/// The four kinds of docs/notifier.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The instance entered AWAITING_DECISION or BLOCKED: people with these
    /// roles can act on it.
    ReviewNeeded,
    /// The decision deadline is near and the instance still waits for people.
    Reminder,
    /// The instance reached an outcome its proposer wants to know about.
    Outcome,
    /// An override (break-glass) was recorded, or something ran ungranted.
    Alert,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::ReviewNeeded,
        Kind::Reminder,
        Kind::Outcome,
        Kind::Alert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ReviewNeeded => "review_needed",
            Kind::Reminder => "reminder",
            Kind::Outcome => "outcome",
            Kind::Alert => "alert",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of the notification an entry of an instance's history caused:
/// UUIDv5 of `{instance}/{seq}/{kind}`. The same log gives the same ids,
/// however often it is folded, so a receiver deduplicates on it.
pub fn entry_notification_id(instance_id: &str, seq: u64, kind: Kind) -> Uuid {
    Uuid::new_v5(
        &NOTIFICATION_NAMESPACE,
        format!("{instance_id}/{seq}/{kind}").as_bytes(),
    )
}

/// The id of an instance's reminder: UUIDv5 of
/// `{instance}/deadline/{decision_deadline ms}/reminder`. An instance has
/// one decision deadline, fixed by its proposal, hence at most one reminder;
/// the id does not depend on when the notifier's clock fired it.
pub fn reminder_id(instance_id: &str, decision_deadline: TimestampMillis) -> Uuid {
    Uuid::new_v5(
        &NOTIFICATION_NAMESPACE,
        format!("{instance_id}/deadline/{decision_deadline}/reminder").as_bytes(),
    )
}

/// The rule the instance was resolved to, as far as a person needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub id: String,
    pub approvals_required: i32,
    pub approver_roles: Vec<String>,
    pub override_roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposerSummary {
    pub principal: String,
    pub kind: ProposerKind,
}

/// Approvals counted so far against those the rule requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub counted: u32,
    pub required: u32,
}

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Alert {
    /// An override decision: `applied` false when the fold refused it
    /// (`refusal` says why) — a refused break-glass attempt is news too.
    Override {
        principal: String,
        roles: Vec<String>,
        justification: String,
        applied: bool,
        refusal: Option<String>,
    },
    /// A report for a grant this instance never issued: something ran
    /// without Warrant's authority.
    UngrantedExecution {
        grant_id: String,
        reported_by: String,
        outcome: String,
    },
}

/// Where a person reads more.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Links {
    /// The execution record through intake (bearer token or session).
    pub record: String,
    /// The instance's page in the reviewers' console.
    pub console: String,
}

/// One notification, exactly as sent (the generic webhook's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: Uuid,
    pub kind: Kind,
    pub instance_id: String,
    /// The history entry that caused it (for a reminder: the latest entry
    /// when it fired).
    pub seq: u64,
    /// The instance's status after that entry.
    pub status: String,
    /// When the causing event was recorded on the log (for a reminder:
    /// when the notifier's clock fired it).
    pub recorded_at: TimestampMillis,
    pub action: Action,
    pub action_digest: String,
    pub rule: RuleSummary,
    pub proposer: ProposerSummary,
    pub decision_deadline: TimestampMillis,
    /// Who is asked to act (review needed, reminder); empty otherwise.
    pub roles: Vec<String>,
    /// Present while a quorum is being gathered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<Quorum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    /// Set when the notification is queued; the derivation leaves it empty.
    pub links: Links,
}

/// How links are built: the record through intake, the console page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkBase {
    pub intake_url: String,
    pub console_url: String,
}

impl LinkBase {
    pub fn links(&self, instance_id: &str) -> Links {
        // The console routes `#/instance/{id}` (crates/warrant-intake/console/app.js).
        Links {
            record: format!(
                "{}/v1/instances/{instance_id}",
                self.intake_url.trim_end_matches('/')
            ),
            console: format!(
                "{}/console/#/instance/{instance_id}",
                self.console_url.trim_end_matches('/')
            ),
        }
    }
}

impl Notification {
    /// One line for a person: what happened and what is asked of them.
    pub fn headline(&self) -> String {
        let action = format!("{} {}", self.action.kind, self.action.target);
        match (&self.kind, &self.alert) {
            (Kind::ReviewNeeded, _) if self.status == "BLOCKED" => format!(
                "Override needed ({}): {action} is blocked by a policy",
                self.roles.join(", ")
            ),
            (Kind::ReviewNeeded, _) => format!(
                "Review needed ({}): {action} awaits a decision",
                self.roles.join(", ")
            ),
            (Kind::Reminder, _) => format!(
                "Reminder ({}): {action} expires unless decided soon",
                self.roles.join(", ")
            ),
            (Kind::Outcome, _) => format!("{action}: {}", self.status),
            (
                Kind::Alert,
                Some(Alert::Override {
                    principal,
                    applied: true,
                    ..
                }),
            ) => {
                format!("Override: {principal} authorized {action} alone")
            }
            (
                Kind::Alert,
                Some(Alert::Override {
                    principal, refusal, ..
                }),
            ) => format!(
                "Override attempt refused ({}): {principal} on {action}",
                refusal.as_deref().unwrap_or("refused")
            ),
            (Kind::Alert, Some(Alert::UngrantedExecution { grant_id, .. })) => {
                format!("Violation: {action} ran under grant {grant_id}, which was never issued")
            }
            (Kind::Alert, None) => format!("Alert: {action}"),
        }
    }

    /// A Slack-compatible incoming-webhook message: `text` (the fallback
    /// and notification line) and `blocks`.
    pub fn slack_message(&self) -> serde_json::Value {
        let mut facts: BTreeMap<&str, String> = BTreeMap::new();
        facts.insert("status", self.status.clone());
        facts.insert("rule", self.rule.id.clone());
        facts.insert("proposer", self.proposer.principal.clone());
        if let Some(quorum) = self.quorum {
            facts.insert(
                "approvals",
                format!("{} of {}", quorum.counted, quorum.required),
            );
        }
        if let Some(Alert::Override { justification, .. }) = &self.alert {
            facts.insert("justification", justification.clone());
        }
        let fields: Vec<serde_json::Value> = facts
            .iter()
            .map(|(name, value)| {
                serde_json::json!({ "type": "mrkdwn", "text": format!("*{name}*\n{}", slack_escape(value)) })
            })
            .collect();
        let headline = self.headline();
        serde_json::json!({
            // The fallback line and push text is mrkdwn too: escaped like the
            // blocks, so a proposed target cannot @channel or plant a link.
            "text": slack_escape(&headline),
            "blocks": [
                { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}*", slack_escape(&headline)) } },
                { "type": "section", "fields": fields },
                { "type": "actions", "elements": [
                    { "type": "button", "text": { "type": "plain_text", "text": "Open in the console" }, "url": self.links.console },
                    { "type": "button", "text": { "type": "plain_text", "text": "Execution record" }, "url": self.links.record }
                ] },
                { "type": "context", "elements": [
                    { "type": "mrkdwn", "text": format!("{} · instance {} · notification {}", self.kind, slack_escape(&self.instance_id), self.id) }
                ] }
            ]
        })
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup: an action target must
/// not turn into a link or a mention.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct_by_instance_seq_and_kind() {
        let id = "7d1c0e53-1f0a-4c4e-9a55-2b8f2f4f0c11";
        let a = entry_notification_id(id, 1, Kind::ReviewNeeded);
        assert_eq!(a, entry_notification_id(id, 1, Kind::ReviewNeeded));
        // Pinned: a change here renames every notification ever sent.
        assert_eq!(
            a.to_string(),
            Uuid::new_v5(
                &NOTIFICATION_NAMESPACE,
                b"7d1c0e53-1f0a-4c4e-9a55-2b8f2f4f0c11/1/review_needed"
            )
            .to_string()
        );
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, entry_notification_id(id, 2, Kind::ReviewNeeded));
        assert_ne!(a, entry_notification_id(id, 1, Kind::Alert));
        assert_ne!(a, reminder_id(id, 1));
        assert_eq!(reminder_id(id, 99), reminder_id(id, 99));
    }

    #[test]
    fn links_follow_the_consoles_routes() {
        let base = LinkBase {
            intake_url: "https://warrant.example/".to_owned(),
            console_url: "https://console.example".to_owned(),
        };
        let links = base.links("abc");
        assert_eq!(links.record, "https://warrant.example/v1/instances/abc");
        assert_eq!(
            links.console,
            "https://console.example/console/#/instance/abc"
        );
    }

    #[test]
    fn slack_text_cannot_smuggle_markup() {
        assert_eq!(slack_escape("<!channel> & co"), "&lt;!channel&gt; &amp; co");
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::String(kind.as_str().to_owned()))
            );
        }
        assert_eq!(Kind::parse("Alert"), None);
    }
}
