//! Rule conditions: a `when:` expression in CEL, the Common Expression
//! Language (docs/rules.md), over the proposed action, the proposer and the
//! context refs.
//!
//! Only `proposer.principal` is authenticated; every other fact is the
//! proposer's claim (docs/rules.md, "What a condition can trust").
//!
//! CEL is side-effect free and always terminates (no loops beyond
//! comprehensions over finite lists, no recursion). The `cel` crate is
//! built without its `chrono` and `regex` features, so no expression can
//! read a clock or build a regex. The crate has no static type checker;
//! [`check`] is one, over the fixed types of the three variables: loading
//! refuses a condition that does not parse, names anything but `action`,
//! `proposer` and `context_refs`, selects a field they do not have, calls a
//! function not listed in [`FUNCTIONS`] or with operands it does not take,
//! applies an operator to operands of the wrong types (`action.kind > 5`,
//! `size(action.target) + "x"`), compares values that are never equal, has
//! a part that names no variable and fails (`int("x")`, `1 / 0`), or is not
//! a bool. What the types cannot tell (a missing parameter, `int("slow")`,
//! `.startsWith` on a null `proposer.model`) fails as the condition
//! evaluates: the rule does not match, and the reason is recorded.
//!
//! One more rule keeps evaluation deterministic: the crate's maps iterate in
//! hash order (random per process), so a comprehension (`all`, `exists`,
//! `exists_one`, `map`, `filter`) may only range over a value known to be
//! a list (`context_refs`, a literal, what `map`, `filter` and `+` make of
//! them), never over a map such as `action.parameters`; no
//! comprehension variable may be named like a variable (it would hide it);
//! `string()` is refused on anything that may be a map or a list; and
//! `list + map` (which appends the map's keys) is refused, as is anything
//! that could hide a map in a value of unknown type.
//!
//! And one keeps intake alive: a condition the crate would recurse on too
//! deeply is refused ([`MAX_LENGTH`], [`MAX_NESTING`], [`MAX_DEPTH`]).

use std::sync::Arc;

use cel::{Context, Program, Value};

use crate::ruleset::Facts;

mod check;

/// The variables a condition may name.
pub const VARIABLES: [&str; 3] = ["action", "proposer", "context_refs"];

/// The functions a condition may call (operators aside): what the rule
/// language documents. Anything else is refused at load, so a misspelt
/// function cannot make a rule silently never match.
pub const FUNCTIONS: [&str; 9] = [
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
    "bool",
];

/// How long a condition may be, how deep brackets may nest in it, and how
/// many operations deep it may be. The crate's parser, evaluator and AST
/// recurse, with large frames: in a debug build on a 2 MiB thread stack,
/// parsing a dozen nested parentheses overflows it, and so do evaluating a
/// chain of about sixty `+` and dropping the AST of one of 1,500 (3 KB of
/// `1+1+…`). Running out of stack aborts the process (intake, at load or at
/// a proposal) instead of failing one rule, so such conditions are refused
/// at load. Honest conditions are a few hundred bytes and nest a few
/// levels (docs/rules.md).
pub const MAX_LENGTH: usize = 2048;
pub const MAX_NESTING: usize = 8;
pub const MAX_DEPTH: usize = 32;

/// The most context refs a proposal may carry (intake refuses more). A
/// condition's comprehensions over them are bounded by it: without a
/// bound, `context_refs.all(r, context_refs.exists_one(s, s.uri == r.uri))`
/// is quadratic in a count the client picks (4,000 refs took minutes).
/// Evidence links are a handful; 32 leaves room.
pub const MAX_CONTEXT_REFS: usize = 32;

/// The most comprehension steps a condition may take on any proposal,
/// counted at load from the size of what each comprehension ranges over
/// (a list literal's length, [`MAX_CONTEXT_REFS`] for the refs and what
/// `map` and `filter` make of them), multiplied through nesting and summed.
/// A step costs about 8 µs in a debug build, so the bound keeps a condition
/// under a tenth of a second there (a few milliseconds in release) on every
/// matching proposal, and at load when it names no variable and is
/// evaluated then. Every ref against every other ref (32 + 32 × 32 = 1,056
/// steps) fits with room; nested comprehensions over literals
/// (`[1, …30].all(a, [1, …30].all(b, …))`, 30^8 steps) do not.
pub const MAX_STEPS: u64 = 10_000;

/// A parsed `when:` expression.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
    /// Its value, when it names no variable (`false`, `1 > 2`).
    constant: Option<bool>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Two conditions are the same when their text is.
impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Condition {}

impl Condition {
    /// Parse and check `source`; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<Condition, String> {
        if source.trim().is_empty() {
            return Err("is empty".to_owned());
        }
        if source.len() > MAX_LENGTH {
            return Err(format!(
                "is {} bytes long; a condition may be at most {MAX_LENGTH}: match on kind and target for long lists",
                source.len()
            ));
        }
        // A source that is not all CEL tokens never parses; but the parser
        // reads on past the bad token, so it must not nest deeper than any
        // reading of it could either.
        let nesting = match check::nesting(source) {
            Ok(nesting) => nesting,
            Err(problem) if check::brackets(source) > MAX_NESTING => {
                return Err(format!("does not parse: {problem}"));
            }
            Err(_) => check::brackets(source),
        };
        if nesting > MAX_NESTING {
            return Err(format!(
                "nests brackets {nesting} deep; a condition may nest them at most {MAX_NESTING} deep"
            ));
        }
        let program = on_a_large_stack(source)?;
        let checked = check::check(&program, ENV.with(Arc::clone))?;
        Ok(Condition {
            source: source.to_owned(),
            program: Arc::new(program),
            constant: checked.constant,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The condition's value on every proposal, when it names no variable
    /// (`false`, `1 > 2`); `None` when it depends on the proposal.
    pub fn constant(&self) -> Option<bool> {
        self.constant
    }

    /// `Ok(true)` when the condition holds in `bound` (the facts of one
    /// proposal, see [`Bound::of`]); `Err` with a short reason when it
    /// cannot be evaluated or is not a bool.
    pub fn evaluate(&self, bound: &Bound) -> Result<bool, String> {
        let context = match &bound.0 {
            Ok(context) => context,
            Err(error) => return Err(error.clone()),
        };
        match self.program.execute(context) {
            Ok(Value::Bool(holds)) => Ok(holds),
            Ok(other) => Err(format!("is not a bool but {:?}", other.type_of())),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// The stack [`on_a_large_stack`] parses on. The crate's parser stops at
/// 96 nested expressions whatever the source; in a debug build each costs
/// it up to about 170 KiB of stack (about 50 nested brackets overflow an
/// 8 MiB main thread), so 64 MiB holds the parser's own limit with room to
/// spare. It is address space reserved, not memory used, and only while a
/// ruleset loads.
const PARSE_STACK: usize = 64 << 20;

/// Parse `source` and measure its depth on a thread with a [`PARSE_STACK`]
/// stack, dropping there the tree of a source refused for its depth: the
/// parser, and the drop of what it built, recurse once per nested bracket,
/// and a stack overflow aborts the whole process (intake, as it loads a
/// ruleset) rather than failing one rule. [`check::nesting`] already
/// refuses deep nesting; this keeps a source it misreads from aborting.
/// Still a pure function of `source`: the thread does no IO, reads no
/// clock and shares nothing, and the caller waits for it.
fn on_a_large_stack(source: &str) -> Result<Program, String> {
    let owned = source.to_owned();
    let parse = move || -> Result<Program, String> {
        let program = Program::compile(&owned).map_err(|e| {
            let text = e.to_string();
            format!(
                "does not parse: {}",
                text.lines().next().unwrap_or("syntax error")
            )
        })?;
        let depth = check::depth(program.expression());
        if depth > MAX_DEPTH {
            return Err(format!(
                "is {depth} operations deep; a condition may be at most {MAX_DEPTH} deep: split a long chain of + or of nested calls"
            ));
        }
        Ok(program)
    };
    let parser = std::thread::Builder::new()
        .name("condition-parse".to_owned())
        .stack_size(PARSE_STACK)
        .spawn(parse)
        .map_err(|e| format!("could not be parsed: no thread to parse it on ({e})"))?;
    match parser.join() {
        Ok(parsed) => parsed,
        // A panic in the crate's parser: the condition is refused, and the
        // panic (already printed) stops here.
        Err(_) => Err("does not parse: the parser failed on it".to_owned()),
    }
}

/// One proposal's facts as CEL variables, built once per resolution and
/// shared by every condition it evaluates.
pub struct Bound(Result<Context<'static, 'static>, String>);

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(_) => f.write_str("Bound(..)"),
            Err(error) => f.debug_tuple("Bound").field(error).finish(),
        }
    }
}

thread_local! {
    /// The standard environment, built once per thread: building it is most
    /// of the cost of a fresh context. It holds only the function table, no
    /// state between evaluations.
    static ENV: Arc<cel::Env> = Arc::new(cel::Env::stdlib());
}

impl Bound {
    pub fn of(facts: &Facts<'_>) -> Bound {
        let bind = |name: &str, value: Result<Value, cel::SerializationError>| {
            value.map_err(|e| format!("cannot bind {name}: {e}"))
        };
        let build = || -> Result<Context<'static, 'static>, String> {
            let mut context = Context::with_env(ENV.with(Arc::clone));
            context.add_variable_from_value("action", bind("action", cel::to_value(facts.action))?);
            context.add_variable_from_value(
                "proposer",
                bind("proposer", cel::to_value(facts.proposer))?,
            );
            context.add_variable_from_value(
                "context_refs",
                bind("context_refs", cel::to_value(facts.context_refs))?,
            );
            Ok(context)
        };
        Bound(build())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warrant_schema::{Action, ContextRef, Proposer, ProposerKind};

    use super::*;

    fn refused(source: &str) -> String {
        match Condition::parse(source) {
            Ok(_) => panic!("{source} was accepted"),
            Err(problem) => problem,
        }
    }

    #[test]
    fn a_bound_name_may_not_hide_a_variable() {
        for source in [
            // The attacker's: iterates the parameters map in random order.
            r#"[action.parameters].exists(context_refs, context_refs.map(k, k)[0] == "a")"#,
            r#"[action].exists(proposer, proposer.kind == "x")"#,
            r#"context_refs.all(action, action.uri != "")"#,
        ] {
            assert!(refused(source).starts_with("binds "), "{source}");
        }
    }

    #[test]
    fn nothing_that_may_be_a_map_is_iterated() {
        for source in [
            r#"[action.parameters].exists(p, p.map(k, k)[0] == "a")"#,
            r#"[action.parameters].exists(p, p.exists(k, k == "a"))"#,
            r#"[action.parameters][0].exists(k, k == "a")"#,
            r#"{"a": 1, "b": 2}.exists(k, k == "a")"#,
            r#"(true ? action.parameters : {}).exists(k, k == "a")"#,
        ] {
            assert!(refused(source).starts_with("iterates over"), "{source}");
        }
    }

    #[test]
    fn the_text_of_a_map_is_refused() {
        for source in [
            r#"string(action.parameters) == "{}""#,
            r#"string(action) == """#,
            r#"string(context_refs[0]) == """#,
            r#"string(context_refs) == """#,
            r#"string([action.parameters]) == """#,
            r#"string(context_refs.map(r, r)) == """#,
            r#"string({"a": "1", "b": "2"}) == """#,
        ] {
            assert!(refused(source).starts_with("calls string() on"), "{source}");
        }
        // Scalars keep their conversion.
        for source in [
            r#"string(int(action.parameters.n) + 1) == "2""#,
            r#"string(proposer.model) == "m""#,
        ] {
            Condition::parse(source).expect(source);
        }
    }

    #[test]
    fn misspelt_fields_are_refused() {
        for (source, problem) in [
            (
                r#"action.paramters.amount == "1""#,
                "selects .paramters on the action",
            ),
            (
                "size(action.parameters) > 0 && action.nosuch == 1",
                "selects .nosuch on the action",
            ),
            (r#"proposer.knd == "AGENT""#, "selects .knd on the proposer"),
            (
                r#"context_refs.exists(r, r.url == "x")"#,
                "selects .url on a context ref",
            ),
            (
                r#"context_refs[0].url == "x""#,
                "selects .url on a context ref",
            ),
            ("has(action.nosuch)", "selects .nosuch on the action"),
            ("action.kind.size == 1", "selects .size on a string"),
            ("context_refs.uri == \"x\"", "selects .uri on a list"),
            (
                r#"proposer.kind == "human""#,
                "compares proposer.kind with \"human\"",
            ),
            (
                r#""agent" != proposer.kind"#,
                "compares proposer.kind with \"agent\"",
            ),
        ] {
            let error = refused(source);
            assert!(error.starts_with(problem), "{source}: {error}");
        }
    }

    #[test]
    fn a_condition_known_not_to_be_a_bool_is_refused() {
        for (source, what) in [
            (r#""abc""#, "a string"),
            ("1", "an int"),
            ("null", "null"),
            ("action.parameters.amount", "a string"),
            ("action.parameters", "a map"),
            ("context_refs", "a list"),
            ("[true]", "a list"),
        ] {
            assert_eq!(
                refused(source),
                format!("is {what}, not a bool"),
                "{source}"
            );
        }
    }

    #[test]
    fn honest_conditions_still_load() {
        for source in [
            "true",
            "false",
            r#"proposer.kind == "AGENT" && context_refs.exists(r, r.uri.startsWith("runbook://"))"#,
            r#"has(action.parameters.amount) && int(action.parameters.amount) < 1000"#,
            r#""region" in action.parameters && action.parameters["region"] == "eu""#,
            r#"context_refs.all(r, has(r.digest) && r.digest != null)"#,
            r#"context_refs.exists_one(r, r.note == "x")"#,
            r#"["a", "b"].exists(x, x == action.target)"#,
            r#"size(context_refs.filter(r, r.uri.startsWith("x"))) > 1"#,
            r#"action.parameters == {"a": "1"}"#,
            r#"proposer.model == null || proposer.model.startsWith("m")"#,
            // deploy/examples/ruleset.yaml and docs/rules.md.
            "has(action.parameters.strategy) && action.parameters.strategy == \"rolling\"\n&& has(action.parameters.reason) && action.parameters.reason.contains(\"latency\")\n&& has(action.parameters.p99_ms) && int(action.parameters.p99_ms) > 2000",
            "int(action.parameters.amount) >= 1000",
            "int(action.parameters.amount) < 1000",
            r#"proposer.kind == "HUMAN""#,
            r#"proposer.model != null && proposer.model.startsWith("m")"#,
            "double(action.parameters.n) + 1.5 > 2.0",
            "1 == 1.0 && int(action.parameters.n) < 2.5",
        ] {
            Condition::parse(source).expect(source);
        }
    }

    /// Given conditions nested deeper than the crate's parser and evaluator
    /// can take on a thread's stack, when loaded, then refused (a stack
    /// overflow would abort intake); as deep as allowed loads and evaluates.
    #[test]
    fn conditions_too_deep_for_the_stack_are_refused() {
        let (action, proposer, refs) = facts_holding(BTreeMap::new());
        let bound = Bound::of(&Facts {
            action: &action,
            proposer: &proposer,
            context_refs: &refs,
        });
        let holds = |source: &str| {
            let condition = Condition::parse(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(condition.evaluate(&bound), Ok(true), "{source}");
        };
        let parens = |n: usize| format!("{}action.kind != \"x\"{}", "(".repeat(n), ")".repeat(n));
        holds(&parens(MAX_NESTING));
        assert_eq!(
            refused(&parens(MAX_NESTING + 1)),
            "nests brackets 9 deep; a condition may nest them at most 8 deep"
        );
        assert!(refused(&parens(100_000)).starts_with("is 200018 bytes long"));
        // Brackets in a string are text.
        holds(&format!("action.kind != \"{}\"", "([{".repeat(50)));
        // `>` over `+` n times over size(action.kind) over .kind over action.
        let chain = |n: usize| format!("size(action.kind){} > 0", " + 1".repeat(n));
        holds(&chain(MAX_DEPTH - 4));
        assert_eq!(
            refused(&chain(MAX_DEPTH - 3)),
            "is 33 operations deep; a condition may be at most 32 deep: split a long chain of + or of nested calls"
        );
        assert!(refused(&chain(400)).starts_with("is 404 operations deep"));
        assert!(refused(&chain(1_000)).starts_with("is 4021 bytes long"));
        // The parser balances a chain of && (and of ||), so a long one loads.
        holds(&vec![r#"action.kind != "x""#; 90].join(" && "));
        holds(
            &vec![r#"action.kind == "x""#; 90]
                .join(" || ")
                .replacen("==", "!=", 1),
        );
    }

    /// Given brackets hidden from a scan that misreads strings and comments
    /// (the attacker's: after a raw `r"\"`, or between a `"` in a `//`
    /// comment and one in the next), when loaded, then they are counted and
    /// the condition refused; brackets inside each kind of literal and in
    /// comments are still text.
    #[test]
    fn brackets_are_counted_on_cel_tokens() {
        let deep = format!("{}true{}", "(".repeat(60), ")".repeat(60));
        for source in [
            format!(r#"action.kind != r"\" && {deep} && action.kind != "x""#),
            format!("action.kind != \"x\" // a \" in a comment\n&& {deep} // closes it: \""),
            format!(r#"action.kind != R'\' && {deep}"#),
            format!(r#"action.kind != """\"""" && {deep} && action.kind != """x""""#),
            format!(r#"b"\\" != br"\" && {deep} && b"" != b"x""#),
            format!(r#"action.kind != r"""\""" && {deep}"#),
            format!(r#"[1r"\"][0] && {deep}"#),
        ] {
            assert_eq!(
                refused(&source),
                "nests brackets 60 deep; a condition may nest them at most 8 deep",
                "{source}"
            );
        }
        let (action, proposer, refs) = facts_holding(BTreeMap::new());
        let bound = Bound::of(&Facts {
            action: &action,
            proposer: &proposer,
            context_refs: &refs,
        });
        let many = "([{".repeat(30);
        for source in [
            format!(r#"action.kind != r"{many}\""#),
            format!("action.kind != \"\"\"{many}\n\"\"\""),
            format!("action.kind != r'''{many}'''"),
            format!(r#"b"{many}" != br"\{many}""#),
            format!("action.kind != \"x\" // {many}\n&& true"),
            format!("action.kind != \"\\\"{many}\""),
        ] {
            let condition = Condition::parse(&source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(condition.evaluate(&bound), Ok(true), "{source}");
        }
    }

    /// Given a source that is not all CEL tokens, when loaded, then refused:
    /// by the parser when it holds few brackets, and otherwise before the
    /// parser (whose error recovery reads on past the bad token, a swallowed
    /// quote turning string text into brackets) sees it.
    #[test]
    fn a_source_that_is_not_cel_tokens_is_refused() {
        let deep = format!("{}true{}", "(".repeat(60), ")".repeat(60));
        for (source, problem) in [
            (
                format!(r#"action.kind &"{deep}""#),
                "does not parse: a character that starts no CEL token at line 1, column 13",
            ),
            (
                format!(r#"action.kind == "\q{deep}""#),
                "does not parse: an invalid escape sequence in a string at line 1, column 16",
            ),
            (
                format!("action.kind == \"x\n{deep}\""),
                "does not parse: a line break in a string at line 1, column 16",
            ),
            (
                format!("`a//b == {deep}"),
                "does not parse: an unclosed or invalid `quoted name` at line 1, column 1",
            ),
        ] {
            assert_eq!(refused(&source), problem, "{source}");
        }
        assert!(refused("action.kind = \"x\"").starts_with("does not parse: ERROR: <input>:1:13"));
    }

    /// Given sources nested far deeper than the nesting scan allows, when
    /// parsed on the large stack directly (as if the scan had missed them),
    /// then the process survives: each parses or is refused. The test
    /// thread's stack is 2 MiB, on which a dozen brackets would overflow.
    #[test]
    fn the_parser_cannot_overflow_its_stack() {
        for n in [60, 95, 200, 1_000] {
            for (open, close) in [
                ("(", ")"),
                ("[", "]"),
                ("size(", ")"),
                ("{1: ", "}"),
                ("-(", ")"),
            ] {
                let source = format!("{}1{}", open.repeat(n), close.repeat(n));
                let _ = on_a_large_stack(&source);
            }
            let _ = on_a_large_stack(&"(".repeat(n));
            let _ = on_a_large_stack(&format!("{}1", "true ? 1 : ".repeat(n)));
        }
        assert!(on_a_large_stack(&format!("{}1{}", "(".repeat(60), ")".repeat(60))).is_ok());
        let refused = on_a_large_stack(&format!("{}1{}", "(".repeat(200), ")".repeat(200)));
        assert!(refused.is_err_and(|e| e.starts_with("does not parse:")));
    }

    fn facts_holding(parameters: BTreeMap<String, String>) -> (Action, Proposer, Vec<ContextRef>) {
        (
            Action {
                kind: "service.restart".to_owned(),
                target: "svc/a".to_owned(),
                parameters,
            },
            Proposer {
                principal: "p".to_owned(),
                kind: ProposerKind::Agent,
                model: None,
            },
            vec![ContextRef {
                uri: "runbook://a".to_owned(),
                digest: None,
                note: None,
            }],
        )
    }

    /// Property: whatever order the parameters were inserted in (and
    /// whatever order the map iterates in this run), every accepted
    /// condition gives the same answer.
    #[test]
    fn evaluation_does_not_depend_on_insertion_order() {
        let names: Vec<String> = (0..12).map(|i| format!("k{i:02}")).collect();
        let conditions: Vec<Condition> = [
            r#"action.parameters == {"k00": "0", "k01": "1"}"#,
            r#"size(action.parameters) == 12 && action.parameters.k03 == "3""#,
            r#"["k00", "k05", "k11"].all(k, k in action.parameters)"#,
            r#"[action.parameters].exists(p, p.k07 == "7")"#,
            r#"context_refs.exists(r, r.uri.startsWith("runbook://")) && "k09" in action.parameters"#,
        ]
        .iter()
        .map(|s| Condition::parse(s).expect(s))
        .collect();
        let mut answers: Option<Vec<Result<bool, String>>> = None;
        for rotation in 0..names.len() {
            let mut order = names.clone();
            order.rotate_left(rotation);
            if rotation % 2 == 1 {
                order.reverse();
            }
            let parameters: BTreeMap<String, String> = order
                .iter()
                .map(|k| (k.clone(), k[1..].trim_start_matches('0').to_owned()))
                .map(|(k, v)| (k, if v.is_empty() { "0".to_owned() } else { v }))
                .collect();
            let (action, proposer, refs) = facts_holding(parameters);
            // A fresh binding each time: the CEL map is rebuilt, so its
            // hash order is drawn again.
            for _ in 0..4 {
                let bound = Bound::of(&Facts {
                    action: &action,
                    proposer: &proposer,
                    context_refs: &refs,
                });
                let now: Vec<_> = conditions.iter().map(|c| c.evaluate(&bound)).collect();
                match &answers {
                    None => answers = Some(now),
                    Some(first) => assert_eq!(&now, first),
                }
            }
        }
        let answers = answers.expect("evaluated");
        assert_eq!(
            answers,
            vec![Ok(false), Ok(true), Ok(true), Ok(true), Ok(true)]
        );
    }
}
