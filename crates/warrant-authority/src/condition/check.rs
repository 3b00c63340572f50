//! The load-time check of a `when:` expression: a small static type
//! checker over the three variables a condition sees, whose types are fixed
//! (warrant-schema's `Action`, `Proposer` and `ContextRef`, bound as
//! [`super::Bound`] binds them), plus the checks that keep evaluation
//! deterministic and the evaluation of every sub-expression that names no
//! variable.
//!
//! The `cel` crate has no checker of its own, so this one follows what the
//! crate evaluates, which is CEL's runtime semantics:
//!
//! - Arithmetic takes two operands of one type: `int + double` and
//!   `int + uint` fail at runtime, so they are refused here (CEL converts no
//!   number implicitly). `%` takes ints or uints only, `-x` no uint.
//! - Comparisons (`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`) between an int, a
//!   uint and a double are accepted: the crate compares them by value
//!   (`1 == 1.0`, `1 < 2.5` hold), as CEL's runtime does, although cel-go's
//!   checker would refuse them. Refusing what evaluates correctly would buy
//!   nothing.
//! - `==` between values of different types never holds (`action.kind == 5`
//!   is false for every proposal), so it is refused like a misspelt field:
//!   a rule that silently never matches. Ordering values of different types
//!   is an evaluation error, refused too.
//! - `proposer.model` and a context ref's `digest` and `note` are a string
//!   or null. Comparing them with a string or with null is fine; a string
//!   operation on them (`.startsWith`, `+`, `<`, `int()`) is accepted but
//!   fails, as an evaluation error, when the value is null.
//! - `dyn` is a value whose type is only known as the expression evaluates:
//!   an element of a list literal of mixed types, a branch of `? :` whose
//!   branches differ. Anything may be done with it; what is wrong shows as
//!   an evaluation error. A `dyn` is never a map (mixing a map with other
//!   types is refused), because the crate's `list + map` appends the map's
//!   keys in hash order; `+` takes two lists for the same reason.

use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo};
use cel::{Context, Program, Value};

use super::{FUNCTIONS, MAX_CONTEXT_REFS, MAX_STEPS, VARIABLES};

/// The static type of a sub-expression.
#[derive(Debug, Clone, PartialEq)]
enum Type {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    /// A string or null: `proposer.model`, a context ref's `digest`, `note`.
    NullableString,
    List(Box<Type>),
    Map(Box<Type>, Box<Type>),
    Action,
    Proposer,
    ContextRef,
    /// Known only as the expression evaluates.
    Dyn,
    /// The element of an empty list or map literal: there is none, so it
    /// takes the type of whatever it is joined with (`[] + [1]`).
    Empty,
}

impl Type {
    fn describe(&self) -> String {
        match self {
            Type::Bool => "a bool".to_owned(),
            Type::Int => "an int".to_owned(),
            Type::Uint => "a uint".to_owned(),
            Type::Double => "a double".to_owned(),
            Type::String => "a string".to_owned(),
            Type::Bytes => "bytes".to_owned(),
            Type::Null => "null".to_owned(),
            Type::NullableString => "a string or null".to_owned(),
            Type::List(_) => "a list".to_owned(),
            Type::Map(..) => "a map".to_owned(),
            Type::Action => "the action".to_owned(),
            Type::Proposer => "the proposer".to_owned(),
            Type::ContextRef => "a context ref".to_owned(),
            Type::Dyn | Type::Empty => "a value".to_owned(),
        }
    }

    /// With the element types: `a list of strings`.
    fn describe_deep(&self) -> String {
        match self {
            Type::List(element) => format!("a list of {}", element.plural()),
            Type::Map(key, value) => format!("a map of {} to {}", key.plural(), value.plural()),
            other => other.describe(),
        }
    }

    fn plural(&self) -> String {
        match self {
            Type::Bool => "bools".to_owned(),
            Type::Int => "ints".to_owned(),
            Type::Uint => "uints".to_owned(),
            Type::Double => "doubles".to_owned(),
            Type::String => "strings".to_owned(),
            Type::Bytes => "bytes".to_owned(),
            Type::Null => "nulls".to_owned(),
            Type::NullableString => "strings or nulls".to_owned(),
            Type::List(element) => format!("lists of {}", element.plural()),
            Type::Map(key, value) => format!("maps of {} to {}", key.plural(), value.plural()),
            Type::Action => "actions".to_owned(),
            Type::Proposer => "proposers".to_owned(),
            Type::ContextRef => "context refs".to_owned(),
            Type::Dyn | Type::Empty => "values".to_owned(),
        }
    }

    fn is_dyn(&self) -> bool {
        matches!(self, Type::Dyn | Type::Empty)
    }

    fn is_number(&self) -> bool {
        matches!(self, Type::Int | Type::Uint | Type::Double)
    }

    fn is_string(&self) -> bool {
        matches!(self, Type::String | Type::NullableString)
    }

    fn is_object(&self) -> bool {
        matches!(self, Type::Action | Type::Proposer | Type::ContextRef)
    }

    /// A value whose text does not depend on any iteration order.
    fn is_scalar(&self) -> bool {
        self.is_number() || self.is_string() || matches!(self, Type::Bool | Type::Bytes)
    }

    /// A map, an object (bound as a map), or a list of such.
    fn holds_map(&self) -> bool {
        match self {
            Type::Map(..) | Type::Action | Type::Proposer | Type::ContextRef => true,
            Type::List(element) => element.holds_map(),
            _ => false,
        }
    }

    /// What a value of either type has: the type of a list of both, or of
    /// `c ? a : b`. `None` where that would be `dyn` and one of them holds a
    /// map: a `dyn` is never a map, so that no operation checked on a
    /// `dyn` (`[""] + x` appends a map's keys in iteration order) can see
    /// a map's order.
    fn join(a: &Type, b: &Type) -> Option<Type> {
        Some(match (a, b) {
            (a, b) if a == b => a.clone(),
            (Type::Empty, other) | (other, Type::Empty) => other.clone(),
            (Type::Dyn, other) | (other, Type::Dyn) if !other.holds_map() => Type::Dyn,
            (
                Type::String | Type::NullableString | Type::Null,
                Type::String | Type::NullableString | Type::Null,
            ) => Type::NullableString,
            (Type::List(a), Type::List(b)) => Type::List(Box::new(Type::join(a, b)?)),
            (Type::Map(ka, va), Type::Map(kb, vb)) => {
                Type::Map(Box::new(Type::join(ka, kb)?), Box::new(Type::join(va, vb)?))
            }
            (a, b) if a.holds_map() || b.holds_map() => return None,
            _ => Type::Dyn,
        })
    }

    /// Whether a value of type `a` may equal one of type `b`. Numbers
    /// compare by value across int, uint and double, as the crate does.
    fn may_equal(a: &Type, b: &Type) -> bool {
        match (a, b) {
            (a, b) if a.is_dyn() || b.is_dyn() => true,
            (a, b) if a.is_number() && b.is_number() => true,
            (a, b) if a.is_string() && b.is_string() => true,
            (Type::Null, Type::Null | Type::NullableString)
            | (Type::NullableString, Type::Null) => true,
            (Type::List(a), Type::List(b)) => Type::may_equal(a, b),
            (Type::Map(ka, va), Type::Map(kb, vb)) => {
                Type::may_equal(ka, kb) && Type::may_equal(va, vb)
            }
            // The objects are bound as maps from field name to value.
            (object, Type::Map(key, _)) | (Type::Map(key, _), object) if object.is_object() => {
                key.is_string() || key.is_dyn()
            }
            (a, b) => a == b,
        }
    }

    /// Whether `<` applies to a value of type `a` and one of type `b`.
    fn ordered(a: &Type, b: &Type) -> bool {
        let orderable = |t: &Type| {
            t.is_number() || t.is_string() || t.is_dyn() || matches!(t, Type::Bool | Type::Bytes)
        };
        match (a, b) {
            (a, b) if a.is_dyn() || b.is_dyn() => orderable(a) && orderable(b),
            (a, b) if a.is_number() && b.is_number() => true,
            (a, b) if a.is_string() && b.is_string() => true,
            (Type::Bool, Type::Bool) | (Type::Bytes, Type::Bytes) => true,
            _ => false,
        }
    }

    /// A string, never null, for the result of a string operation.
    fn definite(self) -> Type {
        match self {
            Type::NullableString => Type::String,
            other => other,
        }
    }
}

/// The describing pair for a message: with element types when the short
/// descriptions alone would read the same (`a list` with `a list`).
fn pair(a: &Type, b: &Type) -> (String, String) {
    let (short_a, short_b) = (a.describe(), b.describe());
    if short_a == short_b {
        (a.describe_deep(), b.describe_deep())
    } else {
        (short_a, short_b)
    }
}

/// The fields each object really has (warrant-schema's `Action`, `Proposer`
/// and `ContextRef`), with the type of each.
fn fields(of: &Type) -> Vec<(&'static str, Type)> {
    let string = || Type::String;
    match of {
        Type::Action => vec![
            ("kind", string()),
            ("target", string()),
            (
                "parameters",
                Type::Map(Box::new(string()), Box::new(string())),
            ),
        ],
        Type::Proposer => vec![
            ("principal", string()),
            ("kind", string()),
            ("model", Type::NullableString),
        ],
        Type::ContextRef => vec![
            ("uri", string()),
            ("digest", Type::NullableString),
            ("note", Type::NullableString),
        ],
        _ => Vec::new(),
    }
}

/// The type of `of.name`.
fn field(of: &Type, name: &str) -> Result<Type, String> {
    match of {
        object if object.is_object() => {
            let fields = fields(object);
            match fields.iter().find(|(field, _)| *field == name) {
                Some((_, ty)) => Ok(ty.clone()),
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
        // Any parameter name may be asked for; a missing one is an
        // evaluation error, so the rule does not match.
        Type::Map(key, value) if key.is_string() || key.is_dyn() => Ok((**value).clone()),
        Type::Dyn | Type::Empty => Ok(Type::Dyn),
        other => Err(format!("selects .{name} on {}", other.describe())),
    }
}

/// The values `proposer.kind` can have (warrant-schema's `ProposerKind`).
const PROPOSER_KINDS: [&str; 3] = ["AGENT", "SERVICE", "HUMAN"];

fn is_proposer_kind(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Select(select)
        if !select.test && select.field == "kind"
            && matches!(&select.operand.expr, Expr::Ident(name) if name == "proposer"))
}

fn string_literal(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(text)) => Some(text.to_string()),
        _ => None,
    }
}

fn never_a_kind(text: &str) -> Result<(), String> {
    if PROPOSER_KINDS.contains(&text) {
        return Ok(());
    }
    Err(format!(
        "compares proposer.kind with {text:?}, which it never is; it is one of {}",
        PROPOSER_KINDS.join(", ")
    ))
}

/// `proposer.kind == "human"` can never hold (the values are upper case):
/// like a misspelt field, it would silently route to the next rule. The
/// same for `proposer.kind in ["human"]`.
fn check_proposer_kind(name: &str, args: &[IdedExpr]) -> Result<(), String> {
    let [left, right] = args else { return Ok(()) };
    match name {
        "_==_" | "_!=_" => {
            let compared = if is_proposer_kind(left) {
                string_literal(right)
            } else if is_proposer_kind(right) {
                string_literal(left)
            } else {
                None
            };
            compared.map_or(Ok(()), |text| never_a_kind(&text))
        }
        "@in" if is_proposer_kind(left) => match &right.expr {
            Expr::List(list) => list
                .elements
                .iter()
                .filter_map(string_literal)
                .try_for_each(|text| never_a_kind(&text)),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The most entries a value may have, if it is a list or a map, and the
/// most each of its entries (element, map value) may have: what bounds how
/// often a comprehension over it steps. Context refs count as
/// [`MAX_CONTEXT_REFS`], the most a proposal carries; a list literal as
/// its length.
#[derive(Debug, Clone, Default, PartialEq)]
struct Size {
    most: u64,
    each: Option<Box<Size>>,
}

impl Size {
    /// A scalar, or a value of no entries.
    const NONE: Size = Size {
        most: 0,
        each: None,
    };

    fn of(most: u64, each: Size) -> Size {
        Size {
            most,
            each: (each != Size::NONE).then(|| Box::new(each)),
        }
    }

    fn each(&self) -> Size {
        self.each.as_deref().cloned().unwrap_or_default()
    }

    /// What bounds the entries of a value that has those of `self` or
    /// those of `other`.
    fn each_of_either(&self, other: &Size) -> Size {
        match (&self.each, &other.each) {
            (None, None) => Size::NONE,
            (Some(each), None) | (None, Some(each)) => (**each).clone(),
            (Some(a), Some(b)) => a.join(b),
        }
    }

    /// What bounds a value that is one or the other.
    fn join(&self, other: &Size) -> Size {
        Size::of(self.most.max(other.most), self.each_of_either(other))
    }

    /// What bounds `a + b`.
    fn sum(&self, other: &Size) -> Size {
        Size::of(
            self.most.saturating_add(other.most),
            self.each_of_either(other),
        )
    }
}

/// What the check learnt of a sub-expression.
struct Typed {
    ty: Type,
    /// The outermost binding the sub-expression names: 0 for a variable
    /// (`action`, ...), `i + 1` for the comprehension variable at depth `i`,
    /// `usize::MAX` when it names none. A sub-expression checked at scope
    /// depth `d` names nothing from outside itself when `reach > d`.
    reach: usize,
    /// How large its value may be.
    size: Size,
    /// The most comprehension steps evaluating it once may take.
    steps: u64,
}

impl Typed {
    fn of(ty: Type, reach: usize) -> Typed {
        Typed {
            ty,
            reach,
            size: Size::NONE,
            steps: 0,
        }
    }

    fn sized(self, size: Size, steps: u64) -> Typed {
        Typed {
            size,
            steps,
            ..self
        }
    }
}

/// What the whole check found.
pub(super) struct Checked {
    /// The condition's value when it names no variable (`false`, `1 < 2`).
    pub constant: Option<bool>,
}

/// Check `program` (see the module documentation); the error says what is
/// wrong, quoting the part of the source it is about.
pub(super) fn check(program: &Program, env: Arc<cel::Env>) -> Result<Checked, String> {
    let mut checker = Checker {
        source: program.source_info(),
        scope: Vec::new(),
        constants: Context::with_env(env),
    };
    let root = program.expression();
    let typed = checker.walk(root)?;
    match typed.ty {
        Type::Bool | Type::Dyn | Type::Empty => {}
        other => return Err(format!("is {}, not a bool", other.describe())),
    }
    let constant = if typed.reach > 0 {
        match checker.constants.resolve(root) {
            Ok(Value::Bool(holds)) => Some(holds),
            Ok(other) => return Err(format!("is always {other:?}, not a bool")),
            Err(error) => return Err(format!("always fails: {error}")),
        }
    } else {
        None
    };
    Ok(Checked { constant })
}

struct Checker<'a> {
    source: &'a SourceInfo,
    /// The comprehension variables in scope, innermost last.
    scope: Vec<(String, Type, Size)>,
    /// No variables: for evaluating what names none, in the environment
    /// conditions are evaluated in.
    constants: Context<'static, 'static>,
}

impl Checker<'_> {
    /// Check `expr`, then evaluate it if it names no variable: a constant
    /// that fails (`int("x")`, `1 / 0`) fails on every proposal.
    fn walk(&mut self, expr: &IdedExpr) -> Result<Typed, String> {
        let depth = self.scope.len();
        let typed = self.visit(expr)?;
        // Before evaluating it: a constant that steps too often would hang
        // the load.
        if typed.steps > MAX_STEPS {
            return Err(format!(
                "may take {} comprehension steps ({}); a condition may take at most {MAX_STEPS}: comprehensions nested in one another multiply, a list literal counts its length and context_refs counts {MAX_CONTEXT_REFS}, the most a proposal carries",
                typed.steps,
                self.snippet(expr)
            ));
        }
        if typed.reach > depth && !matches!(expr.expr, Expr::Literal(_)) {
            if let Err(error) = self.constants.resolve(expr) {
                return Err(format!("always fails: {error} ({})", self.snippet(expr)));
            }
        }
        Ok(typed)
    }

    fn visit(&mut self, expr: &IdedExpr) -> Result<Typed, String> {
        match &expr.expr {
            // The crate panics evaluating one; a parse that succeeded should
            // never leave one, but a panic at proposal would be worse.
            Expr::Unspecified => Err("has a part that does not parse".to_owned()),
            Expr::Literal(literal) => Ok(Typed::of(
                match literal {
                    LiteralValue::Boolean(_) => Type::Bool,
                    LiteralValue::Bytes(_) => Type::Bytes,
                    LiteralValue::Double(_) => Type::Double,
                    LiteralValue::Int(_) => Type::Int,
                    LiteralValue::Null => Type::Null,
                    LiteralValue::String(_) => Type::String,
                    LiteralValue::UInt(_) => Type::Uint,
                },
                usize::MAX,
            )),
            Expr::Ident(name) => self.ident(name),
            Expr::Select(select) => {
                let operand = self.walk(&select.operand)?;
                let selected = field(&operand.ty, &select.field)?;
                // `has(x.f)` asks whether the field is there.
                let (ty, size) = if select.test {
                    (Type::Bool, Size::NONE)
                } else {
                    (selected, operand.size.each())
                };
                Ok(Typed::of(ty, operand.reach).sized(size, operand.steps))
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
                    Some(target) => Some(self.walk(target)?),
                    None => None,
                };
                let args = call
                    .args
                    .iter()
                    .map(|arg| self.walk(arg))
                    .collect::<Result<Vec<_>, _>>()?;
                check_proposer_kind(name, &call.args)?;
                let reach = target
                    .iter()
                    .chain(&args)
                    .map(|typed| typed.reach)
                    .min()
                    .unwrap_or(usize::MAX);
                let steps = target
                    .iter()
                    .chain(&args)
                    .fold(0u64, |sum, typed| sum.saturating_add(typed.steps));
                let size = match (name, args.as_slice()) {
                    ("_+_", [a, b]) => a.size.sum(&b.size),
                    ("_?_:_", [_, yes, no]) => yes.size.join(&no.size),
                    ("_[_]", [container, _]) => container.size.each(),
                    _ => Size::NONE,
                };
                let types: Vec<&Type> = args.iter().map(|typed| &typed.ty).collect();
                let ty = if operator {
                    self.operator(expr, name, &call.args, &types)?
                } else {
                    self.function(expr, name, target.as_ref().map(|t| &t.ty), &types)?
                };
                Ok(Typed::of(ty, reach).sized(size, steps))
            }
            Expr::List(list) => {
                let mut element = Type::Empty;
                let mut reach = usize::MAX;
                let (mut each, mut steps) = (Size::NONE, 0u64);
                for item in &list.elements {
                    let typed = self.walk(item)?;
                    element = self.join(expr, &element, &typed.ty)?;
                    reach = reach.min(typed.reach);
                    each = each.join(&typed.size);
                    steps = steps.saturating_add(typed.steps);
                }
                let size = Size::of(list.elements.len() as u64, each);
                Ok(Typed::of(Type::List(Box::new(element)), reach).sized(size, steps))
            }
            Expr::Map(map) => {
                let (mut key, mut value) = (Type::Empty, Type::Empty);
                let mut reach = usize::MAX;
                let (mut each, mut steps) = (Size::NONE, 0u64);
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err("builds a message; conditions only compare values".to_owned());
                    };
                    let k = self.walk(&entry.key)?;
                    // The crate keys maps by int, uint, bool or string only.
                    if !(matches!(k.ty, Type::Int | Type::Uint | Type::Bool)
                        || k.ty.is_string()
                        || k.ty.is_dyn())
                    {
                        return Err(format!(
                            "uses {} as a map key ({}); a key is an int, uint, bool or string",
                            k.ty.describe(),
                            self.snippet(&entry.key)
                        ));
                    }
                    let v = self.walk(&entry.value)?;
                    key = self.join(expr, &key, &k.ty)?;
                    value = self.join(expr, &value, &v.ty)?;
                    reach = reach.min(k.reach).min(v.reach);
                    each = each.join(&v.size);
                    steps = steps.saturating_add(k.steps).saturating_add(v.steps);
                }
                let size = Size::of(map.entries.len() as u64, each);
                Ok(Typed::of(Type::Map(Box::new(key), Box::new(value)), reach).sized(size, steps))
            }
            Expr::Struct(_) => Err("builds a message; conditions only compare values".to_owned()),
            Expr::Comprehension(comprehension) => self.comprehension(comprehension),
        }
    }

    /// [`Type::join`], or why there is none.
    fn join(&self, expr: &IdedExpr, a: &Type, b: &Type) -> Result<Type, String> {
        Type::join(a, b).ok_or_else(|| {
            let (a, b) = pair(a, b);
            format!(
                "mixes {a} with {b} ({}); a value that may be a map must be known to be one, so that nothing can depend on the order of its entries",
                self.snippet(expr)
            )
        })
    }

    fn ident(&self, name: &str) -> Result<Typed, String> {
        if let Some(depth) = self.scope.iter().rposition(|(bound, ..)| bound == name) {
            let (_, ty, size) = &self.scope[depth];
            return Ok(Typed::of(ty.clone(), depth + 1).sized(size.clone(), 0));
        }
        let ty = match name {
            "action" => Type::Action,
            "proposer" => Type::Proposer,
            "context_refs" => {
                let refs = Size::of(MAX_CONTEXT_REFS as u64, Size::NONE);
                return Ok(Typed::of(Type::List(Box::new(Type::ContextRef)), 0).sized(refs, 0));
            }
            _ => {
                return Err(format!(
                    "names {name:?}; a condition may name only {}",
                    VARIABLES.join(", ")
                ))
            }
        };
        Ok(Typed::of(ty, 0))
    }

    /// `_+_`, `_==_` and the other operators the parser produces.
    fn operator(
        &self,
        expr: &IdedExpr,
        name: &str,
        args: &[IdedExpr],
        types: &[&Type],
    ) -> Result<Type, String> {
        let at = || self.snippet(expr);
        let as_bool = |index: usize| -> Result<(), String> {
            let ty = types[index];
            if matches!(ty, Type::Bool) || ty.is_dyn() {
                Ok(())
            } else {
                Err(format!(
                    "uses {} as a bool ({})",
                    ty.describe(),
                    self.snippet(&args[index])
                ))
            }
        };
        match (name, types) {
            ("_&&_" | "_||_", [_, _]) => {
                as_bool(0)?;
                as_bool(1)?;
                Ok(Type::Bool)
            }
            ("!_" | "@not_strictly_false", [_]) => {
                as_bool(0)?;
                Ok(Type::Bool)
            }
            ("_?_:_", [_, yes, no]) => {
                as_bool(0)?;
                self.join(expr, yes, no)
            }
            ("_==_" | "_!=_", [a, b]) => {
                if Type::may_equal(a, b) {
                    return Ok(Type::Bool);
                }
                let (a, b) = pair(a, b);
                Err(format!(
                    "compares {a} with {b} ({}); they are never equal",
                    at()
                ))
            }
            ("_<_" | "_<=_" | "_>_" | "_>=_", [a, b]) => {
                if Type::ordered(a, b) {
                    return Ok(Type::Bool);
                }
                let (a, b) = pair(a, b);
                Err(format!("compares {a} with {b} ({})", at()))
            }
            ("@in", [element, container]) => {
                let fits = match container {
                    Type::List(item) => Type::may_equal(element, item),
                    Type::Map(key, _) => Type::may_equal(element, key),
                    object if object.is_object() => element.is_string() || element.is_dyn(),
                    Type::Dyn | Type::Empty => true,
                    Type::String | Type::NullableString => {
                        return Err(format!(
                            "looks for {} in a string ({}); `in` takes a list or a map: for a substring, write .contains()",
                            element.describe(),
                            at()
                        ))
                    }
                    other => {
                        return Err(format!(
                            "looks for {} in {} ({}); `in` takes a list or a map",
                            element.describe(),
                            other.describe(),
                            at()
                        ))
                    }
                };
                if fits {
                    return Ok(Type::Bool);
                }
                Err(format!(
                    "looks for {} in {} ({}); it is never there",
                    element.describe(),
                    container.describe_deep(),
                    at()
                ))
            }
            ("_[_]", [container, index]) => self.index(expr, args, container, index),
            ("-_", [operand]) => match operand {
                Type::Int | Type::Double | Type::Dyn | Type::Empty => Ok((*operand).clone()),
                other => Err(format!("negates {} ({})", other.describe(), at())),
            },
            ("_+_" | "_-_" | "_*_" | "_/_" | "_%_", [a, b]) => self.arithmetic(expr, name, a, b),
            ("_?._" | "_[?_]", _) => Err(format!(
                "uses optional syntax ({}), which conditions do not support",
                at()
            )),
            _ => Err(format!(
                "uses the operator {name} ({}), which conditions do not support",
                at()
            )),
        }
    }

    fn arithmetic(&self, expr: &IdedExpr, name: &str, a: &Type, b: &Type) -> Result<Type, String> {
        let verb = match name {
            "_+_" => "adds",
            "_-_" => "subtracts",
            "_*_" => "multiplies",
            "_/_" => "divides",
            _ => "takes the remainder of",
        };
        let numbers: &[Type] = if name == "_%_" {
            &[Type::Int, Type::Uint]
        } else {
            &[Type::Int, Type::Uint, Type::Double]
        };
        let takes = |t: &Type| {
            numbers.contains(t)
                || (name == "_+_" && (t.is_string() || matches!(t, Type::Bytes | Type::List(_))))
        };
        let ty = match (a, b) {
            (a, b) if a.is_dyn() && b.is_dyn() => Some(Type::Dyn),
            // The `dyn` may be a list of anything but maps, so the sum's
            // elements are `dyn` too; the list's own elements must not be
            // maps either, or a map would hide in that `dyn`
            // (`([[], 1][0] + [action.parameters])[0]`).
            (x, Type::List(element)) | (Type::List(element), x) if x.is_dyn() && name == "_+_" => {
                Some(Type::List(Box::new(self.join(
                    expr,
                    &Type::Dyn,
                    element,
                )?)))
            }
            (x, other) | (other, x) if x.is_dyn() && takes(other) => Some(other.clone().definite()),
            (a, b) if numbers.contains(a) && a == b => Some(a.clone()),
            (a, b) if name == "_+_" && a.is_string() && b.is_string() => Some(Type::String),
            (Type::Bytes, Type::Bytes) if name == "_+_" => Some(Type::Bytes),
            (Type::List(x), Type::List(y)) if name == "_+_" => {
                Some(Type::List(Box::new(self.join(expr, x, y)?)))
            }
            _ => None,
        };
        if let Some(ty) = ty {
            return Ok(ty);
        }
        let hint = if a.is_number() && b.is_number() && a != b {
            "; CEL converts no number implicitly: convert one side with int(), uint() or double()"
        } else if name == "_%_" && (a.is_number() || b.is_number()) {
            "; % takes two ints or two uints"
        } else {
            ""
        };
        let (a, b) = pair(a, b);
        let joined = if name == "_%_" { "by" } else { "and" };
        Err(format!(
            "{verb} {a} {joined} {b} ({}){hint}",
            self.snippet(expr)
        ))
    }

    fn index(
        &self,
        expr: &IdedExpr,
        args: &[IdedExpr],
        container: &Type,
        index: &Type,
    ) -> Result<Type, String> {
        let refused = |what: &str| {
            Err(format!(
                "indexes {} with {} ({}){what}",
                container.describe_deep(),
                index.describe(),
                self.snippet(expr)
            ))
        };
        match container {
            Type::List(element) => {
                if matches!(index, Type::Int | Type::Uint) || index.is_dyn() {
                    Ok((**element).clone())
                } else {
                    refused("; a list is indexed by an int")
                }
            }
            Type::Map(key, value) => {
                if Type::may_equal(index, key) {
                    Ok((**value).clone())
                } else {
                    refused("; no key has that type")
                }
            }
            object if object.is_object() => match args.get(1).and_then(string_literal) {
                // `action["kind"]` is `action.kind`, checked the same.
                Some(name) => field(object, &name),
                None => refused("; name the field: .kind or [\"kind\"]"),
            },
            Type::Dyn | Type::Empty => Ok(Type::Dyn),
            _ => refused("; only a list or a map is indexed"),
        }
    }

    /// The functions of [`FUNCTIONS`], with the overloads CEL has.
    fn function(
        &self,
        expr: &IdedExpr,
        name: &str,
        target: Option<&Type>,
        types: &[&Type],
    ) -> Result<Type, String> {
        let at = || self.snippet(expr);
        let method = matches!(name, "contains" | "startsWith" | "endsWith");
        let count = |n: usize| format!("{n} argument{}", if n == 1 { "" } else { "s" });
        // The one value the function applies to: `size(x)` or `x.size()`,
        // `int(x)`, the `y` of `x.contains(y)`.
        let operand: &Type = if name == "size" {
            match (target, types) {
                (None, [operand]) => operand,
                (Some(operand), []) => operand,
                _ => {
                    return Err(format!(
                        "calls size() with {} ({}); write size(x) or x.size()",
                        count(types.len() + usize::from(target.is_some())),
                        at()
                    ))
                }
            }
        } else if method {
            match (target, types) {
                (Some(_), [operand]) => operand,
                (None, _) => {
                    return Err(format!(
                        "calls {name}() as a function ({}); it is a method: write x.{name}(y)",
                        at()
                    ))
                }
                (Some(_), _) => {
                    return Err(format!(
                        "calls .{name}() with {} ({}); write x.{name}(y)",
                        count(types.len()),
                        at()
                    ))
                }
            }
        } else {
            match (target, types) {
                (None, [operand]) => operand,
                (Some(_), _) => {
                    return Err(format!(
                        "calls .{name}() as a method ({}); write {name}(x)",
                        at()
                    ))
                }
                (None, _) => {
                    return Err(format!(
                        "calls {name}() with {} ({}); write {name}(x)",
                        count(types.len()),
                        at()
                    ))
                }
            }
        };
        let accepts = |takes: &str, ok: bool, result: Type| {
            if ok {
                Ok(result)
            } else {
                Err(format!(
                    "calls {name}() on {} ({}); it takes {takes}",
                    operand.describe(),
                    at()
                ))
            }
        };
        let number_or_string = operand.is_number() || operand.is_string() || operand.is_dyn();
        match name {
            "size" => accepts(
                "a string, bytes, a list or a map",
                operand.is_string()
                    || operand.is_dyn()
                    || operand.is_object()
                    || matches!(operand, Type::Bytes | Type::List(_) | Type::Map(..)),
                Type::Int,
            ),
            "contains" | "startsWith" | "endsWith" => {
                let on = target.unwrap_or(&Type::Dyn);
                if !(on.is_string() || on.is_dyn()) {
                    let hint = if matches!(on, Type::List(_) | Type::Map(..)) {
                        ": for a list or a map, write `x in y`"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "calls .{name}() on {} ({}); it takes a string{hint}",
                        on.describe(),
                        at()
                    ));
                }
                accepts(
                    "a string",
                    operand.is_string() || operand.is_dyn(),
                    Type::Bool,
                )
            }
            "int" => accepts(
                "an int, uint, double or string",
                number_or_string,
                Type::Int,
            ),
            "uint" => accepts(
                "an int, uint, double or string",
                number_or_string,
                Type::Uint,
            ),
            "double" => accepts(
                "an int, uint, double or string",
                number_or_string,
                Type::Double,
            ),
            "bool" => accepts(
                "a bool or a string",
                matches!(operand, Type::Bool) || operand.is_string() || operand.is_dyn(),
                Type::Bool,
            ),
            // "string"
            _ => {
                // The text of a map (or of a list of maps) spells its
                // entries in iteration order, which is random.
                if matches!(operand, Type::Null) {
                    return Err(format!(
                        "calls string() on null ({}), which has no text",
                        at()
                    ));
                }
                if !operand.is_scalar() {
                    return Err(format!(
                        "calls string() on {} ({}); only a string, number or bool has a text that does not depend on a map's iteration order",
                        operand.describe(),
                        at()
                    ));
                }
                Ok(Type::String)
            }
        }
    }

    fn comprehension(
        &mut self,
        comprehension: &cel::common::ast::ComprehensionExpr,
    ) -> Result<Typed, String> {
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
        // A list has a fixed order: `context_refs` (no bound name can hide
        // it, see above), a literal, and what `map`, `filter`, `+` and
        // indexing make of lists. A map's order is random per process, and
        // a `dyn` might be a list of maps, or be checked as one thing and
        // evaluate as another, so only a range known to be a list will do.
        let range = self.walk(&comprehension.iter_range)?;
        let element = match &range.ty {
            Type::List(element) => (**element).clone(),
            other => {
                return Err(format!(
                    "iterates over {} ({}); a comprehension ranges over a list (context_refs, a list literal, or what map, filter and + make of them): maps iterate in no fixed order",
                    other.describe(),
                    self.snippet(&comprehension.iter_range)
                ))
            }
        };
        let init = self.walk(&comprehension.accu_init)?;
        let depth = self.scope.len();
        let each = range.size.each();
        match &comprehension.iter_var2 {
            // Two variables over a list: the index, then the element.
            Some(second) => {
                self.scope
                    .push((comprehension.iter_var.clone(), Type::Int, Size::NONE));
                self.scope.push((second.clone(), element, each));
            }
            None => self
                .scope
                .push((comprehension.iter_var.clone(), element, each)),
        }
        let result = self.fold(comprehension, init, range.size.most);
        self.scope.truncate(depth);
        let result = result?;
        let steps = range.steps.saturating_add(result.steps);
        let reach = result.reach.min(range.reach);
        Ok(Typed::of(result.ty, reach).sized(result.size, steps))
    }

    /// The accumulator's type: what `accu_init` starts with, joined with
    /// what one step makes of it (`map` starts from `[]` of nothing and
    /// steps to a list of what it maps to). One step is enough: the only
    /// comprehensions are the macros' (no one can write `@result`), whose
    /// step is a bool operator, `@result + 1` or `@result + [e]` (maybe
    /// under `? :`), so a second step types as the first. Walking the body
    /// once also keeps nested comprehensions linear to check.
    ///
    /// It steps at most `most` times (the range's size), each step costing
    /// one plus what its condition and step cost; a step grows the
    /// accumulator by at most what one step adds to it (`map`, `filter`:
    /// one element), so the result has at most `most` times that more.
    fn fold(
        &mut self,
        comprehension: &cel::common::ast::ComprehensionExpr,
        init: Typed,
        most: u64,
    ) -> Result<Typed, String> {
        self.scope.push((
            comprehension.accu_var.clone(),
            init.ty.clone(),
            init.size.clone(),
        ));
        let cond = self.walk(&comprehension.loop_cond);
        let step =
            cond.and_then(|cond| self.walk(&comprehension.loop_step).map(|step| (cond, step)));
        self.scope.pop();
        let (cond, step) = step?;
        let accu = self.join(&comprehension.loop_step, &init.ty, &step.ty)?;
        let grown = Size::of(
            init.size
                .most
                .saturating_add(most.saturating_mul(step.size.most)),
            init.size.each_of_either(&step.size),
        );
        self.scope
            .push((comprehension.accu_var.clone(), accu, grown));
        let result = self.walk(&comprehension.result);
        self.scope.pop();
        let result = result?;
        let each_step = 1u64.saturating_add(cond.steps).saturating_add(step.steps);
        let steps = init
            .steps
            .saturating_add(most.saturating_mul(each_step))
            .saturating_add(result.steps);
        let reach = init.reach.min(cond.reach).min(step.reach).min(result.reach);
        Ok(Typed::of(result.ty, reach).sized(result.size, steps))
    }

    /// The source text of `expr`, for a message: from the first to the last
    /// token of it, widened to balance brackets (a call's position is its
    /// `(`, so the function's name is taken in as well), on one line.
    fn snippet(&self, expr: &IdedExpr) -> String {
        let mut span = (usize::MAX, 0);
        extent(expr, self.source, &mut span);
        let text = &self.source.source;
        let quoted = widen(text.as_bytes(), span).and_then(|(lo, hi)| text.get(lo..=hi));
        let quoted = quoted
            .unwrap_or(text)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        const MOST: usize = 80;
        match quoted.char_indices().nth(MOST) {
            Some((cut, _)) => format!("{}…", &quoted[..cut]),
            None => quoted,
        }
    }
}

/// The smallest and largest source offset of any node under `expr`.
fn extent(expr: &IdedExpr, source: &SourceInfo, span: &mut (usize, usize)) {
    if let Some((start, stop)) = source.offset_for(expr.id) {
        let (start, mut stop) = (start as usize, stop as usize);
        // A selection's position is its `.`: the field's name follows.
        if let Expr::Select(select) = &expr.expr {
            let bytes = source.source.as_bytes();
            if bytes.get(start) == Some(&b'.') {
                let gap = bytes[start + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
                stop = stop.max(start + gap + select.field.len());
            }
        }
        span.0 = span.0.min(start);
        span.1 = span.1.max(stop);
    }
    for child in children(expr) {
        extent(child, source, span);
    }
}

/// The sub-expressions of `expr`.
fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Call(call) => call.target.iter().map(|t| &**t).chain(&call.args).collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
                EntryExpr::StructField(field) => vec![&field.value],
            })
            .collect(),
        Expr::Struct(message) => message
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
                EntryExpr::StructField(field) => vec![&field.value],
            })
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// How many operations deep `root` is (a literal alone is 1), without
/// recursing: this is what keeps the recursive walks below safe.
pub(super) fn depth(root: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(root, 1)];
    while let Some((expr, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        pending.extend(children(expr).into_iter().map(|child| (child, depth + 1)));
    }
    deepest
}

/// How deep brackets (`(`, `[`, `{`) nest in `source`, counted on the
/// tokens of CEL's lexer (the `cel` crate's grammar): brackets in a string
/// or bytes literal (quoted, triple-quoted or raw) or in a `//` comment are
/// text. `Err` says where `source` is not made of CEL tokens; the parser
/// refuses such a source, but only after parsing what its error recovery
/// makes of the rest, so the caller must not trust the count then.
pub(super) fn nesting(source: &str) -> Result<usize, String> {
    let bytes = source.as_bytes();
    let (mut open, mut deepest) = (0usize, 0usize);
    let mut at = 0;
    while at < bytes.len() {
        match token(bytes, at) {
            Ok((Token::Open, next)) => {
                open += 1;
                deepest = deepest.max(open);
                at = next;
            }
            Ok((Token::Close, next)) => {
                open = open.saturating_sub(1);
                at = next;
            }
            Ok((Token::Other, next)) => at = next,
            Err(what) => return Err(format!("{what} at {}", position(source, at))),
        }
    }
    Ok(deepest)
}

/// The number of opening brackets anywhere in `source`, strings and
/// comments included: no reading of it can nest deeper.
pub(super) fn brackets(source: &str) -> usize {
    source.bytes().filter(|b| b"([{".contains(b)).count()
}

/// `line L, column C` (from 1) of byte `at`.
fn position(source: &str, at: usize) -> String {
    let before = &source.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |n| n + 1);
    let column = source
        .get(start..at)
        .map_or(at - start, |s| s.chars().count())
        + 1;
    format!("line {line}, column {column}")
}

/// What the nesting count needs of a token.
#[derive(Debug, PartialEq)]
enum Token {
    Open,
    Close,
    Other,
}

/// The token starting at byte `at` (which is not past the end), and the
/// offset just past it; `Err` when no CEL token starts there. This follows
/// the lexer rules of CEL's grammar (the `cel` crate's `CEL.g4`), with its
/// longest match: `r"` and `b"` open a raw and a bytes literal only where a
/// token starts (`xr"` is the name `xr`, then a string), and a number ends
/// where its digits do (`1r"\"` is `1`, then a raw string).
fn token(bytes: &[u8], at: usize) -> Result<(Token, usize), &'static str> {
    let here = bytes[at];
    let next = |n: usize| bytes.get(at + n).copied();
    let is_quote = |b: Option<u8>| matches!(b, Some(b'"' | b'\''));
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let other = |len: usize| Ok((Token::Other, at + len));
    match here {
        b'(' | b'[' | b'{' => Ok((Token::Open, at + 1)),
        b')' | b']' | b'}' => Ok((Token::Close, at + 1)),
        b' ' | b'\t' | b'\r' | b'\n' | 0x0c => other(1),
        b'/' if next(1) == Some(b'/') => {
            let rest = bytes[at..].iter().position(|&b| b == b'\n');
            Ok((Token::Other, rest.map_or(bytes.len(), |n| at + n)))
        }
        b'"' | b'\'' => string(bytes, at, false).map(|end| (Token::Other, end)),
        b'r' | b'R' if is_quote(next(1)) => {
            string(bytes, at + 1, true).map(|end| (Token::Other, end))
        }
        b'b' | b'B' if is_quote(next(1)) => {
            string(bytes, at + 1, false).map(|end| (Token::Other, end))
        }
        b'b' | b'B' if matches!(next(1), Some(b'r' | b'R')) && is_quote(next(2)) => {
            string(bytes, at + 2, true).map(|end| (Token::Other, end))
        }
        b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
            other(bytes[at..].iter().take_while(|b| word(b)).count())
        }
        b'`' => {
            let name = bytes[at + 1..]
                .iter()
                .take_while(|b| word(b) || b".-/ ".contains(b))
                .count();
            if name > 0 && bytes.get(at + 1 + name) == Some(&b'`') {
                other(name + 2)
            } else {
                Err("an unclosed or invalid `quoted name`")
            }
        }
        b'0'..=b'9' => other(number(bytes, at) - at),
        b'.' if next(1).is_some_and(|b| b.is_ascii_digit()) => other(number(bytes, at) - at),
        b'=' | b'!' | b'<' | b'>' if next(1) == Some(b'=') => other(2),
        b'&' | b'|' if next(1) == Some(here) => other(2),
        b'<' | b'>' | b'!' | b'-' | b'+' | b'*' | b'/' | b'%' | b'?' | b':' | b'.' | b',' => {
            other(1)
        }
        _ => Err("a character that starts no CEL token"),
    }
}

/// The offset just past the number starting at `at`: `0x` and hex digits,
/// or digits, a fraction and an exponent, each only when digits follow;
/// `u` only after an integer.
fn number(bytes: &[u8], at: usize) -> usize {
    let digits = |from: usize, hex: bool| {
        from + bytes[from..]
            .iter()
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count()
    };
    let uint = |end: usize| end + usize::from(matches!(bytes.get(end), Some(b'u' | b'U')));
    if bytes[at] == b'0'
        && matches!(bytes.get(at + 1), Some(b'x'))
        && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        return uint(digits(at + 2, true));
    }
    let mut end = digits(at, false);
    let mut integer = true;
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits(end + 1, false);
        integer = false;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        if bytes.get(end + 1 + sign).is_some_and(u8::is_ascii_digit) {
            end = digits(end + 1 + sign, false);
            integer = false;
        }
    }
    if integer {
        uint(end)
    } else {
        end
    }
}

/// The offset just past the string literal whose quote is at `at`: `'` or
/// `"`, tripled or not, raw (no escapes) or not; `Err` when it is not a
/// valid one (unclosed, a line break in a one-line string, a bad escape).
/// A tripled quote that does not close is the empty string `""` followed by
/// a third quote for the lexer, which no parse accepts: an error here too.
fn string(bytes: &[u8], at: usize, raw: bool) -> Result<usize, &'static str> {
    let quote = bytes[at];
    let triple = bytes.get(at + 1) == Some(&quote) && bytes.get(at + 2) == Some(&quote);
    let mut i = at + if triple { 3 } else { 1 };
    while i < bytes.len() {
        let b = bytes[i];
        if b == quote
            && (!triple || (bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote)))
        {
            return Ok(i + if triple { 3 } else { 1 });
        }
        if !triple && (b == b'\n' || b == b'\r') {
            return Err("a line break in a string");
        }
        if b == b'\\' && !raw {
            i += escape(&bytes[i..]).ok_or("an invalid escape sequence in a string")?;
            continue;
        }
        i += 1;
    }
    Err("an unclosed string")
}

/// The length of the escape sequence `text` starts with (at its `\`), if
/// it is one CEL has.
fn escape(text: &[u8]) -> Option<usize> {
    let hex = |from: usize, n: usize| {
        (text.len() >= from + n && text[from..from + n].iter().all(u8::is_ascii_hexdigit))
            .then_some(from + n)
    };
    match text.get(1)? {
        b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'"' | b'\'' | b'\\' | b'?' | b'`' => {
            Some(2)
        }
        b'0'..=b'3' => {
            (text.len() >= 4 && text[2..4].iter().all(|b| (b'0'..=b'7').contains(b))).then_some(4)
        }
        b'x' | b'X' => hex(2, 2),
        b'u' => hex(2, 4),
        b'U' => hex(2, 8),
        _ => None,
    }
}

/// `span` widened until its brackets balance, and back over the name of a
/// function whose `(` it starts at.
fn widen(bytes: &[u8], (mut lo, mut hi): (usize, usize)) -> Option<(usize, usize)> {
    if lo > hi || hi >= bytes.len() {
        return None;
    }
    // Brackets opened and never closed in the span, and closed never opened.
    let (mut open, mut unopened) = (0usize, 0usize);
    let mut at = lo;
    while at <= hi {
        match bytes[at] {
            b'"' | b'\'' => at = string(bytes, at, false).map_or(bytes.len(), |end| end - 1),
            b'(' | b'[' | b'{' => open += 1,
            b')' | b']' | b'}' => {
                if open == 0 {
                    unopened += 1;
                } else {
                    open -= 1;
                }
            }
            _ => {}
        }
        at += 1;
    }
    while unopened > 0 && lo > 0 {
        lo -= 1;
        match bytes[lo] {
            b')' | b']' | b'}' => unopened += 1,
            b'(' | b'[' | b'{' => unopened -= 1,
            _ => {}
        }
    }
    while open > 0 && hi + 1 < bytes.len() {
        hi += 1;
        match bytes[hi] {
            b'(' | b'[' | b'{' => open += 1,
            b')' | b']' | b'}' => open -= 1,
            _ => {}
        }
    }
    if bytes[lo] == b'(' {
        while lo > 0 && (bytes[lo - 1].is_ascii_alphanumeric() || bytes[lo - 1] == b'_') {
            lo -= 1;
        }
    }
    Some((lo, hi))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cel::Program;
    use warrant_schema::{Action, ContextRef, Proposer, ProposerKind};

    use super::super::{Bound, Condition};
    use crate::ruleset::Facts;

    fn refused(source: &str) -> String {
        match Condition::parse(source) {
            Ok(_) => panic!("{source} was accepted"),
            Err(problem) => problem,
        }
    }

    /// Facts with every field present (a model, a digest), so nothing an
    /// accepted condition does fails for want of a value.
    fn full() -> (Action, Proposer, Vec<ContextRef>) {
        (
            Action {
                kind: "service.restart".to_owned(),
                target: "svc/a".to_owned(),
                parameters: BTreeMap::from([("n".to_owned(), "7".to_owned())]),
            },
            Proposer {
                principal: "p".to_owned(),
                kind: ProposerKind::Agent,
                model: Some("m1".to_owned()),
            },
            vec![ContextRef {
                uri: "runbook://a".to_owned(),
                digest: Some("d".to_owned()),
                note: None,
            }],
        )
    }

    /// Evaluate `source` unchecked, as the crate would without this module.
    fn run(
        source: &str,
        facts: &(Action, Proposer, Vec<ContextRef>),
    ) -> Result<cel::Value, String> {
        let bound = Bound::of(&Facts {
            action: &facts.0,
            proposer: &facts.1,
            context_refs: &facts.2,
        });
        let context = bound.0.as_ref().map_err(Clone::clone)?;
        let program = Program::compile(source).map_err(|e| e.to_string())?;
        program.execute(context).map_err(|e| e.to_string())
    }

    /// Given the conditions issue 12 lists as loading on main, when they are
    /// loaded now, then each is refused saying which part is wrong.
    #[test]
    fn the_conditions_that_used_to_load_are_refused() {
        for (source, problem) in [
            (
                "action.kind > 5",
                "compares a string with an int (action.kind > 5)",
            ),
            (
                r#"size(action.target) + "x" == 3"#,
                r#"adds an int and a string (size(action.target) + "x")"#,
            ),
            (
                "action.parameters.a > 3",
                "compares a string with an int (action.parameters.a > 3)",
            ),
            (
                r#"int("x") > 0"#,
                r#"always fails: Error executing function 'int': string parse error: invalid digit found in string (int("x"))"#,
            ),
            (
                "1 / 0 == 1",
                "always fails: Division by zero of Int(1) (1 / 0)",
            ),
        ] {
            assert_eq!(refused(source), problem, "{source}");
        }
    }

    /// Given operands an operator or function does not take, when loaded,
    /// then refused, quoting the operation.
    #[test]
    fn operands_of_the_wrong_type_are_refused() {
        for (source, problem) in [
            // Ordering.
            (r#"proposer.kind < 1"#, "compares a string with an int (proposer.kind < 1)"),
            ("context_refs < [1]", "compares a list of context refs with a list of ints (context_refs < [1])"),
            ("(1 + 2) > action.kind", "compares an int with a string ((1 + 2) > action.kind)"),
            ("null >= size(action.kind)", "compares null with an int (null >= size(action.kind))"),
            // Arithmetic: one type on both sides, no implicit conversion.
            (
                "int(action.parameters.n) + 1.5 > 2.0",
                "adds an int and a double (int(action.parameters.n) + 1.5); CEL converts no number implicitly: convert one side with int(), uint() or double()",
            ),
            (
                "uint(action.parameters.n) - 1 > 0u",
                "subtracts a uint and an int (uint(action.parameters.n) - 1); CEL converts no number implicitly: convert one side with int(), uint() or double()",
            ),
            (
                "double(action.parameters.n) % 2.0 == 0.0",
                "takes the remainder of a double by a double (double(action.parameters.n) % 2.0); % takes two ints or two uints",
            ),
            (r#"action.kind * 2 == "x""#, "multiplies a string and an int (action.kind * 2)"),
            ("action.parameters + {} == {}", "adds a map of strings to strings and a map of values to values (action.parameters + {})"),
            ("-uint(action.parameters.n) == 0u", "negates a uint (-uint(action.parameters.n))"),
            (r#"-action.kind == "x""#, "negates a string (-action.kind)"),
            // Logic.
            ("!action.kind", "uses a string as a bool (action.kind)"),
            ("action.kind && true", "uses a string as a bool (action.kind)"),
            ("true || size(context_refs)", "uses an int as a bool (size(context_refs))"),
            (r#"action.target ? 1 : 2"#, "uses a string as a bool (action.target)"),
            ("context_refs.exists(r, r.uri)", "uses a string as a bool (r.uri)"),
            ("context_refs.all(r, size(r.uri))", "uses an int as a bool (size(r.uri))"),
            ("context_refs.exists_one(r, r.note)", "uses a string or null as a bool (r.note)"),
            (r#"size(context_refs.filter(r, r.uri)) > 0"#, "uses a string as a bool (r.uri)"),
            // Membership and indexing.
            (
                r#""a" in action.kind"#,
                r#"looks for a string in a string ("a" in action.kind); `in` takes a list or a map: for a substring, write .contains()"#,
            ),
            ("1 in action.parameters", "looks for an int in a map of strings to strings (1 in action.parameters); it is never there"),
            (r#"action.kind in [1, 2]"#, "looks for a string in a list of ints (action.kind in [1, 2]); it is never there"),
            ("true in size(action.kind)", "looks for a bool in an int (true in size(action.kind)); `in` takes a list or a map"),
            (r#"context_refs["a"].uri == "x""#, r#"indexes a list of context refs with a string (context_refs["a"]); a list is indexed by an int"#),
            ("context_refs[1.5].uri == \"x\"", "indexes a list of context refs with a double (context_refs[1.5]); a list is indexed by an int"),
            ("action.parameters[1] == \"x\"", "indexes a map of strings to strings with an int (action.parameters[1]); no key has that type"),
            ("action.kind[0] == \"s\"", "indexes a string with an int (action.kind[0]); only a list or a map is indexed"),
            ("action[1] == \"x\"", "indexes the action with an int (action[1]); name the field: .kind or [\"kind\"]"),
            ("action[action.kind] == \"x\"", "indexes the action with a string (action[action.kind]); name the field: .kind or [\"kind\"]"),
            (r#"action["kid"] == "x""#, "selects .kid on the action, which has only kind, target, parameters"),
            ("{1.5: action.kind}[1.5] == \"x\"", "uses a double as a map key (1.5); a key is an int, uint, bool or string"),
            ("{action.parameters: 1}[{}] == 1", "uses a map as a map key (action.parameters); a key is an int, uint, bool or string"),
            // The functions, with the overloads CEL has.
            ("size(1) == 1", "calls size() on an int (size(1)); it takes a string, bytes, a list or a map"),
            ("size(proposer.kind, 1) == 1", "calls size() with 2 arguments (size(proposer.kind, 1)); write size(x) or x.size()"),
            ("action.kind.size(1) == 1", "calls size() with 2 arguments (action.kind.size(1)); write size(x) or x.size()"),
            (r#"contains(action.kind, "x")"#, r#"calls contains() as a function (contains(action.kind, "x")); it is a method: write x.contains(y)"#),
            (r#"action.kind.startsWith("a", "b")"#, r#"calls .startsWith() with 2 arguments (action.kind.startsWith("a", "b")); write x.startsWith(y)"#),
            ("action.kind.endsWith(1)", "calls endsWith() on an int (action.kind.endsWith(1)); it takes a string"),
            (r#"context_refs.contains("a")"#, r#"calls .contains() on a list (context_refs.contains("a")); it takes a string: for a list or a map, write `x in y`"#),
            (r#"size(action.target).startsWith("1")"#, r#"calls .startsWith() on an int (size(action.target).startsWith("1")); it takes a string"#),
            ("action.kind.int() == 1", "calls .int() as a method (action.kind.int()); write int(x)"),
            ("int(action.kind, 10) == 1", "calls int() with 2 arguments (int(action.kind, 10)); write int(x)"),
            ("int(action.kind == \"x\") == 1", "calls int() on a bool (int(action.kind == \"x\")); it takes an int, uint, double or string"),
            ("uint(context_refs) == 1u", "calls uint() on a list (uint(context_refs)); it takes an int, uint, double or string"),
            ("double(null) == 1.0", "calls double() on null (double(null)); it takes an int, uint, double or string"),
            ("bool(size(action.kind))", "calls bool() on an int (bool(size(action.kind))); it takes a bool or a string"),
            ("string(null) == \"\"", "calls string() on null (string(null)), which has no text"),
            ("string(action.parameters) == \"\"", "calls string() on a map (string(action.parameters)); only a string, number or bool has a text that does not depend on a map's iteration order"),
        ] {
            assert_eq!(refused(source), problem, "{source}");
        }
    }

    /// Given `==` or `!=` between values of types that never equal, when
    /// loaded, then refused: the rule would silently never (or always)
    /// match, like one with a misspelt field.
    #[test]
    fn comparisons_that_never_hold_are_refused() {
        for (source, problem) in [
            ("action.kind == 5", "compares a string with an int (action.kind == 5); they are never equal"),
            ("action.kind != null", "compares a string with null (action.kind != null); they are never equal"),
            ("size(context_refs) == \"1\"", "compares an int with a string (size(context_refs) == \"1\"); they are never equal"),
            ("context_refs == action.parameters", "compares a list with a map (context_refs == action.parameters); they are never equal"),
            ("[1] == [\"a\"]", "compares a list of ints with a list of strings ([1] == [\"a\"]); they are never equal"),
            (
                r#"action.parameters == {"a": 1}"#,
                r#"compares a map of strings to strings with a map of strings to ints (action.parameters == {"a": 1}); they are never equal"#,
            ),
            ("proposer == action", "compares the proposer with the action (proposer == action); they are never equal"),
            ("context_refs[0].note == 1", "compares a string or null with an int (context_refs[0].note == 1); they are never equal"),
            ("action.kind == true", "compares a string with a bool (action.kind == true); they are never equal"),
        ] {
            assert_eq!(refused(source), problem, "{source}");
        }
    }

    /// Given sub-expressions that name no variable, when loaded, then they
    /// are evaluated, and one that fails is refused: it would fail on every
    /// proposal. Wherever it is, even where `&&` would not reach it.
    #[test]
    fn constant_parts_that_fail_are_refused() {
        for (source, problem) in [
            ("1 % 0 == 0 || true", "always fails: Remainder by zero of Int(1) (1 % 0)"),
            (
                "9223372036854775807 + 1 > size(action.kind)",
                "always fails: Overflow from binary operator 'add': Int(9223372036854775807), Int(1) (9223372036854775807 + 1)",
            ),
            ("[1, 2][5] == size(action.kind)", "always fails: Index out of bounds: Int(5) ([1, 2][5])"),
            (
                r#"{"a": 1, "a": 2}["a"] == size(action.kind)"#,
                r#"always fails: Failed with repeated key: String("a") ({"a": 1, "a": 2})"#,
            ),
            (
                r#"uint(-1) > 0u"#,
                "always fails: Error executing function 'uint': unsigned integer overflow (uint(-1))",
            ),
            (
                r#"proposer.kind == "AGENT" && double("1,5") > 1.0"#,
                r#"always fails: Error executing function 'double': string parse error: invalid float literal (double("1,5"))"#,
            ),
            (
                r#"context_refs.exists(r, bool("yes") && r.uri == "x")"#,
                r#"always fails: Error executing function 'bool': Type conversion error from 'string' to 'bool' (bool("yes"))"#,
            ),
            (
                r#"["a", 1].all(x, x > 0)"#,
                r#"always fails: found no matching overload for '_>_' applied to '(string, int)' (["a", 1].all(x, x > 0))"#,
            ),
            (
                r#"false && int("x") > 0"#,
                r#"always fails: Error executing function 'int': string parse error: invalid digit found in string (int("x"))"#,
            ),
        ] {
            assert_eq!(refused(source), problem, "{source}");
        }
    }

    /// Given a condition naming no variable, when loaded, then its value is
    /// known (for the `when is always false` warning); otherwise not.
    #[test]
    fn a_condition_naming_no_variable_has_a_known_value() {
        for (source, constant) in [
            ("false", Some(false)),
            ("true", Some(true)),
            ("1 > 2", Some(false)),
            ("[1, 2].exists(x, x == 2)", Some(true)),
            ("size([]) == 0 && !(1 == 1.0)", Some(false)),
            (r#"action.kind == "x""#, None),
            ("context_refs.exists(r, 1 == 1)", None),
            ("[action.kind].exists(x, true)", None),
        ] {
            let condition = Condition::parse(source).expect(source);
            assert_eq!(condition.constant(), constant, "{source}");
        }
    }

    /// Given conditions whose operands fit, when loaded, then accepted;
    /// and on facts that have every field they evaluate to a bool.
    #[test]
    fn well_typed_conditions_load_and_evaluate() {
        let facts = full();
        for source in [
            // Numbers compare by value across int, uint and double: the
            // crate's runtime does, so refusing would buy nothing.
            "int(action.parameters.n) == 7.0",
            "uint(action.parameters.n) > 2",
            "double(action.parameters.n) < 7u + 1u",
            "int(action.parameters.n) in [1.0, 7.0]",
            "size(action.parameters) == 1u",
            // Arithmetic on one type.
            "int(action.parameters.n) * 2 - 4 / 2 % 3 == 12",
            "uint(action.parameters.n) % 2u == 1u",
            "double(action.parameters.n) / 2.0 == 3.5",
            "-int(action.parameters.n) < -1",
            r#"action.kind + "/" + action.target == "service.restart/svc/a""#,
            r#"b"a" + b"b" == b"ab" && b"a" < b"b""#,
            "[1] + [2] == [1, 2] && size([action.kind] + [action.target]) == 2",
            // Strings, nullable or not.
            r#"proposer.model == null || proposer.model.startsWith("m")"#,
            r#"proposer.model != "x" && proposer.model < "n""#,
            r#"context_refs.all(r, r.digest == null || size(r.digest) > 0)"#,
            r#"context_refs.exists(r, r.note == null)"#,
            r#"string(proposer.model) == "m1""#,
            r#"action.kind.size() == 15 && size(action.kind) == 15"#,
            r#"action.kind.contains("rest") && action.kind.endsWith("start")"#,
            // Conversions.
            r#"int("12") == 12 && uint("12") == 12u && double("1.5") == 1.5"#,
            r#"int(1.5) == 1 && int(2u) == 2 && double(1) == 1.0 && uint(3) == 3u"#,
            r#"string(1) == "1" && string(1u) == "1" && string(1.5) == "1.5" && string(true) == "true""#,
            r#"string(b"ab") == "ab" && bool("true") && bool(true)"#,
            // Maps, lists, membership, indexing, has().
            r#""n" in action.parameters && action.parameters["n"] == "7""#,
            r#"action.parameters == {"n": "7"} && action.parameters != {}"#,
            r#"has(action.parameters.n) && has(context_refs[0].digest)"#,
            r#"action["kind"] == action.kind && "kind" in action"#,
            r#"context_refs[0].uri.startsWith("runbook://")"#,
            r#"context_refs[0u].uri != """#,
            r#"{1: "a", 2u: "b"}[1] == "a""#,
            r#"{true: action.kind}[true] == action.kind"#,
            r#"proposer.kind in ["AGENT", "SERVICE"]"#,
            // Comprehensions and what they build.
            r#"context_refs.map(r, r.uri)[0] == "runbook://a""#,
            r#"size(context_refs.filter(r, r.uri.startsWith("runbook://"))) == 1"#,
            r#"context_refs.exists_one(r, r.uri == "runbook://a")"#,
            r#"[1, 2, 3].map(x, x * 2) == [2, 4, 6] && [action.kind].all(k, k != "")"#,
            r#"["a", "b"].exists(x, x == action.target) || true"#,
            r#"[1, 2].map(x, x > 1, x * 10) == [20]"#,
            // What is only known as it evaluates.
            r#"["a", 1].exists(x, x == "a")"#,
            r#"(size(action.kind) > 1 ? 1 : "a") == 1"#,
            r#"[1, "a"][0] == size(action.target) - 4"#,
            "size([[], 1][0] + [action.kind]) == 1",
        ] {
            if let Err(problem) = Condition::parse(source) {
                panic!("{source} was refused: {problem}");
            }
            assert_eq!(run(source, &facts), Ok(cel::Value::Bool(true)), "{source}");
        }
    }

    /// Given a null `proposer.model`, when an accepted condition calls a
    /// string method on it, then that is an evaluation error (recorded as
    /// `when error`), as documented: the type says "string or null".
    #[test]
    fn a_string_method_on_null_fails_as_it_evaluates() {
        let mut facts = full();
        facts.1.model = None;
        let condition = Condition::parse(r#"proposer.model.startsWith("m")"#).expect("loads");
        let bound = Bound::of(&Facts {
            action: &facts.0,
            proposer: &facts.1,
            context_refs: &facts.2,
        });
        let error = condition
            .evaluate(&bound)
            .expect_err("null has no startsWith");
        assert!(error.contains("startsWith"), "{error}");
        let guarded =
            Condition::parse(r#"proposer.model != null && proposer.model.startsWith("m")"#)
                .expect("loads");
        assert_eq!(guarded.evaluate(&bound), Ok(false));
    }

    /// Given a list plus a map, when loaded, then refused. The crate
    /// evaluates it, appending the map's keys in their iteration order,
    /// which is random per process: `([""] + action.parameters)[1]` would
    /// pick a different parameter name from run to run. CEL's `+` takes
    /// two lists.
    #[test]
    fn a_list_plus_a_map_is_refused() {
        for (source, problem) in [
            (
                r#"([""] + action.parameters)[1] == "a""#,
                r#"adds a list and a map ([""] + action.parameters)"#,
            ),
            (
                r#"size(context_refs + context_refs[0]) == 4"#,
                "adds a list and a context ref (context_refs + context_refs[0])",
            ),
        ] {
            assert_eq!(refused(source), problem, "{source}");
        }
        // Nor may a map hide in a value whose type is only known as it
        // evaluates, where `+` could not tell it from a list.
        for (source, problem) in [
            (
                r#"([""] + [action.parameters, 1][0])[1] == "a""#,
                "mixes a map with an int ([action.parameters, 1])",
            ),
            (
                r#"([""] + (size(action.kind) > 1 ? context_refs[0] : 1))[1] == "a""#,
                "mixes a context ref with an int (size(action.kind) > 1 ? context_refs[0] : 1)",
            ),
            (
                r#"{"a": action.parameters, "b": 1}["a"] == {}"#,
                r#"mixes a map with an int ({"a": action.parameters, "b": 1})"#,
            ),
            (
                "[[action.parameters], [1]][0] == []",
                "mixes a list of maps of strings to strings with a list of ints ([[action.parameters], [1]])",
            ),
            // The attacker's: a `dyn` plus a list of maps was typed a list
            // of `dyn`, and its answer changed from process to process.
            (
                r#"([""] + ([[], 1][0] + [action.parameters])[0])[1] == "k0""#,
                "mixes a value with a map ([[], 1][0] + [action.parameters])",
            ),
            (
                "([[], 1][0] + [action.parameters])[0] + 1 == 1",
                "mixes a value with a map ([[], 1][0] + [action.parameters])",
            ),
            (
                "size([context_refs[0]] + [[], 1][0]) == 1",
                "mixes a value with a context ref ([context_refs[0]] + [[], 1][0])",
            ),
        ] {
            let error = refused(source);
            assert!(error.starts_with(problem), "{source}: {error}");
        }
        let mut facts = full();
        facts.0.parameters = (0..8).map(|i| (format!("k{i}"), String::new())).collect();
        let first = run(r#"[""] + action.parameters"#, &facts);
        let reordered = (0..20).any(|_| run(r#"[""] + action.parameters"#, &facts) != first);
        assert!(
            reordered,
            "the crate appends a map's keys in a fixed order now: {first:?}"
        );
    }

    /// Property, over every pair of a dozen typed operands and every binary
    /// operator: the checker agrees with the crate's runtime. Accepted
    /// means it evaluates (on facts with every field present); refused
    /// means it fails, or for `==`, `!=` and `in` that the answer is the
    /// same whatever the facts (never equal, never there).
    #[test]
    fn the_checker_agrees_with_the_runtime() {
        let facts = full();
        let operands = [
            "action.kind",
            "proposer.model",
            "size(action.target)",
            "uint(action.parameters.n)",
            "double(action.parameters.n)",
            "(action.kind == \"x\")",
            "null",
            "b\"x\"",
            "[action.kind]",
            "[size(action.target)]",
            "action.parameters",
            "{\"k\": size(action.target)}",
            "context_refs[0]",
            "context_refs",
        ];
        let operators = [
            "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in",
        ];
        let mut checked = 0;
        let mut disagreements = Vec::new();
        for a in operands {
            for b in operands {
                for op in operators {
                    let inner = format!("{a} {op} {b}");
                    // Whatever its type, as a bool: a list of it is not empty.
                    let source = format!("[{inner}] != []");
                    let accepted = Condition::parse(&source);
                    let evaluated = run(&inner, &facts);
                    match (&accepted, &evaluated) {
                        (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
                        (Err(_), Ok(cel::Value::Bool(false))) if matches!(op, "==" | "in") => {}
                        (Err(_), Ok(cel::Value::Bool(true))) if op == "!=" => {}
                        // Stricter than the crate on purpose: see
                        // `a_list_plus_a_map_is_refused` (a list of strings
                        // and context refs would be such a mix).
                        (Err(problem), Ok(_))
                            if problem.starts_with("adds a list and a map")
                                || problem.starts_with("adds a list and a context ref")
                                || problem.starts_with("mixes") => {}
                        _ => disagreements.push(format!(
                            "{inner}: checker {accepted:?}, runtime {evaluated:?}"
                        )),
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(disagreements, Vec::<String>::new());
        assert_eq!(checked, 14 * 14 * 12);
    }

    /// Given comprehensions nested seven deep, each typed from the one
    /// inside, when loaded, then accepted, and it evaluates.
    #[test]
    fn nested_comprehensions_load_and_evaluate() {
        let mut source = "x0 == action.kind".to_owned();
        for depth in 1..=6 {
            source = format!("[action.kind].map(x{depth}, {source})[0]");
        }
        let source = format!("size([action.kind].filter(x0, {source})) == 1");
        let condition = Condition::parse(&source).expect("loads");
        let facts = full();
        let bound = Bound::of(&Facts {
            action: &facts.0,
            proposer: &facts.1,
            context_refs: &facts.2,
        });
        assert_eq!(condition.evaluate(&bound), Ok(true));
    }

    /// Given comprehensions nested over list literals (the attacker's: 30
    /// ones, eight deep, 30^8 steps), when loaded, then refused before any
    /// evaluation, whether the condition is a constant (evaluated at load)
    /// or names a variable (evaluated at every matching proposal).
    #[test]
    fn comprehensions_that_may_step_too_often_are_refused() {
        let ones = format!("[{}]", vec!["1"; 30].join(", "));
        for inner in ["true", r#"action.kind != "x""#] {
            let mut source = inner.to_owned();
            for depth in 0..8 {
                source = format!("{ones}.all(v{depth}, {source})");
            }
            // Refused before it is evaluated: evaluating it would not end.
            let problem = refused(&source);
            assert!(
                problem.starts_with("may take 27930 comprehension steps ([1, 1,"),
                "{problem}"
            );
            assert!(problem.ends_with("; a condition may take at most 10000: comprehensions nested in one another multiply, a list literal counts its length and context_refs counts 32, the most a proposal carries"), "{problem}");
        }
        for (source, steps) in [
            // Every ref against every other, then a third level.
            (
                "context_refs.all(r, context_refs.all(s, context_refs.exists(t, t.uri == r.uri)))",
                32 * (1 + 32 * (1 + 32)),
            ),
            // What `map` and `filter` make of the refs is as long, and so is
            // an element of a list of them.
            (
                "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10].all(n, [context_refs, context_refs.filter(r, true)][0].all(r, context_refs.map(s, s.uri).all(s, r.uri != s)))",
                // The filter, then per ref the map and its 32 steps.
                10 * (1 + 32 + 32 * (1 + 32 + 32)),
            ),
            // `+` adds the lengths.
            (
                "(context_refs + context_refs + context_refs).all(r, [context_refs + context_refs + context_refs + context_refs + [context_refs[0]]][0].all(s, r.uri != s.uri))",
                96 * (1 + 129),
            ),
        ] {
            let problem = refused(source);
            assert!(
                problem.starts_with(&format!("may take {steps} comprehension steps")),
                "{source}: {problem}"
            );
        }
        let facts = full();
        for source in [
            "context_refs.all(r, context_refs.exists_one(s, s.uri == r.uri))",
            "[1, 2, 3].all(a, [1, 2, 3].all(b, [1, 2, 3].all(c, a * b * c > 0)))",
            r#"context_refs.exists(r, ["runbook://a", "runbook://b"].exists(p, r.uri.startsWith(p)))"#,
        ] {
            if let Err(problem) = Condition::parse(source) {
                panic!("{source} was refused: {problem}");
            }
            assert_eq!(run(source, &facts), Ok(cel::Value::Bool(true)), "{source}");
        }
    }

    /// Given comprehensions over lists derived from the refs (the
    /// attacker's, refused before though their order is the list's), when
    /// loaded, then accepted, and they evaluate; a range that may be a map,
    /// or is only known as it evaluates, is still refused.
    #[test]
    fn any_list_may_be_iterated_and_nothing_else() {
        let facts = full();
        for source in [
            r#"context_refs.filter(r, r.uri.startsWith("runbook://")).all(r, r.digest != null)"#,
            r#"context_refs.map(r, r.uri).exists(u, u.startsWith("runbook://"))"#,
            r#"[context_refs].exists(c, c.exists(r, r.uri == "runbook://a"))"#,
            r#"context_refs.map(r, r).exists(r, r.uri == "runbook://a")"#,
            r#"(context_refs + context_refs).exists_one(r, r.digest == "x") == false"#,
            r#"(size(action.kind) > 1 ? context_refs : []).all(r, r.uri != "")"#,
            r#"{"a": ["x", "y"]}["a"].exists(v, v == "y")"#,
        ] {
            if let Err(problem) = Condition::parse(source) {
                panic!("{source} was refused: {problem}");
            }
            assert_eq!(run(source, &facts), Ok(cel::Value::Bool(true)), "{source}");
        }
        for (source, problem) in [
            (
                r#"action.parameters.exists(k, k.startsWith("override_"))"#,
                "iterates over a map (action.parameters); a comprehension ranges over a list",
            ),
            (
                r#"[[1], 1][0].exists(x, x == 1)"#,
                "iterates over a value ([[1], 1][0]); a comprehension ranges over a list",
            ),
            (
                r#"context_refs[0].exists(k, k == "uri")"#,
                "iterates over a context ref (context_refs[0]); a comprehension ranges over a list",
            ),
        ] {
            let error = refused(source);
            assert!(error.starts_with(problem), "{source}: {error}");
        }
    }

    /// Given a long condition over several lines, when a part is refused,
    /// then the message quotes that part on one line.
    #[test]
    fn the_quoted_part_is_on_one_line() {
        let source = "has(action.parameters.amount)\n  && (int(action.parameters.amount)\n      + 0.5) > 100";
        assert_eq!(
            refused(source),
            "adds an int and a double (int(action.parameters.amount) + 0.5); CEL converts no number implicitly: convert one side with int(), uint() or double()"
        );
        let long = format!(
            "action.kind == \"{}\" && size(action.target) + \"x\" == 1",
            "a".repeat(100)
        );
        assert_eq!(
            refused(&long),
            r#"adds an int and a string (size(action.target) + "x")"#
        );
        let wide = format!(
            "[{}] == 1",
            (0..40)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let problem = refused(&wide);
        assert!(
            problem.starts_with("compares a list with an int ([0, 1, 2,"),
            "{problem}"
        );
        assert!(problem.ends_with("…); they are never equal"), "{problem}");
    }
}
