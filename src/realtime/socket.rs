//! One task per WebSocket: read frames, answer them, drain the outgoing queue.
//!
//! Owns a connection's channels (join, duplicate join, leave, access_token,
//! token expiry), its limits (channels per connection, joins per second,
//! frame size, idle timeout) and its close reasons. One `select!` loop: a
//! reply is written before the loop looks at the queue again, so a join's
//! `ok` always precedes the channel's first change. Bad frames are logged
//! and dropped; the socket carries on, as Supabase's does.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::channel;
use super::protocol::{self, Inbound, Vsn};
use super::registry::{Outbox, Outgoing, Registry, SubId, Subscription};
use crate::auth::{now_secs, AuthError, Principal, Verifier};
use crate::changes::tables::Tables;
use crate::config::Limits;

/// Everything a socket task needs from the app; cheap to clone.
#[derive(Clone)]
pub struct SocketContext {
    pub pool: sqlx::PgPool,
    pub registry: Registry,
    pub tables: Tables,
    pub verifier: Verifier,
    pub limits: Arc<Limits>,
    /// True while the change listener is connected.
    pub live: watch::Receiver<bool>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// Close codes (RFC 6455) and the reasons we send with them.
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;
const NORMAL: u16 = 1000;
const LIVE_WAIT: Duration = Duration::from_secs(5);

struct Joined {
    join_ref: Option<String>,
    sub: SubId,
    exp: i64,
    ack: bool,
}

struct Conn {
    ws: WebSocket,
    vsn: Vsn,
    apikey: Principal,
    ctx: SocketContext,
    outbox: Outbox,
    channels: HashMap<String, Joined>,
    joins: DefaultDirectRateLimiter,
    last_frame: Instant,
}

/// Why the loop ended.
enum End {
    Close(u16, String),
    Gone,
}

/// Serves one upgraded socket until it closes.
pub async fn serve(ws: WebSocket, vsn: Vsn, apikey: Principal, ctx: SocketContext) {
    let (outbox, rx, slow) = Outbox::new(ctx.limits.outgoing_queue);
    let per_second = NonZeroU32::new(ctx.limits.max_joins_per_second.max(1)).expect("max(1) is non-zero");
    let mut conn = Conn {
        ws,
        vsn,
        apikey,
        outbox,
        channels: HashMap::new(),
        joins: RateLimiter::direct(Quota::per_second(per_second)),
        last_frame: Instant::now(),
        ctx,
    };
    let end = conn.run(rx, slow).await;
    conn.leave_all();
    if let End::Close(code, reason) = end {
        debug!(code, %reason, "closing socket");
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = conn.ws.send(Message::Close(Some(frame))).await;
    }
}

impl Conn {
    async fn run(&mut self, mut rx: mpsc::Receiver<Outgoing>, slow: CancellationToken) -> End {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let idle_at = self.last_frame + self.ctx.limits.idle_timeout();
            let expiry = self.next_expiry();
            let step = tokio::select! {
                // Server shutdown: tell each channel, then go away.
                _ = shutdown.cancelled() => {
                    self.close_all_channels().await;
                    return End::Close(GOING_AWAY, "server shutting down".into());
                }
                // The queue overflowed: this client cannot keep up.
                _ = slow.cancelled() => return End::Close(TRY_AGAIN_LATER, "slow consumer: outgoing queue full".into()),
                // A frame from the client.
                msg = self.ws.recv() => self.on_message(msg).await,
                // A change or broadcast for one of our channels.
                Some(out) = rx.recv() => self.send_outgoing(out).await,
                // No frame for the idle timeout.
                _ = sleep_until(idle_at) => Err(End::Close(NORMAL, "idle timeout: no frame received".into())),
                // A channel's token expired.
                _ = sleep_until(expiry.unwrap_or(idle_at)), if expiry.is_some() => self.expire_channels().await,
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

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.ws.send(Message::Text(text.into())).await.map_err(|_| End::Gone)
    }

    async fn push(&mut self, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, event: &str, payload: &str) -> Result<(), End> {
        let frame = protocol::encode(self.vsn, join_ref, msg_ref, topic, event, payload);
        self.send_text(frame).await
    }

    async fn reply(&mut self, m: &Inbound, payload: String) -> Result<(), End> {
        self.push(m.join_ref.as_deref(), m.msg_ref.as_deref(), &m.topic, "phx_reply", &payload).await
    }

    async fn send_outgoing(&mut self, out: Outgoing) -> Result<(), End> {
        let (topic, event, payload) = match &out {
            Outgoing::Change { topic, ids, data } => (topic, "postgres_changes", protocol::postgres_changes(ids, data)),
            Outgoing::Broadcast { topic, payload } => (topic, "broadcast", payload.to_string()),
        };
        // A queued frame for a channel left since is dropped.
        if !self.channels.contains_key(&**topic) {
            return Ok(());
        }
        self.push(None, None, topic, event, &payload).await
    }

    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        self.last_frame = Instant::now();
        let inbound = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Err(e)) => return Err(read_error(&e, self.ctx.limits.max_frame_bytes)),
            Some(Ok(Message::Text(text))) => protocol::decode_text(self.vsn, text.as_str()),
            Some(Ok(Message::Binary(bytes))) => protocol::decode_binary(&bytes),
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
            ("phoenix", "heartbeat") => self.reply(&m, protocol::reply_ok(&json!({}))).await,
            (_, "phx_join") => self.join(m).await,
            (_, "phx_leave") => self.leave(m).await,
            (topic, _) if !self.channels.contains_key(topic) => self.reply(&m, protocol::reply_error("unmatched topic")).await,
            (_, "access_token") => self.access_token(m).await,
            (_, "broadcast") => self.broadcast(m).await,
            (_, "presence") => self.reply(&m, protocol::reply_error("Presence is not supported by this server")).await,
            (_, event) => {
                let reason = format!("Unknown event: {event}");
                self.reply(&m, protocol::reply_error(&reason)).await
            }
        }
    }

    /// The token a join or access_token push carries, unless it is an opaque `sb_` key.
    fn token_of(payload: &Value) -> Option<&str> {
        let token = payload.get("access_token").or_else(|| payload.get("user_token")).and_then(Value::as_str)?;
        (!token.starts_with("sb_")).then_some(token)
    }

    async fn join(&mut self, m: Inbound) -> Result<(), End> {
        if self.joins.check().is_err() {
            self.reply(&m, protocol::reply_error("ClientJoinRateLimitReached: Too many joins per second")).await?;
            return Err(End::Close(GOING_AWAY, "Too many joins per second".into()));
        }
        let Some(sub_topic) = m.topic.strip_prefix("realtime:") else {
            return self.reply(&m, protocol::reply_error("unmatched topic")).await;
        };
        if sub_topic.is_empty() {
            return self.reply(&m, protocol::reply_error("TopicNameRequired: You must provide a topic name")).await;
        }
        if let Some(old) = self.channels.remove(&m.topic) {
            self.ctx.registry.remove(old.sub);
            self.push(old.join_ref.as_deref(), old.join_ref.as_deref(), &m.topic, "phx_close", "{}").await?;
        }
        if self.channels.len() >= self.ctx.limits.max_channels_per_client {
            return self.reply(&m, protocol::reply_error("ChannelRateLimitReached: Too many channels")).await;
        }
        let principal = match Self::token_of(&m.payload) {
            Some(token) => self.ctx.verifier.verify(token),
            None => Ok(self.apikey.clone()),
        };
        let principal = match principal {
            Ok(p) => p,
            Err(e) => return self.reply(&m, protocol::reply_error(&e.join_reason())).await,
        };
        if !self.wait_live().await {
            let reason = "UnableToConnectToProject: Realtime was unable to connect to the project database";
            return self.reply(&m, protocol::reply_error(reason)).await;
        }
        let mut plan = channel::plan(&m.payload, &self.ctx.tables);
        if plan.unknown_tables && self.ctx.tables.reload(&self.ctx.pool).await.is_ok() {
            plan = channel::plan(&m.payload, &self.ctx.tables);
        }
        let exp = principal.exp;
        let sub = Subscription::new(m.topic.as_str().into(), self.outbox.clone(), principal, plan.bindings, plan.broadcast_self);
        let sub = self.ctx.registry.insert(sub);
        self.channels.insert(m.topic.clone(), Joined { join_ref: m.join_ref.clone(), sub, exp, ack: plan.broadcast_ack });
        info!(topic = %m.topic, "channel joined");
        self.reply(&m, protocol::reply_ok(&plan.response)).await?;
        for notice in plan.notices {
            let payload = protocol::system("postgres_changes", notice.ok, &notice.message, sub_topic);
            self.push(m.join_ref.as_deref(), None, &m.topic, "system", &payload).await?;
        }
        Ok(())
    }

    /// Holds a join until the change feed is live, so nothing committed after `ok` is missed.
    fn wait_live(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let mut live = self.ctx.live.clone();
        async move {
        tokio::time::timeout(LIVE_WAIT, live.wait_for(|v| *v)).await.is_ok_and(|r| r.is_ok())
        }
    }

    async fn leave(&mut self, m: Inbound) -> Result<(), End> {
        if let Some(joined) = self.channels.remove(&m.topic) {
            self.ctx.registry.remove(joined.sub);
        }
        self.reply(&m, protocol::reply_ok(&json!({}))).await
    }

    async fn access_token(&mut self, m: Inbound) -> Result<(), End> {
        let Some(token) = Self::token_of(&m.payload) else { return Ok(()) };
        match self.ctx.verifier.verify(token) {
            Ok(principal) => {
                let joined = self.channels.get_mut(&m.topic).expect("dispatch checked the topic is joined");
                joined.exp = principal.exp;
                self.ctx.registry.set_principal(joined.sub, principal);
                Ok(())
            }
            Err(e) => self.shut_channel(&m.topic, &e).await,
        }
    }

    async fn broadcast(&mut self, m: Inbound) -> Result<(), End> {
        let joined = &self.channels[&m.topic];
        let (sub, ack) = (joined.sub, joined.ack);
        let mut payload = m.payload.clone();
        if let Some(obj) = payload.as_object_mut() {
            obj.entry("type").or_insert(json!("broadcast"));
        }
        self.ctx.registry.broadcast(sub, &m.topic, payload.to_string().into());
        if ack {
            self.reply(&m, protocol::reply_ok(&json!({}))).await?;
        }
        Ok(())
    }

    /// Supabase's channel shutdown: a `system` error, then `phx_close`.
    async fn shut_channel(&mut self, topic: &str, why: &AuthError) -> Result<(), End> {
        let Some(joined) = self.channels.remove(topic) else { return Ok(()) };
        self.ctx.registry.remove(joined.sub);
        let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
        let jr = joined.join_ref.as_deref();
        self.push(jr, None, topic, "system", &protocol::system("system", false, &why.to_string(), sub_topic)).await?;
        self.push(jr, jr, topic, "phx_close", "{}").await
    }

    async fn expire_channels(&mut self) -> Result<(), End> {
        let now = now_secs();
        let expired: Vec<(String, i64)> =
            self.channels.iter().filter(|(_, j)| j.exp <= now).map(|(t, j)| (t.clone(), j.exp)).collect();
        for (topic, exp) in expired {
            info!(topic = %topic, "channel token expired");
            self.shut_channel(&topic, &AuthError::Expired(now - exp)).await?;
        }
        Ok(())
    }

    async fn close_all_channels(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            if let Some(joined) = self.channels.remove(&topic) {
                self.ctx.registry.remove(joined.sub);
                let jr = joined.join_ref.as_deref();
                let _ = self.push(jr, jr, &topic, "phx_close", "{}").await;
            }
        }
    }

    fn leave_all(&mut self) {
        for (_, joined) in self.channels.drain() {
            self.ctx.registry.remove(joined.sub);
        }
    }
}

/// Maps a read error to how we close: an oversized frame gets 1009 and the limit.
fn read_error(e: &axum::Error, max_frame_bytes: usize) -> End {
    use std::error::Error;
    let inner = e.source().and_then(|s| s.downcast_ref::<tungstenite::Error>());
    if let Some(tungstenite::Error::Capacity(_)) = inner {
        return End::Close(TOO_BIG, format!("frame larger than {max_frame_bytes} bytes"));
    }
    debug!(error = %e, "socket read failed");
    End::Gone
}
