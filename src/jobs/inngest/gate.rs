//! Concurrency keyed by anything but the run's owner: `concurrency: {limit,
//! key: 'event.data.teamId', scope?}`. Before it calls its function, a run
//! takes a slot for each such limit (migration 0019); a slot counts while its
//! job is running. A run that finds a limit full is handed back to wait
//! (`Outcome::Defer`) without spending an attempt, so it holds no runner
//! slot while it waits. Inngest counts in-flight steps; a running job is
//! one about to call or calling, so this counts the same runs.

use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::PgPool;

use super::expr::Expr;
use crate::jobs::model::Job;

/// How long a run that found its key full waits before it is claimed again
/// (plus up to as much again at random, so waiting runs spread out).
pub const WAIT: Duration = Duration::from_millis(500);

/// One keyed limit.
#[derive(Debug, Clone)]
pub struct Keyed {
    /// The function's id (scope "fn") or "env"/"account": who shares the key.
    pub scope: String,
    pub key: Expr,
    pub limit: i32,
}

/// A function's keyed limits and where their slots live.
#[derive(Clone)]
pub struct Gate {
    pub pool: PgPool,
    pub limits: Vec<Keyed>,
}

impl Gate {
    /// Takes `job`'s slot under every limit; `Ok(false)` (and nothing taken) when one is full.
    pub async fn enter(&self, job: &Job) -> Result<bool, sqlx::Error> {
        let event = job.input.get("event").cloned().unwrap_or(Value::Null);
        let names: Map<String, Value> = [("event".to_owned(), event)].into_iter().collect();
        let mut tx = self.pool.begin().await?;
        for limit in &self.limits {
            let key = match limit.key.eval(&names) {
                Ok(Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(_) => "null".to_owned(),
            };
            super::admit::lock(&mut tx, &format!("rowcast.slot:{}:{key}", limit.scope)).await?;
            let (room,): (bool,) =
                sqlx::query_as(TAKE).bind(&limit.scope).bind(&key).bind(job.id).bind(limit.limit).fetch_one(&mut *tx).await?;
            if !room {
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}

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
