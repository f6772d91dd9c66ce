//! The alert watcher (every runner runs one) and the per-type figures it
//! judges, which the runs dashboard shows too.
//!
//! Every `[alerts] every`, it reads each type's figures, decides which
//! thresholds are crossed (`alert_rules`), and flips the stored state of
//! each (type, alert) that changed, in one compare-and-set statement
//! (migration 0020). The watcher that flipped it POSTs `{type, alert,
//! state: "crossed" | "cleared", value, threshold, at}` to the webhook,
//! signed like step calls; a first look that finds nothing crossed sends
//! nothing. The POST is best effort: its failure is logged, and the state
//! stays flipped.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::alert_rules::{crossed, Alerts, Figures, NAMES};
use super::steps::sign;
use crate::config::Secret;

/// Longest a webhook POST may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Each type's figures: live counts, the last hour's, and the day's p95 before it.
///
/// Reads only live runs (the partial indexes on pending and running) and
/// runs that ended in the last 25 hours (`jobs_finished`), never the whole
/// table: a run created in the last hour is live or ended since, so those
/// two sets hold every figure.
pub async fn figures(pool: &PgPool) -> Result<Vec<Figures>, sqlx::Error> {
    sqlx::query_as(
        "with recent as (
            select type, status, run_at, created_at, started_at, completed_at, updated_at, error
            from rowcast.jobs where status = 'pending' and type <> 'bulk'
            union all
            select type, status, run_at, created_at, started_at, completed_at, updated_at, error
            from rowcast.jobs where status = 'running' and type <> 'bulk'
            union all
            select type, status, run_at, created_at, started_at, completed_at, updated_at, error
            from rowcast.jobs where status in ('completed', 'failed', 'cancelled') and completed_at > now() - interval '25 hours'
              and type <> 'bulk')
         select type,
                count(*) filter (where status = 'pending') as pending,
                count(*) filter (where status = 'running') as running,
                extract(epoch from now() - min(run_at) filter (where status = 'pending' and run_at <= now()))::float8 as oldest_pending_secs,
                count(*) filter (where created_at > now() - interval '1 hour') as created_1h,
                count(*) filter (where status = 'completed' and completed_at > now() - interval '1 hour') as completed_1h,
                count(*) filter (where status = 'failed' and completed_at > now() - interval '1 hour') as failed_1h,
                (percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
                    filter (where status = 'completed' and completed_at > now() - interval '1 hour'))::float8 as p95_secs_1h,
                (percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
                    filter (where status = 'completed' and completed_at <= now() - interval '1 hour'))::float8 as p95_secs_day,
                count(*) filter (where updated_at > now() - interval '1 hour'
                                   and (error like 'attempt % stopped responding%' or error like 'expired:%' or error like 'timed out:%'))
                    as stuck_1h
         from recent group by type order by type",
    )
    .fetch_all(pool)
    .await
}

/// One runner's alert watcher.
pub struct Watcher {
    pub pool: PgPool,
    pub alerts: Alerts,
    pub secret: Option<Secret>,
    pub client: reqwest::Client,
}

impl Watcher {
    /// Checks every `alerts.every` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.check().await {
                warn!(error = %e, "checking alert thresholds failed; retrying at the next check");
            }
            tokio::select! {
                // Shutdown.
                _ = stop.cancelled() => return,
                // The next check.
                _ = tokio::time::sleep(self.alerts.every) => {}
            }
        }
    }

    async fn check(&self) -> Result<(), sqlx::Error> {
        let mut all = figures(&self.pool).await?;
        // A type with a crossed alert and no live or recent runs any more has nothing to show:
        // judge it on empty figures, so its alerts clear.
        let crossed_types: Vec<String> =
            sqlx::query_scalar("select distinct type from rowcast.alert_states where crossed").fetch_all(&self.pool).await?;
        for t in crossed_types {
            if !all.iter().any(|f| f.job_type == t) {
                all.push(Figures { job_type: t, ..Figures::default() });
            }
        }
        for f in all {
            let past = crossed(&f, &self.alerts);
            for name in NAMES {
                let now = past.iter().find(|c| c.alert == name);
                let flipped: Option<(bool,)> = sqlx::query_as(
                    "insert into rowcast.alert_states (type, alert, crossed) values ($1, $2, $3)
                     on conflict (type, alert) do update set crossed = excluded.crossed, changed_at = now()
                        where rowcast.alert_states.crossed <> excluded.crossed
                     returning (xmax = 0)",
                )
                .bind(&f.job_type)
                .bind(name)
                .bind(now.is_some())
                .fetch_optional(&self.pool)
                .await?;
                match (flipped, now) {
                    // Unchanged, or first seen and fine: nothing to say.
                    (None, _) | (Some((true,)), None) => {}
                    (Some(_), now) => self.post(&f, name, now).await,
                }
            }
        }
        Ok(())
    }

    async fn post(&self, f: &Figures, alert: &str, now: Option<&super::alert_rules::Crossing>) {
        let state = if now.is_some() { "crossed" } else { "cleared" };
        info!(job.type = %f.job_type, alert, state, "alert threshold");
        let Some(url) = &self.alerts.webhook else { return };
        let body = json!({
            "type": f.job_type, "alert": alert, "state": state,
            "value": now.map(|c| c.value), "threshold": now.map(|c| c.threshold), "at": chrono::Utc::now(),
        })
        .to_string();
        let mut request = self.client.post(url).timeout(WEBHOOK_TIMEOUT).header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("x-rowcast-signature", sign(secret.expose(), crate::auth::now_secs(), body.as_bytes()));
        }
        match request.body(body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => warn!(status = r.status().as_u16(), alert, "the alert webhook refused an alert"),
            Err(e) => warn!(timeout = e.is_timeout(), alert, "the alert webhook is unreachable"),
        }
    }
}
