//! `rowcast.jobs` is captured only while a gateway may have someone watching
//! it (migration 0028, `changes::watch`): a join arms the capture before
//! its `ok`, waiting out writers that skipped it, and a writer of any
//! isolation level sees the arming at once.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::harness::{eventually, gateway_only, scalar, spawn_jobs_app, Client};

const JOBS: &str = r#"[{"event": "*", "schema": "rowcast", "table": "jobs"}]"#;
const ONE_STEP: &str = r#"{"steps": 1, "step_ms": 0}"#;

fn jobs() -> Value {
    serde_json::from_str(JOBS).unwrap()
}

/// Change-log rows of `rowcast.jobs` about job `id`.
async fn logged(pool: &sqlx::PgPool, id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from rowcast.changes where schema_name = 'rowcast' and table_name = 'jobs' and record->>'id' = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_nobody_watches_leaves_no_change_rows_and_a_watched_one_every_transition() {
    let app = spawn_jobs_app("").await;
    let input: Value = serde_json::from_str(ONE_STEP).unwrap();
    let unwatched = app.enqueue("alice", json!({"type": "demo", "input": input})).await;
    let unwatched = unwatched["id"].as_str().unwrap().to_owned();
    app.wait_job(&unwatched, |j| j["status"] == "completed").await;
    assert_eq!(logged(&app.pool, &unwatched).await, 0, "enqueue, claim and completion with nobody watching");

    let mut client = Client::v2(&app, &app.anon()).await;
    client.subscribe("mine", jobs(), Some(&app.user("alice"))).await;
    let watched = app.enqueue("alice", json!({"type": "demo", "input": input})).await;
    let watched = watched["id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|s: &(String, String)| s.1 != "completed") {
        let change = client.change("mine").await;
        let data = &change["data"];
        assert_eq!(data["record"]["id"], json!(watched), "{change}");
        seen.push((data["type"].as_str().unwrap().to_owned(), data["record"]["status"].as_str().unwrap().to_owned()));
    }
    let expected = [("INSERT", "pending"), ("UPDATE", "running"), ("UPDATE", "completed")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(seen, expected);
    assert_eq!(logged(&app.pool, &watched).await, 3);
}

#[tokio::test]
async fn a_join_waits_out_a_write_that_skipped_capture_and_hears_every_later_one() {
    let app = gateway_only("").await;
    let mut writer = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("begin").execute(&mut writer).await.unwrap();
    let early: String = sqlx::query_scalar("select (rowcast.enqueue('demo', $1::jsonb, 'alice')).id::text")
        .bind(ONE_STEP)
        .fetch_one(&mut writer)
        .await
        .unwrap();

    let mut client = Client::v2(&app, &app.anon()).await;
    let token = app.user("alice");
    let join = tokio::spawn(async move {
        let reply = client.join("mine", jobs(), Some(&token)).await;
        (client, reply)
    });
    // The gateway raised the horizon and is waiting for the open writer.
    eventually(|| async {
        let polls: i64 =
            scalar(&app.pool, "select count(*) from pg_stat_activity where query like '%pg_xact_status%' and pid <> pg_backend_pid()")
                .await;
        if polls > 0 {
            Ok(())
        } else {
            Err("no gateway session has asked for open transactions".into())
        }
    })
    .await;
    assert!(!join.is_finished(), "the join said ok while a writer that skipped capture was still open");
    sqlx::query("commit").execute(&mut writer).await.unwrap();
    let (mut client, reply) = tokio::time::timeout(Duration::from_secs(10), join).await.expect("the join answered").unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(logged(&app.pool, &early).await, 0, "committed before the ok, uncaptured: the app reads it from its snapshot");

    let later: String = scalar(&app.pool, "select (rowcast.enqueue('demo', '{}', 'alice')).id::text").await;
    let change = client.change("mine").await;
    assert_eq!((change["data"]["type"].as_str(), change["data"]["record"]["id"].as_str()), (Some("INSERT"), Some(later.as_str())));
}

#[tokio::test]
async fn a_repeatable_read_writer_whose_snapshot_predates_the_join_is_still_captured() {
    let app = gateway_only("").await;
    let mut writer = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("begin isolation level repeatable read").execute(&mut writer).await.unwrap();
    // Its snapshot is taken now, before anyone watches; it has no transaction id yet.
    let _: i32 = sqlx::query_scalar("select 1").fetch_one(&mut writer).await.unwrap();

    let mut client = Client::v2(&app, &app.anon()).await;
    client.subscribe("mine", jobs(), Some(&app.user("alice"))).await;
    let id: String = sqlx::query_scalar("select (rowcast.enqueue('demo', '{}', 'alice')).id::text").fetch_one(&mut writer).await.unwrap();
    sqlx::query("commit").execute(&mut writer).await.unwrap();
    let change = client.change("mine").await;
    assert_eq!((change["data"]["type"].as_str(), change["data"]["record"]["id"].as_str()), (Some("INSERT"), Some(id.as_str())));
}

#[tokio::test]
async fn a_table_stays_captured_for_the_watch_ttl_after_its_last_subscriber_leaves() {
    let app = gateway_only("").await;
    let mut client = Client::v2(&app, &app.anon()).await;
    client.subscribe("mine", jobs(), Some(&app.user("alice"))).await;
    drop(client);
    let id: String = scalar(&app.pool, "select (rowcast.enqueue('demo', '{}', 'alice')).id::text").await;
    assert_eq!(logged(&app.pool, &id).await, 1, "a channel rejoining after a handoff replays this from the log");
    let ahead: f64 =
        scalar(&app.pool, "select pg_sequence_last_value('rowcast.jobs_watched_until') - extract(epoch from clock_timestamp())::float8")
            .await;
    assert!(ahead > 55.0, "captured for at least a minute after the join, {ahead} s left");
}
