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

mod eval;

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

/// The names an expression about one event sees: `event`.
pub fn about(event: Value) -> Map<String, Value> {
    [("event".to_owned(), event)].into_iter().collect()
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
        eval::eval(&self.0, names)
    }

    /// Whether the expression is true (anything else, errors included, is false).
    pub fn holds(&self, names: &Map<String, Value>) -> bool {
        matches!(self.eval(names), Ok(Value::Bool(true)))
    }

    /// The value as a key runs are grouped by: a string as itself, any
    /// other value as its JSON, and an expression that cannot be evaluated
    /// as `null` (so those runs share one key).
    pub fn key(&self, names: &Map<String, Value>) -> String {
        match self.eval(names) {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(_) => "null".to_owned(),
        }
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

#[cfg(test)]
mod tests;
