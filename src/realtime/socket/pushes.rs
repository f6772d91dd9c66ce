//! A joined channel's own pushes: `broadcast` and `presence` (track and
//! untrack), with Supabase's limits, replies and, on private channels, the
//! write rights its policies gave at join.

use serde_json::{json, Value};

use super::Conn;
use crate::realtime::protocol::{self, Inbound};
use crate::realtime::registry::Origin;

impl Conn {
    /// Relays a broadcast to the topic's other channels (and its own with `self`).
    /// A private channel whose policies deny sending is ignored without a reply,
    /// even with `ack`, as on Supabase (the client times out).
    pub(super) fn broadcast(&mut self, m: &Inbound) {
        let joined = &self.channels[&m.topic];
        let (sub, ack, private) = (joined.sub, joined.ack, joined.policies.is_some());
        if !joined.may_send() {
            return;
        }
        if let Some(bytes) = &m.binary {
            return self.broadcast_binary(m, bytes);
        }
        let mut payload = m.payload.clone();
        if let Some(obj) = payload.as_object_mut() {
            obj.entry("type").or_insert(json!("broadcast"));
        }
        let text = payload.to_string();
        if text.len() > self.ctx.limits.max_payload_bytes() {
            // Supabase drops it; with `ack` the sender hears why (the documented object form).
            if ack {
                self.reply(m, &protocol::reply_status_error(&json!({"error": "payload_size_exceeded"})));
            }
            return;
        }
        self.ctx.registry.broadcast(Origin::Socket(sub), &m.topic, private, &text);
        if ack {
            self.reply(m, &protocol::reply_ok(&json!({})));
        }
    }

    /// A kind-3 push with a binary payload: relayed as kind 4 to v2 channels.
    fn broadcast_binary(&mut self, m: &Inbound, bytes: &[u8]) {
        let joined = &self.channels[&m.topic];
        let (sub, ack, private) = (joined.sub, joined.ack, joined.policies.is_some());
        if bytes.len() > self.ctx.limits.max_payload_bytes() {
            if ack {
                self.reply(m, &protocol::reply_status_error(&json!({"error": "payload_size_exceeded"})));
            }
            return;
        }
        let event = m.payload.get("event").and_then(Value::as_str).unwrap_or_default();
        let meta = m.payload.get("meta").map(Value::to_string).unwrap_or_default();
        self.ctx.registry.broadcast_binary(Origin::Socket(sub), &m.topic, private, event, &meta, bytes);
        if ack {
            self.reply(m, &protocol::reply_ok(&json!({})));
        }
    }

    /// `track` and `untrack`, with Supabase's replies and limits; on a private
    /// channel whose policies deny presence writes, an empty error reply.
    pub(super) fn presence(&mut self, m: &Inbound) {
        let joined = &self.channels[&m.topic];
        let sub = joined.sub;
        if !joined.may_track() {
            return self.reply(m, &protocol::reply_status_error(&json!({})));
        }
        if joined.presence_calls.check().is_err() {
            return self.shut_channel(&m.topic, "Client presence rate limit exceeded");
        }
        let event = m.payload.get("event").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        match event.as_str() {
            "track" => {
                let fields = match m.payload.get("payload") {
                    None => serde_json::Map::new(),
                    Some(Value::Object(fields)) => fields.clone(),
                    Some(_) => return self.reply(m, &protocol::reply_error("Presence track payload must be a map")),
                };
                if serde_json::to_vec(&fields).map_or(0, |v| v.len()) > self.ctx.limits.max_payload_bytes() {
                    return self.shut_channel(&m.topic, "Track message size exceeded");
                }
                self.reply(m, &protocol::reply_ok(&json!({})));
                self.ctx.registry.track(sub, fields);
            }
            "untrack" => {
                self.reply(m, &protocol::reply_ok(&json!({})));
                self.ctx.registry.untrack(sub);
            }
            _ => self.reply(m, &protocol::reply_status_error(&json!({}))),
        }
    }
}
