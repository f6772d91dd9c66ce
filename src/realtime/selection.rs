//! A binding's `select`: which columns its changes carry. Pure.
//!
//! realtime-js 2.109 sends `select` as a list of column names; Supabase then
//! sends only those columns plus the primary key, in `record`, `old_record`
//! and `columns` alike. Non-string entries are dropped; an empty list means
//! the primary key alone. A string instead of a list, a selection on a
//! wildcard binding, and a column the table does not have are refused with
//! Supabase's texts. Filters still see the whole row: `select` shapes what
//! is sent, not what matches.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::changes::change::{Column, TableMeta};

/// The columns one binding's changes carry, in the table's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(Arc<[String]>);

/// Why a `select` was refused; `Display` is Supabase's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// `select` was a string.
    #[error("Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]")]
    NotAList,
    /// `select` on a binding whose schema or table is `*`.
    #[error("Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.")]
    Wildcard,
    /// A named column the table does not have (a database error on Supabase: P0001).
    #[error("invalid column for select {0}")]
    UnknownColumn(String),
}

/// The selected names of a binding object, before any table is known:
/// `None` when it selects nothing in particular (every column).
pub fn parse(binding: &Map<String, Value>) -> Result<Option<Vec<String>>, SelectionError> {
    match binding.get("select") {
        Some(Value::Array(items)) => Ok(Some(items.iter().filter_map(Value::as_str).map(str::to_owned).collect())),
        Some(Value::String(_)) => Err(SelectionError::NotAList),
        _ => Ok(None),
    }
}

impl Selection {
    /// `names` checked against `meta`: the selected columns plus the primary key.
    /// Linear in the names and columns: a join may repeat a name a million times.
    pub fn resolve(names: &[String], meta: &TableMeta) -> Result<Selection, SelectionError> {
        let columns: HashSet<&str> = meta.columns.iter().map(|c| c.name.as_str()).collect();
        if let Some(unknown) = names.iter().find(|n| !columns.contains(n.as_str())) {
            return Err(SelectionError::UnknownColumn(unknown.clone()));
        }
        let named: HashSet<&str> = names.iter().map(String::as_str).collect();
        let kept = meta
            .columns
            .iter()
            .filter(|c| named.contains(c.name.as_str()) || meta.primary_key.contains(&c.name))
            .map(|c| c.name.clone())
            .collect::<Vec<_>>();
        Ok(Selection(kept.into()))
    }

    /// Whether `column` is carried.
    pub fn keeps(&self, column: &str) -> bool {
        self.0.iter().any(|c| c == column)
    }

    /// `columns` reduced to the selected ones.
    pub fn columns(&self, columns: &[Column]) -> Vec<Column> {
        columns.iter().filter(|c| self.keeps(&c.name)).cloned().collect()
    }

    /// `row` reduced to the selected columns.
    pub fn row(&self, row: &Map<String, Value>) -> Map<String, Value> {
        row.iter().filter(|(k, _)| self.keeps(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> TableMeta {
        TableMeta::owned_for_tests("jobs", &[("id", "int8"), ("user_id", "text"), ("progress", "int4"), ("body", "text")])
    }

    fn binding(select: Value) -> Map<String, Value> {
        json!({"event": "*", "schema": "public", "table": "jobs", "select": select}).as_object().cloned().unwrap()
    }

    #[test]
    fn a_selection_keeps_the_named_columns_and_the_primary_key_in_table_order() {
        let names = parse(&binding(json!(["progress", 3, "user_id"]))).unwrap().unwrap();
        let s = Selection::resolve(&names, &meta()).unwrap();
        assert_eq!(s.columns(&meta().columns).iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "user_id", "progress"]);
        let row = json!({"id": 1, "user_id": "u", "progress": 5, "body": "long"}).as_object().cloned().unwrap();
        assert_eq!(Value::Object(s.row(&row)), json!({"id": 1, "user_id": "u", "progress": 5}));
    }

    #[test]
    fn an_empty_list_keeps_the_primary_key_alone_and_no_select_keeps_everything() {
        let s = Selection::resolve(&parse(&binding(json!([]))).unwrap().unwrap(), &meta()).unwrap();
        assert_eq!(s.columns(&meta().columns).len(), 1);
        let mut no_select = binding(json!(null));
        no_select.remove("select");
        assert_eq!(parse(&no_select), Ok(None));
    }

    #[test]
    fn strings_and_unknown_columns_get_supabases_errors() {
        assert_eq!(parse(&binding(json!("id,body"))), Err(SelectionError::NotAList));
        assert_eq!(
            SelectionError::NotAList.to_string(),
            "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]"
        );
        let e = Selection::resolve(&["nope".to_owned()], &meta()).unwrap_err();
        assert_eq!(e.to_string(), "invalid column for select nope");
    }
}
