//! A private, throwaway Postgres cluster from the installed server binaries.
//!
//! Used by `rowcast demo` and by the test harness alike. Owns finding the
//! binaries (`ROWCAST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`,
//! else `PATH`), a data directory under the temp dir, `initdb`, starting
//! `postgres` on a free loopback port and stopping it. `initdb` and `postgres`
//! refuse to run as root, so under root both run as the `postgres` system user,
//! which then owns the directory. The server gets SIGINT (fast shutdown) if
//! this process dies, and leftovers of dead runs are removed at the next start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// Why a cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PgLocalError {
    #[error("no PostgreSQL server binaries found (looked in $ROWCAST_PG_BIN, /usr/lib/postgresql/*/bin and PATH); install the postgresql package")]
    NoBinaries,
    #[error("running as root, and there is no `postgres` user in /etc/passwd to run the server as")]
    NoUnprivilegedUser,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("postgres did not accept connections within 30 s; its log is {0}")]
    NotReady(PathBuf),
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> PgLocalError {
    move |e| PgLocalError::Step { step, detail: e.to_string() }
}

const PREFIX: &str = "rowcast-pg-";

/// A running private cluster; stopped on drop.
pub struct LocalPostgres {
    dir: PathBuf,
    port: u16,
    pid: u32,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    durability: Durability,
}

/// Tuning for speed over durability, for tests; the demo keeps defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on: the demo.
    Safe,
    /// fsync off: throwaway test clusters.
    Fast,
}

impl LocalPostgres {
    /// Initialises and starts a cluster; returns once it accepts connections.
    pub async fn start(durability: Durability) -> Result<LocalPostgres, PgLocalError> {
        remove_leftovers();
        let bin = find_binaries().ok_or(PgLocalError::NoBinaries)?;
        let run_as = run_as_user()?;
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).map_err(step("creating the data directory"))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(step("chmod"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(step("chown"))?;
        }
        let data = dir.join("data");
        let out = command(&bin.join("initdb"), run_as, &dir)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(step("running initdb"))?;
        if !out.status.success() {
            return Err(PgLocalError::Step { step: "initdb", detail: String::from_utf8_lossy(&out.stderr).into_owned() });
        }
        let port = free_port().map_err(step("finding a free port"))?;
        let pid = spawn_server(&bin, run_as, &dir, port, durability)?;
        let pg = LocalPostgres { dir, port, pid, bin, run_as, durability };
        pg.wait_ready().await?;
        Ok(pg)
    }

    /// Stops the server (fast shutdown) and starts it again on the same port and data.
    pub async fn restart(&mut self) -> Result<(), PgLocalError> {
        self.shutdown_server();
        self.pid = spawn_server(&self.bin, self.run_as, &self.dir, self.port, self.durability)?;
        self.wait_ready().await
    }

    fn shutdown_server(&mut self) {
        signal(self.pid, "INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn wait_ready(&self) -> Result<(), PgLocalError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(conn) = sqlx::PgConnection::connect(&self.url("postgres")).await {
                let _ = conn.close().await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(PgLocalError::NotReady(self.dir.join("postgres.log")))
    }

    /// Fast shutdown, then removes the directory.
    pub fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        self.shutdown_server();
        self.pid = 0;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

fn command(program: &Path, run_as: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid).env("HOME", dir).env_remove("PGDATA");
    }
    cmd
}

/// Starts `postgres` from a thread that lives as long as the server does:
/// the parent-death signal fires when the spawning thread exits, so the
/// spawner must not be a short-lived worker (a test thread, say).
fn spawn_server(bin: &Path, run_as: Option<(u32, u32)>, dir: &Path, port: u16, durability: Durability) -> Result<u32, PgLocalError> {
    let data = dir.join("data");
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("postgres.log")).map_err(step("opening the server log"))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid)).map_err(step("chown log"))?;
    }
    let mut cmd = command(&bin.join("postgres"), run_as, dir);
    cmd.arg("-D").arg(&data).args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
    cmd.arg("-c").arg(format!("unix_socket_directories={}", dir.display()));
    cmd.args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"]);
    if durability == Durability::Fast {
        cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
    }
    cmd.stdout(log.try_clone().map_err(step("log"))?).stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-keeper".into())
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(step("spawning the keeper thread"))?;
    rx.recv()
        .map_err(|_| PgLocalError::Step { step: "starting postgres", detail: "keeper thread died".into() })?
        .map_err(step("starting postgres"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_binaries() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("ROWCAST_PG_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| d.join("initdb").exists());
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

/// `Some((uid, gid))` of the `postgres` user when we are root, else `None`.
fn run_as_user() -> Result<Option<(u32, u32)>, PgLocalError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or(PgLocalError::NoUnprivilegedUser)
}

/// Removes clusters left by processes that no longer exist.
fn remove_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
