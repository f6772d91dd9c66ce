//! What a subscriber receives: payload shape, old records, large rows, filters.

use serde_json::{json, Value};

use crate::harness::{spawn_app, spawn_app_with, Client};
use rowcast::config::Limits;

fn binding(table: &str, event: &str, filter: Option<&str>) -> Value {
    let mut b = json!({"event": event, "schema": "public", "table": table});
    if let Some(f) = filter {
        b["filter"] = json!(f);
    }
    b
}

fn ids_of(reply: &Value) -> Vec<Value> {
    reply["response"]["postgres_changes"].as_array().unwrap().iter().map(|b| b["id"].clone()).collect()
}

#[tokio::test]
async fn insert_update_and_delete_arrive_in_supabase_shape() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let reply = c.subscribe("t", json!([binding("todos", "*", None)]), Some(&app.user("u1"))).await;
    let id = ids_of(&reply)[0].clone();
    app.sql("insert into todos (user_id, title, n, meta) values ('u1', 'a', 5, '{\"k\": [1]}')").await;
    let insert = c.change("t").await;
    assert_eq!(insert["ids"], json!([id]));
    let data = &insert["data"];
    assert_eq!((data["schema"].as_str(), data["table"].as_str(), data["type"].as_str()), (Some("public"), Some("todos"), Some("INSERT")));
    let ts = data["commit_timestamp"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "millisecond Z timestamp: {ts}");
    assert_eq!(data["columns"][0], json!({"name": "id", "type": "int8"}));
    assert!(data["columns"].as_array().unwrap().contains(&json!({"name": "meta", "type": "jsonb"})));
    assert_eq!(data["record"]["n"], json!(5));
    assert_eq!(data["record"]["done"], json!(false));
    assert_eq!(data["record"]["meta"], json!({"k": [1]}));
    assert!(data.get("old_record").is_none(), "INSERT has no old_record");
    assert_eq!(data["errors"], Value::Null);
    let row_id = data["record"]["id"].clone();

    app.sql("update todos set title = 'b'").await;
    let update = c.change("t").await;
    assert_eq!(update["data"]["type"], "UPDATE");
    assert_eq!(update["data"]["record"]["title"], "b");
    assert_eq!(update["data"]["old_record"], json!({"id": row_id}), "old_record holds the primary key");

    app.sql("delete from todos").await;
    let delete = c.change("t").await;
    assert_eq!(delete["data"]["type"], "DELETE");
    assert!(delete["data"].get("record").is_none(), "DELETE has no record");
    assert_eq!(delete["data"]["old_record"], json!({"id": row_id}));
}

#[tokio::test]
async fn replica_identity_full_tables_send_the_whole_old_row() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("alter table todos replica identity full; select rowcast.enable('public.todos', owner_column => 'user_id');").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("t", json!([binding("todos", "UPDATE", None)]), Some(&app.user("u1"))).await;
    app.sql("insert into todos (user_id, title) values ('u1', 'before'); update todos set title = 'after';").await;
    let update = c.change("t").await;
    assert_eq!(update["data"]["old_record"]["title"], "before");
    assert_eq!(update["data"]["record"]["title"], "after");
}

#[tokio::test]
async fn a_row_far_over_notifys_8000_bytes_arrives_whole() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("t", json!([binding("todos", "INSERT", None)]), Some(&app.user("u1"))).await;
    app.sql("insert into todos (user_id, title) values ('u1', repeat('x', 200000))").await;
    let change = c.change("t").await;
    assert_eq!(change["data"]["record"]["title"].as_str().unwrap().len(), 200_000);
    assert_eq!(change["data"]["errors"], Value::Null);
}

#[tokio::test]
async fn a_row_over_the_record_limit_keeps_small_fields_and_reports_413() {
    let app = spawn_app_with(Limits { max_record_bytes: 10_000, poll_ms: 200, ..Limits::default() }).await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("t", json!([binding("todos", "INSERT", None)]), Some(&app.user("u1"))).await;
    app.sql("insert into todos (user_id, title, n) values ('u1', repeat('x', 20000), 7)").await;
    let data = c.change("t").await["data"].clone();
    assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
    assert!(data["record"].get("title").is_none());
    assert_eq!(data["record"]["n"], json!(7));
    assert_eq!(data["record"]["user_id"], "u1");
}

#[tokio::test]
async fn filters_narrow_deliveries_and_ids_name_every_matching_binding() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let token = app.token(None, "service_role");
    let bindings = json!([
        binding("todos", "INSERT", Some("n=gt.5,n=lt.10")),
        binding("todos", "INSERT", Some("title=in.(a,\"b,c\")")),
        binding("todos", "INSERT", Some("title=not.like.skip%")),
        binding("todos", "INSERT", Some("meta=is.null")),
        binding("todos", "DELETE", Some("title=eq.gone")),
    ]);
    let ids = ids_of(&c.subscribe("f", bindings, Some(&token)).await);
    let cases = [("u1", "b,c", 7, "'{}'", vec![0, 1, 2]), ("u1", "skipme", 1, "null", vec![3]), ("u2", "a", 20, "'{}'", vec![1, 2])];
    for (user, title, n, meta, want) in cases {
        app.sql(&format!("insert into todos (user_id, title, n, meta) values ('{user}', '{}', {n}, {meta})", title.replace('\'', "''")))
            .await;
        let got = c.change("f").await;
        let want: Vec<Value> = want.iter().map(|i| ids[*i].clone()).collect();
        assert_eq!(got["ids"], json!(want), "row {title}/{n}");
    }
    // Nothing matches this insert; the delete after it matches its filter on the old row.
    app.sql("insert into todos (user_id, title, n, meta) values ('u1', 'skip', 0, '{}'); update todos set title = 'gone' where title = 'a'; delete from todos where title = 'gone';").await;
    let got = c.change("f").await;
    assert_eq!((got["data"]["type"].as_str(), got["ids"].clone()), (Some("DELETE"), json!([ids[4].clone()])));
}

#[tokio::test]
async fn bad_filters_and_unknown_tables_are_reported_and_good_bindings_still_deliver() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let bindings = json!([
        binding("todos", "*", Some("n=eq.abc")),
        binding("todos", "*", Some("n=foo.1")),
        binding("missing", "*", None),
        binding("todos", "*", Some("n=in.(1,2")),
        binding("todos", "*", None),
    ]);
    let reply = c.join("bad", bindings, Some(&app.user("u1"))).await;
    assert_eq!(reply["status"], "ok");
    let mut messages = Vec::new();
    for _ in 0..5 {
        let sys = c.recv_event("realtime:bad", "system").await.payload;
        assert_eq!(sys["extension"], "postgres_changes");
        assert_eq!(sys["channel"], "bad");
        messages.push((sys["status"].as_str().unwrap().to_owned(), sys["message"].as_str().unwrap().to_owned()));
    }
    assert!(
        messages[0].1.contains("Exception: ERROR 22P02 (invalid_text_representation) invalid input syntax for type integer: \"abc\""),
        "{:?}",
        messages[0]
    );
    assert_eq!(messages[1].1, "Error parsing `filter` params: [\"n\", \"foo.1\"]");
    assert!(messages[2].1.starts_with("Unable to subscribe to changes with given parameters. Please check Realtime is enabled"));
    assert!(messages[2].1.contains("table: missing"));
    assert_eq!(messages[3].1, "`in` filter value must be wrapped by parentheses");
    assert_eq!(messages[4], ("ok".to_owned(), "Subscribed to PostgreSQL".to_owned()));
    assert!(messages[..4].iter().all(|(status, _)| status == "error"));
    app.sql("insert into todos (user_id, n) values ('u1', 1)").await;
    let ids = ids_of(&reply);
    assert_eq!(c.change("bad").await["ids"], json!([ids[4].clone()]));
}
