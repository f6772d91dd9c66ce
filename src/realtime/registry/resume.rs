//! Channels resuming after a handoff: joined holding their live changes,
//! replayed what they missed (kept here, or read from the log by the
//! caller), then the held changes not already replayed, then live.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::sql::SqlBroadcast;
use super::{Delivered, Registry, Since, SubId, Subscription};
use crate::changes::change::{Change, TableMeta};
use crate::changes::window::Position;
use crate::realtime::outbox::Outbox;
use crate::realtime::payload::render_data;

/// What a resuming channel replays (`Registry::replay`).
pub struct Replay {
    /// Its frames, in order.
    pub frames: Vec<Bytes>,
    /// How many changes they carry.
    pub changes: usize,
    /// Every change id looked at: none of them is sent again from what was held.
    sent: HashSet<i64>,
}

impl Registry {
    /// Joins `sub` like `join`, for a channel resuming from change `from`
    /// after a handoff: its changes are held from now on, and it gets the
    /// delivered changes it may have missed that are still kept. Call
    /// `replay` next, with the log's changes when the kept ones are not complete.
    pub fn join_resuming(&self, sub: Subscription, outbox: &Outbox, frames: Vec<Bytes>, from: &Position) -> (SubId, Since) {
        *sub.held.lock().expect("held lock poisoned") = Some(Vec::new());
        sub.holding.store(true, Ordering::Release);
        let recent = self.inner.recent.lock().expect("recent lock poisoned");
        let id = self.join(sub, outbox, frames);
        let since = recent.since(from);
        (id, since)
    }

    /// The frames of a resuming channel's replay: `older` (read from the
    /// log), then the kept `since`, each change once, those it may see and
    /// its bindings match. Queue them, then call `take_held` until it is empty.
    pub fn replay(&self, id: SubId, older: &[Delivered], since: Since) -> Replay {
        let mut replay = Replay { frames: Vec::new(), changes: 0, sent: HashSet::new() };
        let Some(sub) = self.inner.subs.get(&id).map(|s| Arc::clone(&s)) else { return replay };
        for (change, meta) in older.iter().chain(&since.changes) {
            if replay.sent.insert(change.id) {
                let mine = sub.frames_for(change, meta.as_deref(), self.inner.max_record_bytes);
                replay.changes += usize::from(!mine.is_empty());
                replay.frames.extend(mine);
            }
        }
        self.count_deliveries("handoff_replay", replay.changes as u64);
        replay
    }

    /// What a resuming channel held while its replay was read and queued,
    /// less the changes the replay had: queue these and call again. When
    /// there is nothing left the channel is live (changes are queued
    /// directly from then on), and the answer is empty.
    pub fn take_held(&self, id: SubId, replay: &Replay) -> Vec<Bytes> {
        let Some(sub) = self.inner.subs.get(&id).map(|s| Arc::clone(&s)) else { return Vec::new() };
        let mut held = sub.held.lock().expect("held lock poisoned");
        let Some(frames) = held.as_mut() else { return Vec::new() };
        let fresh: Vec<Bytes> = frames.drain(..).filter(|(change, _)| !replay.sent.contains(change)).map(|(_, f)| f).collect();
        if fresh.is_empty() {
            *held = None;
            sub.holding.store(false, Ordering::Release);
        }
        fresh
    }
}

impl Subscription {
    /// The frames of `change` for this channel: a row change it may see
    /// that a binding matches, or a broadcast sent from SQL to its topic.
    fn frames_for(&self, change: &Change, meta: Option<&TableMeta>, max_record_bytes: usize) -> Vec<Bytes> {
        let Some(meta) = meta else {
            let sql = SqlBroadcast::read(change).filter(|b| *b.topic == *self.topic && b.private == self.private);
            return sql.and_then(|b| b.frame(self.route.vsn)).into_iter().collect();
        };
        let mut frames = Vec::new();
        self.matching(change, meta, |selection, ids| {
            let data = render_data(change, meta, max_record_bytes, selection);
            frames.push(Bytes::from(self.changes_frame(ids, &data)));
        });
        frames
    }
}
