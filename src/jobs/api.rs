//! Enqueue, read, cancel and retry jobs: the SQL behind the REST API.
//!
//! Owns who may touch which job (a user only their own; the service role
//! any) and the mapping of database refusals to `ApiError`. Every change is
//! one statement or one function call; uniqueness and admission limits live
//! in the database (`rowcast.enqueue`), never in read-then-write here.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::model::{Job, COLUMNS};

/// Why a job request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("job not found")]
    NotFound,
    /// Same idempotency key while that job is active.
    #[error("a job with this idempotency key is already active")]
    Duplicate(Option<Uuid>),
    #[error("{0}")]
    Conflict(String),
    /// Over `max_active_per_user`.
    #[error("{0}")]
    TooMany(String),
    #[error("database error")]
    Db(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let Some(db) = e.as_database_error() else { return ApiError::Db(e) };
        let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
        match db.code().as_deref() {
            Some("23505") => ApiError::Duplicate(pg.and_then(|p| p.detail()).and_then(|d| d.parse().ok())),
            Some("53400") => ApiError::TooMany(db.message().to_owned()),
            _ => ApiError::Db(e),
        }
    }
}

/// Who is asking: a user id, or the service role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    User(String),
    Service,
}

impl Caller {
    /// The user filter for reads: `None` means all users.
    fn owner(&self) -> Option<&str> {
        match self {
            Caller::User(u) => Some(u),
            Caller::Service => None,
        }
    }
}

/// The body of `POST /api/jobs` (and each element of a bulk request).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub priority: Option<i32>,
    /// Only the service role may enqueue for someone else.
    pub user_id: Option<String>,
}

fn owner_for(caller: &Caller, job: &NewJob) -> Result<Option<String>, ApiError> {
    match (caller, &job.user_id) {
        (Caller::User(u), Some(other)) if other != u => {
            Err(ApiError::Forbidden("only the service role may enqueue for another user".into()))
        }
        (Caller::User(u), _) => Ok(Some(u.clone())),
        (Caller::Service, owner) => Ok(owner.clone()),
    }
}

const ENQUEUE: &str = "select * from rowcast.enqueue($1, $2, $3, $4, $5, $6, null, $7)";

/// A missing input is an empty object.
fn input_of(job: &NewJob) -> Value {
    if job.input.is_null() {
        Value::Object(Default::default())
    } else {
        job.input.clone()
    }
}

/// Enqueues one job.
pub async fn enqueue(pool: &PgPool, caller: &Caller, job: &NewJob) -> Result<Job, ApiError> {
    let owner = owner_for(caller, job)?;
    let row = sqlx::query_as::<_, Job>(ENQUEUE)
        .bind(&job.job_type)
        .bind(input_of(job))
        .bind(owner)
        .bind(&job.idempotency_key)
        .bind(job.run_at)
        .bind(job.priority.unwrap_or(0))
        .bind(None::<Uuid>)
        .fetch_one(pool)
        .await?;
    Ok(row)
}

/// Enqueues `jobs` in one transaction under a new `bulk` parent, which is returned.
pub async fn enqueue_bulk(pool: &PgPool, caller: &Caller, jobs: &[NewJob]) -> Result<Job, ApiError> {
    if jobs.is_empty() {
        return Err(ApiError::BadRequest("`jobs` must hold at least one job".into()));
    }
    let owner = match caller {
        Caller::User(u) => Some(u.clone()),
        Caller::Service => jobs[0].user_id.clone(),
    };
    let mut tx = pool.begin().await?;
    let parent: Job = sqlx::query_as(&format!(
        "insert into rowcast.jobs (type, user_id, status, started_at, message) values ('bulk', $1, 'running', now(), $2) returning {COLUMNS}"
    ))
    .bind(&owner)
    .bind(format!("0 of {} jobs finished", jobs.len()))
    .fetch_one(&mut *tx)
    .await?;
    for job in jobs {
        sqlx::query(ENQUEUE)
            .bind(&job.job_type)
            .bind(input_of(job))
            .bind(owner_for(caller, job)?)
            .bind(&job.idempotency_key)
            .bind(job.run_at)
            .bind(job.priority.unwrap_or(0))
            .bind(parent.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(parent)
}

/// One job, if the caller may see it.
pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Job, ApiError> {
    sqlx::query_as(&format!("select {COLUMNS} from rowcast.jobs where id = $1 and ($2::text is null or user_id = $2)"))
        .bind(id)
        .bind(caller.owner())
        .fetch_optional(pool)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Filters of `GET /api/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    pub limit: Option<i64>,
}

/// The caller's jobs (all, for the service role), newest first.
pub async fn list(pool: &PgPool, caller: &Caller, q: &ListQuery) -> Result<Vec<Job>, ApiError> {
    let narrow = Narrow { owner: caller.owner(), status: q.status.as_deref(), job_type: q.job_type.as_deref(), ..Narrow::default() };
    select(pool, &narrow, q.limit.unwrap_or(50)).await
}

/// What a list of jobs is narrowed to; `None` is any.
#[derive(Debug, Default)]
pub struct Narrow<'a> {
    /// The caller's own jobs only (a user); `None` for the service role.
    pub owner: Option<&'a str>,
    pub status: Option<&'a str>,
    pub job_type: Option<&'a str>,
    pub user: Option<&'a str>,
    /// A whole id or the start of one, lowercase.
    pub id_prefix: Option<&'a str>,
}

/// Jobs as `narrow` says, newest first, at most `limit` (1..=1000).
pub async fn select(pool: &PgPool, narrow: &Narrow<'_>, limit: i64) -> Result<Vec<Job>, ApiError> {
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    let sql = format!(
        "select {COLUMNS} from rowcast.jobs where ($1::text is null or user_id = $1) and ($2::text is null or status = $2) \
         and ($3::text is null or type = $3) and ($4::text is null or user_id = $4) and ($5::text is null or id::text like $5 || '%') \
         order by created_at desc, id limit $6"
    );
    Ok(sqlx::query_as(&sql)
        .bind(narrow.owner)
        .bind(narrow.status)
        .bind(narrow.job_type)
        .bind(narrow.user)
        .bind(narrow.id_prefix)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Cancels a pending or running job (and a bulk parent's unfinished children).
/// A runner holding it is told at once (NOTIFY) and can write nothing more:
/// its every write is a compare-and-set on `status = 'running'`.
pub async fn cancel(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Job, ApiError> {
    let sql = format!(
        "with target as (
            update rowcast.jobs set status = 'cancelled', completed_at = now(), message = 'cancelled'
            where (id = $1 or parent_id = $1) and status in ('pending', 'running') and ($2::text is null or user_id = $2)
            returning {COLUMNS}),
         freed as (delete from rowcast.job_leases where job_id in (select id from target)),
         told as (select pg_notify('rowcast_job_cancel', id::text) from target)
         select target.*, (select count(*) from told) as told from target where id = $1"
    );
    match sqlx::query_as::<_, Job>(&sql).bind(id).bind(caller.owner()).fetch_optional(pool).await? {
        Some(job) => Ok(job),
        None => Err(conflict_or_missing(pool, caller, id, "only pending or running jobs can be cancelled").await),
    }
}

/// Puts a failed or cancelled job back to pending, with fresh attempts; its
/// finished steps are kept, so it resumes where it stopped.
pub async fn retry(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Job, ApiError> {
    let sql = format!(
        "with again as (
            update rowcast.jobs set status = 'pending', attempts = 0, run_at = now(), error = null,
                   completed_at = null, message = 'retry requested'
            where id = $1 and status in ('failed', 'cancelled') and type <> 'bulk' and ($2::text is null or user_id = $2)
            returning {COLUMNS}),
         rang as (select pg_notify('rowcast_jobs', type) from again)
         select again.*, (select count(*) from rang) as rang from again"
    );
    match sqlx::query_as::<_, Job>(&sql).bind(id).bind(caller.owner()).fetch_optional(pool).await? {
        Some(job) => Ok(job),
        None => Err(conflict_or_missing(pool, caller, id, "only failed or cancelled jobs can be retried").await),
    }
}

async fn conflict_or_missing(pool: &PgPool, caller: &Caller, id: Uuid, why: &str) -> ApiError {
    match get(pool, caller, id).await {
        Ok(job) => ApiError::Conflict(format!("{why}; this job is {}", job.status)),
        Err(e) => e,
    }
}
