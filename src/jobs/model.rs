//! The job row as the REST API returns it and as browsers see it over realtime,
//! and its status as a type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A job's state, stored as text in `rowcast.jobs.status` (the check constraint
/// in migration 0002 lists the same five words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    const ALL: [JobStatus; 5] = [JobStatus::Pending, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for JobStatus {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| format!("unknown job status {text:?}"))
    }
}

/// One row of `rowcast.jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub job_type: String,
    pub user_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: JobStatus,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_column_text_and_serializes_the_same() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::try_from(status.as_str().to_owned()), Ok(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!(JobStatus::try_from("done".to_owned()).is_err());
    }
}
