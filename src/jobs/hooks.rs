//! `on_failure`: what runs after a job fails for good.
//!
//! A type may name a follow-up job type (`job:<type>`, enqueued for the same
//! user with `{failed_job: <row>}` as input) or a URL (POSTed the failed row,
//! signed like step calls). Hooks are best effort: their own failure is
//! logged and never changes the failed job.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use tracing::warn;

use super::config::{JobType, OnFailure};
use super::model::Job;
use super::steps::sign;

/// Runs the `on_failure` hooks of the configured types.
#[derive(Clone)]
pub struct Hooks {
    pool: PgPool,
    types: Arc<BTreeMap<String, JobType>>,
    secret: Option<String>,
    client: reqwest::Client,
}

impl Hooks {
    /// Hooks for `types`, signing HTTP calls with `secret`.
    pub fn new(pool: PgPool, types: Arc<BTreeMap<String, JobType>>, secret: Option<String>, client: reqwest::Client) -> Self {
        Hooks { pool, types, secret, client }
    }

    /// Called once for each job that ended `failed`.
    pub async fn failed(&self, job: &Job) {
        let Some(hook) = self.types.get(&job.job_type).and_then(|t| t.on_failure.clone()) else { return };
        let result = match hook {
            OnFailure::Job(follow_up) => sqlx::query("select rowcast.enqueue($1, $2, $3)")
                .bind(&follow_up)
                .bind(json!({ "failed_job": job }))
                .bind(&job.user_id)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            OnFailure::Http(url) => self.post(&url, job).await,
        };
        if let Err(e) = result {
            warn!(job.id = %job.id, error = %e, "on_failure hook failed");
        }
    }

    async fn post(&self, url: &str, job: &Job) -> Result<(), String> {
        let body = json!({ "event": "job.failed", "job": job }).to_string();
        let mut request = self.client.post(url).header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("x-rowcast-signature", sign(secret, crate::auth::now_secs(), body.as_bytes()));
        }
        let response = request.body(body).send().await.map_err(|_| "hook URL unreachable".to_owned())?;
        if !response.status().is_success() {
            return Err(format!("hook answered {}", response.status()));
        }
        Ok(())
    }
}
