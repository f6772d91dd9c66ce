//! The `postgres_changes` filter language, parsed and evaluated in memory. Pure.
//!
//! Grammar (Supabase's): `column=[not.]op.value`, segments joined by `,` are
//! ANDed; `in.(a,b,"c,d")` holds at most 100 values. Values are converted to
//! the column's type once, at join time, so evaluation per change is a few
//! comparisons and no database round trip. SQL semantics are kept: a
//! comparison with NULL is unknown and fails even under `not.`; `is` and
//! `isdistinct` are two-valued. A column missing from the row fails closed.
//! Text compares byte-wise (C collation); numeric compares as f64.
//!
//! `like`, `ilike`, `match` and `imatch` run on the fan-out path for every
//! subscriber, so one client's pattern must not cost others anything: each is
//! compiled once, at join, into a `regex` whose engines (lazy DFA, PikeVM) are
//! linear in the text, never backtracking, and patterns are capped at
//! `MAX_PATTERN_CHARS` with a compiled-size limit behind that.

mod pattern;
mod typed;

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::grammar::{split_top_level, unquote};

use pattern::pattern;
pub use pattern::MAX_PATTERN_CHARS;
use typed::{kind_of, text_of, typed_from_json, typed_from_text, Kind, Typed};

/// Most values an `in` filter may list, as in Supabase.
pub const MAX_IN_VALUES: usize = 100;

/// Most pattern conditions (`like`, `ilike`, `match`, `imatch`) one socket may
/// hold across its channels. Each costs a compile at join and a pass over the
/// text per change on the fan-out path, so their number is what bounds one
/// client's share of both.
pub const MAX_PATTERNS_PER_SOCKET: usize = 16;

/// The operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    Is,
    Match,
    Imatch,
    IsDistinct,
}

impl Op {
    const ALL: [Op; 13] =
        [Op::Eq, Op::Neq, Op::Lt, Op::Lte, Op::Gt, Op::Gte, Op::In, Op::Like, Op::Ilike, Op::Is, Op::Match, Op::Imatch, Op::IsDistinct];

    /// `like`, `ilike`, `match` or `imatch`: compiled into a matcher.
    pub fn is_pattern(self) -> bool {
        matches!(self, Op::Like | Op::Ilike | Op::Match | Op::Imatch)
    }

    /// The operator as the filter grammar spells it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }

    fn parse(text: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == text)
    }
}

/// A filter that cannot be used; `Display` is Supabase's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The string does not parse; carries the offending parts.
    #[error("Error parsing `filter` params: [{}]", quoted(.0))]
    Parse(Vec<String>),
    /// `in` without parentheses.
    #[error("`in` filter value must be wrapped by parentheses")]
    InNotParenthesized,
    /// More than `MAX_IN_VALUES`.
    #[error("too many values for `in` filter. Maximum 100")]
    TooManyInValues,
    /// No such column on the table.
    #[error("invalid column for filter {0}")]
    UnknownColumn(String),
    /// The value does not convert to the column's type.
    #[error("invalid input syntax for type {type_name}: \"{value}\"")]
    BadValue { type_name: String, value: String },
    /// `is` takes null, true, false or unknown (the last three on booleans).
    #[error("invalid value for `is` filter: \"{0}\"")]
    BadIsValue(String),
    /// `match`/`imatch` with a pattern that does not compile.
    #[error("invalid regular expression: {0}")]
    BadRegex(String),
    /// A pattern over `MAX_PATTERN_CHARS`; carries the operator.
    #[error("pattern too long for `{0}` filter. Maximum 256 characters")]
    PatternTooLong(&'static str),
    /// More than `MAX_PATTERNS_PER_SOCKET` pattern conditions on one socket.
    #[error("too many pattern filters on one connection. Maximum 16")]
    TooManyPatterns,
}

impl FilterError {
    /// The Postgres error (code, condition name) this would be on the real server;
    /// `None` for parse errors, which Supabase reports without one.
    pub fn sql_error(&self) -> Option<(&'static str, &'static str)> {
        match self {
            FilterError::Parse(_) | FilterError::InNotParenthesized => None,
            FilterError::TooManyInValues
            | FilterError::UnknownColumn(_)
            | FilterError::PatternTooLong(_)
            | FilterError::TooManyPatterns => Some(("P0001", "raise_exception")),
            FilterError::BadValue { .. } | FilterError::BadIsValue(_) => Some(("22P02", "invalid_text_representation")),
            FilterError::BadRegex(_) => Some(("2201B", "invalid_regular_expression")),
        }
    }
}

fn quoted(parts: &[String]) -> String {
    parts.iter().map(|p| Value::from(p.as_str()).to_string()).collect::<Vec<_>>().join(", ")
}

/// One parsed `column=[not.]op.value` segment, before typing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    pub negate: bool,
    /// The value, unquoted; for `in` the list members.
    pub values: Vec<String>,
}

/// How many pattern conditions `conditions` holds.
pub fn patterns(conditions: &[Condition]) -> usize {
    conditions.iter().filter(|c| c.op.is_pattern()).count()
}

/// Parses a filter string; empty (after trimming) means no conditions.
pub fn parse(filter: &str) -> Result<Vec<Condition>, FilterError> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(filter, ',').iter().map(|s| parse_segment(s)).collect()
}

fn parse_segment(segment: &str) -> Result<Condition, FilterError> {
    let parse_err = || FilterError::Parse(segment.splitn(2, '=').map(str::to_owned).collect());
    let (column, rest) = segment.split_once('=').ok_or_else(parse_err)?;
    let (negate, rest) = match rest.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (op, value) = rest.split_once('.').ok_or_else(parse_err)?;
    let op = Op::parse(op).ok_or_else(parse_err)?;
    if column.is_empty() {
        return Err(parse_err());
    }
    let values = if op == Op::In {
        let inner = value.strip_prefix('(').and_then(|v| v.strip_suffix(')')).ok_or(FilterError::InNotParenthesized)?;
        let items: Vec<String> = split_top_level(inner, ',').iter().map(|v| unquote(v)).collect();
        if items.len() > MAX_IN_VALUES {
            return Err(FilterError::TooManyInValues);
        }
        items
    } else {
        vec![unquote(value)]
    };
    Ok(Condition { column: column.to_owned(), op, negate, values })
}

/// What one typed condition tests.
#[derive(Debug, Clone)]
enum Test {
    Compare(Op, Typed),
    In(Vec<Typed>),
    /// `like`, `ilike`, `match`, `imatch`, all compiled to a linear-time matcher.
    Pattern(regex::Regex),
    IsNull,
    IsBool(bool),
    /// `isdistinct`; `None` compares with NULL.
    Distinct(Option<Typed>),
}

#[derive(Debug, Clone)]
struct TypedCondition {
    column: String,
    kind: Kind,
    negate: bool,
    test: Test,
}

/// A filter typed against one table's columns, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    conditions: Vec<TypedCondition>,
}

/// Types `conditions` against `columns` (name, pg `typname`).
pub fn compile(conditions: &[Condition], columns: &[(String, String)]) -> Result<Compiled, FilterError> {
    let conditions = conditions.iter().map(|c| compile_one(c, columns)).collect::<Result<_, _>>()?;
    Ok(Compiled { conditions })
}

fn compile_one(c: &Condition, columns: &[(String, String)]) -> Result<TypedCondition, FilterError> {
    let typname = columns.iter().find(|(n, _)| *n == c.column).map(|(_, t)| t.as_str());
    let typname = typname.ok_or_else(|| FilterError::UnknownColumn(c.column.clone()))?;
    let (kind, type_name) = kind_of(typname);
    let typed = |v: &str| typed_from_text(kind, v).ok_or_else(|| FilterError::BadValue { type_name: type_name.into(), value: v.into() });
    let first = c.values.first().map(String::as_str).unwrap_or("");
    let test = match c.op {
        Op::In => Test::In(c.values.iter().map(|v| typed(v)).collect::<Result<_, _>>()?),
        Op::Like | Op::Ilike | Op::Match | Op::Imatch => Test::Pattern(pattern(c.op, first)?),
        Op::Is => match (first.to_ascii_lowercase().as_str(), kind) {
            ("null", _) => Test::IsNull,
            ("unknown", Kind::Bool) => Test::IsNull,
            ("true", Kind::Bool) => Test::IsBool(true),
            ("false", Kind::Bool) => Test::IsBool(false),
            _ => return Err(FilterError::BadIsValue(first.into())),
        },
        Op::IsDistinct if first.eq_ignore_ascii_case("null") => Test::Distinct(None),
        Op::IsDistinct => Test::Distinct(Some(typed(first)?)),
        op => Test::Compare(op, typed(first)?),
    };
    Ok(TypedCondition { column: c.column.clone(), kind, negate: c.negate, test })
}

impl Compiled {
    /// True when every condition holds for `row`; an empty filter matches all.
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| c.holds(row))
    }
}

impl TypedCondition {
    fn holds(&self, row: &Map<String, Value>) -> bool {
        let Some(raw) = row.get(&self.column) else {
            return false;
        };
        let value = typed_from_json(self.kind, raw);
        let verdict: Option<bool> = match &self.test {
            Test::IsNull => Some(value.is_none()),
            Test::IsBool(b) => Some(value == Some(Typed::Bool(*b))),
            Test::Distinct(other) => Some(distinct(value.as_ref(), other.as_ref())),
            Test::Compare(op, v) => value.and_then(|x| x.compare(v)).map(|o| ordering_holds(*op, o)),
            Test::In(list) => value.map(|x| list.iter().any(|v| x.compare(v) == Some(Ordering::Equal))),
            Test::Pattern(re) => text_of(raw).map(|t| re.is_match(&t)),
        };
        verdict.map(|v| v != self.negate).unwrap_or(false)
    }
}

fn distinct(a: Option<&Typed>, b: Option<&Typed>) -> bool {
    match (a, b) {
        (None, None) => false,
        (Some(a), Some(b)) => a.compare(b) != Some(Ordering::Equal),
        _ => true,
    }
}

fn ordering_holds(op: Op, o: Ordering) -> bool {
    match op {
        Op::Eq => o == Ordering::Equal,
        Op::Neq => o != Ordering::Equal,
        Op::Lt => o == Ordering::Less,
        Op::Lte => o != Ordering::Greater,
        Op::Gt => o == Ordering::Greater,
        Op::Gte => o != Ordering::Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn columns() -> Vec<(String, String)> {
        [("id", "int8"), ("n", "int4"), ("title", "text"), ("done", "bool"), ("at", "timestamptz"), ("u", "uuid"), ("x", "float8")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn check(filter: &str, row: Value) -> bool {
        let compiled = compile(&parse(filter).unwrap(), &columns()).unwrap();
        compiled.matches(row.as_object().unwrap())
    }

    #[test]
    fn each_operator_compares_as_the_column_type() {
        let row = json!({"id": 10, "n": 5, "title": "Hello World", "done": true, "x": 2.5,
                         "at": "2026-01-02T03:04:05.5+00:00", "u": "0b6c8a0e-8f6e-4a5e-9d3c-1f2e3d4c5b6a"});
        let cases = [
            ("n=eq.5", true),
            ("n=eq.05", true),
            ("n=neq.5", false),
            ("n=lt.10", true),
            ("n=lte.5", true),
            ("n=gt.5", false),
            ("n=gte.5", true),
            ("n=in.(1,5,9)", true),
            ("n=in.(1,2)", false),
            ("title=like.Hello%", true),
            ("title=like.hello%", false),
            ("title=ilike.hello%", true),
            ("title=like.H_llo World", true),
            ("title=match.^H.*d$", true),
            ("title=imatch.^h", true),
            ("done=is.true", true),
            ("done=is.false", false),
            ("done=eq.t", true),
            ("x=gt.2", true),
            ("at=gt.2026-01-02 03:04:05+00", true),
            ("at=lt.2026-01-02T03:04:05.4Z", false),
            ("u=eq.0B6C8A0E-8F6E-4A5E-9D3C-1F2E3D4C5B6A", true),
            ("n=isdistinct.5", false),
            ("n=isdistinct.null", true),
            ("id=gt.9,n=lt.6", true),
            ("id=gt.9,n=lt.5", false),
            ("n=not.eq.5", false),
            ("n=not.in.(1,2)", true),
        ];
        for (filter, expected) in cases {
            assert_eq!(check(filter, row.clone()), expected, "{filter}");
        }
    }

    #[test]
    fn nulls_follow_sql_three_valued_logic() {
        let row = json!({"n": null, "done": null});
        assert!(!check("n=eq.1", row.clone()));
        assert!(!check("n=not.eq.1", row.clone()));
        assert!(!check("n=neq.1", row.clone()));
        assert!(check("n=is.null", row.clone()));
        assert!(!check("n=not.is.null", row.clone()));
        assert!(check("done=not.is.true", row.clone()));
        assert!(check("n=isdistinct.1", row.clone()));
        assert!(!check("n=not.isdistinct.1", row));
    }

    #[test]
    fn a_column_missing_from_the_row_fails_closed() {
        assert!(!check("n=eq.1", json!({"id": 1})));
        assert!(!check("n=not.eq.1", json!({"id": 1})));
    }

    #[test]
    fn quoted_values_may_hold_commas_and_parentheses() {
        let conds = parse(r#"title=eq."a,b",title=in.(x,"y,(z)",w)"#).unwrap();
        assert_eq!(conds[0].values, vec!["a,b"]);
        assert_eq!(conds[1].values, vec!["x", "y,(z)", "w"]);
        assert_eq!(parse(r#"title=eq."say \"hi\"""#).unwrap()[0].values, vec![r#"say "hi""#]);
    }

    #[test]
    fn empty_filters_match_everything() {
        assert!(parse("  ").unwrap().is_empty());
        assert!(Compiled::default().matches(json!({}).as_object().unwrap()));
    }

    #[test]
    fn bad_filters_get_supabase_texts() {
        let err = |f: &str| parse(f).and_then(|c| compile(&c, &columns()).map(|_| ())).unwrap_err().to_string();
        assert_eq!(err("n=foo.1"), r#"Error parsing `filter` params: ["n", "foo.1"]"#);
        assert_eq!(err("n"), r#"Error parsing `filter` params: ["n"]"#);
        assert_eq!(err("n=eq.1,,n=eq.2"), r#"Error parsing `filter` params: [""]"#);
        assert_eq!(err("n=in.1,2"), "`in` filter value must be wrapped by parentheses");
        assert_eq!(err("nope=eq.1"), "invalid column for filter nope");
        assert_eq!(err("n=eq.abc"), r#"invalid input syntax for type integer: "abc""#);
        assert_eq!(err("done=eq.maybe"), r#"invalid input syntax for type boolean: "maybe""#);
        assert_eq!(err("n=is.true"), r#"invalid value for `is` filter: "true""#);
        assert!(err("title=match.(").starts_with("invalid regular expression"));
        let many = format!("n=in.({})", (0..101).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        assert_eq!(err(&many), "too many values for `in` filter. Maximum 100");
        let hundred = format!("n=in.({})", (0..100).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        assert!(parse(&hundred).is_ok());
    }

    #[test]
    fn a_hostile_like_pattern_costs_linear_time() {
        let hostile = format!("{}%b", "%a".repeat(25));
        let compiled = compile(&parse(&format!("title=like.{hostile}")).unwrap(), &columns()).unwrap();
        let started = std::time::Instant::now();
        for len in [60, 1_000, 100_000] {
            assert!(!compiled.matches(json!({"title": "a".repeat(len)}).as_object().unwrap()));
        }
        // Backtracking took longer than 20 s for 60 characters; linear matching is microseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn patterns_longer_than_the_cap_are_refused_with_a_precise_error() {
        let long = "a".repeat(MAX_PATTERN_CHARS + 1);
        for op in ["like", "ilike", "match", "imatch"] {
            let err = compile(&parse(&format!("title={op}.{long}")).unwrap(), &columns()).unwrap_err();
            assert_eq!(err.to_string(), format!("pattern too long for `{op}` filter. Maximum 256 characters"));
            assert_eq!(err.sql_error(), Some(("P0001", "raise_exception")));
        }
        let at_cap = "a".repeat(MAX_PATTERN_CHARS);
        assert!(compile(&parse(&format!("title=like.{at_cap}")).unwrap(), &columns()).is_ok());
    }
}
