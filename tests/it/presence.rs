//! Presence and broadcast limits over the raw protocol: Supabase's replies to
//! a bad track, its close past the presence budget or the payload limit, and
//! the frames `presence_state` and `presence_diff` travel in.

use serde_json::{json, Value};

use crate::harness::{spawn_app, spawn_app_with, Client, Frame};
use rowcast::config::Limits;

const TOPIC: &str = "realtime:room";

/// Sends a presence push on `TOPIC` as channel `join_ref`; returns the push's ref.
async fn presence(c: &mut Client, join_ref: &str, event: &str, payload: Value) -> String {
    let r = c.make_ref();
    c.send(Some(join_ref), &r, TOPIC, "presence", json!({"type": "presence", "event": event, "payload": payload})).await;
    r
}

/// Joins `TOPIC` with presence on under `key`; returns the join ref.
async fn join_present(c: &mut Client, key: &str) -> String {
    let r = c.make_ref();
    let config = json!({"config": {"presence": {"enabled": true, "key": key}, "postgres_changes": []}});
    c.send(Some(&r), &r, TOPIC, "phx_join", config).await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    r
}

/// The system message and phx_close of a channel Supabase shuts.
async fn shut_with(c: &mut Client, message: &str) {
    let sys = c.recv_event(TOPIC, "system").await;
    assert_eq!(sys.payload["message"], message, "{}", sys.payload);
    assert_eq!(sys.payload["status"], "error");
    c.recv_event(TOPIC, "phx_close").await;
}

#[tokio::test]
async fn a_track_whose_payload_is_not_a_map_gets_supabases_error_and_the_channel_stays() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let jr = join_present(&mut c, "ann").await;
    let r = presence(&mut c, &jr, "track", json!([1, 2])).await;
    assert_eq!(c.reply_to(&r).await, json!({"status": "error", "response": {"reason": "Presence track payload must be a map"}}));
    let r = presence(&mut c, &jr, "track", json!({"ok": true})).await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
}

#[tokio::test]
async fn presence_calls_past_the_burst_close_the_channel_with_supabases_message() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let jr = join_present(&mut c, "ann").await;
    for n in 0..5 {
        let r = presence(&mut c, &jr, "track", json!({ "n": n })).await;
        assert_eq!(c.reply_to(&r).await["status"], "ok", "call {n} is within the burst");
    }
    presence(&mut c, &jr, "track", json!({"n": 5})).await;
    shut_with(&mut c, "Client presence rate limit exceeded").await;
    c.heartbeat().await;
}

#[tokio::test]
async fn payloads_over_the_limit_close_a_presence_channel_and_refuse_an_acked_broadcast() {
    let app = spawn_app_with(Limits { max_payload_kb: 1, poll_ms: 200, ..Limits::default() }).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let r = c.make_ref();
    let config = json!({"config": {"broadcast": {"ack": true}, "presence": {"enabled": true, "key": "a"}, "postgres_changes": []}});
    c.send(Some(&r), &r, TOPIC, "phx_join", config).await;
    c.reply_to(&r).await;
    let big = "x".repeat(2_000);
    let b = c.make_ref();
    c.send(Some(&r), &b, TOPIC, "broadcast", json!({"type": "broadcast", "event": "e", "payload": {"big": big}})).await;
    assert_eq!(c.reply_to(&b).await, json!({"status": "error", "response": {"error": "payload_size_exceeded"}}));
    presence(&mut c, &r, "track", json!({ "big": big })).await;
    shut_with(&mut c, "Track message size exceeded").await;
}

/// The next frame with `event`, skipping others.
async fn next_event(c: &mut Client, event: &str) -> Frame {
    c.recv_event(TOPIC, event).await
}

#[tokio::test]
async fn state_carries_the_join_ref_and_diffs_come_fastlane_to_both_serializers() {
    let app = spawn_app().await;
    let mut v2 = Client::v2(&app, &app.anon()).await;
    let jr = join_present(&mut v2, "ann").await;
    let state = next_event(&mut v2, "presence_state").await;
    assert_eq!((state.join_ref, state.msg_ref, state.payload), (json!(jr), Value::Null, json!({})));
    let mut v1 = Client::connect(&app, &app.anon(), "1.0.0").await;
    join_present(&mut v1, "ben").await;
    next_event(&mut v1, "presence_state").await;

    let r = presence(&mut v2, &jr, "track", json!({"status": "here"})).await;
    v2.reply_to(&r).await;
    for c in [&mut v2, &mut v1] {
        let diff = next_event(c, "presence_diff").await;
        assert_eq!((&diff.join_ref, &diff.msg_ref), (&Value::Null, &Value::Null));
        let metas = &diff.payload["joins"]["ann"]["metas"];
        assert_eq!(metas[0]["status"], "here");
        assert!(metas[0]["phx_ref"].is_string(), "{}", diff.payload);
        assert_eq!(diff.payload["leaves"], json!({}));
    }
    drop(v2);
    let diff = next_event(&mut v1, "presence_diff").await;
    assert_eq!(diff.payload["leaves"]["ann"]["metas"][0]["status"], "here", "a closed socket leaves");
}

#[tokio::test]
async fn an_empty_presence_key_gets_a_generated_one() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let jr = join_present(&mut c, "").await;
    let r = presence(&mut c, &jr, "track", json!({"here": true})).await;
    c.reply_to(&r).await;
    let diff = next_event(&mut c, "presence_diff").await;
    let keys: Vec<&String> = diff.payload["joins"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 1);
    assert!(uuid::Uuid::parse_str(keys[0]).is_ok(), "a UUID key, got {keys:?}");
}
