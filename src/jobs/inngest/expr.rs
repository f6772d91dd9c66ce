//! The CEL subset Inngest functions use in trigger `if`s and flow-control
//! keys (`event.data.userId`, `event.data.function_id == 'app-fn'`): parsed
//! once when a function is loaded, evaluated against JSON values. Pure.
//!
//! Supported: member and index access on the bound names (`event`, `async`),
//! string literals in both quote styles, numbers, `true`/`false`/`null`,
//! lists, `== != < <= > >=`, `&& || !`, `+ - * / %` (`+` joins strings and
//! lists), `in`, `size(x)` / `x.size()`, and `startsWith`, `endsWith`,
//! `contains`. A missing field reads as `null`, so a comparison with it is
//! false instead of an error. Expressions are capped in length and nesting,
//! so parsing and evaluating any text costs bounded time and stack.

use serde_json::{Map, Value};

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting accepted (parentheses, operators, calls).
const MAX_DEPTH: usize = 64;

/// Why an expression was refused or could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("expression is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("expression nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("expression syntax error at byte {0}: {1}")]
    Syntax(usize, String),
    #[error("expression cannot evaluate: {0}")]
    Eval(String),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr(Node);

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    Name(String),
    List(Vec<Node>),
    Member(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Call(Option<Box<Node>>, String, Vec<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Expr {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        if text.len() > MAX_LEN {
            return Err(ExprError::TooLong);
        }
        let mut p = Parser { tokens: lex(text)?, at: 0, depth: 0 };
        let node = p.ternary()?;
        match p.peek() {
            None => Ok(Expr(node)),
            Some((pos, t)) => Err(ExprError::Syntax(*pos, format!("unexpected {t:?}"))),
        }
    }

    /// The value of the expression with `names` bound (e.g. `event`).
    pub fn eval(&self, names: &Map<String, Value>) -> Result<Value, ExprError> {
        eval(&self.0, names)
    }

    /// Whether the expression is true (anything else, errors included, is false).
    pub fn holds(&self, names: &Map<String, Value>) -> bool {
        matches!(self.eval(names), Ok(Value::Bool(true)))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

const SYMBOLS: [&str; 22] =
    ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]", ".", ",", "?", ":"];

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' {
            let (s, end) = string(text, i)?;
            out.push((i, Tok::Str(s)));
            i = end;
        } else if c.is_ascii_digit() {
            let end = i + bytes[i..].iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
            let n = text[i..end].parse().map_err(|_| ExprError::Syntax(i, "bad number".into()))?;
            out.push((i, Tok::Num(n)));
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let end = i + bytes[i..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            out.push((i, Tok::Ident(text[i..end].to_owned())));
            i = end;
        } else if let Some(sym) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            out.push((i, Tok::Sym(sym)));
            i += sym.len();
        } else {
            return Err(ExprError::Syntax(i, format!("unexpected character {:?}", text[i..].chars().next().unwrap_or(' '))));
        }
    }
    Ok(out)
}

/// The string literal opening at `start`, and the byte after it.
fn string(text: &str, start: usize) -> Result<(String, usize), ExprError> {
    let quote = text.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, start + 1 + i + 1)),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(e @ ('\\' | '"' | '\'')) => out.push(e),
                _ => return Err(ExprError::Syntax(start + 1 + i, "unsupported escape".into())),
            },
            c => out.push(c),
        }
    }
    Err(ExprError::Syntax(start, "unterminated string".into()))
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(usize, Tok)> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, sym: &str) -> bool {
        let hit = matches!(self.peek(), Some((_, Tok::Sym(s))) if *s == sym);
        self.at += usize::from(hit);
        hit
    }

    fn expect(&mut self, sym: &str) -> Result<(), ExprError> {
        if self.eat(sym) {
            return Ok(());
        }
        Err(ExprError::Syntax(self.peek().map_or(usize::MAX, |t| t.0), format!("expected {sym}")))
    }

    fn nest(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::TooDeep);
        }
        Ok(())
    }

    fn ternary(&mut self) -> Result<Node, ExprError> {
        self.nest()?;
        let cond = self.binary(0)?;
        let node = if self.eat("?") {
            let yes = self.ternary()?;
            self.expect(":")?;
            Node::Cond(Box::new(cond), Box::new(yes), Box::new(self.ternary()?))
        } else {
            cond
        };
        self.depth -= 1;
        Ok(node)
    }

    /// Binary operators by precedence level (0 = `||`).
    fn binary(&mut self, level: usize) -> Result<Node, ExprError> {
        const LEVELS: [&[(&str, Op)]; 5] = [
            &[("||", Op::Or)],
            &[("&&", Op::And)],
            &[("==", Op::Eq), ("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)],
            &[("+", Op::Add), ("-", Op::Sub)],
            &[("*", Op::Mul), ("/", Op::Div), ("%", Op::Rem)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        // A chain nests to the left: each link is one level deeper to evaluate.
        let before = self.depth;
        loop {
            let op = if level == 2 && matches!(self.peek(), Some((_, Tok::Ident(w))) if w == "in") {
                self.at += 1;
                Op::In
            } else if let Some((_, op)) = LEVELS[level].iter().find(|(s, _)| self.eat(s)) {
                *op
            } else {
                self.depth = before;
                return Ok(left);
            };
            self.nest()?;
            left = Node::Bin(op, Box::new(left), Box::new(self.binary(level + 1)?));
        }
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        self.nest()?;
        let node = if self.eat("!") {
            Node::Not(Box::new(self.unary()?))
        } else if self.eat("-") {
            Node::Neg(Box::new(self.unary()?))
        } else {
            self.postfix()?
        };
        self.depth -= 1;
        Ok(node)
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        let before = self.depth;
        loop {
            if self.eat(".") {
                let name = self.ident()?;
                node = if self.eat("(") {
                    Node::Call(Some(Box::new(node)), name, self.args("(")?)
                } else {
                    Node::Member(Box::new(node), name)
                };
            } else if self.eat("[") {
                let index = self.ternary()?;
                self.expect("]")?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else {
                self.depth = before;
                return Ok(node);
            }
            self.nest()?;
        }
    }

    fn ident(&mut self) -> Result<String, ExprError> {
        match self.tokens.get(self.at).cloned() {
            Some((_, Tok::Ident(name))) => {
                self.at += 1;
                Ok(name)
            }
            other => Err(ExprError::Syntax(other.map_or(usize::MAX, |t| t.0), "expected a name".into())),
        }
    }

    /// Comma-separated expressions up to the bracket closing `open`.
    fn args(&mut self, open: &str) -> Result<Vec<Node>, ExprError> {
        let close = if open == "(" { ")" } else { "]" };
        let mut items = Vec::new();
        if self.eat(close) {
            return Ok(items);
        }
        loop {
            items.push(self.ternary()?);
            if self.eat(close) {
                return Ok(items);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let Some((pos, tok)) = self.tokens.get(self.at).cloned() else {
            return Err(ExprError::Syntax(usize::MAX, "unexpected end".into()));
        };
        self.at += 1;
        Ok(match tok {
            Tok::Num(n) => Node::Lit(number(n)),
            Tok::Str(s) => Node::Lit(Value::String(s)),
            Tok::Ident(w) => match w.as_str() {
                "true" => Node::Lit(Value::Bool(true)),
                "false" => Node::Lit(Value::Bool(false)),
                "null" => Node::Lit(Value::Null),
                _ if self.eat("(") => Node::Call(None, w, self.args("(")?),
                _ => Node::Name(w),
            },
            Tok::Sym("(") => {
                let inner = self.ternary()?;
                self.expect(")")?;
                inner
            }
            Tok::Sym("[") => Node::List(self.args("[")?),
            other => return Err(ExprError::Syntax(pos, format!("unexpected {other:?}"))),
        })
    }
}

fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn eval(node: &Node, names: &Map<String, Value>) -> Result<Value, ExprError> {
    Ok(match node {
        Node::Lit(v) => v.clone(),
        Node::Name(n) => names.get(n).cloned().ok_or_else(|| ExprError::Eval(format!("unknown name {n}")))?,
        Node::List(items) => Value::Array(items.iter().map(|i| eval(i, names)).collect::<Result<_, _>>()?),
        Node::Member(of, field) => eval(of, names)?.get(field).cloned().unwrap_or(Value::Null),
        Node::Index(of, index) => {
            let (of, index) = (eval(of, names)?, eval(index, names)?);
            match (&of, &index) {
                (Value::Array(a), Value::Number(n)) => n.as_f64().and_then(|i| a.get(i as usize)).cloned().unwrap_or(Value::Null),
                (Value::Object(m), Value::String(k)) => m.get(k).cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            }
        }
        Node::Call(on, name, args) => call(on.as_deref(), name, args, names)?,
        Node::Not(inner) => Value::Bool(!truth(&eval(inner, names)?)?),
        Node::Neg(inner) => number(-num(&eval(inner, names)?)?),
        Node::Cond(c, yes, no) => eval(if truth(&eval(c, names)?)? { yes } else { no }, names)?,
        Node::Bin(Op::And, l, r) => Value::Bool(truth(&eval(l, names)?)? && truth(&eval(r, names)?)?),
        Node::Bin(Op::Or, l, r) => Value::Bool(truth(&eval(l, names)?)? || truth(&eval(r, names)?)?),
        Node::Bin(op, l, r) => binary(*op, eval(l, names)?, eval(r, names)?)?,
    })
}

fn truth(v: &Value) -> Result<bool, ExprError> {
    v.as_bool().ok_or_else(|| ExprError::Eval(format!("{v} is not a boolean")))
}

fn num(v: &Value) -> Result<f64, ExprError> {
    v.as_f64().ok_or_else(|| ExprError::Eval(format!("{v} is not a number")))
}

fn text(v: &Value) -> Result<&str, ExprError> {
    v.as_str().ok_or_else(|| ExprError::Eval(format!("{v} is not a string")))
}

/// JSON equality, with numbers compared by value (1 == 1.0).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn binary(op: Op, l: Value, r: Value) -> Result<Value, ExprError> {
    use std::cmp::Ordering;
    let order = |l: &Value, r: &Value| -> Result<Ordering, ExprError> {
        match (l, r) {
            (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
            _ => num(l)?.partial_cmp(&num(r)?).ok_or_else(|| ExprError::Eval("not comparable".into())),
        }
    };
    Ok(match op {
        Op::Eq => Value::Bool(equal(&l, &r)),
        Op::Ne => Value::Bool(!equal(&l, &r)),
        Op::Lt | Op::Le | Op::Gt | Op::Ge if l.is_null() || r.is_null() => Value::Bool(false),
        Op::Lt => Value::Bool(order(&l, &r)?.is_lt()),
        Op::Le => Value::Bool(order(&l, &r)?.is_le()),
        Op::Gt => Value::Bool(order(&l, &r)?.is_gt()),
        Op::Ge => Value::Bool(order(&l, &r)?.is_ge()),
        Op::In => Value::Bool(match &r {
            Value::Array(items) => items.iter().any(|i| equal(i, &l)),
            Value::Object(m) => m.contains_key(text(&l)?),
            _ => return Err(ExprError::Eval("`in` needs a list or a map".into())),
        }),
        Op::Add => match (l, r) {
            (Value::String(a), Value::String(b)) => Value::String(a + &b),
            (Value::Array(mut a), Value::Array(b)) => {
                a.extend(b);
                Value::Array(a)
            }
            (a, b) => number(num(&a)? + num(&b)?),
        },
        Op::Sub => number(num(&l)? - num(&r)?),
        Op::Mul => number(num(&l)? * num(&r)?),
        Op::Div | Op::Rem if num(&r)? == 0.0 => return Err(ExprError::Eval("division by zero".into())),
        Op::Div => number(num(&l)? / num(&r)?),
        Op::Rem => number(num(&l)? % num(&r)?),
        Op::And | Op::Or => unreachable!("short-circuit operators are evaluated in eval"),
    })
}

fn call(on: Option<&Node>, name: &str, args: &[Node], names: &Map<String, Value>) -> Result<Value, ExprError> {
    let mut values = Vec::with_capacity(args.len() + 1);
    if let Some(on) = on {
        values.push(eval(on, names)?);
    }
    for a in args {
        values.push(eval(a, names)?);
    }
    match (name, values.as_slice()) {
        ("size", [v]) => Ok(Value::from(match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.len(),
            Value::Object(m) => m.len(),
            other => return Err(ExprError::Eval(format!("size() of {other}"))),
        })),
        ("startsWith", [s, p]) => Ok(Value::Bool(text(s)?.starts_with(text(p)?))),
        ("endsWith", [s, p]) => Ok(Value::Bool(text(s)?.ends_with(text(p)?))),
        ("contains", [s, p]) => Ok(Value::Bool(text(s)?.contains(text(p)?))),
        ("string", [v]) => Ok(Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_owned))),
        _ => Err(ExprError::Eval(format!("unknown function {name} with {} arguments", values.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(expr: &str, event: Value) -> Result<Value, ExprError> {
        let names = json!({"event": event, "async": {"data": {"id": 7}}});
        Expr::parse(expr)?.eval(names.as_object().unwrap())
    }

    #[test]
    fn the_failure_handlers_trigger_matches_its_function_by_single_quoted_id() {
        let e = Expr::parse("event.data.function_id == 'app-summarize'").unwrap();
        let names = |id: &str| json!({"event": {"data": {"function_id": id}}}).as_object().unwrap().clone();
        assert!(e.holds(&names("app-summarize")));
        assert!(!e.holds(&names("app-other")));
    }

    #[test]
    fn keys_and_conditions_read_the_event_as_the_sdk_docs_write_them() {
        let ev = json!({"name": "video/x", "data": {"userId": "u1", "n": 3, "tags": ["a", "b"], "plan": "pro"}});
        assert_eq!(run("event.data.userId", ev.clone()), Ok(json!("u1")));
        assert_eq!(run("event.data.n > 2 && event.data.plan == \"pro\"", ev.clone()), Ok(json!(true)));
        assert_eq!(run("'a' in event.data.tags || false", ev.clone()), Ok(json!(true)));
        assert_eq!(run("size(event.data.tags) == 2 && event.data.tags.size() == 2", ev.clone()), Ok(json!(true)));
        assert_eq!(run("event.name.startsWith('video/') && !event.name.endsWith('y')", ev.clone()), Ok(json!(true)));
        assert_eq!(run("event.data.userId + '-' + event.data.plan", ev.clone()), Ok(json!("u1-pro")));
        assert_eq!(run("event.data['plan'] == 'pro' && event.data.tags[1] == 'b'", ev.clone()), Ok(json!(true)));
        assert_eq!(run("event.data.n * 2 + 1 == 7.0", ev.clone()), Ok(json!(true)));
        assert_eq!(run("event.data.n >= 3 ? 'big' : 'small'", ev.clone()), Ok(json!("big")));
        assert_eq!(run("async.data.id == 7 && event.data.missing == null", ev.clone()), Ok(json!(true)));
        assert_eq!(run("event.data.missing > 1", ev), Ok(json!(false)));
    }

    #[test]
    fn bad_expressions_are_refused_with_where_and_why() {
        assert!(matches!(Expr::parse("event.data.x =="), Err(ExprError::Syntax(..))));
        assert!(matches!(Expr::parse("event.data.x = 'a'"), Err(ExprError::Syntax(..))));
        assert!(matches!(Expr::parse("'open"), Err(ExprError::Syntax(0, _))));
        assert_eq!(Expr::parse(&"(".repeat(200)), Err(ExprError::TooDeep));
        assert_eq!(Expr::parse(&"!".repeat(200)), Err(ExprError::TooDeep));
        assert_eq!(Expr::parse("a.".repeat(100).trim_end_matches('.')).map(|_| ()), Err(ExprError::TooDeep));
        assert_eq!(Expr::parse(&"a".repeat(MAX_LEN + 1)), Err(ExprError::TooLong));
        assert!(run("event.data + 1", json!({"data": {}})).is_err());
        assert!(!Expr::parse("event.data.n").unwrap().holds(json!({"event": {"data": {"n": 1}}}).as_object().unwrap()));
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_evaluates_without_panicking(text in "[ -~]{0,80}") {
            if let Ok(e) = Expr::parse(&text) {
                let _ = e.eval(json!({"event": {"data": {"a": [1, "x", {"b": null}]}}}).as_object().unwrap());
            }
        }

        #[test]
        fn any_mix_of_the_grammars_tokens_parses_or_is_refused(parts in proptest::collection::vec(
            proptest::sample::select(vec!["event", ".", "data", "[", "]", "(", ")", "'x'", "1", "==", "&&", "!", "in", "size", ",", "?", ":", "+"]), 0..60)) {
            let text = parts.join(" ");
            if let Ok(e) = Expr::parse(&text) {
                let _ = e.eval(json!({"event": {"data": [1]}}).as_object().unwrap());
            }
        }
    }
}
