//! Who may connect, join and see which rows; token refresh and expiry.

use serde_json::json;

use crate::harness::{spawn_app, Client, SECRET};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn all_todos() -> serde_json::Value {
    json!([{"event": "*", "schema": "public", "table": "todos"}])
}

/// The next `n` changes on channel `c`, as `table:TYPE`.
async fn seen(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = c.change("c").await["data"].clone();
        out.push(format!("{}:{}", d["table"].as_str().unwrap(), d["type"].as_str().unwrap()));
    }
    out
}

/// Attempts a real WebSocket handshake; the refusal's status and body.
async fn upgrade_status(app: &crate::harness::TestApp, query: &str) -> (u16, String) {
    let url = format!("ws://{}/realtime/v1/websocket?{query}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the upgrade was accepted: {query}"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

#[tokio::test]
async fn bad_api_keys_get_http_401_with_supabase_texts_before_the_upgrade() {
    let app = spawn_app().await;
    let now = rowcast::auth::now_secs();
    let sign =
        |claims: serde_json::Value| encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    let cases = [
        ("vsn=2.0.0".to_owned(), "API key is missing"),
        ("apikey=garbage&vsn=2.0.0".to_owned(), "The token provided is not a valid JWT"),
        (format!("apikey={}&vsn=2.0.0", sign(json!({"role": "anon"}))), "Fields `role` and `exp` are required in JWT"),
        (format!("apikey={}&vsn=2.0.0", sign(json!({"role": "anon", "exp": now - 5}))), "Token has expired"),
        (format!("apikey={}&vsn=2.0.0", app.minter.mint(None, "anon", 60) + "x"), "Failed to validate JWT signature"),
    ];
    for (query, text) in cases {
        let (status, body) = upgrade_status(&app, &query).await;
        assert_eq!(status, 401, "{query}: {body}");
        assert!(body.contains(text), "{query}: {body}");
    }
}

#[tokio::test]
async fn users_see_only_their_rows_the_service_role_all_and_anon_only_public_tables() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("create table news (id serial primary key, body text); select rowcast.enable('public.news', public => true);").await;
    let both = json!([{"event": "*", "schema": "public", "table": "todos"}, {"event": "*", "schema": "public", "table": "news"}]);
    let mut alice = Client::v2(&app, &app.anon()).await;
    let mut bob = Client::v2(&app, &app.anon()).await;
    let mut service = Client::v2(&app, &app.token(None, "service_role")).await;
    let mut anon = Client::v2(&app, &app.anon()).await;
    alice.subscribe("c", both.clone(), Some(&app.user("alice"))).await;
    bob.subscribe("c", both.clone(), Some(&app.user("bob"))).await;
    service.subscribe("c", both.clone(), None).await;
    anon.subscribe("c", both, None).await;
    app.sql(
        "insert into todos (user_id, title) values ('bob', 'secret'); update todos set title = 'still secret'; \
             delete from todos; insert into todos (user_id, title) values ('alice', 'mine'); insert into news (body) values ('hello');",
    )
    .await;
    assert_eq!(seen(&mut alice, 2).await, ["todos:INSERT", "news:INSERT"]);
    assert_eq!(seen(&mut bob, 4).await, ["todos:INSERT", "todos:UPDATE", "todos:DELETE", "news:INSERT"]);
    assert_eq!(seen(&mut service, 5).await, ["todos:INSERT", "todos:UPDATE", "todos:DELETE", "todos:INSERT", "news:INSERT"]);
    assert_eq!(seen(&mut anon, 1).await, ["news:INSERT"]);
}

#[tokio::test]
async fn a_filter_naming_another_user_cannot_widen_what_a_user_sees() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut alice = Client::v2(&app, &app.anon()).await;
    let spy = json!([{"event": "*", "schema": "public", "table": "todos", "filter": "user_id=eq.bob"}, {"event": "*", "schema": "public", "table": "todos", "filter": "title=eq.sentinel"}]);
    alice.subscribe("spy", spy, Some(&app.user("alice"))).await;
    app.sql("insert into todos (user_id, title) values ('bob', 'x'); insert into todos (user_id, title) values ('alice', 'sentinel');")
        .await;
    let got = alice.change("spy").await;
    assert_eq!(got["data"]["record"]["title"], "sentinel", "the first change alice sees is her own sentinel");
}

#[tokio::test]
async fn a_join_made_before_the_token_arrives_delivers_once_access_token_is_pushed() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let reply = c.subscribe("early", all_todos(), None).await;
    assert_eq!(reply["status"], "ok");
    c.send(Some("2"), "3", "realtime:early", "access_token", json!({"access_token": app.user("alice")})).await;
    c.heartbeat().await;
    app.sql("insert into todos (user_id, title) values ('bob', 'no'); insert into todos (user_id, title) values ('alice', 'yes');").await;
    assert_eq!(c.change("early").await["data"]["record"]["title"], "yes");
}

#[tokio::test]
async fn an_access_token_push_re_authorises_the_channel_as_the_new_user() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("switch", all_todos(), Some(&app.user("alice"))).await;
    c.send(Some("2"), "3", "realtime:switch", "access_token", json!({"access_token": app.user("bob")})).await;
    c.heartbeat().await;
    app.sql("insert into todos (user_id, title) values ('alice', 'old'); insert into todos (user_id, title) values ('bob', 'new');").await;
    assert_eq!(c.change("switch").await["data"]["record"]["title"], "new");
}

#[tokio::test]
async fn an_expired_channel_token_gets_the_system_message_then_phx_close() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let short = app.minter.mint(Some("alice"), "authenticated", 2);
    c.subscribe("exp", all_todos(), Some(&short)).await;
    let sys = c.recv_event("realtime:exp", "system").await;
    let message = sys.payload["message"].as_str().unwrap();
    assert!(message.starts_with("Token has expired ") && message.ends_with(" seconds ago"), "{message}");
    assert_eq!(
        (sys.payload["extension"].as_str(), sys.payload["status"].as_str(), sys.payload["channel"].as_str()),
        (Some("system"), Some("error"), Some("exp"))
    );
    let close = c.recv().await;
    assert_eq!((close.topic.as_str(), close.event.as_str()), ("realtime:exp", "phx_close"));
    c.heartbeat().await;
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_channel_past_the_old_expiry() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("keep", all_todos(), Some(&app.minter.mint(Some("alice"), "authenticated", 2))).await;
    c.send(Some("2"), "3", "realtime:keep", "access_token", json!({"access_token": app.user("alice")})).await;
    c.heartbeat().await;
    // Wait until the first token is certainly dead, by watching the clock, not sleeping a guess.
    let deadline = rowcast::auth::now_secs() + 3;
    while rowcast::auth::now_secs() <= deadline {
        c.heartbeat().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.sql("insert into todos (user_id, title) values ('alice', 'after')").await;
    let f = c.recv().await;
    assert_eq!((f.event.as_str(), f.payload["data"]["record"]["title"].as_str()), ("postgres_changes", Some("after")));
}

#[tokio::test]
async fn a_bad_access_token_push_closes_that_channel_only() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let todos = json!([{"event": "INSERT", "schema": "public", "table": "todos"}]);
    c.subscribe("a", todos.clone(), Some(&app.user("x"))).await;
    c.subscribe("b", todos, Some(&app.user("x"))).await;
    c.send(Some("1"), "9", "realtime:a", "access_token", json!({"access_token": "not.a.jwt"})).await;
    let sys = c.recv_event("realtime:a", "system").await;
    assert_eq!(sys.payload["message"], "The token provided is not a valid JWT");
    let close = c.recv().await;
    assert_eq!((close.topic.as_str(), close.event.as_str()), ("realtime:a", "phx_close"));
    c.send(Some("3"), "10", "realtime:b", "access_token", json!({"access_token": app.user("x")})).await;
    let after = c.frames_until_heartbeat().await;
    assert!(after.iter().all(|f| f.event != "phx_close"), "only `a` is closed: {after:?}");
    // `b` still delivers, `a` no longer does.
    app.sql("insert into todos (user_id, title) values ('x', 't')").await;
    assert_eq!(c.recv().await.topic, "realtime:b");
    let rest = c.frames_until_heartbeat().await;
    assert!(rest.iter().all(|f| f.topic != "realtime:a"), "the closed channel got {rest:?}");
}

#[tokio::test]
async fn a_join_with_an_expired_or_forged_access_token_is_refused_with_its_code() {
    let app = spawn_app().await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let expired = app.minter.mint_at(Some("a"), "authenticated", rowcast::auth::now_secs() - 100, 10);
    let reply = c.join("x", json!([]), Some(&expired)).await;
    let reason = reply["response"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("InvalidJWTToken: Token has expired"), "{reason}");
    let forged = rowcast::auth::Minter::new("another-secret-0123456789").mint(Some("a"), "service_role", 60);
    let reply = c.join("y", json!([]), Some(&forged)).await;
    assert_eq!(reply["response"]["reason"], "JwtSignatureError: Failed to validate JWT signature");
}
