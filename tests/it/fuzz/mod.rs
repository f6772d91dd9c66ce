//! Property tests: the parsers a browser can reach survive any input.
//!
//! The frame decoder (v1 and v2 text, kind-3 binary), the filter parser and
//! compiler (and evaluation of what compiles), and the REST query parser (and
//! the SQL it builds) get arbitrary input and near-valid input: well-formed
//! messages with one part mutated, cut short, of the wrong type, too long or
//! not UTF-8. None may panic, and every refusal must be an error in the
//! protocol's own terms. Each file also checks that its well-formed messages
//! are accepted, so the near-valid ones start from something valid.
//!
//! The case count is proptest's default (256 per property, a few seconds in
//! all); `PROPTEST_CASES=100000 cargo test --test it fuzz` runs the long mode.

mod filters;
mod frames;
mod queries;

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Value};

/// proptest's defaults, which honour `PROPTEST_CASES`; a failure prints its
/// shrunk input instead of saving it under tests/.
fn config() -> Config {
    Config { failure_persistence: None, ..Config::default() }
}

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

/// `text` with `insert` put in at character `at` (modulo its length).
fn splice(text: &str, at: usize, insert: &str) -> String {
    let at = text.char_indices().map(|(i, _)| i).nth(at % (text.chars().count() + 1)).unwrap_or(text.len());
    format!("{}{insert}{}", &text[..at], &text[at..])
}

/// `text` cut after `keep` characters (modulo its length).
fn truncate(text: &str, keep: usize) -> String {
    text.chars().take(keep % (text.chars().count() + 1)).collect()
}
