//! Group commits for the runner's hottest writes: storing a finished step
//! and completing a job.
//!
//! Every attempt that reaches one of these writes hands it to a writer task
//! and waits for its own answer. The writer takes everything queued at that
//! moment (at most `MAX_BATCH`) into one statement, the same compare-and-set
//! as the single write (`status = 'running' and attempts = <this attempt>`,
//! row by row), so a batch changes nothing a lone write would not. There is
//! no timer: while one statement runs, the next batch gathers, so a quiet
//! runner writes at once and a busy one writes less often. Each attempt gets
//! its answer only after the commit, so no step is reported stored, and no
//! next step called, before it is durable; subscribers see every row
//! change as before (one change-log row per job row, in commit order).
//!
//! The writer tasks end when every sender is gone (the runner and its
//! attempts): they hold no state worth cancelling mid-statement.

use std::collections::HashMap;
use std::sync::LazyLock;

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use uuid::Uuid;

use super::model::{Job, COLUMNS};
use super::session::KeptSession;

/// Most writes in one statement.
pub const MAX_BATCH: usize = 64;

/// A finished step to store with the job's progress, message and broadcasts.
pub struct StepWrite {
    pub job: Uuid,
    pub attempt: i32,
    pub step: String,
    pub seq: i32,
    pub output: Value,
    pub progress: Option<i32>,
    pub message: Option<String>,
    pub broadcasts: Value,
    /// The job's new `max_attempts` when a finished step renews its retries
    /// (an Inngest run: each step has the function's retries of its own).
    pub max_attempts: Option<i32>,
}

/// A completion: running -> completed with `output`, storing the step
/// that finished the job when the handler's answer carried one.
pub struct CompleteWrite {
    pub job: Uuid,
    pub attempt: i32,
    pub output: Value,
    pub last: Option<StepWrite>,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// The handle attempts write through; cheap to clone.
#[derive(Clone)]
pub struct Writes {
    steps: mpsc::UnboundedSender<(StepWrite, Reply<bool>)>,
    completions: mpsc::UnboundedSender<(CompleteWrite, Reply<Option<Job>>)>,
}

/// Why a batched write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the job writer stopped")]
    Stopped,
    #[error("{0}")]
    Db(String),
}

impl Writes {
    /// Starts the two writer tasks on `pool`.
    pub fn start(pool: PgPool) -> Writes {
        let (steps, step_rx) = mpsc::unbounded_channel();
        let (completions, complete_rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool.clone(), step_rx, store_steps));
        tokio::spawn(writer(pool, complete_rx, complete));
        Writes { steps, completions }
    }

    /// Stores a step; false if the job is no longer this attempt's.
    pub async fn store_step(&self, write: StepWrite) -> Result<bool, WriteError> {
        ask(&self.steps, write).await
    }

    /// Completes a job; the row as it now is, or `None` if it was no longer this attempt's.
    pub async fn complete(&self, write: CompleteWrite) -> Result<Option<Job>, WriteError> {
        ask(&self.completions, write).await
    }
}

async fn ask<W, T>(queue: &mpsc::UnboundedSender<(W, Reply<T>)>, write: W) -> Result<T, WriteError> {
    let (reply, answer) = oneshot::channel();
    queue.send((write, reply)).map_err(|_| WriteError::Stopped)?;
    answer.await.map_err(|_| WriteError::Stopped)?.map_err(WriteError::Db)
}

/// Takes what is queued, writes it with `flush` on the writer's own session
/// (`KeptSession`), answers each sender.
async fn writer<W, T, F>(pool: PgPool, mut queue: mpsc::UnboundedReceiver<(W, Reply<T>)>, flush: F)
where
    F: for<'c> Fn(&'c mut PgConnection, &'c [W]) -> BoxFuture<'c, Result<Vec<T>, sqlx::Error>>,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut session = KeptSession::new(pool);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (writes, replies): (Vec<W>, Vec<Reply<T>>) = batch.drain(..).unzip();
        match session.run(writes.as_slice(), &flush).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                warn!(error = %e, writes = replies.len(), "a batched job write failed");
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Stores the steps of one batch: for each job still this attempt's, the
/// step row, the job's progress and message, and the step's broadcasts, in
/// one statement. The broadcasts are sent only when the step row is new, so
/// a step stored by an earlier attempt (or a late duplicate) sends nothing
/// twice; they leave after commit through the change log like every SQL
/// broadcast (migration 0005).
fn store_steps<'c>(conn: &'c mut PgConnection, writes: &'c [StepWrite]) -> BoxFuture<'c, Result<Vec<bool>, sqlx::Error>> {
    Box::pin(async move {
        let live: Vec<(Uuid,)> = sqlx::query_as(&STORE_STEPS)
            .bind(writes.iter().map(|w| w.job).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.attempt).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.step.as_str()).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.progress).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.message.as_deref()).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.seq).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| &w.output).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| &w.broadcasts).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.max_attempts).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        let live: std::collections::HashSet<Uuid> = live.into_iter().map(|(id,)| id).collect();
        Ok(writes.iter().map(|w| live.contains(&w.job)).collect())
    })
}

/// Completes the jobs of one batch and drops their leases; a completion
/// carrying its last step also stores that step (its message on the job,
/// its broadcasts sent if the row is new), as `store_steps` would, in the
/// same statement.
fn complete<'c>(conn: &'c mut PgConnection, writes: &'c [CompleteWrite]) -> BoxFuture<'c, Result<Vec<Option<Job>>, sqlx::Error>> {
    fn last(w: &CompleteWrite) -> Option<&StepWrite> {
        w.last.as_ref()
    }
    Box::pin(async move {
        let rows: Vec<Job> = sqlx::query_as(&COMPLETE)
            .bind(writes.iter().map(|w| w.job).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.attempt).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| &w.output).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| last(w).map(|l| l.step.as_str())).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| last(w).map(|l| l.seq)).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| last(w).map(|l| &l.output)).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| last(w).and_then(|l| l.message.as_deref())).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| last(w).map_or(&EMPTY, |l| &l.broadcasts)).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        let mut by_id: HashMap<Uuid, Job> = rows.into_iter().map(|j| (j.id, j)).collect();
        Ok(writes.iter().map(|w| by_id.remove(&w.job)).collect())
    })
}

/// `store_steps`' statement: `$1..$9` are the writes' columns.
static STORE_STEPS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with input as (
                select * from unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::text[], $6::int[], $7::jsonb[], $8::jsonb[],
                                     $9::int[])
                    as i(id, attempt, step, progress, message, seq, output, broadcasts, max_attempts)),
             live as (
                update rowcast.jobs j set progress = coalesce(i.progress, j.progress), message = coalesce(i.message, j.message),
                    max_attempts = coalesce(i.max_attempts, j.max_attempts)
                from input i where j.id = i.id and j.status = 'running' and j.attempts = i.attempt returning j.id),
             {stored}
             select id from live",
        stored = store_and_send("live", "output")
    )
});

/// `complete`'s statement: `$1..$3` the completions, `$4..$8` their last steps (null when none).
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with input as (
                select * from unnest($1::uuid[], $2::int[], $3::jsonb[], $4::text[], $5::int[], $6::jsonb[], $7::text[], $8::jsonb[])
                    as i(id, attempt, output, step, seq, step_output, message, broadcasts)),
             moved as (
                update rowcast.jobs j set status = 'completed', progress = 100, output = i.output, error = null, completed_at = now(),
                    message = coalesce(i.message, j.message)
                from input i where j.id = i.id and j.status = 'running' and j.attempts = i.attempt returning j.*),
             freed as (delete from rowcast.job_leases l using moved m where l.job_id = m.id and l.attempt = m.attempts),
             {stored}
             select {COLUMNS} from moved",
        stored = store_and_send("moved", "step_output")
    )
});

/// The two CTEs that store a step and send its broadcasts, for the rows of
/// `input` whose job is in CTE `owned` (still this attempt's) and that carry a
/// step, with the step's output in column `output`. The broadcasts go only
/// when the step row is new, so a step stored before sends nothing twice.
fn store_and_send(owned: &str, output: &str) -> String {
    format!(
        "stored as (
            insert into rowcast.job_steps (job_id, step_id, seq, output)
            select i.id, i.step, i.seq, i.{output} from input i join {owned} o on o.id = i.id where i.step is not null
            on conflict (job_id, step_id) do nothing returning job_id),
         sent as (
            insert into realtime.messages (topic, event, payload, private, extension)
            select b->>'topic', b->>'event', b->'payload', (b->>'private')::boolean, 'broadcast'
            from input i join stored s on s.job_id = i.id, jsonb_array_elements(i.broadcasts) b returning 1)"
    )
}

/// No broadcasts.
static EMPTY: Value = Value::Array(Vec::new());
