//! Hostile and malformed snapshot requests: refused in PostgREST's terms, no SQL injected.

use serde_json::Value;

use crate::harness::{spawn_app, TestApp};

async fn get(app: &TestApp, path_and_query: &str, token: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path_and_query}", app.addr));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test]
async fn injected_sql_in_values_and_identifiers_is_data_or_an_error_never_sql() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("insert into todos (user_id, title) values ('alice', 'a'), ('bob', 'a')").await;
    let alice = app.user("alice");
    let (status, body, _) = get(&app, "/rest/v1/todos?title=eq.a'%20or%20'1'='1", Some(&alice)).await;
    assert_eq!((status, body), (200, Value::Array(vec![])), "the quote is part of the value");
    let (status, body, _) = get(&app, "/rest/v1/todos?user_id=neq.alice&or=(title.eq.a)", Some(&alice)).await;
    assert_eq!((status, body), (200, Value::Array(vec![])), "or= cannot widen past the owner");
    let (status, body, _) = get(&app, "/rest/v1/todos?select=user_id&or=(user_id.eq.bob,title.eq.a)", Some(&alice)).await;
    assert_eq!((status, body), (200, serde_json::json!([{"user_id": "alice"}])), "bob's row matches the or= but is not alice's");
    let (status, body, _) = get(&app, "/rest/v1/todos?select=id,(select%20secret)", Some(&alice)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("PGRST100")));
    let (status, body, _) = get(&app, "/rest/v1/todos?order=id;drop%20table%20todos", Some(&alice)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("42703")));
    let (status, body, _) = get(&app, "/rest/v1/todos?limit=1;select", Some(&alice)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("PGRST100")));
    let (n,): (i64,) = sqlx::query_as("select count(*) from todos").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn bad_tokens_are_401_and_tables_not_captured_are_404() {
    let app = spawn_app().await;
    app.sql("create table private_stuff (id serial primary key, secret text); insert into private_stuff (secret) values ('s');").await;
    app.owned_table("todos").await;
    let (status, body, _) = get(&app, "/rest/v1/todos", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("PGRST301")));
    let expired = app.minter.mint_at(Some("a"), "authenticated", rowcast::auth::now_secs() - 100, 10);
    let (status, body, _) = get(&app, "/rest/v1/todos", Some(&expired)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("PGRST303")));
    let (status, body, _) = get(&app, "/rest/v1/private_stuff", Some(&app.token(None, "service_role"))).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("PGRST205")), "only change-captured tables are exposed");
}

#[tokio::test]
async fn head_with_an_exact_count_answers_the_count_in_content_range() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("insert into todos (user_id) select 'alice' from generate_series(1, 7)").await;
    let r = reqwest::Client::new()
        .head(format!("http://{}/rest/v1/todos", app.addr))
        .bearer_auth(app.user("alice"))
        .header("prefer", "count=exact")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-range"], "0-6/7");
}
