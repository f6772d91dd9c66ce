//! The system under test: a private Postgres and the gateway binary running
//! as its own OS process on a free loopback port.
//!
//! Owns starting them in order (cluster, `rowcast migrate` by the binary
//! under test, so its schema matches its code; the scenario's tables; then
//! `rowcast serve --no-runner`, ready when `GET /health` answers 200),
//! reading the gateway's memory and CPU time, and stopping everything:
//! SIGTERM then SIGKILL for the gateway, fast shutdown for Postgres. Drop
//! kills the gateway and stops Postgres too, so an error leaves nothing
//! behind; both also die with this process (parent-death signal).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rowcast::pg_local::{Durability, LocalPostgres};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::time::Instant;

use crate::procfs;

/// The HS256 secret the gateway verifies and the clients mint with.
pub const SECRET: &str = "rowcast-bench-secret-0123456789";

/// Settings the tool gives the gateway besides the database and the secret;
/// every other setting is the binary's default.
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

/// Longest the gateway may take to answer `/health` after it starts.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Longest the gateway may take to exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Postgres plus the gateway. Field order is drop order: gateway first.
pub struct Stack {
    gateway: Gateway,
    /// A small pool for the scenario's own statements.
    pub pool: PgPool,
    pg: LocalPostgres,
    /// The gateway's port on 127.0.0.1.
    pub port: u16,
    /// `server_version` of the cluster.
    pub pg_version: String,
    durability: Durability,
}

struct Gateway {
    child: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
    command_line: String,
}

impl Stack {
    /// Starts Postgres, migrates with `bin`, runs `setup_sql`, starts the
    /// gateway without a job runner.
    pub async fn start(bin: &Path, setup_sql: &str) -> anyhow::Result<Stack> {
        Stack::start_with(bin, setup_sql, &["--no-runner".to_owned()]).await
    }

    /// The same, with `serve_args` after `serve --listen <addr>`.
    pub async fn start_with(bin: &Path, setup_sql: &str, serve_args: &[String]) -> anyhow::Result<Stack> {
        Stack::start_durable(bin, setup_sql, serve_args, Durability::Fast).await
    }

    /// The same on a cluster with the given durability (fsync on for writer costs).
    pub async fn start_durable(bin: &Path, setup_sql: &str, serve_args: &[String], durability: Durability) -> anyhow::Result<Stack> {
        eprintln!("starting a private Postgres and {}", bin.display());
        let pg = LocalPostgres::start(durability).await.context("starting the private Postgres")?;
        let url = pg.url("postgres");
        migrate(bin, &url).await?;
        let pool = PgPoolOptions::new().max_connections(4).connect(&url).await.context("connecting to the private Postgres")?;
        sqlx::raw_sql(setup_sql).execute(&pool).await.context("creating the benchmark tables")?;
        let (pg_version,): (String,) = sqlx::query_as("select current_setting('server_version')").fetch_one(&pool).await?;
        let gateway = Gateway::spawn(bin, &url, serve_args).await?;
        let port = gateway.port;
        Ok(Stack { gateway, pool, pg, port, pg_version, durability })
    }

    /// The private Postgres's URL, for peers measured beside the gateway.
    pub fn database_url(&self) -> String {
        self.pg.url("postgres")
    }

    /// How the cluster treats fsync, for the report's header.
    pub fn durability(&self) -> &'static str {
        match self.durability {
            Durability::Safe => "fsync on",
            Durability::Fast => "fsync off",
        }
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.pid
    }

    /// The gateway's resident memory in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        procfs::rss_kib(self.gateway.pid)
    }

    /// The gateway's CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        procfs::cpu_secs(self.gateway.pid).unwrap_or(f64::NAN)
    }

    /// The gateway's command line and the settings it was given.
    pub fn describe(&self) -> String {
        let env: Vec<String> = GATEWAY_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} (pid {}); env {}, DATABASE_URL, JWT_SECRET; every other setting default",
            self.gateway.command_line,
            self.gateway.pid,
            env.join(" ")
        )
    }

    /// Change-log id -> Unix µs when the gateway's listener read it.
    pub fn read_times(&self) -> anyhow::Result<std::collections::BTreeMap<i64, i64>> {
        let log = std::fs::read_to_string(&self.gateway.log).with_context(|| format!("reading {}", self.gateway.log.display()))?;
        Ok(crate::gatewaylog::read_times(&log))
    }

    /// Stops the gateway (SIGTERM, then SIGKILL), then Postgres.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self.gateway.stop().await;
        self.pool.close().await;
        self.pg.stop();
        status
    }
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

impl Gateway {
    async fn spawn(bin: &Path, url: &str, serve_args: &[String]) -> anyhow::Result<Gateway> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("rowcast-bench-{}-gateway-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["serve", "--listen", &listen]).args(serve_args);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ROWCAST_")) {
            cmd.env_remove(key);
        }
        cmd.envs(GATEWAY_ENV).env("DATABASE_URL", url).env("JWT_SECRET", SECRET);
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("a just-started gateway has a pid")?;
        let command_line = format!("{} serve --listen {listen} {}", bin.display(), serve_args.join(" "));
        let mut gateway = Gateway { child, pid, port, log, command_line };
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
            if health_status(self.port).await == Some(200) {
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

impl Drop for Gateway {
    /// The child itself is killed by `kill_on_drop`; its log goes too (a
    /// failure has already quoted the end of it).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The status code of `GET /health`, or `None` if there is no answer.
async fn health_status(port: u16) -> Option<u16> {
    let ask = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.ok()?;
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
}
