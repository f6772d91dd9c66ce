//! Many gateways on one database (migration 0010): Postgres is the bus.
//!
//! Owns this gateway's side of it: its heartbeat row in `rowcast.nodes`,
//! writing its channels' presence to `rowcast.presence` and its clients' and
//! REST broadcasts into the change log (`rowcast.publish`), deleting the
//! nodes whose heartbeat is older than the presence timeout with their
//! presence rows, and turning what the change listener reads of other
//! gateways' rows back into presence and broadcasts for this gateway's
//! channels (`ClusterSink`), and other gateways' handoff notes into
//! `Handoffs`. Every gateway reads the same log in the same order, so no
//! other protocol or service is involved.
//!
//! Broadcasts go into the log only while another gateway's heartbeat has
//! been read within the timeout, so a single gateway writes nothing for
//! them; presence rows are always written, so a gateway that starts later
//! lists the members already present. A gateway that finds its own heartbeat
//! row gone (it was presumed dead after a pause) writes its presence again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::handoff::Handoffs;
use super::registry::{Origin, Outgoing, Registry, SubId};
use crate::changes::change::{Change, Op, TableMeta};
use crate::changes::listener::ChangeSink;

/// Outgoing presence changes and broadcasts waiting for the database, at most.
const QUEUE: usize = 10_000;

/// When another gateway's heartbeat was last read (ms since the epoch; 0: never).
#[derive(Debug, Default)]
struct PeerClock(AtomicI64);

impl PeerClock {
    fn saw_now(&self) {
        self.0.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    fn alive_within(&self, timeout: Duration) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        last > 0 && chrono::Utc::now().timestamp_millis() - last < timeout.as_millis() as i64
    }
}

/// The registry as the change listener's sink, with the rows of the cluster's
/// own tables turned into presence and broadcasts.
pub struct ClusterSink {
    node: Uuid,
    registry: Registry,
    peers: Arc<PeerClock>,
    handoffs: Handoffs,
}

impl ClusterSink {
    fn peer_of(&self, row: &Map<String, Value>, field: &str) -> Option<Uuid> {
        let node = row.get(field)?.as_str()?.parse::<Uuid>().ok()?;
        (node != self.node).then_some(node)
    }
}

impl ChangeSink for ClusterSink {
    fn deliver(&self, change: &Arc<Change>, meta: &Arc<TableMeta>) {
        self.registry.deliver(change, meta);
    }

    fn starting_at(&self, high_water: i64) {
        self.registry.starting_at(high_water);
    }

    fn tidy(&self) {
        self.registry.tidy();
    }

    fn deliver_message(&self, message: &Arc<Change>) {
        self.registry.deliver_message(message);
    }

    fn deliver_cluster(&self, change: &Change) {
        match (change.table.as_str(), change.op) {
            ("nodes", Op::Insert | Op::Update) if change.record.as_ref().and_then(|r| self.peer_of(r, "id")).is_some() => {
                self.peers.saw_now();
            }
            ("presence", Op::Insert | Op::Update) => {
                let Some(row) = &change.record else { return };
                let Some(node) = self.peer_of(row, "node") else { return };
                if let Some(member) = PresenceRow::read(row) {
                    self.registry.peer_track((node, member.sub), &member.topic, member.private, &member.key, member.meta);
                }
            }
            ("presence", Op::Delete) => {
                let Some(row) = &change.old_record else { return };
                let Some(node) = self.peer_of(row, "node") else { return };
                if let Some(sub) = row.get("sub").and_then(Value::as_i64) {
                    self.registry.peer_untrack((node, sub));
                }
            }
            ("handoff", Op::Insert) => {
                if let Some(row) = &change.record {
                    self.handoffs.note(row, Duration::ZERO);
                }
            }
            ("broadcast", Op::Insert) => {
                let Some(row) = &change.record else { return };
                if self.peer_of(row, "node").is_some() {
                    deliver_broadcast(&self.registry, row);
                }
            }
            _ => {}
        }
    }
}

/// A `rowcast.presence` row's member.
struct PresenceRow {
    sub: i64,
    topic: String,
    private: bool,
    key: String,
    meta: Map<String, Value>,
}

impl PresenceRow {
    fn read(row: &Map<String, Value>) -> Option<PresenceRow> {
        Some(PresenceRow {
            sub: row.get("sub")?.as_i64()?,
            topic: row.get("topic")?.as_str()?.to_owned(),
            private: row.get("private")?.as_bool()?,
            key: row.get("key")?.as_str()?.to_owned(),
            meta: row.get("meta")?.as_object()?.clone(),
        })
    }
}

/// A peer's broadcast, as `record_of` wrote it, to this gateway's channels.
fn deliver_broadcast(registry: &Registry, row: &Map<String, Value>) {
    let text = |k: &str| row.get(k).and_then(Value::as_str);
    let (Some(topic), private) = (text("topic"), row.get("private").and_then(Value::as_bool).unwrap_or(false)) else { return };
    match (text("payload"), text("binary")) {
        (Some(payload), _) => registry.broadcast(Origin::Peer, topic, private, payload),
        (None, Some(hex)) => {
            let Some(bytes) = from_hex(hex) else { return };
            registry.broadcast_binary(Origin::Peer, topic, private, text("event").unwrap_or(""), text("meta").unwrap_or(""), &bytes);
        }
        (None, None) => {}
    }
}

/// The log record of one of this gateway's broadcasts.
fn record_of(node: Uuid, message: &Outgoing) -> Option<Value> {
    Some(match message {
        Outgoing::Broadcast { topic, private, payload } => json!({"node": node, "topic": topic, "private": private, "payload": payload}),
        Outgoing::BinaryBroadcast { topic, private, event, meta, payload } => {
            json!({"node": node, "topic": topic, "private": private, "event": event, "meta": meta, "binary": to_hex(payload)})
        }
        Outgoing::Track { .. } | Outgoing::Untrack { .. } => return None,
    })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

const HEARTBEAT: &str = "insert into rowcast.nodes (id) values ($1) on conflict (id) do update set seen_at = now() returning (xmax = 0)";
/// Nodes past the timeout go, with their presence rows and any row whose node is gone.
const SWEEP: &str = "with dead as (delete from rowcast.nodes where seen_at < now() - make_interval(secs => $1) returning id)
     delete from rowcast.presence p where p.node in (select id from dead)
        or not exists (select 1 from rowcast.nodes n where n.id = p.node)";
const TRACK: &str = "insert into rowcast.presence (node, sub, topic, private, key, meta) values ($1, $2, $3, $4, $5, $6)
     on conflict (node, sub) do update set topic = excluded.topic, private = excluded.private, key = excluded.key, meta = excluded.meta";
const UNTRACK: &str = "delete from rowcast.presence where node = $1 and sub = $2";
const PEERS_PRESENT: &str = "select node, sub, topic, private, key, meta from rowcast.presence where node <> $1";
const ANY_PEER: &str = "select exists (select 1 from rowcast.nodes where id <> $1 and seen_at > now() - make_interval(secs => $2))";

/// The task that writes this gateway's side; build with `new`, run with `run`.
pub struct Cluster {
    pool: PgPool,
    registry: Registry,
    node: Uuid,
    timeout: Duration,
    outgoing: mpsc::Receiver<Outgoing>,
    peers: Arc<PeerClock>,
    live: watch::Receiver<bool>,
    /// What this gateway has present now, to write again if its rows were swept.
    published: HashMap<SubId, Outgoing>,
}

impl Cluster {
    /// This gateway's task, with a new node id, and the sink its change
    /// listener delivers to. From now on `registry` hands its presence and
    /// broadcasts to the task; `live` is the change listener's.
    pub fn new(
        pool: PgPool,
        registry: &Registry,
        handoffs: Handoffs,
        timeout: Duration,
        live: watch::Receiver<bool>,
    ) -> (Cluster, ClusterSink) {
        let node = Uuid::new_v4();
        let (to_cluster, outgoing) = mpsc::channel(QUEUE);
        registry.set_cluster(to_cluster);
        let peers = Arc::new(PeerClock::default());
        let sink = ClusterSink { node, registry: registry.clone(), peers: Arc::clone(&peers), handoffs };
        let timeout = timeout.max(Duration::from_secs(1));
        let cluster = Cluster { pool, registry: registry.clone(), node, timeout, outgoing, peers, live, published: HashMap::new() };
        (cluster, sink)
    }

    /// Runs until `cancel`, then deletes this gateway's rows (the others see its members leave at once).
    pub async fn run(mut self, cancel: CancellationToken) {
        if let Err(e) = self.start(&cancel).await {
            warn!(error = %e, "joining the other gateways on this database failed; presence from them shows after the next heartbeat");
        }
        let mut tick = tokio::time::interval(self.timeout / 3);
        loop {
            tokio::select! {
                biased;
                // Shutdown, after the sockets closed and their leaves were queued.
                _ = cancel.cancelled() => break,
                // A presence change or broadcast of this gateway.
                Some(message) = self.outgoing.recv() => self.write(message).await,
                // Heartbeat and sweep.
                _ = tick.tick() => self.beat().await,
            }
        }
        while let Ok(message) = self.outgoing.try_recv() {
            self.write(message).await;
        }
        let leave = async {
            sqlx::query("delete from rowcast.presence where node = $1").bind(self.node).execute(&self.pool).await?;
            sqlx::query("delete from rowcast.nodes where id = $1").bind(self.node).execute(&self.pool).await
        };
        if let Err(e) = leave.await {
            warn!(error = %e, "removing this gateway's presence failed; the others drop it after the presence timeout");
        }
    }

    /// Registers the node, then (once the change listener reads the log, so
    /// nothing between the two is missed) lists the other gateways' members.
    async fn start(&mut self, cancel: &CancellationToken) -> Result<(), sqlx::Error> {
        sqlx::query(HEARTBEAT).bind(self.node).execute(&self.pool).await?;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = self.live.wait_for(|live| *live) => {}
        }
        let rows: Vec<(Uuid, i64, String, bool, String, sqlx::types::Json<Value>)> =
            sqlx::query_as(PEERS_PRESENT).bind(self.node).fetch_all(&self.pool).await?;
        for (node, sub, topic, private, key, meta) in rows {
            let meta = meta.0.as_object().cloned().unwrap_or_default();
            self.registry.peer_track((node, sub), &topic, private, &key, meta);
        }
        let (any,): (bool,) = sqlx::query_as(ANY_PEER).bind(self.node).bind(self.timeout.as_secs_f64()).fetch_one(&self.pool).await?;
        if any {
            self.peers.saw_now();
        }
        info!(node = %self.node, peer_members = self.registry.peer_members(), "joined the gateways on this database");
        Ok(())
    }

    async fn write(&mut self, message: Outgoing) {
        let result = match &message {
            Outgoing::Track { sub, topic, private, key, fields } => {
                let done = sqlx::query(TRACK)
                    .bind(self.node)
                    .bind(*sub as i64)
                    .bind(topic)
                    .bind(private)
                    .bind(key)
                    .bind(sqlx::types::Json(fields))
                    .execute(&self.pool)
                    .await;
                self.published.insert(*sub, message.clone());
                done
            }
            Outgoing::Untrack { sub } => {
                self.published.remove(sub);
                sqlx::query(UNTRACK).bind(self.node).bind(*sub as i64).execute(&self.pool).await
            }
            broadcast => {
                if !self.peers.alive_within(self.timeout) {
                    return;
                }
                let Some(record) = record_of(self.node, broadcast) else { return };
                sqlx::query("select rowcast.publish($1)").bind(record).execute(&self.pool).await
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "a presence change or broadcast did not reach the other gateways");
        }
    }

    async fn beat(&mut self) {
        let result = async {
            let (inserted,): (bool,) = sqlx::query_as(HEARTBEAT).bind(self.node).fetch_one(&self.pool).await?;
            let swept = sqlx::query(SWEEP).bind(self.timeout.as_secs_f64()).execute(&self.pool).await?.rows_affected();
            if swept > 0 {
                debug!(swept, "removed the presence of gateways past the timeout");
            }
            Ok::<bool, sqlx::Error>(inserted)
        }
        .await;
        match result {
            Ok(true) if !self.published.is_empty() => {
                warn!(members = self.published.len(), "this gateway was presumed dead by the others; writing its presence again");
                let again: Vec<Outgoing> = self.published.values().cloned().collect();
                for message in again {
                    self.write(message).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the cluster heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_payloads_go_through_the_log_as_hex_and_back() {
        let bytes = [0u8, 1, 127, 128, 255];
        assert_eq!(to_hex(&bytes), "00017f80ff");
        assert_eq!(from_hex("00017f80ff").unwrap(), bytes);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }

    #[test]
    fn a_broadcast_record_names_its_node_and_presence_has_none() {
        let node = Uuid::new_v4();
        let r = record_of(node, &Outgoing::Broadcast { topic: "realtime:a".into(), private: true, payload: "{}".into() }).unwrap();
        assert_eq!(r["node"], node.to_string());
        assert_eq!((r["topic"].as_str(), r["private"].as_bool(), r["payload"].as_str()), (Some("realtime:a"), Some(true), Some("{}")));
        assert!(record_of(node, &Outgoing::Untrack { sub: 1 }).is_none());
    }

    #[test]
    fn a_peer_is_alive_only_within_the_timeout_of_its_last_heartbeat() {
        let clock = PeerClock::default();
        assert!(!clock.alive_within(Duration::from_secs(15)), "never seen");
        clock.saw_now();
        assert!(clock.alive_within(Duration::from_secs(15)));
        clock.0.store(chrono::Utc::now().timestamp_millis() - 20_000, Ordering::Relaxed);
        assert!(!clock.alive_within(Duration::from_secs(15)));
    }
}
