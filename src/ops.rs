//! Operators' endpoints: `/metrics` (Prometheus) and `/ready` (load balancers).
//!
//! Owns what a scrape reads from the database (the change log's lag and
//! size, the job queue by type) and the readiness rule: `/ready` answers 503
//! while the process drains, while the change listener is disconnected, and
//! while the oldest committed change it has not delivered is older than
//! `max_lag`. `/health` (in `http`) stays liveness: it says nothing about lag.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics, CONTENT_TYPE};
use crate::realtime::admission::Admission;
use crate::realtime::registry::Registry;

/// Longest a scrape or readiness query may take before it counts as a failure.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the operators' endpoints read.
#[derive(Clone)]
pub struct Ops {
    pub pool: PgPool,
    pub metrics: Metrics,
    pub registry: Registry,
    pub admission: Admission,
    /// True while the change listener is connected.
    pub live: watch::Receiver<bool>,
    /// What the listener has delivered (`Listener::position`).
    pub position: Arc<std::sync::RwLock<crate::changes::window::Position>>,
    /// Held, the listener delivers nothing (`Listener::passing`).
    pub passing: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled when the process starts to drain.
    pub draining: CancellationToken,
    /// `/ready` fails past this lag.
    pub max_lag: Duration,
}

/// The oldest committed change not yet delivered: how many and how old.
const LAG: &str = "select count(*), coalesce(extract(epoch from now() - min(changed_at))::float8, 0)
     from rowcast.changes where id > $1";
/// The log's size: the planner's row estimate and its bytes with indexes.
const LOG_SIZE: &str = "select greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
     from pg_class c where c.oid = 'rowcast.changes'::regclass";
/// Pending jobs by type: how many, and how long the oldest due one has waited.
const QUEUE: &str = "select type, count(*), coalesce(extract(epoch from now() - min(run_at) filter (where run_at <= now()))::float8, 0)
     from rowcast.jobs where status = 'pending' group by type";

/// `query`'s answer within `QUERY_TIMEOUT`, or why not (`what` names the read).
async fn within<T>(what: &str, query: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_) => Err(format!("{what} took over {} s", QUERY_TIMEOUT.as_secs())),
    }
}

impl Ops {
    /// Committed changes not yet delivered, and the age in seconds of the oldest.
    async fn lag(&self) -> Result<(i64, f64), String> {
        let through = self.position.read().expect("position lock poisoned").high_water;
        within("reading the change log", sqlx::query_as::<_, (i64, f64)>(LAG).bind(through).fetch_one(&self.pool)).await
    }

    /// Why this process should get no new clients, if it should not.
    async fn not_ready(&self) -> Option<String> {
        if self.draining.is_cancelled() {
            return Some("draining".into());
        }
        if !*self.live.borrow() {
            return Some("the change listener is not connected".into());
        }
        match self.lag().await {
            Ok((_, secs)) if secs > self.max_lag.as_secs_f64() => {
                Some(format!("the change listener is {secs:.1} s behind (limit {} s)", self.max_lag.as_secs_f64()))
            }
            Ok(_) => None,
            Err(e) => Some(e),
        }
    }

    /// Sets the gauges a scrape reads from elsewhere. A database read that
    /// fails leaves its gauges as they were (the scrape still answers).
    async fn refresh_gauges(&self) {
        let rt = &self.metrics.realtime;
        rt.sockets.set(self.admission.open() as i64);
        rt.channels.set(self.registry.len() as i64);
        rt.presence_members.set(self.registry.presence_members() as i64);
        if let Ok((ids, secs)) = self.lag().await {
            rt.log_lag_ids.set(ids);
            rt.log_lag_seconds.set(secs);
        }
        if let Ok((rows, bytes)) = within("sizing the change log", sqlx::query_as::<_, (i64, i64)>(LOG_SIZE).fetch_one(&self.pool)).await {
            rt.log_rows.set(rows);
            rt.log_bytes.set(bytes);
        }
        if let Ok(rows) = within("reading the job queue", sqlx::query_as::<_, (String, i64, f64)>(QUEUE).fetch_all(&self.pool)).await {
            let jobs = &self.metrics.jobs;
            // A type with nothing pending is absent from the rows: reset every known type first.
            jobs.pending.clear();
            jobs.oldest_pending_seconds.clear();
            for (job_type, count, oldest) in rows {
                let label = metrics::JobType::of(&job_type);
                jobs.pending.get_or_create(&label).set(count);
                jobs.oldest_pending_seconds.get_or_create(&label).set(oldest);
            }
        }
    }
}

/// `GET /metrics`: every metric, as OpenMetrics text.
pub async fn metrics(State(ops): State<Ops>) -> Response {
    ops.refresh_gauges().await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], ops.metrics.render()).into_response()
}

/// `GET /ready`: 200 `{"status":"ready"}`, or 503 with the reason.
pub async fn ready(State(ops): State<Ops>) -> Response {
    match ops.not_ready().await {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reason": reason}))).into_response(),
    }
}
