//! Events -> runs: the dispatcher takes stored events that have not been
//! dispatched, and starts a run of every synced function one of whose
//! triggers matches (the event name, or a `prefix/*` pattern, and the
//! trigger's `if` expression). Each batch is one transaction: the runs are
//! inserted and the events marked dispatched together, with SKIP LOCKED so
//! any number of runners share the work and an event starts its runs once.
//!
//! A run's owner comes from the event (`--inngest-user-key`); its priority
//! from the function's `priority.run` expression (-600..600, higher first).
//! A function's `rateLimit` skips runs beyond `limit` per `period` per key.
//! Rings after commit: `rowcast_events` wakes it, a 1 s poll catches a lost
//! ring and starts due cron ticks (`cron`).

use std::time::Duration;

use serde_json::{json, Map, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::admit;
use super::call::run_input;
use super::cron;
use super::expr::{self, Expr};
use super::functions;
use super::InngestSettings;

/// Events taken per transaction.
const BATCH: i64 = 100;
/// Poll when no ring comes.
const POLL: Duration = Duration::from_secs(1);

/// One trigger of a function.
#[derive(Debug)]
struct Trigger {
    event: String,
    condition: Option<Expr>,
}

/// A function's `rateLimit`: at most `limit` runs per `period` per key.
#[derive(Debug)]
struct Rate {
    limit: i64,
    period: Duration,
    key: Option<Expr>,
}

/// A function as the dispatcher matches it.
#[derive(Debug)]
struct Target {
    id: String,
    triggers: Vec<Trigger>,
    priority: Option<Expr>,
    rate: Option<Rate>,
}

impl Target {
    fn read(id: String, triggers: &Value, config: &Value) -> Target {
        let parse = |text: Option<&str>, what: &str| {
            text.map(|t| {
                Expr::parse(t).unwrap_or_else(|e| {
                    warn!(function = %id, error = %e, "an Inngest function's {what} expression is not understood; it never matches");
                    Expr::parse("false").expect("false parses")
                })
            })
        };
        let triggers = triggers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let event = t.get("event").and_then(Value::as_str)?.to_owned();
                Some(Trigger { event, condition: parse(t.get("expression").and_then(Value::as_str), "trigger") })
            })
            .collect();
        let priority = parse(config.pointer("/priority/run").and_then(Value::as_str), "priority");
        let rate = config.get("rateLimit").and_then(|r| {
            let limit = r.get("limit").and_then(Value::as_i64).filter(|n| *n > 0)?;
            let period = r.get("period").and_then(Value::as_str).and_then(functions::period)?;
            Some(Rate { limit, period, key: parse(r.get("key").and_then(Value::as_str), "rateLimit key") })
        });
        Target { id, triggers, priority, rate }
    }

    /// The rate-limit key of a run of `event`, when the function is rate limited.
    fn rate_key(&self, names: &Map<String, Value>) -> Option<String> {
        let rate = self.rate.as_ref()?;
        Some(rate.key.as_ref().map_or_else(String::new, |k| k.key(names)))
    }

    /// Whether `event` (named `name`) starts a run of this function.
    fn matches(&self, name: &str, names: &Map<String, Value>) -> bool {
        self.triggers.iter().any(|t| name_matches(&t.event, name) && t.condition.as_ref().is_none_or(|c| c.holds(names)))
    }

    fn priority(&self, names: &Map<String, Value>) -> i32 {
        let p = self.priority.as_ref().and_then(|p| p.eval(names).ok()).and_then(|v| v.as_f64()).unwrap_or(0.0);
        p.clamp(-600.0, 600.0) as i32
    }
}

/// A trigger's event name against an event's: equal, or a `*` suffix as a prefix.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A stored event, as functions receive it.
#[derive(sqlx::FromRow)]
struct Stored {
    id: Uuid,
    name: String,
    data: Value,
    user: Value,
    ts: i64,
    v: Option<String>,
}

impl Stored {
    fn event(&self) -> Value {
        let mut e = json!({"id": self.id, "name": self.name, "data": self.data, "user": self.user, "ts": self.ts});
        if let Some(v) = &self.v {
            e["v"] = Value::from(v.clone());
        }
        e
    }
}

/// Dispatches until `stop`.
pub async fn run(pool: PgPool, settings: InngestSettings, stop: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    let mut ticks = cron::Ticks::default();
    loop {
        if let Err(e) = cron::fire(&pool, &mut ticks).await {
            warn!(error = %e, "starting Inngest cron ticks failed; retrying at the next poll");
        }
        loop {
            match dispatch(&pool, &settings).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "dispatching Inngest events failed; retrying at the next poll");
                    break;
                }
            }
        }
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        tokio::select! {
            // Shutdown.
            _ = stop.cancelled() => return,
            // A lost ring, or a dropped listener.
            _ = tokio::time::sleep(POLL) => {}
            // New events.
            ok = rung(&mut listener) => if !ok { listener = None },
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen("rowcast_events").await.ok()?;
    Some(listener)
}

/// Waits for a ring; false when the listener's connection failed.
async fn rung(listener: &mut Option<PgListener>) -> bool {
    match listener.as_mut() {
        Some(l) => matches!(l.try_recv().await, Ok(Some(_))),
        None => std::future::pending().await,
    }
}

/// One batch of undispatched events: starts the runs they trigger (runs an
/// owner has no room for are skipped and logged); how many events it took.
async fn dispatch(pool: &PgPool, settings: &InngestSettings) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let events: Vec<Stored> = sqlx::query_as(
        "select id, name, data, \"user\", ts, v from rowcast.inngest_events where dispatched_at is null
         order by received_at, id limit $1 for update skip locked",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if events.is_empty() {
        return Ok(0);
    }
    match start_runs(&mut tx, settings, &events, Full::Skip).await {
        Ok(()) | Err(DispatchError::Full { .. }) => {}
        Err(DispatchError::Db(e)) => return Err(e),
    }
    tx.commit().await?;
    Ok(events.len())
}

/// Starts the runs of the just-stored events `ids` in the sender's
/// transaction (`POST /e/<key>`): when an owner has no room for one, nothing
/// is started or stored and the sender hears why (429).
pub async fn dispatch_now(tx: &mut sqlx::PgConnection, settings: &InngestSettings, ids: &[Uuid]) -> Result<(), DispatchError> {
    let events: Vec<Stored> = sqlx::query_as(
        "select id, name, data, \"user\", ts, v from rowcast.inngest_events where id = any($1) and dispatched_at is null
         order by received_at, id for update",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    start_runs(tx, settings, &events, Full::Refuse).await
}

/// What to do with a run whose owner is at `max_active_per_user`.
#[derive(Clone, Copy, PartialEq)]
enum Full {
    Skip,
    Refuse,
}

/// Why events started no runs.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("too many active {function} runs: at most {limit} may be pending or running per user")]
    Full { function: String, limit: i32 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Starts the runs `events` trigger and marks them dispatched.
async fn start_runs(tx: &mut sqlx::PgConnection, settings: &InngestSettings, events: &[Stored], full: Full) -> Result<(), DispatchError> {
    let rows: Vec<(String, Value, Value, Option<i32>)> = sqlx::query_as(
        "select f.id, f.triggers, f.config, t.max_active_per_user
         from rowcast.inngest_functions f left join rowcast.job_types t on t.type = f.id order by f.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let targets: Vec<(Target, Option<i32>)> =
        rows.into_iter().map(|(id, triggers, config, cap)| (Target::read(id, &triggers, &config), cap)).collect();
    let (mut runs, mut windows, mut active) = (Runs::default(), admit::Windows::default(), admit::Active::default());
    for stored in events {
        let event = stored.event();
        let names = expr::about(event.clone());
        let owner = settings.owner(&names);
        for (t, cap) in targets.iter().filter(|(t, _)| t.matches(&stored.name, &names)) {
            if let (Some(limit), Some(user)) = (cap, &owner) {
                if !active.admit(&mut *tx, &t.id, user, *limit).await? {
                    if full == Full::Refuse {
                        return Err(DispatchError::Full { function: t.id.clone(), limit: *limit });
                    }
                    warn!(function = %t.id, limit, "an event's run was not started: its owner has the most active runs allowed");
                    continue;
                }
            }
            if let (Some(rate), Some(key)) = (&t.rate, t.rate_key(&names)) {
                if !windows.admit(&mut *tx, &t.id, key, rate.limit, rate.period).await? {
                    continue;
                }
            }
            runs.push(&t.id, owner.clone(), run_input(event.clone()), t.priority(&names));
        }
    }
    windows.record(&mut *tx).await?;
    let started = runs.insert(&mut *tx).await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    sqlx::query("update rowcast.inngest_events set dispatched_at = now() where id = any($1)").bind(&ids).execute(&mut *tx).await?;
    if started > 0 {
        info!(events = events.len(), runs = started, "Inngest events started runs");
    }
    Ok(())
}

/// Runs to start, column by column: one batch's, or one cron tick's.
#[derive(Default)]
pub(super) struct Runs {
    types: Vec<String>,
    owners: Vec<Option<String>>,
    inputs: Vec<Value>,
    priorities: Vec<i32>,
}

impl Runs {
    pub(super) fn push(&mut self, function: &str, owner: Option<String>, input: Value, priority: i32) {
        self.types.push(function.to_owned());
        self.owners.push(owner);
        self.inputs.push(input);
        self.priorities.push(priority);
    }

    /// Inserts the runs as pending jobs (attempts as the function's type
    /// says) and rings the runners once per function.
    pub(super) async fn insert(&self, tx: &mut sqlx::PgConnection) -> Result<u64, sqlx::Error> {
        if self.types.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "with input as (select * from unnest($1::text[], $2::text[], $3::jsonb[], $4::int[]) as i(type, user_id, input, priority)),
                  started as (
                    insert into rowcast.jobs (type, user_id, input, priority, max_attempts)
                    select i.type, i.user_id, i.input, i.priority, coalesce(t.max_attempts, 5)
                    from input i left join rowcast.job_types t on t.type = i.type
                    returning type)
             select pg_notify('rowcast_jobs', type) from (select distinct type from started) s",
        )
        .bind(&self.types)
        .bind(&self.owners)
        .bind(&self.inputs)
        .bind(&self.priorities)
        .execute(&mut *tx)
        .await?;
        Ok(self.types.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_runs_for_its_event_name_a_prefix_pattern_and_only_when_its_if_holds() {
        let t = Target::read(
            "app-f".into(),
            &json!([{"event": "video/summarize.requested", "expression": "event.data.plan == 'pro'"}, {"event": "audio/*"}]),
            &json!({"priority": {"run": "event.data.vip ? 100 : 0"}}),
        );
        let pro = expr::about(json!({"name": "video/summarize.requested", "data": {"plan": "pro", "vip": true}}));
        assert!(t.matches("video/summarize.requested", &pro));
        assert_eq!(t.priority(&pro), 100);
        assert!(!t.matches("video/summarize.requested", &expr::about(json!({"data": {"plan": "free"}}))));
        assert!(t.matches("audio/uploaded", &expr::about(json!({"data": {}}))));
        assert!(!t.matches("video/other", &pro));
    }

    #[test]
    fn an_expression_rowcast_cannot_read_never_matches() {
        let t = Target::read("app-f".into(), &json!([{"event": "a/b", "expression": "event.data.x =~ 1"}]), &json!({}));
        assert!(!t.matches("a/b", &expr::about(json!({"data": {"x": 1}}))));
    }
}
