//! Limits keyed by anything but the run's owner (migration 0019):
//! `concurrency: {limit, key: 'event.data.teamId', scope?}`, for which a run
//! takes a slot before each call (a slot counts while its job is running;
//! Inngest counts in-flight steps, and a running job is one about to call or
//! calling), and `throttle: {limit, period, burst?, key?}`, for which a run
//! records its start before its first call. A run that finds a limit full is
//! handed back to wait (`Outcome::Defer`) without spending an attempt, so it
//! holds no runner slot while it waits.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::expr::{self, Expr};
use crate::jobs::model::Job;

/// How long a run that found its key full waits before it is claimed again
/// (plus up to as much again at random, so waiting runs spread out).
pub const WAIT: Duration = Duration::from_millis(500);

/// One keyed limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed {
    /// The function's id (scope "fn") or "env"/"account": who shares the key.
    pub scope: String,
    pub key: Expr,
    pub limit: i32,
}

/// A keyed throttle: at most `limit + burst` runs of the function start per `period` per key.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    pub key: Expr,
    pub limit: i32,
    pub burst: i32,
    pub period: Duration,
}

/// A function's keyed limits and where their slots live.
#[derive(Clone)]
pub struct Gate {
    pub pool: PgPool,
    /// The function's id (the throttle's scope).
    pub function: String,
    pub limits: Vec<Keyed>,
    pub throttle: Option<Throttle>,
}

/// Whether a run may call now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Entry {
    In,
    /// A concurrency limit is full: try again after a short wait.
    Full,
    /// The throttle's window is full for this long.
    Throttled(Duration),
}

impl Gate {
    /// Takes `job`'s slot under every limit, and records its start under
    /// the throttle when `starting`; nothing is taken unless all admit it.
    pub async fn enter(&self, job: &Job, starting: bool) -> Result<Entry, sqlx::Error> {
        // A throttle-only gate has nothing to check once the run has started.
        if self.limits.is_empty() && !(starting && self.throttle.is_some()) {
            return Ok(Entry::In);
        }
        let names = expr::about(job.input.get("event").cloned().unwrap_or(Value::Null));
        let mut tx = self.pool.begin().await?;
        if let (Some(t), true) = (&self.throttle, starting) {
            let key = t.key.key(&names);
            super::admit::lock(&mut tx, &format!("rowcast.throttle:{}:{key}", self.function)).await?;
            let (wait,): (Option<f64>,) = sqlx::query_as(THROTTLE)
                .bind(&self.function)
                .bind(&key)
                .bind(job.id)
                .bind(t.limit + t.burst)
                .bind(t.period.as_secs_f64())
                .fetch_one(&mut *tx)
                .await?;
            if let Some(secs) = wait {
                return Ok(Entry::Throttled(Duration::from_secs_f64(secs.max(0.05))));
            }
        }
        for limit in &self.limits {
            let key = limit.key.key(&names);
            super::admit::lock(&mut tx, &format!("rowcast.slot:{}:{key}", limit.scope)).await?;
            let (room,): (bool,) =
                sqlx::query_as(TAKE).bind(&limit.scope).bind(&key).bind(job.id).bind(limit.limit).fetch_one(&mut *tx).await?;
            if !room {
                return Ok(Entry::Full);
            }
        }
        tx.commit().await?;
        Ok(Entry::In)
    }
}

/// Run under the throttle's (function, key) lock: null when the run may
/// start (its start is recorded, once), else the seconds until the oldest
/// start in the window leaves it. `$1` function, `$2` key, `$3` the job,
/// `$4` starts allowed per window, `$5` the window in seconds.
const THROTTLE: &str = "with window_starts as (
        select started_at from rowcast.inngest_throttle_starts
        where scope = $1 and key = $2 and job_id <> $3 and started_at > now() - make_interval(secs => $5)),
     verdict as (
        select case when exists (select 1 from rowcast.inngest_throttle_starts where scope = $1 and key = $2 and job_id = $3) then null
                    when (select count(*) from window_starts) < $4 then null
                    else extract(epoch from (select min(started_at) from window_starts) + make_interval(secs => $5) - now())::float8
               end as wait),
     gone as (delete from rowcast.inngest_throttle_starts where started_at < now() - interval '24 hours'),
     started as (
        insert into rowcast.inngest_throttle_starts (scope, key, job_id) select $1, $2, $3 from verdict where wait is null
        on conflict do nothing returning 1)
     select wait from verdict";

/// Run under the (scope, key) lock, taken by the statement before: sweeps
/// slots whose job no longer runs, counts the others' running slots, and
/// takes one when there is room. `$1` scope, `$2` key, `$3` the job, `$4` the limit.
const TAKE: &str = "with swept as (
        delete from rowcast.inngest_slots s using rowcast.jobs j
        where s.scope = $1 and s.key = $2 and j.id = s.job_id and j.status <> 'running' and s.job_id <> $3),
     held as (
        select count(*) as n from rowcast.inngest_slots s join rowcast.jobs j on j.id = s.job_id
        where s.scope = $1 and s.key = $2 and j.status = 'running' and s.job_id <> $3),
     taken as (
        insert into rowcast.inngest_slots (scope, key, job_id) select $1, $2, $3 from held where n < $4
        on conflict do nothing returning 1)
     select n < $4 from held";
