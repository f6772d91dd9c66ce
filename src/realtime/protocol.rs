//! Phoenix framing as Supabase Realtime speaks it. Pure: bytes in, frames out.
//!
//! vsn 1.0.0 frames are JSON objects (the server never sends `join_ref`);
//! vsn 2.0.0 frames are `[join_ref, ref, topic, event, payload]` arrays, plus
//! binary kind-3 broadcast pushes from clients. The server only ever emits
//! text frames. Payloads are carried as raw JSON text so that a change
//! serialized once can be shared by every socket that receives it.

use serde_json::{json, Value};

/// Which serializer a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// Objects; `join_ref` dropped on output.
    V1,
    /// Five-element arrays.
    V2,
}

impl Vsn {
    /// From the `vsn` query parameter; absent means 1.0.0 as on the server.
    pub fn parse(text: Option<&str>) -> Result<Vsn, ProtocolError> {
        match text {
            None => Ok(Vsn::V1),
            Some(v) if v.starts_with("1.") => Ok(Vsn::V1),
            Some(v) if v.starts_with("2.") => Ok(Vsn::V2),
            Some(v) => Err(ProtocolError::UnsupportedVsn(v.to_owned())),
        }
    }
}

/// A frame that could not be decoded; the socket logs it and carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unsupported vsn {0:?}: use 1.0.0 or 2.0.0")]
    UnsupportedVsn(String),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The channel's join ref, if any.
    pub join_ref: Option<String>,
    /// This message's ref, echoed in the reply.
    pub msg_ref: Option<String>,
    /// `phoenix` or `realtime:<name>`.
    pub topic: String,
    /// `phx_join`, `heartbeat`, `access_token`, ...
    pub event: String,
    /// The payload object.
    pub payload: Value,
    /// A kind-3 broadcast's raw payload when its encoding is binary (0); the
    /// payload object then carries `payload: null`.
    pub binary: Option<bytes::Bytes>,
}

/// The first byte of a kind-4 (user broadcast) frame. No JSON text starts
/// with it, so the writer tells binary frames from text ones by it.
pub const USER_BROADCAST: u8 = 4;

fn malformed(why: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed(why.into())
}

fn opt_ref(v: Option<&Value>) -> Result<Option<String>, ProtocolError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(malformed("refs must be strings or null")),
    }
}

fn req_str(v: Option<&Value>, what: &str) -> Result<String, ProtocolError> {
    v.and_then(Value::as_str).map(str::to_owned).ok_or_else(|| malformed(format!("{what} must be a string")))
}

/// Decodes a text frame.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
    match (vsn, value) {
        (Vsn::V2, Value::Array(items)) if items.len() >= 5 => Ok(Inbound {
            join_ref: opt_ref(items.first())?,
            msg_ref: opt_ref(items.get(1))?,
            topic: req_str(items.get(2), "topic")?,
            event: req_str(items.get(3), "event")?,
            payload: items[4].clone(),
            binary: None,
        }),
        (Vsn::V2, _) => Err(malformed("expected an array of 5 elements")),
        (Vsn::V1, Value::Object(map)) => Ok(Inbound {
            join_ref: opt_ref(map.get("join_ref"))?,
            msg_ref: opt_ref(map.get("ref"))?,
            topic: req_str(map.get("topic"), "topic")?,
            event: req_str(map.get("event"), "event")?,
            payload: map.get("payload").cloned().unwrap_or(Value::Null),
            binary: None,
        }),
        (Vsn::V1, _) => Err(malformed("expected a JSON object")),
    }
}

/// Decodes a binary frame: only kind 3 (user broadcast push) is defined.
///
/// Becomes a `broadcast` event with payload `{type, event, payload}` like the
/// text form, so the rest of the server sees one shape.
pub fn decode_binary(bytes: &[u8]) -> Result<Inbound, ProtocolError> {
    let [kind, jr_len, ref_len, topic_len, event_len, meta_len, encoding, rest @ ..] = bytes else {
        return Err(malformed("binary frame shorter than its 7-byte header"));
    };
    if *kind != 3 {
        return Err(malformed(format!("unsupported binary frame kind {kind}")));
    }
    let mut rest = rest;
    let mut take = |len: u8, what: &str| -> Result<String, ProtocolError> {
        let len = len as usize;
        if rest.len() < len {
            return Err(malformed(format!("binary frame truncated in {what}")));
        }
        let (head, tail) = rest.split_at(len);
        rest = tail;
        String::from_utf8(head.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
    };
    let join_ref = take(*jr_len, "join_ref")?;
    let msg_ref = take(*ref_len, "ref")?;
    let topic = take(*topic_len, "topic")?;
    let user_event = take(*event_len, "event")?;
    let meta = take(*meta_len, "metadata")?;
    let (body, binary) = match encoding {
        1 => (serde_json::from_slice(rest).map_err(|_| malformed("broadcast payload is not JSON"))?, None),
        0 => (Value::Null, Some(bytes::Bytes::copy_from_slice(rest))),
        e => return Err(malformed(format!("unknown payload encoding {e}"))),
    };
    let mut payload = json!({ "type": "broadcast", "event": user_event, "payload": body });
    if !meta.is_empty() {
        payload["meta"] = serde_json::from_str(&meta).map_err(|_| malformed("metadata is not JSON"))?;
    }
    Ok(Inbound {
        join_ref: Some(join_ref).filter(|s| !s.is_empty()),
        msg_ref: Some(msg_ref).filter(|s| !s.is_empty()),
        topic,
        event: "broadcast".into(),
        payload,
        binary,
    })
}

/// A kind-4 user broadcast frame (server to a v2 client): topic, event,
/// metadata JSON (or empty) and the payload, raw (`json` false) or JSON text.
/// `None` when a field is longer than its one-byte length allows.
pub fn encode_user_broadcast(topic: &str, event: &str, meta: &str, payload: &[u8], json: bool) -> Option<bytes::Bytes> {
    let len = |s: &str| u8::try_from(s.len()).ok();
    let (t, e, m) = (len(topic)?, len(event)?, len(meta)?);
    let mut out = Vec::with_capacity(5 + topic.len() + event.len() + meta.len() + payload.len());
    out.extend_from_slice(&[USER_BROADCAST, t, e, m, u8::from(json)]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(payload);
    Some(out.into())
}

/// Encodes one outgoing frame; `payload` must already be JSON text.
pub fn encode(vsn: Vsn, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, event: &str, payload: &str) -> String {
    let s = |v: Option<&str>| v.map_or_else(|| "null".to_owned(), |v| Value::from(v).to_string());
    let topic = Value::from(topic).to_string();
    let event = Value::from(event).to_string();
    match vsn {
        Vsn::V1 => format!(r#"{{"topic":{topic},"event":{event},"payload":{payload},"ref":{}}}"#, s(msg_ref)),
        Vsn::V2 => format!("[{},{},{topic},{event},{payload}]", s(join_ref), s(msg_ref)),
    }
}

/// The payload of an `ok` reply.
pub fn reply_ok(response: &Value) -> String {
    json!({ "status": "ok", "response": response }).to_string()
}

/// The payload of an `error` reply with Supabase's `Code: message` reason.
pub fn reply_error(reason: &str) -> String {
    json!({ "status": "error", "response": { "reason": reason } }).to_string()
}

/// The payload of an `error` reply whose response is `response` itself
/// (Supabase's presence errors and oversized acked broadcasts).
pub fn reply_status_error(response: &Value) -> String {
    json!({ "status": "error", "response": response }).to_string()
}

/// The payload of a `system` message; `channel` is the topic without `realtime:`.
pub fn system(extension: &str, ok: bool, message: &str, channel: &str) -> String {
    let status = if ok { "ok" } else { "error" };
    json!({ "extension": extension, "status": status, "message": message, "channel": channel }).to_string()
}

/// The payload of a `postgres_changes` frame: the shared `data` JSON with this channel's binding ids.
pub fn postgres_changes(ids: &[u32], data: &str) -> String {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!(r#"{{"ids":[{}],"data":{data}}}"#, ids.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_arrays_decode_with_null_refs() {
        let m = decode_text(Vsn::V2, r#"[null,"10","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!((m.join_ref, m.msg_ref.as_deref(), m.topic.as_str()), (None, Some("10"), "phoenix"));
    }

    #[test]
    fn v1_objects_decode_with_their_join_ref() {
        let m = decode_text(Vsn::V1, r#"{"topic":"realtime:r","event":"phx_join","payload":{},"ref":"6","join_ref":"6"}"#).unwrap();
        assert_eq!((m.join_ref.as_deref(), m.event.as_str()), (Some("6"), "phx_join"));
    }

    #[test]
    fn short_arrays_and_wrong_shapes_are_malformed() {
        assert!(decode_text(Vsn::V2, r#"[null,"1","phoenix","heartbeat"]"#).is_err());
        assert!(decode_text(Vsn::V2, r#"{"topic":"x"}"#).is_err());
        assert!(decode_text(Vsn::V1, "[1,2,3,4,5]").is_err());
        assert!(decode_text(Vsn::V1, "not json").is_err());
        assert!(decode_text(Vsn::V2, r#"[null,"1",5,"heartbeat",{}]"#).is_err());
    }

    #[test]
    fn the_observed_kind_3_frame_decodes_to_a_broadcast() {
        let mut frame = vec![3, 1, 1, 14, 6, 0, 1];
        frame.extend_from_slice(b"67realtime:room1cursor{\"x\":1}");
        let m = decode_binary(&frame).unwrap();
        assert_eq!((m.join_ref.as_deref(), m.msg_ref.as_deref(), m.topic.as_str()), (Some("6"), Some("7"), "realtime:room1"));
        assert_eq!(m.payload, json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}}));
    }

    #[test]
    fn truncated_or_unknown_binary_frames_are_errors_not_panics() {
        assert!(decode_binary(&[3, 1, 1]).is_err());
        assert!(decode_binary(&[3, 9, 9, 9, 9, 0, 1, b'a']).is_err());
        assert!(decode_binary(&[4, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(decode_binary(&[3, 0, 0, 0, 0, 0, 7]).is_err());
        let mut multi = vec![3, 0, 0, 2, 1, 0, 1];
        multi.extend_from_slice(&[0xc3, 0x28]);
        assert!(decode_binary(&multi).is_err());
    }

    #[test]
    fn v1_output_drops_join_ref_and_v2_keeps_the_array_order() {
        let v1 = encode(Vsn::V1, Some("6"), Some("6"), "realtime:r", "phx_reply", "{}");
        assert_eq!(v1, r#"{"topic":"realtime:r","event":"phx_reply","payload":{},"ref":"6"}"#);
        let v2 = encode(Vsn::V2, None, None, "realtime:r", "postgres_changes", "{}");
        assert_eq!(v2, r#"[null,null,"realtime:r","postgres_changes",{}]"#);
    }

    #[test]
    fn change_payloads_carry_numeric_ids() {
        assert_eq!(postgres_changes(&[7, 9], r#"{"a":1}"#), r#"{"ids":[7,9],"data":{"a":1}}"#);
    }

    #[test]
    fn vsn_defaults_to_one_and_rejects_unknown_versions() {
        assert_eq!(Vsn::parse(None), Ok(Vsn::V1));
        assert_eq!(Vsn::parse(Some("2.0.0")), Ok(Vsn::V2));
        assert!(Vsn::parse(Some("3.0.0")).is_err());
    }
}
