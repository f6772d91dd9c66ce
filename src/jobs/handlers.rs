//! `/api/jobs`: the REST face of the job runner.
//!
//! Owns turning a request into a `Caller` (the JWT in `Authorization: Bearer`,
//! else the `apikey` header, checked as for realtime) and `ApiError` into a
//! status with a JSON body. Another user's job is a 404, never a 403, so ids
//! do not leak. The SQL lives in `api`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tracing::error;
use uuid::Uuid;

use super::api::{self, ApiError, Caller, ListQuery, NewJob};
use super::config::{Enqueuer, JobType};
use crate::auth::request_token;
use crate::keyring::Keyring;
use crate::metrics;

/// What the job handlers need.
#[derive(Clone)]
pub struct JobsState {
    pub pool: PgPool,
    pub keyring: Keyring,
    /// The types this gateway accepts.
    pub types: Arc<BTreeMap<String, JobType>>,
    /// Jobs created and cancelled through these routes are counted here.
    pub metrics: metrics::Jobs,
    /// The thresholds the dashboard marks as crossed.
    pub alerts: super::alert_rules::Alerts,
}

/// The `/api/jobs` routes.
pub fn router(state: JobsState) -> Router {
    Router::new()
        .route("/api/jobs", post(enqueue).get(list))
        .route("/api/jobs/bulk", post(enqueue_bulk))
        .route("/api/jobs/{id}", get(get_one))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/retry", post(retry))
        .with_state(state)
}

/// A refused request, as a status and `{"error": ...}`.
pub(super) struct Refusal(StatusCode, serde_json::Value);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub(super) fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, json!({ "error": message.into() }))
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::BadRequest(m) => refuse(StatusCode::BAD_REQUEST, m),
            ApiError::Forbidden(m) => refuse(StatusCode::FORBIDDEN, m),
            ApiError::NotFound => refuse(StatusCode::NOT_FOUND, "job not found"),
            ApiError::Duplicate(id) => {
                Refusal(StatusCode::CONFLICT, json!({ "error": "a job with this idempotency key is already active", "job_id": id }))
            }
            ApiError::Conflict(m) => refuse(StatusCode::CONFLICT, m),
            ApiError::TooMany(m) => refuse(StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Db(e) => {
                error!(error = %e, "job request failed in the database");
                refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

pub(super) async fn caller(state: &JobsState, headers: &HeaderMap) -> Result<Caller, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = request_token(header("authorization"), header("apikey"))
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <jwt>"))?;
    let principal = state.keyring.verify(token).await.map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    match (principal.is_service(), principal.owner_id()) {
        (true, _) => Ok(Caller::Service),
        (false, Some(user)) => Ok(Caller::User(user.to_owned())),
        (false, None) => {
            Err(refuse(StatusCode::UNAUTHORIZED, "jobs need a signed-in user's token (role authenticated with a sub) or the service role"))
        }
    }
}

fn check_type(state: &JobsState, caller: &Caller, job: &NewJob) -> Result<(), Refusal> {
    let Some(t) = state.types.get(&job.job_type) else {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("unknown job type {:?}", job.job_type)));
    };
    if t.enqueue == Enqueuer::Service && *caller != Caller::Service {
        return Err(refuse(StatusCode::FORBIDDEN, format!("jobs of type {:?} may only be enqueued by the service role", t.name)));
    }
    Ok(())
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    parsed.map(|Json(v)| v).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.body_text()))
}

async fn enqueue(State(s): State<JobsState>, headers: HeaderMap, parsed: Result<Json<NewJob>, JsonRejection>) -> Result<Response, Refusal> {
    let caller = caller(&s, &headers).await?;
    let job = body(parsed)?;
    check_type(&s, &caller, &job)?;
    let row = api::enqueue(&s.pool, &caller, &job).await?;
    s.metrics.created.get_or_create(&metrics::JobType::of(&job.job_type)).inc();
    Ok((StatusCode::ACCEPTED, Json(row)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    jobs: Vec<NewJob>,
}

async fn enqueue_bulk(
    State(s): State<JobsState>,
    headers: HeaderMap,
    parsed: Result<Json<Bulk>, JsonRejection>,
) -> Result<Response, Refusal> {
    let caller = caller(&s, &headers).await?;
    let bulk = body(parsed)?;
    for job in &bulk.jobs {
        check_type(&s, &caller, job)?;
    }
    let parent = api::enqueue_bulk(&s.pool, &caller, &bulk.jobs).await?;
    for job in &bulk.jobs {
        s.metrics.created.get_or_create(&metrics::JobType::of(&job.job_type)).inc();
    }
    Ok((StatusCode::ACCEPTED, Json(parent)).into_response())
}

async fn get_one(State(s): State<JobsState>, headers: HeaderMap, Path(id): Path<Uuid>) -> Result<Response, Refusal> {
    let caller = caller(&s, &headers).await?;
    Ok(Json(api::get(&s.pool, &caller, id).await?).into_response())
}

async fn list(State(s): State<JobsState>, headers: HeaderMap, q: Result<Query<ListQuery>, QueryRejection>) -> Result<Response, Refusal> {
    let caller = caller(&s, &headers).await?;
    let Query(q) = q.map_err(|e| refuse(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(Json(api::list(&s.pool, &caller, &q).await?).into_response())
}

async fn cancel(State(s): State<JobsState>, headers: HeaderMap, Path(id): Path<Uuid>) -> Result<Response, Refusal> {
    let caller = caller(&s, &headers).await?;
    let job = api::cancel(&s.pool, &caller, id).await?;
    s.metrics.cancelled.get_or_create(&metrics::JobType::of(&job.job_type)).inc();
    Ok(Json(job).into_response())
}

async fn retry(State(s): State<JobsState>, headers: HeaderMap, Path(id): Path<Uuid>) -> Result<Response, Refusal> {
    let caller = caller(&s, &headers).await?;
    Ok((StatusCode::ACCEPTED, Json(api::retry(&s.pool, &caller, id).await?)).into_response())
}
