//! The REST query parser and the SQL it builds. Every refusal is a 4xx with
//! a PostgREST code, and no value of an accepted query reaches the SQL text.

use proptest::prelude::*;

use super::config;
use rowcast::changes::change::{Column, TableMeta};
use rowcast::rest::query::{self, Query, Sql};

const COLUMNS: [(&str, &str); 5] = [("id", "int8"), ("user_id", "text"), ("title", "text"), ("done", "bool"), ("at", "timestamptz")];

fn meta() -> TableMeta {
    TableMeta {
        schema: "public".into(),
        table: "todos".into(),
        owner_column: Some("user_id".into()),
        owner_claim: Some(rowcast::auth::ClaimPath::sub()),
        public: false,
        full_identity: false,
        columns: COLUMNS.iter().map(|(n, t)| Column { name: n.to_string(), typ: t.to_string() }).collect(),
        primary_key: vec!["id".into()],
    }
}

/// Parses `pairs`; a refusal must be a 4xx with a PostgREST code (PGRST... or a SQLSTATE).
fn check(pairs: &[(String, String)]) -> Result<Option<Query>, TestCaseError> {
    match query::parse(pairs, &meta()) {
        Ok(q) => Ok(Some(q)),
        Err(e) => {
            prop_assert!((400..500).contains(&e.status), "status {} for {:?}", e.status, pairs);
            let sqlstate = e.code.len() == 5 && e.code.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
            prop_assert!(e.code.starts_with("PGRST") || sqlstate, "code {} for {:?}", e.code, pairs);
            Ok(None)
        }
    }
}

/// The statement's text, as the snapshot handler assembles it, and its parameters.
fn statement(q: &Query) -> (String, Sql) {
    let mut sql = Sql::default();
    let text =
        format!("select {} from t{}{}", q.columns(), q.where_clause(&meta(), Some(("user_id", &["alice".to_owned()])), &mut sql), q.tail());
    (text, sql)
}

fn column() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(COLUMNS.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>()),
        1 => prop::sample::select(vec!["nope", "*", "", "ID", "id ", "\"id\"", "id;drop"]).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

/// An operand made of `value`'s pieces: plain, quoted, a list, a keyword.
fn operand(value: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = String> {
    prop_oneof![
        value.clone(),
        value.clone().prop_map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))),
        prop::collection::vec(value, 0..12).prop_map(|vs| format!("({})", vs.join(","))),
        prop::sample::select(vec!["null", "true", "false", "unknown", "()", "(", ")"]).prop_map(str::to_owned),
    ]
}

/// `[not.]op.operand`.
fn condition(value: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = String> {
    let op = prop::sample::select(vec!["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "is", "in", "cs", "", "EQ"]);
    (any::<bool>(), op, operand(value)).prop_map(|(not, op, v)| format!("{}{op}.{v}", if not { "not." } else { "" }))
}

/// One query-string pair shaped by the grammar, with operands drawn from `value`.
fn grammar_pair(value: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = (String, String)> {
    let direction = prop::sample::select(vec!["", ".asc", ".desc", ".desc.nullslast", ".nullsfirst", ".x", "."]);
    let number = prop_oneof!["-?[0-9]{1,20}", "[0-9a-z.]{0,6}"];
    prop_oneof![
        4 => (column(), condition(value.clone())),
        2 => prop::collection::vec((column(), condition(value)), 0..4)
            .prop_map(|terms| ("or".to_owned(), format!("({})", terms.iter().map(|(c, r)| format!("{c}.{r}")).collect::<Vec<_>>().join(",")))),
        1 => "[a-z_,*() !:]{0,24}".prop_map(|v| ("select".to_owned(), v)),
        1 => prop::collection::vec((column(), direction), 1..3)
            .prop_map(|terms| ("order".to_owned(), terms.iter().map(|(c, d)| format!("{c}{d}")).collect::<Vec<_>>().join(","))),
        1 => number.clone().prop_map(|v| ("limit".to_owned(), v)),
        1 => number.prop_map(|v| ("offset".to_owned(), v)),
        1 => ".{0,12}".prop_map(|v| ("and".to_owned(), v)),
    ]
}

/// Operand text that carries `ж`, a letter no column name, keyword or SQL fragment here has.
fn marked() -> impl Strategy<Value = String> + Clone {
    "[a-z0-9%*_ ,()\"\\\\]{0,6}ж[a-z0-9%*_ ,()\"'\\\\;-]{0,6}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn grammar_shaped_queries_parse_or_get_a_postgrest_error(
        pairs in prop::collection::vec(grammar_pair("[a-zA-Z0-9%_.,()\"*\\\\ -]{0,16}|\\PC{0,8}"), 0..6),
    ) {
        if let Some(q) = check(&pairs)? {
            statement(&q);
        }
    }

    #[test]
    fn accepted_queries_bind_every_value_as_a_parameter(pairs in prop::collection::vec(grammar_pair(marked()), 1..6)) {
        if let Some(q) = check(&pairs)? {
            let (text, sql) = statement(&q);
            prop_assert!(!text.contains('ж'), "a value reached the SQL text: {}", text);
            prop_assert_eq!(text.matches('$').count(), sql.params.len(), "placeholders and parameters differ: {}", text);
        }
    }

    #[test]
    fn any_query_string_parses_or_gets_a_postgrest_error(pairs in prop::collection::vec((".{0,12}", ".{0,40}"), 0..5)) {
        if let Some(q) = check(&pairs)? {
            statement(&q);
        }
    }
}
