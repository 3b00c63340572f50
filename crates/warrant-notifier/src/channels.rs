//! The channels file: where notifications go, and which ones go where.
//!
//! Parsed and validated as a whole; every error names the entry
//! (`channels[2] "sre-pager": ...`). Secrets may be inline (`secret:`), in
//! an environment variable (`secret_env:`) or in a file (`secret_file:`,
//! relative to the channels file), and a Slack webhook's URL, which is its
//! secret, likewise (`url:`, `url_env:`, `url_file:`). The format is
//! described in docs/notifier.md; deploy/examples/notifier.yaml is an example.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::notification::{Kind, Notification};

/// Everything in one channels file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    pub channels: Vec<Channel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub target: Target,
    /// A notification goes to this channel if any route matches it; no
    /// routes: every notification.
    pub routes: Vec<Route>,
    pub delivery: Delivery,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// POST the notification document, signed like intake's reviewers'
    /// webhook: `X-Warrant-Timestamp`, `X-Warrant-Signature: v1=<hex
    /// HMAC-SHA256(secret, timestamp + "." + body)>`.
    Webhook { url: String, secret: Vec<u8> },
    /// POST a Slack-compatible incoming-webhook message (text + blocks).
    Slack { url: String },
}

impl fmt::Debug for Target {
    // The secret, and a Slack URL (which is one), never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Webhook { url, .. } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("secret", &"<redacted>")
                .finish(),
            Target::Slack { .. } => f.debug_struct("Slack").field("url", &"<redacted>").finish(),
        }
    }
}

impl Target {
    pub fn type_name(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
        }
    }
}

/// Which notifications a route takes. Every list given must match (an
/// empty or missing list matches anything): `kinds` the notification's
/// kind, `rules` its rule id, `roles` one of the roles it addresses
/// (review needed and reminders address roles; outcomes and alerts none),
/// `proposers` the instance's proposer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub proposers: Vec<String>,
}

impl Route {
    pub fn matches(&self, notification: &Notification) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == notification.kind.as_str()))
            && (self.rules.is_empty() || self.rules.contains(&notification.rule.id))
            && (self.roles.is_empty() || notification.roles.iter().any(|r| self.roles.contains(r)))
            && (self.proposers.is_empty()
                || self.proposers.contains(&notification.proposer.principal))
    }
}

/// How a channel delivers: one request at a time per notification, up to
/// `concurrency` notifications in flight, each retried with exponential
/// backoff and jitter and parked after `max_attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub concurrency: usize,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            timeout: Duration::from_secs(5),
            max_attempts: 10,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            concurrency: 4,
        }
    }
}

impl Channels {
    /// The channels `notification` goes to, by name, in file order.
    pub fn route<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> impl Iterator<Item = &'a Channel> {
        self.channels.iter().filter(move |channel| {
            channel.routes.is_empty() || channel.routes.iter().any(|r| r.matches(notification))
        })
    }

    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// Read and validate the file at `path`, with secrets from the process
    /// environment and from files beside it.
    pub fn load(path: &Path) -> Result<Channels, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Channels::parse(&text, &|name| std::env::var(name).ok(), &|file| {
            let file = if file.is_relative() {
                dir.join(file)
            } else {
                file.to_owned()
            };
            std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
        })
        .map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parse and validate `text`; `env` and `read` resolve `*_env` and
    /// `*_file` values. The error names the entry at fault.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&Path) -> Result<String, String>,
    ) -> Result<Channels, String> {
        let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = BTreeSet::new();
        let mut channels = Vec::with_capacity(file.channels.len());
        for (index, raw) in file.channels.into_iter().enumerate() {
            let at = format!("channels[{index}] {:?}", raw.name);
            let channel = raw
                .validate(env, read)
                .map_err(|problem| format!("{at}: {problem}"))?;
            if !names.insert(channel.name.clone()) {
                return Err(format!("{at}: another channel has this name"));
            }
            channels.push(channel);
        }
        Ok(Channels { channels })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the channels file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the channels file {path} is invalid: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    channels: Vec<RawChannel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    routes: Vec<Route>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    concurrency: Option<usize>,
}

/// One of `inline`, `from_env`, `from_file`, exactly.
fn one_of(
    what: &str,
    inline: Option<String>,
    from_env: Option<String>,
    from_file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> Result<String, String>,
) -> Result<Option<String>, String> {
    let value = match (inline, from_env, from_file) {
        (None, None, None) => return Ok(None),
        (Some(value), None, None) => value,
        (None, Some(name), None) => {
            env(&name).ok_or_else(|| format!("{what}_env names {name}, which is not set"))?
        }
        (None, None, Some(path)) => read(&path)?,
        _ => return Err(format!("give one of {what}, {what}_env, {what}_file")),
    };
    // Files and variables often end in a newline nobody meant.
    let value = value.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(Some(value))
}

impl RawChannel {
    fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&Path) -> Result<String, String>,
    ) -> Result<Channel, String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err("name must be 1-64 characters of A-Z a-z 0-9 - _ .".to_owned());
        }
        let url = one_of("url", self.url, self.url_env, self.url_file, env, read)?
            .ok_or("url (or url_env, url_file) is required")?;
        check_url(&url, self.kind == "slack")?;
        let secret = one_of(
            "secret",
            self.secret,
            self.secret_env,
            self.secret_file,
            env,
            read,
        )?;
        let target = match (self.kind.as_str(), secret) {
            ("webhook", Some(secret)) => Target::Webhook {
                url,
                secret: secret.into_bytes(),
            },
            ("webhook", None) => {
                return Err(
                    "a webhook signs its body: secret (or secret_env, secret_file) is required"
                        .to_owned(),
                )
            }
            ("slack", None) => Target::Slack { url },
            ("slack", Some(_)) => {
                return Err("a slack webhook takes no secret: its URL is the secret".to_owned())
            }
            (other, _) => return Err(format!("type {other:?} is not webhook or slack")),
        };
        for (index, route) in self.routes.iter().enumerate() {
            if let Some(kind) = route.kinds.iter().find(|k| Kind::parse(k).is_none()) {
                return Err(format!(
                    "routes[{index}]: kind {kind:?} is not one of review_needed, reminder, outcome, alert"
                ));
            }
        }
        let defaults = Delivery::default();
        let delivery = Delivery {
            timeout: self
                .timeout_ms
                .map_or(defaults.timeout, Duration::from_millis),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff_initial: self
                .backoff_initial_ms
                .map_or(defaults.backoff_initial, Duration::from_millis),
            backoff_max: self
                .backoff_max_ms
                .map_or(defaults.backoff_max, Duration::from_millis),
            concurrency: self.concurrency.unwrap_or(defaults.concurrency),
        };
        if delivery.timeout.is_zero() || delivery.timeout > Duration::from_secs(300) {
            return Err("timeout_ms must be 1 to 300000".to_owned());
        }
        if delivery.max_attempts == 0 {
            return Err("max_attempts must be at least 1".to_owned());
        }
        if delivery.backoff_initial.is_zero() || delivery.backoff_max < delivery.backoff_initial {
            return Err(
                "backoff_initial_ms must be at least 1 and at most backoff_max_ms".to_owned(),
            );
        }
        if !(1..=64).contains(&delivery.concurrency) {
            return Err("concurrency must be 1 to 64".to_owned());
        }
        Ok(Channel {
            name: self.name,
            target,
            routes: self.routes,
            delivery,
        })
    }
}

/// A Slack incoming-webhook URL *is* its secret, so it must not travel in
/// clear text: https, except to this machine (a local relay or the demo's
/// receiver). Webhook URLs may be plain http (an in-cluster receiver): their
/// body is signed and the secret never travels.
fn check_url(url: &str, secret_in_url: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("url must be http:// or https:// with a host".to_owned());
    }
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if secret_in_url && parsed.scheme() != "https" && !loopback {
        return Err("a slack url carries its secret: it must be https:// (plain http only to a loopback address)".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{Links, ProposerSummary, RuleSummary};

    fn parse(text: &str) -> Result<Channels, String> {
        Channels::parse(
            text,
            &|name| (name == "HOOK_SECRET").then(|| "from-env\n".to_owned()),
            &|path| {
                if path == Path::new("slack.url") {
                    Ok("https://hooks.slack.example/T/B/x\n".to_owned())
                } else {
                    Err(format!("cannot read {}", path.display()))
                }
            },
        )
    }

    fn notification(kind: Kind, rule: &str, roles: &[&str], proposer: &str) -> Notification {
        Notification {
            id: uuid::Uuid::nil(),
            kind,
            instance_id: "i".to_owned(),
            seq: 1,
            status: "AWAITING_DECISION".to_owned(),
            recorded_at: 0,
            action: warrant_schema::samples::action(),
            action_digest: String::new(),
            rule: RuleSummary {
                id: rule.to_owned(),
                approvals_required: 1,
                approver_roles: vec![],
                override_roles: vec![],
            },
            proposer: ProposerSummary {
                principal: proposer.to_owned(),
                kind: warrant_schema::ProposerKind::Service,
            },
            decision_deadline: 0,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            quorum: None,
            alert: None,
            links: Links::default(),
        }
    }

    const GOOD: &str = r#"
channels:
  - name: sre
    type: webhook
    url: http://127.0.0.1:9/hook
    secret_env: HOOK_SECRET
    timeout_ms: 2000
    routes:
      - kinds: [review_needed, reminder]
        roles: [sre]
  - name: proposer
    type: webhook
    url: https://example.test/outcomes
    secret: inline-secret
    routes:
      - kinds: [outcome]
        proposers: ["svc:remediator"]
  - name: security
    type: slack
    url_file: slack.url
    routes:
      - kinds: [alert]
      - rules: [prod-restarts]
  - name: everything
    type: webhook
    url: http://127.0.0.1:9/all
    secret: s
"#;

    #[test]
    fn a_good_file_resolves_secrets_and_routes_by_kind_role_rule_and_proposer() {
        let channels = parse(GOOD).expect("valid");
        assert_eq!(channels.channels.len(), 4);
        let sre = channels.get("sre").expect("sre");
        assert_eq!(
            sre.target,
            Target::Webhook {
                url: "http://127.0.0.1:9/hook".to_owned(),
                secret: b"from-env".to_vec()
            }
        );
        assert_eq!(sre.delivery.timeout, Duration::from_secs(2));
        assert_eq!(sre.delivery.max_attempts, 10);
        let security = channels.get("security").expect("security");
        assert_eq!(
            security.target,
            Target::Slack {
                url: "https://hooks.slack.example/T/B/x".to_owned()
            }
        );
        // Secrets stay out of Debug.
        let shown = format!("{channels:?}");
        assert!(
            !shown.contains("from-env") && !shown.contains("hooks.slack"),
            "{shown}"
        );

        let names = |n: &Notification| {
            channels
                .route(n)
                .map(|c| c.name.clone())
                .collect::<Vec<String>>()
        };
        let review = notification(Kind::ReviewNeeded, "other", &["sre", "ic"], "svc:x");
        assert_eq!(names(&review), ["sre", "everything"]);
        let ic_only = notification(Kind::ReviewNeeded, "other", &["ic"], "svc:x");
        assert_eq!(names(&ic_only), ["everything"]);
        let outcome = notification(Kind::Outcome, "other", &[], "svc:remediator");
        assert_eq!(names(&outcome), ["proposer", "everything"]);
        let someone_elses = notification(Kind::Outcome, "other", &[], "svc:x");
        assert_eq!(names(&someone_elses), ["everything"]);
        let alert = notification(Kind::Alert, "other", &[], "svc:x");
        assert_eq!(names(&alert), ["security", "everything"]);
        let prod = notification(Kind::Outcome, "prod-restarts", &[], "svc:x");
        assert_eq!(names(&prod), ["security", "everything"]);
    }

    #[test]
    fn every_error_names_the_entry() {
        let cases = [
            ("channels:\n  - name: a\n    type: webhook\n    url: http://h/\n", "channels[0] \"a\": a webhook signs its body"),
            ("channels:\n  - name: a\n    type: pager\n    url: http://h/\n", "type \"pager\""),
            ("channels:\n  - name: a\n    type: slack\n    url: ftp://h/\n", "http:// or https://"),
            ("channels:\n  - name: a\n    type: slack\n    url: https://h/\n  - name: a\n    type: slack\n    url: https://g/\n", "channels[1] \"a\": another channel has this name"),
            ("channels:\n  - name: a\n    type: webhook\n    url: http://h/\n    secret_env: NOPE\n", "secret_env names NOPE"),
            ("channels:\n  - name: a\n    type: webhook\n    url: http://h/\n    secret: x\n    secret_env: HOOK_SECRET\n", "give one of secret"),
            ("channels:\n  - name: a\n    type: slack\n    url: https://h/\n    routes: [{kinds: [reviews]}]\n", "routes[0]: kind \"reviews\""),
            ("channels:\n  - name: a\n    type: slack\n    url: https://h/\n    max_attempts: 0\n", "max_attempts"),
            ("channels:\n  - name: \"a b\"\n    type: slack\n    url: https://h/\n", "channels[0] \"a b\": name"),
            ("channels:\n  - name: a\n    type: slack\n    url: https://h/\n    colour: red\n", "unknown field `colour`"),
            ("channels:\n  - name: a\n    type: slack\n    url_file: missing.url\n", "cannot read missing.url"),
            ("channels:\n  - name: a\n    type: slack\n    url: https://h/\n    secret: s\n", "takes no secret"),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert!(
                error.contains(expected),
                "{text}\n=> {error}\n(expected {expected:?})"
            );
        }
    }

    #[test]
    fn the_example_file_in_deploy_is_valid() {
        let text = include_str!("../../../deploy/examples/notifier.yaml");
        let env = |name: &str| {
            Some(if name.ends_with("_URL") {
                "https://hooks.slack.example/services/T/B/x".to_owned()
            } else {
                "example".to_owned()
            })
        };
        let channels = Channels::parse(text, &env, &|path| {
            Err(format!("no file {}", path.display()))
        })
        .expect("the example is valid");
        assert!(!channels.channels.is_empty());
    }

    #[test]
    fn the_kubernetes_channels_validate_with_their_secret() {
        let text = include_str!("../../../deploy/kubernetes/notifier.yaml");
        let mut channels = None;
        let mut secrets = std::collections::BTreeMap::new();
        for document in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(document).expect("yaml");
            match value["kind"].as_str() {
                Some("ConfigMap") => {
                    channels = value["data"]["notifier.yaml"].as_str().map(str::to_owned)
                }
                Some("Secret") => {
                    for (key, value) in value["stringData"].as_mapping().into_iter().flatten() {
                        if let (Some(key), Some(value)) = (key.as_str(), value.as_str()) {
                            secrets.insert(key.to_owned(), value.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        let channels = channels.expect("the ConfigMap's notifier.yaml");
        let parsed = Channels::parse(&channels, &|name| secrets.get(name).cloned(), &|path| {
            Err(format!("no file {}", path.display()))
        })
        .expect("the manifest's channels validate with the manifest's Secret");
        assert_eq!(parsed.channels.len(), 4);
    }

    #[test]
    fn a_slack_url_must_not_travel_in_clear_text() {
        let slack = |url: &str| {
            parse(&format!(
                "channels:\n  - name: s\n    type: slack\n    url: {url}\n    routes:\n      - kinds: [alert]\n"
            ))
        };
        let refused =
            slack("http://hooks.slack.example/T/B/secret").expect_err("plain http is refused");
        assert!(refused.contains("https"), "{refused}");
        for fine in [
            "https://hooks.slack.example/T/B/secret",
            "http://127.0.0.1:9101/hooks/slack",
            "http://[::1]:9101/hooks/slack",
            "http://localhost:9101/hooks/slack",
        ] {
            assert!(slack(fine).is_ok(), "{fine}: {:?}", slack(fine).err());
        }
    }

    #[test]
    fn no_part_of_a_slack_message_lets_the_action_mention_or_link() {
        let mut hostile = notification(Kind::ReviewNeeded, "r", &["sre"], "p");
        hostile.action.target = "staging/<!channel> <mailto:x@evil.example|click here>".to_owned();
        hostile.instance_id = "<!here>".to_owned();
        let message = hostile.slack_message().to_string();
        for smuggled in ["<!channel>", "<!here>", "<mailto:", "|click here>"] {
            assert!(!message.contains(smuggled), "{smuggled} in {message}");
        }
        assert!(message.contains("&lt;!channel&gt;"), "{message}");
    }
}
