//! Broadcasts sent from SQL (`realtime.send`, `realtime.send_binary`), as
//! the change listener reads them: `realtime.messages` rows.

use std::sync::Arc;

use bytes::Bytes;

use super::protocol::{self, Vsn};
use crate::changes::change::Change;

/// A broadcast sent from SQL (`realtime.send`, `realtime.send_binary`): a `realtime.messages` row.
pub(super) struct SqlBroadcast {
    /// `realtime:<topic>`.
    pub(super) topic: Arc<str>,
    pub(super) private: bool,
    event: String,
    body: SqlBody,
}

enum SqlBody {
    /// The `{type, event, payload}` text every serializer sends.
    Json(String),
    Binary(Vec<u8>),
}

impl SqlBroadcast {
    pub(super) fn read(message: &Change) -> Option<SqlBroadcast> {
        let row = message.record.as_ref()?;
        let text = |k: &str| row.get(k).and_then(serde_json::Value::as_str);
        let (topic, event) = (text("topic")?, text("event")?);
        if text("extension") != Some("broadcast") {
            return None;
        }
        let private = row.get("private").and_then(serde_json::Value::as_bool).unwrap_or(false);
        // send_binary(): to_jsonb writes bytea as "\x<hex>".
        let body = match text("binary_payload").and_then(hex_bytes) {
            Some(bytes) => SqlBody::Binary(bytes),
            None => {
                let payload = row.get("payload").cloned().unwrap_or(serde_json::Value::Null);
                SqlBody::Json(serde_json::json!({ "type": "broadcast", "event": event, "payload": payload }).to_string())
            }
        };
        Some(SqlBroadcast { topic: format!("realtime:{topic}").into(), private, event: event.to_owned(), body })
    }

    /// Its frame for a channel speaking `vsn`; none for a binary one to v1.
    pub(super) fn frame(&self, vsn: Vsn) -> Option<Bytes> {
        match &self.body {
            SqlBody::Json(body) => Some(Bytes::from(protocol::encode(vsn, None, None, &self.topic, "broadcast", body))),
            SqlBody::Binary(bytes) if vsn == Vsn::V2 => protocol::encode_user_broadcast(&self.topic, &self.event, "", bytes, false),
            SqlBody::Binary(_) => None,
        }
    }
}

/// The bytes of a `bytea` as `to_jsonb` writes it: `\x` and hex digits.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}
