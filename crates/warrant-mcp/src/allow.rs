//! The pass-through allow-list: the only tools that run without a proposal.

use std::collections::BTreeSet;

use rmcp::model::Tool;

/// Which tools skip Warrant. Empty by default: every call is proposed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Tools named with `--allow-tool`.
    pub tools: BTreeSet<String>,
    /// `--allow-read-only`: tools the upstream annotates `readOnlyHint: true`.
    pub read_only: bool,
}

impl AllowList {
    /// Whether a call of `name` may be forwarded without a proposal.
    /// `tool` is the upstream's listing of it, if the upstream lists it;
    /// a tool the upstream does not list is never taken for read-only.
    pub fn passes(&self, name: &str, tool: Option<&Tool>) -> bool {
        if self.tools.contains(name) {
            return true;
        }
        self.read_only
            && tool
                .and_then(|tool| tool.annotations.as_ref())
                .and_then(|annotations| annotations.read_only_hint)
                == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rmcp::model::ToolAnnotations;

    use super::*;

    fn tool(name: &'static str, read_only: Option<bool>) -> Tool {
        let mut tool = Tool::new(name, "a tool", Arc::new(serde_json::Map::new()));
        if let Some(hint) = read_only {
            tool.annotations = Some(ToolAnnotations::new().read_only(hint));
        }
        tool
    }

    #[test]
    fn nothing_passes_by_default() {
        let allow = AllowList::default();
        assert!(!allow.passes("status", Some(&tool("status", Some(true)))));
        assert!(!allow.passes("restart", None));
    }

    #[test]
    fn named_tools_pass_whatever_their_annotations() {
        let allow = AllowList {
            tools: ["restart".to_owned()].into(),
            read_only: false,
        };
        assert!(allow.passes("restart", Some(&tool("restart", Some(false)))));
        assert!(allow.passes("restart", None));
        assert!(!allow.passes("restart2", None));
        assert!(!allow.passes("Restart", None), "names are exact");
    }

    #[test]
    fn read_only_needs_the_flag_and_an_explicit_true_hint() {
        let allow = AllowList {
            tools: BTreeSet::new(),
            read_only: true,
        };
        assert!(allow.passes("status", Some(&tool("status", Some(true)))));
        assert!(!allow.passes("restart", Some(&tool("restart", Some(false)))));
        assert!(!allow.passes("plain", Some(&tool("plain", None))));
        assert!(!allow.passes("unlisted", None));
    }
}
