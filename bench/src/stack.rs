//! The system under test: Postgres and the gateway, started by the tool
//! (a private cluster, the gateway binary as its own OS process on a free
//! loopback port) unless the command line names them (`Given`).
//!
//! Owns starting them in order (cluster, `rowcast migrate` by the binary
//! under test, so its schema matches its code; the scenario's tables; then
//! `rowcast serve --no-runner`, ready when `GET /health` answers 200),
//! reading the gateway's memory and CPU time, and stopping what it started:
//! SIGTERM then SIGKILL for the gateway, fast shutdown for Postgres. Drop
//! kills the gateway and stops Postgres too, so an error leaves nothing
//! behind; both also die with this process (parent-death signal). A given
//! database keeps running and keeps the scenario's tables; a given gateway
//! is only spoken to, and its memory and CPU are read only when its pid is
//! given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rowcast::config::{DatabaseUrl, Secret};
use rowcast::pg_local::{Durability, LocalPostgres};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::time::Instant;

use crate::procfs;
use crate::scenario::Env;

/// The HS256 secret the tool's own gateway verifies and the clients mint with.
const OWN_SECRET: &str = "rowcast-bench-secret-0123456789";

/// Settings the tool gives its own gateway besides the database and the
/// secret; every other setting is the binary's default. A given gateway
/// needs the first two as well for the scenarios with many sockets.
pub const GATEWAY_ENV: [(&str, &str); 4] = [
    // Every client shares 127.0.0.1, so the per-address cap (1,000) must go.
    ("ROWCAST_MAX_SOCKETS_PER_IP", "0"),
    // Clients heartbeat every 25 s like supabase-js; a stalled client does
    // not, and must be closed for being slow, not for being idle.
    ("ROWCAST_IDLE_TIMEOUT_SECS", "3600"),
    // JSON lines with the listener's per-batch line, so the tool knows when
    // the gateway read each change (`gatewaylog`).
    ("ROWCAST_LOG_FORMAT", "json"),
    ("ROWCAST_LOG", crate::gatewaylog::LOG_FILTER),
];

/// The tables and function the scenarios create; dropped from a given
/// database before a scenario creates its own, so runs can repeat there.
const CLEAR_GIVEN: &str = "
select rowcast.disable(t::regclass)
  from unnest(array['public.bench', 'public.bench_owned', 'public.bench_text', 'public.bench_blob']) as t
 where to_regclass(t) is not null;
drop table if exists public.bench, public.bench_owned, public.bench_text, public.bench_blob;
drop function if exists public.bench_notify();";

/// Longest the gateway may take to answer `/health` after it starts.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Longest the gateway may take to exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// What the command line says to use instead of starting it.
#[derive(clap::Args, Clone, Default)]
pub struct Given {
    /// Use this Postgres instead of a private cluster. The tool migrates it
    /// with the binary under test (unless the gateway is given too) and drops
    /// and recreates its own tables there (public.bench, bench_owned,
    /// bench_text, bench_blob; rowcast.jobs rows for `jobs`).
    #[arg(long, global = true, env = "ROWCAST_BENCH_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// Measure this running gateway (http://host:port) instead of starting
    /// one. Needs --database-url (its database) and --jwt-secret; give it
    /// ROWCAST_MAX_SOCKETS_PER_IP=0 and ROWCAST_IDLE_TIMEOUT_SECS=3600 for
    /// the scenarios with many sockets. Not for `jobs`, which configures its
    /// own runner.
    #[arg(long, global = true, env = "ROWCAST_BENCH_GATEWAY_URL", value_name = "URL", requires_all = ["database_url", "jwt_secret"])]
    pub gateway_url: Option<String>,
    /// The HS256 secret the given gateway verifies tokens with.
    #[arg(long, global = true, env = "ROWCAST_BENCH_JWT_SECRET", value_name = "SECRET", hide_env_values = true, requires = "gateway_url")]
    pub jwt_secret: Option<Secret>,
    /// The given gateway's process id on this machine: its memory and CPU
    /// are then read from /proc (`connections` and `stall` need it).
    #[arg(long, global = true, value_name = "PID", requires = "gateway_url")]
    pub gateway_pid: Option<u32>,
}

/// Postgres plus the gateway. Field order is drop order: gateway first.
pub struct Stack {
    gateway: Gateway,
    /// A small pool for the scenario's own statements.
    pub pool: PgPool,
    db: Database,
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// `server_version` of the cluster.
    pub pg_version: String,
    /// `fsync on` or `fsync off`, as the cluster says.
    fsync: String,
    secret: Secret,
}

enum Database {
    Private(LocalPostgres),
    Given(DatabaseUrl),
}

enum Gateway {
    Own(Box<OwnGateway>),
    Given { url: String, pid: Option<u32> },
}

struct OwnGateway {
    child: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
    command_line: String,
}

impl Stack {
    /// Starts (or connects to) Postgres, migrates it with the binary under
    /// test, runs `setup_sql`, starts the gateway without a job runner.
    pub async fn start(env: &Env, setup_sql: &str) -> anyhow::Result<Stack> {
        Stack::start_with(env, setup_sql, &["--no-runner".to_owned()]).await
    }

    /// The same, with `serve_args` after `serve --listen <addr>`.
    pub async fn start_with(env: &Env, setup_sql: &str, serve_args: &[String]) -> anyhow::Result<Stack> {
        Stack::start_durable(env, setup_sql, serve_args, Durability::Fast).await
    }

    /// The same on a private cluster with the given durability (fsync on
    /// for writer costs); a given database is as its owner set it up.
    pub async fn start_durable(env: &Env, setup_sql: &str, serve_args: &[String], durability: Durability) -> anyhow::Result<Stack> {
        let given = &env.given;
        if given.gateway_url.is_some() && serve_args != ["--no-runner"] {
            bail!(
                "this scenario starts its own gateway with `{}`, so it cannot measure a given one: \
                 drop --gateway-url (keep --database-url to use your database)",
                serve_args.join(" ")
            );
        }
        let db = match &given.database_url {
            Some(url) => Database::Given(url.clone()),
            None => {
                eprintln!("starting a private Postgres");
                Database::Private(LocalPostgres::start(durability).await.context("starting the private Postgres")?)
            }
        };
        let url = db.url();
        if given.gateway_url.is_none() {
            migrate(&env.rowcast_bin, &url).await?;
        }
        let pool =
            PgPoolOptions::new().max_connections(4).connect(&url).await.with_context(|| format!("connecting to {}", db.describe()))?;
        if let Database::Given(_) = db {
            sqlx::raw_sql(CLEAR_GIVEN).execute(&pool).await.context("dropping the tables of an earlier run")?;
        }
        sqlx::raw_sql(setup_sql).execute(&pool).await.context("creating the benchmark tables")?;
        let (pg_version, fsync): (String, String) =
            sqlx::query_as("select current_setting('server_version'), current_setting('fsync')").fetch_one(&pool).await?;
        let (gateway, addr, secret) = match (&given.gateway_url, &given.jwt_secret) {
            (Some(url), Some(secret)) => {
                let addr = resolve(url).await?;
                match health_status(addr).await {
                    Some(200) => {}
                    other => bail!("the gateway at {url} answered GET /health with {other:?}, not 200"),
                }
                (Gateway::Given { url: url.clone(), pid: given.gateway_pid }, addr, secret.clone())
            }
            (Some(_), None) => bail!("--gateway-url needs --jwt-secret, the secret that gateway verifies tokens with"),
            (None, _) => {
                eprintln!("starting {}", env.rowcast_bin.display());
                let own = OwnGateway::spawn(&env.rowcast_bin, &url, serve_args).await?;
                let addr = SocketAddr::from(([127, 0, 0, 1], own.port));
                (Gateway::Own(Box::new(own)), addr, OWN_SECRET.parse().map_err(anyhow::Error::msg)?)
            }
        };
        Ok(Stack { gateway, pool, db, addr, pg_version, fsync: format!("fsync {fsync}"), secret })
    }

    /// The database's URL, for peers measured beside the gateway. Holds the
    /// password when there is one: never print it.
    pub fn database_url(&self) -> String {
        self.db.url()
    }

    /// The secret the clients mint their tokens with.
    pub fn secret(&self) -> &str {
        self.secret.expose()
    }

    /// The report's line about Postgres: version, where, fsync.
    pub fn describe_postgres(&self) -> String {
        format!("PostgreSQL {}, {}, {}", self.pg_version, self.db.describe(), self.fsync)
    }

    /// The gateway's process id, when it is known.
    pub fn gateway_pid(&self) -> anyhow::Result<u32> {
        match &self.gateway {
            Gateway::Own(own) => Ok(own.pid),
            Gateway::Given { pid: Some(pid), .. } => Ok(*pid),
            Gateway::Given { pid: None, .. } => {
                bail!("this measurement reads the gateway's memory from /proc: pass --gateway-pid with the pid of the gateway at --gateway-url")
            }
        }
    }

    /// The gateway's resident memory in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        procfs::rss_kib(self.gateway_pid()?)
    }

    /// The gateway's resident memory for a table, or why it is missing.
    pub fn rss_text(&self) -> String {
        match self.rss_kib() {
            Ok(kib) => crate::report::mb(kib),
            Err(_) => "not measured (no --gateway-pid)".into(),
        }
    }

    /// The gateway's CPU seconds so far (NaN when its pid is unknown).
    pub fn cpu_secs(&self) -> f64 {
        self.gateway_pid().ok().and_then(|pid| procfs::cpu_secs(pid).ok()).unwrap_or(f64::NAN)
    }

    /// The gateway's command line and the settings it was given.
    pub fn describe(&self) -> String {
        match &self.gateway {
            Gateway::Own(own) => {
                let env: Vec<String> = GATEWAY_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "{} (pid {}); env {}, DATABASE_URL, JWT_SECRET; every other setting default",
                    own.command_line,
                    own.pid,
                    env.join(" ")
                )
            }
            Gateway::Given { url, pid: Some(pid) } => format!("given: {url} (pid {pid}), with its own settings"),
            Gateway::Given { url, pid: None } => format!("given: {url}, with its own settings; pid not given, so no memory or CPU figures"),
        }
    }

    /// Change-log id -> Unix µs when the gateway's listener read it; `None`
    /// for a given gateway, whose log the tool does not read.
    pub fn read_times(&self) -> anyhow::Result<Option<std::collections::BTreeMap<i64, i64>>> {
        let Gateway::Own(own) = &self.gateway else { return Ok(None) };
        let log = std::fs::read_to_string(&own.log).with_context(|| format!("reading {}", own.log.display()))?;
        Ok(Some(crate::gatewaylog::read_times(&log)))
    }

    /// Stops what the tool started: its gateway (SIGTERM, then SIGKILL),
    /// then its Postgres.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = match &mut self.gateway {
            Gateway::Own(own) => own.stop().await,
            Gateway::Given { .. } => Ok(()),
        };
        self.pool.close().await;
        if let Database::Private(pg) = &mut self.db {
            pg.stop();
        }
        status
    }
}

impl Database {
    fn url(&self) -> String {
        match self {
            Database::Private(pg) => pg.url("postgres"),
            Database::Given(url) => url.expose().to_owned(),
        }
    }

    /// Where the database is, without user or password.
    fn describe(&self) -> String {
        match self {
            Database::Private(_) => "private cluster on loopback".into(),
            Database::Given(url) => match url.expose().parse::<PgConnectOptions>() {
                Ok(o) => format!("given: {}:{}/{}", o.get_host(), o.get_port(), o.get_database().unwrap_or("(default)")),
                Err(_) => "given (an unreadable URL)".into(),
            },
        }
    }
}

/// `http://host:port[/...]` -> the socket address the clients connect to.
async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = authority(url)?;
    tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))
}

/// The `host:port` of an `http://` or `ws://` URL (the clients speak plain
/// TCP, so no TLS schemes).
fn authority(url: &str) -> anyhow::Result<&str> {
    let rest = ["http://", "ws://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .with_context(|| format!("--gateway-url {url}: expected http://host:port (the benchmark clients do not speak TLS)"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        bail!("--gateway-url {url}: expected http://host:port with the port");
    }
    Ok(authority)
}

/// `rowcast migrate` by the binary under test.
async fn migrate(bin: &Path, url: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", url)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} migrate", bin.display()))?;
    if !out.status.success() {
        bail!("{} migrate failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Makes `cmd`'s process get SIGKILL when this process dies. The signal is
/// tied to the spawning thread, and the tool spawns from its one runtime
/// thread, which lives as long as the process.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl OwnGateway {
    async fn spawn(bin: &Path, url: &str, serve_args: &[String]) -> anyhow::Result<OwnGateway> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("rowcast-bench-{}-gateway-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["serve", "--listen", &listen]).args(serve_args);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ROWCAST_")) {
            cmd.env_remove(key);
        }
        cmd.envs(GATEWAY_ENV).env("DATABASE_URL", url).env("JWT_SECRET", OWN_SECRET);
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("a just-started gateway has a pid")?;
        let command_line = format!("{} serve --listen {listen} {}", bin.display(), serve_args.join(" "));
        let mut gateway = OwnGateway { child, pid, port, log, command_line };
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    /// Polls `/health` until 200; fails early if the gateway exits.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("the gateway exited at start ({status}); its log:\n{}", self.log_tail());
            }
            if health_status(SocketAddr::from(([127, 0, 0, 1], self.port))).await == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the gateway did not answer /health with 200 within {} s; its log:\n{}", READY_WAIT.as_secs(), self.log_tail())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, bounded wait, SIGKILL; an error if the gateway had already
    /// exited (a crash), with the end of its log.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = self.log_tail();
            bail!("the gateway had exited during the run ({status}); the end of its log:\n{tail}");
        }
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(STOP_WAIT, self.child.wait()).await.is_err() {
            eprintln!("the gateway did not exit within {} s of SIGTERM; killing it", STOP_WAIT.as_secs());
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        Ok(())
    }
}

impl Drop for OwnGateway {
    /// The child itself is killed by `kill_on_drop`; its log goes too (a
    /// failure has already quoted the end of it).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The status code of `GET /health`, or `None` if there is no answer.
async fn health_status(addr: SocketAddr) -> Option<u16> {
    let ask = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let n = tcp.read(&mut head).await.ok()?;
        parse_status_line(&head[..n])
    };
    tokio::time::timeout(Duration::from_secs(3), ask).await.ok().flatten()
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head).ok()?.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_code_is_read_from_the_first_line() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status_line(b"garbage"), None);
    }

    #[test]
    fn a_gateway_url_gives_the_host_and_port_the_clients_connect_to() {
        assert_eq!(authority("http://127.0.0.1:4000").unwrap(), "127.0.0.1:4000");
        assert_eq!(authority("ws://gw.internal:80/realtime/v1").unwrap(), "gw.internal:80");
        assert_eq!(authority("http://[::1]:4000/").unwrap(), "[::1]:4000");
    }

    #[test]
    fn a_gateway_url_without_a_port_or_over_tls_is_refused_with_the_reason() {
        assert!(authority("https://gw:443").unwrap_err().to_string().contains("TLS"));
        assert!(authority("http://gw").unwrap_err().to_string().contains("port"));
        assert!(authority("http://:4000").unwrap_err().to_string().contains("port"));
    }
}
