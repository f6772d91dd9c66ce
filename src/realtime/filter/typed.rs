//! Filter values typed as their Postgres column. Pure.
//!
//! Owns which Postgres types compare how (integers exactly, numeric as f64,
//! timestamps as instants, uuids case-insensitively, text byte-wise as the C
//! collation does) and the conversion of both filter text and row JSON to
//! those typed values. A value that does not convert is `None`: SQL NULL
//! for row values, a typing error for filter text.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

/// How values of a Postgres type compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Float,
    Bool,
    Uuid,
    Timestamptz,
    Timestamp,
    Date,
    Json,
    Text,
}

pub(super) fn kind_of(typname: &str) -> (Kind, &'static str) {
    match typname {
        "int2" => (Kind::Int, "smallint"),
        "int4" => (Kind::Int, "integer"),
        "int8" => (Kind::Int, "bigint"),
        "oid" => (Kind::Int, "oid"),
        "float4" => (Kind::Float, "real"),
        "float8" => (Kind::Float, "double precision"),
        "numeric" => (Kind::Float, "numeric"),
        "bool" => (Kind::Bool, "boolean"),
        "uuid" => (Kind::Uuid, "uuid"),
        "timestamptz" => (Kind::Timestamptz, "timestamp with time zone"),
        "timestamp" => (Kind::Timestamp, "timestamp without time zone"),
        "date" => (Kind::Date, "date"),
        "json" | "jsonb" => (Kind::Json, "json"),
        _ => (Kind::Text, "text"),
    }
}

/// A value converted to its column's type.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Typed {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// Microseconds since the epoch (UTC for timestamptz; naive otherwise).
    Time(i64),
}

impl Typed {
    pub(super) fn compare(&self, other: &Typed) -> Option<Ordering> {
        match (self, other) {
            (Typed::Int(a), Typed::Int(b)) => Some(a.cmp(b)),
            (Typed::Int(a), Typed::Float(b)) => (*a as f64).partial_cmp(b),
            (Typed::Float(a), Typed::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Typed::Float(a), Typed::Float(b)) => a.partial_cmp(b),
            (Typed::Bool(a), Typed::Bool(b)) => Some(a.cmp(b)),
            (Typed::Text(a), Typed::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Typed::Time(a), Typed::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

fn parse_time(kind: Kind, text: &str) -> Option<i64> {
    let text = text.trim();
    let micros = |dt: DateTime<Utc>| dt.timestamp_micros();
    match kind {
        Kind::Timestamptz => DateTime::parse_from_rfc3339(text)
            .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .map(|d| micros(d.with_timezone(&Utc)))
            .ok()
            .or_else(|| naive(text).map(|n| micros(n.and_utc()))),
        _ => naive(text).map(|n| micros(n.and_utc())),
    }
}

fn naive(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
}

/// Converts filter text to the column's type (`None` when it does not convert).
pub(super) fn typed_from_text(kind: Kind, text: &str) -> Option<Typed> {
    match kind {
        Kind::Int => text.trim().parse().ok().map(Typed::Int),
        Kind::Float => text.trim().parse().ok().map(Typed::Float),
        Kind::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => Some(Typed::Bool(true)),
            "f" | "false" | "no" | "off" | "0" => Some(Typed::Bool(false)),
            _ => None,
        },
        Kind::Uuid => uuid::Uuid::parse_str(text.trim()).ok().map(|u| Typed::Text(u.to_string())),
        Kind::Timestamptz | Kind::Timestamp => parse_time(kind, text).map(Typed::Time),
        Kind::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok().map(|d| Typed::Text(d.to_string())),
        Kind::Json => serde_json::from_str::<Value>(text).ok().map(|v| Typed::Text(v.to_string())),
        Kind::Text => Some(Typed::Text(text.to_owned())),
    }
}

/// Converts a row's JSON value to the column's type; `None` is SQL NULL.
pub(super) fn typed_from_json(kind: Kind, value: &Value) -> Option<Typed> {
    match (kind, value) {
        (_, Value::Null) => None,
        (Kind::Int, Value::Number(n)) => n.as_i64().map(Typed::Int).or_else(|| n.as_f64().map(Typed::Float)),
        (Kind::Float, Value::Number(n)) => n.as_f64().map(Typed::Float),
        (Kind::Bool, Value::Bool(b)) => Some(Typed::Bool(*b)),
        (Kind::Json, v) => Some(Typed::Text(v.to_string())),
        (_, Value::String(s)) => typed_from_text(kind, s),
        (_, v) => Some(Typed::Text(v.to_string())),
    }
}

/// Text form used by `like` and `match`, as Postgres would print the value.
pub(super) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}
