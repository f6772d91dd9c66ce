//! Presence on the registry: joining with a `presence_state`, tracking,
//! untracking and leaving, and the `presence_diff` each of those sends.
//!
//! Every presence change and every join that reads a state happen under one
//! lock (`Inner::presence`), so a joiner's state and the diffs after it are
//! in order: it either sees a member in its state or gets the diff that adds
//! it, never both and never neither. Diffs go to the topic's channels that
//! have presence on, the tracker's own included, as Phoenix sends them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{FrameCache, Outgoing, Registry, SubId, Subscription};
use crate::realtime::outbox::Outbox;
use crate::realtime::presence::{Diff, Roster};
use crate::realtime::protocol;

impl Registry {
    /// Presence members tracked on every topic.
    pub fn presence_members(&self) -> usize {
        self.inner.presence.lock().expect("presence lock poisoned").values().map(Roster::len).sum()
    }

    /// Queues `frames` on `outbox`, then the topic's `presence_state` when
    /// `sub` has presence on, and makes `sub` live before anything else can
    /// be queued behind them.
    pub fn join(&self, sub: Subscription, outbox: &Outbox, mut frames: Vec<Bytes>) -> SubId {
        if !sub.presence_enabled.load(Ordering::Relaxed) {
            // No state to read, no diffs to order against: joins without presence skip the lock.
            return outbox.push_then(frames, || self.insert(sub));
        }
        let rosters = self.inner.presence.lock().expect("presence lock poisoned");
        let state = rosters.get(&sub.topic_key()).map_or_else(|| json!({}), Roster::state);
        frames.push(state_frame(&sub, &state));
        outbox.push_then(frames, || self.insert(sub))
    }

    /// Channel `id` is present with `fields`. A channel that had presence off
    /// turns it on and gets the state, as Supabase's resync does.
    pub fn track(&self, id: SubId, fields: Map<String, Value>) {
        let Some(sub) = self.inner.subs.get(&id).map(|s| Arc::clone(&s)) else { return };
        let mut rosters = self.inner.presence.lock().expect("presence lock poisoned");
        let roster = rosters.entry(sub.topic_key()).or_default();
        let diffs = roster.track(id, &sub.presence_key, fields.clone());
        for diff in &diffs {
            self.send_diff(&sub.topic, sub.private, diff);
        }
        if !diffs.is_empty() {
            self.publish(Outgoing::Track {
                sub: id,
                topic: sub.topic.to_string(),
                private: sub.private,
                key: sub.presence_key.clone(),
                fields,
            });
        }
        if !sub.presence_enabled.swap(true, Ordering::Relaxed) {
            sub.route.outbox.push(state_frame(&sub, &roster.state()));
        }
    }

    /// Channel `id` is no longer present.
    pub fn untrack(&self, id: SubId) {
        if let Some(sub) = self.inner.subs.get(&id).map(|s| Arc::clone(&s)) {
            self.untrack_sub(id, &sub);
        }
    }

    /// `sub` (live or just removed) is no longer present.
    pub(super) fn untrack_sub(&self, id: SubId, sub: &Subscription) {
        let mut rosters = self.inner.presence.lock().expect("presence lock poisoned");
        let Some(roster) = rosters.get_mut(&sub.topic_key()) else { return };
        if let Some(diff) = roster.untrack(id) {
            self.send_diff(&sub.topic, sub.private, &diff);
            self.publish(Outgoing::Untrack { sub: id });
        }
        if roster.is_empty() {
            rosters.remove(&sub.topic_key());
        }
    }

    /// Sends `diff` to the channels on `topic` (in its namespace) that have presence on.
    pub(super) fn send_diff(&self, topic: &str, private: bool, diff: &Diff) {
        let payload = diff.payload().to_string();
        let mut frames = FrameCache::default();
        for (_, sub) in self.on_topic(topic, private) {
            if sub.presence_enabled.load(Ordering::Relaxed) {
                let vsn = sub.route.vsn;
                let frame = frames.get(&sub.topic, &[], vsn, || protocol::encode(vsn, None, None, topic, "presence_diff", &payload));
                sub.route.outbox.push(frame);
            }
        }
    }
}

fn state_frame(sub: &Subscription, state: &Value) -> Bytes {
    let text = protocol::encode(sub.route.vsn, sub.join_ref.as_deref(), None, &sub.topic, "presence_state", &state.to_string());
    Bytes::from(text)
}
