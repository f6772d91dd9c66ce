//! Running one claimed attempt of a job: call its handler step by step,
//! store each step, renew the lease, and end in exactly one transition.
//!
//! Every write is a compare-and-set on (status = 'running', attempts = this
//! attempt): if the job was cancelled, rescued or expired meanwhile, the
//! write matches no row and the attempt stops without touching it. Finished
//! steps are memoized in `rowcast.job_steps`, so a retry resumes after them.

use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::batch::{CompleteWrite, StepWrite, WriteError, Writes};
use super::config::JobType;
use super::hooks;
use super::model::{Job, COLUMNS};
use super::steps::{backoff, random_unit, Memo, Outcome, StepHandler, StepResult};
use crate::metrics;

/// What an attempt needs besides the job itself.
#[derive(Clone)]
pub struct AttemptContext {
    pub pool: PgPool,
    pub job_type: Arc<JobType>,
    pub handler: StepHandler,
    pub lease: Duration,
    pub hooks: hooks::Hooks,
    pub metrics: metrics::Jobs,
    /// Step stores and completions, group-committed with other attempts'.
    pub writes: Writes,
}

/// Why an attempt stopped without its last write.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Signals an attempt listens to.
#[derive(Clone)]
pub struct Signals {
    /// The job was cancelled (or its lease lost): stop, write nothing.
    pub cancel: CancellationToken,
    /// The runner is shutting down: finish the current step, then release.
    pub draining: CancellationToken,
    /// The grace period is over: stop the current step too, then release.
    pub abort: CancellationToken,
}

/// The runner slot an attempt holds while its handler works.
///
/// The slot is given back when the handler has given its last answer, before
/// the write that ends the attempt: that write is group-committed with other
/// attempts' and the next job need not wait for it (graphile-worker's batched
/// completion does the same). The job stays `running` in the database until
/// the write commits, so the type's limits still count it, and a runner that
/// dies before the write leaves a lease that expires as before. Ending writes
/// not yet committed are bounded by `ending` (as many places as slots, and
/// at least one full batch): when they are all taken the attempt keeps its
/// slot until one frees.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    ending: Arc<Semaphore>,
    freed: Arc<Notify>,
}

impl Slot {
    /// The slot held by `permit`; `freed` is rung when it is given back.
    pub fn new(permit: OwnedSemaphorePermit, ending: Arc<Semaphore>, freed: Arc<Notify>) -> Slot {
        Slot { permit: Some(permit), ending, freed }
    }

    /// Takes a place among the ending writes, then gives the slot back.
    async fn hand_over(&mut self) -> Option<OwnedSemaphorePermit> {
        let place = self.ending.clone().acquire_owned().await.ok();
        self.give_back();
        place
    }

    fn give_back(&mut self) {
        if self.permit.take().is_some() {
            self.freed.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Runs `job` (already claimed as `job.attempts`, its finished `steps`
/// loaded) in `slot` until it ends or is handed back.
pub async fn run(ctx: AttemptContext, mut job: Job, steps: Memo, signals: Signals, mut slot: Slot) {
    let claimed = std::time::Instant::now();
    let heartbeat = tokio::spawn(heartbeat(ctx.pool.clone(), job.id, job.attempts, ctx.lease, signals.cancel.clone()));
    let result = steps_loop(&ctx, &mut job, steps, &signals, &mut slot).await;
    heartbeat.abort();
    ctx.metrics.run_seconds.get_or_create(&metrics::JobType::of(&job.job_type)).observe(claimed.elapsed().as_secs_f64());
    if let Err(e) = result {
        warn!(job.id = %job.id, error = %e, "job attempt ended on a database error; its lease will expire and another runner resumes it");
    }
}

/// Calls the handler and acts on each answer; `job.max_attempts` follows
/// what the stored steps renewed.
async fn steps_loop(ctx: &AttemptContext, job: &mut Job, mut steps: Memo, signals: &Signals, slot: &mut Slot) -> Result<(), AttemptError> {
    let work = signals.abort.child_token();
    loop {
        if signals.draining.is_cancelled() {
            return Ok(release(&ctx.pool, job).await?);
        }
        let timeout = ctx.job_type.timeout;
        let outcome = tokio::select! {
            // Cancelled or lease lost: the row is no longer ours.
            _ = signals.cancel.cancelled() => {
                work.cancel();
                info!(job.id = %job.id, "job attempt stopped: cancelled");
                return Ok(());
            }
            // Shutdown grace period over: hand the job back.
            _ = signals.abort.cancelled() => return Ok(release(&ctx.pool, job).await?),
            // The step itself, bounded by the type's timeout.
            result = tokio::time::timeout(timeout, ctx.handler.call(job, &steps, &work)) => result.unwrap_or_else(|_| Outcome::Retry {
                message: format!("step timed out after {} s", timeout.as_secs_f64()),
                after: None,
            }),
        };
        match outcome {
            Outcome::Step(step) => {
                if !store(ctx, job, &mut steps, vec![step]).await? {
                    return Ok(());
                }
            }
            Outcome::Steps { steps: group, retry } => {
                if !store(ctx, job, &mut steps, group).await? {
                    return Ok(());
                }
                if let Some((message, after)) = retry {
                    return finish(ctx, job, Transition::Retry(message, after), slot).await;
                }
            }
            Outcome::Done { output, last } => {
                let last = last.map(|step| step_write(job, steps.len(), step, None));
                return finish(ctx, job, Transition::Complete(output, last), slot).await;
            }
            Outcome::Fail { message } => return finish(ctx, job, Transition::Fail(message), slot).await,
            Outcome::Defer { message, after } => return Ok(hand_back(&ctx.pool, job, after, &message).await?),
            Outcome::Retry { message, after } => return finish(ctx, job, Transition::Retry(message, after), slot).await,
        }
    }
}

/// Stores finished `group` (one step, or parallel ones) in `steps` and the
/// database; false if the job is no longer this attempt's. An Inngest run's
/// retries are per step: a stored step gives the next one the function's
/// retries again, counted from this attempt, so `job.max_attempts` grows.
async fn store(ctx: &AttemptContext, job: &mut Job, steps: &mut Memo, group: Vec<StepResult>) -> Result<bool, AttemptError> {
    let renewed = matches!(ctx.handler, StepHandler::Inngest(_)).then(|| job.attempts + ctx.job_type.max_attempts - 1);
    let kept: Vec<(String, Value)> = group.iter().map(|s| (s.id.clone(), s.output.clone())).collect();
    let writes = group.into_iter().enumerate().map(|(i, step)| ctx.writes.store_step(step_write(job, steps.len() + i, step, renewed)));
    for stored in futures_util::future::join_all(writes).await {
        if !stored? {
            return Ok(false);
        }
    }
    for (id, output) in kept {
        steps.insert(id, output);
    }
    job.max_attempts = renewed.unwrap_or(job.max_attempts);
    Ok(true)
}

/// The write storing `step` as this attempt's step number `seq`, renewing
/// the job's attempts to `max_attempts` when given.
fn step_write(job: &Job, seq: usize, step: StepResult, max_attempts: Option<i32>) -> StepWrite {
    StepWrite {
        job: job.id,
        attempt: job.attempts,
        step: step.id,
        seq: seq as i32,
        output: step.output,
        progress: step.progress,
        message: step.message,
        broadcasts: Value::Array(step.broadcasts),
        max_attempts,
    }
}

/// How an attempt ends: completions go through `batch`, the rarer two
/// through the statements below.
enum Transition {
    /// The output, and the last step when it came with it (stored in the same write).
    Complete(Value, Option<StepWrite>),
    Fail(String),
    Retry(String, Option<Duration>),
}

/// The end of an attempt as one statement: a compare-and-set on (running, this
/// attempt) that also drops the lease. `$3` is the JSON value the transition
/// stores, `$4` a delay in seconds.
fn ended_attempt(set: &str) -> String {
    format!(
        "with moved as (
            update rowcast.jobs set {set} where id = $1 and status = 'running' and attempts = $2 returning {COLUMNS}),
         freed as (delete from rowcast.job_leases where job_id in (select id from moved) and attempt = $2)
         select * from moved"
    )
}

/// running -> failed, storing the error.
static FAIL: LazyLock<String> = LazyLock::new(|| ended_attempt("status = 'failed', error = $3 #>> '{}', completed_at = now()"));
/// running -> pending after a delay, storing the error and saying when it retries.
static RETRY: LazyLock<String> = LazyLock::new(|| {
    ended_attempt(
        "status = 'pending', error = $3 #>> '{}', run_at = now() + make_interval(secs => $4), \
         message = format('retrying in %s s: %s', round($4::numeric, 1), $3 #>> '{}')",
    )
});

/// Ends the attempt with `t`, its slot given back first (see `Slot`).
async fn finish(ctx: &AttemptContext, job: &Job, t: Transition, slot: &mut Slot) -> Result<(), AttemptError> {
    let _place = slot.hand_over().await;
    let t = match t {
        Transition::Retry(message, _) if job.attempts >= job.max_attempts => {
            Transition::Fail(format!("{message} (gave up after {} attempts)", job.attempts))
        }
        t => t,
    };
    let m = &ctx.metrics;
    let of_type = metrics::JobType::of(&job.job_type);
    match t {
        Transition::Complete(output, last) => {
            let ended = ctx.writes.complete(CompleteWrite { job: job.id, attempt: job.attempts, output, last }).await?;
            if ended_as(job, ended).is_some() {
                m.completed.get_or_create(&of_type).inc();
            }
        }
        Transition::Fail(message) => {
            if let Some(ended) = transition(&ctx.pool, job, &FAIL, Value::from(message), 0.0).await? {
                m.failed.get_or_create(&of_type).inc();
                ctx.hooks.failed(&ended);
            }
        }
        Transition::Retry(message, after) => {
            let delay = after.unwrap_or_else(|| backoff(job.attempts, ctx.job_type.backoff_base, ctx.job_type.backoff_max, random_unit()));
            if transition(&ctx.pool, job, &RETRY, Value::from(message), delay.as_secs_f64()).await?.is_some() {
                m.retried.get_or_create(&of_type).inc();
            }
        }
    }
    Ok(())
}

/// Runs one of the named end-of-attempt statements.
async fn transition(pool: &PgPool, job: &Job, statement: &str, value: Value, secs: f64) -> Result<Option<Job>, sqlx::Error> {
    let row: Option<Job> = sqlx::query_as(statement).bind(job.id).bind(job.attempts).bind(value).bind(secs).fetch_optional(pool).await?;
    Ok(ended_as(job, row))
}

/// Logs how an attempt's last write went; passes the row on.
fn ended_as(job: &Job, row: Option<Job>) -> Option<Job> {
    match &row {
        Some(j) => info!(job.id = %j.id, job.type = %j.job_type, status = %j.status, "job attempt ended"),
        None => info!(job.id = %job.id, "job changed hands before this attempt ended; left as is"),
    }
    row
}

/// Hands a job back at shutdown without spending an attempt.
async fn release(pool: &PgPool, job: &Job) -> Result<(), sqlx::Error> {
    hand_back(pool, job, Duration::ZERO, "released by a stopping runner").await?;
    info!(job.id = %job.id, "job released for another runner");
    Ok(())
}

/// Hands a job back without spending an attempt, to be claimed again after
/// `after` (the doorbell rings at once only when that is now).
async fn hand_back(pool: &PgPool, job: &Job, after: Duration, message: &str) -> Result<(), sqlx::Error> {
    let sql = "with moved as (
            update rowcast.jobs set status = 'pending', attempts = attempts - 1, run_at = now() + make_interval(secs => $3), message = $4
            where id = $1 and status = 'running' and attempts = $2 returning id, type),
         freed as (delete from rowcast.job_leases where job_id in (select id from moved)),
         rang as (select pg_notify('rowcast_jobs', type) from moved where $3 = 0)
         select count(*) from rang";
    sqlx::query(sql).bind(job.id).bind(job.attempts).bind(after.as_secs_f64()).bind(message).execute(pool).await?;
    Ok(())
}

/// Renews the lease every third of its length; a renewal that matches no
/// row means the job was rescued or cancelled, so the attempt is stopped.
async fn heartbeat(pool: PgPool, id: Uuid, attempt: i32, lease: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let renewed =
            sqlx::query("update rowcast.job_leases set expires_at = now() + make_interval(secs => $3) where job_id = $1 and attempt = $2")
                .bind(id)
                .bind(attempt)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await;
        match renewed {
            Ok(r) if r.rows_affected() == 0 => {
                warn!(job.id = %id, "lease lost (rescued, cancelled or expired): stopping this attempt");
                cancel.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => warn!(job.id = %id, error = %e, "lease renewal failed; retrying at the next beat"),
        }
    }
}
