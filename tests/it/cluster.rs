//! Many gateways on one database (migration 0010): a client on one gateway
//! hears broadcasts sent on another (by a client, the REST API or SQL) and
//! sees the presence of members on the others, and a gateway killed without
//! a word drops out of everyone's presence after the presence timeout.
//! Postgres is the only thing between them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{fresh_database, spawn_on, Client, Frame, GatewayProcess};
use rowcast::config::Limits;

const TOPIC: &str = "realtime:room";

fn limits(presence_timeout_secs: u64) -> Limits {
    Limits { poll_ms: 200, presence_timeout_secs, ..Limits::default() }
}

/// Joins `TOPIC` with presence on under `key` (broadcast `self` off); returns the join ref.
async fn join_room(c: &mut Client, key: &str) -> String {
    let r = c.make_ref();
    let config = json!({"config": {"broadcast": {"self": false}, "presence": {"enabled": true, "key": key}, "postgres_changes": []}});
    c.send(Some(&r), &r, TOPIC, "phx_join", config).await;
    let reply = c.reply_to(&r).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    r
}

async fn track(c: &mut Client, join_ref: &str, payload: Value) {
    let r = c.make_ref();
    c.send(Some(join_ref), &r, TOPIC, "presence", json!({"type": "presence", "event": "track", "payload": payload})).await;
}

async fn send_broadcast(c: &mut Client, join_ref: &str, event: &str, payload: Value) {
    let r = c.make_ref();
    c.send(Some(join_ref), &r, TOPIC, "broadcast", json!({"type": "broadcast", "event": event, "payload": payload})).await;
}

/// The next broadcast with `event`, or `None` if none comes within `wait`.
async fn broadcast_within(c: &mut Client, event: &str, wait: Duration) -> Option<Frame> {
    tokio::time::timeout(wait, async {
        loop {
            let f = c.recv_event(TOPIC, "broadcast").await;
            if f.payload["event"] == event {
                return f;
            }
        }
    })
    .await
    .ok()
}

/// The next `presence_diff` that joins or leaves (`side`) `key`.
async fn diff_naming(c: &mut Client, side: &str, key: &str) -> Frame {
    loop {
        let f = c.recv_event(TOPIC, "presence_diff").await;
        if f.payload[side].get(key).is_some() {
            return f;
        }
    }
}

#[tokio::test]
async fn a_client_on_one_gateway_hears_broadcasts_sent_on_another_by_a_client_the_rest_api_and_sql() {
    let db = fresh_database().await;
    let one = spawn_on(&db, limits(15), "", false).await;
    let two = spawn_on(&db, limits(15), "", false).await;
    let mut a = Client::v2(&one, &one.anon()).await;
    join_room(&mut a, "a").await;
    let mut b = Client::v2(&two, &two.anon()).await;
    let b_ref = join_room(&mut b, "b").await;

    // A client's broadcast on gateway two. Gateway two starts publishing once it has read
    // gateway one's heartbeat, so the first few may stay on two: send until one arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let heard = loop {
        assert!(Instant::now() < deadline, "no broadcast from gateway two reached gateway one within 20 s");
        send_broadcast(&mut b, &b_ref, "ping", json!({"from": "b"})).await;
        if let Some(f) = broadcast_within(&mut a, "ping", Duration::from_millis(500)).await {
            break f;
        }
    };
    assert_eq!(heard.payload, json!({"type": "broadcast", "event": "ping", "payload": {"from": "b"}}));

    // The REST API of gateway two.
    let service = two.token(None, "service_role");
    let (status, body) = two
        .post("/realtime/v1/api/broadcast", &service, json!({"messages": [{"topic": "room", "event": "rest", "payload": {"n": 1}}]}))
        .await;
    assert_eq!(status, 202, "{body}");
    let f = broadcast_within(&mut a, "rest", Duration::from_secs(10)).await.expect("the REST broadcast reaches gateway one");
    assert_eq!(f.payload["payload"], json!({"n": 1}));

    // SQL: every gateway reads it from the log, each exactly once.
    two.sql("select realtime.send('{\"n\": 2}', 'sql', 'room', false)").await;
    assert!(broadcast_within(&mut a, "sql", Duration::from_secs(10)).await.is_some());
    assert!(broadcast_within(&mut b, "sql", Duration::from_secs(10)).await.is_some());

    // A gateway skips its own broadcasts in the log: a client on gateway one gets a REST
    // broadcast posted to gateway one once, even after the log row for the others is read
    // (the SQL broadcast after it comes through the log later, in order).
    let (status, _) =
        one.post("/realtime/v1/api/broadcast", &service, json!({"messages": [{"topic": "room", "event": "once", "payload": {}}]})).await;
    assert_eq!(status, 202);
    assert!(broadcast_within(&mut a, "once", Duration::from_secs(10)).await.is_some());
    crate::harness::eventually(|| async {
        let rows: i64 = crate::harness::scalar(
            &one.pool,
            "select count(*) from rowcast.changes where table_name = 'broadcast' and record->>'payload' like '%\"once\"%'",
        )
        .await;
        if rows == 1 {
            Ok(())
        } else {
            Err(format!("{rows} log rows for the broadcast"))
        }
    })
    .await;
    one.sql("select realtime.send('{}', 'after', 'room', false)").await;
    let mut again = 0;
    loop {
        let f = a.recv_event(TOPIC, "broadcast").await;
        match f.payload["event"].as_str() {
            Some("after") => break,
            Some("once") => again += 1,
            _ => {}
        }
    }
    assert_eq!(again, 0, "gateway one delivered its own broadcast a second time from the log");
}

#[tokio::test]
async fn presence_on_one_gateway_is_listed_on_another_and_a_killed_gateways_members_leave_after_the_timeout() {
    let db = fresh_database().await;
    let one = spawn_on(&db, limits(3), "", false).await;
    let mut two = GatewayProcess::spawn(&db, &[("ROWCAST_PRESENCE_TIMEOUT_SECS", "3")]).await;
    let mut a = Client::v2(&one, &one.anon()).await;
    let a_ref = join_room(&mut a, "ann").await;
    a.recv_event(TOPIC, "presence_state").await;

    // Ben tracks on gateway two; Ann, on gateway one, sees him join.
    let mut b = Client::v2(&two.app, &two.app.anon()).await;
    let b_ref = join_room(&mut b, "ben").await;
    track(&mut b, &b_ref, json!({"status": "here"})).await;
    let joined = diff_naming(&mut a, "joins", "ben").await;
    assert_eq!(joined.payload["joins"]["ben"]["metas"][0]["status"], "here");

    // Ann tracks on gateway one; Ben sees her.
    track(&mut a, &a_ref, json!({"status": "reading"})).await;
    let joined = diff_naming(&mut b, "joins", "ann").await;
    assert_eq!(joined.payload["joins"]["ann"]["metas"][0]["status"], "reading");

    // A later joiner on gateway one gets both in its state.
    let mut c = Client::v2(&one, &one.anon()).await;
    join_room(&mut c, "cy").await;
    let state = c.recv_event(TOPIC, "presence_state").await.payload;
    assert_eq!(state["ben"]["metas"][0]["status"], "here", "{state}");
    assert_eq!(state["ann"]["metas"][0]["status"], "reading", "{state}");

    // Gateway two dies without a word: Ben leaves Ann's list after the 3 s timeout.
    let killed = Instant::now();
    two.kill();
    let left = diff_naming(&mut a, "leaves", "ben").await;
    let took = killed.elapsed();
    assert_eq!(left.payload["leaves"]["ben"]["metas"][0]["status"], "here");
    eprintln!("ben left {} ms after his gateway was killed (timeout 3 s)", took.as_millis());
    assert!(took >= Duration::from_secs(2), "left before the timeout could have passed: {took:?}");
    let state_after = {
        let mut d = Client::v2(&one, &one.anon()).await;
        join_room(&mut d, "dee").await;
        d.recv_event(TOPIC, "presence_state").await.payload
    };
    assert!(state_after.get("ben").is_none(), "{state_after}");
    assert_eq!(state_after["ann"]["metas"][0]["status"], "reading");
}
