//! `POST /e/<event key>`: events as `inngest.send()` sends them.
//!
//! The body is one event or an array of them (`{name, data?, user?, id?,
//! ts?, v?}`); all are stored in one transaction through
//! `rowcast.send_event` (migration 0015), which keeps an event with a
//! sender's `id` once per 24 hours, and the runs they trigger start in the
//! same transaction, so an owner past `--inngest-max-active-per-user` gets
//! 429 and nothing is stored. The answer is what the SDK checks:
//! `{"ids": [...], "status": 200}`, or `{"ids": [], "status": 4xx, "error"}`.
//! Outside dev mode the key in the path must be `--inngest-event-key`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::dispatch::{dispatch_now, DispatchError};
use super::sync::SyncState;

/// `POST /e/{key}`.
pub fn router(state: SyncState) -> Router {
    Router::new().route("/e/{key}", post(receive)).with_state(state)
}

/// One event as the SDK sends it.
#[derive(Deserialize)]
struct Event {
    name: String,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    #[serde(default)]
    user: Option<Map<String, Value>>,
    id: Option<String>,
    ts: Option<i64>,
    v: Option<String>,
}

/// Why events were refused.
#[derive(Debug, thiserror::Error)]
enum EventsError {
    #[error("event key not found: the key in the URL must be this rowcast's --inngest-event-key (the app's INNGEST_EVENT_KEY)")]
    WrongKey,
    #[error("this rowcast has no --inngest-event-key: set one, or run it with --inngest-dev")]
    NoKey,
    #[error("the events are not valid: {0}")]
    Body(String),
    #[error("{0}")]
    Full(String),
    #[error("storing the events failed")]
    Db(sqlx::Error),
}

impl From<DispatchError> for EventsError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::Full { .. } => EventsError::Full(e.to_string()),
            DispatchError::Db(e) => EventsError::Db(e),
        }
    }
}

impl From<sqlx::Error> for EventsError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            // send_event's own refusals (no name, a reserved inngest/ name).
            Some(d) if d.code().as_deref() == Some("22023") => EventsError::Body(d.message().to_owned()),
            _ => EventsError::Db(e),
        }
    }
}

impl IntoResponse for EventsError {
    fn into_response(self) -> Response {
        let status = match &self {
            EventsError::WrongKey | EventsError::NoKey => StatusCode::UNAUTHORIZED,
            EventsError::Body(_) => StatusCode::BAD_REQUEST,
            EventsError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
            EventsError::Db(e) => {
                tracing::warn!(error = %e, "storing Inngest events failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({"ids": [], "status": status.as_u16(), "error": self.to_string()}))).into_response()
    }
}

async fn receive(State(s): State<SyncState>, Path(key): Path<String>, body: Bytes) -> Result<Json<Value>, EventsError> {
    if !s.settings.dev {
        let expected = s.settings.event_key.as_ref().ok_or(EventsError::NoKey)?;
        if !super::keys::constant_time_eq(key.as_bytes(), expected.expose().as_bytes()) {
            return Err(EventsError::WrongKey);
        }
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| EventsError::Body(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let events = items
        .into_iter()
        .map(|v| serde_json::from_value::<Event>(v).map_err(|e| EventsError::Body(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tx = s.pool.begin().await?;
    let mut ids = Vec::with_capacity(events.len());
    for e in events {
        // The SDK's own bookkeeping inside data is not the sender's data.
        let data = e.data.map(|mut d| {
            d.remove("_inngest");
            d
        });
        let (id,): (Uuid,) = sqlx::query_as("select rowcast.send_event($1, $2, $3, $4, $5, $6)")
            .bind(&e.name)
            .bind(data.map(Value::Object))
            .bind(&e.id)
            .bind(e.user.map(Value::Object))
            .bind(e.ts)
            .bind(&e.v)
            .fetch_one(&mut *tx)
            .await?;
        ids.push(id);
    }
    dispatch_now(&mut tx, &s.settings, &ids).await?;
    tx.commit().await?;
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    Ok(Json(json!({"ids": ids, "status": 200})))
}
