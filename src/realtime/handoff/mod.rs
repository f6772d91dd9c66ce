//! Handoffs: a channel closed by a draining gateway resumes on another one
//! without losing a change committed in between.
//!
//! Owns the handoff key of a channel (a hash of its token, topic, privacy
//! and bindings: what the client sends again when it rejoins), the note a
//! draining gateway writes into the change log before it tells its clients
//! to reconnect (`rowcast.changes` rows of `rowcast.handoff`: the keys, how
//! many channels have each, and the listener's `Position`, which says
//! exactly which change ids those channels may not have received: the ones
//! above its high-water mark and the few it still waited on), and every
//! gateway's memory of the notes it read, for `ttl`.
//!
//! A join whose key was handed off within `ttl` replays the row changes and
//! SQL broadcasts of those ids through the registry
//! (`Registry::join_resuming`), before its live ones. Channels keep their
//! rights: replayed changes pass the same authorisation and filters as live
//! ones. The cost of never losing one is a few duplicates: changes the old
//! gateway queued between its note and the close arrive again. A key
//! replays at most twice per channel handed off with it (two tabs of one
//! user on one topic are two channels; a rejoin that drops again gets a
//! second try), so a client cannot make a gateway replay without end. Joins
//! that must read the log share reads (`reads`), at most `CONCURRENT_READS`
//! at once, so a burst of them cannot take the pool from everyone else. A read
//! holds at most `READ_SINCE_LIMIT` changes; a channel that missed more than
//! a read and the registry's memory hold together is told so (`phx_error`,
//! and its key's replays are dropped), never given part of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::changes::window::Position;

/// What identifies a channel across a reconnect.
pub type HandoffKey = [u8; 32];

/// Keys per log row, so one note stays a modest row.
const KEYS_PER_ROW: usize = 2_000;
/// Replays a key gets per channel handed off with it.
const REPLAYS_PER_CHANNEL: u32 = 2;

mod reads;

pub use reads::{Missed, CONCURRENT_READS};

/// The key of a join: its token (`""` when it sent none), topic, privacy and
/// `postgres_changes` bindings, as supabase-js sends them again on rejoin.
pub fn key(token: &str, topic: &str, payload: &Value) -> HandoffKey {
    let config = payload.get("config");
    let bindings = config.and_then(|c| c.get("postgres_changes")).map(Value::to_string).unwrap_or_default();
    let private = config.and_then(|c| c.get("private")).and_then(Value::as_bool).unwrap_or(false);
    let mut hash = Sha256::new();
    for part in [token.as_bytes(), topic.as_bytes(), &[u8::from(private)], bindings.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// This gateway's side of handoffs; cheap to clone.
#[derive(Clone)]
pub struct Handoffs {
    /// Keys handed off by any gateway.
    notes: Arc<Mutex<HashMap<HandoffKey, Note>>>,
    ttl: Duration,
    /// The log reads of resuming joins.
    reads: reads::SharedReads,
}

/// What is known of one handed-off key.
#[derive(Debug, Clone)]
struct Note {
    /// What its channels were delivered (merged over notes naming it).
    position: Position,
    /// Until when a join may resume.
    until: Instant,
    /// Replays left.
    left: u32,
}

/// Why a handoff note could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the handoff note: {0}")]
pub struct HandoffError(#[from] sqlx::Error);

impl Handoffs {
    /// Handoffs kept for `ttl` (zero: none written or honoured); log reads are counted in `reads`.
    pub fn new(ttl: Duration, reads: prometheus_client::metrics::counter::Counter) -> Self {
        Handoffs { notes: Arc::default(), ttl, reads: reads::SharedReads::new(reads) }
    }

    /// The row changes and SQL broadcasts `position` misses, from a log
    /// read that began after this call (shared with the joins waiting for it).
    pub async fn missed(&self, pool: &PgPool, tables: &crate::changes::tables::Tables, position: &Position) -> Missed {
        self.reads.read(pool, tables, position).await
    }

    /// Whether handoffs are on.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Where a join with `key` resumes from, if it was handed off within the
    /// ttl and has replays left (this takes one).
    pub fn resume(&self, key: &HandoffKey) -> Option<Position> {
        let mut notes = self.notes.lock().expect("handoff lock poisoned");
        let note = notes.get_mut(key).filter(|n| n.until > Instant::now() && n.left > 0)?;
        note.left -= 1;
        Some(note.position.clone())
    }

    /// Drops the replays left for `key`: its channels resume live only.
    pub fn forget(&self, key: &HandoffKey) {
        if let Some(note) = self.notes.lock().expect("handoff lock poisoned").get_mut(key) {
            note.left = 0;
        }
    }

    /// Remembers a note read from the log (a `rowcast.handoff` record) written `age` ago.
    pub fn note(&self, record: &Map<String, Value>, age: Duration) {
        let Some(until) = (Instant::now() + self.ttl).checked_sub(age) else { return };
        let Some(high_water) = record.get("high_water").and_then(Value::as_i64) else { return };
        let mut gaps: Vec<i64> = record
            .get("gaps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
            .filter(|g| *g <= high_water)
            .collect();
        gaps.sort_unstable();
        gaps.dedup();
        let position = Position { high_water, gaps };
        let keys = record.get("keys").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let counts = record.get("counts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut notes = self.notes.lock().expect("handoff lock poisoned");
        let now = Instant::now();
        notes.retain(|_, n| n.until > now);
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key.as_str().and_then(parse_key) else { continue };
            let channels = counts.get(i).and_then(Value::as_u64).unwrap_or(1).min(u32::MAX as u64) as u32;
            let replays = channels.saturating_mul(REPLAYS_PER_CHANNEL);
            let note = notes.entry(key).or_insert(Note { position: position.clone(), until, left: 0 });
            note.position = note.position.merge(&position);
            note.until = note.until.max(until);
            note.left = note.left.saturating_add(replays);
        }
    }

    /// Reads the notes written within the ttl, for a gateway that starts after them.
    pub async fn load_recent(&self, pool: &PgPool) -> Result<usize, HandoffError> {
        if !self.enabled() {
            return Ok(0);
        }
        let rows: Vec<(sqlx::types::Json<Map<String, Value>>, f64)> = sqlx::query_as(
            "select record, extract(epoch from now() - changed_at)::float8 from rowcast.changes
             where schema_name = 'rowcast' and table_name = 'handoff' and changed_at > now() - make_interval(secs => $1)",
        )
        .bind(self.ttl.as_secs_f64())
        .fetch_all(pool)
        .await?;
        for (record, age) in &rows {
            self.note(record, Duration::from_secs_f64(age.max(0.0)));
        }
        Ok(rows.len())
    }

    /// Writes the note for `keys` (of the channels about to be closed, with
    /// how many have each) into the log and rings the doorbell: they resume
    /// from `position`, the listener's, read while they were all still live
    /// (everything it records as delivered reached them). Returns how many
    /// channels it noted: none when handoffs are off.
    pub async fn hand_off(&self, pool: &PgPool, position: &Position, keys: &[(HandoffKey, u32)]) -> Result<u32, HandoffError> {
        if !self.enabled() || keys.is_empty() {
            return Ok(0);
        }
        let mut tx = pool.begin().await?;
        for chunk in keys.chunks(KEYS_PER_ROW) {
            let record = json!({
                "high_water": position.high_water,
                "gaps": position.gaps,
                "keys": chunk.iter().map(|(k, _)| hex(k)).collect::<Vec<_>>(),
                "counts": chunk.iter().map(|(_, n)| n).collect::<Vec<_>>(),
            });
            sqlx::query("insert into rowcast.changes (schema_name, table_name, op, record) values ('rowcast', 'handoff', 'INSERT', $1)")
                .bind(record)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("select pg_notify('rowcast_changes', '')").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(keys.iter().map(|(_, n)| n).sum())
    }
}

fn hex(key: &HandoffKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(text: &str) -> Option<HandoffKey> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoffs(ttl_secs: u64) -> Handoffs {
        Handoffs::new(Duration::from_secs(ttl_secs), Default::default())
    }

    fn join(bindings: Value) -> Value {
        json!({"config": {"postgres_changes": bindings, "presence": {"key": "random-per-join"}}, "access_token": "ignored"})
    }

    #[test]
    fn a_rejoin_with_the_same_token_topic_and_bindings_has_the_same_key_and_anything_else_does_not() {
        let b = json!([{"event": "*", "schema": "public", "table": "t"}]);
        let k = key("tok", "realtime:room", &join(b.clone()));
        assert_eq!(k, key("tok", "realtime:room", &json!({"config": {"postgres_changes": b.clone()}})));
        assert_ne!(k, key("tok2", "realtime:room", &join(b.clone())));
        assert_ne!(k, key("tok", "realtime:room2", &join(b.clone())));
        assert_ne!(k, key("tok", "realtime:room", &join(json!([{"event": "INSERT", "schema": "public", "table": "t"}]))));
        let private = json!({"config": {"postgres_changes": b, "private": true}});
        assert_ne!(k, key("tok", "realtime:room", &private));
    }

    #[test]
    fn a_noted_key_resumes_from_what_every_note_naming_it_misses_until_the_ttl_passes() {
        let h = handoffs(30);
        let (a, b) = (key("a", "realtime:x", &json!({})), key("b", "realtime:x", &json!({})));
        h.note(json!({"high_water": 50, "gaps": [45], "keys": [hex(&a)]}).as_object().unwrap(), Duration::ZERO);
        h.note(json!({"high_water": 40, "gaps": [30, 60], "keys": [hex(&a), "not-a-key"]}).as_object().unwrap(), Duration::ZERO);
        assert_eq!(h.resume(&a), Some(Position { high_water: 40, gaps: vec![30] }), "whatever either note misses");
        assert_eq!(h.resume(&b), None);
        h.note(json!({"high_water": 10, "keys": [hex(&b)]}).as_object().unwrap(), Duration::from_secs(31));
        assert_eq!(h.resume(&b), None, "a note older than the ttl is ignored");
    }

    #[test]
    fn a_key_replays_twice_per_channel_handed_off_with_it_and_then_no_more() {
        let h = handoffs(30);
        let (one, three) = (key("a", "realtime:x", &json!({})), key("b", "realtime:x", &json!({})));
        h.note(json!({"high_water": 5, "keys": [hex(&one), hex(&three)], "counts": [1, 3]}).as_object().unwrap(), Duration::ZERO);
        let at5 = Some(Position { high_water: 5, gaps: vec![] });
        assert_eq!((h.resume(&one), h.resume(&one), h.resume(&one)), (at5.clone(), at5, None));
        assert_eq!((0..7).filter_map(|_| h.resume(&three)).count(), 6);
    }

    #[test]
    fn keys_survive_their_text_form() {
        let k = key("a", "realtime:x", &json!({}));
        assert_eq!(parse_key(&hex(&k)), Some(k));
        assert_eq!(parse_key("zz"), None);
    }
}
