//! The PostgREST query grammar supabase-js sends, parsed and turned into SQL. Pure.
//!
//! `select=a,b` (or `*`), `<col>=[not.]<op>.<value>` with eq, neq, gt, gte,
//! lt, lte, like, ilike, is, in; `or=(a.eq.1,b.gt.2)`; `order=a.asc,b.desc.nullslast`;
//! `limit`, `offset`. Every identifier is checked against the table's columns
//! and quoted; every value is a bound parameter cast to the column's type,
//! so no request text ever becomes SQL text. Errors carry PostgREST's codes.

use crate::changes::change::TableMeta;
use crate::grammar::{split_top_level, unquote};

/// A request PostgREST would refuse; `status` and the JSON fields of its error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RestError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

impl RestError {
    /// A 400 with PostgREST's parse-error code.
    pub fn parse(message: impl Into<String>, details: impl Into<String>) -> Self {
        RestError { status: 400, code: "PGRST100", message: message.into(), details: Some(details.into()), hint: None }
    }
}

fn no_column(meta: &TableMeta, column: &str) -> RestError {
    RestError { status: 400, code: "42703", message: format!("column {}.{} does not exist", meta.table, column), details: None, hint: None }
}

/// The operators PostgREST reads that we serve; the compiler checks every arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Ilike,
    Is,
    In,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "in" => Op::In,
            _ => return None,
        })
    }
}

/// A condition on one column.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    column: String,
    negate: bool,
    op: Op,
    /// Unquoted, except `in`'s list, which keeps its parentheses and quotes until split.
    value: String,
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// Columns to return (empty: all).
    pub select: Vec<String>,
    filters: Vec<Filter>,
    /// Groups of conditions ORed together, each group ANDed with the rest.
    any_of: Vec<Vec<Filter>>,
    /// (column, descending, nulls first)
    order: Vec<(String, bool, Option<bool>)>,
    pub limit: Option<i64>,
    pub offset: i64,
}

/// A bound parameter: text, or a text array (for `in`), cast in SQL to the column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Array(Vec<String>),
}

/// The parameters of a statement, `$1` first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sql {
    pub params: Vec<Param>,
}

impl Sql {
    /// Adds a parameter; its `$n` number.
    fn push(&mut self, p: Param) -> usize {
        self.params.push(p);
        self.params.len()
    }
}

/// Parses the query string pairs (already percent-decoded) against `meta`.
pub fn parse(pairs: &[(String, String)], meta: &TableMeta) -> Result<Query, RestError> {
    let mut q = Query::default();
    for (key, value) in pairs {
        match key.as_str() {
            "select" => q.select = select(value, meta)?,
            "order" => q.order = order(value, meta)?,
            "limit" => q.limit = Some(number(key, value)?),
            "offset" => q.offset = number(key, value)?,
            "or" => q.any_of.push(or_group(value, meta)?),
            "and" => return Err(RestError::parse("`and=` groups are not supported", value.clone())),
            column => q.filters.push(filter(column, value, meta)?),
        }
    }
    Ok(q)
}

fn number(key: &str, value: &str) -> Result<i64, RestError> {
    value.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| RestError::parse(format!("`{key}` must be a non-negative integer"), value))
}

fn check_column(meta: &TableMeta, column: &str) -> Result<String, RestError> {
    meta.columns.iter().find(|c| c.name == column).map(|c| c.name.clone()).ok_or_else(|| no_column(meta, column))
}

fn select(value: &str, meta: &TableMeta) -> Result<Vec<String>, RestError> {
    let value = value.trim();
    if value.is_empty() || value == "*" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|c| {
            let c = c.trim();
            if c.contains(|ch: char| "():!".contains(ch)) {
                return Err(RestError::parse("embedding, aliases and casts in `select` are not supported", c));
            }
            check_column(meta, c)
        })
        .collect()
}

fn order(value: &str, meta: &TableMeta) -> Result<Vec<(String, bool, Option<bool>)>, RestError> {
    value
        .split(',')
        .map(|term| {
            let mut parts = term.split('.');
            let column = check_column(meta, parts.next().unwrap_or_default())?;
            let (mut desc, mut nulls_first) = (false, None);
            for p in parts {
                match p {
                    "asc" => desc = false,
                    "desc" => desc = true,
                    "nullsfirst" => nulls_first = Some(true),
                    "nullslast" => nulls_first = Some(false),
                    _ => return Err(RestError::parse(format!("failed to parse order ({term})"), term)),
                }
            }
            Ok((column, desc, nulls_first))
        })
        .collect()
}

/// `value` is `[not.]op.operand` (the column is the key).
fn filter(column: &str, value: &str, meta: &TableMeta) -> Result<Filter, RestError> {
    let column = check_column(meta, column)?;
    let (negate, rest) = value.strip_prefix("not.").map_or((false, value), |r| (true, r));
    let (op, operand) = rest.split_once('.').ok_or_else(|| RestError::parse(format!("failed to parse filter ({value})"), value))?;
    let Some(op) = Op::parse(op) else {
        return Err(RestError::parse(format!("failed to parse filter ({value})"), format!("unknown operator {op:?}")));
    };
    if op == Op::Is && !["null", "true", "false", "unknown"].contains(&operand) {
        return Err(RestError::parse(format!("failed to parse filter ({value})"), "`is` takes null, true, false or unknown"));
    }
    if op == Op::In && !(operand.len() >= 2 && operand.starts_with('(') && operand.ends_with(')')) {
        return Err(RestError::parse(format!("failed to parse filter ({value})"), "`in` takes a list in parentheses"));
    }
    let value = if op == Op::In { operand.to_owned() } else { unquote(operand) };
    Ok(Filter { column, negate, op, value })
}

/// `or=(a.eq.1,b.not.gt.2)`.
fn or_group(value: &str, meta: &TableMeta) -> Result<Vec<Filter>, RestError> {
    let inner =
        value.strip_prefix('(').and_then(|v| v.strip_suffix(')')).ok_or_else(|| RestError::parse("failed to parse logic tree", value))?;
    split_top_level(inner, ',')
        .iter()
        .map(|term| {
            if term.starts_with("and(") || term.starts_with("or(") || term.starts_with("not.and(") || term.starts_with("not.or(") {
                return Err(RestError::parse("nested logic trees are not supported", term.clone()));
            }
            let (column, rest) = term.split_once('.').ok_or_else(|| RestError::parse("failed to parse logic tree", term.clone()))?;
            filter(column, rest, meta)
        })
        .collect()
}

/// Splits on commas outside parentheses and double quotes; unquotes items.
fn split_list(text: &str) -> Vec<String> {
    split_top_level(text, ',').iter().map(|item| unquote(item)).collect()
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Query {
    /// `where` clause (with a leading ` where` when non-empty) for `meta`, restricted to
    /// `owners` (the owner column must hold one of them) when given; fills `sql.params`.
    pub fn where_clause(&self, meta: &TableMeta, owners: Option<(&str, &[String])>, sql: &mut Sql) -> String {
        let mut terms: Vec<String> = self.filters.iter().map(|f| condition(f, meta, sql)).collect();
        for group in &self.any_of {
            let ors: Vec<String> = group.iter().map(|f| condition(f, meta, sql)).collect();
            terms.push(format!("({})", ors.join(" or ")));
        }
        if let Some((column, owners)) = owners {
            let n = sql.push(Param::Array(owners.to_vec()));
            terms.push(format!("{}::text = any(${n}::text[])", quote(column)));
        }
        if terms.is_empty() {
            String::new()
        } else {
            format!(" where {}", terms.join(" and "))
        }
    }

    /// The `order by` / `limit` / `offset` tail.
    pub fn tail(&self) -> String {
        let mut out = String::new();
        if !self.order.is_empty() {
            let terms: Vec<String> = self
                .order
                .iter()
                .map(|(c, desc, nulls)| {
                    let dir = if *desc { "desc" } else { "asc" };
                    let nulls = match nulls {
                        Some(true) => " nulls first",
                        Some(false) => " nulls last",
                        None => "",
                    };
                    format!("{} {dir}{nulls}", quote(c))
                })
                .collect();
            out += &format!(" order by {}", terms.join(", "));
        }
        if let Some(limit) = self.limit {
            out += &format!(" limit {limit}");
        }
        if self.offset > 0 {
            out += &format!(" offset {}", self.offset);
        }
        out
    }

    /// The column list for `select`.
    pub fn columns(&self) -> String {
        if self.select.is_empty() {
            "*".into()
        } else {
            self.select.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
        }
    }
}

fn column_type(meta: &TableMeta, column: &str) -> String {
    let typ = meta.columns.iter().find(|c| c.name == column).map(|c| c.typ.as_str()).unwrap_or("text");
    quote(typ)
}

/// One condition's SQL; values become parameters cast to the column's type.
fn condition(f: &Filter, meta: &TableMeta, sql: &mut Sql) -> String {
    let col = quote(&f.column);
    let compare = |sym: &str, sql: &mut Sql| {
        let n = sql.push(Param::Text(f.value.clone()));
        format!("{col} {sym} cast(${n} as {})", column_type(meta, &f.column))
    };
    let expr = match f.op {
        // `is` takes only the four keywords parse() allowed.
        Op::Is => format!("{col} is {}", f.value),
        Op::In => {
            let n = sql.push(Param::Array(split_list(&f.value[1..f.value.len() - 1])));
            format!("{col} = any(cast(${n} as {}[]))", column_type(meta, &f.column))
        }
        Op::Like | Op::Ilike => {
            let n = sql.push(Param::Text(f.value.replace('*', "%")));
            format!("{col}::text {} ${n}", if f.op == Op::Like { "like" } else { "ilike" })
        }
        Op::Eq => compare("=", sql),
        Op::Neq => compare("<>", sql),
        Op::Gt => compare(">", sql),
        Op::Gte => compare(">=", sql),
        Op::Lt => compare("<", sql),
        Op::Lte => compare("<=", sql),
    };
    if f.negate {
        format!("not ({expr})")
    } else {
        expr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TableMeta {
        TableMeta::owned_for_tests("todos", &[("id", "int8"), ("user_id", "text"), ("title", "text"), ("n", "int4")])
    }

    fn q(pairs: &[(&str, &str)]) -> Result<Query, RestError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        parse(&pairs, &meta())
    }

    #[test]
    fn filters_become_typed_parameters_never_sql_text() {
        let query = q(&[("n", "gt.5"), ("title", "not.like.a*"), ("id", "in.(1,2,\"3\")"), ("or", "(n.eq.1,title.is.null)")]).unwrap();
        let mut sql = Sql::default();
        let clause = query.where_clause(&meta(), Some(("user_id", &["u1".to_owned()])), &mut sql);
        assert_eq!(
            clause,
            " where \"n\" > cast($1 as \"int4\") and not (\"title\"::text like $2) and \"id\" = any(cast($3 as \"int8\"[])) \
             and (\"n\" = cast($4 as \"int4\") or \"title\" is null) and \"user_id\"::text = any($5::text[])"
        );
        let t = |s: &str| Param::Text(s.into());
        assert_eq!(
            sql.params,
            vec![t("5"), t("a%"), Param::Array(vec!["1".into(), "2".into(), "3".into()]), t("1"), Param::Array(vec!["u1".into()])]
        );
    }

    #[test]
    fn quoted_values_hold_commas_and_parentheses_at_the_top_and_inside_or() {
        let query = q(&[("title", "eq.\"a,(b)\""), ("or", "(title.eq.\"x,y\",n.gt.2)")]).unwrap();
        let mut sql = Sql::default();
        query.where_clause(&meta(), None, &mut sql);
        let t = |s: &str| Param::Text(s.into());
        assert_eq!(sql.params, vec![t("a,(b)"), t("x,y"), t("2")]);
    }

    #[test]
    fn select_order_limit_and_offset_are_checked_and_quoted() {
        let query = q(&[("select", "id,title"), ("order", "n.desc.nullslast,id"), ("limit", "10"), ("offset", "20")]).unwrap();
        assert_eq!(query.columns(), "\"id\", \"title\"");
        assert_eq!(query.tail(), " order by \"n\" desc nulls last, \"id\" asc limit 10 offset 20");
    }

    #[test]
    fn hostile_or_unknown_input_is_refused_with_postgrest_codes() {
        let err = |pairs: &[(&str, &str)]| q(pairs).unwrap_err();
        assert_eq!(err(&[("id;drop table x", "eq.1")]).code, "42703");
        assert_eq!(err(&[("select", "id,\"x\"")]).code, "42703");
        assert_eq!(err(&[("select", "id,author:users(name)")]).code, "PGRST100");
        assert_eq!(err(&[("order", "id.sideways")]).code, "PGRST100");
        assert_eq!(err(&[("n", "foo.1")]).code, "PGRST100");
        assert_eq!(err(&[("n", "is.maybe")]).code, "PGRST100");
        assert_eq!(err(&[("n", "in.1,2")]).code, "PGRST100");
        assert_eq!(err(&[("limit", "-1")]).code, "PGRST100");
        assert_eq!(err(&[("or", "(and(n.eq.1))")]).code, "PGRST100");
        assert_eq!(err(&[("nope", "eq.1")]).message, "column todos.nope does not exist");
    }
}
