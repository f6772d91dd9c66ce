//! The HTTP surface: the one place routes are wired.
//!
//! Owns `/health`, the WebSocket upgrade (token checked before upgrading, as
//! Supabase does: a bad key gets HTTP 401 with `{"error": ...}`), and the
//! frame-size limits handed to the WebSocket layer. The socket itself lives
//! in `realtime::socket`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::auth::AuthError;
use crate::realtime::protocol::Vsn;
use crate::realtime::socket::{self, SocketContext};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub sockets: SocketContext,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/realtime/v1/websocket", get(websocket))
        .route("/socket/websocket", get(websocket))
        .with_state(state)
}

/// 200 only when the database answers and the change listener is live.
async fn health(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), sqlx::query("select 1").execute(&state.pool))
        .await
        .is_ok_and(|r| r.is_ok());
    let listener = *state.sockets.live.borrow();
    let status = if db && listener { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({ "status": if status == StatusCode::OK { "ok" } else { "unavailable" }, "database": db, "listener": listener });
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn websocket(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
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
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| socket::serve(ws, vsn, principal, ctx))
}
