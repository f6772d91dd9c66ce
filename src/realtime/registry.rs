//! Who is subscribed to what, and the fan-out of each change to them.
//!
//! Owns the live subscriptions (one per joined channel) indexed by the user id
//! whose rows they may see, so a change of an owner-column table is checked
//! against that user's channels and the service-role ones only, never
//! against every subscriber. Authorisation is decided before anything is
//! queued; the change's `data` is serialized once and shared. Owns the
//! per-socket `Outbox` and its slow-consumer rule; not the socket itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::filter::{self, Compiled, Condition};
use crate::auth::Principal;
use crate::changes::change::{render_data, Change, Op, TableMeta};
use crate::changes::listener::ChangeSink;

/// Identifies one subscription (one joined channel).
pub type SubId = u64;

/// A frame waiting in a socket's outgoing queue.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A `postgres_changes` frame: this channel's matching binding ids and the shared data.
    Change { topic: Arc<str>, ids: Vec<u32>, data: Arc<str> },
    /// A `broadcast` frame with its shared payload JSON.
    Broadcast { topic: Arc<str>, payload: Arc<str> },
}

/// The sending half of a socket's bounded queue. A full queue marks the
/// socket slow: it is closed with a reason rather than buffered without bound.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    slow: CancellationToken,
}

impl Outbox {
    /// A queue of `capacity` frames; the receiver belongs to the socket task.
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Outgoing>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let slow = CancellationToken::new();
        (Outbox { tx, slow: slow.clone() }, rx, slow)
    }

    fn push(&self, frame: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(frame) {
            if !self.slow.is_cancelled() {
                tracing::warn!("a socket's outgoing queue is full: closing it as a slow consumer");
            }
            self.slow.cancel();
        }
    }
}

/// Which change types a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFilter {
    All,
    Only(Op),
}

/// One `postgres_changes` binding of a channel, validated.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The id echoed in the join reply and sent in `ids`.
    pub id: u32,
    pub event: EventFilter,
    /// A schema name or `*`.
    pub schema: String,
    /// A table name, or `None` for every table of the schema.
    pub table: Option<String>,
    pub conditions: Vec<Condition>,
    /// The filter typed against the table, when the table is named.
    pub compiled: Option<Compiled>,
}

impl Binding {
    fn matches(&self, change: &Change, meta: &TableMeta) -> bool {
        let event_ok = match self.event {
            EventFilter::All => true,
            EventFilter::Only(op) => op == change.op,
        };
        let place_ok = (self.schema == "*" || self.schema == meta.schema) && self.table.as_ref().is_none_or(|t| *t == meta.table);
        event_ok && place_ok && self.filter_holds(change, meta)
    }

    fn filter_holds(&self, change: &Change, meta: &TableMeta) -> bool {
        let Some(row) = change.filter_row() else { return false };
        match &self.compiled {
            Some(compiled) => compiled.matches(row),
            None if self.conditions.is_empty() => true,
            // A wildcard binding's filter is typed per table; a table it does not fit sees nothing.
            None => filter::compile(&self.conditions, &meta.column_types()).is_ok_and(|c| c.matches(row)),
        }
    }
}

/// One joined channel of one socket.
pub struct Subscription {
    pub topic: Arc<str>,
    outbox: Outbox,
    principal: RwLock<Principal>,
    bindings: Vec<Binding>,
    /// Receives broadcasts it sends itself (`config.broadcast.self`).
    pub broadcast_self: bool,
}

impl Subscription {
    /// A subscription of `topic` for `principal`.
    pub fn new(topic: Arc<str>, outbox: Outbox, principal: Principal, bindings: Vec<Binding>, broadcast_self: bool) -> Self {
        Subscription { topic, outbox, principal: RwLock::new(principal), bindings, broadcast_self }
    }

    fn principal(&self) -> Principal {
        self.principal.read().expect("principal lock poisoned").clone()
    }

    fn matching_ids(&self, change: &Change, meta: &TableMeta) -> Vec<u32> {
        let principal = self.principal.read().expect("principal lock poisoned");
        if !(meta.public || principal.sees_owner(change.owner.as_deref())) {
            return Vec::new();
        }
        drop(principal);
        let mut ids: Vec<u32> = self.bindings.iter().filter(|b| b.matches(change, meta)).map(|b| b.id).collect();
        ids.dedup();
        ids
    }
}

/// Cheap-clone handle to every live subscription.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    subs: DashMap<SubId, Arc<Subscription>>,
    by_owner: DashMap<String, HashSet<SubId>>,
    service: DashMap<SubId, ()>,
    next_id: AtomicU64,
    max_record_bytes: usize,
}

#[derive(Clone, Copy)]
enum IndexOp {
    Add,
    Remove,
}

impl Registry {
    /// An empty registry; records over `max_record_bytes` are trimmed.
    pub fn new(max_record_bytes: usize) -> Self {
        let inner = Inner {
            subs: DashMap::new(),
            by_owner: DashMap::new(),
            service: DashMap::new(),
            next_id: AtomicU64::new(1),
            max_record_bytes,
        };
        Registry { inner: Arc::new(inner) }
    }

    /// Makes `sub` live; changes read from now on reach it.
    pub fn insert(&self, sub: Subscription) -> SubId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let principal = sub.principal();
        self.inner.subs.insert(id, Arc::new(sub));
        self.index(id, &principal, IndexOp::Add);
        id
    }

    /// Drops a subscription.
    pub fn remove(&self, id: SubId) {
        if let Some((_, sub)) = self.inner.subs.remove(&id) {
            self.index(id, &sub.principal(), IndexOp::Remove);
        }
    }

    /// Re-authorises a subscription with a new token's principal.
    pub fn set_principal(&self, id: SubId, principal: Principal) {
        let Some(sub) = self.inner.subs.get(&id).map(|s| Arc::clone(&s)) else { return };
        let old = std::mem::replace(&mut *sub.principal.write().expect("principal lock poisoned"), principal.clone());
        self.index(id, &old, IndexOp::Remove);
        self.index(id, &principal, IndexOp::Add);
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.inner.subs.len()
    }

    /// True when nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.inner.subs.is_empty()
    }

    fn index(&self, id: SubId, principal: &Principal, op: IndexOp) {
        if principal.is_service() {
            match op {
                IndexOp::Add => self.inner.service.insert(id, ()),
                IndexOp::Remove => self.inner.service.remove(&id).map(|_| ()),
            };
        } else if let Some(owner) = principal.owner_id() {
            match op {
                IndexOp::Add => {
                    self.inner.by_owner.entry(owner.to_owned()).or_default().insert(id);
                }
                IndexOp::Remove => {
                    self.inner.by_owner.remove_if_mut(owner, |_, set| {
                        set.remove(&id);
                        set.is_empty()
                    });
                }
            }
        }
    }

    fn candidates(&self, change: &Change, meta: &TableMeta) -> Vec<Arc<Subscription>> {
        let ids: Vec<SubId> = if meta.public {
            self.inner.subs.iter().map(|e| *e.key()).collect()
        } else {
            let owned = change.owner.as_deref().and_then(|o| self.inner.by_owner.get(o).map(|s| s.iter().copied().collect::<Vec<_>>()));
            let service = self.inner.service.iter().map(|e| *e.key());
            owned.unwrap_or_default().into_iter().chain(service).collect()
        };
        ids.iter().filter_map(|id| self.inner.subs.get(id).map(|s| Arc::clone(&s))).collect()
    }

    /// Sends a broadcast to every other channel on `topic` (and to the sender's own if it asked).
    pub fn broadcast(&self, from: SubId, topic: &str, payload: Arc<str>) {
        let targets: Vec<(SubId, Arc<Subscription>)> =
            self.inner.subs.iter().filter(|e| &*e.topic == topic).map(|e| (*e.key(), Arc::clone(e.value()))).collect();
        for (id, sub) in targets {
            if id != from || sub.broadcast_self {
                sub.outbox.push(Outgoing::Broadcast { topic: Arc::clone(&sub.topic), payload: Arc::clone(&payload) });
            }
        }
    }
}

impl ChangeSink for Registry {
    fn deliver(&self, change: &Change, meta: &TableMeta) {
        let data: OnceLock<Arc<str>> = OnceLock::new();
        for sub in self.candidates(change, meta) {
            let ids = sub.matching_ids(change, meta);
            if ids.is_empty() {
                continue;
            }
            let data = data.get_or_init(|| render_data(change, meta, self.inner.max_record_bytes));
            sub.outbox.push(Outgoing::Change { topic: Arc::clone(&sub.topic), ids, data: Arc::clone(data) });
        }
    }
}
