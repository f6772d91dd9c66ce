//! Who is present on one topic, and the `presence_state` / `presence_diff`
//! payloads that say so. Pure.
//!
//! Phoenix Presence's shapes, as realtime-js reads them: members are grouped
//! by key (`config.presence.key`, else one the server makes), each key has a
//! list of metas, and each meta is one channel's tracked payload plus a
//! `phx_ref` naming that track. One channel holds at most one meta: tracking
//! again with the same payload changes nothing, with another payload it is a
//! leave of the old meta and then a join (carrying `phx_ref_prev`), sent as
//! two diffs in that order. One diff holding both would be Phoenix's form,
//! but realtime-js 2.109 applies a diff's joins first and, in its join
//! callback, strips `phx_ref` from the metas already held for that key, so
//! the leave that follows no longer matches and the old meta stays forever.
//! Untracking, leaving and a dead socket are leaves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

/// One channel's presence: its key and its tracked payload.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    key: String,
    phx_ref: String,
    fields: Map<String, Value>,
    /// When it was first tracked, to list metas in arrival order.
    seq: u64,
}

/// The members of one topic, by the channel (subscription id) that tracked them.
#[derive(Debug, Default)]
pub struct Roster {
    members: BTreeMap<u64, Member>,
}

/// What a track or untrack changed, ready to send as `presence_diff`.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    joins: Vec<(String, Value)>,
    leaves: Vec<(String, Value)>,
}

/// Makes `phx_ref`s unique within the process.
static NEXT_REF: AtomicU64 = AtomicU64::new(1);

fn new_ref() -> String {
    format!("F{:x}", NEXT_REF.fetch_add(1, Ordering::Relaxed))
}

fn meta(m: &Member, prev: Option<&str>) -> Value {
    let mut obj = m.fields.clone();
    obj.insert("phx_ref".into(), json!(m.phx_ref));
    if let Some(prev) = prev {
        obj.insert("phx_ref_prev".into(), json!(prev));
    }
    Value::Object(obj)
}

impl Roster {
    /// Channel `channel` tracks `fields` under `key`: the diffs to send, in
    /// order (none when nothing changed; a leave and a join for a new payload).
    pub fn track(&mut self, channel: u64, key: &str, fields: Map<String, Value>) -> Vec<Diff> {
        let mut diffs = Vec::new();
        let (seq, prev) = match self.members.get(&channel) {
            Some(old) if old.fields == fields && old.key == key => return diffs,
            Some(old) => {
                diffs.push(Diff { joins: Vec::new(), leaves: vec![(old.key.clone(), meta(old, None))] });
                (old.seq, Some(old.phx_ref.clone()))
            }
            None => (NEXT_REF.fetch_add(1, Ordering::Relaxed), None),
        };
        let member = Member { key: key.to_owned(), phx_ref: new_ref(), fields, seq };
        diffs.push(Diff { joins: vec![(member.key.clone(), meta(&member, prev.as_deref()))], leaves: Vec::new() });
        self.members.insert(channel, member);
        diffs
    }

    /// Channel `channel` stops being present; `None` when it was not.
    pub fn untrack(&mut self, channel: u64) -> Option<Diff> {
        let old = self.members.remove(&channel)?;
        Some(Diff { joins: Vec::new(), leaves: vec![(old.key.clone(), meta(&old, None))] })
    }

    /// True when no one is present.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members tracked (one per tracking channel).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether `channel` is present.
    pub fn has(&self, channel: u64) -> bool {
        self.members.contains_key(&channel)
    }

    /// The `presence_state` payload: `{key: {metas: [...]}}`.
    pub fn state(&self) -> Value {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        let mut out = Map::new();
        for m in members {
            push_meta(&mut out, &m.key, meta(m, None));
        }
        Value::Object(out)
    }
}

fn push_meta(out: &mut Map<String, Value>, key: &str, meta: Value) {
    let entry = out.entry(key.to_owned()).or_insert_with(|| json!({ "metas": [] }));
    if let Some(metas) = entry.get_mut("metas").and_then(Value::as_array_mut) {
        metas.push(meta);
    }
}

impl Diff {
    /// The `presence_diff` payload: `{joins: {...}, leaves: {...}}`.
    pub fn payload(&self) -> Value {
        let group = |items: &[(String, Value)]| {
            let mut out = Map::new();
            for (key, meta) in items {
                push_meta(&mut out, key, meta.clone());
            }
            Value::Object(out)
        };
        json!({ "joins": group(&self.joins), "leaves": group(&self.leaves) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_track_joins_a_retrack_with_the_same_payload_does_nothing_and_a_new_payload_replaces_the_meta() {
        let mut r = Roster::default();
        let d = r.track(1, "ann", fields(json!({"status": "watching"})))[0].payload();
        let first_ref = d["joins"]["ann"]["metas"][0]["phx_ref"].as_str().unwrap().to_owned();
        assert_eq!(d["joins"]["ann"]["metas"][0]["status"], "watching");
        assert_eq!(d["leaves"], json!({}));
        assert!(r.track(1, "ann", fields(json!({"status": "watching"}))).is_empty());
        let diffs: Vec<Value> = r.track(1, "ann", fields(json!({"status": "typing"}))).iter().map(Diff::payload).collect();
        assert_eq!(diffs.len(), 2, "the leave goes first, on its own");
        assert_eq!(diffs[0]["leaves"]["ann"]["metas"][0]["phx_ref"], first_ref.as_str());
        assert_eq!(diffs[0]["joins"], json!({}));
        assert_eq!(diffs[1]["joins"]["ann"]["metas"][0]["phx_ref_prev"], first_ref.as_str());
        assert_eq!(r.state()["ann"]["metas"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn two_channels_with_one_key_are_two_metas_and_an_untrack_leaves_only_its_own() {
        let mut r = Roster::default();
        r.track(1, "ann", fields(json!({"tab": 1})));
        r.track(2, "ann", fields(json!({"tab": 2})));
        r.track(3, "ben", Map::new());
        let state = r.state();
        assert_eq!(state["ann"]["metas"].as_array().unwrap().len(), 2);
        assert_eq!(state["ann"]["metas"][0]["tab"], 1, "metas in arrival order");
        let d = r.untrack(1).unwrap().payload();
        assert_eq!(d["leaves"]["ann"]["metas"][0]["tab"], 1);
        assert_eq!(r.state()["ann"]["metas"].as_array().unwrap().len(), 1);
        assert!(r.untrack(1).is_none());
    }
}
