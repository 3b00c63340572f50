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
//! read a clock or build a regex. What the crate does not give is a static
//! type checker, so loading checks what it can without one: the expression
//! parses, names only `action`, `proposer` and `context_refs`, selects
//! only the fields those really have, calls only the functions listed in
//! [`FUNCTIONS`], and is not known to be something other than a bool. Types are checked as the
//! expression evaluates: an error (a missing parameter, `int("x")`, a
//! result that is not a bool) makes the rule not match, and the reason is
//! recorded.
//!
//! One more rule keeps evaluation deterministic: the crate's maps iterate in
//! hash order (random per process), so a comprehension (`all`, `exists`,
//! `exists_one`, `map`, `filter`) may only range over `context_refs` or a
//! list literal, never over a map such as `action.parameters`; no
//! comprehension variable may be named like a variable (it would hide it);
//! and `string()` is refused on anything that may be a map or a list.

use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Program, Value};

use crate::ruleset::Facts;

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

/// A parsed `when:` expression.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
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
        let program = Program::compile(source).map_err(|e| {
            let text = e.to_string();
            format!(
                "does not parse: {}",
                text.lines().next().unwrap_or("syntax error")
            )
        })?;
        check(program.expression())?;
        Ok(Condition {
            source: source.to_owned(),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
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

/// What the checker knows a subexpression evaluates to. It is no type
/// checker, only enough to catch misspelt fields (which would silently
/// route actions to a laxer rule) and anything that could expose a map's
/// iteration order.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Action,
    Proposer,
    ContextRefs,
    ContextRef,
    /// `action.parameters`: a map from name to string.
    Parameters,
    /// A map literal.
    Map,
    List(Box<Shape>),
    Str,
    /// A string or null (`proposer.model`, a context ref's `digest`).
    MaybeStr,
    Bool,
    /// A number or another scalar.
    Scalar,
    Null,
    /// Not known: may be anything, a map included.
    Unknown,
}

impl Shape {
    fn describe(&self) -> &'static str {
        match self {
            Shape::Action => "the action",
            Shape::Proposer => "the proposer",
            Shape::ContextRefs | Shape::List(_) => "a list",
            Shape::ContextRef => "a context ref",
            Shape::Parameters | Shape::Map => "a map",
            Shape::Str | Shape::MaybeStr => "a string",
            Shape::Bool => "a bool",
            Shape::Scalar => "a number",
            Shape::Null => "null",
            Shape::Unknown => "a value",
        }
    }

    /// A value whose text does not depend on any iteration order.
    fn is_scalar(&self) -> bool {
        matches!(
            self,
            Shape::Str | Shape::MaybeStr | Shape::Bool | Shape::Scalar | Shape::Null
        )
    }

    /// The one shape of every element, or `Unknown`.
    fn common(shapes: impl IntoIterator<Item = Shape>) -> Shape {
        let mut shapes = shapes.into_iter();
        let Some(first) = shapes.next() else {
            return Shape::Unknown;
        };
        if shapes.all(|s| s == first) {
            first
        } else {
            Shape::Unknown
        }
    }
}

/// The fields each object really has (warrant-schema's `Action`, `Proposer`
/// and `ContextRef`), with the shape of each.
fn field(of: &Shape, name: &str) -> Result<Shape, String> {
    let fields: &[(&str, Shape)] = match of {
        Shape::Action => &[
            ("kind", Shape::Str),
            ("target", Shape::Str),
            ("parameters", Shape::Parameters),
        ],
        Shape::Proposer => &[
            ("principal", Shape::Str),
            ("kind", Shape::Str),
            ("model", Shape::MaybeStr),
        ],
        Shape::ContextRef => &[
            ("uri", Shape::Str),
            ("digest", Shape::MaybeStr),
            ("note", Shape::MaybeStr),
        ],
        // Any parameter name may be asked for; a missing one is an
        // evaluation error, so the rule does not match.
        Shape::Parameters => return Ok(Shape::Str),
        Shape::Map | Shape::Unknown => return Ok(Shape::Unknown),
        other => return Err(format!("selects .{name} on {}", other.describe())),
    };
    match fields.iter().find(|(field, _)| *field == name) {
        Some((_, shape)) => Ok(shape.clone()),
        None => Err(format!(
            "selects .{name} on {}, which has only {}",
            of.describe(),
            fields
                .iter()
                .map(|(field, _)| *field)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The values `proposer.kind` can have (warrant-schema's `ProposerKind`).
const PROPOSER_KINDS: [&str; 3] = ["AGENT", "SERVICE", "HUMAN"];

/// `proposer.kind == "human"` can never hold (the values are upper case):
/// like a misspelt field, it would silently route to the next rule.
fn check_proposer_kind(args: &[IdedExpr]) -> Result<(), String> {
    let is_kind = |e: &IdedExpr| {
        matches!(&e.expr, Expr::Select(select)
            if !select.test && select.field == "kind"
                && matches!(&select.operand.expr, Expr::Ident(name) if name == "proposer"))
    };
    let literal = |e: &IdedExpr| match &e.expr {
        Expr::Literal(cel::common::ast::LiteralValue::String(text)) => Some(text.to_string()),
        _ => None,
    };
    if let [left, right] = args {
        let compared = if is_kind(left) {
            literal(right)
        } else if is_kind(right) {
            literal(left)
        } else {
            None
        };
        if let Some(text) = compared.filter(|t| !PROPOSER_KINDS.contains(&t.as_str())) {
            return Err(format!(
                "compares proposer.kind with {text:?}, which it never is; it is one of {}",
                PROPOSER_KINDS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The whole condition: checked as [`shape`] does, and refused when it is
/// known not to be a bool (`"abc"`, `action.parameters.amount`).
fn check(expr: &IdedExpr) -> Result<(), String> {
    let mut bound = Vec::new();
    match shape(expr, &mut bound)? {
        Shape::Bool | Shape::Unknown => Ok(()),
        other => Err(format!("is {}, not a bool", other.describe())),
    }
}

/// Walk the expression: only known variables, fields and functions, and
/// comprehensions only over lists whose order is fixed.
fn shape(expr: &IdedExpr, bound: &mut Vec<(String, Shape)>) -> Result<Shape, String> {
    match &expr.expr {
        Expr::Unspecified => Ok(Shape::Unknown),
        Expr::Literal(literal) => Ok(match literal {
            cel::common::ast::LiteralValue::Boolean(_) => Shape::Bool,
            cel::common::ast::LiteralValue::String(_) => Shape::Str,
            cel::common::ast::LiteralValue::Null => Shape::Null,
            _ => Shape::Scalar,
        }),
        Expr::Ident(name) => {
            if let Some((_, shape)) = bound.iter().rev().find(|(b, _)| b == name) {
                return Ok(shape.clone());
            }
            match name.as_str() {
                "action" => Ok(Shape::Action),
                "proposer" => Ok(Shape::Proposer),
                "context_refs" => Ok(Shape::ContextRefs),
                // The macros' own accumulators.
                _ if name.starts_with('@') => Ok(Shape::Unknown),
                _ => Err(format!(
                    "names {name:?}; a condition may name only {}",
                    VARIABLES.join(", ")
                )),
            }
        }
        Expr::Select(select) => {
            let operand = shape(&select.operand, bound)?;
            let selected = field(&operand, &select.field)?;
            // `has(x.f)` asks whether the field is there.
            Ok(if select.test { Shape::Bool } else { selected })
        }
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            let operator = name.starts_with(|c: char| !c.is_ascii_alphabetic());
            if !operator && !FUNCTIONS.contains(&name) {
                return Err(format!(
                    "calls {name}(), which is not one of {}",
                    FUNCTIONS.join(", ")
                ));
            }
            let target = match &call.target {
                Some(target) => Some(shape(target, bound)?),
                None => None,
            };
            let args = call
                .args
                .iter()
                .map(|arg| shape(arg, bound))
                .collect::<Result<Vec<_>, _>>()?;
            if matches!(name, "_==_" | "_!=_") {
                check_proposer_kind(&call.args)?;
            }
            let first = target.as_ref().or(args.first());
            Ok(match name {
                "string" => {
                    // The text of a map (or of a list of maps) spells its
                    // entries in iteration order, which is random.
                    if let Some(arg) = first.filter(|arg| !arg.is_scalar()) {
                        return Err(format!(
                            "calls string() on {}; only a string, number or bool has a text that does not depend on a map's iteration order",
                            arg.describe()
                        ));
                    }
                    Shape::Str
                }
                "size" | "int" | "uint" | "double" => Shape::Scalar,
                "contains" | "startsWith" | "endsWith" | "bool" => Shape::Bool,
                "_[_]" => match (first, args.last()) {
                    (Some(Shape::ContextRefs), _) => Shape::ContextRef,
                    (Some(Shape::Parameters), _) => Shape::Str,
                    (Some(Shape::List(element)), _) => (**element).clone(),
                    _ => Shape::Unknown,
                },
                "_?_:_" => Shape::common(args.into_iter().skip(1)),
                "_+_" => match (args.first(), args.get(1)) {
                    (Some(Shape::Str | Shape::MaybeStr), _)
                    | (_, Some(Shape::Str | Shape::MaybeStr)) => Shape::Str,
                    (Some(Shape::Scalar), Some(Shape::Scalar)) => Shape::Scalar,
                    _ => Shape::Unknown,
                },
                "_-_" | "_*_" | "_/_" | "_%_" | "-_" => Shape::Scalar,
                "_==_"
                | "_!=_"
                | "_<_"
                | "_<=_"
                | "_>_"
                | "_>=_"
                | "_&&_"
                | "_||_"
                | "!_"
                | "@in"
                | "@not_strictly_false" => Shape::Bool,
                _ => Shape::Unknown,
            })
        }
        Expr::List(list) => {
            let elements = list
                .elements
                .iter()
                .map(|e| shape(e, bound))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Shape::List(Box::new(Shape::common(elements))))
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => {
                        shape(&e.key, bound)?;
                        shape(&e.value, bound)?;
                    }
                    EntryExpr::StructField(f) => {
                        shape(&f.value, bound)?;
                    }
                }
            }
            Ok(Shape::Map)
        }
        Expr::Struct(_) => Err("builds a message; conditions only compare values".to_owned()),
        Expr::Comprehension(comprehension) => {
            // A bound name that shadows a variable would make `context_refs`
            // below mean something else (the attacker's
            // `[action.parameters].exists(context_refs, context_refs.map(k, k)…)`).
            let names =
                std::iter::once(&comprehension.iter_var).chain(comprehension.iter_var2.as_ref());
            for name in names {
                if VARIABLES.contains(&name.as_str()) {
                    return Err(format!(
                        "binds {name:?}, which would hide the variable of that name; pick another name"
                    ));
                }
            }
            // Only the top-level `context_refs` (no bound name can hide it,
            // see above) or a list literal has a fixed order; any other
            // range might be a map, whose order is random per process.
            let element = match &comprehension.iter_range.expr {
                Expr::Ident(name) if name == "context_refs" => Shape::ContextRef,
                Expr::List(_) => match shape(&comprehension.iter_range, bound)? {
                    Shape::List(element) => *element,
                    _ => Shape::Unknown,
                },
                _ => {
                    return Err(
                        "iterates over something other than context_refs or a list literal; maps iterate in no fixed order"
                            .to_owned(),
                    )
                }
            };
            let depth = bound.len();
            match &comprehension.iter_var2 {
                // Two variables over a list: the index, then the element.
                Some(second) => {
                    bound.push((comprehension.iter_var.clone(), Shape::Scalar));
                    bound.push((second.clone(), element));
                }
                None => bound.push((comprehension.iter_var.clone(), element)),
            }
            bound.push((comprehension.accu_var.clone(), Shape::Unknown));
            let init = shape(&comprehension.accu_init, bound);
            let result = [&comprehension.loop_cond, &comprehension.loop_step]
                .into_iter()
                .try_for_each(|part| shape(part, bound).map(drop))
                .and_then(|()| shape(&comprehension.result, bound));
            bound.truncate(depth);
            // `exists` and `all` start from a bool, `exists_one` ends in
            // one; `map` and `filter` build a list of whatever, so that is
            // `Unknown` (never trusted as scalar).
            match (init?, result?) {
                (Shape::Bool, _) | (_, Shape::Bool) => Ok(Shape::Bool),
                _ => Ok(Shape::Unknown),
            }
        }
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
            r#"context_refs.map(r, r).exists(r, r.uri == "a")"#,
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
            ("1", "a number"),
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
        ] {
            Condition::parse(source).expect(source);
        }
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
