//! rowcast's numbers on this machine: what change capture costs writers,
//! commit-to-browser latency, fan-out, and job pickup latency. Prints a table.
//!
//! Run: `cargo bench --bench capture` (a private Postgres with fsync on is
//! started and stopped; everything stays on loopback). BENCH_SECS sets the
//! length of each writer run (default 5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rowcast::app::{App, AppConfig};
use rowcast::auth::Minter;
use rowcast::config::{Limits, Secret};
use rowcast::jobs::config::JobsConfig;
use rowcast::pg_local::{Durability, LocalPostgres};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "benchmark-secret-0123456789";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let pg = LocalPostgres::start(Durability::Safe).await?;
    let url = pg.url("postgres");
    let pool = PgPoolOptions::new().max_connections(40).connect(&url).await?;
    rowcast::app::migrate(&pool).await?;
    sqlx::raw_sql(
        "create table bench (id int primary key, user_id text not null, n int not null default 0);
         insert into bench select i, 'u' || (i % 100), 0 from generate_series(1, 10000) i;
         create function bench_notify() returns trigger language plpgsql as $$
         begin perform pg_notify('bench', row_to_json(new)::text); return null; end $$;",
    )
    .execute(&pool)
    .await?;
    println!("rowcast benchmark: {} cores, {secs} s per writer run, PostgreSQL with fsync on\n", std::thread::available_parallelism()?);
    writers(&pool, &url, secs).await?;
    latency_and_fanout(&pool, &url).await?;
    job_pickup(&url).await?;
    Ok(())
}

/// Single-row UPDATEs by primary key from `clients` connections for `secs`: commits per second.
async fn tps(pool: &PgPool, clients: usize, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (pool, done) = (pool.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = c as i32;
                while Instant::now() < deadline {
                    i = (i * 7919 + 13) % 10000 + 1;
                    sqlx::query("update bench set n = n + 1 where id = $1").bind(i).execute(&pool).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

async fn writers(pool: &PgPool, url: &str, secs: u64) -> anyhow::Result<()> {
    println!("## Writer throughput (commits/s, single-row UPDATE by primary key)\n");
    println!("| trigger on the table | 1 writer | 8 writers | 32 writers |\n|---|---:|---:|---:|");
    let row = |name: &str, v: [f64; 3]| println!("| {name} | {:.0} | {:.0} | {:.0} |", v[0], v[1], v[2]);
    let run = |pool: PgPool| async move { [tps(&pool, 1, secs).await, tps(&pool, 8, secs).await, tps(&pool, 32, secs).await] };
    row("none", run(pool.clone()).await);
    sqlx::raw_sql("create trigger naive after update on bench for each row execute function bench_notify()").execute(pool).await?;
    row("NOTIFY with the row on every commit (the naive way)", run(pool.clone()).await);
    sqlx::raw_sql("drop trigger naive on bench; select rowcast.enable('public.bench', owner_column => 'user_id')").execute(pool).await?;
    row("rowcast capture trigger, no gateway (change log only)", run(pool.clone()).await);
    sqlx::query("delete from rowcast.changes").execute(pool).await?;
    let (app, stop, _) = start(url, Limits::default(), JobsConfig::default(), false).await?;
    row("rowcast capture, a live gateway reading", run(pool.clone()).await);
    let _ = stop.send(());
    app.await??;
    sqlx::query("delete from rowcast.changes").execute(pool).await?;
    println!();
    Ok(())
}

type Running = tokio::task::JoinHandle<anyhow::Result<()>>;

async fn start(
    url: &str,
    limits: Limits,
    jobs: JobsConfig,
    runner: bool,
) -> anyhow::Result<(Running, tokio::sync::oneshot::Sender<()>, Option<std::net::SocketAddr>)> {
    let mut config = AppConfig::new(url, "127.0.0.1:0".parse()?, Some(Secret::new(SECRET)));
    (config.limits, config.jobs, config.runner) = (limits, jobs, runner);
    let app = App::build(config).await?;
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    if let Some(addr) = addr {
        let health = format!("http://{addr}/health");
        while reqwest::get(&health).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((task, tx, addr))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket joined as `user` to bench changes; returns after the join reply.
async fn subscriber(addr: std::net::SocketAddr, user: &str) -> anyhow::Result<Ws> {
    let v = Minter::new(SECRET);
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={}&vsn=2.0.0", v.mint(None, "anon", 3600));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let join = json!({"config": {"postgres_changes": [{"event": "UPDATE", "schema": "public", "table": "bench"}]}, "access_token": v.mint(Some(user), "authenticated", 3600)});
    ws.send(Message::Text(json!(["1", "1", "realtime:b", "phx_join", join]).to_string().into())).await?;
    while let Some(m) = ws.next().await {
        if m?.to_text()?.contains("phx_reply") {
            break;
        }
    }
    Ok(ws)
}

async fn next_change(ws: &mut Ws) -> anyhow::Result<()> {
    while let Some(m) = ws.next().await {
        if m?.to_text()?.contains("postgres_changes") {
            return Ok(());
        }
    }
    anyhow::bail!("socket closed")
}

fn percentiles(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!("p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms", p(0.5), p(0.95), p(0.99), v[v.len() - 1])
}

async fn latency_and_fanout(pool: &PgPool, url: &str) -> anyhow::Result<()> {
    let (app, stop, addr) = start(url, Limits { outgoing_queue: 100_000, ..Limits::default() }, JobsConfig::default(), false).await?;
    let addr = addr.expect("the gateway serves");
    let mut ws = subscriber(addr, "u1").await?;
    let mut samples = Vec::new();
    for i in 0..300 {
        // Rows of user u1: ids 1, 101, 201, ...
        let id = 1 + 100 * (i % 100);
        let t = Instant::now();
        sqlx::query("update bench set n = n + 1 where id = $1").bind(id).execute(pool).await?;
        next_change(&mut ws).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("## Commit to WebSocket frame, one subscriber, idle gateway (300 sequential UPDATEs)\n\n{}\n", percentiles(samples));
    drop(ws);
    let users = 100;
    let per_user = 10;
    let mut sockets = Vec::new();
    for u in 0..users {
        for _ in 0..per_user {
            sockets.push(subscriber(addr, &format!("u{u}")).await?);
        }
    }
    let rows = 2000;
    let t = Instant::now();
    let counters: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while n < (rows / 100) as u64 {
                    if next_change(&mut ws).await.is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    sqlx::query("update bench set n = n + 1 where id between 1 and $1").bind(rows).execute(pool).await?;
    let mut delivered = 0;
    for c in counters {
        delivered += c.await?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("## Fan-out with per-user authorisation\n\n{} sockets ({users} users x {per_user}), one UPDATE of {rows} rows (20 per user): {delivered} authorised deliveries in {:.2} s = {:.0} deliveries/s\n", users * per_user, secs, delivered as f64 / secs);
    let _ = stop.send(());
    app.await??;
    Ok(())
}

async fn job_pickup(url: &str) -> anyhow::Result<()> {
    let jobs = JobsConfig::parse_with("[runner]\nslots = 4\n", true)?;
    let (app, stop, _) = start(url, Limits::default(), jobs, true).await?;
    let pool = PgPool::connect(url).await?;
    let mut enqueue = Vec::new();
    let mut pickup = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (id,): (uuid::Uuid,) =
            sqlx::query_as("select id from rowcast.enqueue('demo', '{\"steps\": 1, \"step_ms\": 0}', 'u1')").fetch_one(&pool).await?;
        enqueue.push(t.elapsed().as_secs_f64() * 1000.0);
        loop {
            let (status,): (String,) = sqlx::query_as("select status from rowcast.jobs where id = $1").bind(id).fetch_one(&pool).await?;
            if status != "pending" {
                break;
            }
            tokio::task::yield_now().await;
        }
        pickup.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "## Jobs (200 sequential, idle runner, doorbell + 1 s poll fallback)\n\nenqueue (SQL, committed): {}\nenqueue to running: {}\n",
        percentiles(enqueue),
        percentiles(pickup)
    );
    let _ = stop.send(());
    app.await??;
    Ok(())
}
