//! One task per WebSocket: a control loop and a writer, side by side.
//!
//! Owns a connection's channels (join, duplicate join, leave, access_token,
//! token expiry), its limits (channels per connection, joins per second,
//! frame size, idle timeout, write progress) and its close reasons.
//!
//! The control loop reads frames and decides; it never writes. Everything it
//! says (replies, `system`, `phx_close`, the close frame) goes through the
//! socket's `Outbox`, the same bounded queue the fan-out feeds, and the writer
//! drains it. So a client that stops reading blocks only its own writer:
//! heartbeats, idle checks, token expiry and shutdown keep running, and a
//! write that makes no progress for `write_timeout` closes the socket with
//! 1013 and releases its queue. A join's `ok` is queued before its
//! subscription goes live, so it always precedes the channel's first change.
//! Bad frames are logged and dropped; the socket carries on, as Supabase's does.
//!
//! Memory per socket stays small and bounded: a 4 KiB read buffer, a
//! writer (`wire`) that sends the shared payloads straight from the queue,
//! so no socket keeps a write buffer the size of the largest row it got, and
//! a task of about 2.6 KiB: handling a frame (a join verifies tokens, reads
//! policies, may replay) is a boxed future made per frame, not room every
//! idle socket keeps.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::Message;

use super::channel::{self, JoinRefusal};
use super::filter::MAX_PATTERNS_PER_SOCKET;
use super::handoff::{self, Handoffs};
use super::outbox::{Bounds, Close, Outbox, Slow};
use super::policies::{Policies, PolicyCheck};
use super::protocol::{self, Inbound, Vsn};
use super::registry::{Registry, Route, SubId, Subscription};
use super::replay;
use crate::auth::{now_secs, AuthError, Principal};
use crate::changes::tables::Tables;
use crate::changes::watch::Watches;
use crate::changes::window::Position;
use crate::config::Limits;
use crate::keyring::Keyring;
use crate::metrics;

mod private;
mod pushes;
mod wire;

use wire::ReadSide;

/// Everything a socket task needs from the app; cheap to clone.
#[derive(Clone)]
pub struct SocketContext {
    pub registry: Registry,
    pub tables: Tables,
    pub keyring: Keyring,
    /// The app's pool (replay reads).
    pub pool: sqlx::PgPool,
    /// Asks the `realtime.messages` policies for private channels.
    pub policies: PolicyCheck,
    pub limits: Arc<Limits>,
    /// True while the change listener is connected.
    pub live: watch::Receiver<bool>,
    /// Cancelled at shutdown: every socket asks its client to reconnect and goes away.
    pub shutdown: CancellationToken,
    /// Channels handed off by a draining gateway, which replay what they missed.
    pub handoffs: Handoffs,
    /// Tables captured only while watched: a join arms those it reads.
    pub watches: Watches,
}

/// Close codes (RFC 6455).
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;
const NORMAL: u16 = 1000;
const LIVE_WAIT: Duration = Duration::from_secs(5);
/// Read buffer of one socket. tungstenite's default (128 KiB, allocated up
/// front) was most of an idle socket's cost; client frames are small, and a
/// large one grows the buffer as it arrives.
const READ_BUFFER_BYTES: usize = 4 * 1024;

struct Joined {
    join_ref: Option<String>,
    sub: SubId,
    exp: i64,
    ack: bool,
    /// Pattern filters its bindings hold.
    patterns: usize,
    /// Its track/untrack budget (see `presence_quota`).
    presence_calls: DefaultDirectRateLimiter,
    /// A private channel's rights, from its policies; `None` on a public channel (all allowed).
    policies: Option<Policies>,
}

impl Joined {
    fn may_send(&self) -> bool {
        self.policies.is_none_or(|p| p.broadcast_write)
    }

    fn may_track(&self) -> bool {
        self.policies.is_none_or(|p| p.presence_write)
    }
}

/// Presence calls one channel may make: a burst of 5, then one per 6 s.
/// Supabase allows 5 per 30 s and closes the channel past it; its users meet
/// that as a quota that kills a channel on the sixth edit, so here it is a
/// rate that refills evenly, with Supabase's close past it.
fn presence_quota() -> Quota {
    Quota::with_period(Duration::from_secs(6)).expect("a non-zero period").allow_burst(NonZeroU32::new(5).expect("5 is non-zero"))
}

/// What a join was granted: whose it is, a private channel's rights, and what it replays.
struct Grant {
    principal: Principal,
    policies: Option<Policies>,
    replayed: Vec<Value>,
}

struct Conn {
    vsn: Vsn,
    apikey: Principal,
    ctx: SocketContext,
    outbox: Outbox,
    channels: HashMap<String, Joined>,
    joins: DefaultDirectRateLimiter,
    last_frame: Instant,
}

/// Why the control loop ended: with a close frame to send, or because the
/// client or the writer is gone already.
type End = Option<Close>;

/// Serves one upgraded connection (the HTTP handshake is done) until it
/// closes: `read` and `write` are its two halves, `ahead` what the HTTP
/// layer read past the handshake.
pub async fn serve<R, W>(read: R, ahead: Bytes, write: W, vsn: Vsn, apikey: Principal, ctx: SocketContext)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = Arc::clone(&ctx.limits);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let stream = WebSocketStream::from_raw_socket(ReadSide::new(ahead, read), Role::Server, Some(config)).await;
    let outbox = Outbox::new(Bounds { frames: limits.outgoing_queue, bytes: limits.outgoing_queue_bytes });
    let writer_done = CancellationToken::new();
    let per_second = NonZeroU32::new(limits.max_joins_per_second.max(1)).expect("max(1) is non-zero");
    let mut conn = Conn {
        vsn,
        apikey,
        outbox: outbox.clone(),
        channels: HashMap::new(),
        joins: RateLimiter::direct(Quota::per_second(per_second)),
        last_frame: Instant::now(),
        ctx,
    };
    // The writer is a task of its own: a wake for a queued frame polls only the
    // writer, not the control loop's reads and timers.
    let writer = tokio::spawn(wire::write(write, outbox.clone(), limits.write_timeout(), writer_done.clone()));
    // Awaited in place, not held in a variable first: a future kept in a local
    // and then awaited took its room twice in every socket's task.
    let end = conn.run(stream, &writer_done).await;
    conn.leave_all();
    match end {
        Some(close) => {
            debug!(code = close.code, reason = %close.reason, "closing socket");
            outbox.close(close);
        }
        None => outbox.abort(Close::new(NORMAL, "")),
    }
    let _ = writer.await;
    count_end(&outbox, conn.ctx.registry.metrics());
}

/// Counts a slow consumer's close and the frames its queue dropped.
fn count_end(outbox: &Outbox, metrics: &metrics::Realtime) {
    let ended = outbox.ended();
    if ended.dropped > 0 {
        metrics.dropped_frames.inc_by(ended.dropped);
    }
    if let Some(reason) = ended.slow {
        metrics.slow_consumer_closes.get_or_create(&metrics::Reason { reason: reason.label() }).inc();
    }
}

impl Conn {
    async fn run<S>(&mut self, mut stream: WebSocketStream<S>, writer_done: &CancellationToken) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let idle_at = self.last_frame + self.ctx.limits.idle_timeout();
            let expiry = self.next_expiry();
            let step = tokio::select! {
                // Server shutdown: tell each channel, then go away.
                _ = shutdown.cancelled() => {
                    self.close_all_channels();
                    return Some(Close::new(GOING_AWAY, "server shutting down"));
                }
                // The writer stopped: the client is gone, or too slow and being closed.
                _ = writer_done.cancelled() => return None,
                // A frame from the client.
                // Boxed: handling a frame (a join verifies tokens, reads policies, may
                // replay) is a large future, and inline it sized every socket's task.
                msg = stream.next() => Box::pin(self.on_message(msg)).await,
                // No frame for the idle timeout.
                _ = sleep_until(idle_at) => Err(Some(Close::new(NORMAL, "idle timeout: no frame received"))),
                // A channel's token expired.
                _ = sleep_until(expiry.unwrap_or(idle_at)), if expiry.is_some() => {
                    self.expire_channels();
                    Ok(())
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        let exp = self.channels.values().map(|j| j.exp).min()?;
        let secs = (exp - now_secs()).max(0) as u64;
        Some(Instant::now() + Duration::from_secs(secs))
    }

    fn frame(&self, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, event: &str, payload: &str) -> Bytes {
        Bytes::from(protocol::encode(self.vsn, join_ref, msg_ref, topic, event, payload))
    }

    fn push(&self, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, event: &str, payload: &str) {
        self.outbox.push(self.frame(join_ref, msg_ref, topic, event, payload));
    }

    fn reply_frame(&self, m: &Inbound, payload: &str) -> Bytes {
        self.frame(m.join_ref.as_deref(), m.msg_ref.as_deref(), &m.topic, "phx_reply", payload)
    }

    fn reply(&self, m: &Inbound, payload: &str) {
        self.outbox.push(self.reply_frame(m, payload));
    }

    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> Result<(), End> {
        self.last_frame = Instant::now();
        let inbound = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(None),
            Some(Err(e)) => return Err(read_error(&e, self.ctx.limits.max_frame_bytes)),
            Some(Ok(Message::Text(text))) => protocol::decode_text(self.vsn, text.as_str()),
            Some(Ok(Message::Binary(bytes))) => protocol::decode_binary(&bytes),
            Some(Ok(Message::Ping(payload))) => {
                self.outbox.pong(payload);
                return Ok(());
            }
            Some(Ok(_)) => return Ok(()),
        };
        match inbound {
            Ok(m) => self.dispatch(m).await,
            Err(e) => {
                warn!(error = %e, "dropped a malformed frame");
                Ok(())
            }
        }
    }

    async fn dispatch(&mut self, m: Inbound) -> Result<(), End> {
        match (m.topic.as_str(), m.event.as_str()) {
            ("phoenix", "heartbeat") => self.reply(&m, &protocol::reply_ok(&json!({}))),
            (_, "phx_join") => return self.join(m).await,
            (_, "phx_leave") => self.leave(&m),
            (topic, _) if !self.channels.contains_key(topic) => self.reply(&m, &protocol::reply_error("unmatched topic")),
            (_, "access_token") => self.access_token(&m).await,
            (_, "broadcast") => self.broadcast(&m),
            (_, "presence") => self.presence(&m),
            (_, event) => self.reply(&m, &protocol::reply_error(&format!("Unknown event: {event}"))),
        }
        Ok(())
    }

    /// The token a join or access_token push carries, unless it is an opaque `sb_` key.
    fn token_of(payload: &Value) -> Option<&str> {
        let token = payload.get("access_token").or_else(|| payload.get("user_token")).and_then(Value::as_str)?;
        (!token.starts_with("sb_")).then_some(token)
    }

    /// A join in steps: admit (rates, topic, limits), authorize (token, live
    /// feed), subscribe. Any refusal is an error reply in Supabase's words.
    async fn join(&mut self, m: Inbound) -> Result<(), End> {
        let authorized = match self.admit(&m) {
            Ok(sub_topic) => self.authorize(&m, sub_topic).await.map(|grant| (sub_topic, grant)),
            Err(refusal) => Err(refusal),
        };
        let refusal = match authorized {
            Ok((sub_topic, grant)) => match self.subscribe(&m, sub_topic, grant).await {
                Ok(()) => {
                    self.count_join("ok");
                    return Ok(());
                }
                Err(refusal) => refusal,
            },
            Err(refusal) => refusal,
        };
        self.count_join(refusal.kind());
        self.reply(&m, &protocol::reply_error(&refusal.to_string()));
        match refusal {
            JoinRefusal::JoinRate => Err(Some(Close::new(GOING_AWAY, "Too many joins per second"))),
            _ => Ok(()),
        }
    }

    fn count_join(&self, outcome: &'static str) {
        self.ctx.registry.metrics().joins.get_or_create(&metrics::Outcome { outcome }).inc();
    }

    /// The checks that need no token: join rate, topic, a duplicate join (the
    /// old one gets `phx_close`), channel and binding counts.
    fn admit<'m>(&mut self, m: &'m Inbound) -> Result<&'m str, JoinRefusal> {
        if self.joins.check().is_err() {
            return Err(JoinRefusal::JoinRate);
        }
        let sub_topic = channel::sub_topic(&m.topic)?;
        if self.ctx.limits.private_only && !private::asks_private(&m.payload) {
            return Err(JoinRefusal::PrivateOnly);
        }
        if let Some(old) = self.channels.remove(&m.topic) {
            self.ctx.registry.remove(old.sub);
            self.push(old.join_ref.as_deref(), old.join_ref.as_deref(), &m.topic, "phx_close", "{}");
        }
        if self.channels.len() >= self.ctx.limits.max_channels_per_client {
            return Err(JoinRefusal::TooManyChannels);
        }
        channel::check_bindings(&m.payload)?;
        Ok(sub_topic)
    }

    /// Whose channel this is (the join's token, else the socket's key), held
    /// until the change feed is live so nothing committed after `ok` is missed.
    /// A private join also needs its topic's policies to let it read, and a
    /// replay reads what it asked for before the join goes live.
    async fn authorize(&self, m: &Inbound, sub_topic: &str) -> Result<Grant, JoinRefusal> {
        let principal = match Self::token_of(&m.payload) {
            Some(token) => self.ctx.keyring.verify(token).await.map_err(|e| JoinRefusal::Token(e.join_reason()))?,
            None => self.apikey.clone(),
        };
        let private = private::asks_private(&m.payload);
        let policies = if private { Some(self.policies_for(&principal, sub_topic).await?) } else { None };
        let replayed = match replay::asked(&m.payload, private).map_err(|e| JoinRefusal::Replay(e.to_string()))? {
            Some(_) if policies.is_some_and(|p| !p.broadcast_read) => return Err(JoinRefusal::Unauthorized(sub_topic.to_owned())),
            Some(ask) => replay::messages(&self.ctx.pool, sub_topic, ask).await.map_err(|e| JoinRefusal::Replay(e.to_string()))?,
            None => Vec::new(),
        };
        if !self.wait_live().await {
            return Err(JoinRefusal::NotLive);
        }
        Ok(Grant { principal, policies, replayed })
    }

    /// Plans the bindings, makes sure the tables they read are captured,
    /// queues the reply and notices, then makes the subscription live.
    async fn subscribe(&mut self, m: &Inbound, sub_topic: &str, grant: Grant) -> Result<(), JoinRefusal> {
        let Grant { principal, policies, replayed } = grant;
        let patterns_left = MAX_PATTERNS_PER_SOCKET.saturating_sub(self.channels.values().map(|j| j.patterns).sum());
        let mut plan = channel::plan(&m.payload, &self.ctx.tables, patterns_left);
        if plan.unknown_tables && self.ctx.tables.refresh().await {
            plan = channel::plan(&m.payload, &self.ctx.tables, patterns_left);
        }
        if let Err(e) = self.ctx.watches.arm(|schema, table| plan.bindings.iter().any(|b| b.reads(schema, table))).await {
            warn!(error = %e, topic = %m.topic, "a join's tables could not be armed for capture");
            return Err(JoinRefusal::NotLive);
        }
        let mut frames = vec![self.reply_frame(m, &protocol::reply_ok(&plan.response))];
        for notice in &plan.notices {
            let payload = protocol::system("postgres_changes", notice.ok, &notice.message, sub_topic);
            frames.push(self.frame(m.join_ref.as_deref(), None, &m.topic, "system", &payload));
        }
        for message in &replayed {
            frames.push(self.frame(None, None, &m.topic, "broadcast", &message.to_string()));
        }
        if plan.replication_ready {
            // The join waited for the change feed, which carries database broadcasts: they flow now.
            let payload = protocol::system("system", true, "Replication connection established", sub_topic);
            frames.push(self.frame(m.join_ref.as_deref(), None, &m.topic, "system", &payload));
        }
        let exp = principal.exp;
        let route = Route { outbox: self.outbox.clone(), vsn: self.vsn };
        // A private channel hears presence only if its policies let it read presence.
        let presence = plan.presence_enabled && policies.is_none_or(|p| p.presence_read);
        // A channel can be handed off, and may be resuming from a handoff.
        let key = self.ctx.handoffs.enabled().then(|| handoff::key(Self::token_of(&m.payload).unwrap_or(""), &m.topic, &m.payload));
        let resume = key.as_ref().and_then(|k| self.ctx.handoffs.resume(k));
        let replayed_ids = replayed.iter().filter_map(|m| m["meta"]["id"].as_str().map(str::to_owned)).collect();
        let sub = Subscription::new(m.topic.as_str().into(), route, principal, plan.bindings, plan.broadcast_self)
            .with_presence(presence, plan.presence_key, m.join_ref.clone())
            .private(policies.is_some())
            .handoff(key)
            .replayed(replayed_ids);
        let sub = match (resume, key) {
            (Some(from), Some(key)) => match self.resume(m, sub, frames, &from).await {
                Some(id) => id,
                None => {
                    // Its other replays would fall short the same way.
                    self.ctx.handoffs.forget(&key);
                    return Ok(());
                }
            },
            _ => self.ctx.registry.join(sub, &self.outbox, frames),
        };
        let joined = Joined {
            join_ref: m.join_ref.clone(),
            sub,
            exp,
            ack: plan.broadcast_ack,
            patterns: plan.patterns,
            presence_calls: RateLimiter::direct(presence_quota()),
            policies,
        };
        self.channels.insert(m.topic.clone(), joined);
        info!(topic = %m.topic, "channel joined");
        Ok(())
    }

    /// Joins a channel handed off by a draining gateway: it gets the changes
    /// `from` misses (kept in memory, or read from the log when they are not
    /// all kept), then its live ones. When one log read cannot hold all it
    /// missed, the channel gets `phx_error` instead of part of them and is
    /// left (`None`): supabase-js reports `CHANNEL_ERROR` and rejoins, live,
    /// as after any transport failure, so the app knows to fetch afresh.
    async fn resume(&self, m: &Inbound, sub: Subscription, frames: Vec<Bytes>, from: &Position) -> Option<SubId> {
        let topic = m.topic.as_str();
        let (id, since) = self.ctx.registry.join_resuming(sub, &self.outbox, frames, from);
        let older =
            if since.complete { Default::default() } else { self.ctx.handoffs.missed(&self.ctx.pool, &self.ctx.tables, from).await };
        if older.complete_through < since.floor {
            warn!(
                topic,
                from = from.lowest(),
                read_through = older.complete_through,
                kept_above = since.floor,
                "a resuming channel missed more than one log read holds: told to rejoin without a replay"
            );
            self.ctx.registry.remove(id);
            let jr = m.join_ref.as_deref();
            self.push(jr, jr, topic, "phx_error", "{}");
            return None;
        }
        let mut replay = self.ctx.registry.replay(id, &older.changes, since);
        // Live changes are held while the replay, then what was held, goes
        // out at the client's reading pace; the channel is live once none is left.
        let stall = self.ctx.limits.write_timeout();
        let mut next = std::mem::take(&mut replay.frames);
        loop {
            if !next.is_empty() && !self.outbox.push_paced(next, stall).await {
                // Closing: the channel goes with the socket, still holding (bounded by MAX_HELD).
                self.outbox.let_go(Slow::NoProgress(stall.as_secs()));
                break;
            }
            next = self.ctx.registry.take_held(id, &replay);
            if next.is_empty() {
                break;
            }
        }
        info!(topic, from = from.lowest(), replayed = replay.changes, "channel resumed after a handoff");
        Some(id)
    }

    /// Waits (at most `LIVE_WAIT`) for the change feed to be live.
    fn wait_live(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let mut live = self.ctx.live.clone();
        async move { tokio::time::timeout(LIVE_WAIT, live.wait_for(|v| *v)).await.is_ok_and(|r| r.is_ok()) }
    }

    fn leave(&mut self, m: &Inbound) {
        if let Some(joined) = self.channels.remove(&m.topic) {
            self.ctx.registry.remove(joined.sub);
        }
        self.reply(m, &protocol::reply_ok(&json!({})));
    }

    async fn access_token(&mut self, m: &Inbound) {
        let Some(token) = Self::token_of(&m.payload) else { return };
        match self.ctx.keyring.verify(token).await {
            Ok(principal) => {
                let private = self.channels.get(&m.topic).is_some_and(|j| j.policies.is_some());
                if private && !self.recheck_private(&m.topic, &principal).await {
                    return;
                }
                let joined = self.channels.get_mut(&m.topic).expect("dispatch checked the topic is joined");
                joined.exp = principal.exp;
                self.ctx.registry.set_principal(joined.sub, principal);
            }
            Err(e) => self.shut_channel(&m.topic, &e.to_string()),
        }
    }

    /// Supabase's channel shutdown: a `system` error, then `phx_close`.
    fn shut_channel(&mut self, topic: &str, why: &str) {
        let Some(joined) = self.channels.remove(topic) else { return };
        self.ctx.registry.remove(joined.sub);
        let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
        let jr = joined.join_ref.as_deref();
        self.push(jr, None, topic, "system", &protocol::system("system", false, why, sub_topic));
        self.push(jr, jr, topic, "phx_close", "{}");
    }

    fn expire_channels(&mut self) {
        let now = now_secs();
        let expired: Vec<(String, i64)> = self.channels.iter().filter(|(_, j)| j.exp <= now).map(|(t, j)| (t.clone(), j.exp)).collect();
        for (topic, exp) in expired {
            info!(topic = %topic, "channel token expired");
            self.shut_channel(&topic, &AuthError::Expired(now - exp).to_string());
        }
    }

    /// The contract's operator disconnect, on every channel: a `system` ok
    /// "Server requested disconnect", then the socket closes. Not `phx_close`,
    /// which tells supabase-js the channel is over for good: after a close
    /// it reconnects and rejoins every channel, here or on another gateway.
    fn close_all_channels(&mut self) {
        for (topic, joined) in std::mem::take(&mut self.channels) {
            self.ctx.registry.remove(joined.sub);
            let sub_topic = topic.strip_prefix("realtime:").unwrap_or(&topic);
            let payload = protocol::system("system", true, "Server requested disconnect", sub_topic);
            self.push(joined.join_ref.as_deref(), None, &topic, "system", &payload);
        }
    }

    fn leave_all(&mut self) {
        for (_, joined) in self.channels.drain() {
            self.ctx.registry.remove(joined.sub);
        }
    }
}

/// Maps a read error to how we close: an oversized frame gets 1009 and the limit.
fn read_error(e: &tungstenite::Error, max_frame_bytes: usize) -> End {
    if let tungstenite::Error::Capacity(_) = e {
        return Some(Close::new(TOO_BIG, format!("frame larger than {max_frame_bytes} bytes")));
    }
    debug!(error = %e, "socket read failed");
    None
}

#[cfg(test)]
mod tests {
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    /// The size of the future an `async fn` of six arguments returns.
    fn future_size<A, B, C, D, E, F, Fut>(_: fn(A, B, C, D, E, F) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_sockets_task_stays_small_because_frame_handling_is_boxed_and_nothing_is_held_twice() {
        let size = future_size(super::serve::<OwnedReadHalf, OwnedWriteHalf>);
        // 4,680 bytes in a debug build when a frame's handling was inline and the control
        // loop's future was held in a variable, then awaited; 1,968 since (5,968 and 2,672
        // bytes for the whole task in a release build).
        assert!(size <= 2_500, "every socket's task holds {size} bytes before anything it allocates");
    }
}
