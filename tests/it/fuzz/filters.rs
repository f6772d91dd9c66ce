//! The `postgres_changes` filter parser and compiler, and evaluation of what
//! compiles. Every refusal is one of Supabase's texts (or the pattern cap's).

use chrono::DateTime;
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use serde_json::{json, Map, Value};

use super::{config, json_value, splice};
use rowcast::realtime::filter::{compile, parse, Compiled, FilterError};

const COLUMNS: [(&str, &str); 7] =
    [("id", "int8"), ("n", "int4"), ("title", "text"), ("done", "bool"), ("at", "timestamptz"), ("u", "uuid"), ("x", "float8")];

fn columns() -> Vec<(String, String)> {
    COLUMNS.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The beginnings of every error `parse` and `compile` may give: Supabase's
/// texts, and the pattern cap's (``pattern too long for `like` filter...``).
const FILTER_ERRORS: [&str; 8] = [
    "Error parsing `filter` params",
    "`in` filter value must be wrapped by parentheses",
    "too many values for `in` filter",
    "invalid column for filter",
    "invalid input syntax for type",
    "invalid value for `is` filter",
    "invalid regular expression",
    "pattern too long for `",
];

fn compiled(text: &str) -> Result<Compiled, FilterError> {
    parse(text).and_then(|c| compile(&c, &columns()))
}

/// Compiles `text`; a refusal must use Supabase's wording, and what compiles is evaluated on `rows`.
fn check(text: &str, rows: &[Map<String, Value>]) -> Result<(), TestCaseError> {
    match compiled(text) {
        Ok(filter) => rows.iter().for_each(|r| {
            filter.matches(r);
        }),
        Err(e) => {
            let message = e.to_string();
            prop_assert!(FILTER_ERRORS.iter().any(|p| message.starts_with(p)), "not Supabase's wording: {message}");
        }
    }
    Ok(())
}

// ---- values as each column's type reads them ----

/// `s` in double quotes, with quotes and backslashes escaped: it may then hold `,` `(` `)`.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Seconds within years 1..=9999, which RFC 3339 can spell.
fn timestamp() -> impl Strategy<Value = String> {
    (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000, any::<bool>()).prop_map(|(secs, nanos, t)| {
        let at = DateTime::from_timestamp(secs, nanos).expect("in range");
        if t {
            at.to_rfc3339()
        } else {
            at.format("%Y-%m-%d %H:%M:%S%.f").to_string()
        }
    })
}

/// Filter text that converts to `column`'s type.
fn typed_text(column: &str) -> BoxedStrategy<String> {
    match column {
        "id" => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        "n" => any::<i32>().prop_map(|n| n.to_string()).boxed(),
        "done" => prop::sample::select(vec!["t", "f", "true", "FALSE", "yes", "no", "on", "off", "1", "0"]).prop_map(str::to_owned).boxed(),
        "at" => timestamp().boxed(),
        "u" => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()).boxed(),
        "x" => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()).boxed(),
        _ => prop_oneof!["[a-zA-Z0-9 ]{0,12}", ".{0,12}".prop_map(|s| quoted(&s))].boxed(),
    }
}

/// A row value of `column`'s type as capture writes it (JSON), or null.
fn typed_json(column: &str) -> BoxedStrategy<Value> {
    let value = match column {
        "id" => any::<i64>().prop_map(|n| json!(n)).boxed(),
        "n" => any::<i32>().prop_map(|n| json!(n)).boxed(),
        "done" => any::<bool>().prop_map(Value::Bool).boxed(),
        "x" => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)).boxed(),
        "at" | "u" => typed_text(column).prop_map(Value::String).boxed(),
        _ => ".{0,16}".prop_map(Value::String).boxed(),
    };
    prop_oneof![1 => Just(Value::Null), 8 => value].boxed()
}

/// A row with a typed value (or null) in every column.
fn typed_row() -> impl Strategy<Value = Map<String, Value>> {
    COLUMNS
        .iter()
        .map(|(c, _)| typed_json(c).prop_map(move |v| (c.to_string(), v)))
        .collect::<Vec<_>>()
        .prop_map(|kv| kv.into_iter().collect())
}

/// A row of arbitrary JSON, some columns missing.
fn any_row() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(prop::option::of(json_value()), COLUMNS.len())
        .prop_map(|values| COLUMNS.iter().zip(values).filter_map(|((c, _), v)| Some((c.to_string(), v?))).collect())
}

/// A few rows of either kind.
fn rows() -> impl Strategy<Value = Vec<Map<String, Value>>> {
    prop::collection::vec(prop_oneof![typed_row(), any_row()], 0..4)
}

// ---- filters ----

/// A single condition that must compile, as (column, `op.value`): an
/// operator the column's type takes, with a value of that type.
fn valid_condition() -> impl Strategy<Value = (String, String)> {
    prop::sample::select(COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>()).prop_flat_map(|column| {
        let compare = (prop::sample::select(vec!["eq", "neq", "lt", "lte", "gt", "gte", "isdistinct"]), typed_text(column))
            .prop_map(|(op, v)| format!("{op}.{v}"));
        let list = prop::collection::vec(typed_text(column), 1..=100).prop_map(|vs| format!("in.({})", vs.join(",")));
        let nulls = prop::sample::select(vec!["is.null", "isdistinct.null"]).prop_map(str::to_owned);
        let special = match column {
            "done" => prop::sample::select(vec!["is.true", "is.false", "is.unknown"]).prop_map(str::to_owned).boxed(),
            "title" => prop_oneof![
                ("like|ilike", "[a-zA-Z%_ ]{0,40}|\\PC{0,256}").prop_map(|(op, p)| format!("{op}.{}", quoted(&p))),
                ("match|imatch", "\\^?([a-z]|\\.\\*|\\[a-z\\]){0,30}\\$?").prop_map(|(op, p)| format!("{op}.{p}")),
            ]
            .boxed(),
            _ => nulls.clone().boxed(),
        };
        prop_oneof![compare, list, nulls, special].prop_map(move |rest| (column.to_owned(), rest))
    })
}

const OPS_AND_NEAR_MISSES: [&str; 17] =
    ["eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch", "isdistinct", "foo", "", "EQ", "not"];

/// Filter strings built from the grammar's pieces, valid or not.
fn grammar_filter() -> impl Strategy<Value = String> {
    let column = prop::sample::select(vec!["id", "n", "title", "done", "at", "u", "x", "nope", "", "ID", "title "]);
    let op = prop::sample::select(&OPS_AND_NEAR_MISSES[..]);
    let value = prop_oneof![
        "[a-zA-Z0-9%_.,()\"\\\\ -]{0,20}",
        prop::sample::select(vec!["null", "true", "unknown", "NaN", "-inf", "1e400", "2026-01-02T03:04:05Z", "()", "(", ")", "\"", "\\"])
            .prop_map(str::to_owned),
        prop::collection::vec("[0-9a-z\"\\\\]{0,4}", 0..150).prop_map(|v| format!("({})", v.join(","))),
        "[%_a\\\\]{200,300}",
        "\\PC{250,300}",
        "([a-z]|\\(|\\)|\\{[0-9]{1,4}(,[0-9]{0,4})?\\}|\\*|\\+|\\?|\\[|\\]|\\\\[pPdwb]?|\\|){0,40}",
        ".{0,12}",
    ];
    let segment = (column, any::<bool>(), op, value).prop_map(|(c, not, op, v)| format!("{c}={}{op}.{v}", if not { "not." } else { "" }));
    let stray = prop_oneof![Just(String::new()), "[,()\"\\\\.=]"];
    (prop::collection::vec(segment, 1..4), any::<usize>(), stray).prop_map(|(segments, at, stray)| splice(&segments.join(","), at, &stray))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn well_typed_conditions_compile_and_not_inverts_them_on_rows_holding_a_value(
        (column, rest) in valid_condition(),
        rows in prop::collection::vec(typed_row(), 1..4),
    ) {
        let (condition, negated) = (format!("{column}={rest}"), format!("{column}=not.{rest}"));
        let filter = compiled(&condition).map_err(|e| TestCaseError::fail(format!("{condition}: {e}")))?;
        let opposite = compiled(&negated).map_err(|e| TestCaseError::fail(format!("{negated}: {e}")))?;
        for row in rows.iter().filter(|r| !r[&column].is_null()) {
            prop_assert_ne!(filter.matches(row), opposite.matches(row), "{} and {} on {:?}", condition, negated, row);
        }
    }

    #[test]
    fn grammar_shaped_filters_compile_and_evaluate_or_get_supabase_wording(text in grammar_filter(), rows in rows()) {
        check(&text, &rows)?;
    }

    #[test]
    fn any_filter_text_compiles_and_evaluates_or_gets_supabase_wording(text in ".{0,120}", rows in rows()) {
        check(&text, &rows)?;
    }
}
