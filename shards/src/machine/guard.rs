//! The guard expression language (docs/PROTOCOL.md §6): a strict parser that compiles a
//! guard's text into a small tree once, at PUT_MACHINE time, and an evaluator
//! that runs that tree against an instance's context on every APPLY_EVENT.
//!
//! Grammar, precedence and evaluation follow 0.3 exactly, with two deliberate
//! differences: the parser is strict (0.3 silently ignores everything after
//! the first complete expression, §6.3; we reject it), and non-ASCII field
//! names and escaped multi-byte characters work instead of crashing (0.3 drops
//! the connection on them).

use std::fmt;

use serde_json::Value;

/// Deepest nesting of `(` and `!` a guard may use. The parser and evaluator
/// recurse once per level, so a hostile guard must not be able to choose the
/// depth of our stack.
pub const GUARD_NESTING_MAX_DEPTH: usize = 64;

/// Longest guard text accepted, in bytes. Guards are compiled once and
/// evaluated on every event; nothing legitimate comes close to this.
pub const GUARD_SOURCE_BYTES_MAX: usize = 4096;

/// The reason a guard's text was rejected. `Display` gives the `{reason}` of
/// `core error: invalid guard expression: {reason}` (§6.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardError {
    Empty,
    FieldMustStartWithCtx,
    EmptyFieldName,
    ExpectedCloseParen,
    UnterminatedString,
    /// The text the number parser consumed (possibly empty).
    InvalidNumber(String),
    /// Our strict extension: text after the first complete expression.
    TrailingInput {
        offset_bytes: usize,
        rest: String,
    },
    TooDeep,
    TooLong {
        length_bytes: usize,
    },
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Empty => f.write_str("empty guard expression"),
            GuardError::FieldMustStartWithCtx => f.write_str("field must start with 'ctx.'"),
            GuardError::EmptyFieldName => f.write_str("empty field name"),
            GuardError::ExpectedCloseParen => f.write_str("expected ')'"),
            GuardError::UnterminatedString => f.write_str("unterminated string"),
            GuardError::InvalidNumber(text) => write!(f, "invalid number: '{text}'"),
            GuardError::TrailingInput { offset_bytes, rest } => {
                write!(
                    f,
                    "unexpected trailing input at byte {offset_bytes}: '{rest}'"
                )
            }
            GuardError::TooDeep => write!(
                f,
                "guard nesting exceeds the maximum depth of {GUARD_NESTING_MAX_DEPTH}"
            ),
            GuardError::TooLong { length_bytes } => write!(
                f,
                "guard expression too long: {length_bytes} bytes (limit: {GUARD_SOURCE_BYTES_MAX})"
            ),
        }
    }
}

impl std::error::Error for GuardError {}

/// A compiled guard. Two guards are equal when their source texts are: the
/// tree is a pure function of the text.
#[derive(Debug, Clone)]
pub struct Guard {
    source: String,
    root: Node,
}

impl PartialEq for Guard {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Guard {}

impl Guard {
    /// The text exactly as it appeared in the definition (it is part of the
    /// normalised definition and therefore of the checksum).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate against an instance context (§6.5). Never fails: missing
    /// fields are `null` and mismatched types compare false.
    pub fn eval(&self, ctx: &Value) -> bool {
        self.root.eval(ctx)
    }
}

/// Compile a guard's text. See the module doc for how this differs from 0.3.
pub fn parse(text: &str) -> Result<Guard, GuardError> {
    if text.len() > GUARD_SOURCE_BYTES_MAX {
        return Err(GuardError::TooLong {
            length_bytes: text.len(),
        });
    }
    if text.trim().is_empty() {
        return Err(GuardError::Empty);
    }
    let mut parser = Parser {
        text,
        pos: 0,
        depth: 0,
    };
    let root = parser.expr()?;
    parser.skip_whitespace();
    if parser.pos < text.len() {
        return Err(GuardError::TrailingInput {
            offset_bytes: parser.pos,
            rest: parser.rest().to_owned(),
        });
    }
    Ok(Guard {
        source: text.to_owned(),
        root,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// At least two operands; chains are flat so a long `a || b || …` costs
    /// no recursion depth.
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Truthy(FieldPath),
    Equals {
        field: FieldPath,
        literal: Literal,
        negated: bool,
    },
    Order {
        field: FieldPath,
        op: OrderOp,
        number: f64,
    },
}

/// The segments of `ctx.a.b` after `ctx.`: `["a", "b"]`. Empty segments are
/// kept (`ctx.a..b` looks up the key `""`).
#[derive(Debug, Clone, PartialEq)]
struct FieldPath(Vec<String>);

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Number(f64),
    /// Kept undecoded: a backslash stays in the value (§6.2).
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OrderOp {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

enum CmpOp {
    Equal,
    NotEqual,
    Order(OrderOp),
}

/// `==` treats numbers as equal when their f64 values differ by less than
/// this (0.3 compares with `f64::EPSILON`, which §6.5 writes as 2.22e-16).
const NUMBER_EQUALITY_TOLERANCE: f64 = f64::EPSILON;

impl Node {
    fn eval(&self, ctx: &Value) -> bool {
        match self {
            Node::Or(operands) => operands.iter().any(|n| n.eval(ctx)),
            Node::And(operands) => operands.iter().all(|n| n.eval(ctx)),
            Node::Not(inner) => !inner.eval(ctx),
            Node::Truthy(field) => field.lookup(ctx).is_some_and(is_truthy),
            Node::Equals {
                field,
                literal,
                negated,
            } => equals(field.lookup(ctx), literal) != *negated,
            Node::Order { field, op, number } => match field.lookup(ctx) {
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(x) => match op {
                        OrderOp::Greater => x > *number,
                        OrderOp::GreaterOrEqual => x >= *number,
                        OrderOp::Less => x < *number,
                        OrderOp::LessOrEqual => x <= *number,
                    },
                    None => false,
                },
                _ => false,
            },
        }
    }
}

impl FieldPath {
    /// `None` stands for `null`: a missing key, a non-object on the way, or
    /// an explicit JSON `null` all behave the same.
    fn lookup<'v>(&self, ctx: &'v Value) -> Option<&'v Value> {
        let mut current = ctx;
        for segment in &self.0 {
            current = current.as_object()?.get(segment.as_str())?;
        }
        match current {
            Value::Null => None,
            other => Some(other),
        }
    }
}

fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(members) => !members.is_empty(),
    }
}

/// No coercion: only same-kind pairs can be equal.
fn equals(value: Option<&Value>, literal: &Literal) -> bool {
    match (value, literal) {
        (None, Literal::Null) => true,
        (Some(Value::Bool(a)), Literal::Bool(b)) => a == b,
        (Some(Value::Number(a)), Literal::Number(b)) => a
            .as_f64()
            .is_some_and(|a| (a - b).abs() < NUMBER_EQUALITY_TOLERANCE),
        (Some(Value::String(a)), Literal::String(b)) => a == b,
        _ => false,
    }
}

struct Parser<'t> {
    text: &'t str,
    /// Byte offset into `text`; always on a char boundary.
    pos: usize,
    /// Current nesting of `(` and `!`.
    depth: usize,
}

impl<'t> Parser<'t> {
    fn rest(&self) -> &'t str {
        // `pos` only ever advances by whole chars or ASCII bytes.
        self.text.get(self.pos..).unwrap_or("")
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Consume `token` if the input continues with it.
    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), GuardError> {
        if self.depth >= GUARD_NESTING_MAX_DEPTH {
            return Err(GuardError::TooDeep);
        }
        self.depth += 1;
        Ok(())
    }

    fn expr(&mut self) -> Result<Node, GuardError> {
        let mut operands = vec![self.and_expr()?];
        loop {
            self.skip_whitespace();
            if !self.eat("||") {
                break;
            }
            operands.push(self.and_expr()?);
        }
        Ok(flatten(operands, Node::Or))
    }

    fn and_expr(&mut self) -> Result<Node, GuardError> {
        let mut operands = vec![self.unary()?];
        loop {
            self.skip_whitespace();
            if !self.eat("&&") {
                break;
            }
            operands.push(self.unary()?);
        }
        Ok(flatten(operands, Node::And))
    }

    fn unary(&mut self) -> Result<Node, GuardError> {
        self.skip_whitespace();
        if self.eat("!") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, GuardError> {
        self.skip_whitespace();
        if self.eat("(") {
            self.enter()?;
            let inner = self.expr()?;
            self.skip_whitespace();
            if !self.eat(")") {
                return Err(GuardError::ExpectedCloseParen);
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, GuardError> {
        let field = self.field()?;
        self.skip_whitespace();
        let Some(op) = self.cmp_op() else {
            return Ok(Node::Truthy(field));
        };
        self.skip_whitespace();
        Ok(match op {
            CmpOp::Equal | CmpOp::NotEqual => Node::Equals {
                field,
                literal: self.literal()?,
                negated: matches!(op, CmpOp::NotEqual),
            },
            CmpOp::Order(op) => Node::Order {
                field,
                op,
                number: self.number()?,
            },
        })
    }

    fn field(&mut self) -> Result<FieldPath, GuardError> {
        self.skip_whitespace();
        if !self.eat("ctx.") {
            return Err(GuardError::FieldMustStartWithCtx);
        }
        let rest = self.rest();
        let name_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return Err(GuardError::EmptyFieldName);
        }
        let name = &rest[..name_len];
        self.pos += name_len;
        Ok(FieldPath(name.split('.').map(str::to_owned).collect()))
    }

    fn cmp_op(&mut self) -> Option<CmpOp> {
        // Two-byte operators first so `>=` is not read as `>` then `=`.
        let op = if self.eat("==") {
            CmpOp::Equal
        } else if self.eat("!=") {
            CmpOp::NotEqual
        } else if self.eat(">=") {
            CmpOp::Order(OrderOp::GreaterOrEqual)
        } else if self.eat("<=") {
            CmpOp::Order(OrderOp::LessOrEqual)
        } else if self.eat(">") {
            CmpOp::Order(OrderOp::Greater)
        } else if self.eat("<") {
            CmpOp::Order(OrderOp::Less)
        } else {
            return None;
        };
        Some(op)
    }

    fn literal(&mut self) -> Result<Literal, GuardError> {
        if self.rest().starts_with('"') {
            return self.string().map(Literal::String);
        }
        // Keywords match by prefix as in 0.3; whatever follows (`trueish`)
        // is then rejected as trailing input by the strict check.
        if self.eat("true") {
            return Ok(Literal::Bool(true));
        }
        if self.eat("false") {
            return Ok(Literal::Bool(false));
        }
        if self.eat("null") {
            return Ok(Literal::Null);
        }
        self.number().map(Literal::Number)
    }

    /// `"…"` with backslash making the next char literal; the backslash is
    /// kept, because 0.3 does not decode escapes.
    fn string(&mut self) -> Result<String, GuardError> {
        let rest = self.rest();
        let mut chars = rest.char_indices();
        // Skip the opening quote.
        chars.next();
        let mut value = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(value);
                }
                '\\' => {
                    let (_, escaped) = chars.next().ok_or(GuardError::UnterminatedString)?;
                    value.push('\\');
                    value.push(escaped);
                }
                c => value.push(c),
            }
        }
        Err(GuardError::UnterminatedString)
    }

    /// `[-] digits [. digits]`, at least one digit somewhere; no exponent.
    fn number(&mut self) -> Result<f64, GuardError> {
        let rest = self.rest();
        let bytes = rest.as_bytes();
        let mut end = 0;
        if bytes.first() == Some(&b'-') {
            end += 1;
        }
        let digits_start = end;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let mut digit_count = end - digits_start;
        if bytes.get(end) == Some(&b'.') {
            end += 1;
            let fraction_start = end;
            while bytes.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            digit_count += end - fraction_start;
        }
        // Only ASCII bytes were consumed, so `end` is a char boundary.
        let text = &rest[..end];
        if digit_count == 0 {
            return Err(GuardError::InvalidNumber(text.to_owned()));
        }
        let number = text
            .parse::<f64>()
            .map_err(|_| GuardError::InvalidNumber(text.to_owned()))?;
        self.pos += end;
        Ok(number)
    }
}

fn flatten(mut operands: Vec<Node>, combine: fn(Vec<Node>) -> Node) -> Node {
    if operands.len() == 1 {
        if let Some(only) = operands.pop() {
            return only;
        }
    }
    combine(operands)
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
