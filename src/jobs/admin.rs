//! `/api/admin/*`: what the runs dashboard (`web-demo/dashboard/`) reads and
//! does, for operators holding the service role's key only; a user's token
//! is refused with 403, whatever it asks for.
//!
//! - `GET /api/admin/jobs?status&type&user&id&limit`: every user's runs,
//!   newest first; `id` matches a whole id or the start of one.
//! - `GET /api/admin/jobs/{id}`: one run with its stored steps and its lease.
//! - `POST /api/admin/jobs/cancel` and `/retry` with `{ids: [...]}`: many at
//!   once; each id that could not change is reported with why.
//! - `GET /api/admin/types`: per type, the live figures (pending, running,
//!   oldest pending), the last hour's (created, completed, failed, failure
//!   rate, p95 run time, stuck) and the alert thresholds it is past.
//! - `GET /api/admin/inngest`: synced Inngest apps and their functions.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::api::{self, Caller};
use super::handlers::{caller, refuse, JobsState, Refusal};
use super::inngest::sync;
use super::model::Job;
use super::{alert_rules, alerts};

/// Most ids one bulk action takes.
const MAX_IDS: usize = 500;

/// The `/api/admin` routes.
pub fn router(state: JobsState) -> Router {
    Router::new()
        .route("/api/admin/jobs", get(list))
        .route("/api/admin/jobs/{id}", get(one))
        .route("/api/admin/jobs/cancel", post(cancel_many))
        .route("/api/admin/jobs/retry", post(retry_many))
        .route("/api/admin/types", get(types))
        .route("/api/admin/inngest", get(inngest))
        .with_state(state)
}

/// Only the service role passes.
async fn operator(state: &JobsState, headers: &HeaderMap) -> Result<(), Refusal> {
    match caller(state, headers).await? {
        Caller::Service => Ok(()),
        Caller::User(_) => Err(refuse(StatusCode::FORBIDDEN, "the runs dashboard needs the service role's key, not a user's token")),
    }
}

fn db_error(e: sqlx::Error) -> Refusal {
    Refusal::from(api::ApiError::Db(e))
}

/// Filters of the runs list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filters {
    status: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    user: Option<String>,
    id: Option<String>,
    limit: Option<i64>,
}

async fn list(State(s): State<JobsState>, headers: HeaderMap, q: Result<Query<Filters>, QueryRejection>) -> Result<Response, Refusal> {
    operator(&s, &headers).await?;
    let Query(f) = q.map_err(|e| refuse(StatusCode::BAD_REQUEST, e.body_text()))?;
    let id = blank(&f.id).map(|i| i.trim().to_lowercase());
    if id.as_ref().is_some_and(|i| i.len() > 36 || !i.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
        return Err(refuse(StatusCode::BAD_REQUEST, "id must be a job id or the start of one (hex digits and dashes)"));
    }
    let narrow =
        api::Narrow { owner: None, status: blank(&f.status), job_type: blank(&f.job_type), user: blank(&f.user), id_prefix: id.as_deref() };
    let rows = api::select(&s.pool, &narrow, f.limit.unwrap_or(100)).await?;
    Ok(Json(rows).into_response())
}

/// A filter's value, unless it is empty or only spaces.
fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

/// A stored step, as the dashboard shows it.
#[derive(Serialize, sqlx::FromRow)]
struct Step {
    step_id: String,
    seq: i32,
    created_at: DateTime<Utc>,
    output: Option<Value>,
}

async fn one(State(s): State<JobsState>, headers: HeaderMap, Path(id): Path<Uuid>) -> Result<Response, Refusal> {
    operator(&s, &headers).await?;
    let job = api::get(&s.pool, &Caller::Service, id).await?;
    let steps: Vec<Step> =
        sqlx::query_as("select step_id, seq, created_at, output from rowcast.job_steps where job_id = $1 order by seq, created_at")
            .bind(id)
            .fetch_all(&s.pool)
            .await
            .map_err(db_error)?;
    let lease: Option<(String, i32, DateTime<Utc>)> =
        sqlx::query_as("select worker, attempt, expires_at from rowcast.job_leases where job_id = $1")
            .bind(id)
            .fetch_optional(&s.pool)
            .await
            .map_err(db_error)?;
    let lease = lease.map(|(worker, attempt, expires_at)| json!({"worker": worker, "attempt": attempt, "expires_at": expires_at}));
    Ok(Json(json!({"job": job, "steps": steps, "lease": lease})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<Uuid>,
}

/// Runs `action` on each id; `{done: [ids], refused: [{id, error}]}`.
async fn each<F, Fut>(ids: Vec<Uuid>, action: F) -> Result<Response, Refusal>
where
    F: Fn(Uuid) -> Fut,
    Fut: std::future::Future<Output = Result<Job, api::ApiError>>,
{
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("give between 1 and {MAX_IDS} ids")));
    }
    let (mut done, mut refused) = (Vec::new(), Vec::new());
    for id in ids {
        match action(id).await {
            Ok(_) => done.push(id),
            Err(api::ApiError::Db(e)) => return Err(db_error(e)),
            Err(e) => refused.push(json!({"id": id, "error": e.to_string()})),
        }
    }
    Ok(Json(json!({"done": done, "refused": refused})).into_response())
}

async fn cancel_many(State(s): State<JobsState>, headers: HeaderMap, body: Result<Json<Ids>, JsonRejection>) -> Result<Response, Refusal> {
    operator(&s, &headers).await?;
    let Json(Ids { ids }) = body.map_err(|e| refuse(StatusCode::BAD_REQUEST, e.body_text()))?;
    let pool = &s.pool;
    each(ids, |id| async move { api::cancel(pool, &Caller::Service, id).await }).await
}

async fn retry_many(State(s): State<JobsState>, headers: HeaderMap, body: Result<Json<Ids>, JsonRejection>) -> Result<Response, Refusal> {
    operator(&s, &headers).await?;
    let Json(Ids { ids }) = body.map_err(|e| refuse(StatusCode::BAD_REQUEST, e.body_text()))?;
    let pool = &s.pool;
    each(ids, |id| async move { api::retry(pool, &Caller::Service, id).await }).await
}

async fn types(State(s): State<JobsState>, headers: HeaderMap) -> Result<Response, Refusal> {
    operator(&s, &headers).await?;
    let rows = alerts::figures(&s.pool).await.map_err(db_error)?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|f| {
            let mut v = serde_json::to_value(&f).expect("figures serialize");
            v["failure_rate_1h"] = json!(f.failure_rate());
            v["alerts"] = json!(alert_rules::crossed(&f, &s.alerts));
            v
        })
        .collect();
    Ok(Json(out).into_response())
}

async fn inngest(State(s): State<JobsState>, headers: HeaderMap) -> Result<Response, Refusal> {
    operator(&s, &headers).await?;
    let apps = sync::apps(&s.pool).await.map_err(db_error)?;
    let out: Vec<Value> = apps
        .into_iter()
        .map(|a| json!({"id": a.id, "url": a.url, "sdk": a.sdk, "synced_at": a.synced_at, "functions": a.functions}))
        .collect();
    Ok(Json(out).into_response())
}
