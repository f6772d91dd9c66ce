//! `on_failure`: what runs after a job fails for good.
//!
//! A type may name a follow-up job type (`job:<type>`, enqueued for the same
//! user with `{failed_job: <row>}` as input) or a URL (POSTed the failed row,
//! signed like step calls). Hooks are best effort: their own failure is
//! logged and never changes the failed job.
//!
//! A hook runs in a task of its own, never inline: a hook URL that hangs must
//! not freeze the scheduler's rescue, expiry, cron and pruning, nor hold a
//! runner slot. Each call has `HOOK_TIMEOUT`; shutdown waits for the hooks
//! in flight (see `Hooks::drain`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::config::{JobType, OnFailure};
use super::model::Job;
use super::steps::sign;
use crate::config::Secret;

/// Runs the `on_failure` hooks of the configured types.
#[derive(Clone)]
pub struct Hooks {
    pool: PgPool,
    types: Arc<BTreeMap<String, JobType>>,
    secret: Option<Secret>,
    client: reqwest::Client,
    in_flight: TaskTracker,
}

/// Longest a hook URL may take to answer.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl Hooks {
    /// Hooks for `types`, signing HTTP calls with `secret`.
    pub fn new(pool: PgPool, types: Arc<BTreeMap<String, JobType>>, secret: Option<Secret>, client: reqwest::Client) -> Self {
        Hooks { pool, types, secret, client, in_flight: TaskTracker::new() }
    }

    /// Called once for each job that ended `failed`: starts its hook, if any, and returns.
    pub fn failed(&self, job: &Job) {
        let Some(hook) = self.types.get(&job.job_type).and_then(|t| t.on_failure.clone()) else { return };
        let (hooks, job) = (self.clone(), job.clone());
        self.in_flight.spawn(async move { hooks.run(hook, &job).await });
    }

    /// Waits for the hooks in flight (each bounded by `HOOK_TIMEOUT`), at most `grace`.
    pub async fn drain(&self, grace: Duration) {
        self.in_flight.close();
        if tokio::time::timeout(grace, self.in_flight.wait()).await.is_err() {
            warn!(hooks = self.in_flight.len(), "on_failure hooks still running at shutdown");
        }
    }

    async fn run(&self, hook: OnFailure, job: &Job) {
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
        let mut request = self.client.post(url).timeout(HOOK_TIMEOUT).header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("x-rowcast-signature", sign(secret.expose(), crate::auth::now_secs(), body.as_bytes()));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "hook URL timed out" } else { "hook URL unreachable" }.to_owned())?;
        if !response.status().is_success() {
            return Err(format!("hook answered {}", response.status()));
        }
        Ok(())
    }
}
