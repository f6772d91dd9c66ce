//! Snapshot reads: a read-only, PostgREST-compatible subset of `/rest/v1`,
//! so supabase-js's `.from(table).select()` works for change-captured tables.
//!
//! - `query`: the query grammar and its SQL (pure).
//! - `snapshot`: the handler: who may read what, execution, PostgREST responses.

pub mod query;
pub mod snapshot;
