//! Replay: a private channel that joins with `config.broadcast.replay
//! {since, limit}` first gets the broadcasts sent from the database to its
//! topic since then (at most `MAX_REPLAY`, oldest first, each with
//! `meta: {id, replayed: true}`), as Supabase's alpha does, then live ones.
//!
//! Read from `realtime.messages`, which keeps sent messages for
//! `--message-retention-secs` (three days by default; pruned by the listener). A message committed while the
//! join is between this read and going live can be missed, as on Supabase. One
//! the read found but the listener had not delivered yet is not sent again
//! live: the channel keeps the ids it replayed (`Subscription::replayed`).

use serde_json::{json, Value};
use sqlx::PgPool;

/// Most messages one join may replay.
pub const MAX_REPLAY: i64 = 25;

/// What a join asked to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayAsk {
    /// Milliseconds since the epoch.
    pub since_ms: i64,
    pub limit: i64,
}

/// Why a replay request was refused; `Display` is Supabase's join reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("UnableToReplayMessages: Replay is not allowed for public channels")]
    PublicChannel,
    #[error("UnableToReplayMessages: Replay params are not valid")]
    BadParams,
    #[error("UnableToReplayMessages: Realtime was unable to replay messages")]
    Failed,
}

/// The replay a join's payload asks for, if any; `private` is `config.private`.
pub fn asked(payload: &Value, private: bool) -> Result<Option<ReplayAsk>, ReplayError> {
    let Some(replay) = payload.get("config").and_then(|c| c.get("broadcast")).and_then(|b| b.get("replay")) else {
        return Ok(None);
    };
    if replay.is_null() {
        return Ok(None);
    }
    if !private {
        return Err(ReplayError::PublicChannel);
    }
    let since_ms = replay.get("since").and_then(Value::as_i64).filter(|s| *s >= 0).ok_or(ReplayError::BadParams)?;
    let limit = match replay.get("limit") {
        None | Some(Value::Null) => MAX_REPLAY,
        Some(v) => v.as_i64().filter(|l| *l > 0).ok_or(ReplayError::BadParams)?.min(MAX_REPLAY),
    };
    Ok(Some(ReplayAsk { since_ms, limit }))
}

/// The `broadcast` payloads to replay on private topic `topic` (the sub-topic), oldest first.
pub async fn messages(pool: &PgPool, topic: &str, ask: ReplayAsk) -> Result<Vec<Value>, ReplayError> {
    let rows: Vec<(uuid::Uuid, Option<String>, Option<Value>)> = sqlx::query_as(
        "select id, event, payload from (
            select id, event, payload, inserted_at from realtime.messages
            where topic = $1 and private and extension = 'broadcast'
              -- inserted_at is a timestamp without zone, written by now() in the
              -- writer's session time zone; compare in ours (the server default).
              and inserted_at >= to_timestamp($2 / 1000.0)::timestamp
            order by inserted_at desc limit $3) newest
         order by inserted_at",
    )
    .bind(topic)
    .bind(ask.since_ms as f64)
    .bind(ask.limit)
    .fetch_all(pool)
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "reading messages to replay failed");
        ReplayError::Failed
    })?;
    Ok(rows
        .into_iter()
        .map(|(id, event, payload)| {
            json!({"type": "broadcast", "event": event, "payload": payload.unwrap_or(Value::Null), "meta": {"id": id, "replayed": true}})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(replay: Value) -> Value {
        json!({"config": {"broadcast": {"replay": replay}, "private": true}})
    }

    #[test]
    fn replay_needs_a_private_channel_and_a_since_and_caps_the_limit() {
        assert_eq!(asked(&json!({"config": {}}), true), Ok(None));
        assert_eq!(asked(&join(json!({"since": 1})), false), Err(ReplayError::PublicChannel));
        assert_eq!(asked(&join(json!({"limit": 3})), true), Err(ReplayError::BadParams));
        assert_eq!(asked(&join(json!({"since": 5, "limit": 0})), true), Err(ReplayError::BadParams));
        assert_eq!(asked(&join(json!({"since": 5, "limit": 100})), true), Ok(Some(ReplayAsk { since_ms: 5, limit: 25 })));
        assert_eq!(asked(&join(json!({"since": 5})), true), Ok(Some(ReplayAsk { since_ms: 5, limit: 25 })));
    }
}
