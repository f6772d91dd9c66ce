//! Evaluating a parsed expression against JSON values: member access reads
//! a missing field as `null`, `&&` and `||` short-circuit, and numbers
//! compare by value.

use serde_json::{Map, Value};

use super::{number, ExprError, Node, Op};

pub(super) fn eval(node: &Node, names: &Map<String, Value>) -> Result<Value, ExprError> {
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
