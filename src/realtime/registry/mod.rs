//! Who is subscribed to what, and the fan-out of each change to them.
//!
//! Owns the live subscriptions (one per joined channel) indexed by the
//! owners whose rows they may see, under every claim path a table compares
//! its owner column with (`sub`, `app_metadata.org_id`, ...), so a change of
//! an owner-column table is checked against that owner's channels and the
//! service-role ones only, never against every subscriber. A path met for
//! the first time (a table enabled with a new claim) indexes every live
//! subscription under it once. Authorisation is decided before anything is
//! queued. Each change is serialized once per `select` shape: its `data`
//! once, and each whole frame once per (topic, binding ids, serializer), so
//! ten thousand sockets on one channel share one buffer. Delivery only ever
//! queues (see `outbox`); it never waits on a socket.
//!
//! Beside it: `members` (presence), `peers` (other gateways' members and
//! broadcasts), `sql` (broadcasts sent from SQL), and for channels resuming
//! after a handoff `recent` (the changes delivered lately) and `resume`
//! (holding, replay, going live).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use super::filter::{self, Compiled, Condition};
use super::handoff::HandoffKey;
use super::outbox::Outbox;
use super::payload::render_data;
use super::presence::Roster;
use super::protocol::{self, Vsn};
use super::selection::Selection;
use crate::auth::{ClaimPath, Principal};
use crate::changes::change::{Change, Column, Op, TableMeta};
use crate::changes::listener::ChangeSink;
use crate::metrics::{self, Metrics};

mod members;
mod peers;
mod recent;
mod resume;
mod sql;

pub use peers::{Outgoing, PeerMember};
pub use recent::{Delivered, Since};
use recent::{Recent, MAX_RECENT, MAX_RECENT_BYTES};
pub use resume::Replay;
use sql::SqlBroadcast;

/// Most changes a resuming channel holds back while its replay is read;
/// past it the socket is let go as a slow consumer.
const MAX_HELD: usize = 10_000;

/// Identifies one subscription (one joined channel).
pub type SubId = u64;

/// Where a broadcast comes from: a channel (which hears its own only if it
/// asked for `self`), the REST API or SQL (every channel on the topic hears those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Socket(SubId),
    Rest,
    Sql,
    /// Another gateway on the same database (its client or REST API sent it).
    Peer,
}

impl Origin {
    fn is(self, id: SubId) -> bool {
        self == Origin::Socket(id)
    }

    /// The `source` label of `rowcast_broadcasts_total`.
    fn label(self) -> &'static str {
        match self {
            Origin::Socket(_) => "socket",
            Origin::Rest => "rest",
            Origin::Sql => "sql",
            Origin::Peer => "peer",
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
    /// A wildcard binding's filter, typed once per table it meets.
    pub per_table: PerTable,
    /// The columns its changes carry (`select`); `None`: every column.
    pub selection: Option<Selection>,
}

/// A wildcard binding's filter compiled per table (`None`: it does not fit
/// that table), so a change never pays for compiling its patterns again.
/// Kept with the columns it was typed against: an altered table is retyped.
#[derive(Debug, Clone, Default)]
pub struct PerTable(Arc<RwLock<HashMap<(String, String), TypedFor>>>);

/// A filter typed against these columns (`None`: it does not fit them).
type TypedFor = (Vec<Column>, Option<Compiled>);

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
        event_ok && self.reads(&meta.schema, &meta.table) && self.filter_holds(change, meta)
    }

    /// Whether changes of `schema.table` may reach it (its schema and table, or wildcards).
    pub fn reads(&self, schema: &str, table: &str) -> bool {
        (self.schema == "*" || self.schema == schema) && self.table.as_deref().is_none_or(|t| t == table)
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
    /// Some binding has a `select`, so its changes may need more than one shape.
    selects: bool,
    /// Receives broadcasts it sends itself (`config.broadcast.self`).
    pub broadcast_self: bool,
    /// Receives `presence_state` and `presence_diff` (`config.presence.enabled`, or once it tracks).
    presence_enabled: std::sync::atomic::AtomicBool,
    /// The key its presence is listed under.
    presence_key: String,
    /// The join's ref, carried by channel pushes such as `presence_state`.
    join_ref: Option<String>,
    /// Joined with `config.private`: a namespace apart from the public topic of the same name.
    private: bool,
    /// What a rejoin of this channel on another gateway is recognised by (`handoff`).
    handoff: Option<HandoffKey>,
    /// The `realtime.messages` ids its join replayed (at most `replay::MAX_REPLAY`):
    /// the listener may deliver them live too, when it had not read them before the join.
    replayed: Box<[String]>,
    /// Set while a resuming channel's replay is being read: its changes wait in `held`.
    holding: AtomicBool,
    held: Mutex<Option<Vec<(i64, Bytes)>>>,
}

/// A topic in its namespace (private or public): what broadcasts and presence are addressed to.
type TopicKey = (Arc<str>, bool);

/// The binding ids of one subscription that match a change, with the shape they share.
type Matched<'a> = (Option<&'a Selection>, Vec<u32>);

impl Subscription {
    /// A subscription of `topic` for `principal`.
    pub fn new(topic: Arc<str>, route: Route, principal: Principal, bindings: Vec<Binding>, broadcast_self: bool) -> Self {
        let selects = bindings.iter().any(|b| b.selection.is_some());
        Subscription {
            topic,
            route,
            principal: RwLock::new(principal),
            bindings,
            selects,
            broadcast_self,
            presence_enabled: false.into(),
            presence_key: String::new(),
            join_ref: None,
            private: false,
            handoff: None,
            replayed: Box::default(),
            holding: AtomicBool::new(false),
            held: Mutex::new(None),
        }
    }

    /// Sets the ids of the messages its join replayed, which it then never gets live.
    pub fn replayed(mut self, ids: Vec<String>) -> Self {
        self.replayed = ids.into_boxed_slice();
        self
    }

    /// Sets the key a rejoin of this channel elsewhere is recognised by.
    pub fn handoff(mut self, key: Option<HandoffKey>) -> Self {
        self.handoff = key;
        self
    }

    /// Its `postgres_changes` frame for the matching binding `ids` and a change's `data`.
    fn changes_frame(&self, ids: &[u32], data: &str) -> String {
        protocol::encode(self.route.vsn, None, None, &self.topic, "postgres_changes", &protocol::postgres_changes(ids, data))
    }

    /// Queues the frame of change `id`, or holds it while a replay is being read.
    fn send(&self, id: i64, frame: Bytes) {
        if self.holding.load(Ordering::Acquire) {
            let mut held = self.held.lock().expect("held lock poisoned");
            if let Some(frames) = held.as_mut() {
                if frames.len() < MAX_HELD {
                    frames.push((id, frame));
                } else {
                    *held = None;
                    self.holding.store(false, Ordering::Release);
                    self.route.outbox.let_go(super::outbox::Slow::QueueFull);
                }
                return;
            }
        }
        self.route.outbox.push(frame);
    }

    /// Marks the subscription private (`config.private`), authorised by the topic's policies.
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    fn topic_key(&self) -> TopicKey {
        (Arc::clone(&self.topic), self.private)
    }

    /// Sets the presence settings of the join: `enabled`, the member `key`, the join's ref.
    pub fn with_presence(mut self, enabled: bool, key: String, join_ref: Option<String>) -> Self {
        self.presence_enabled = enabled.into();
        self.presence_key = key;
        self.join_ref = join_ref;
        self
    }

    fn principal(&self) -> Principal {
        self.principal.read().expect("principal lock poisoned").clone()
    }

    fn may_see(&self, change: &Change, meta: &TableMeta) -> bool {
        // A public table's change goes to every subscriber: no lock taken for it.
        if meta.public {
            return true;
        }
        let principal = self.principal.read().expect("principal lock poisoned");
        match &meta.owner_claim {
            Some(claim) => principal.sees_owner(claim, change.owner.as_deref()),
            None => principal.is_service(),
        }
    }

    /// Calls `each` with the matching binding ids, once per `select` shape
    /// (almost always once). The common case, no `select`, builds no groups:
    /// this runs for every candidate of every change.
    fn matching(&self, change: &Change, meta: &TableMeta, mut each: impl FnMut(Option<&Selection>, &[u32])) {
        if !self.may_see(change, meta) {
            return;
        }
        if let [only] = self.bindings.as_slice() {
            // One binding, the usual channel: no list to build.
            if only.matches(change, meta) {
                each(only.selection.as_ref(), &[only.id]);
            }
            return;
        }
        let matched = self.bindings.iter().filter(|b| b.matches(change, meta));
        if !self.selects {
            let mut ids: Vec<u32> = matched.map(|b| b.id).collect();
            ids.dedup();
            if !ids.is_empty() {
                each(None, &ids);
            }
            return;
        }
        let mut groups: Vec<Matched<'_>> = Vec::new();
        for b in matched {
            match groups.iter_mut().find(|(s, _)| *s == b.selection.as_ref()) {
                Some((_, ids)) if ids.last() == Some(&b.id) => {}
                Some((_, ids)) => ids.push(b.id),
                None => groups.push((b.selection.as_ref(), vec![b.id])),
            }
        }
        for (selection, ids) in &groups {
            each(*selection, ids);
        }
    }
}

/// Cheap-clone handle to every live subscription.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    subs: DashMap<SubId, Arc<Subscription>>,
    /// Topic to the subscriptions joined to it (broadcast and presence).
    by_topic: DashMap<TopicKey, HashSet<SubId>>,
    /// Who is present per topic. One lock for all topics: presence calls are
    /// rare (a few per channel per minute), and holding it while a state is
    /// read and a joiner made live keeps states and diffs in order.
    presence: std::sync::Mutex<HashMap<TopicKey, Roster>>,
    /// (claim path, owner) to the subscriptions whose principal names that owner there.
    by_owner: DashMap<(ClaimPath, String), HashSet<SubId>>,
    /// The claim paths every subscription is indexed under; grows as tables use new ones.
    paths: RwLock<Vec<ClaimPath>>,
    service: DashMap<SubId, ()>,
    /// Deliveries, broadcasts and change latency are counted here.
    metrics: metrics::Realtime,
    next_id: AtomicU64,
    max_record_bytes: usize,
    /// Where this gateway's presence and broadcasts go for the others on the
    /// database (`realtime::cluster`); unset, they stay here.
    cluster: OnceLock<tokio::sync::mpsc::Sender<Outgoing>>,
    /// Members tracked on other gateways, by (gateway, its channel id): the
    /// id they have in the rosters, and their topic. Locked after `presence`.
    remote: std::sync::Mutex<HashMap<PeerMember, (u64, TopicKey)>>,
    next_remote: AtomicU64,
    /// Changes delivered lately, for channels resuming after a handoff. Held
    /// while a change is delivered, so a resuming join sees each change either
    /// here or live.
    recent: Mutex<Recent>,
}

#[derive(Clone, Copy)]
enum IndexOp {
    Add,
    Remove,
}

impl Registry {
    /// An empty registry; records over `max_record_bytes` are trimmed.
    pub fn new(max_record_bytes: usize) -> Self {
        Registry::with_metrics(max_record_bytes, Metrics::new().realtime)
    }

    /// A registry that counts into `metrics`.
    pub fn with_metrics(max_record_bytes: usize, metrics: metrics::Realtime) -> Self {
        Registry::keeping_recent(max_record_bytes, metrics, Duration::ZERO)
    }

    /// A registry that also keeps the changes it delivered for `keep_for`, so
    /// channels resuming from a handoff replay them from memory.
    pub fn keeping_recent(max_record_bytes: usize, metrics: metrics::Realtime, keep_for: Duration) -> Self {
        let inner = Inner {
            recent: Mutex::new(Recent::new(keep_for, MAX_RECENT, MAX_RECENT_BYTES)),
            metrics,
            subs: DashMap::new(),
            by_topic: DashMap::new(),
            presence: Default::default(),
            by_owner: DashMap::new(),
            paths: RwLock::new(vec![ClaimPath::sub()]),
            service: DashMap::new(),
            next_id: AtomicU64::new(1),
            max_record_bytes,
            cluster: OnceLock::new(),
            remote: Default::default(),
            // Members of other gateways get ids no local channel has.
            next_remote: AtomicU64::new(1 << 63),
        };
        Registry { inner: Arc::new(inner) }
    }

    /// Makes `sub` live; changes read from now on reach it.
    pub fn insert(&self, sub: Subscription) -> SubId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let principal = sub.principal();
        self.inner.by_topic.entry(sub.topic_key()).or_default().insert(id);
        self.inner.subs.insert(id, Arc::new(sub));
        self.index(id, &principal, IndexOp::Add);
        id
    }

    /// Drops a subscription; if it was present, the others see it leave.
    pub fn remove(&self, id: SubId) {
        if let Some((_, sub)) = self.inner.subs.remove(&id) {
            self.index(id, &sub.principal(), IndexOp::Remove);
            self.inner.by_topic.remove_if_mut(&sub.topic_key(), |_, set| {
                set.remove(&id);
                set.is_empty()
            });
            self.untrack_sub(id, &sub);
        }
    }

    /// The subscriptions joined to `topic` in the private or the public namespace.
    fn on_topic(&self, topic: &str, private: bool) -> Vec<(SubId, Arc<Subscription>)> {
        let key: TopicKey = (Arc::from(topic), private);
        let ids: Vec<SubId> = self.inner.by_topic.get(&key).map(|s| s.iter().copied().collect()).unwrap_or_default();
        ids.into_iter().filter_map(|id| self.inner.subs.get(&id).map(|s| (id, Arc::clone(&s)))).collect()
    }

    /// Re-authorises a subscription with a new token's principal.
    pub fn set_principal(&self, id: SubId, principal: Principal) {
        let Some(sub) = self.inner.subs.get(&id).map(|s| Arc::clone(&s)) else { return };
        let old = std::mem::replace(&mut *sub.principal.write().expect("principal lock poisoned"), principal.clone());
        self.index(id, &old, IndexOp::Remove);
        self.index(id, &principal, IndexOp::Add);
    }

    /// The realtime metrics this registry counts into.
    pub fn metrics(&self) -> &metrics::Realtime {
        &self.inner.metrics
    }

    /// The handoff keys of the live channels, each with how many channels
    /// have it, for a draining gateway's note.
    pub fn handoff_keys(&self) -> Vec<(HandoffKey, u32)> {
        let mut counts: HashMap<HandoffKey, u32> = HashMap::new();
        for key in self.inner.subs.iter().filter_map(|e| e.value().handoff) {
            *counts.entry(key).or_default() += 1;
        }
        let mut keys: Vec<(HandoffKey, u32)> = counts.into_iter().collect();
        keys.sort_unstable();
        keys
    }

    /// True when some subscription has a `postgres_changes` binding that reads `schema.table`.
    pub fn reads_table(&self, schema: &str, table: &str) -> bool {
        self.inner.subs.iter().any(|s| s.bindings.iter().any(|b| b.reads(schema, table)))
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
        } else {
            let paths = self.inner.paths.read().expect("paths lock poisoned");
            for path in paths.iter() {
                self.index_under(path, id, principal, op);
            }
        }
    }

    fn index_under(&self, path: &ClaimPath, id: SubId, principal: &Principal, op: IndexOp) {
        for owner in principal.owners(path) {
            let key = (path.clone(), owner);
            match op {
                IndexOp::Add => {
                    self.inner.by_owner.entry(key).or_default().insert(id);
                }
                IndexOp::Remove => {
                    self.inner.by_owner.remove_if_mut(&key, |_, set| {
                        set.remove(&id);
                        set.is_empty()
                    });
                }
            }
        }
    }

    /// Makes sure every subscription is indexed under `path` (a table's owner claim).
    fn index_path(&self, path: &ClaimPath) {
        if self.inner.paths.read().expect("paths lock poisoned").contains(path) {
            return;
        }
        // Held while indexing, so no subscription is added or removed half-indexed.
        let mut paths = self.inner.paths.write().expect("paths lock poisoned");
        if paths.contains(path) {
            return;
        }
        paths.push(path.clone());
        let subs: Vec<(SubId, Arc<Subscription>)> = self.inner.subs.iter().map(|e| (*e.key(), Arc::clone(e.value()))).collect();
        for (id, sub) in subs {
            let principal = sub.principal();
            if !principal.is_service() {
                self.index_under(path, id, &principal, IndexOp::Add);
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
        let owned = match (&meta.owner_claim, &change.owner) {
            (Some(path), Some(owner)) => {
                self.index_path(path);
                let key = (path.clone(), owner.clone());
                self.inner.by_owner.get(&key).map(|s| s.iter().copied().collect::<Vec<_>>())
            }
            _ => None,
        };
        let service: Vec<SubId> = self.inner.service.iter().map(|e| *e.key()).collect();
        owned.unwrap_or_default().iter().chain(&service).filter_map(|id| self.inner.subs.get(id).map(|s| Arc::clone(&s))).collect()
    }

    /// Sends a broadcast with a binary payload: as a kind-4 frame to the v2
    /// channels on `topic` (other than the sender's, unless it asked for `self`);
    /// v1 channels cannot carry one and get nothing, as on Supabase.
    pub fn broadcast_binary(&self, from: Origin, topic: &str, private: bool, event: &str, meta: &str, payload: &[u8]) {
        self.count_broadcast(from);
        if matches!(from, Origin::Socket(_) | Origin::Rest) {
            self.publish(Outgoing::BinaryBroadcast {
                topic: topic.to_owned(),
                private,
                event: event.to_owned(),
                meta: meta.to_owned(),
                payload: payload.to_vec(),
            });
        }
        let Some(frame) = protocol::encode_user_broadcast(topic, event, meta, payload, false) else { return };
        self.fan_out(from, topic, private, None, None, |vsn| (vsn == Vsn::V2).then(|| frame.clone()));
    }

    /// Sends a broadcast to every other channel on `topic` (and to the sender's own if it asked).
    pub fn broadcast(&self, from: Origin, topic: &str, private: bool, payload: &str) {
        self.count_broadcast(from);
        if matches!(from, Origin::Socket(_) | Origin::Rest) {
            self.publish(Outgoing::Broadcast { topic: topic.to_owned(), private, payload: payload.to_owned() });
        }
        self.fan_out(from, topic, private, None, None, |vsn| {
            Some(Bytes::from(protocol::encode(vsn, None, None, topic, "broadcast", payload)))
        });
    }

    /// Queues a broadcast on the channels of `topic` (not on the sender's
    /// own unless it asked for `self`), each serializer's frame made once by
    /// `frame_for` (`None`: that serializer cannot carry it, as v1 cannot a
    /// binary payload). One read from the log (`change`) is held like a row
    /// change by a channel that is resuming after a handoff; a message sent
    /// from SQL (`message`, its id) skips the channels whose join replayed it.
    fn fan_out(
        &self,
        from: Origin,
        topic: &str,
        private: bool,
        change: Option<i64>,
        message: Option<&str>,
        frame_for: impl Fn(Vsn) -> Option<Bytes>,
    ) {
        let mut made: [Option<Option<Bytes>>; 2] = [None, None];
        let mut sent = 0;
        for (id, sub) in self.on_topic(topic, private) {
            if from.is(id) && !sub.broadcast_self {
                continue;
            }
            if message.is_some_and(|m| sub.replayed.iter().any(|r| r == m)) {
                continue;
            }
            let vsn = sub.route.vsn;
            let Some(frame) = made[usize::from(vsn == Vsn::V2)].get_or_insert_with(|| frame_for(vsn)).clone() else { continue };
            match change {
                Some(change) => sub.send(change, frame),
                None => sub.route.outbox.push(frame),
            }
            sent += 1;
        }
        self.count_deliveries("broadcast", sent);
    }

    fn count_deliveries(&self, kind: &'static str, n: u64) {
        if n > 0 {
            self.inner.metrics.deliveries.get_or_create(&metrics::Kind { kind }).inc_by(n);
        }
    }

    fn count_broadcast(&self, from: Origin) {
        self.inner.metrics.broadcasts.get_or_create(&metrics::Source { source: from.label() }).inc();
    }
}

/// Frames already encoded for one change or broadcast, by (topic, binding ids, serializer).
#[derive(Default)]
struct FrameCache {
    frames: HashMap<(Arc<str>, Vec<u32>, Vsn), Bytes>,
    /// The last frame asked for: thousands of sockets on one channel ask for
    /// the same one in a row, and this spares each a hash and an allocation.
    last: Option<(Arc<str>, Vec<u32>, Vsn, Bytes)>,
}

impl FrameCache {
    fn get(&mut self, topic: &Arc<str>, ids: &[u32], vsn: Vsn, encode: impl FnOnce() -> String) -> Bytes {
        if let Some((t, i, v, frame)) = &self.last {
            if *v == vsn && i == ids && (Arc::ptr_eq(t, topic) || **t == **topic) {
                return frame.clone();
            }
        }
        let key = (Arc::clone(topic), ids.to_vec(), vsn);
        let frame = self.frames.entry(key).or_insert_with(|| Bytes::from(encode())).clone();
        self.last = Some((Arc::clone(topic), ids.to_vec(), vsn, frame.clone()));
        frame
    }
}

impl ChangeSink for Registry {
    fn starting_at(&self, high_water: i64) {
        self.inner.recent.lock().expect("recent lock poisoned").starting_at(high_water);
    }

    fn tidy(&self) {
        self.inner.recent.lock().expect("recent lock poisoned").let_go_of_old(Instant::now());
    }

    fn deliver(&self, change: &Arc<Change>, meta: &Arc<TableMeta>) {
        // Held through the fan-out: a resuming join sees this change kept or live, never neither.
        let mut recent = self.inner.recent.lock().expect("recent lock poisoned");
        recent.push((Arc::clone(change), Some(Arc::clone(meta))), Instant::now());
        let all_columns: OnceLock<Arc<str>> = OnceLock::new();
        let mut shaped: Vec<(Selection, Arc<str>)> = Vec::new();
        let mut frames = FrameCache::default();
        let render = |s: Option<&Selection>| render_data(change, meta, self.inner.max_record_bytes, s);
        let mut sent = 0;
        for sub in self.candidates(change, meta) {
            sub.matching(change, meta, |selection, ids| {
                let shaped_data: Arc<str>;
                let data: &str = match selection {
                    None => all_columns.get_or_init(|| render(None)),
                    Some(s) => {
                        shaped_data = match shaped.iter().find(|(seen, _)| seen == s) {
                            Some((_, data)) => Arc::clone(data),
                            None => {
                                let data = render(Some(s));
                                shaped.push((s.clone(), Arc::clone(&data)));
                                data
                            }
                        };
                        &shaped_data
                    }
                };
                let frame = frames.get(&sub.topic, ids, sub.route.vsn, || sub.changes_frame(ids, data));
                sub.send(change.id, frame);
                sent += 1;
            });
        }
        drop(recent);
        self.count_deliveries("postgres_changes", sent);
        let age = (chrono::Utc::now() - change.changed_at).num_microseconds().unwrap_or(i64::MAX);
        self.inner.metrics.change_latency.observe(age.max(0) as f64 / 1e6);
    }

    fn deliver_message(&self, message: &Arc<Change>) {
        // Kept like row changes: a channel resuming after a handoff replays the broadcasts it missed.
        let mut recent = self.inner.recent.lock().expect("recent lock poisoned");
        recent.push((Arc::clone(message), None), Instant::now());
        let Some(sql) = SqlBroadcast::read(message) else { return };
        self.count_broadcast(Origin::Sql);
        let id = message.record.as_ref().and_then(|r| r.get("id")).and_then(serde_json::Value::as_str);
        self.fan_out(Origin::Sql, &sql.topic, sql.private, Some(message.id), id, |vsn| sql.frame(vsn));
        drop(recent);
    }
}

#[cfg(test)]
mod tests;
