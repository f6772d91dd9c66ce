//! The registry's side of many gateways on one database: what it hands the
//! cluster task to publish (its own presence and broadcasts), and the
//! presence of members tracked on other gateways, merged into the same
//! rosters so a joiner's `presence_state` and every `presence_diff` list
//! them beside local members.
//!
//! Publishing never waits: the queue to the cluster task is bounded, and a
//! full queue (the database is down or far behind) drops the message with a
//! warning, as a broadcast to a gateway that is gone would be lost anyway.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Registry, SubId, TopicKey};

/// A member tracked on another gateway: that gateway's id and its channel's id there.
pub type PeerMember = (Uuid, i64);

/// What this gateway tells the others.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Channel `sub` is present on `topic` with `fields` under `key`.
    Track { sub: SubId, topic: String, private: bool, key: String, fields: Map<String, Value> },
    /// Channel `sub` is no longer present.
    Untrack { sub: SubId },
    /// A JSON broadcast, as its frame's payload.
    Broadcast { topic: String, private: bool, payload: String },
    /// A broadcast with a binary payload.
    BinaryBroadcast { topic: String, private: bool, event: String, meta: String, payload: Vec<u8> },
}

impl Registry {
    /// Sends this gateway's presence and broadcasts to `cluster` from now on.
    pub fn set_cluster(&self, cluster: tokio::sync::mpsc::Sender<Outgoing>) {
        let _ = self.inner.cluster.set(cluster);
    }

    pub(super) fn publish(&self, message: Outgoing) {
        let Some(cluster) = self.inner.cluster.get() else { return };
        if cluster.try_send(message).is_err() {
            tracing::warn!("the queue to the other gateways is full or closed: a presence change or broadcast stays on this gateway");
        }
    }

    /// A member of another gateway is present with `fields`: diffs to this
    /// gateway's channels on the topic, as for a local track.
    pub fn peer_track(&self, member: PeerMember, topic: &str, private: bool, key: &str, fields: Map<String, Value>) {
        let topic_key: TopicKey = (Arc::from(topic), private);
        let mut rosters = self.inner.presence.lock().expect("presence lock poisoned");
        let mut remote = self.inner.remote.lock().expect("remote lock poisoned");
        let id = match remote.get(&member) {
            Some((id, known)) if *known == topic_key => *id,
            _ => {
                let id = self.inner.next_remote.fetch_add(1, Ordering::Relaxed);
                remote.insert(member, (id, topic_key.clone()));
                id
            }
        };
        for diff in rosters.entry(topic_key).or_default().track(id, key, fields) {
            self.send_diff(topic, private, &diff);
        }
    }

    /// A member of another gateway is gone (untracked, left, or its gateway died).
    pub fn peer_untrack(&self, member: PeerMember) {
        let mut rosters = self.inner.presence.lock().expect("presence lock poisoned");
        let Some((id, topic_key)) = self.inner.remote.lock().expect("remote lock poisoned").remove(&member) else { return };
        let Some(roster) = rosters.get_mut(&topic_key) else { return };
        if let Some(diff) = roster.untrack(id) {
            self.send_diff(&topic_key.0, topic_key.1, &diff);
        }
        if roster.is_empty() {
            rosters.remove(&topic_key);
        }
    }

    /// Members of other gateways known here.
    pub fn peer_members(&self) -> usize {
        self.inner.remote.lock().expect("remote lock poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::outbox::{Bounds, Outbox};
    use crate::realtime::protocol::Vsn;
    use crate::realtime::registry::{Route, Subscription};

    fn watcher(registry: &Registry, topic: &str) -> Outbox {
        let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
        let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
        let sub = Subscription::new(Arc::from(topic), route, crate::auth::Principal::new("anon", None, i64::MAX), Vec::new(), false)
            .with_presence(true, "me".into(), Some("1".into()));
        registry.join(sub, &outbox, Vec::new());
        outbox
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        outbox.take_frames().iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_peer_member_joins_and_leaves_like_a_local_one_and_is_in_a_joiners_state() {
        let registry = Registry::new(1 << 20);
        let early = watcher(&registry, "realtime:room");
        assert!(texts(&early)[0].contains("presence_state"));
        let node = Uuid::new_v4();
        registry.peer_track((node, 7), "realtime:room", false, "ann", serde_json::json!({"tab": 1}).as_object().cloned().unwrap());
        let diff = texts(&early);
        assert!(diff[0].contains("presence_diff") && diff[0].contains("\"ann\"") && diff[0].contains("\"tab\":1"), "{diff:?}");
        let late = watcher(&registry, "realtime:room");
        let state = texts(&late);
        assert!(state[0].contains("presence_state") && state[0].contains("\"ann\""), "{state:?}");
        assert_eq!(registry.peer_members(), 1);
        registry.peer_untrack((node, 7));
        let leave = texts(&early);
        assert!(leave[0].contains("presence_diff") && leave[0].contains("\"leaves\":{\"ann\""), "{leave:?}");
        assert_eq!(registry.peer_members(), 0);
        registry.peer_untrack((node, 7));
        assert!(texts(&early).is_empty(), "a second untrack of a gone member sends nothing");
    }

    #[tokio::test]
    async fn local_presence_and_broadcasts_are_published_and_a_peers_are_not() {
        let registry = Registry::new(1 << 20);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        registry.set_cluster(tx);
        registry.broadcast(super::super::Origin::Rest, "realtime:room", false, "{}");
        registry.broadcast(super::super::Origin::Peer, "realtime:room", false, "{}");
        registry.broadcast(super::super::Origin::Sql, "realtime:room", false, "{}");
        assert_eq!(rx.try_recv().unwrap(), Outgoing::Broadcast { topic: "realtime:room".into(), private: false, payload: "{}".into() });
        assert!(rx.try_recv().is_err(), "peer and SQL broadcasts reach every gateway through the log already");
    }
}
