//! A captured row change and the table facts needed to present it. Pure.
//!
//! Owns the typed `Change` read from the log and `TableMeta`; knows nothing of
//! any wire format (the `postgres_changes` frame is `realtime::payload`'s).
//! A table's visibility rule names a claim through `auth::ClaimPath`, a pure
//! leaf type.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::ClaimPath;

/// INSERT, UPDATE or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// From the log's `op` column.
    pub fn parse(text: &str) -> Option<Op> {
        match text {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One row of `rowcast.changes`.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: i64,
    pub changed_at: DateTime<Utc>,
    pub schema: String,
    pub table: String,
    pub op: Op,
    /// Owner column value (new row; old row for DELETE).
    pub owner: Option<String>,
    pub record: Option<Map<String, Value>>,
    pub old_record: Option<Map<String, Value>>,
}

impl Change {
    /// The row filters are evaluated against: the new row, or the old one for
    /// DELETE (whole, so filters on any column work for deletes too).
    pub fn filter_row(&self) -> Option<&Map<String, Value>> {
        match self.op {
            Op::Delete => self.old_record.as_ref(),
            _ => self.record.as_ref(),
        }
    }
}

/// A column name and its pg `typname`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub typ: String,
}

/// What the gateway knows of an enabled table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMeta {
    pub schema: String,
    pub table: String,
    /// Rows belong to the users whose `owner_claim` names this column's value.
    pub owner_column: Option<String>,
    /// The claim the owner column is compared with (`sub` by default); `None`
    /// when the stored path does not parse, and then only the service role sees rows.
    pub owner_claim: Option<ClaimPath>,
    /// Everyone may see every row.
    pub public: bool,
    /// REPLICA IDENTITY FULL: `old_record` carries the whole old row.
    pub full_identity: bool,
    /// In attnum order.
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

#[cfg(test)]
impl TableMeta {
    /// The unit tests' table: `public.<table>` with `columns` (name, typname),
    /// keyed by the first, its rows owned by `user_id` through `sub`. Tests
    /// change the rest with struct update syntax.
    pub(crate) fn owned_for_tests(table: &str, columns: &[(&str, &str)]) -> TableMeta {
        TableMeta {
            schema: "public".into(),
            table: table.into(),
            owner_column: Some("user_id".into()),
            owner_claim: Some(ClaimPath::sub()),
            public: false,
            full_identity: false,
            columns: columns.iter().map(|(name, typ)| Column { name: (*name).into(), typ: (*typ).into() }).collect(),
            primary_key: columns.iter().take(1).map(|(name, _)| (*name).into()).collect(),
        }
    }
}

impl TableMeta {
    /// (name, typname) pairs, as the filter compiler wants them.
    pub fn column_types(&self) -> Vec<(String, String)> {
        self.columns.iter().map(|c| (c.name.clone(), c.typ.clone())).collect()
    }

    /// Whether the row's keys still match the cached columns (else the table changed).
    pub fn fits(&self, row: &Map<String, Value>) -> bool {
        row.len() == self.columns.len() && self.columns.iter().all(|c| row.contains_key(&c.name))
    }
}
