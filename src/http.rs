//! The HTTP surface: the one place routes are wired.
//!
//! Owns `/health`, the WebSocket upgrade (connection limits and the token
//! checked before upgrading, as Supabase does: a bad key gets HTTP 401 and a
//! full house HTTP 429, each with `{"error": ...}`), the RFC 6455 handshake
//! (done here so the socket can drive tungstenite itself), the demo-only
//! session route and the static web demo. Every upgraded socket runs in the
//! app's socket tracker,
//! so shutdown can wait for each to say goodbye. The socket lives in
//! `realtime::socket`, the job routes in `jobs::handlers`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tower_http::cors::CorsLayer;
use tower_http::services::{ServeDir, ServeFile};
use tungstenite::handshake::derive_accept_key;

use crate::auth::{AuthError, Minter, Principal};
use crate::jobs::admin as job_admin;
use crate::jobs::handlers::{self as job_routes, JobsState};
use crate::jobs::inngest::sync::{self as inngest_sync, SyncState};
use crate::metrics;
use crate::ops::{self, Ops};
use crate::realtime::admission::Admission;
use crate::realtime::broadcast_api::{self, BroadcastApi};
use crate::realtime::protocol::Vsn;
use crate::realtime::socket::{self, SocketContext};
use crate::rest::snapshot::{self as rest_routes, RestState};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub sockets: SocketContext,
    pub jobs: JobsState,
    pub rest: RestState,
    /// Open sockets, in all and per client IP.
    pub admission: Admission,
    /// Every upgraded socket's task, so shutdown can wait for them.
    pub socket_tasks: TaskTracker,
    /// The broadcast REST API.
    pub broadcast: BroadcastApi,
    /// Set only by `rowcast demo`: mints demo users' tokens.
    pub demo: Option<Minter>,
    pub web_dir: PathBuf,
    /// `/metrics`, `/ready` and the draining flag.
    pub ops: Ops,
    /// Inngest apps' `POST /fn/register`.
    pub inngest: SyncState,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(ops::metrics).with_state(state.ops.clone()))
        .route("/ready", get(ops::ready).with_state(state.ops.clone()))
        .route("/realtime/v1/websocket", get(websocket))
        .route("/socket/websocket", get(websocket));
    if state.demo.is_some() {
        router = router.route("/demo/session", get(demo_session));
    }
    let supabase_umd = state.web_dir.join("node_modules/@supabase/supabase-js/dist/umd/supabase.js");
    let files = ServeDir::new(&state.web_dir).append_index_html_on_directories(true);
    router
        .with_state(state.clone())
        .merge(job_routes::router(state.jobs.clone()))
        .merge(job_admin::router(state.jobs))
        .merge(rest_routes::router(state.rest))
        .merge(broadcast_api::router(state.broadcast))
        .merge(inngest_sync::router(state.inngest))
        // Only the demo's own files are served: not its node_modules.
        .route("/node_modules/{*rest}", get(|| async { StatusCode::NOT_FOUND }))
        .route_service("/vendor/supabase.js", ServeFile::new(supabase_umd))
        .fallback_service(files)
        .layer(middleware::from_fn_with_state(state.ops.metrics.http.clone(), count_request))
        .layer(CorsLayer::permissive())
}

/// Counts each request by its route template (never its path: paths carry
/// ids) and status; static files count as `static`.
async fn count_request(State(counter): State<Family<metrics::Request, Counter>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "static".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    counter.get_or_create(&metrics::Request { route, status: response.status().as_u16() }).inc();
    response
}

#[derive(serde::Deserialize)]
struct DemoUser {
    user: String,
}

/// Demo mode only: a token for a demo user, as a real app's sign-in would give.
async fn demo_session(State(state): State<AppState>, Query(q): Query<DemoUser>) -> Response {
    let Some(minter) = &state.demo else { return error(StatusCode::NOT_FOUND, "not found") };
    let valid =
        (1..=32).contains(&q.user.len()) && q.user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return error(StatusCode::BAD_REQUEST, "user must be 1-32 characters of a-z, 0-9, - or _");
    }
    let ttl = 12 * 3600;
    let body = json!({
        "user": q.user,
        "anon_key": minter.mint(None, "anon", ttl),
        "access_token": minter.mint(Some(&q.user), "authenticated", ttl),
        "expires_at": crate::auth::now_secs() + ttl,
    });
    Json(body).into_response()
}

/// 200 only when the database answers and the change listener is live; also counts open sockets.
async fn health(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), sqlx::query("select 1").execute(&state.pool)).await.is_ok_and(|r| r.is_ok());
    let listener = *state.sockets.live.borrow();
    let status = if db && listener { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
        "database": db,
        "listener": listener,
        "sockets": state.admission.open(),
    });
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let Some(accept) = websocket_accept(headers) else {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (version 13)");
    };
    if state.ops.draining.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this node is draining: connect to another");
    }
    let ticket = match state.admission.admit(peer.ip()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
    };
    let header_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let Some(apikey) = header_key.or(params.get("apikey").map(String::as_str)) else {
        return error(StatusCode::UNAUTHORIZED, &AuthError::Missing.to_string());
    };
    let vsn = match Vsn::parse(params.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let principal = match state.sockets.keyring.verify(apikey).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return error(StatusCode::BAD_REQUEST, "this connection cannot be upgraded");
    };
    let ctx = state.sockets.clone();
    tokio::spawn(state.socket_tasks.track_future(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_upgraded(upgraded, vsn, principal, ctx).await,
            Err(e) => tracing::debug!(error = %e, "the WebSocket upgrade did not complete"),
        }
        drop(ticket);
    }));
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Runs the socket on the upgraded connection's two halves: the TCP
/// stream's own halves when it is one (no lock between reader and writer),
/// else a shared split.
async fn serve_upgraded(upgraded: Upgraded, vsn: Vsn, principal: Principal, ctx: SocketContext) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            socket::serve(read, parts.read_buf, write, vsn, principal, ctx).await
        }
        Err(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            socket::serve(read, Bytes::new(), write, vsn, principal, ctx).await
        }
    }
}

/// RFC 6455's handshake check: an HTTP/1.1 upgrade to `websocket`, version 13,
/// with a key; returns the `Sec-WebSocket-Accept` value for it.
fn websocket_accept(headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let version_13 = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    if !(has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket") && version_13) {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(websocket_accept(&headers).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(websocket_accept(&headers), None);
    }
}
