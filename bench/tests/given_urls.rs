//! `rowcast-bench` measures a database and a gateway it is given instead of
//! starting its own: the tests start a Postgres and a gateway themselves,
//! hand their URLs to the tool, and check that the run used them (the
//! report's header, the tables in that database) and can be repeated there.
//!
//! They need the gateway binary next to the tool's (`cargo build -p rowcast
//! -p rowcast-bench`; `scripts/test` builds both first) and fail saying so
//! when it is missing.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rowcast::pg_local::{Durability, LocalPostgres};
use serde_json::Value;

const SECRET: &str = "given-urls-test-secret-0123456789";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rowcast-bench"))
}

/// The gateway binary the tool measures by default: `rowcast` beside it.
fn gateway_bin() -> PathBuf {
    let bin = tool().parent().expect("the tool has a directory").join("rowcast");
    assert!(bin.is_file(), "{} is missing: build it with `cargo build -p rowcast` (scripts/test does)", bin.display());
    bin
}

/// A gateway started by the test, killed when dropped.
struct Gateway {
    child: Child,
    port: u16,
}

impl Gateway {
    fn start(database_url: &str) -> Gateway {
        let migrated = Command::new(gateway_bin()).arg("migrate").env("DATABASE_URL", database_url).output().expect("rowcast migrate runs");
        assert!(migrated.status.success(), "rowcast migrate failed: {}", String::from_utf8_lossy(&migrated.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(gateway_bin())
            .args(["serve", "--no-runner", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", SECRET)
            .env("ROWCAST_MAX_SOCKETS_PER_IP", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the test's gateway did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tool with `args`; its output.
fn bench(args: &[&str]) -> Output {
    Command::new(tool()).args(args).stdin(Stdio::null()).output().expect("rowcast-bench runs")
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "rowcast-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report(dir: &Path, scenario: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(format!("{scenario}.json"))).expect("the scenario wrote its JSON");
    serde_json::from_str(&text).expect("the JSON parses")
}

async fn scalar(url: &str, sql: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.expect("the test connects");
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect(sql);
    pool.close().await;
    n
}

#[test]
fn a_given_gateway_and_database_are_measured_instead_of_private_ones() {
    let rt = runtime();
    let mut pg = rt.block_on(LocalPostgres::start(Durability::Fast)).expect("the test's Postgres starts");
    let db = pg.url("postgres");
    let gateway = Gateway::start(&db);
    let out_dir = tempdir("given-gateway");
    let pid = gateway.child.id().to_string();
    let common = ["--out", out_dir.to_str().unwrap(), "--database-url", &db, "--gateway-url", &gateway.url(), "--jwt-secret", SECRET];

    let mut args = common.to_vec();
    args.extend(["--gateway-pid", &pid, "latency", "--users", "4", "--rate", "40", "--secs", "1"]);
    let out = bench(&args);
    succeeded(&out);
    let json = report(&out_dir, "latency");
    let header = &json["header"];
    assert_eq!(header["gateway"], format!("given: {} (pid {pid}), with its own settings", gateway.url()));
    assert!(header["postgres"]
        .as_str()
        .unwrap()
        .contains(&format!("given: 127.0.0.1:{}/postgres", db.rsplit(':').next().unwrap().split('/').next().unwrap())));
    assert!(json["figures"]["p50_ms"].as_f64().is_some(), "no latency measured: {json}");
    assert_eq!(json["figures"]["lost"], 0.0, "changes were lost: {json}");
    // The changes were written to the given database, and the given gateway
    // delivered them: its sockets' changes are counted above.
    assert_eq!(rt.block_on(scalar(&db, "select count(*) from public.bench_owned where n > 0")), 4);

    // Without the pid, what needs /proc says so instead of guessing.
    let mut args = common.to_vec();
    args.extend(["connections", "--sockets", "2"]);
    let out = bench(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --gateway-pid"), "{}", String::from_utf8_lossy(&out.stderr));

    // `jobs` configures its own runner, so it refuses a given gateway.
    let mut args = common.to_vec();
    args.extend(["jobs", "--jobs", "10", "--no-peer"]);
    let out = bench(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop --gateway-url"), "{}", String::from_utf8_lossy(&out.stderr));

    drop(gateway);
    pg.stop();
}

#[test]
fn a_given_database_is_used_with_the_tools_own_gateway_and_runs_repeat_there() {
    let rt = runtime();
    let mut pg = rt.block_on(LocalPostgres::start(Durability::Fast)).expect("the test's Postgres starts");
    let db = pg.url("postgres");
    let out_dir = tempdir("given-database");
    for run in 1..=2 {
        let out = bench(&[
            "--out",
            out_dir.to_str().unwrap(),
            "--database-url",
            &db,
            "fanout",
            "--subscribers",
            "3",
            "--changes",
            "2",
            "--interval-ms",
            "20",
        ]);
        succeeded(&out);
        let json = report(&out_dir, "fanout");
        assert!(json["header"]["postgres"].as_str().unwrap().contains("given: 127.0.0.1:"), "run {run}: {json}");
        assert!(json["header"]["gateway"].as_str().unwrap().contains("serve --listen 127.0.0.1:"), "run {run}: {json}");
        assert_eq!(json["figures"]["lost_deliveries"], 0.0, "run {run}: {json}");
        // The tool's gateway migrated the given database and the scenario's table lives there.
        assert_eq!(rt.block_on(scalar(&db, "select n::int8 from public.bench where id = 1")), 2, "run {run}");
        let orphans = "select count(*) from rowcast.tables t where not exists (select from pg_class c where c.oid = t.relid)";
        assert_eq!(rt.block_on(scalar(&db, orphans)), 0, "run {run}: the earlier run's table is still registered");
    }
    pg.stop();
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rowcast-bench-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
