//! The HTTP surface: the one place routes are wired.
//!
//! Owns `/health`, the WebSocket upgrade (connection limits and the token
//! checked before upgrading, as Supabase does: a bad key gets HTTP 401 and a
//! full house HTTP 429, each with `{"error": ...}`), the buffer and frame-size
//! limits handed to the WebSocket layer, the demo-only session route and the
//! static web demo. Every upgraded socket runs in the app's socket tracker,
//! so shutdown can wait for each to say goodbye. The socket lives in
//! `realtime::socket`, the job routes in `jobs::handlers`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use tower_http::cors::CorsLayer;
use tower_http::services::{ServeDir, ServeFile};

use crate::auth::{AuthError, Verifier};
use crate::jobs::handlers::{self as job_routes, JobsState};
use crate::rest::snapshot::{self as rest_routes, RestState};
use crate::realtime::admission::Admission;
use crate::realtime::protocol::Vsn;
use crate::realtime::socket::{self, SocketContext};

/// Read buffer of one socket. tungstenite's default (128 KiB, allocated up
/// front) was most of an idle socket's cost; client frames are small, and a
/// large one grows the buffer as it arrives.
const READ_BUFFER_BYTES: usize = 4 * 1024;

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
    /// Set only by `rowcast demo`: mints demo users' tokens.
    pub demo: Option<Verifier>,
    pub web_dir: PathBuf,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/realtime/v1/websocket", get(websocket))
        .route("/socket/websocket", get(websocket));
    if state.demo.is_some() {
        router = router.route("/demo/session", get(demo_session));
    }
    let supabase_umd = state.web_dir.join("node_modules/@supabase/supabase-js/dist/umd/supabase.js");
    let files = ServeDir::new(&state.web_dir).append_index_html_on_directories(true);
    router
        .with_state(state.clone())
        .merge(job_routes::router(state.jobs))
        .merge(rest_routes::router(state.rest))
        // Only the demo's own files are served: not its node_modules.
        .route("/node_modules/{*rest}", get(|| async { StatusCode::NOT_FOUND }))
        .route_service("/vendor/supabase.js", ServeFile::new(supabase_umd))
        .fallback_service(files)
        .layer(CorsLayer::permissive())
}

#[derive(serde::Deserialize)]
struct DemoUser {
    user: String,
}

/// Demo mode only: a token for a demo user, as a real app's sign-in would give.
async fn demo_session(State(state): State<AppState>, Query(q): Query<DemoUser>) -> Response {
    let Some(verifier) = &state.demo else { return error(StatusCode::NOT_FOUND, "not found") };
    let valid = (1..=32).contains(&q.user.len()) && q.user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return error(StatusCode::BAD_REQUEST, "user must be 1-32 characters of a-z, 0-9, - or _");
    }
    let ttl = 12 * 3600;
    let body = json!({
        "user": q.user,
        "anon_key": verifier.mint(None, "anon", ttl),
        "access_token": verifier.mint(Some(&q.user), "authenticated", ttl),
        "expires_at": crate::auth::now_secs() + ttl,
    });
    Json(body).into_response()
}

/// 200 only when the database answers and the change listener is live; also counts open sockets.
async fn health(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), sqlx::query("select 1").execute(&state.pool))
        .await
        .is_ok_and(|r| r.is_ok());
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
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
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
    let principal = match state.sockets.verifier.verify(apikey) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let max = state.sockets.limits.max_frame_bytes;
    let ctx = state.sockets.clone();
    let tasks = state.socket_tasks.clone();
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        // Eager writes: nothing waits in tungstenite's buffer, which would keep its size.
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| {
            tasks.track_future(async move {
                socket::serve(ws, vsn, principal, ctx).await;
                drop(ticket);
            })
        })
}
