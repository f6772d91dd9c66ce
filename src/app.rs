//! The composition root: pool, migrations, subsystems, ordered shutdown.
//!
//! `App::build` connects, migrates and binds (port 0 works, see
//! `local_addr`); `App::run` serves until the shutdown future resolves, then
//! stops in order: stop accepting, close sockets with `phx_close`, stop the
//! change listener, close the pool. `main` and every test use this same path.
//! Also home of the small admin commands (migrate, enable, disable).

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::auth::Verifier;
use crate::changes::listener::{Listener, ListenerConfig};
use crate::changes::tables::Tables;
use crate::config::{Limits, Secret};
use crate::http::{self, AppState};
use crate::realtime::registry::Registry;
use crate::realtime::socket::SocketContext;

pub mod demo;

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What `App::build` needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub database_url: String,
    pub listen: SocketAddr,
    pub jwt_secret: Secret,
    pub limits: Limits,
}

/// A built, bound, not yet running app.
pub struct App {
    listener: TcpListener,
    state: AppState,
    pool: PgPool,
    change_listener: Listener,
    root: CancellationToken,
}

impl App {
    /// Connects, migrates, binds the port and wires the subsystems.
    pub async fn build(config: AppConfig) -> anyhow::Result<App> {
        let pool = connect(&config.database_url).await?;
        migrate(&pool).await?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let root = CancellationToken::new();
        let (live_tx, live_rx) = watch::channel(false);
        let tables = Tables::default();
        let registry = Registry::new(config.limits.max_record_bytes);
        let listener_config = ListenerConfig {
            poll: Duration::from_millis(config.limits.poll_ms.max(1)),
            retention: Duration::from_secs(config.limits.change_retention_secs),
            batch: 500,
        };
        let change_listener = Listener::new(pool.clone(), tables.clone(), Arc::new(registry.clone()), live_tx, listener_config);
        let sockets = SocketContext {
            pool: pool.clone(),
            registry,
            tables,
            verifier: Verifier::new(config.jwt_secret.expose()),
            limits: Arc::new(config.limits),
            live: live_rx,
            shutdown: root.child_token(),
        };
        let state = AppState { pool: pool.clone(), sockets };
        Ok(App { listener, state, pool, change_listener, root })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App { listener, state, pool, change_listener, root } = self;
        let tracker = TaskTracker::new();
        let listener_cancel = root.child_token();
        let sockets_cancel = state.sockets.shutdown.clone();
        let listener_task = tracker.spawn(change_listener.run(listener_cancel.clone()));
        let http_cancel = root.child_token();
        let server = axum::serve(listener, http::router(state)).with_graceful_shutdown({
            let http_cancel = http_cancel.clone();
            async move { http_cancel.cancelled().await }
        });
        let server = tracker.spawn(server.into_future());
        tracker.close();
        shutdown.await;
        info!("shutting down: closing sockets");
        sockets_cancel.cancel();
        http_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        listener_cancel.cancel();
        let _ = listener_task.await;
        root.cancel();
        pool.close().await;
        info!("stopped");
        Ok(())
    }
}

/// A pool for `url`.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to the database (is DATABASE_URL right?)")
}

/// Applies the embedded migrations; safe to repeat.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// `rowcast enable`: installs change capture on `table`.
pub async fn enable(pool: &PgPool, table: &str, owner: Option<&str>, public: bool) -> anyhow::Result<()> {
    sqlx::query("select rowcast.enable($1::regclass, owner_column => $2, public => $3)")
        .bind(table)
        .bind(owner)
        .bind(public)
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
