//! Test harness: a throwaway Postgres per test process (the same launcher as
//! `rowcast demo`), a fresh database per test cloned from a migrated
//! template, the app on port 0, and waits that poll with a timeout. Every wait
//! has a timeout; nothing sleeps to make a test pass.
//!
//! - `ws`: a raw Phoenix WebSocket client.
//! - `runners`: extra job runners, in this process or as OS processes.

mod runners;
mod ws;

pub use runners::{GatewayProcess, RunnerApp, RunnerProcess};
pub use ws::{Client, Ended, Frame};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rowcast::app::{App, AppConfig};
use rowcast::auth::Minter;
use rowcast::config::{Limits, Secret};
use rowcast::jobs::config::JobsConfig;
use rowcast::pg_local::{Durability, LocalPostgres};
use serde_json::Value;
use sqlx::{Connection, PgPool};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex, OnceCell};
use tokio::task::JoinHandle;

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const WAIT: Duration = Duration::from_secs(10);

static CLUSTER: OnceCell<LocalPostgres> = OnceCell::const_new();
static TEMPLATE: OnceCell<()> = OnceCell::const_new();
static CREATE_LOCK: Mutex<()> = Mutex::const_new(());
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The process-wide throwaway cluster.
pub async fn cluster() -> &'static LocalPostgres {
    CLUSTER
        .get_or_init(|| async {
            LocalPostgres::start(Durability::Fast).await.unwrap_or_else(|e| panic!("could not start the test Postgres: {e}"))
        })
        .await
}

async fn admin(pg: &LocalPostgres, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&pg.url("postgres")).await.expect("admin connection");
    sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.ok();
}

/// A new database with the migrations applied; returns its URL.
pub async fn fresh_database() -> String {
    let pg = cluster().await;
    TEMPLATE
        .get_or_init(|| async {
            admin(pg, "create database rowcast_template").await;
            let pool = PgPool::connect(&pg.url("rowcast_template")).await.expect("template pool");
            rowcast::app::migrate(&pool).await.expect("migrating the template");
            pool.close().await;
        })
        .await;
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let _guard = CREATE_LOCK.lock().await;
    admin(pg, &format!("create database {name} template rowcast_template")).await;
    pg.url(&name)
}

/// A running app on its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db_url: String,
    pub pool: PgPool,
    pub minter: Minter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Spawns the app with default limits.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Limits { poll_ms: 200, ..Limits::default() }).await
}

/// Spawns the app with `limits`.
pub async fn spawn_app_with(limits: Limits) -> TestApp {
    let db_url = fresh_database().await;
    spawn_on(&db_url, limits, "", true).await
}

/// Spawns gateway and runner on a fresh database with job types from `toml` (plus `demo`).
pub async fn spawn_jobs_app(toml: &str) -> TestApp {
    let db_url = fresh_database().await;
    spawn_on(&db_url, Limits { poll_ms: 100, ..Limits::default() }, toml, true).await
}

/// A gateway with no runner of its own, for tests whose runners are elsewhere or that claim by hand.
pub async fn gateway_only(toml: &str) -> TestApp {
    spawn_on(&fresh_database().await, Limits::default(), toml, false).await
}

/// The job config of the tests: `toml` plus the demo type, fast polls and short leases.
pub fn jobs_config(toml: &str) -> JobsConfig {
    JobsConfig::parse_with(&with_runner_defaults(toml), true).unwrap_or_else(|e| panic!("test job config: {e}"))
}

/// Fast polls, 2 s leases and a 5 s shutdown grace, unless `toml` sets `[runner]` itself.
pub(crate) fn with_runner_defaults(toml: &str) -> String {
    if toml.contains("[runner]") {
        return toml.to_owned();
    }
    // Appended: keys after a table header belong to that table.
    format!("{toml}\n[runner]\npoll = \"100ms\"\nlease = \"2s\"\nshutdown_grace = \"5s\"\n")
}

/// Spawns the gateway, and the runner if `runner`, on `db_url`.
pub async fn spawn_on(db_url: &str, limits: Limits, toml: &str, runner: bool) -> TestApp {
    spawn_configured(db_url, |config| {
        config.limits = limits;
        config.jobs = jobs_config(toml);
        config.runner = runner;
    })
    .await
}

/// Spawns gateway and runner on `db_url` with settings `configure` changes (HS256 secret `SECRET`, fast polls).
pub async fn spawn_configured(db_url: &str, configure: impl FnOnce(&mut AppConfig)) -> TestApp {
    // ROWCAST_LOG=debug shows the app's logs under `--nocapture`.
    if let Ok(filter) = std::env::var("ROWCAST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let db_url = db_url.to_owned();
    let mut config = AppConfig::new(db_url.clone(), "127.0.0.1:0".parse().unwrap(), Some(Secret::new(SECRET)));
    config.limits = Limits { poll_ms: 200, ..Limits::default() };
    config.jobs = jobs_config("");
    configure(&mut config);
    let app = App::build(config).await.expect("building the app");
    let addr = app.local_addr().expect("the gateway is on");
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let pool = PgPool::connect(&db_url).await.expect("test pool");
    let test_app = TestApp { addr, db_url, pool, minter: Minter::new(SECRET), stop: Some(tx), task: Some(task) };
    test_app.wait_healthy().await;
    test_app
}

impl TestApp {
    /// A handle on an app that someone else runs (no shutdown through it).
    pub async fn attach(addr: SocketAddr, db_url: &str) -> TestApp {
        let pool = PgPool::connect(db_url).await.expect("test pool");
        TestApp { addr, db_url: db_url.to_owned(), pool, minter: Minter::new(SECRET), stop: None, task: None }
    }

    /// A token for `sub` with `role`, valid an hour.
    pub fn token(&self, sub: Option<&str>, role: &str) -> String {
        self.minter.mint(sub, role, 3600)
    }

    /// A user's token.
    pub fn user(&self, sub: &str) -> String {
        self.token(Some(sub), "authenticated")
    }

    /// The anon key.
    pub fn anon(&self) -> String {
        self.token(None, "anon")
    }

    /// `/realtime/v1/websocket` with `apikey` and `vsn`.
    pub fn ws_url(&self, apikey: &str, vsn: &str) -> String {
        format!("ws://{}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}", self.addr)
    }

    /// GET `path`; status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Waits until `/health` answers 200 (the app is up, migrated and its listener live).
    pub async fn wait_healthy(&self) {
        eventually(|| async {
            match self.get("/health").await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("the app is not healthy: {status} {body}")),
            }
        })
        .await
    }

    /// Runs SQL on the app's database.
    pub async fn sql(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Creates `public.<name>` (id, user_id, title, n, done, meta) with capture on, owned by user_id.
    pub async fn owned_table(&self, name: &str) {
        self.sql(&format!(
            "create table public.{name} (id bigserial primary key, user_id text not null, title text, n int, \
             done boolean not null default false, meta jsonb, at timestamptz default now());
             select rowcast.enable('public.{name}', owner_column => 'user_id');"
        ))
        .await;
    }

    /// POSTs JSON with `token`; status and JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r =
            reqwest::Client::new().post(format!("http://{}{path}", self.addr)).bearer_auth(token).json(&body).send().await.expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs JSON with `token`; status and JSON body.
    pub async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        let r = reqwest::Client::new().get(format!("http://{}{path}", self.addr)).bearer_auth(token).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Enqueues as `user` over REST; the new row.
    pub async fn enqueue(&self, user: &str, body: Value) -> Value {
        let (status, row) = self.post("/api/jobs", &self.user(user), body).await;
        assert_eq!(status, 202, "enqueue refused: {row}");
        row
    }

    /// Waits until job `id` satisfies `done` (polling the row); returns it.
    pub async fn wait_job(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_job(&self.pool, id, done).await
    }

    /// Stops the app and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("app stops in time").expect("app task").expect("app run");
        }
    }
}

/// A plain HTTP/1.1 GET without a client library.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Polls `check` every 20 ms until it answers `Ok`; after `WAIT` fails with its last `Err`,
/// which describes what was seen instead.
pub async fn eventually<T, Fut: std::future::Future<Output = Result<T, String>>>(mut check: impl FnMut() -> Fut) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(tokio::time::Instant::now() < deadline, "waited {WAIT:?} in vain: {seen}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One scalar query's result.
pub async fn scalar<T>(pool: &PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until job `id` satisfies `done`; returns its row.
pub async fn wait_job(pool: &PgPool, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let id: uuid::Uuid = id.parse().expect("a job id");
    let sql = format!("select to_jsonb(j) from rowcast.jobs j where id = '{id}'");
    let (sql, done) = (&sql, &done);
    eventually(|| async move {
        let row: Value = scalar(pool, sql).await;
        if done(&row) {
            Ok(row)
        } else {
            Err(format!("job {id} is {row}"))
        }
    })
    .await
}
