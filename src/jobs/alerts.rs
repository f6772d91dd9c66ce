//! The alert watcher (every runner runs one) and the per-type figures it
//! judges, which the runs dashboard shows too.
//!
//! Every `[alerts] every`, it reads each type's figures, decides which
//! thresholds are crossed (`alert_rules`), and flips the stored state of
//! each (type, alert) that changed, in one compare-and-set statement
//! (migration 0020). The watcher that flipped it POSTs `{type, alert,
//! state: "crossed" | "cleared", value, threshold, at}` to the webhook,
//! signed like step calls; a first look that finds nothing crossed sends
//! nothing. Delivery is at least once (migration 0021): the notice is kept
//! with the state until the webhook answers 2xx, and any watcher sends it
//! again when its retry is due, backing off from `every` (at least 1 s) to
//! at most 10 minutes; a newer flip of the same alert replaces it.

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
/// How long a watcher holds a notice it is sending: longer than one POST may take.
const SENDING: Duration = Duration::from_secs(30);
/// The longest wait between two sends of one undelivered notice.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

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
                let state = if now.is_some() { "crossed" } else { "cleared" };
                let notice = json!({
                    "type": f.job_type, "alert": name, "state": state,
                    "value": now.map(|c| c.value), "threshold": now.map(|c| c.threshold), "at": chrono::Utc::now(),
                });
                // The first look at a fine alert owes nothing; any other flip owes its notice.
                let flipped: Option<(bool,)> = sqlx::query_as(
                    "insert into rowcast.alert_states (type, alert, crossed, retry_at, pending)
                     values ($1, $2, $3, now() + make_interval(secs => $5), case when $3 then $4::jsonb end)
                     on conflict (type, alert) do update set crossed = excluded.crossed, changed_at = now(),
                        pending = $4, attempts = 0, retry_at = excluded.retry_at
                        where rowcast.alert_states.crossed <> excluded.crossed
                     returning (xmax = 0)",
                )
                .bind(&f.job_type)
                .bind(name)
                .bind(now.is_some())
                .bind(&notice)
                .bind(SENDING.as_secs_f64())
                .fetch_optional(&self.pool)
                .await?;
                match (flipped, now) {
                    // Unchanged, or first seen and fine: nothing to say.
                    (None, _) | (Some((true,)), None) => {}
                    (Some(_), _) => {
                        info!(job.type = %f.job_type, alert = name, state, "alert threshold");
                        self.deliver(&f.job_type, name, &notice, 0).await?;
                    }
                }
            }
        }
        self.retry_due().await
    }

    /// Sends again the notices whose retry is due, claimed so no other watcher sends them meanwhile.
    async fn retry_due(&self) -> Result<(), sqlx::Error> {
        let due: Vec<(String, String, serde_json::Value, i32)> = sqlx::query_as(
            "update rowcast.alert_states set retry_at = now() + make_interval(secs => $1)
             where pending is not null and retry_at <= now()
             returning type, alert, pending, attempts",
        )
        .bind(SENDING.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        for (job_type, alert, notice, attempts) in due {
            self.deliver(&job_type, &alert, &notice, attempts).await?;
        }
        Ok(())
    }

    /// POSTs `notice`; on a 2xx it is delivered, else its next try is set after a backoff.
    async fn deliver(&self, job_type: &str, alert: &str, notice: &serde_json::Value, attempts: i32) -> Result<(), sqlx::Error> {
        let Some(url) = &self.alerts.webhook else {
            return self.settle(job_type, alert, notice, None).await;
        };
        let body = notice.to_string();
        let mut request = self.client.post(url).timeout(WEBHOOK_TIMEOUT).header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("x-rowcast-signature", sign(secret.expose(), crate::auth::now_secs(), body.as_bytes()));
        }
        let failed = match request.body(body).send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Some("timed out".to_owned()),
            Err(_) => Some("is unreachable".to_owned()),
        };
        let retry_in = failed.as_ref().map(|why| {
            let wait = self.backoff(attempts);
            warn!(
                alert,
                attempt = attempts + 1,
                retry_in_secs = wait.as_secs_f64(),
                "the alert webhook {why}; the notice will be sent again"
            );
            wait
        });
        self.settle(job_type, alert, notice, retry_in).await
    }

    /// Clears a delivered notice (`retry_in` none), or schedules its next try;
    /// either only while it is still the one owed (a newer flip replaces it).
    async fn settle(&self, job_type: &str, alert: &str, notice: &serde_json::Value, retry_in: Option<Duration>) -> Result<(), sqlx::Error> {
        let sql = match retry_in {
            None => "update rowcast.alert_states set pending = null where type = $1 and alert = $2 and pending = $3",
            Some(_) => {
                "update rowcast.alert_states set attempts = attempts + 1, retry_at = now() + make_interval(secs => $4)
                 where type = $1 and alert = $2 and pending = $3"
            }
        };
        sqlx::query(sql)
            .bind(job_type)
            .bind(alert)
            .bind(notice)
            .bind(retry_in.unwrap_or_default().as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The wait before try `attempts + 2`: `every` (at least 1 s), doubled per attempt, at most `MAX_BACKOFF`.
    fn backoff(&self, attempts: i32) -> Duration {
        let base = self.alerts.every.max(Duration::from_secs(1));
        base.saturating_mul(1 << attempts.clamp(0, 16) as u32).min(MAX_BACKOFF)
    }
}
