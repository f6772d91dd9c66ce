//! The `data` object of a `postgres_changes` frame, as Supabase sends it. Pure.
//!
//! Owns key order, the millisecond `Z` timestamp, `columns` with pg
//! `typname`s, `old_record` trimmed to the primary key unless the table is
//! REPLICA IDENTITY FULL, and Supabase's 1 MB rule (over it, only fields of at
//! most 64 bytes are kept and `errors` says so), and a binding's `select`
//! (applied before the size rule, as Supabase does). Each record is serialized
//! once: the text that measures it is the text that is sent. The result is
//! built once per change and shared by every frame that carries it.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::selection::Selection;
use crate::changes::change::{Change, Column, Op, TableMeta};

/// Largest value kept when a record is over the size limit, as in Supabase.
pub const TRIMMED_FIELD_BYTES: usize = 64;

/// Supabase's text in `errors` for a record over the limit.
const TOO_LARGE: &str = "Error 413: Payload Too Large";

#[derive(Serialize)]
struct Data<'a> {
    schema: &'a str,
    table: &'a str,
    commit_timestamp: String,
    #[serde(rename = "type")]
    op: Op,
    columns: std::borrow::Cow<'a, [Column]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_record: Option<Box<RawValue>>,
    errors: Option<[&'static str; 1]>,
}

/// Renders the `data` object of the frame for `change` on `meta`, with only
/// the `selection`'s columns when there is one.
pub fn render_data(change: &Change, meta: &TableMeta, max_record_bytes: usize, selection: Option<&Selection>) -> Arc<str> {
    // The trigger keeps an UPDATE's old row only for REPLICA IDENTITY FULL tables;
    // otherwise the old primary key is the new row's (a changed key is not seen).
    let old = match (&change.old_record, change.op) {
        (Some(old), _) if meta.full_identity => Some(old.clone()),
        (Some(old), _) => Some(only_keys(old, &meta.primary_key)),
        (None, Op::Update) => change.record.as_ref().map(|new| only_keys(new, &meta.primary_key)),
        (None, _) => None,
    };
    let (new, old) = match selection {
        Some(s) => (change.record.as_ref().map(|r| std::borrow::Cow::Owned(s.row(r))), old.map(|o| s.row(&o))),
        None => (change.record.as_ref().map(std::borrow::Cow::Borrowed), old),
    };
    let mut record = new.as_deref().map(raw);
    let mut old_record = old.as_ref().map(raw);
    let too_big = [&record, &old_record].iter().any(|r| r.as_ref().is_some_and(|r| r.get().len() > max_record_bytes));
    if too_big {
        record = new.as_deref().map(|r| raw(&trim_fields(r)));
        old_record = old.as_ref().map(|r| raw(&trim_fields(r)));
    }
    let data = Data {
        schema: &change.schema,
        table: &change.table,
        commit_timestamp: change.changed_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        op: change.op,
        columns: match selection {
            Some(s) => std::borrow::Cow::Owned(s.columns(&meta.columns)),
            None => std::borrow::Cow::Borrowed(&meta.columns),
        },
        record,
        old_record,
        errors: too_big.then_some([TOO_LARGE]),
    };
    serde_json::to_string(&data).expect("change data is plain JSON").into()
}

fn raw(row: &Map<String, Value>) -> Box<RawValue> {
    serde_json::value::to_raw_value(row).expect("a JSON object serializes")
}

fn only_keys(row: &Map<String, Value>, keys: &[String]) -> Map<String, Value> {
    keys.iter().filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone()))).collect()
}

fn trim_fields(row: &Map<String, Value>) -> Map<String, Value> {
    row.iter().filter(|(_, v)| v.to_string().len() <= TRIMMED_FIELD_BYTES).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde_json::json;

    fn meta(full: bool) -> TableMeta {
        TableMeta { full_identity: full, ..TableMeta::owned_for_tests("todos", &[("id", "int8"), ("user_id", "text"), ("title", "text")]) }
    }

    fn change(op: Op, record: Option<Value>, old: Option<Value>) -> Change {
        let obj = |v: Value| v.as_object().unwrap().clone();
        Change {
            id: 1,
            changed_at: DateTime::parse_from_rfc3339("2026-11-22T10:11:12.345678Z").unwrap().with_timezone(&Utc),
            schema: "public".into(),
            table: "todos".into(),
            op,
            owner: Some("u1".into()),
            record: record.map(obj),
            old_record: old.map(obj),
        }
    }

    #[test]
    fn an_insert_has_no_old_record_and_a_millisecond_timestamp() {
        let c = change(Op::Insert, Some(json!({"id": 1, "user_id": "u1", "title": "a"})), None);
        let text = render_data(&c, &meta(false), 1 << 20, None);
        assert!(text.starts_with(r#"{"schema":"public","table":"todos","commit_timestamp":"#), "{text}");
        let data: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(data["commit_timestamp"], "2026-11-22T10:11:12.345Z");
        assert_eq!(data["type"], "INSERT");
        assert_eq!(data["columns"][0], json!({"name": "id", "type": "int8"}));
        assert!(data.get("old_record").is_none());
        assert_eq!(data["errors"], Value::Null);
    }

    #[test]
    fn old_records_hold_the_primary_key_unless_identity_is_full() {
        let old = json!({"id": 1, "user_id": "u1", "title": "a"});
        let c = change(Op::Delete, None, Some(old.clone()));
        let data: Value = serde_json::from_str(&render_data(&c, &meta(false), 1 << 20, None)).unwrap();
        assert_eq!(data["old_record"], json!({"id": 1}));
        assert!(data.get("record").is_none());
        let data: Value = serde_json::from_str(&render_data(&c, &meta(true), 1 << 20, None)).unwrap();
        assert_eq!(data["old_record"], old);
    }

    #[test]
    fn an_update_without_its_old_row_takes_the_old_key_from_the_new_row() {
        let c = change(Op::Update, Some(json!({"id": 9, "user_id": "u1", "title": "b"})), None);
        let data: Value = serde_json::from_str(&render_data(&c, &meta(false), 1 << 20, None)).unwrap();
        assert_eq!(data["old_record"], json!({"id": 9}));
    }

    #[test]
    fn oversized_records_keep_only_small_fields_and_say_so() {
        let big = "x".repeat(2000);
        let c = change(Op::Insert, Some(json!({"id": 1, "user_id": "u1", "title": big})), None);
        let data: Value = serde_json::from_str(&render_data(&c, &meta(false), 1000, None)).unwrap();
        assert_eq!(data["record"], json!({"id": 1, "user_id": "u1"}));
        assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
    }

    #[test]
    fn a_selection_shapes_record_old_record_and_columns_alike() {
        let full = meta(true);
        let selection = Selection::resolve(&["title".to_owned()], &full).unwrap();
        let big = "x".repeat(2000);
        let c =
            change(Op::Update, Some(json!({"id": 2, "user_id": "u1", "title": "b"})), Some(json!({"id": 2, "user_id": big, "title": "a"})));
        let data: Value = serde_json::from_str(&render_data(&c, &full, 1000, Some(&selection))).unwrap();
        assert_eq!(data["record"], json!({"id": 2, "title": "b"}));
        assert_eq!(data["old_record"], json!({"id": 2, "title": "a"}));
        assert_eq!(data["columns"], json!([{"name": "id", "type": "int8"}, {"name": "title", "type": "text"}]));
        // The unselected big column no longer counts against the size limit.
        assert_eq!(data["errors"], Value::Null);
    }
}
