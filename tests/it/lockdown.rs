//! The database side is locked down (migrations/0003_lock_down.sql): an app
//! role, even one given usage on schema `rowcast`, can neither forge change-log
//! rows, read other users' rows through the log, nor put the capture trigger
//! on a table of its own, while its own writes are still captured; SQL
//! enqueue is one narrow, grantable door; and nothing in the schema is left
//! open to PUBLIC, including what later migrations add.
//!
//! Postgres never grants PUBLIC usage on a new schema, so a role with no
//! grants at all is refused at the schema with or without the migration; the
//! tests therefore give roles the schema (as admins did so apps could call
//! `rowcast.enqueue`) or ask the catalogue, so each fails without 0003.

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::harness::{scalar, spawn_app, spawn_jobs_app, Client, TestApp};

/// A LOGIN role (trust auth, as the test cluster has) with rights on `public.todos` only, and a connection as it.
async fn app_role(app: &TestApp, name: &str) -> PgConnection {
    app.sql(&format!(
        "create role {name} login; grant usage, create on schema public to {name};
         grant select, insert, update on public.todos to {name}; grant usage on sequence public.todos_id_seq to {name};"
    ))
    .await;
    let url = app.db_url.replacen("postgres://postgres@", &format!("postgres://{name}@"), 1);
    assert_ne!(url, app.db_url, "the test cluster's URL names the postgres user");
    PgConnection::connect(&url).await.expect("connecting as the app role")
}

/// Runs `sql` as the role and asserts Postgres refuses it with "permission denied for <what>".
async fn denied(conn: &mut PgConnection, sql: &str, what: &str) {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(_) => panic!("an app role was allowed: {sql}"),
        Err(e) => assert!(e.to_string().contains(&format!("permission denied for {what}")), "{sql}: {e}"),
    }
}

const FORGE: &str = "insert into rowcast.changes (schema_name, table_name, op, owner, record) \
                     values ('public', 'todos', 'INSERT', 'victim', '{\"id\": 1}')";
const ATTACH: &str = "create table mine (id int primary key, user_id text); \
                      create trigger forge after insert on mine for each row execute function rowcast.capture('user_id', '')";

#[tokio::test]
async fn a_role_given_the_rowcast_schema_still_cannot_forge_read_or_capture_a_table_of_its_own() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut role = app_role(&app, "lockdown_app").await;
    denied(&mut role, "select * from rowcast.changes", "schema rowcast").await;
    app.sql("grant usage on schema rowcast to lockdown_app").await;
    denied(&mut role, FORGE, "table changes").await;
    denied(&mut role, "select * from rowcast.changes", "table changes").await;
    denied(&mut role, ATTACH, "function rowcast.capture").await;
    denied(&mut role, "select rowcast.enable('public.todos', public => true)", "function enable").await;
    denied(&mut role, "select rowcast.disable('public.todos')", "function disable").await;
    denied(&mut role, "select rowcast.claim('demo', 'w', 10)", "function claim").await;
    denied(&mut role, "select * from rowcast.jobs", "table jobs").await;
}

#[tokio::test]
async fn a_role_that_may_not_execute_capture_still_has_its_writes_to_an_enabled_table_captured() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut role = app_role(&app, "lockdown_writer").await;
    let may_capture: bool = scalar(&app.pool, "select has_function_privilege('lockdown_writer', 'rowcast.capture()', 'execute')").await;
    assert!(!may_capture, "the role may execute rowcast.capture()");
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
    denied(&mut role, enqueue, "schema rowcast").await;
    app.sql("grant rowcast_enqueue to lockdown_enqueuer").await;
    let id: uuid::Uuid = sqlx::query_scalar(enqueue).fetch_one(&mut role).await.expect("enqueue through the granted role");
    app.wait_job(&id.to_string(), |j| j["status"] == "completed").await;
    denied(&mut role, "select * from rowcast.jobs", "table jobs").await;
    denied(&mut role, "insert into rowcast.jobs (type, user_id) values ('demo', 'bob')", "table jobs").await;
    denied(&mut role, "select rowcast.claim('demo', 'w', 10)", "function claim").await;
    denied(&mut role, FORGE, "table changes").await;
    denied(&mut role, ATTACH, "function rowcast.capture").await;
    denied(&mut role, "select rowcast.enable('public.todos', public => true)", "function enable").await;
}

#[tokio::test]
async fn nothing_in_the_rowcast_schema_is_open_to_public() {
    let app = spawn_app().await;
    let open: Vec<String> = sqlx::query_scalar(
        "select 'schema rowcast' where has_schema_privilege('public', 'rowcast', 'usage')
                                    or has_schema_privilege('public', 'rowcast', 'create')
         union all
         select 'function ' || p.oid::regprocedure from pg_proc p
         where p.pronamespace = 'rowcast'::regnamespace and has_function_privilege('public', p.oid, 'execute')
         union all
         select 'relation ' || c.oid::regclass from pg_class c
         where c.relnamespace = 'rowcast'::regnamespace
           and exists (select 1 from aclexplode(c.relacl) a where a.grantee = 0)",
    )
    .fetch_all(&app.pool)
    .await
    .expect("reading the catalogue");
    assert!(open.is_empty(), "open to PUBLIC: {open:?}");
}
