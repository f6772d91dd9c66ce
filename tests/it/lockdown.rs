//! The database side is locked down: an ordinary app role can neither forge
//! change-log rows nor read other users' rows through the log, while its own
//! writes are still captured; SQL enqueue is one narrow, grantable door.

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::harness::{spawn_app, spawn_jobs_app, Client, TestApp};

/// A LOGIN role with rights on `public.todos` only, and a connection as it.
async fn app_role(app: &TestApp, name: &str) -> PgConnection {
    app.sql(&format!(
        "create role {name} login; grant usage, create on schema public to {name};
         grant select, insert, update on public.todos to {name}; grant usage on sequence public.todos_id_seq to {name};"
    ))
    .await;
    let url = app.db_url.replacen("postgres://postgres@", &format!("postgres://{name}@"), 1);
    PgConnection::connect(&url).await.expect("connecting as the app role")
}

/// Runs `sql` as the role; the error text when it is refused.
async fn refused(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(_) => panic!("an app role was allowed: {sql}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn an_app_role_cannot_forge_or_read_the_change_log_or_capture_a_table_of_its_own() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut role = app_role(&app, "lockdown_app").await;
    let forge = "insert into rowcast.changes (schema_name, table_name, op, owner, record) \
                 values ('public', 'todos', 'INSERT', 'victim', '{\"id\": 1}')";
    assert!(refused(&mut role, forge).await.contains("permission denied"));
    assert!(refused(&mut role, "select * from rowcast.changes").await.contains("permission denied"));
    let attach = "create table mine (id int primary key, user_id text); \
                  create trigger forge after insert on mine for each row execute function rowcast.capture()";
    assert!(refused(&mut role, attach).await.contains("permission denied"));
    assert!(refused(&mut role, "select rowcast.enable('public.todos', public => true)").await.contains("permission denied"));
    assert!(refused(&mut role, "select * from rowcast.jobs").await.contains("permission denied"));
}

#[tokio::test]
async fn an_app_roles_own_writes_to_an_enabled_table_are_still_captured() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut role = app_role(&app, "lockdown_writer").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("t", json!([{"event": "INSERT", "schema": "public", "table": "todos"}]), Some(&app.user("alice"))).await;
    sqlx::raw_sql("insert into public.todos (user_id, title) values ('alice', 'by the app role')").execute(&mut role).await.unwrap();
    assert_eq!(c.change("t").await["data"]["record"]["title"], "by the app role");
}

#[tokio::test]
async fn a_role_granted_rowcast_enqueue_can_enqueue_and_do_nothing_else() {
    let app = spawn_jobs_app("").await;
    app.sql("create table todos (id bigserial primary key, user_id text, title text)").await;
    let mut role = app_role(&app, "lockdown_enqueuer").await;
    let enqueue = "select (rowcast.enqueue('demo', '{\"steps\": 1}', 'alice')).id";
    assert!(refused(&mut role, enqueue).await.contains("permission denied"), "nothing before the grant");
    app.sql("grant rowcast_enqueue to lockdown_enqueuer").await;
    let id: uuid::Uuid = sqlx::query_scalar(enqueue).fetch_one(&mut role).await.expect("enqueue through the granted role");
    app.wait_job(&id.to_string(), |j| j["status"] == "completed").await;
    assert!(refused(&mut role, "select * from rowcast.jobs").await.contains("permission denied"));
    assert!(refused(&mut role, "select rowcast.claim('demo', 'w', 10)").await.contains("permission denied"));
}
