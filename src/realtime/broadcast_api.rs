//! Supabase's broadcast REST API: a server (or `channel.httpSend()`, or a
//! `send()` before the channel is joined) posts messages that every channel
//! on the topic receives.
//!
//! - `POST /realtime/v1/api/broadcast`: `{messages: [{topic, event, payload, private?, id?}]}`.
//! - `POST /realtime/v1/api/broadcast/<topic>/events/<event>[?private=true]`:
//!   the body is the payload: `application/json`, or `application/octet-stream`
//!   for raw bytes, delivered as a kind-4 binary frame to v2 channels only.
//!
//! Both answer 202 with no body. The caller's JWT (Bearer, else `apikey`) must
//! be valid (else 401 `{"message":"Unauthorized"}`); each message counts
//! against a per-client-IP rate (429 past it), and a payload over
//! `--max-payload-kb` is refused with 422. Topics are sub-topics, without
//! `realtime:`. A private message reaches the private channels of its topic,
//! if the sender may send there (the topic's INSERT policy, or the topic
//! rules): in a batch a denied one is skipped (still 202), a denied single
//! message gets 403 `{"message":"Unauthorized"}`, as on Supabase.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::policies::PolicyCheck;
use super::registry::{Origin, Registry};
use crate::auth::{request_token, Principal};
use crate::keyring::Keyring;

/// What the handlers need.
#[derive(Clone)]
pub struct BroadcastApi {
    pub registry: Registry,
    pub keyring: Keyring,
    /// Who may send private messages.
    pub policies: PolicyCheck,
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl BroadcastApi {
    /// The API over `registry`, allowing `per_second` messages per client IP.
    pub fn new(registry: Registry, keyring: Keyring, policies: PolicyCheck, max_payload_bytes: usize, per_second: u32) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("max(1) is non-zero"));
        BroadcastApi { registry, keyring, policies, max_payload_bytes, limiter: Arc::new(RateLimiter::keyed(quota)) }
    }

    /// Whether `principal` may send on private topic `topic`; a failed check is a no.
    async fn may_send(&self, principal: &Principal, topic: &str) -> bool {
        self.policies.check(principal, topic).await.is_ok_and(|p| p.broadcast_write)
    }
}

/// The two routes.
pub fn router(api: BroadcastApi) -> Router {
    Router::new()
        .route("/realtime/v1/api/broadcast", post(batch))
        .route("/realtime/v1/api/broadcast/{topic}/events/{event}", post(single))
        .with_state(api)
}

/// One message of a batch.
#[derive(Deserialize)]
struct Message {
    topic: String,
    event: String,
    payload: Map<String, Value>,
    #[serde(default)]
    private: bool,
    id: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct SingleQuery {
    #[serde(default)]
    private: Option<String>,
}

fn answer(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// Checks the caller's token and spends `messages` from its IP's rate.
async fn admit(api: &BroadcastApi, headers: &HeaderMap, peer: IpAddr, messages: u32) -> Result<Principal, Response> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = request_token(h("authorization"), h("apikey")).ok_or_else(|| answer(StatusCode::UNAUTHORIZED, "Unauthorized"))?;
    let principal = api.keyring.verify(token).await.map_err(|_| answer(StatusCode::UNAUTHORIZED, "Unauthorized"))?;
    let n = NonZeroU32::new(messages.max(1)).expect("max(1) is non-zero");
    match api.limiter.check_key_n(&peer, n) {
        Ok(Ok(())) => Ok(principal),
        Ok(Err(_)) => Err(answer(StatusCode::TOO_MANY_REQUESTS, "You have exceeded your rate limit")),
        Err(_) => Err(answer(StatusCode::TOO_MANY_REQUESTS, "You have exceeded your rate limit, please reduce the batch size")),
    }
}

/// Sends one message to every channel on its topic, in the private or the public namespace.
fn deliver(api: &BroadcastApi, topic: &str, event: &str, payload: Value, private: bool, id: Option<String>) {
    let mut body = json!({ "type": "broadcast", "event": event, "payload": payload });
    if let Some(id) = id {
        body["meta"] = json!({ "id": id });
    }
    api.registry.broadcast(Origin::Rest, &format!("realtime:{topic}"), private, &body.to_string());
}

async fn batch(State(api): State<BroadcastApi>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, body: Bytes) -> Response {
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return answer(StatusCode::UNPROCESSABLE_ENTITY, &format!("invalid messages: {e}")),
    };
    let principal = match admit(&api, &headers, peer.ip(), batch.messages.len().try_into().unwrap_or(u32::MAX)).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    if batch.messages.iter().any(|m| serde_json::to_vec(&m.payload).map_or(0, |v| v.len()) > api.max_payload_bytes) {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, "Payload size exceeds tenant limit");
    }
    if batch.messages.iter().any(|m| m.topic.is_empty() || m.event.is_empty()) {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, "every message needs a topic and an event");
    }
    let mut allowed: Vec<(String, bool)> = Vec::new();
    for m in batch.messages {
        if m.private {
            let known = allowed.iter().find(|(t, _)| *t == m.topic).map(|(_, ok)| *ok);
            let ok = match known {
                Some(ok) => ok,
                None => {
                    let ok = api.may_send(&principal, &m.topic).await;
                    allowed.push((m.topic.clone(), ok));
                    ok
                }
            };
            if !ok {
                continue;
            }
        }
        deliver(&api, &m.topic, &m.event, Value::Object(m.payload), m.private, m.id);
    }
    StatusCode::ACCEPTED.into_response()
}

async fn single(
    State(api): State<BroadcastApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((topic, event)): Path<(String, String)>,
    Query(q): Query<SingleQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let binary = content_type.starts_with("application/octet-stream");
    if !binary && !content_type.starts_with("application/json") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({ "error": "Unsupported Media Type. Use application/json or application/octet-stream" })),
        )
            .into_response();
    }
    let principal = match admit(&api, &headers, peer.ip(), 1).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let private = q.private.as_deref() == Some("true");
    if private && !api.may_send(&principal, &topic).await {
        return answer(StatusCode::FORBIDDEN, "Unauthorized");
    }
    if body.len() > api.max_payload_bytes {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, "Payload size exceeds tenant limit");
    }
    if binary {
        api.registry.broadcast_binary(Origin::Rest, &format!("realtime:{topic}"), private, &event, "", &body);
        return StatusCode::ACCEPTED.into_response();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, "the body is not JSON");
    };
    deliver(&api, &topic, &event, payload, private, None);
    StatusCode::ACCEPTED.into_response()
}
