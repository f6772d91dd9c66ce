//! The broadcast REST API's answers: 202 and delivery (with `meta.id`), 401,
//! 415, 422 and 429, in Supabase's words.

use serde_json::{json, Value};

use crate::harness::{spawn_app, spawn_app_with, Client, TestApp};
use rowcast::config::Limits;

/// POSTs `body` with `content_type` and `token`; status and JSON body (null when empty).
async fn post(app: &TestApp, path: &str, token: &str, content_type: &str, body: String) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/realtime/v1/api/broadcast{path}", app.addr))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_batch_is_accepted_with_202_and_delivered_with_its_id_in_meta() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    assert_eq!(c.join("room", json!([]), None).await["status"], "ok");
    let batch = json!({"messages": [{"topic": "room", "event": "step", "payload": {"n": 1}, "id": "m-1"}, {"topic": "elsewhere", "event": "x", "payload": {}}]});
    let (status, body) = post(&app, "", &app.anon(), "application/json", batch.to_string()).await;
    assert_eq!((status, body), (202, Value::Null));
    let f = c.recv_event("realtime:room", "broadcast").await;
    assert_eq!((f.join_ref, f.msg_ref), (Value::Null, Value::Null));
    assert_eq!(f.payload, json!({"type": "broadcast", "event": "step", "payload": {"n": 1}, "meta": {"id": "m-1"}}));
}

#[tokio::test]
async fn bad_tokens_bodies_and_content_types_get_supabases_refusals() {
    let app = spawn_app().await;
    let ok = json!({"messages": [{"topic": "r", "event": "e", "payload": {}}]}).to_string();
    assert_eq!(post(&app, "", "not-a-jwt", "application/json", ok).await, (401, json!({"message": "Unauthorized"})));
    let not_object = json!({"messages": [{"topic": "r", "event": "e", "payload": [1]}]}).to_string();
    assert_eq!(post(&app, "", &app.anon(), "application/json", not_object).await.0, 422);
    let (status, body) = post(&app, "/r/events/e", &app.anon(), "text/plain", "hi".into()).await;
    assert_eq!(status, 415);
    assert!(body["error"].as_str().unwrap().starts_with("Unsupported Media Type. Use application/json"), "{body}");
}

#[tokio::test]
async fn messages_past_the_per_ip_rate_get_429() {
    let app = spawn_app_with(Limits { max_broadcasts_per_second: 2, poll_ms: 200, ..Limits::default() }).await;
    let three = json!({"messages": vec![json!({"topic": "r", "event": "e", "payload": {}}); 3]}).to_string();
    assert_eq!(
        post(&app, "", &app.anon(), "application/json", three).await,
        (429, json!({"message": "You have exceeded your rate limit, please reduce the batch size"}))
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&app, "/r/events/e", &app.anon(), "application/json", "{}".into()).await);
    }
    assert_eq!(statuses[0].0, 202);
    assert_eq!(statuses[2], (429, json!({"message": "You have exceeded your rate limit"})), "{statuses:?}");
}
