//! Rolling deploys lose nothing (`realtime::handoff`): a channel closed by a
//! draining gateway rejoins another gateway, one running all along or one
//! started after the drain, and first gets the changes committed while it
//! was away (row changes and broadcasts sent from SQL), then live ones,
//! while a writer keeps committing. Raw frames
//! here; `tests/js/rolling.test.mjs` does the same with supabase-js behind
//! a balancer, and `tests/js/handoff_overflow.test.mjs` shows supabase-js
//! hearing `CHANNEL_ERROR` when more was missed than a replay holds.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::harness::{eventually, fresh_database, Client, Frame, GatewayProcess, TestApp};

/// Commits a row for alice and one for bob, numbered 1, 2, ..., every few milliseconds.
struct Writer {
    written: Arc<AtomicI64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(pool: PgPool) -> Writer {
        let (written, stop) = (Arc::new(AtomicI64::new(0)), CancellationToken::new());
        let (w, s) = (Arc::clone(&written), stop.clone());
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            for n in 1.. {
                // Paces the load; nothing waits on it for correctness.
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = pace.tick() => {}
                }
                sqlx::query("insert into public.notes (user_id, n) values ('alice', $1), ('bob', $1)")
                    .bind(n as i32)
                    .execute(&pool)
                    .await
                    .expect("the writer's insert");
                w.store(n, Ordering::SeqCst);
            }
        });
        Writer { written, stop, task }
    }

    fn written(&self) -> i64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until `more` rows past the current count are committed.
    async fn wait_for_more(&self, more: i64) {
        let target = self.written() + more;
        eventually(|| async {
            let now = self.written();
            if now >= target {
                Ok(())
            } else {
                Err(format!("{now} of {target} rows written"))
            }
        })
        .await;
    }

    /// Stops, and returns the number of the last row committed.
    async fn stop(self) -> i64 {
        self.stop.cancel();
        let written = Arc::clone(&self.written);
        self.task.await.expect("the writer task");
        written.load(Ordering::SeqCst)
    }
}

/// The `n` of each `postgres_changes` frame on `topic`, checking each row is alice's.
fn numbers(frames: &[Frame], topic: &str) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f.topic == topic && f.event == "postgres_changes")
        .map(|f| {
            let record = &f.payload["data"]["record"];
            assert_eq!(record["user_id"], "alice", "only alice's rows reach alice's channel: {record}");
            record["n"].as_i64().expect("n")
        })
        .collect()
}

/// Reads `topic`'s changes until row `last` arrives; returns their numbers.
async fn numbers_until(c: &mut Client, name: &str, last: i64) -> Vec<i64> {
    frames_until(c, name, last).await.0
}

/// Reads until row `last` arrives on `topic`: the rows' numbers, and the
/// events of the broadcasts that came meanwhile.
async fn frames_until(c: &mut Client, name: &str, last: i64) -> (Vec<i64>, Vec<String>) {
    let topic = format!("realtime:{name}");
    let (mut seen, mut broadcasts) = (Vec::new(), Vec::new());
    loop {
        let f = c.recv().await;
        if f.topic == topic && f.event == "broadcast" {
            broadcasts.push(f.payload["event"].as_str().unwrap_or_default().to_owned());
        }
        seen.extend(numbers(&[f], &topic));
        if seen.last() == Some(&last) {
            return (seen, broadcasts);
        }
    }
}

fn bindings() -> Value {
    json!([{"event": "INSERT", "schema": "public", "table": "notes"}])
}

/// Connects to `app` and rejoins `name` as alice, as supabase-js does after a close.
async fn rejoin(app: &TestApp, name: &str, token: &str) -> Client {
    let mut c = Client::v2(app, &app.anon()).await;
    let reply = c.join(name, bindings(), Some(token)).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    c
}

/// Two gateways on a fresh database with `notes` enabled, alice's token,
/// and a client on the first subscribed to `a` as alice.
async fn two_nodes_with_alice_on_a() -> (GatewayProcess, GatewayProcess, String, Client) {
    let db = fresh_database().await;
    let env = [("ROWCAST_POLL_MS", "200")];
    let node1 = GatewayProcess::spawn(&db, &env).await;
    let node2 = GatewayProcess::spawn(&db, &env).await;
    node1.app.owned_table("notes").await;
    let alice = node1.app.user("alice");
    let mut a = Client::v2(&node1.app, &node1.app.anon()).await;
    a.subscribe("a", bindings(), Some(&alice)).await;
    (node1, node2, alice, a)
}

/// `rowcast_deliveries_total{kind="handoff_replay"}` of `app`.
async fn replayed(app: &TestApp) -> u64 {
    let (_, text) = app.get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("rowcast_deliveries_total{kind=\"handoff_replay\"} "))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

#[tokio::test]
async fn channels_closed_by_a_draining_gateway_rejoin_elsewhere_and_miss_no_committed_change() {
    let db = fresh_database().await;
    let env = [("ROWCAST_POLL_MS", "200")];
    let mut node1 = GatewayProcess::spawn(&db, &env).await;
    let node2 = GatewayProcess::spawn(&db, &env).await;
    node1.app.owned_table("notes").await;
    let alice = node1.app.user("alice");
    // `a` moves to a gateway that runs all along, `b` to one started after the drain.
    let mut a = Client::v2(&node1.app, &node1.app.anon()).await;
    let mut b = Client::v2(&node1.app, &node1.app.anon()).await;
    a.subscribe("a", bindings(), Some(&alice)).await;
    b.subscribe("b", bindings(), Some(&alice)).await;
    let writer = Writer::start(node1.app.pool.clone());
    let mut seen_a = numbers_until(&mut a, "a", 10).await;
    let mut seen_b = numbers_until(&mut b, "b", 10).await;

    node1.terminate();
    seen_a.extend(numbers(&a.told_to_reconnect(&["realtime:a"]).await, "realtime:a"));
    seen_b.extend(numbers(&b.told_to_reconnect(&["realtime:b"]).await, "realtime:b"));
    // Committed while both are away, with a broadcast from SQL to each topic.
    writer.wait_for_more(15).await;
    node1.app.sql("select realtime.send('{}', 'sent-while-away', 'a', false), realtime.send('{}', 'sent-while-away', 'b', false)").await;
    writer.wait_for_more(15).await;
    let mut a = rejoin(&node2.app, "a", &alice).await;
    node1.exited().await;
    let node3 = GatewayProcess::spawn(&db, &env).await;
    writer.wait_for_more(10).await;
    let mut b = rejoin(&node3.app, "b", &alice).await;
    writer.wait_for_more(30).await;
    let last = writer.stop().await;
    let (after_a, broadcasts_a) = frames_until(&mut a, "a", last).await;
    let (after_b, broadcasts_b) = frames_until(&mut b, "b", last).await;
    seen_a.extend(after_a);
    seen_b.extend(after_b);
    assert_eq!((broadcasts_a, broadcasts_b), (vec!["sent-while-away".to_owned()], vec!["sent-while-away".to_owned()]));

    let all: BTreeSet<i64> = (1..=last).collect();
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let got: BTreeSet<i64> = seen.iter().copied().collect();
        let missing: Vec<_> = all.difference(&got).collect();
        assert!(missing.is_empty(), "{name} missed rows {missing:?} of 1..={last}");
        println!("{name}: {} rows, {} frames ({} duplicates)", last, seen.len(), seen.len() as i64 - last);
    }
    assert!(replayed(&node2.app).await > 0, "node2 replayed a's missed changes");
    assert!(replayed(&node3.app).await > 0, "node3, started after the drain, replayed b's from the log");
}

#[tokio::test]
async fn a_rejoin_by_another_token_or_with_other_bindings_replays_nothing() {
    let (node1, node2, alice, mut a) = two_nodes_with_alice_on_a().await;
    let mut probe = Client::v2(&node2.app, &node2.app.anon()).await;
    probe.subscribe("probe", bindings(), Some(&alice)).await;
    node1.terminate();
    a.told_to_reconnect(&["realtime:a"]).await;
    node1.app.sql("insert into public.notes (user_id, n) values ('alice', 1)").await;
    // node2 has delivered it: a join from now on can only get it by replay.
    probe.change("probe").await;
    // Alice again but another token, and alice's token with other bindings: neither is the channel that left.
    let other_token = node1.app.minter.mint(Some("alice"), "authenticated", 7200);
    assert_ne!(other_token, alice);
    let mut by_other_token = Client::v2(&node2.app, &node2.app.anon()).await;
    assert_eq!(by_other_token.join("a", bindings(), Some(&other_token)).await["status"], "ok");
    let mut other_bindings = Client::v2(&node2.app, &node2.app.anon()).await;
    let inserts_and_updates = json!([{"event": "*", "schema": "public", "table": "notes"}]);
    assert_eq!(other_bindings.join("a", inserts_and_updates, Some(&alice)).await["status"], "ok");
    for c in [&mut by_other_token, &mut other_bindings] {
        let queued = c.frames_until_heartbeat().await;
        assert!(queued.iter().all(|f| f.event != "postgres_changes"), "{queued:?}");
    }
    assert_eq!(replayed(&node2.app).await, 0);
}

/// Runs a supabase-js rolling-deploy suite against two gateways on a fresh
/// database: the suite sends the first one SIGTERM, which must then exit.
async fn rolling_suite(file: &str) {
    let db = fresh_database().await;
    let env = [("ROWCAST_POLL_MS", "200")];
    let mut node1 = GatewayProcess::spawn(&db, &env).await;
    let node2 = GatewayProcess::spawn(&db, &env).await;
    let pid = node1.child.id().expect("running").to_string();
    let node1_url = format!("http://{}", node1.app.addr);
    let suite_env = [("ROWCAST_NODE1_URL", node1_url.as_str()), ("ROWCAST_NODE1_PID", pid.as_str())];
    crate::interop::run_node_suite_with(&node2.app, file, &suite_env).await;
    node1.exited().await;
}

#[tokio::test]
async fn supabase_js_behind_a_balancer_loses_no_committed_change_when_its_gateway_is_deployed() {
    rolling_suite("rolling.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_hears_channel_error_and_rejoins_live_when_it_missed_more_than_a_replay_holds() {
    rolling_suite("handoff_overflow.test.mjs").await;
}

#[tokio::test]
async fn a_replay_longer_than_the_outgoing_queue_goes_out_whole_at_the_clients_pace() {
    let db = fresh_database().await;
    let node1 = GatewayProcess::spawn(&db, &[("ROWCAST_POLL_MS", "200")]).await;
    let node2 = GatewayProcess::spawn(&db, &[("ROWCAST_POLL_MS", "200"), ("ROWCAST_OUTGOING_QUEUE", "16")]).await;
    node1.app.owned_table("notes").await;
    let alice = node1.app.user("alice");
    let mut a = Client::v2(&node1.app, &node1.app.anon()).await;
    a.subscribe("a", bindings(), Some(&alice)).await;
    let mut probe = Client::v2(&node2.app, &node2.app.anon()).await;
    let last_only = json!([{"event": "INSERT", "schema": "public", "table": "notes", "filter": "n=eq.200"}]);
    probe.subscribe("probe", last_only, Some(&alice)).await;
    node1.terminate();
    a.told_to_reconnect(&["realtime:a"]).await;
    // 200 changes in one commit while away: twelve times what node2 queues for one socket.
    node1.app.sql("insert into public.notes (user_id, n) select 'alice', n from generate_series(1, 200) n").await;
    // node2 delivered all of them (they come in id order): the rejoin can only get them by replay.
    probe.change("probe").await;
    let mut a = rejoin(&node2.app, "a", &alice).await;
    let seen = numbers_until(&mut a, "a", 200).await;
    assert_eq!(seen, (1..=200).collect::<Vec<_>>(), "every missed row, once, in order");
    a.heartbeat().await;
}

/// A counter of `app`'s `/metrics`.
async fn counter(app: &TestApp, name: &str) -> u64 {
    let (_, text) = app.get("/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0, |v| v.trim().parse().expect("a counter"))
}

#[tokio::test]
async fn channels_rejoining_at_once_a_node_started_after_the_drain_share_a_few_log_reads_and_each_gets_its_rows() {
    const CHANNELS: usize = 30;
    let db = fresh_database().await;
    let env = [("ROWCAST_POLL_MS", "200")];
    let mut node1 = GatewayProcess::spawn(&db, &env).await;
    node1.app.owned_table("notes").await;
    let alice = node1.app.user("alice");
    let mut clients = Vec::new();
    for i in 0..CHANNELS {
        let mut c = Client::v2(&node1.app, &node1.app.anon()).await;
        c.subscribe(&format!("c{i}"), bindings(), Some(&alice)).await;
        clients.push(c);
    }
    node1.terminate();
    for (i, c) in clients.iter_mut().enumerate() {
        c.told_to_reconnect(&[&format!("realtime:c{i}")]).await;
    }
    node1.app.sql("insert into public.notes (user_id, n) select 'alice', n from generate_series(1, 20) n").await;
    node1.exited().await;
    // Started after the note: nothing it delivered is older than the note, so every replay reads the log.
    let node2 = GatewayProcess::spawn(&db, &env).await;
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        clients.push(Client::v2(&node2.app, &node2.app.anon()).await);
    }
    let rejoins = clients.iter_mut().enumerate().map(|(i, c)| {
        let alice = &alice;
        async move {
            let name = format!("c{i}");
            assert_eq!(c.join(&name, bindings(), Some(alice)).await["status"], "ok");
            numbers_until(c, &name, 20).await
        }
    });
    for seen in futures_util::future::join_all(rejoins).await {
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    }
    let reads = counter(&node2.app, "rowcast_handoff_log_reads_total").await;
    println!("{CHANNELS} channels resumed with {reads} log reads");
    assert!((1..=CHANNELS as u64 / 2).contains(&reads), "{reads} log reads for {CHANNELS} channels rejoining at once");
}

#[tokio::test]
async fn a_change_still_uncommitted_at_the_drain_is_replayed_and_what_was_delivered_after_it_is_not() {
    let (node1, node2, alice, mut a) = two_nodes_with_alice_on_a().await;
    // A long transaction takes a change id and stays open across the drain.
    let mut long = node1.app.pool.begin().await.unwrap();
    sqlx::query("insert into public.notes (user_id, n) values ('alice', 100)").execute(&mut *long).await.unwrap();
    node1.app.sql("insert into public.notes (user_id, n) select 'alice', n from generate_series(1, 5) n").await;
    // Delivered past the open id once it has waited a second.
    assert_eq!(numbers_until(&mut a, "a", 5).await, vec![1, 2, 3, 4, 5]);
    node1.terminate();
    a.told_to_reconnect(&["realtime:a"]).await;
    long.commit().await.unwrap();
    node1.app.sql("insert into public.notes (user_id, n) select 'alice', n from generate_series(6, 10) n").await;
    let mut a = rejoin(&node2.app, "a", &alice).await;
    let mut seen = Vec::new();
    while !(seen.contains(&100) && seen.contains(&10)) {
        seen.extend(numbers(&[a.recv_event("realtime:a", "postgres_changes").await], "realtime:a"));
    }
    seen.extend(numbers(&a.frames_until_heartbeat().await, "realtime:a"));
    seen.sort_unstable();
    assert_eq!(seen, vec![6, 7, 8, 9, 10, 100], "the late row and the ones after the drain, once; not 1-5 again");
}

#[tokio::test]
async fn a_channel_that_missed_more_than_one_log_read_holds_gets_phx_error_then_rejoins_live_instead_of_part_of_its_rows() {
    let db = fresh_database().await;
    let env = [("ROWCAST_POLL_MS", "200")];
    let mut node1 = GatewayProcess::spawn(&db, &env).await;
    node1.app.owned_table("notes").await;
    let alice = node1.app.user("alice");
    let mut a = Client::v2(&node1.app, &node1.app.anon()).await;
    a.subscribe("a", bindings(), Some(&alice)).await;
    node1.terminate();
    a.told_to_reconnect(&["realtime:a"]).await;
    // While away: more rows than one log read holds (`READ_SINCE_LIMIT`, 10,000).
    node1.app.sql("insert into public.notes (user_id, n) select 'alice', n from generate_series(1, 10050) n").await;
    node1.exited().await;
    // Started after the note: what the channel missed can only come from the log.
    let node2 = GatewayProcess::spawn(&db, &env).await;
    let mut a = Client::v2(&node2.app, &node2.app.anon()).await;
    assert_eq!(a.join("a", bindings(), Some(&alice)).await["status"], "ok");
    let mut before = Vec::new();
    let error = loop {
        let f = a.recv().await;
        if f.topic == "realtime:a" && f.event == "phx_error" {
            break f;
        }
        before.push(f);
    };
    // The contract's shape: `[join_ref, join_ref, topic, "phx_error", {}]`.
    assert!(error.join_ref.is_string() && error.msg_ref == error.join_ref && error.payload == json!({}), "{error:?}");
    assert_eq!(numbers(&before, "realtime:a"), Vec::<i64>::new(), "no part of the replay before the error");
    // supabase-js rejoins after CHANNEL_ERROR: the channel is live, with no replay and no second error.
    assert_eq!(a.join("a", bindings(), Some(&alice)).await["status"], "ok");
    node2.app.sql("insert into public.notes (user_id, n) values ('alice', 20000)").await;
    let (seen, _) = frames_until(&mut a, "a", 20000).await;
    assert_eq!(seen, vec![20000]);
    let rest = a.frames_until_heartbeat().await;
    assert!(rest.iter().all(|f| f.event != "phx_error"), "{rest:?}");
}
