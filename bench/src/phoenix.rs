//! The few Phoenix v2 frames a benchmark client sends and reads, as
//! supabase-js 2.x writes them. Pure: builds text and reads JSON, no IO.
//!
//! Outgoing: `phx_join` for one `postgres_changes` binding and the
//! `phoenix` heartbeat. Incoming: any `[join_ref, ref, topic, event,
//! payload]` array, plus helpers to read a join reply, a `system` message
//! and the benchmark's sequence number (column `n` of the changed row).

use serde_json::{json, Value};

/// A decoded server frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The frame's ref (`null` on pushes).
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// The ref every benchmark join uses (one channel per socket).
pub const JOIN_REF: &str = "1";

/// The URL of the realtime endpoint of the gateway at `addr`.
pub fn socket_url(addr: std::net::SocketAddr, apikey: &str) -> String {
    format!("ws://{addr}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0")
}

/// `phx_join` on `realtime:<channel>` for every event on `public.<table>`,
/// narrowed by `filter` when given, authorised by `token`.
pub fn join(channel: &str, table: &str, filter: Option<&str>, token: &str) -> String {
    let mut binding = json!({"event": "*", "schema": "public", "table": table});
    if let Some(f) = filter {
        binding["filter"] = json!(f);
    }
    let config = json!({
        "broadcast": {"self": false, "ack": false},
        "presence": {"key": ""},
        "postgres_changes": [binding],
        "private": false,
    });
    let payload = json!({"config": config, "access_token": token});
    json!([JOIN_REF, JOIN_REF, format!("realtime:{channel}"), "phx_join", payload]).to_string()
}

/// A heartbeat with ref `msg_ref`.
pub fn heartbeat(msg_ref: u64) -> String {
    json!([null, msg_ref.to_string(), "phoenix", "heartbeat", {}]).to_string()
}

/// Decodes a v2 frame; `None` for anything else.
pub fn decode(text: &str) -> Option<Incoming> {
    let v: Value = serde_json::from_str(text).ok()?;
    let [_, msg_ref, topic, event, payload] = <[Value; 5]>::try_from(v.as_array()?.clone()).ok()?;
    Some(Incoming {
        msg_ref: msg_ref.as_str().map(str::to_owned),
        topic: topic.as_str()?.to_owned(),
        event: event.as_str()?.to_owned(),
        payload,
    })
}

impl Incoming {
    /// Is this the reply to our join?
    pub fn is_join_reply(&self) -> bool {
        self.event == "phx_reply" && self.msg_ref.as_deref() == Some(JOIN_REF)
    }

    /// A reply's status, with the reason when it is not `ok`.
    pub fn reply_status(&self) -> String {
        let status = self.payload["status"].as_str().unwrap_or("?");
        match self.payload["response"].get("reason") {
            Some(reason) if status != "ok" => {
                format!("{status}: {}", reason.as_str().map(str::to_owned).unwrap_or_else(|| reason.to_string()))
            }
            _ => status.to_owned(),
        }
    }

    /// A `system` frame's message.
    pub fn system_message(&self) -> String {
        self.payload["message"].as_str().map(str::to_owned).unwrap_or_else(|| self.payload.to_string())
    }

    /// The sequence number (`record.n`) of a `postgres_changes` frame.
    pub fn change_seq(&self) -> Option<i64> {
        (self.event == "postgres_changes").then(|| self.payload["data"]["record"]["n"].as_i64()).flatten()
    }
}

/// A change frame's `record.n` read by scanning the text, without building a
/// JSON tree: the load generator shares the gateway's two cores, so every
/// microsecond it spends per frame shows up as fan-out latency. `None` when
/// the frame is not a `postgres_changes` frame with a numeric `record.n`.
pub fn quick_change_seq(text: &str) -> Option<i64> {
    let head = text.get(..text.len().min(96))?;
    if !head.contains("\"postgres_changes\"") {
        return None;
    }
    let record = text.find("\"record\":{")?;
    let rest = &text[record..];
    let n = rest.find("\"n\":")? + 4;
    let digits: &str = rest[n..].split(|c: char| !(c.is_ascii_digit() || c == '-')).next()?;
    digits.parse().ok()
}

/// The message that says a channel's change feed is live.
pub const SUBSCRIBED: &str = "Subscribed to PostgreSQL";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_scan_reads_the_same_seq_as_a_full_decode() {
        let frame = r#"[null,null,"realtime:all","postgres_changes",{"ids":[5],"data":{"schema":"public","table":"bench","commit_timestamp":"2026-01-01T00:00:00.000Z","type":"UPDATE","columns":[{"name":"id","type":"int4"},{"name":"n","type":"int4"}],"record":{"id":1,"n":17},"old_record":{"id":1},"errors":null}}]"#;
        assert_eq!(quick_change_seq(frame), Some(17));
        assert_eq!(decode(frame).unwrap().change_seq(), Some(17));
        assert_eq!(quick_change_seq(r#"[null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]"#), None);
    }

    #[test]
    fn a_join_carries_one_binding_with_its_filter_and_the_token() {
        let v: Value = serde_json::from_str(&join("own", "bench", Some("user_id=eq.u7"), "tok")).unwrap();
        assert_eq!(v[0], "1");
        assert_eq!(v[2], "realtime:own");
        assert_eq!(v[3], "phx_join");
        assert_eq!(v[4]["access_token"], "tok");
        assert_eq!(
            v[4]["config"]["postgres_changes"],
            json!([{"event": "*", "schema": "public", "table": "bench", "filter": "user_id=eq.u7"}])
        );
        assert_eq!(v[4]["config"]["presence"], json!({"key": ""}));
    }

    #[test]
    fn a_join_without_a_filter_has_no_filter_key() {
        let v: Value = serde_json::from_str(&join("b", "bench", None, "tok")).unwrap();
        assert!(v[4]["config"]["postgres_changes"][0].get("filter").is_none());
    }

    #[test]
    fn a_heartbeat_goes_to_the_phoenix_topic() {
        assert_eq!(heartbeat(12), r#"[null,"12","phoenix","heartbeat",{}]"#);
    }

    #[test]
    fn a_change_frame_yields_the_rows_sequence_number() {
        let text = r#"[null,null,"realtime:b","postgres_changes",{"ids":[1],"data":{"type":"UPDATE","record":{"id":1,"n":17}}}]"#;
        let f = decode(text).unwrap();
        assert_eq!(f.change_seq(), Some(17));
        assert!(!f.is_join_reply());
    }

    #[test]
    fn a_refused_join_reads_as_its_reason() {
        let f = decode(r#"["1","1","realtime:b","phx_reply",{"status":"error","response":{"reason":"Too many channels"}}]"#).unwrap();
        assert!(f.is_join_reply());
        assert_eq!(f.reply_status(), "error: Too many channels");
    }

    #[test]
    fn a_system_frame_reads_as_its_message() {
        let f = decode(r#"["1",null,"realtime:b","system",{"message":"Subscribed to PostgreSQL","status":"ok"}]"#).unwrap();
        assert_eq!(f.system_message(), SUBSCRIBED);
        assert_eq!(f.change_seq(), None);
    }

    #[test]
    fn anything_but_a_five_element_array_is_not_a_frame() {
        assert_eq!(decode(r#"{"topic":"x"}"#), None);
        assert_eq!(decode("[1,2,3]"), None);
        assert_eq!(decode("not json"), None);
    }
}
