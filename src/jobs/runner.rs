//! The runner: claims runnable jobs while it has free slots and runs each
//! claimed attempt in its own task.
//!
//! Owns the doorbell (LISTEN `rowcast_jobs` for new work and
//! `rowcast_job_cancel` for cancellations) with a polling fallback, the
//! per-process slots, and shutdown: stop claiming, let running steps finish
//! within the grace period, then hand every remaining job back. Claims go
//! through `rowcast.claim_batch`, which takes as many rows as there are free
//! slots with SKIP LOCKED and enforces the type's limits, so any number of
//! runners can share a database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use super::attempt::{self, AttemptContext, Signals, Slot};
use super::batch::{self, Writes};
use super::config::{Handler, JobType, JobsConfig};
use super::hooks::Hooks;
use super::inngest::{functions, InngestSettings};
use super::model::{Job, COLUMNS};
use super::session::KeptSession;
use super::steps::{Memo, StepHandler};
use crate::metrics;

/// A runner process's job executor.
pub struct Runner {
    pool: PgPool,
    config: Arc<JobsConfig>,
    contexts: HashMap<String, AttemptContext>,
    shared: Shared,
    inngest: InngestFunctions,
    worker: String,
    running: Arc<DashMap<Uuid, CancellationToken>>,
    slots: Arc<Semaphore>,
    /// Places for the ending writes of attempts that gave their slot back (see `Slot`).
    ending: Arc<Semaphore>,
    freed: Arc<Notify>,
    /// Types that may have claimable work: rung for, or found some at their last claim.
    active: HashSet<String>,
    /// The session claims run on, kept between them.
    claims: KeptSession,
}

/// What every type's attempts share.
struct Shared {
    client: reqwest::Client,
    hooks: Hooks,
    metrics: metrics::Jobs,
    writes: Writes,
}

/// The synced Inngest functions this runner runs, reloaded at most every `INNGEST_RELOAD`.
struct InngestFunctions {
    settings: InngestSettings,
    names: Vec<String>,
    loaded: Option<Instant>,
}

/// Most times the claim loop yields to the attempts it just started.
const YIELDS_AFTER_A_CLAIM: usize = 4;

/// The doorbell's payload after a rescue (`scheduler`), which may free jobs of any type.
pub const RESCUED: &str = "rescued";

/// How often the runner rereads the synced Inngest functions.
const INNGEST_RELOAD: Duration = Duration::from_secs(1);

impl Runner {
    /// A runner for the types of `config` and the Inngest functions synced
    /// under `inngest`, running `hooks` after final failures.
    pub fn new(
        pool: PgPool,
        config: Arc<JobsConfig>,
        client: reqwest::Client,
        hooks: Hooks,
        metrics: metrics::Jobs,
        inngest: InngestSettings,
    ) -> Self {
        let shared = Shared { client, hooks, metrics, writes: Writes::start(pool.clone()) };
        let mut runner = Runner {
            claims: KeptSession::new(pool.clone()),
            pool,
            config: config.clone(),
            contexts: HashMap::new(),
            shared,
            inngest: InngestFunctions { settings: inngest, names: Vec::new(), loaded: None },
            worker: format!("{}:{}", std::process::id(), Uuid::new_v4().simple()),
            running: Arc::default(),
            slots: Arc::new(Semaphore::new(config.runner.slots)),
            ending: Arc::new(Semaphore::new(config.runner.slots.max(batch::MAX_BATCH))),
            freed: Arc::default(),
            active: HashSet::new(),
        };
        for t in config.types.values() {
            let handler = match &t.handler {
                Handler::Http(url) => {
                    StepHandler::Http { url: url.clone(), secret: config.signing_secret.clone(), client: runner.shared.client.clone() }
                }
                Handler::Builtin(_) => StepHandler::Demo,
                Handler::Inngest => continue,
            };
            runner.contexts.insert(t.name.clone(), runner.context(t.clone(), handler));
        }
        runner
    }

    /// The context attempts of `job_type` run in.
    fn context(&self, job_type: JobType, handler: StepHandler) -> AttemptContext {
        AttemptContext {
            pool: self.pool.clone(),
            job_type: Arc::new(job_type),
            handler,
            lease: self.config.runner.lease,
            hooks: self.shared.hooks.clone(),
            metrics: self.shared.metrics.clone(),
            writes: self.shared.writes.clone(),
        }
    }

    /// Rereads the synced Inngest functions when the last read is older than
    /// `INNGEST_RELOAD`: a function synced since is claimed from now on, one
    /// removed is no longer (its running attempts finish as they were).
    async fn reload_inngest(&mut self) {
        if self.inngest.loaded.is_some_and(|at| at.elapsed() < INNGEST_RELOAD) {
            return;
        }
        let functions = match functions::load(&self.pool, &self.inngest.settings, &self.shared.client).await {
            Ok(f) => f,
            Err(e) => return warn!(error = %e, "reading the synced Inngest functions failed; keeping the last ones"),
        };
        self.inngest.loaded = Some(Instant::now());
        for old in std::mem::take(&mut self.inngest.names) {
            self.contexts.remove(&old);
        }
        for f in functions {
            if self.contexts.contains_key(&f.job_type.name) {
                continue;
            }
            self.inngest.names.push(f.job_type.name.clone());
            let ctx = self.context(f.job_type, StepHandler::Inngest(Arc::new(f.call)));
            self.contexts.insert(ctx.job_type.name.clone(), ctx);
        }
        // Rings remembered for types still unknown are not this runner's.
        self.active.retain(|name| self.contexts.contains_key(name));
    }

    /// Writes each type's limits to `rowcast.job_types`, where enqueue and claim read them.
    pub async fn sync_types(pool: &PgPool, types: &[&JobType]) -> Result<(), sqlx::Error> {
        for t in types {
            sqlx::query(
                "insert into rowcast.job_types (type, max_attempts, concurrency, concurrency_per_user, rate_count, rate_window_secs, max_active_per_user)
                 values ($1, $2, $3, $4, $5, $6, $7)
                 on conflict (type) do update set max_attempts = excluded.max_attempts, concurrency = excluded.concurrency,
                    concurrency_per_user = excluded.concurrency_per_user, rate_count = excluded.rate_count,
                    rate_window_secs = excluded.rate_window_secs, max_active_per_user = excluded.max_active_per_user, updated_at = now()",
            )
            .bind(&t.name)
            .bind(t.max_attempts)
            .bind(t.concurrency)
            .bind(t.concurrency_per_user)
            .bind(t.rate_limit.map(|(n, _)| n))
            .bind(t.rate_limit.map(|(_, w)| w.as_secs_f64()))
            .bind(t.max_active_per_user)
            .execute(pool)
            .await?;
        }
        Ok(())
    }

    /// Claims and runs jobs until `shutdown`; then drains as described above.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let draining = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut listener: Option<PgListener> = None;
        let mut turn = 0usize;
        let mut all = true;
        info!(worker = %self.worker, types = ?self.contexts.keys().collect::<Vec<_>>(), "job runner started");
        loop {
            turn += 1;
            self.reload_inngest().await;
            self.claim_while_free(&tasks, &draining, &abort, turn, all).await;
            if listener.is_none() {
                listener = self.listen().await;
            }
            all = tokio::select! {
                // SIGTERM: stop claiming.
                _ = shutdown.cancelled() => break,
                // A slot was freed: claim the types that may have work.
                _ = self.freed.notified() => false,
                // Fallback poll (also picks up delayed retries and run_at): every type.
                _ = tokio::time::sleep(self.config.runner.poll) => true,
                // The doorbell: new work of a type, or a cancellation to pass on.
                note = next_note(&mut listener) => match note {
                    Some(note) => self.on_note(&note),
                    None => true,
                },
            };
        }
        self.drain(tasks, draining, abort).await;
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen_all(["rowcast_jobs", "rowcast_job_cancel"]).await.ok()?;
        Some(listener)
    }

    /// Acts on a notification; true when every type should be claimed
    /// (after a rescue, which may have freed jobs of any type). A ring for a
    /// type this runner does not serve is remembered, not acted on: it may be
    /// an Inngest function synced since the last reload, claimed once it is
    /// loaded; a runner serving other types than the enqueuer's does not
    /// query all of its own types for every enqueue.
    fn on_note(&mut self, note: &sqlx::postgres::PgNotification) -> bool {
        if note.channel() != "rowcast_job_cancel" {
            if note.payload() == RESCUED {
                return true;
            }
            if !self.active.contains(note.payload()) {
                self.active.insert(note.payload().to_owned());
            }
            return false;
        }
        if let Some(token) = note.payload().parse().ok().and_then(|id: Uuid| self.running.get(&id).map(|t| t.clone())) {
            token.cancel();
        }
        false
    }

    /// Fills free slots, one claim statement per type while jobs keep coming:
    /// of every type when `all`, else of the types that may have work (rung
    /// for, or whose last claim found some), so a runner with many types
    /// (synced Inngest functions) does not query each idle one on every wake.
    async fn claim_while_free(
        &mut self,
        tasks: &TaskTracker,
        draining: &CancellationToken,
        abort: &CancellationToken,
        turn: usize,
        all: bool,
    ) {
        let mut names: Vec<String> = self.contexts.keys().filter(|name| all || self.active.contains(name.as_str())).cloned().collect();
        names.sort();
        if names.is_empty() {
            return;
        }
        let mut idle_types = 0;
        let mut i = turn;
        while idle_types < names.len() {
            let free = self.slots.available_permits();
            if free == 0 {
                return;
            }
            let name = &names[i % names.len()];
            i += 1;
            match self.claim(name, free).await {
                Ok(jobs) => {
                    // Fewer jobs than asked for: the claim took all the type has for now
                    // (within its limits), so asking again at once would come back empty.
                    if jobs.len() < free {
                        idle_types += 1;
                        self.active.remove(name.as_str());
                    } else {
                        idle_types = 0;
                        self.active.insert(name.clone());
                    }
                    if jobs.is_empty() {
                        continue;
                    }
                    for Claimed { job, steps } in jobs {
                        // Only this loop takes permits, so the ones counted free are still there.
                        let permit = self.slots.clone().try_acquire_owned().expect("a slot counted free is free");
                        self.start(tasks, name, job, Memo::from_ordered(steps.0), permit, draining, abort);
                    }
                    // Let the attempts just started run first: those that end at once give their
                    // slots back before the next claim counts the free ones, so claims stay whole
                    // batches instead of splitting into two cohorts of half the slots each. One
                    // yield let a few of them run (6.6 jobs a claim of 10 slots); a few more while
                    // slots are still out let the rest (9.9), and cost nothing once they are back.
                    for _ in 0..YIELDS_AFTER_A_CLAIM {
                        if self.slots.available_permits() >= self.config.runner.slots {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "claiming jobs failed; retrying at the next poll");
                    return;
                }
            }
        }
    }

    /// Runs one claimed attempt in its own task, holding `permit` until its handler is done.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        tasks: &TaskTracker,
        name: &str,
        job: Job,
        steps: Memo,
        permit: OwnedSemaphorePermit,
        draining: &CancellationToken,
        abort: &CancellationToken,
    ) {
        self.contexts[name].metrics.started.get_or_create(&metrics::JobType::of(name)).inc();
        let cancel = CancellationToken::new();
        self.running.insert(job.id, cancel.clone());
        let signals = Signals { cancel, draining: draining.clone(), abort: abort.clone() };
        let (ctx, running) = (self.contexts[name].clone(), self.running.clone());
        let slot = Slot::new(permit, self.ending.clone(), self.freed.clone());
        tasks.spawn(async move {
            let id = job.id;
            attempt::run(ctx, job, steps, signals, slot).await;
            running.remove(&id);
        });
    }

    /// Up to `max` runnable jobs of `job_type`, claimed in one statement
    /// that also returns the steps earlier attempts finished, on the claims'
    /// own session (`KeptSession`).
    async fn claim(&mut self, job_type: &str, max: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        let args = (job_type, self.worker.as_str(), self.config.runner.lease.as_secs_f64(), max as i32);
        self.claims
            .run(&args, |conn, (job_type, worker, lease, max)| {
                Box::pin(sqlx::query_as(&CLAIM).bind(*job_type).bind(*worker).bind(*lease).bind(*max).fetch_all(conn))
            })
            .await
    }

    async fn drain(&self, tasks: TaskTracker, draining: CancellationToken, abort: CancellationToken) {
        tasks.close();
        info!(running = self.running.len(), "job runner draining: running steps may finish");
        draining.cancel();
        if tokio::time::timeout(self.config.runner.shutdown_grace, tasks.wait()).await.is_err() {
            warn!("shutdown grace period over: interrupting the remaining steps");
            abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        }
        info!("job runner stopped");
    }
}

/// A claimed job and the steps its earlier attempts stored, in the order they were stored.
#[derive(sqlx::FromRow)]
struct Claimed {
    #[sqlx(flatten)]
    job: Job,
    steps: sqlx::types::Json<Vec<(String, Value)>>,
}

/// The claim and the claimed jobs' stored steps in one round trip. The steps
/// are read under the statement's snapshot, taken before the claim: a step
/// could only be missing if an expired attempt stored it in the
/// microseconds between that snapshot and the claim, and it is then run
/// again, which steps allow (at least once).
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select {COLUMNS}, coalesce((select jsonb_agg(jsonb_build_array(s.step_id, s.output) order by s.seq, s.created_at)
                 from rowcast.job_steps s where s.job_id = c.id), '[]') as steps
         from rowcast.claim_batch($1, $2, $3, $4) c"
    )
});

/// The next notification; `None` (and the listener dropped) when its connection failed.
async fn next_note(listener: &mut Option<PgListener>) -> Option<sqlx::postgres::PgNotification> {
    let Some(l) = listener.as_mut() else {
        return std::future::pending().await;
    };
    match l.try_recv().await {
        Ok(Some(note)) => Some(note),
        _ => {
            *listener = None;
            None
        }
    }
}
