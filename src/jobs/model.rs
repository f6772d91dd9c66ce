//! The job row as the REST API returns it and as browsers see it over realtime.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// One row of `rowcast.jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub job_type: String,
    pub user_id: Option<String>,
    pub status: String,
    pub progress: i32,
    pub message: Option<String>,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub priority: i32,
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// The columns, in the order `Job` reads them.
pub const COLUMNS: &str = "id, type, user_id, status, progress, message, input, output, error, attempts, max_attempts, \
    idempotency_key, run_at, priority, parent_id, created_at, started_at, completed_at, updated_at";
