//! The process's Prometheus metrics: one registry per app, typed families, OpenMetrics text.
//!
//! Owns every metric's name, help text and label set. Counters and
//! histograms are bumped where things happen (an atomic add each); gauges
//! that describe state held elsewhere (open sockets, channels, presence
//! members, the change log, the job queue) are set by `http` just before it
//! renders a scrape. One `Metrics` per `App`, so two apps in one process (the
//! tests) count apart. Counters count what this process did: with several
//! processes, sum them.
//!
//! Label values are small closed sets (outcomes, sources, reasons, job
//! types from the config, route templates), never user data.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A join's outcome: `ok` or the refusal's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Where a broadcast came from: `socket`, `rest` or `sql`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    pub source: &'static str,
}

/// Why a socket was closed as a slow consumer: `queue_full` or `no_write_progress`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// What a delivery carried: `postgres_changes` or `broadcast`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

/// A job type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobType {
    pub r#type: String,
}

impl JobType {
    pub fn of(name: &str) -> Self {
        JobType { r#type: name.to_owned() }
    }
}

/// A job type and how it got stuck: `expired` (past its pending or running limit) or `rescued` (its runner's lease lapsed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stuck {
    pub r#type: String,
    pub how: &'static str,
}

/// An HTTP request's route template and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub route: String,
    pub status: u16,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The realtime side.
#[derive(Clone)]
pub struct Realtime {
    pub sockets: Gauge,
    pub channels: Gauge,
    pub presence_members: Gauge,
    pub joins: Family<Outcome, Counter>,
    pub deliveries: Family<Kind, Counter>,
    /// From a change's capture (`changed_at`) to its frames being queued.
    pub change_latency: Histogram,
    pub dropped_frames: Counter,
    /// Log reads made for channels resuming after a handoff (shared by the joins waiting for each).
    pub handoff_log_reads: Counter,
    pub slow_consumer_closes: Family<Reason, Counter>,
    pub broadcasts: Family<Source, Counter>,
    pub log_lag_ids: Gauge,
    pub log_lag_seconds: FloatGauge,
    pub log_rows: Gauge,
    pub log_bytes: Gauge,
}

/// The job runner's side, by type.
#[derive(Clone)]
pub struct Jobs {
    pub created: Family<JobType, Counter>,
    pub started: Family<JobType, Counter>,
    pub completed: Family<JobType, Counter>,
    pub failed: Family<JobType, Counter>,
    pub retried: Family<JobType, Counter>,
    pub cancelled: Family<JobType, Counter>,
    pub stuck: Family<Stuck, Counter>,
    pub pending: Family<JobType, Gauge>,
    pub oldest_pending_seconds: Family<JobType, FloatGauge>,
    /// One attempt, from its claim to its end.
    pub run_seconds: Family<JobType, Histogram, fn() -> Histogram>,
}

/// Every metric of one app, and the registry that renders them.
#[derive(Clone)]
pub struct Metrics {
    pub realtime: Realtime,
    pub jobs: Jobs,
    pub http: Family<Request, Counter>,
    registry: Arc<Registry>,
}

/// 1 ms to about 33 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 10 ms to about 45 min, quadrupling.
fn run_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set, registered under `rowcast_`.
    pub fn new() -> Metrics {
        let realtime = Realtime {
            sockets: Gauge::default(),
            channels: Gauge::default(),
            presence_members: Gauge::default(),
            joins: Family::default(),
            deliveries: Family::default(),
            change_latency: latency_buckets(),
            dropped_frames: Counter::default(),
            handoff_log_reads: Counter::default(),
            slow_consumer_closes: Family::default(),
            broadcasts: Family::default(),
            log_lag_ids: Gauge::default(),
            log_lag_seconds: FloatGauge::default(),
            log_rows: Gauge::default(),
            log_bytes: Gauge::default(),
        };
        let jobs = Jobs {
            created: Family::default(),
            started: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            cancelled: Family::default(),
            stuck: Family::default(),
            pending: Family::default(),
            oldest_pending_seconds: Family::default(),
            run_seconds: Family::new_with_constructor(run_buckets),
        };
        let http = Family::<Request, Counter>::default();
        let mut r = Registry::with_prefix("rowcast");
        let rt = &realtime;
        r.register("sockets", "Open WebSockets", rt.sockets.clone());
        r.register("channels", "Joined channels", rt.channels.clone());
        r.register("presence_members", "Tracked presence members", rt.presence_members.clone());
        r.register("joins", "Channel joins by outcome (ok or the refusal)", rt.joins.clone());
        r.register("deliveries", "Frames queued to sockets by the fan-out", rt.deliveries.clone());
        r.register("change_delivery_seconds", "From a change's capture to its frames being queued", rt.change_latency.clone());
        r.register("outgoing_dropped_frames", "Frames dropped with a slow consumer's queue", rt.dropped_frames.clone());
        r.register("handoff_log_reads", "Log reads for channels resuming after a handoff", rt.handoff_log_reads.clone());
        r.register("slow_consumer_closes", "Sockets closed 1013 as slow consumers", rt.slow_consumer_closes.clone());
        r.register("broadcasts", "Broadcasts received, by source", rt.broadcasts.clone());
        r.register("change_log_lag_ids", "Committed changes this gateway has not delivered yet", rt.log_lag_ids.clone());
        r.register("change_log_lag_seconds", "Age of the oldest change this gateway has not delivered", rt.log_lag_seconds.clone());
        r.register("change_log_rows", "Rows in the change log (the planner's estimate)", rt.log_rows.clone());
        r.register("change_log_bytes", "Size of the change log with its indexes", rt.log_bytes.clone());
        let j = &jobs;
        r.register("jobs_created", "Jobs enqueued through the API", j.created.clone());
        r.register("jobs_started", "Attempts claimed by this process's runner", j.started.clone());
        r.register("jobs_completed", "Jobs completed", j.completed.clone());
        r.register("jobs_failed", "Jobs failed for good", j.failed.clone());
        r.register("jobs_retried", "Attempts that ended in a retry", j.retried.clone());
        r.register("jobs_cancelled", "Jobs cancelled through the API", j.cancelled.clone());
        r.register("jobs_stuck", "Jobs expired or rescued by the scheduler", j.stuck.clone());
        r.register("jobs_pending", "Jobs waiting to run", j.pending.clone());
        r.register("jobs_oldest_pending_seconds", "Age of the oldest job due and waiting", j.oldest_pending_seconds.clone());
        r.register("job_run_seconds", "One attempt, from its claim to its end", j.run_seconds.clone());
        r.register("http_requests", "HTTP requests by route and status", http.clone());
        Metrics { realtime, jobs, http, registry: Arc::new(r) }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels_and_the_prefix() {
        let m = Metrics::new();
        m.realtime.joins.get_or_create(&Outcome { outcome: "ok" }).inc_by(3);
        m.jobs.completed.get_or_create(&JobType::of("summarize")).inc();
        m.http.get_or_create(&Request { route: "/health".into(), status: 200 }).inc();
        let text = m.render();
        assert!(text.contains("rowcast_joins_total{outcome=\"ok\"} 3\n"), "{text}");
        assert!(text.contains("rowcast_jobs_completed_total{type=\"summarize\"} 1\n"), "{text}");
        assert!(text.contains("rowcast_http_requests_total{route=\"/health\",status=\"200\"} 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histograms_render_buckets_sum_and_count() {
        let m = Metrics::new();
        m.jobs.run_seconds.get_or_create(&JobType::of("t")).observe(0.5);
        let text = m.render();
        assert!(text.contains("rowcast_job_run_seconds_count{type=\"t\"} 1\n"), "{text}");
        assert!(text.contains("rowcast_job_run_seconds_bucket{le=\"+Inf\",type=\"t\"} 1\n"), "{text}");
    }
}
