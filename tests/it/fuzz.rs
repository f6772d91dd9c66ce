//! Property tests: the parsers a browser can reach survive any input.
//!
//! The frame decoder (v1 and v2 text, kind-3 binary), the filter parser and
//! compiler (and evaluation of what compiles), and the REST query parser get
//! arbitrary and near-valid input; none may panic, and every refusal must be
//! an error in the protocol's own terms. The default case count is a short
//! mode for CI; `PROPTEST_CASES=100000` runs the long one.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

use rowcast::changes::change::{Column, TableMeta};
use rowcast::realtime::filter::{compile, parse};
use rowcast::realtime::protocol::{decode_binary, decode_text, ProtocolError, Vsn};
use rowcast::rest::query;

/// `PROPTEST_CASES` when set, else a short run.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    Config { cases, failure_persistence: None, ..Config::default() }
}

const COLUMNS: [(&str, &str); 7] =
    [("id", "int8"), ("n", "int4"), ("title", "text"), ("done", "bool"), ("at", "timestamptz"), ("u", "uuid"), ("x", "float8")];

fn columns() -> Vec<(String, String)> {
    COLUMNS.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn meta() -> TableMeta {
    TableMeta {
        schema: "public".into(),
        table: "todos".into(),
        owner_column: Some("title".into()),
        public: false,
        full_identity: false,
        columns: COLUMNS.iter().map(|(n, t)| Column { name: n.to_string(), typ: t.to_string() }).collect(),
        primary_key: vec!["id".into()],
    }
}

// ---- frames ----

/// JSON values of every shape, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that are almost right: the five fields, each sometimes of the wrong type or missing.
fn near_frame() -> impl Strategy<Value = (bool, String)> {
    let field = prop_oneof![json_value(), Just(json!("realtime:room")), Just(json!("phx_join")), Just(json!("1"))];
    (any::<bool>(), prop::collection::vec(field, 0..7), any::<bool>()).prop_map(|(v2, fields, object)| {
        let text = if object {
            let keys = ["join_ref", "ref", "topic", "event", "payload", "extra", "x"];
            let map: Map<String, Value> = keys.iter().zip(fields).map(|(k, v)| (k.to_string(), v)).collect();
            Value::Object(map).to_string()
        } else {
            Value::Array(fields).to_string()
        };
        (v2, text)
    })
}

fn frame_error_is_protocol_terms(e: &ProtocolError) -> bool {
    let text = e.to_string();
    text.starts_with("malformed message") || text.starts_with("unsupported vsn")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_frame_decodes_or_is_malformed(text in ".{0,200}", v2 in any::<bool>()) {
        let vsn = if v2 { Vsn::V2 } else { Vsn::V1 };
        if let Err(e) = decode_text(vsn, &text) {
            prop_assert!(frame_error_is_protocol_terms(&e), "{e}");
        }
    }

    #[test]
    fn near_valid_text_frames_decode_or_are_malformed((v2, text) in near_frame()) {
        let vsn = if v2 { Vsn::V2 } else { Vsn::V1 };
        if let Err(e) = decode_text(vsn, &text) {
            prop_assert!(frame_error_is_protocol_terms(&e), "{e}");
        }
    }

    #[test]
    fn any_binary_frame_decodes_or_is_malformed(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = decode_binary(&bytes) {
            prop_assert!(frame_error_is_protocol_terms(&e), "{e}");
        }
    }

    #[test]
    fn kind_3_frames_with_wrong_lengths_or_bytes_decode_or_are_malformed(
        header in prop::array::uniform7(any::<u8>()),
        fields in prop::collection::vec(any::<u8>(), 0..120),
        kind_3 in any::<bool>(),
        encoding in 0u8..3,
    ) {
        let mut frame = header.to_vec();
        if kind_3 {
            frame[0] = 3;
            frame[6] = encoding;
        }
        frame.extend_from_slice(&fields);
        if let Err(e) = decode_binary(&frame) {
            prop_assert!(frame_error_is_protocol_terms(&e), "{e}");
        }
    }
}

// ---- filters ----

const FILTER_ERRORS: [&str; 9] = [
    "Error parsing `filter` params",
    "`in` filter value must be wrapped by parentheses",
    "too many values for `in` filter",
    "invalid column for filter",
    "invalid input syntax for type",
    "invalid value for `is` filter",
    "invalid regular expression",
    "pattern too long for `",
    "too many pattern filters",
];

/// Filter strings built from the grammar's pieces.
fn grammar_filter() -> impl Strategy<Value = String> {
    let column = prop_oneof![Just("id"), Just("n"), Just("title"), Just("done"), Just("at"), Just("u"), Just("x"), Just("nope"), Just("")];
    let op = prop_oneof![
        Just("eq"),
        Just("neq"),
        Just("lt"),
        Just("lte"),
        Just("gt"),
        Just("gte"),
        Just("in"),
        Just("like"),
        Just("ilike"),
        Just("is"),
        Just("match"),
        Just("imatch"),
        Just("isdistinct"),
        Just("foo"),
        Just("")
    ];
    let value = prop_oneof![
        "[a-zA-Z0-9%_.,()\"\\\\ -]{0,20}",
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("2026-01-02T03:04:05Z".to_owned()),
        prop::collection::vec("[0-9a-z\"]{0,4}", 0..150).prop_map(|v| format!("({})", v.join(","))),
        "[%_a\\\\]{200,300}",
        ".{0,12}",
    ];
    let segment = (column, any::<bool>(), op, value).prop_map(|(c, not, op, v)| format!("{c}={}{op}.{v}", if not { "not." } else { "" }));
    prop::collection::vec(segment, 1..4).prop_map(|s| s.join(","))
}

/// A few rows to evaluate compiled filters against, with every JSON shape in each column.
fn row() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(json_value(), COLUMNS.len()).prop_map(|values| COLUMNS.iter().map(|(c, _)| c.to_string()).zip(values).collect())
}

fn check_filter(text: &str, rows: &[Map<String, Value>]) -> Result<(), TestCaseError> {
    match parse(text).and_then(|c| compile(&c, &columns())) {
        Ok(compiled) => {
            for r in rows {
                let _ = compiled.matches(r);
            }
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(FILTER_ERRORS.iter().any(|p| message.starts_with(p)), "not Supabase's wording: {message}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_filter_text_parses_or_gets_supabase_wording(text in ".{0,120}", rows in prop::collection::vec(row(), 0..3)) {
        check_filter(&text, &rows)?;
    }

    #[test]
    fn grammar_shaped_filters_compile_and_evaluate_or_get_supabase_wording(
        text in grammar_filter(),
        rows in prop::collection::vec(row(), 0..3),
    ) {
        check_filter(&text, &rows)?;
    }
}

// ---- REST queries ----

fn grammar_pair() -> impl Strategy<Value = (String, String)> {
    let column = prop_oneof![Just("id"), Just("n"), Just("title"), Just("done"), Just("nope"), Just("*"), Just("")];
    let op = prop_oneof![Just("eq"), Just("neq"), Just("gt"), Just("like"), Just("ilike"), Just("is"), Just("in"), Just("cs"), Just("")];
    let value = "[a-zA-Z0-9%_.,()\"* -]{0,16}";
    prop_oneof![
        (column.clone(), any::<bool>(), op.clone(), value)
            .prop_map(|(c, not, op, v)| (c.to_owned(), format!("{}{op}.{v}", if not { "not." } else { "" }))),
        prop::collection::vec((column.clone(), op, "[a-z0-9,()]{0,6}"), 0..4).prop_map(|items| (
            "or".to_owned(),
            format!("({})", items.iter().map(|(c, o, v)| format!("{c}.{o}.{v}")).collect::<Vec<_>>().join(","))
        )),
        "[a-z,*() ]{0,20}".prop_map(|v| ("select".to_owned(), v)),
        (column, prop_oneof![Just(""), Just(".asc"), Just(".desc"), Just(".desc.nullslast"), Just(".x")])
            .prop_map(|(c, d)| ("order".to_owned(), format!("{c}{d}"))),
        "-?[0-9a-z]{0,6}".prop_map(|v| ("limit".to_owned(), v)),
        "-?[0-9a-z]{0,6}".prop_map(|v| ("offset".to_owned(), v)),
    ]
}

fn check_query(pairs: &[(String, String)]) -> Result<(), TestCaseError> {
    if let Err(e) = query::parse(pairs, &meta()) {
        prop_assert!((400..500).contains(&e.status), "status {} for {pairs:?}", e.status);
        let postgrest = e.code.starts_with("PGRST") || (e.code.len() == 5 && e.code.chars().all(|c| c.is_ascii_alphanumeric()));
        prop_assert!(postgrest, "code {} for {pairs:?}", e.code);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_query_string_parses_or_gets_a_postgrest_error(pairs in prop::collection::vec((".{0,12}", ".{0,40}"), 0..5)) {
        check_query(&pairs)?;
    }

    #[test]
    fn grammar_shaped_queries_parse_or_get_a_postgrest_error(pairs in prop::collection::vec(grammar_pair(), 0..6)) {
        check_query(&pairs)?;
    }
}
