//! Rule conditions: a `when:` expression in CEL, the Common Expression
//! Language (docs/rules.md), over the proposed action, the proposer and the
//! context refs.
//!
//! CEL is side-effect free and always terminates (no loops beyond
//! comprehensions over finite lists, no recursion). The `cel` crate is
//! built without its `chrono` and `regex` features, so no expression can
//! read a clock or build a regex. What the crate does not give is a static
//! type checker, so loading checks what it can without one: the expression
//! parses, names only `action`, `proposer` and `context_refs`, and calls
//! only the functions listed in [`FUNCTIONS`]. Types are checked as the
//! expression evaluates: an error (a missing parameter, `int("x")`, a
//! result that is not a bool) makes the rule not match, and the reason is
//! recorded.
//!
//! One more rule keeps evaluation deterministic: the crate's maps iterate in
//! hash order (random per process), so a comprehension (`all`, `exists`,
//! `exists_one`, `map`, `filter`) may only range over `context_refs` or a
//! list literal, never over a map such as `action.parameters`.

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
        let mut bound: Vec<String> = Vec::new();
        check(program.expression(), &mut bound)?;
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

/// Walk the expression: only known variables and functions, and
/// comprehensions only over lists whose order is fixed.
fn check(expr: &IdedExpr, bound: &mut Vec<String>) -> Result<(), String> {
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => Ok(()),
        Expr::Ident(name) => {
            if name.starts_with('@')
                || bound.iter().any(|b| b == name)
                || VARIABLES.contains(&name.as_str())
            {
                Ok(())
            } else {
                Err(format!(
                    "names {name:?}; a condition may name only {}",
                    VARIABLES.join(", ")
                ))
            }
        }
        Expr::Select(select) => check(&select.operand, bound),
        Expr::Call(call) => {
            let operator = call
                .func_name
                .starts_with(|c: char| !c.is_ascii_alphabetic());
            if !operator && !FUNCTIONS.contains(&call.func_name.as_str()) {
                return Err(format!(
                    "calls {}(), which is not one of {}",
                    call.func_name,
                    FUNCTIONS.join(", ")
                ));
            }
            if let Some(target) = &call.target {
                check(target, bound)?;
            }
            call.args.iter().try_for_each(|arg| check(arg, bound))
        }
        Expr::List(list) => list.elements.iter().try_for_each(|e| check(e, bound)),
        Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                check(&e.key, bound)?;
                check(&e.value, bound)
            }
            EntryExpr::StructField(f) => check(&f.value, bound),
        }),
        Expr::Struct(_) => Err("builds a message; conditions only compare values".to_owned()),
        Expr::Comprehension(comprehension) => {
            let range = &comprehension.iter_range;
            let ordered = matches!(&range.expr, Expr::List(_))
                || matches!(&range.expr, Expr::Ident(name) if name == "context_refs");
            if !ordered {
                return Err(
                    "iterates over something other than context_refs or a list literal; maps iterate in no fixed order"
                        .to_owned(),
                );
            }
            check(range, bound)?;
            let depth = bound.len();
            bound.push(comprehension.iter_var.clone());
            if let Some(second) = &comprehension.iter_var2 {
                bound.push(second.clone());
            }
            bound.push(comprehension.accu_var.clone());
            let result = [
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ]
            .into_iter()
            .try_for_each(|part| check(part, bound));
            bound.truncate(depth);
            result
        }
    }
}
