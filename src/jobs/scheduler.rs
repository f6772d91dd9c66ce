//! Timed upkeep every runner does: rescue jobs whose lease expired, fail
//! jobs stuck pending or running past their type's limits, fire cron slots,
//! prune old jobs.
//!
//! Every runner runs it; no leader is needed because each action is a single
//! statement that only one runner can win: a lease row is deleted once, a
//! cron slot's primary key is inserted once, a status is compare-and-set.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::JobsConfig;
use super::hooks::Hooks;
use super::model::{Job, JobStatus, COLUMNS};
use crate::metrics;

/// Cron slots older than this are not fired late (no backfill after long outages).
const CRON_CATCH_UP: Duration = Duration::from_secs(600);

/// The upkeep task of one runner process.
pub struct Scheduler {
    pool: PgPool,
    config: Arc<JobsConfig>,
    hooks: Hooks,
    metrics: metrics::Jobs,
}

impl Scheduler {
    /// Upkeep for `config`'s types.
    pub fn new(pool: PgPool, config: Arc<JobsConfig>, hooks: Hooks, metrics: metrics::Jobs) -> Self {
        Scheduler { pool, config, hooks, metrics }
    }

    /// Ticks until `cancel`, at a third of the lease (at most every second).
    pub async fn run(self, cancel: CancellationToken) {
        let tick = (self.config.runner.lease / 3).min(Duration::from_secs(1));
        // Prune every minute, or sooner when retention is shorter than that.
        let prune_every = self.config.keep_completed.min(self.config.keep_failed).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            if let Err(e) = self.tick().await {
                warn!(error = %e, "job upkeep failed; retrying at the next tick");
            }
            if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                match self.prune().await {
                    Ok(()) => last_prune = Some(tokio::time::Instant::now()),
                    Err(e) => warn!(error = %e, "pruning jobs failed"),
                }
            }
            tokio::select! {
                // Shutdown.
                _ = cancel.cancelled() => return,
                // Next tick.
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn tick(&self) -> Result<(), sqlx::Error> {
        let rescued = self.rescue().await?;
        let expired = self.expire().await?;
        for (how, jobs) in [("rescued", &rescued), ("expired", &expired)] {
            for job in jobs {
                self.metrics.stuck.get_or_create(&metrics::Stuck { r#type: job.job_type.clone(), how }).inc();
            }
        }
        for job in rescued.iter().chain(&expired).filter(|j| j.status == JobStatus::Failed) {
            self.metrics.failed.get_or_create(&metrics::JobType::of(&job.job_type)).inc();
            self.hooks.failed(job);
        }
        self.fire_cron().await
    }

    /// Expired leases: back to pending (no attempt is lost but the one that
    /// died), or failed when that was the last attempt.
    async fn rescue(&self) -> Result<Vec<Job>, sqlx::Error> {
        let sql = format!(
            "with expired as (delete from rowcast.job_leases where expires_at < now() returning job_id, attempt, worker)
             update rowcast.jobs j set
                status = case when j.attempts >= j.max_attempts then 'failed' else 'pending' end,
                run_at = now(),
                completed_at = case when j.attempts >= j.max_attempts then now() end,
                error = format('attempt %s stopped responding (runner %s lost its lease)', e.attempt, e.worker),
                message = case when j.attempts >= j.max_attempts then j.message else 'resuming after a lost runner' end
             from expired e
             where j.id = e.job_id and j.status = 'running' and j.attempts = e.attempt
             returning {}",
            qualified("j")
        );
        let rescued: Vec<Job> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        for job in &rescued {
            info!(job.id = %job.id, status = %job.status, "rescued a job whose runner stopped responding");
        }
        if !rescued.is_empty() {
            sqlx::query("select pg_notify('rowcast_jobs', $1)").bind(super::runner::RESCUED).execute(&self.pool).await?;
        }
        Ok(rescued)
    }

    /// Jobs pending or running longer than their type allows
    /// (`rowcast.expire_stuck` reads only those, whatever the backlog).
    async fn expire(&self) -> Result<Vec<Job>, sqlx::Error> {
        let sql = format!(
            "with stuck as (select {COLUMNS} from rowcast.expire_stuck($1, $2, $3)),
             freed as (delete from rowcast.job_leases where job_id in (select id from stuck)),
             told as (select pg_notify('rowcast_job_cancel', id::text) from stuck)
             select stuck.*, (select count(*) from told) as told from stuck"
        );
        let mut failed = Vec::new();
        for t in self.config.types.values() {
            let rows: Vec<Job> = sqlx::query_as(&sql)
                .bind(&t.name)
                .bind(t.pending_timeout.as_secs() as i64)
                .bind(t.running_timeout.as_secs() as i64)
                .fetch_all(&self.pool)
                .await?;
            failed.extend(rows);
        }
        Ok(failed)
    }

    /// Fires the latest due slot of each cron entry, once across all runners.
    async fn fire_cron(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        for entry in &self.config.cron {
            let Ok(slot) = entry.schedule.find_previous_occurrence(&now, true) else { continue };
            if (now - slot).to_std().unwrap_or_default() > CRON_CATCH_UP {
                continue;
            }
            // The slot's primary key decides the one runner that fires it; the
            // enqueue is this statement's result, so it runs exactly when the insert won.
            let fired: Option<(uuid::Uuid,)> = sqlx::query_as(
                "with won as (insert into rowcast.cron_slots (name, slot) values ($1, $2) on conflict do nothing returning name)
                 select (rowcast.enqueue($3, $4)).id from won",
            )
            .bind(&entry.name)
            .bind(slot)
            .bind(&entry.job_type)
            .bind(&entry.input)
            .fetch_optional(&self.pool)
            .await?;
            if let Some((id,)) = fired {
                sqlx::query("update rowcast.cron_slots set job_id = $3 where name = $1 and slot = $2")
                    .bind(&entry.name)
                    .bind(slot)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
            if let Some((id,)) = fired {
                info!(cron = %entry.name, %slot, job.id = %id, "cron slot fired");
            }
        }
        Ok(())
    }

    /// Retention: completed jobs after `keep_completed`, failed and cancelled after `keep_failed`.
    async fn prune(&self) -> Result<(), sqlx::Error> {
        let done = sqlx::query(
            "delete from rowcast.jobs where parent_id is null and (
                (status = 'completed' and completed_at < now() - make_interval(secs => $1))
             or (status in ('failed', 'cancelled') and completed_at < now() - make_interval(secs => $2)))",
        )
        .bind(self.config.keep_completed.as_secs_f64())
        .bind(self.config.keep_failed.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query("delete from rowcast.job_starts where started_at < now() - interval '1 day'").execute(&self.pool).await?;
        sqlx::query("delete from rowcast.cron_slots where slot < now() - interval '30 days'").execute(&self.pool).await?;
        if done > 0 {
            info!(pruned = done, "pruned old jobs");
        }
        Ok(())
    }
}

/// `COLUMNS` qualified with a table alias, for UPDATE ... FROM.
fn qualified(alias: &str) -> String {
    COLUMNS.split(", ").map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}
