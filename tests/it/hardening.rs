//! Facing the internet: what one hostile or broken client can cost the others.
//! A filter built to backtrack, a client that stops reading, connection
//! floods, requests for made-up tables, a hook URL that hangs, and shutdown.
//! Each test names the harm and shows another client (or the app) unharmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite;

use crate::harness::{eventually, spawn_app_with, spawn_jobs_app, Client, TestApp, WAIT};
use crate::step_server::{Call, Reply, StepServer};
use rowcast::changes::tables::Tables;
use rowcast::config::Limits;

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits { poll_ms: 200, ..Limits::default() };
    f(&mut l);
    l
}

async fn public_notes(app: &TestApp) {
    app.sql(
        "create table public.notes (id int primary key, v text); insert into notes values (1, 'x');
             select rowcast.enable('public.notes', public => true);",
    )
    .await;
}

/// Open sockets as `/health` counts them.
async fn open_sockets(app: &TestApp) -> u64 {
    let (_, body) = app.get("/health").await;
    serde_json::from_str::<Value>(&body).ok().and_then(|v| v["sockets"].as_u64()).unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_like_filter_built_to_backtrack_does_not_delay_another_subscriber() {
    let app = spawn_app_with(limits(|_| {})).await;
    public_notes(&app).await;
    let hostile_filter = format!("v=like.{}%b", "%a".repeat(25));
    let mut hostile = Client::v2(&app, &app.anon()).await;
    hostile.subscribe("h", json!([{"event": "*", "schema": "public", "table": "notes", "filter": hostile_filter}]), None).await;
    let mut ordinary = Client::v2(&app, &app.anon()).await;
    ordinary.subscribe("o", json!([{"event": "*", "schema": "public", "table": "notes"}]), None).await;
    let started = Instant::now();
    app.sql(&format!("update notes set v = '{}' where id = 1", "a".repeat(60))).await;
    // Backtracking kept the fan-out busy for over 20 s; `change` fails after WAIT (10 s).
    let change = ordinary.change("o").await;
    assert_eq!(change["data"]["record"]["v"], "a".repeat(60));
    eprintln!("the ordinary subscriber got its change {:?} after the update", started.elapsed());
    hostile.heartbeat().await;
}

#[tokio::test]
async fn a_pattern_longer_than_the_cap_is_refused_in_supabase_terms() {
    let app = spawn_app_with(limits(|_| {})).await;
    public_notes(&app).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let filter = format!("v=like.{}", "a".repeat(257));
    let reply = c.join("p", json!([{"event": "*", "schema": "public", "table": "notes", "filter": filter}]), None).await;
    assert_eq!(reply["status"], "ok");
    let sys = c.recv_event("realtime:p", "system").await.payload;
    assert_eq!(sys["status"], "error");
    let message = sys["message"].as_str().unwrap();
    assert!(message.starts_with("Unable to subscribe to changes with given parameters. An exception happened"), "{message}");
    assert!(message.ends_with("ERROR P0001 (raise_exception) pattern too long for `like` filter. Maximum 256 characters"), "{message}");
}

async fn two_subscribers(app: &TestApp) -> (Client, Client) {
    app.owned_table("todos").await;
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": "todos"}]);
    let mut slow = Client::v2(app, &app.anon()).await;
    let mut fine = Client::v2(app, &app.anon()).await;
    slow.subscribe("s", bindings.clone(), Some(&app.user("u"))).await;
    fine.subscribe("s", bindings, Some(&app.user("u"))).await;
    (slow, fine)
}

/// 40 batches of 8 rows of 100 kB (32 MB): `fine` drains each batch, `slow` reads nothing.
async fn load_while_one_drains(app: &TestApp, fine: &mut Client) {
    for _ in 0..40 {
        app.sql("insert into todos (user_id, title) select 'u', repeat('x', 100000) from generate_series(1, 8)").await;
        for _ in 0..8 {
            fine.change("s").await;
        }
    }
}

#[tokio::test]
async fn a_client_past_the_byte_bound_is_closed_1013_while_others_keep_receiving() {
    // A frame bound it never reaches: only bytes can overflow. 2 MiB holds one
    // 800 kB batch, so a client that reads is never closed.
    let app = spawn_app_with(limits(|l| {
        l.outgoing_queue = 100_000;
        l.outgoing_queue_bytes = 2 * 1024 * 1024;
        l.write_timeout_secs = 60;
    }))
    .await;
    let (mut slow, mut fine) = two_subscribers(&app).await;
    load_while_one_drains(&app, &mut fine).await;
    let (code, reason) = slow.closed().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1013, "slow consumer: outgoing queue full"));
    fine.heartbeat().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_the_write_timeout_and_others_keep_receiving() {
    // Bounds it never reaches: only the stalled write can end it.
    let app = spawn_app_with(limits(|l| {
        l.outgoing_queue = 100_000;
        l.outgoing_queue_bytes = 1 << 30;
        l.write_timeout_secs = 1;
    }))
    .await;
    let (slow, mut fine) = two_subscribers(&app).await;
    assert_eq!(open_sockets(&app).await, 2);
    load_while_one_drains(&app, &mut fine).await;
    eventually(|| async {
        match open_sockets(&app).await {
            1 => Ok(()),
            n => Err(format!("{n} sockets open; the stalled one should be gone")),
        }
    })
    .await;
    fine.heartbeat().await;
    drop(slow);
}

#[tokio::test]
async fn shutdown_tells_every_channel_to_reconnect_and_sends_every_socket_a_close_frame() {
    let app = spawn_app_with(limits(|_| {})).await;
    app.owned_table("todos").await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "todos"}]);
    let mut v2 = Client::v2(&app, &app.anon()).await;
    let mut v1 = Client::connect(&app, &app.anon(), "1.0.0").await;
    v2.subscribe("a", bindings.clone(), Some(&app.user("u"))).await;
    v1.subscribe("b", bindings, Some(&app.user("u"))).await;
    let stopping = tokio::spawn(app.shutdown());
    for (client, topic) in [(&mut v2, "realtime:a"), (&mut v1, "realtime:b")] {
        client.told_to_reconnect(&[topic]).await;
    }
    tokio::time::timeout(WAIT, stopping).await.expect("the app stops").expect("shutdown task");
}

/// Connects and returns the HTTP refusal (status, body), or None when the upgrade succeeded.
async fn refusal(app: &TestApp) -> Option<(u16, Value)> {
    match tokio_tungstenite::connect_async(app.ws_url(&app.anon(), "2.0.0")).await {
        Ok(_) => None,
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_ref().map(|b| serde_json::from_slice(b).unwrap_or(Value::Null)).unwrap_or(Value::Null);
            Some((response.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

#[tokio::test]
async fn sockets_past_the_per_ip_limit_get_429_before_the_upgrade_and_a_closed_one_frees_its_place() {
    let app = spawn_app_with(limits(|l| l.max_sockets_per_ip = 2)).await;
    let mut first = Client::v2(&app, &app.anon()).await;
    let _second = Client::v2(&app, &app.anon()).await;
    assert_eq!(refusal(&app).await, Some((429, json!({"error": "Too many connected users"}))));
    first.heartbeat().await;
    drop(first);
    eventually(|| async {
        if open_sockets(&app).await == 1 {
            Ok(())
        } else {
            Err("the closed socket still counts".to_owned())
        }
    })
    .await;
    assert_eq!(refusal(&app).await, None);
}

#[tokio::test]
async fn sockets_past_the_process_limit_get_429() {
    let app = spawn_app_with(limits(|l| {
        l.max_sockets = 1;
        l.max_sockets_per_ip = 0;
    }))
    .await;
    let mut only = Client::v2(&app, &app.anon()).await;
    assert_eq!(refusal(&app).await, Some((429, json!({"error": "Too many connected users"}))));
    only.heartbeat().await;
}

#[tokio::test]
async fn a_rest_read_of_an_unknown_table_without_a_valid_token_is_401_not_a_catalogue_lookup() {
    let app = spawn_app_with(limits(|_| {})).await;
    let (status, body) = app.get("/rest/v1/no_such_table").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = app.get_as("/rest/v1/no_such_table", "not-a-jwt").await;
    assert_eq!(status, 401);
    let (status, body) = app.get_as("/rest/v1/no_such_table", &app.user("u")).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("PGRST205")));
}

#[tokio::test]
async fn a_flood_of_unknown_table_lookups_reloads_the_catalogue_a_few_times_not_once_each() {
    let app = spawn_app_with(limits(|_| {})).await;
    let tables = Tables::with_pool(app.pool.clone());
    let calls: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn({
                let tables = tables.clone();
                async move { tables.refresh().await }
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap());
    }
    assert!(tables.refreshes() <= 3, "{} reloads for 200 concurrent asks", tables.refreshes());
    // A table enabled now is seen by the next ask, even right after a reload.
    app.owned_table("fresh").await;
    assert!(tables.refresh().await);
    assert!(tables.get("public", "fresh").is_some());
}

#[tokio::test]
async fn a_hanging_failure_hook_holds_no_runner_slot_and_shutdown_stays_bounded() {
    let never = Arc::new(Notify::new());
    let mut handler = StepServer::start({
        let never = never.clone();
        move |call: &Call| {
            if call.body.contains("\"job.failed\"") {
                Reply::Hold(never.clone(), 200, json!({}))
            } else {
                Reply::Now(200, json!({"error": {"message": "boom", "retriable": false}}))
            }
        }
    })
    .await;
    let toml = format!(
        "signing_secret = \"test-signing-secret\"\n[jobs.hooked]\nurl = \"{url}\"\non_failure = \"{url}\"\n\
         [runner]\nslots = 1\npoll = \"100ms\"\nlease = \"2s\"\nshutdown_grace = \"5s\"\n",
        url = handler.url
    );
    let app = spawn_jobs_app(&toml).await;
    let first = app.enqueue("alice", json!({"type": "hooked"})).await;
    let second = app.enqueue("alice", json!({"type": "hooked"})).await;
    // With the hook awaited inline, the one slot stays busy and the second job never runs.
    for row in [&first, &second] {
        app.wait_job(row["id"].as_str().unwrap(), |j| j["status"] == "failed").await;
    }
    let mut hooks = 0;
    while hooks < 2 {
        if handler.next_call().await.body.contains("\"job.failed\"") {
            hooks += 1;
        }
    }
    let started = Instant::now();
    app.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(9), "shutdown took {:?} with hooks hanging", started.elapsed());
}

#[tokio::test]
async fn pattern_filters_past_the_per_socket_budget_are_refused_until_a_channel_leaves() {
    let app = spawn_app_with(limits(|_| {})).await;
    public_notes(&app).await;
    let pattern = |i: usize| json!({"event": "*", "schema": "public", "table": "notes", "filter": format!("v=like.%{i}%")});
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("full", json!((0..16).map(pattern).collect::<Vec<_>>()), None).await;
    assert_eq!(c.join("over", json!([pattern(16)]), None).await["status"], "ok");
    let sys = c.recv_event("realtime:over", "system").await.payload;
    assert!(sys["message"].as_str().unwrap().ends_with("too many pattern filters on one connection. Maximum 16"), "{sys}");
    let r = c.make_ref();
    c.send(Some(&r), &r, "realtime:full", "phx_leave", json!({})).await;
    c.subscribe("after", json!([pattern(17)]), None).await;
    // Another socket has its own budget.
    let mut other = Client::v2(&app, &app.anon()).await;
    other.subscribe("mine", json!([pattern(1)]), None).await;
}

#[tokio::test]
async fn a_join_with_more_bindings_than_the_cap_is_refused_and_the_socket_carries_on() {
    let app = spawn_app_with(limits(|_| {})).await;
    public_notes(&app).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let many = vec![json!({"event": "*", "schema": "public", "table": "notes"}); 101];
    let reply = c.join("many", json!(many), None).await;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "TooManyBindings: at most 100 postgres_changes bindings per channel, got 101"}})
    );
    c.subscribe("few", json!([{"event": "*", "schema": "public", "table": "notes"}]), None).await;
}
