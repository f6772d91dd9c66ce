//! The composition root: pool, migrations, subsystems, ordered shutdown.
//!
//! `App::build` connects, migrates, binds (port 0 works, see `local_addr`)
//! and wires the gateway (HTTP, realtime, change listener) and the job
//! runner, either of which may be switched off. `App::run` serves until the
//! shutdown future resolves, then stops in order: drain (`/ready` fails and
//! new sockets are refused, for `drain_delay_secs`), write the handoff note
//! of the open channels (`realtime::handoff`), close sockets with the
//! contract's "Server requested disconnect" and a close frame, so clients
//! reconnect and rejoin elsewhere (waiting for them, bounded by the write
//! timeout), stop HTTP, let running job steps finish within the grace period,
//! let `on_failure` hooks in flight finish, stop the change listener, close
//! the pool. Every task hangs off one root `CancellationToken`. `main` and
//! every test use this same path. Also home of the small admin commands.

pub mod demo;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::{ClaimPath, Minter};
use crate::changes::listener::{Listener, ListenerConfig};
use crate::changes::tables::Tables;
use crate::changes::watch::Watches;
use crate::config::{DatabaseUrl, InngestArgs, JwksArgs, Limits, Secret};
use crate::http::{self, AppState};
use crate::jobs::alerts::Watcher;
use crate::jobs::config::JobsConfig;
use crate::jobs::handlers::JobsState;
use crate::jobs::hooks::Hooks;
use crate::jobs::inngest::dispatch as inngest_dispatch;
use crate::jobs::inngest::keys::SigningKey;
use crate::jobs::inngest::sync::{self as inngest_sync, SyncState};
use crate::jobs::inngest::{InngestSettings, UserKey};
use crate::jobs::runner::Runner;
use crate::jobs::scheduler::Scheduler;
use crate::keyring::{KeySource, Keyring};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::realtime::admission::Admission;
use crate::realtime::broadcast_api::BroadcastApi;
use crate::realtime::cluster::Cluster;
use crate::realtime::handoff::Handoffs;
use crate::realtime::policies::PolicyCheck;
use crate::realtime::registry::Registry;
use crate::realtime::socket::SocketContext;
use crate::realtime::topic_rules::TopicRules;
use crate::rest::snapshot::RestState;
use crate::server;

/// Connections in the app's pool: the listener's two, the runner's slots and
/// housekeeping, REST reads.
const POOL_SIZE: u32 = 16;
/// Longest wait for a pooled connection before a request fails.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a step, hook or other outbound HTTP call may take to connect.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Changes the listener reads per query.
const LISTENER_BATCH: i64 = 500;
/// How long delivered changes are kept in memory for channels resuming after a handoff.
const KEEP_RECENT: Duration = Duration::from_secs(10);
/// Longest wait for in-flight plain HTTP requests at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What `App::build` needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub database_url: DatabaseUrl,
    pub listen: SocketAddr,
    /// The HS256 secret; optional when `jwks` names a key set.
    pub jwt_secret: Option<Secret>,
    pub jwks: JwksArgs,
    pub limits: Limits,
    pub jobs: JobsConfig,
    /// Serve HTTP, realtime and the change listener.
    pub gateway: bool,
    /// Run the job runner and its upkeep.
    pub runner: bool,
    /// Offer `/demo/session` (demo tokens) and the web demo. Only `rowcast demo` sets it.
    pub demo: bool,
    /// Where the web demo's files are.
    pub web_dir: PathBuf,
    /// Private-channel rights from the config file; empty: the RLS policies decide.
    pub topic_rules: TopicRules,
    /// Extra CA certificates (PEM) the HTTP client trusts besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How Inngest apps sync with this rowcast.
    pub inngest: InngestSettings,
}

impl AppConfig {
    /// Gateway and runner on `database_url`, default limits, no job types, no demo.
    pub fn new(database_url: impl Into<String>, listen: SocketAddr, jwt_secret: Option<Secret>) -> Self {
        AppConfig {
            database_url: DatabaseUrl::new(database_url),
            listen,
            jwt_secret,
            jwks: JwksArgs::default(),
            limits: Limits::default(),
            jobs: JobsConfig::default(),
            gateway: true,
            runner: true,
            demo: false,
            web_dir: PathBuf::from("web-demo"),
            topic_rules: TopicRules::default(),
            ca_file: None,
            inngest: InngestSettings::default(),
        }
    }
}

struct Gateway {
    listener: TcpListener,
    state: AppState,
    change_listener: Listener,
    cluster: Cluster,
    keyring: Keyring,
    jwks_refresh: Duration,
    /// The HTTP client the `--inngest-app` pinger calls apps with.
    client: reqwest::Client,
}

/// The job runner's parts.
struct JobRunner {
    runner: Runner,
    scheduler: Scheduler,
    hooks: Hooks,
    /// For the dispatcher that turns stored Inngest events into runs.
    inngest: InngestSettings,
    watcher: Watcher,
}

/// A built, bound, not yet running app.
pub struct App {
    pool: PgPool,
    /// The root of every task's cancellation.
    root: CancellationToken,
    gateway: Option<Gateway>,
    runner: Option<JobRunner>,
}

impl App {
    /// Connects, migrates, binds the port and wires the subsystems.
    pub async fn build(config: AppConfig) -> anyhow::Result<App> {
        if config.gateway && config.jwt_secret.is_none() && !config.jwks.is_set() {
            anyhow::bail!("no key to verify tokens with: set JWT_SECRET (HS256), ROWCAST_JWKS_URL or ROWCAST_JWKS_FILE");
        }
        let pool = connect(config.database_url.expose()).await?;
        migrate(&pool).await?;
        // Already installed (a second app in one process) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = http_client(config.ca_file.as_deref())?;
        let jobs = Arc::new(config.jobs.clone());
        let metrics = Metrics::new();
        let runner = if config.runner {
            Runner::sync_types(&pool, &jobs.types.values().collect::<Vec<_>>()).await.context("saving job types")?;
            let hooks = Hooks::new(pool.clone(), Arc::new(jobs.types.clone()), jobs.signing_secret.clone(), client.clone());
            let inngest = config.inngest.clone();
            let runner = Runner::new(pool.clone(), jobs.clone(), client.clone(), hooks.clone(), metrics.jobs.clone(), inngest.clone());
            let scheduler = Scheduler::new(pool.clone(), jobs.clone(), hooks.clone(), metrics.jobs.clone());
            let watcher =
                Watcher { pool: pool.clone(), alerts: jobs.alerts.clone(), secret: jobs.signing_secret.clone(), client: client.clone() };
            Some(JobRunner { runner, scheduler, hooks, inngest, watcher })
        } else {
            None
        };
        let root = CancellationToken::new();
        let gateway = if config.gateway { Some(build_gateway(&config, &pool, &jobs, &root, &client, metrics).await?) } else { None };
        Ok(App { pool, root, gateway, runner })
    }

    /// The bound address, when this process serves HTTP (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|g| g.listener.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App { pool, root, gateway, runner } = self;
        let tracker = TaskTracker::new();
        let (http_stop, runner_stop, listener_stop) = (root.child_token(), root.child_token(), root.child_token());
        let mut served = None;
        if let Some(g) = gateway {
            let change_listener = tracker.spawn(g.change_listener.run(listener_stop.clone()));
            // Stopped with the listener, after the sockets' leaves were queued.
            let cluster = tracker.spawn(g.cluster.run(listener_stop.clone()));
            tracker.spawn(g.keyring.refresh_every(g.jwks_refresh, http_stop.clone()));
            // Tables captured only while watched stay captured while this gateway has subscribers for them.
            let registry = g.state.sockets.registry.clone();
            tracker.spawn(g.state.sockets.watches.clone().run(move |s, t| registry.reads_table(s, t), listener_stop.clone()));
            tracker.spawn(inngest_sync::ping_apps(g.state.inngest.settings.clone(), g.client, http_stop.clone()));
            let serve = server::serve(g.listener, http::router(g.state.clone()), http_stop.clone());
            served = Some((tracker.spawn(serve), g.state, (change_listener, cluster)));
        }
        let mut runner_tasks = Vec::new();
        let hooks = runner.as_ref().map(|r| r.hooks.clone());
        if let Some(JobRunner { runner, scheduler, inngest, watcher, .. }) = runner {
            runner_tasks.push(tracker.spawn(watcher.run(runner_stop.clone())));
            runner_tasks.push(tracker.spawn(runner.run(runner_stop.clone())));
            runner_tasks.push(tracker.spawn(scheduler.run(runner_stop.clone())));
            runner_tasks.push(tracker.spawn(inngest_dispatch::run(pool.clone(), inngest, runner_stop.clone())));
        }
        tracker.close();
        shutdown.await;
        let mut change_listener = None;
        if let Some((server, state, listener)) = served {
            // Draining: /ready fails and new sockets are refused, for the load balancer to notice.
            state.ops.draining.cancel();
            let delay = Duration::from_secs(state.sockets.limits.drain_delay_secs);
            if !delay.is_zero() {
                info!(secs = delay.as_secs(), "draining: /ready answers 503 before sockets are closed");
                tokio::time::sleep(delay).await;
            }
            info!("shutting down: closing sockets");
            close_sockets(&state).await;
            http_stop.cancel();
            let _ = tokio::time::timeout(HTTP_DRAIN, server).await;
            change_listener = Some(listener);
        }
        info!("shutting down: letting running job steps finish");
        runner_stop.cancel();
        for task in runner_tasks {
            let _ = task.await;
        }
        if let Some(hooks) = hooks {
            hooks.drain(HOOKS_GRACE).await;
        }
        listener_stop.cancel();
        if let Some((listener, cluster)) = change_listener {
            let _ = listener.await;
            let _ = cluster.await;
        }
        root.cancel();
        pool.close().await;
        info!("stopped");
        Ok(())
    }
}

/// Writes the handoff note of the open channels, then tells every socket to
/// close (`system` "Server requested disconnect" per channel, then a close frame)
/// and waits for them, at most as long as one stalled write may take.
async fn close_sockets(state: &AppState) {
    let sockets = &state.sockets;
    // No change is delivered from here until the sockets are gone: the note's position is
    // read while every channel is still live, after the listener's pass in progress (if
    // any) published what it delivered, so a rejoin replays nothing twice.
    let _paused = state.ops.passing.lock().await;
    let position = state.ops.position.read().expect("position lock poisoned").clone();
    let keys = sockets.registry.handoff_keys();
    match sockets.handoffs.hand_off(&state.pool, &position, &keys).await {
        Ok(0) => {}
        Ok(channels) => info!(channels, from = position.lowest(), "handed off channels"),
        Err(e) => warn!(error = %e, "channels closed without a handoff note; changes until they rejoin are not replayed"),
    }
    sockets.shutdown.cancel();
    state.socket_tasks.close();
    let grace = sockets.limits.write_timeout() + Duration::from_secs(1);
    if tokio::time::timeout(grace, state.socket_tasks.wait()).await.is_err() {
        tracing::warn!(sockets = state.socket_tasks.len(), "sockets still open after the shutdown grace");
    }
}

async fn build_gateway(
    config: &AppConfig,
    pool: &PgPool,
    jobs: &Arc<JobsConfig>,
    root: &CancellationToken,
    client: &reqwest::Client,
    metrics: Metrics,
) -> anyhow::Result<Gateway> {
    raise_open_files_limit();
    return_large_blocks_to_the_os();
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let (live_tx, live_rx) = watch::channel(false);
    let tables = Tables::with_pool(pool.clone());
    let handoff_ttl = Duration::from_secs(config.limits.handoff_ttl_secs);
    // Most rejoins come 1-3 s after the close: those are served from memory, later ones from the log.
    let keep_recent = handoff_ttl.min(KEEP_RECENT);
    let registry = Registry::keeping_recent(config.limits.max_record_bytes, metrics.realtime.clone(), keep_recent);
    let handoffs = Handoffs::new(handoff_ttl, metrics.realtime.handoff_log_reads.clone());
    match handoffs.load_recent(pool).await {
        Ok(0) => {}
        Ok(notes) => info!(notes, "channels handed off lately by a gateway will resume here"),
        Err(e) => warn!(error = %e, "reading recent handoff notes failed; channels handed off before this start do not replay"),
    }
    // Other gateways on this database hear this one's presence and broadcasts through the log.
    let presence_timeout = Duration::from_secs(config.limits.presence_timeout_secs);
    let (cluster, sink) = Cluster::new(pool.clone(), &registry, handoffs.clone(), presence_timeout, live_rx.clone());
    let listener_config = ListenerConfig {
        poll: Duration::from_millis(config.limits.poll_ms.max(1)),
        retention: config.limits.change_retention(),
        message_retention: Duration::from_secs(config.limits.message_retention_secs),
        batch: LISTENER_BATCH,
    };
    let change_listener = Listener::new(pool.clone(), tables.clone(), Arc::new(sink), live_tx, listener_config);
    let watches = Watches::new(pool.clone(), handoff_ttl);
    if let Err(e) = watches.load().await {
        warn!(error = %e, "reading which tables are captured only while watched failed; retrying every quarter minute");
    }
    let keyring = Keyring::load(config.jwt_secret.as_ref().map(Secret::expose), key_source(&config.jwks, client)).await;
    let sockets = SocketContext {
        registry,
        tables,
        keyring: keyring.clone(),
        pool: pool.clone(),
        policies: PolicyCheck::new(pool.clone(), config.topic_rules.clone()),
        limits: Arc::new(config.limits.clone()),
        live: live_rx,
        shutdown: root.child_token(),
        handoffs,
        watches,
    };
    let jobs = JobsState {
        pool: pool.clone(),
        keyring: keyring.clone(),
        types: Arc::new(jobs.types.clone()),
        metrics: metrics.jobs.clone(),
        alerts: jobs.alerts.clone(),
    };
    let rest = RestState { pool: pool.clone(), keyring: keyring.clone(), tables: sockets.tables.clone() };
    let demo = config.jwt_secret.as_ref().filter(|_| config.demo).map(|s| Minter::new(s.expose()));
    let admission = Admission::new(config.limits.max_sockets, config.limits.max_sockets_per_ip);
    let broadcast = BroadcastApi::new(
        sockets.registry.clone(),
        keyring.clone(),
        sockets.policies.clone(),
        config.limits.max_payload_bytes(),
        config.limits.max_broadcasts_per_second,
    );
    let ops = Ops {
        pool: pool.clone(),
        metrics,
        registry: sockets.registry.clone(),
        admission: admission.clone(),
        live: sockets.live.clone(),
        position: change_listener.position(),
        passing: change_listener.passing(),
        draining: CancellationToken::new(),
        max_lag: Duration::from_secs(config.limits.ready_max_lag_secs),
    };
    let state = AppState {
        pool: pool.clone(),
        ops,
        sockets,
        jobs,
        rest,
        admission,
        broadcast,
        socket_tasks: TaskTracker::new(),
        demo,
        web_dir: config.web_dir.clone(),
        inngest: SyncState { pool: pool.clone(), settings: config.inngest.clone() },
    };
    let jwks_refresh = Duration::from_secs(config.jwks.jwks_refresh_secs.max(1));
    Ok(Gateway { listener, state, change_listener, cluster, keyring, jwks_refresh, client: client.clone() })
}

/// Where the JWKS comes from, if anywhere.
fn key_source(jwks: &JwksArgs, client: &reqwest::Client) -> Option<KeySource> {
    let timeout = Duration::from_millis(jwks.jwks_timeout_ms.max(1));
    match (&jwks.jwks_url, &jwks.jwks_file) {
        (Some(url), _) => Some(KeySource::Url { url: url.clone(), client: client.clone(), timeout }),
        (None, Some(path)) => Some(KeySource::File(path.clone())),
        (None, None) => None,
    }
}

/// Makes every allocation of 64 KiB or more its own mapping, given back to the
/// OS when freed. glibc otherwise raises that threshold to the largest block
/// freed so far, so after a burst of big rows (queued frames of 200 KB) the
/// memory stayed in its heap: RSS measured 24 MB instead of 11 MB long after
/// a stalled client was dropped.
fn return_large_blocks_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// Raises this process's soft limit on open files to the hard limit: each
/// socket is a file, and the soft default (often 1,024) is far below what a
/// gateway holds.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::debug!(open_files = limit.rlim_max, "raised the open files limit");
            }
        }
    }
}

/// How long shutdown waits for `on_failure` hooks in flight; they are best
/// effort, so a hook URL that hangs delays a stop by this much at most.
const HOOKS_GRACE: Duration = Duration::from_secs(5);

/// A pool for `url`. Its sessions never JIT-compile: every statement here
/// reads a few rows, and a plan whose estimate crossed `jit_above_cost` (the
/// claim's, once `rowcast.job_steps` had statistics) spent 9-11 ms compiling
/// to run in 0.1 ms, which held a drain at 940 jobs/s instead of 4,000.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a Postgres URL")?.options([("jit", "off")]);
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .context("connecting to the database (is DATABASE_URL right?)")
}

/// The client for step calls, hooks and JWKS: http, or https verified
/// against the system's roots and the certificates in `ca_file`.
fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(HTTP_CONNECT_TIMEOUT);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("the CA file {} is not PEM", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "the CA file {} holds no certificate", path.display());
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().context("building the HTTP client")
}

/// The Inngest settings from the command line, checked.
pub fn inngest_settings(args: &InngestArgs) -> anyhow::Result<InngestSettings> {
    let signing_key = args.inngest_signing_key.as_ref().map(|k| SigningKey::parse(k.expose())).transpose()?;
    if !args.inngest_apps.is_empty() && signing_key.is_none() && !args.inngest_dev {
        anyhow::bail!("--inngest-app needs --inngest-signing-key (the apps' INNGEST_SIGNING_KEY), or --inngest-dev for unsigned apps");
    }
    for url in &args.inngest_apps {
        anyhow::ensure!(crate::jobs::config::is_http(url), "--inngest-app {url:?} must be an http:// or https:// URL");
    }
    let user_key = args.inngest_user_key.as_deref().map(UserKey::parse).transpose().context("--inngest-user-key")?;
    Ok(InngestSettings {
        dev: args.inngest_dev,
        signing_key,
        event_key: args.inngest_event_key.clone(),
        apps: args.inngest_apps.clone(),
        user_key,
        max_active_per_user: args.inngest_max_active_per_user,
    })
}

/// Applies the embedded migrations; safe to repeat.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// `rowcast enable`: installs change capture on `table`.
/// Rows of an owner-column table are seen by the users whose `claim` names the owner.
pub async fn enable(pool: &PgPool, table: &str, owner: Option<&str>, claim: &str, public: bool) -> anyhow::Result<()> {
    let claim = ClaimPath::parse(claim).with_context(|| format!("--claim {claim:?}"))?;
    sqlx::query("select rowcast.enable($1::regclass, owner_column => $2, public => $3, owner_claim => $4)")
        .bind(table)
        .bind(owner)
        .bind(public)
        .bind(claim.as_str())
        .execute(pool)
        .await
        .with_context(|| format!("enabling change capture on {table}"))?;
    Ok(())
}

/// `rowcast disable`: removes change capture from `table`.
pub async fn disable(pool: &PgPool, table: &str) -> anyhow::Result<()> {
    sqlx::query("select rowcast.disable($1::regclass)")
        .bind(table)
        .execute(pool)
        .await
        .with_context(|| format!("disabling change capture on {table}"))?;
    Ok(())
}

/// The `[[realtime.topics]]` rules of the config file at `path` (none without a file).
pub fn topic_rules(path: Option<&str>) -> anyhow::Result<TopicRules> {
    let Some(path) = path else { return Ok(TopicRules::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    TopicRules::parse(&text).with_context(|| format!("in {path}"))
}

/// Loads the job config `--config` names, plus the demo type if asked.
pub fn jobs_config(path: Option<&str>, demo_jobs: bool) -> anyhow::Result<JobsConfig> {
    Ok(match path {
        Some(p) => JobsConfig::load(p, demo_jobs)?,
        None if demo_jobs => JobsConfig::default().with_demo_type(),
        None => JobsConfig::default(),
    })
}
