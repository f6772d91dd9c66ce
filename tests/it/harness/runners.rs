//! Extra job runners on a test's database: in this process, or as the
//! `rowcast` binary in its own OS process (for SIGKILL, SIGSTOP and SIGTERM).

use rowcast::app::{App, AppConfig};
use rowcast::config::Secret;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{jobs_config, with_runner_defaults, SECRET, WAIT};

/// A runner-only app in this process (a second runner on the same database).
pub struct RunnerApp {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunnerApp {
    /// Starts a runner with `toml` on `db_url`.
    pub async fn start(db_url: &str, toml: &str) -> RunnerApp {
        let mut config = AppConfig::new(db_url, "127.0.0.1:0".parse().unwrap(), Some(Secret::new(SECRET)));
        config.gateway = false;
        config.jobs = jobs_config(toml);
        let app = App::build(config).await.expect("building a runner");
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        RunnerApp { stop, task }
    }

    /// Stops it (graceful) and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task).await.expect("runner stops in time").unwrap().unwrap();
    }
}

/// `rowcast serve --no-gateway` as its own OS process.
pub struct RunnerProcess {
    pub child: tokio::process::Child,
    _config: tempfile_path::TempFile,
    /// The `application_name` its database connections carry, to see when it is up.
    name: String,
}

impl RunnerProcess {
    /// Starts the binary with `toml` (see `jobs_config`) on `db_url`.
    pub fn spawn(db_url: &str, toml: &str) -> RunnerProcess {
        RunnerProcess::spawn_with(db_url, toml, &[])
    }

    /// As `spawn`, with `env` added to the process's environment.
    pub fn spawn_with(db_url: &str, toml: &str, env: &[(&str, &str)]) -> RunnerProcess {
        let config = tempfile_path::TempFile::with(&with_runner_defaults(toml));
        let name = format!("runner-{}", uuid::Uuid::new_v4().simple());
        let separator = if db_url.contains('?') { '&' } else { '?' };
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
            .args(["serve", "--no-gateway", "--demo-jobs", "--config"])
            .arg(config.path())
            .env("DATABASE_URL", format!("{db_url}{separator}application_name={name}"))
            .env("JWT_SECRET", SECRET)
            .env("ROWCAST_LOG", std::env::var("ROWCAST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the rowcast binary");
        RunnerProcess { child, _config: config, name }
    }

    /// Waits until the process is connected to the database (it has built its app and runs).
    pub async fn ready(&self, pool: &sqlx::PgPool) {
        let name = self.name.clone();
        crate::harness::eventually(|| {
            let name = name.clone();
            async move {
                let n: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity where application_name = $1")
                    .bind(&name)
                    .fetch_one(pool)
                    .await
                    .map_err(|e| e.to_string())?;
                if n > 0 {
                    Ok(())
                } else {
                    Err(format!("runner {name} is not connected yet"))
                }
            }
        })
        .await
    }

    /// Sends a signal (KILL, STOP, CONT, TERM).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid).status().unwrap().success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit; its exit status.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("the runner process exits in time").unwrap()
    }
}

/// `rowcast serve --no-runner` as its own OS process: a second gateway on a
/// test's database that can be killed.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub app: super::TestApp,
}

impl GatewayProcess {
    /// Starts the binary on `db_url` with `env` added; returns once `/health` answers.
    pub async fn spawn(db_url: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
            .args(["serve", "--no-runner", "--listen", &addr.to_string()])
            .env("DATABASE_URL", db_url)
            .env("JWT_SECRET", SECRET)
            .env("ROWCAST_LOG", std::env::var("ROWCAST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the rowcast binary");
        super::eventually(|| async {
            tokio::net::TcpStream::connect(addr).await.map(drop).map_err(|e| format!("the gateway process is not listening yet: {e}"))
        })
        .await;
        let app = super::TestApp::attach(addr, db_url).await;
        app.wait_healthy().await;
        GatewayProcess { child, app }
    }

    /// SIGKILL: the gateway stops without a word to anyone.
    pub fn kill(&mut self) {
        self.child.start_kill().expect("killing the gateway");
    }

    /// SIGTERM: the gateway drains and stops, as in a rolling deploy.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the gateway is running") as i32;
        // SAFETY: sends SIGTERM to the child we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }

    /// Waits for the process to exit; panics unless it exits 0 within `WAIT`.
    pub async fn exited(&mut self) {
        let status = tokio::time::timeout(super::WAIT, self.child.wait()).await.expect("the gateway stops").unwrap();
        assert!(status.success(), "the gateway exited with {status}");
    }
}

mod tempfile_path {
    //! A file under the temp dir, removed on drop.
    pub struct TempFile(std::path::PathBuf);
    impl TempFile {
        pub fn with(text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("rowcast-test-{}.toml", uuid::Uuid::new_v4()));
            std::fs::write(&path, text).expect("writing a temp file");
            TempFile(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
