//! The bundled job runner: durable steps, retries, leases, per-user limits.
//!
//! Job rows live in `rowcast.jobs`, a change-captured table like any other,
//! so progress reaches browsers through the same path as every row change
//! (this module never imports `realtime`).
//!
//! - `config`: TOML job types, cron entries, runner settings (pure).
//! - `model`: the job row.
//! - `steps`: the HTTP step protocol, the demo handler, backoff (no database).
//! - `api`: enqueue/get/list/cancel/retry SQL; `handlers`: its REST routes;
//!   `admin`: the runs dashboard's routes (service role only).
//! - `attempt`: running one claimed attempt; `runner`: claiming;
//!   `batch`: group commits of step stores and completions; `session`: the
//!   database session each of those serial tasks keeps.
//! - `scheduler`: rescue, expiry, cron, retention; `hooks`: on_failure.
//! - `alert_rules`: thresholds and crossings (pure); `alerts`: the figures
//!   and the watcher that posts crossings to the webhook.
//! - `inngest`: the Inngest SDK protocol: apps syncing, events, and runs of
//!   their functions as jobs of this runner.

pub mod admin;
pub mod alert_rules;
pub mod alerts;
pub mod api;
pub mod attempt;
pub mod batch;
pub mod config;
pub mod handlers;
pub mod hooks;
pub mod inngest;
pub mod model;
pub mod runner;
pub mod scheduler;
pub mod session;
pub mod steps;
