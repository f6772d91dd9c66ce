//! Per-connection limits: channels, joins per second, frame size, slow
//! consumers, idle sockets. Each is refused in Supabase's terms and leaves
//! other clients untouched.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{spawn_app_with, Client};
use rowcast::config::Limits;

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits { poll_ms: 200, ..Limits::default() };
    f(&mut l);
    l
}

#[tokio::test]
async fn joining_more_channels_than_allowed_is_refused_with_supabase_reason() {
    let app = spawn_app_with(limits(|l| l.max_channels_per_client = 2)).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    assert_eq!(c.join("a", json!([]), None).await["status"], "ok");
    assert_eq!(c.join("b", json!([]), None).await["status"], "ok");
    let reply = c.join("c", json!([]), None).await;
    assert_eq!(reply, json!({"status": "error", "response": {"reason": "ChannelRateLimitReached: Too many channels"}}));
    c.heartbeat().await;
}

#[tokio::test]
async fn too_many_joins_per_second_are_refused_and_the_socket_is_closed() {
    let app = spawn_app_with(limits(|l| l.max_joins_per_second = 3)).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let mut bystander = Client::v2(&app, &app.anon()).await;
    for i in 0..10 {
        let r = c.make_ref();
        c.send(Some(&r), &r, &format!("realtime:r{i}"), "phx_join", json!({"config": {}})).await;
    }
    let mut refused = None;
    let close = loop {
        match c.next().await {
            Ok(f) if f.payload["status"] == "error" => refused = Some(f.payload["response"]["reason"].clone()),
            Ok(_) => {}
            Err(crate::harness::Ended::Closed(close)) => break close,
        }
    };
    assert_eq!(refused, Some(json!("ClientJoinRateLimitReached: Too many joins per second")));
    assert_eq!(close.map(|c| c.0), Some(1001));
    bystander.heartbeat().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_that_socket_with_1009_and_no_other() {
    let app = spawn_app_with(limits(|l| l.max_frame_bytes = 64 * 1024)).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let mut bystander = Client::v2(&app, &app.anon()).await;
    let big = format!("[null,\"1\",\"phoenix\",\"heartbeat\",{{\"pad\":\"{}\"}}]", "x".repeat(100 * 1024));
    c.send_raw(Message::Text(big.into())).await;
    let (code, reason) = c.closed().await.expect("a close frame");
    assert_eq!(code, 1009);
    assert!(reason.contains("65536 bytes"), "{reason}");
    bystander.heartbeat().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let app = spawn_app_with(limits(|l| l.outgoing_queue = 16)).await;
    app.owned_table("todos").await;
    let mut slow = Client::v2(&app, &app.anon()).await;
    let mut fine = Client::v2(&app, &app.anon()).await;
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": "todos"}]);
    slow.subscribe("s", bindings.clone(), Some(&app.user("u"))).await;
    fine.subscribe("s", bindings, Some(&app.user("u"))).await;
    // 50 batches of 8 rows of 100 kB: `fine` drains each batch (under its queue of 16),
    // `slow` reads nothing, so its socket buffers and then its queue fill up.
    for _ in 0..50 {
        app.sql("insert into todos (user_id, title) select 'u', repeat('x', 100000) from generate_series(1, 8)").await;
        for _ in 0..8 {
            fine.change("s").await;
        }
    }
    let (code, reason) = slow.closed().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1013, "slow consumer: outgoing queue full"));
    fine.heartbeat().await;
}

#[tokio::test]
async fn a_socket_silent_past_the_idle_timeout_is_closed() {
    let app = spawn_app_with(limits(|l| l.idle_timeout_secs = 1)).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let (code, reason) = c.closed().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1000, "idle timeout: no frame received"));
}
