//! Framing, replies, joins and leaves, as the Phoenix/Supabase clients expect them.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{spawn_app, Client};

#[tokio::test]
async fn heartbeats_are_answered_ok_with_the_same_ref_in_both_serializers() {
    let app = spawn_app().await;
    for vsn in ["1.0.0", "2.0.0"] {
        let mut c = Client::connect(&app, &app.anon(), vsn).await;
        c.send(None, "10", "phoenix", "heartbeat", json!({})).await;
        let f = c.recv().await;
        assert_eq!((f.topic.as_str(), f.event.as_str(), f.msg_ref.clone()), ("phoenix", "phx_reply", json!("10")));
        assert_eq!(f.payload, json!({"status": "ok", "response": {}}));
    }
}

#[tokio::test]
async fn a_join_reply_echoes_each_binding_verbatim_in_order_with_a_numeric_id() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let bindings = json!([
        {"event": "UPDATE", "schema": "public", "table": "todos", "filter": "n=gt.1"},
        {"event": "*", "schema": "public", "table": "todos"},
        {"event": "UPDATE", "schema": "public", "table": "todos", "filter": "n=gt.1"}
    ]);
    let reply = c.join("room", bindings.clone(), None).await;
    assert_eq!(reply["status"], "ok");
    let echoed = reply["response"]["postgres_changes"].as_array().unwrap();
    assert_eq!(echoed.len(), 3);
    for (echo, sent) in echoed.iter().zip(bindings.as_array().unwrap()) {
        for (k, v) in sent.as_object().unwrap() {
            assert_eq!(&echo[k], v);
        }
        assert!(echo["id"].is_u64(), "id must be a JSON number: {echo}");
    }
    assert_eq!(echoed[0]["id"], echoed[2]["id"], "identical bindings share an id");
    assert_ne!(echoed[0]["id"], echoed[1]["id"]);
}

#[tokio::test]
async fn the_join_reply_echoes_refs_and_v1_frames_omit_join_ref() {
    let app = spawn_app().await;
    let mut c = Client::connect(&app, &app.anon(), "1.0.0").await;
    c.send(Some("6"), "6", "realtime:any", "phx_join", json!({"config": {"postgres_changes": []}})).await;
    let f = c.recv().await;
    assert_eq!((f.event.as_str(), f.msg_ref.clone()), ("phx_reply", json!("6")));
    assert_eq!(f.payload, json!({"status": "ok", "response": {"postgres_changes": []}}));
    let mut c = Client::v2(&app, &app.anon()).await;
    c.send(Some("6"), "6", "realtime:any", "phx_join", json!({"config": {"postgres_changes": []}})).await;
    let f = c.recv().await;
    assert_eq!((f.join_ref.clone(), f.msg_ref.clone()), (json!("6"), json!("6")));
}

#[tokio::test]
async fn a_second_join_of_a_topic_closes_the_first_with_its_join_ref() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.send(Some("6"), "6", "realtime:dup", "phx_join", json!({"config": {}})).await;
    assert_eq!(c.recv().await.payload["status"], "ok");
    c.send(Some("8"), "8", "realtime:dup", "phx_join", json!({"config": {}})).await;
    let close = c.recv().await;
    assert_eq!((close.event.as_str(), close.join_ref.clone(), close.msg_ref.clone()), ("phx_close", json!("6"), json!("6")));
    let reply = c.recv().await;
    assert_eq!((reply.event.as_str(), reply.msg_ref.clone()), ("phx_reply", json!("8")));
    assert_eq!(reply.payload["status"], "ok");
}

#[tokio::test]
async fn leaving_a_channel_replies_ok_and_stops_its_changes() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let service = app.token(None, "service_role");
    c.subscribe("a", json!([{"event": "*", "schema": "public", "table": "todos"}]), Some(&service)).await;
    c.subscribe("b", json!([{"event": "*", "schema": "public", "table": "todos"}]), Some(&service)).await;
    c.send(Some("99"), "100", "realtime:a", "phx_leave", json!({})).await;
    let reply = c.recv_event("realtime:a", "phx_reply").await;
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    app.sql("insert into todos (user_id, title) values ('u1', 'x')").await;
    let f = c.recv().await;
    assert_eq!((f.topic.as_str(), f.event.as_str()), ("realtime:b", "postgres_changes"), "only the joined channel gets the change");
    // Both channels' frames for one change are queued together: anything for `a` is here by now.
    let rest = c.frames_until_heartbeat().await;
    assert!(rest.iter().all(|f| f.topic != "realtime:a"), "the left channel got {rest:?}");
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_the_socket_stays_healthy() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    for bad in ["not json", "{\"topic\":1}", "[null,\"1\",\"phoenix\",\"heartbeat\"]", "[null,\"1\",5,\"x\",{}]", "[]"] {
        c.send_raw(Message::Text(bad.into())).await;
    }
    for bad in [vec![9u8, 1, 2], vec![3, 200, 200, 200, 200, 0, 1], vec![]] {
        c.send_raw(Message::Binary(bad.into())).await;
    }
    c.heartbeat().await;
}

#[tokio::test]
async fn a_ping_is_answered_with_a_pong_carrying_its_payload_in_order_with_replies() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.send_raw(Message::Ping(b"are you there".to_vec().into())).await;
    assert_eq!(c.pong().await, b"are you there");
    c.heartbeat().await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.heartbeat().await;
    let answer = c.close_and_wait(1000).await;
    assert_eq!(answer.map(|(code, _)| code), Some(1000));
}

#[tokio::test]
async fn a_binary_broadcast_push_is_decoded_and_delivered_to_other_members() {
    let app = spawn_app().await;
    let mut sender = Client::v2(&app, &app.anon()).await;
    let mut receiver = Client::v2(&app, &app.anon()).await;
    assert_eq!(sender.join("room1", json!([]), None).await["status"], "ok");
    assert_eq!(receiver.join("room1", json!([]), None).await["status"], "ok");
    let join_ref = "2";
    let mut frame = vec![3, join_ref.len() as u8, 1, 14, 6, 0, 1];
    frame.extend_from_slice(format!("{join_ref}7realtime:room1cursor{{\"x\":1}}").as_bytes());
    sender.send_raw(Message::Binary(frame.into())).await;
    let f = receiver.recv_event("realtime:room1", "broadcast").await;
    assert_eq!(f.payload, json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}}));
    sender.heartbeat().await;
}

#[tokio::test]
async fn pushes_to_a_topic_not_joined_get_unmatched_topic() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.send(Some("1"), "2", "realtime:nowhere", "access_token", json!({"access_token": "x"})).await;
    let f = c.recv().await;
    assert_eq!(f.payload, json!({"status": "error", "response": {"reason": "unmatched topic"}}));
    c.send(Some("3"), "3", "elsewhere", "phx_join", json!({})).await;
    assert_eq!(c.recv().await.payload["response"]["reason"], "unmatched topic");
    c.send(Some("4"), "4", "realtime:", "phx_join", json!({})).await;
    assert_eq!(c.recv().await.payload["response"]["reason"], "TopicNameRequired: You must provide a topic name");
}

#[tokio::test]
async fn health_is_ok_when_the_database_and_listener_are_live() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"listener\":true"));
    app.shutdown().await;
}
