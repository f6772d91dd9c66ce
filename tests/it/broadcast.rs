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
    assert_eq!(body["error"], "Unsupported Media Type. Use application/json or application/octet-stream");
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

/// The events of the broadcasts on `realtime:room` that arrive before a broadcast named `until`, and that one.
async fn events_until(c: &mut Client, until: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let f = c.recv_event("realtime:room", "broadcast").await;
        let event = f.payload["event"].as_str().unwrap_or_default().to_owned();
        seen.push(event.clone());
        if event == until {
            return seen;
        }
    }
}

#[tokio::test]
async fn sql_broadcasts_arrive_after_commit_in_order_and_never_for_a_rollback() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let r = c.make_ref();
    let config = json!({"config": {"broadcast": {"replication_ready": true}, "postgres_changes": []}});
    c.send(Some(&r), &r, "realtime:room", "phx_join", config).await;
    let ready = c.recv_event("realtime:room", "system").await;
    assert_eq!(
        ready.payload,
        json!({"extension": "system", "status": "ok", "message": "Replication connection established", "channel": "room"})
    );

    let send = |event: &str| format!("select realtime.send('{{\"from\": \"sql\"}}'::jsonb, '{event}', 'room', false)");
    let mut open = app.pool.begin().await.unwrap();
    sqlx::query(&send("held")).execute(&mut *open).await.unwrap();
    app.sql(&send("first")).await;
    assert_eq!(events_until(&mut c, "first").await, ["first"], "nothing from the open transaction yet");
    open.commit().await.unwrap();
    let f = c.recv_event("realtime:room", "broadcast").await;
    assert_eq!(f.payload, json!({"type": "broadcast", "event": "held", "payload": {"from": "sql"}}));

    let mut doomed = app.pool.begin().await.unwrap();
    sqlx::query(&send("rolled back")).execute(&mut *doomed).await.unwrap();
    doomed.rollback().await.unwrap();
    app.sql(&send("after")).await;
    assert_eq!(events_until(&mut c, "after").await, ["after"]);
}

#[tokio::test]
async fn broadcast_changes_and_send_keep_supabases_names_shapes_and_private_default() {
    let app = spawn_app().await;
    app.sql(
        "create table public.items (id int primary key, title text);
         create function public.items_broadcast() returns trigger language plpgsql security definer as $$
         begin
             perform realtime.broadcast_changes('items:' || coalesce(new.id, old.id)::text, tg_op, tg_op,
                                                tg_table_name, tg_table_schema, new, old);
             return null;
         end $$;
         create trigger items_broadcast after insert or update or delete on public.items
             for each row execute function public.items_broadcast();
         insert into public.items values (7, 'seven');",
    )
    .await;
    let row: (String, String, bool, Value) =
        sqlx::query_as("select topic, event, private, payload from realtime.messages").fetch_one(&app.pool).await.unwrap();
    assert_eq!((row.0.as_str(), row.1.as_str(), row.2), ("items:7", "INSERT", true), "private unless asked otherwise");
    assert_eq!(
        row.3,
        json!({"old_record": null, "record": {"id": 7, "title": "seven"}, "operation": "INSERT", "table": "items", "schema": "public"})
    );
    let topic: Option<String> = sqlx::query_scalar("select realtime.topic()").fetch_one(&app.pool).await.unwrap();
    assert_eq!(topic, None, "no topic outside a send");
}

#[tokio::test]
async fn a_steps_broadcast_is_sent_once_even_when_a_retry_answers_the_stored_step_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let retry_calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = retry_calls.clone();
    let activity = json!({"step": {"id": "s1", "output": 1}, "broadcast": [{"topic": "room", "event": "activity", "payload": {"text": "transcribing"}}]});
    let handler = crate::step_server::StepServer::start(move |call: &crate::step_server::Call| {
        use crate::step_server::Reply;
        match (call.attempt(), call.steps.len()) {
            (1, 0) => Reply::Now(200, activity.clone()),
            (1, _) => Reply::Now(503, json!({"error": {"message": "try again"}})),
            // The retry answers the stored step again, broadcast and all, before finishing.
            (_, _) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Reply::Now(200, activity.clone()),
            _ => Reply::Now(200, json!({"done": true})),
        }
    })
    .await;
    let toml = format!("signing_secret = \"test-signing-secret\"\n[jobs.work]\nurl = \"{}\"\nbackoff_base = \"100ms\"\n", handler.url);
    let app = crate::harness::spawn_jobs_app(&toml).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    assert_eq!(c.join("room", json!([]), None).await["status"], "ok");
    let job = app.enqueue("alice", json!({"type": "work", "input": {}})).await;
    let done = app.wait_job(job["id"].as_str().unwrap(), |j| j["status"] == "completed").await;
    assert_eq!(done["attempts"], 2);
    app.sql("select realtime.send('{}'::jsonb, 'sentinel', 'room', false)").await;
    assert_eq!(events_until(&mut c, "sentinel").await, ["activity", "sentinel"], "sent once, not again on the retry");
}

#[tokio::test]
async fn with_private_only_a_public_join_is_refused_and_a_private_one_asks_the_policies() {
    let app = spawn_app_with(Limits { private_only: true, poll_ms: 200, ..Limits::default() }).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let reply = c.join("room", json!([]), None).await;
    assert_eq!(reply["response"]["reason"], "PrivateOnly: This project only allows private channels");
    let r = c.make_ref();
    c.send(Some(&r), &r, "realtime:room", "phx_join", json!({"config": {"private": true, "postgres_changes": []}})).await;
    let reply = c.recv_event("realtime:room", "phx_reply").await;
    assert_eq!(reply.payload["response"]["reason"], "Unauthorized: You do not have permissions to read from this Channel topic: room");
    app.sql("create policy anon_reads on realtime.messages for select to anon using (realtime.topic() = 'room')").await;
    let r = c.make_ref();
    c.send(Some(&r), &r, "realtime:room", "phx_join", json!({"config": {"private": "true", "postgres_changes": []}})).await;
    assert_eq!(c.recv_event("realtime:room", "phx_reply").await.payload["status"], "ok");
}

#[tokio::test]
async fn replay_on_a_public_channel_or_with_bad_params_is_refused_in_supabases_words() {
    let app = spawn_app().await;
    // Policies come first (Supabase's order): let anon read, so the params are what is judged.
    app.sql("create policy anon_reads on realtime.messages for select to anon using (realtime.topic() = 'room')").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    for (config, reason) in [
        (json!({"broadcast": {"replay": {"since": 0}}}), "UnableToReplayMessages: Replay is not allowed for public channels"),
        (json!({"private": true, "broadcast": {"replay": {"limit": 5}}}), "UnableToReplayMessages: Replay params are not valid"),
    ] {
        let r = c.make_ref();
        c.send(Some(&r), &r, "realtime:room", "phx_join", json!({ "config": config })).await;
        let reply = c.recv_event("realtime:room", "phx_reply").await;
        assert_eq!(reply.payload["response"]["reason"], reason);
    }
}

#[tokio::test]
async fn topic_rules_from_the_config_decide_private_joins_without_any_policy() {
    let db = crate::harness::fresh_database().await;
    let rules = "[[realtime.topics]]\npattern = \"user:{sub}\"\nreceive = true\nsend = true\n";
    let app = crate::harness::spawn_configured(&db, |c| {
        c.topic_rules = rowcast::realtime::topic_rules::TopicRules::parse(rules).unwrap();
    })
    .await;
    let alice = app.user("alice");
    let mut c = Client::v2(&app, &alice).await;
    for (topic, status) in [("realtime:user:bob", "error"), ("realtime:user:alice", "ok")] {
        let r = c.make_ref();
        c.send(Some(&r), &r, topic, "phx_join", json!({"config": {"private": true, "postgres_changes": []}, "access_token": alice})).await;
        let reply = c.recv_event(topic, "phx_reply").await;
        assert_eq!(reply.payload["status"], status, "{topic}: {}", reply.payload);
    }
    app.sql("select realtime.send('{\"hi\": 1}'::jsonb, 'note', 'user:alice')").await;
    let f = c.recv_event("realtime:user:alice", "broadcast").await;
    assert_eq!(f.payload["payload"], json!({"hi": 1}));
}

#[tokio::test]
async fn sent_messages_are_pruned_after_the_message_retention() {
    let limits = Limits { message_retention_secs: 1, change_retention_secs: 1, handoff_ttl_secs: 0, poll_ms: 100, ..Limits::default() };
    let app = spawn_app_with(limits).await;
    app.sql("select realtime.send('{}'::jsonb, 'old', 'room', false)").await;
    crate::harness::eventually(|| async {
        let left: i64 = crate::harness::scalar(&app.pool, "select count(*) from realtime.messages").await;
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} message(s) still kept"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_replayed_message_the_listener_had_not_delivered_yet_is_not_sent_again_live() {
    let app = spawn_app().await;
    app.sql("create policy anon_reads on realtime.messages for select to anon using (realtime.topic() = 'room')").await;
    app.owned_table("notes").await;
    // An open transaction holds an earlier change-log id: the listener keeps the messages
    // committed after it (for up to a second) until it commits.
    let mut open = app.pool.begin().await.unwrap();
    sqlx::query("insert into public.notes (user_id, n) values ('alice', 1)").execute(&mut *open).await.unwrap();
    app.sql("select realtime.send(jsonb_build_object('n', n), 'old', 'room') from generate_series(1, 2) n").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let r = c.make_ref();
    let config = json!({"private": true, "broadcast": {"replay": {"since": 0, "limit": 25}}, "postgres_changes": []});
    c.send(Some(&r), &r, "realtime:room", "phx_join", json!({ "config": config })).await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    open.commit().await.unwrap();
    app.sql("select realtime.send('{\"n\": 3}'::jsonb, 'live', 'room')").await;
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(event, _, _): &(String, i64, bool)| event != "live") {
        let f = c.recv_event("realtime:room", "broadcast").await;
        let p = &f.payload;
        seen.push((p["event"].as_str().unwrap().to_owned(), p["payload"]["n"].as_i64().unwrap(), p["meta"]["replayed"] == true));
    }
    let expected = [("old", 1, true), ("old", 2, true), ("live", 3, false)].map(|(e, n, r)| (e.to_owned(), n, r));
    assert_eq!(seen, expected, "each message once");
}
