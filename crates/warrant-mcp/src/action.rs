//! From a tool call to the Warrant action that stands for it, its digest,
//! the deterministic instance ids it may live under, and back from the
//! authorized action to the arguments that are forwarded.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use warrant_authority::{action_digest, canonical_action_json, check_action};
use warrant_schema::Action;

use crate::jcs::{self, JcsError};

/// The kind of every action the gateway proposes.
pub const KIND: &str = "mcp.tool";

/// Why a tool call cannot be proposed (nothing is forwarded then).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error(
        "argument '{argument}' holds the number {number}, of magnitude 2^53 or more and not an exact \
         integer literal: it may already have been rounded on its way to the gateway, so it is refused"
    )]
    Magnitude { argument: String, number: String },
    #[error("argument '{argument}' has no canonical JSON text: {source}")]
    Argument {
        argument: String,
        #[source]
        source: JcsError,
    },
    #[error(
        "tool name '{0}' contains '/': its target would read as a deeper path under another server name"
    )]
    ToolName(String),
    #[error("the call does not form a canonical Warrant action: {field} {problem}")]
    NotCanonical { field: String, problem: String },
    #[error("authorized parameter '{parameter}' is not JSON text: {message}")]
    Unparsable { parameter: String, message: String },
    #[error(
        "authorized parameter '{parameter}' does not read back as its own canonical text; refusing to forward"
    )]
    NotFixedPoint { parameter: String },
}

/// One tool call as Warrant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAction {
    pub action: Action,
    pub digest: String,
}

/// `{kind: "mcp.tool", target: "<server>/<tool>", parameters: {<name>: <JCS text>}}`.
pub fn build(
    server: &str,
    tool: &str,
    arguments: &Map<String, Value>,
) -> Result<ToolAction, ActionError> {
    // Server "demo" with tool "a/b" and server "demo/a" with tool "b"
    // would be one target, one action, one instance: keep them apart.
    if tool.contains('/') {
        return Err(ActionError::ToolName(tool.to_owned()));
    }
    let mut parameters = BTreeMap::new();
    for (name, value) in arguments {
        if let Some(number) = unsafe_magnitude(value) {
            return Err(ActionError::Magnitude {
                argument: name.clone(),
                number,
            });
        }
        let text = jcs::canonicalize(value).map_err(|source| ActionError::Argument {
            argument: name.clone(),
            source,
        })?;
        parameters.insert(name.clone(), text);
    }
    let action = Action {
        kind: KIND.to_owned(),
        target: format!("{server}/{tool}"),
        parameters,
    };
    // Intake would refuse the same action with 400 invalid_action; saying so
    // here names the argument to the caller without a round trip.
    check_action(&action).map_err(|error| ActionError::NotCanonical {
        field: error.field,
        problem: error.problem,
    })?;
    let digest = action_digest(&action);
    Ok(ToolAction { action, digest })
}

/// 2^53: from here on, not every integer has a double of its own.
const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// The first number in `value` that the JSON reader may have rounded
/// without a trace. An integer literal within 64 bits is read exactly (and
/// the JCS step refuses it if a double would round it). Any other number
/// of magnitude 2^53 or more is an integer-valued double that came from a
/// fraction or exponent literal (`9007199254740993.0`, `1e30`) or from an
/// integer literal past 64 bits, which serde_json rounds to a double before
/// the gateway sees it: whether it was exact cannot be known, so it is
/// refused rather than proposed as another number than the caller sent.
fn unsafe_magnitude(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) if number.is_f64() => number
            .as_f64()
            .filter(|double| double.abs() >= EXACT_LIMIT)
            .map(|_| number.to_string()),
        Value::Array(items) => items.iter().find_map(unsafe_magnitude),
        Value::Object(map) => map.values().find_map(unsafe_magnitude),
        _ => None,
    }
}

/// The arguments to forward: each parsed from the exact text that was
/// authorized, and checked to canonicalise back to that text, so the digest
/// of what is forwarded is the digest that was granted.
pub fn forwarded_arguments(action: &Action) -> Result<Map<String, Value>, ActionError> {
    let mut arguments = Map::new();
    for (name, text) in &action.parameters {
        let value: Value = serde_json::from_str(text).map_err(|error| ActionError::Unparsable {
            parameter: name.clone(),
            message: error.to_string(),
        })?;
        match jcs::canonicalize(&value) {
            Ok(again) if &again == text => {}
            _ => {
                return Err(ActionError::NotFixedPoint {
                    parameter: name.clone(),
                })
            }
        }
        arguments.insert(name.clone(), value);
    }
    Ok(arguments)
}

/// The instance id of `action` at `epoch`: the first 16 bytes of a SHA-256
/// over length-prefixed parts, laid out as a UUID version 4 (intake refuses
/// chosen version-5 ids, which it derives itself). The same call at the
/// same epoch is always the same instance, so a retry never makes a second
/// one; the epoch moves on only when an earlier instance was used up.
pub fn instance_id(action: &Action, epoch: u64) -> String {
    let canonical = canonical_action_json(action);
    let epoch = epoch.to_string();
    let mut hasher = Sha256::new();
    for part in [
        "warrant-mcp.instance.v1",
        canonical.as_str(),
        epoch.as_str(),
    ] {
        // Length prefixes: no two part lists hash the same bytes.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn action_shape_and_digest() {
        let call = build(
            "demo",
            "restart",
            &args(json!({"service": "api", "strategy": {"kind": "rolling", "batch": 2}})),
        )
        .expect("canonical");
        assert_eq!(call.action.kind, "mcp.tool");
        assert_eq!(call.action.target, "demo/restart");
        assert_eq!(call.action.parameters["service"], "\"api\"");
        assert_eq!(
            call.action.parameters["strategy"],
            r#"{"batch":2,"kind":"rolling"}"#
        );
        // python3: json.dumps({"kind":"mcp.tool","target":"demo/restart","parameters":
        //   {"service":"\"api\"","strategy":"{\"batch\":2,\"kind\":\"rolling\"}"}},
        //   sort_keys=True,separators=(",",":"),ensure_ascii=False) | sha256
        assert_eq!(call.digest, action_digest(&call.action));
        assert_eq!(call.digest.len(), 64);
    }

    #[test]
    fn spelling_does_not_change_the_action() {
        let a: Map<String, Value> =
            serde_json::from_str(r#"{"n": 1.0, "o": {"b": 1, "a": "\u0041"}}"#).expect("json");
        let b: Map<String, Value> =
            serde_json::from_str(r#"{"o":{"a":"A","b":1e0},"n":1}"#).expect("json");
        assert_eq!(
            build("demo", "t", &a).expect("a"),
            build("demo", "t", &b).expect("b")
        );
    }

    #[test]
    fn same_call_same_id_and_v4_layout() {
        let call = build("demo", "restart", &args(json!({"service": "api"}))).expect("canonical");
        let again = build("demo", "restart", &args(json!({"service": "api"}))).expect("canonical");
        let id = instance_id(&call.action, 0);
        assert_eq!(id, instance_id(&again.action, 0));
        let parsed = uuid::Uuid::parse_str(&id).expect("uuid");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(
            id,
            parsed.hyphenated().to_string(),
            "canonical lowercase form"
        );
    }

    #[test]
    fn different_args_tool_server_or_epoch_different_id() {
        let base = build("demo", "restart", &args(json!({"service": "api"}))).expect("c");
        let other_args = build("demo", "restart", &args(json!({"service": "web"}))).expect("c");
        let other_tool = build("demo", "stop", &args(json!({"service": "api"}))).expect("c");
        let other_server = build("prod", "restart", &args(json!({"service": "api"}))).expect("c");
        let id = instance_id(&base.action, 0);
        assert_ne!(id, instance_id(&other_args.action, 0));
        assert_ne!(id, instance_id(&other_tool.action, 0));
        assert_ne!(id, instance_id(&other_server.action, 0));
        assert_ne!(id, instance_id(&base.action, 1));
        assert_ne!(instance_id(&base.action, 1), instance_id(&base.action, 2));
    }

    #[test]
    fn non_canonical_calls_are_refused_naming_the_reason() {
        let bad_key = build("demo", "t", &args(json!({" padded": 1})));
        assert!(
            matches!(bad_key, Err(ActionError::NotCanonical { .. })),
            "{bad_key:?}"
        );
        let bad_tool = build("demo", "..", &args(json!({})));
        assert!(matches!(bad_tool, Err(ActionError::NotCanonical { .. })));
        let nested = build("demo", "a/b", &args(json!({})));
        assert!(matches!(nested, Err(ActionError::ToolName(_))));
        let big: Map<String, Value> =
            serde_json::from_str(r#"{"n": 9007199254740993}"#).expect("json");
        match build("demo", "t", &big) {
            Err(ActionError::Argument { argument, .. }) => assert_eq!(argument, "n"),
            other => panic!("expected an argument error, got {other:?}"),
        }
    }

    #[test]
    fn forwarded_arguments_are_the_authorized_texts() {
        let call = build(
            "demo",
            "restart",
            &args(json!({"service": "api", "n": 1.5e-300, "m": 12345.678, "list": [1, "x", null]})),
        )
        .expect("canonical");
        let forwarded = forwarded_arguments(&call.action).expect("forwardable");
        let rebuilt = build("demo", "restart", &forwarded).expect("canonical");
        assert_eq!(rebuilt.digest, call.digest);
    }

    #[test]
    fn numbers_a_reader_may_have_rounded_are_refused() {
        for text in [
            r#"{"n": 123456789012345678901234567890}"#,
            r#"{"n": -9223372036854775809}"#,
            r#"{"n": 18446744073709551616}"#,
            r#"{"n": 9007199254740993.0}"#,
            r#"{"n": 9007199254740992.0}"#,
            r#"{"n": 1e30}"#,
            r#"{"n": {"deep": [1, -1.5e300]}}"#,
        ] {
            let arguments: Map<String, Value> = serde_json::from_str(text).expect("json");
            match build("demo", "t", &arguments) {
                Err(ActionError::Magnitude { argument, .. }) => assert_eq!(argument, "n", "{text}"),
                other => panic!("{text}: expected a refusal, got {other:?}"),
            }
        }
        // Exact integer literals within 64 bits that a double holds, and
        // ordinary fractions, still pass.
        for text in [
            r#"{"n": 9007199254740992}"#,
            r#"{"n": -9007199254740992}"#,
            r#"{"n": 4503599627370495.5}"#,
            r#"{"n": 0.1}"#,
            r#"{"n": 1e-300}"#,
        ] {
            let arguments: Map<String, Value> = serde_json::from_str(text).expect("json");
            assert!(build("demo", "t", &arguments).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_parameter_that_is_not_canonical_is_not_forwarded() {
        let mut action = build("demo", "t", &args(json!({"a": 1})))
            .expect("c")
            .action;
        action.parameters.insert("a".into(), "1.0".into());
        assert!(matches!(
            forwarded_arguments(&action),
            Err(ActionError::NotFixedPoint { .. })
        ));
        action.parameters.insert("a".into(), "{".into());
        assert!(matches!(
            forwarded_arguments(&action),
            Err(ActionError::Unparsable { .. })
        ));
    }
}
