//! Database faults: the gateway's connections killed mid-stream, and a
//! Postgres restart. Clients that stay connected get every change once, in order.

use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::harness::{Client, TestApp, SECRET, WAIT};
use rowcast::app::{App, AppConfig};
use rowcast::config::{Limits, Secret};
use rowcast::pg_local::{Durability, LocalPostgres};

fn updates() -> serde_json::Value {
    json!([{"event": "UPDATE", "schema": "public", "table": "todos"}])
}

/// Receives `n` updates and returns their `n` column values.
async fn received(c: &mut Client, count: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(c.change("f").await["data"]["record"]["n"].as_i64().unwrap());
    }
    out
}

/// Waits until a change listener is connected to this database again: a
/// backend other than the `killed` ones, which may still be listed while they exit.
async fn wait_for_listener(conn: &mut PgConnection, killed: &[i32]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and application_name = 'rowcast-listener' and pid <> all($1)",
        )
        .bind(killed)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if n > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the change listener did not reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn killing_the_gateways_database_connections_mid_stream_loses_and_repeats_nothing() {
    let app = crate::harness::spawn_app().await;
    app.owned_table("todos").await;
    app.sql("insert into todos (user_id, n) values ('alice', 0)").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("f", updates(), Some(&app.user("alice"))).await;
    let mut writer = PgConnection::connect(&app.db_url).await.unwrap();
    let (writer_pid,): (i32,) = sqlx::query_as("select pg_backend_pid()").fetch_one(&mut writer).await.unwrap();
    let mut killer = PgConnection::connect(&app.db_url).await.unwrap();
    let total = 300;
    let mut killed = Vec::new();
    for round in 0..12 {
        // Kill every other backend of this database, the change listener's among them...
        let (listeners,): (Vec<i32>,) = sqlx::query_as(
            "select coalesce(array_agg(pid) filter (where application_name = 'rowcast-listener'), '{}') \
             from (select pid, application_name, pg_terminate_backend(pid) as killed from pg_stat_activity \
                   where datname = current_database() and pid <> pg_backend_pid() and pid <> $1) t where killed",
        )
        .bind(writer_pid)
        .fetch_one(&mut killer)
        .await
        .unwrap();
        killed.extend(&listeners);
        assert!(!listeners.is_empty(), "round {round}: the change listener's connection was killed");
        // ...commit updates while it is away...
        for i in round * 25 + 1..=round * 25 + 25 {
            sqlx::query("update todos set n = $1").bind(i).execute(&mut writer).await.unwrap();
        }
        // ...and wait for it to come back before the next round.
        wait_for_listener(&mut killer, &killed).await;
    }
    assert_eq!(received(&mut c, total).await, (1..=total).collect::<Vec<_>>());
    c.heartbeat().await;
}

#[tokio::test]
async fn a_postgres_restart_loses_nothing_committed_before_or_after_it() {
    let mut pg = LocalPostgres::start(Durability::Fast).await.expect("a private cluster for this test");
    let url = pg.url("postgres");
    let mut config = AppConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap(), Some(Secret::new(SECRET)));
    config.limits = Limits { poll_ms: 100, ..Limits::default() };
    let app = App::build(config).await.unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let handle = TestApp::attach(addr, &url).await;
    handle.owned_table("todos").await;
    handle.sql("insert into todos (user_id, n) values ('alice', 0)").await;
    let mut c = Client::v2(&handle, &handle.anon()).await;
    c.subscribe("f", updates(), Some(&handle.user("alice"))).await;
    handle.sql("update todos set n = 1; update todos set n = 2;").await;
    handle.pool.close().await;
    pg.restart().await.expect("restarting postgres");
    let pool = PgPool::connect(&url).await.unwrap();
    for i in 3..=10 {
        sqlx::query("update todos set n = $1").bind(i).execute(&pool).await.unwrap();
    }
    assert_eq!(received(&mut c, 10).await, (1..=10).collect::<Vec<_>>());
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}
