//! Who is subscribed to what, and the fan-out of each change to them.
//!
//! Owns the live subscriptions (one per joined channel) indexed by the user id
//! whose rows they may see, so a change of an owner-column table is checked
//! against that user's channels and the service-role ones only, never
//! against every subscriber. Authorisation is decided before anything is
//! queued. Each change is serialized once: its `data` once, and each whole
//! frame once per (topic, binding ids, serializer), so ten thousand sockets on
//! one channel share one buffer. Delivery only ever queues (see `outbox`);
//! it never waits on a socket.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use dashmap::DashMap;

use super::filter::{self, Compiled, Condition};
use super::outbox::Outbox;
use super::protocol::{self, Vsn};
use crate::auth::Principal;
use super::payload::render_data;
use crate::changes::change::{Change, Column, Op, TableMeta};
use crate::changes::listener::ChangeSink;

/// Identifies one subscription (one joined channel).
pub type SubId = u64;

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
    /// A wildcard binding's filter, typed once per table it meets.
    pub per_table: PerTable,
}

/// A wildcard binding's filter compiled per table (`None`: it does not fit
/// that table), so a change never pays for compiling its patterns again.
/// Kept with the columns it was typed against: an altered table is retyped.
#[derive(Debug, Clone, Default)]
pub struct PerTable(Arc<RwLock<HashMap<(String, String), (Vec<Column>, Option<Compiled>)>>>);

impl PerTable {
    fn matches(&self, conditions: &[Condition], meta: &TableMeta, row: &serde_json::Map<String, serde_json::Value>) -> bool {
        let key = (meta.schema.clone(), meta.table.clone());
        if let Some((columns, compiled)) = self.0.read().expect("filter cache lock poisoned").get(&key) {
            if *columns == meta.columns {
                return compiled.as_ref().is_some_and(|c| c.matches(row));
            }
        }
        let compiled = filter::compile(conditions, &meta.column_types()).ok();
        let holds = compiled.as_ref().is_some_and(|c| c.matches(row));
        self.0.write().expect("filter cache lock poisoned").insert(key, (meta.columns.clone(), compiled));
        holds
    }
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
            None => self.per_table.matches(&self.conditions, meta, row),
        }
    }
}

/// Where a subscription's frames go: the socket's queue and its serializer.
#[derive(Clone)]
pub struct Route {
    pub outbox: Outbox,
    pub vsn: Vsn,
}

/// One joined channel of one socket.
pub struct Subscription {
    pub topic: Arc<str>,
    route: Route,
    principal: RwLock<Principal>,
    bindings: Vec<Binding>,
    /// Receives broadcasts it sends itself (`config.broadcast.self`).
    pub broadcast_self: bool,
}

impl Subscription {
    /// A subscription of `topic` for `principal`.
    pub fn new(topic: Arc<str>, route: Route, principal: Principal, bindings: Vec<Binding>, broadcast_self: bool) -> Self {
        Subscription { topic, route, principal: RwLock::new(principal), bindings, broadcast_self }
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

    /// The subscriptions that may see `change`: every one for a public table,
    /// else the owner's and the service role's. Guards are released before
    /// anything is evaluated or queued.
    fn candidates(&self, change: &Change, meta: &TableMeta) -> Vec<Arc<Subscription>> {
        if meta.public {
            return self.inner.subs.iter().map(|e| Arc::clone(e.value())).collect();
        }
        let owned = change.owner.as_deref().and_then(|o| self.inner.by_owner.get(o).map(|s| s.iter().copied().collect::<Vec<_>>()));
        let service: Vec<SubId> = self.inner.service.iter().map(|e| *e.key()).collect();
        owned.unwrap_or_default().iter().chain(&service).filter_map(|id| self.inner.subs.get(id).map(|s| Arc::clone(&s))).collect()
    }

    /// Sends a broadcast to every other channel on `topic` (and to the sender's own if it asked).
    pub fn broadcast(&self, from: SubId, topic: &str, payload: &str) {
        let targets: Vec<(SubId, Arc<Subscription>)> =
            self.inner.subs.iter().filter(|e| &*e.topic == topic).map(|e| (*e.key(), Arc::clone(e.value()))).collect();
        let mut frames = FrameCache::default();
        for (id, sub) in targets {
            if id != from || sub.broadcast_self {
                let frame = frames.get(&sub.topic, &[], sub.route.vsn, || {
                    protocol::encode(sub.route.vsn, None, None, topic, "broadcast", payload)
                });
                sub.route.outbox.push(frame);
            }
        }
    }
}

/// Frames already encoded for one change or broadcast, by (topic, binding ids, serializer).
#[derive(Default)]
struct FrameCache {
    frames: HashMap<(Arc<str>, Vec<u32>, Vsn), Bytes>,
}

impl FrameCache {
    fn get(&mut self, topic: &Arc<str>, ids: &[u32], vsn: Vsn, encode: impl FnOnce() -> String) -> Bytes {
        let key = (Arc::clone(topic), ids.to_vec(), vsn);
        self.frames.entry(key).or_insert_with(|| Bytes::from(encode())).clone()
    }
}

impl ChangeSink for Registry {
    fn deliver(&self, change: &Change, meta: &TableMeta) {
        let data: OnceLock<Arc<str>> = OnceLock::new();
        let mut frames = FrameCache::default();
        for sub in self.candidates(change, meta) {
            let ids = sub.matching_ids(change, meta);
            if ids.is_empty() {
                continue;
            }
            let data = data.get_or_init(|| render_data(change, meta, self.inner.max_record_bytes));
            let vsn = sub.route.vsn;
            let frame = frames.get(&sub.topic, &ids, vsn, || {
                protocol::encode(vsn, None, None, &sub.topic, "postgres_changes", &protocol::postgres_changes(&ids, data))
            });
            sub.route.outbox.push(frame);
        }
    }
}
