//! Change capture: nothing skipped when commits land out of id order, nothing
//! lost or repeated under concurrent writers, the doorbell rule, pruning.

use std::collections::HashMap;

use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};

use crate::harness::{eventually, fresh_database, scalar, spawn_app, spawn_app_with, Client, WAIT};
use rowcast::config::Limits;

fn todos() -> serde_json::Value {
    json!([{"event": "INSERT", "schema": "public", "table": "todos"}])
}

/// Waits until the gateway's reader has run a read after `since` (a clock_timestamp text).
async fn reader_has_read_after(pool: &sqlx::PgPool, since: &str) {
    let sql = format!(
        "select coalesce(max(query_start) > '{since}'::timestamptz, false) from pg_stat_activity \
         where datname = current_database() and query like '%pg_current_snapshot()::text%' and pid <> pg_backend_pid()"
    );
    let sql = &sql;
    eventually(|| async move {
        if scalar::<bool>(pool, sql).await {
            Ok(())
        } else {
            Err("the reader never read the log".into())
        }
    })
    .await
}

#[tokio::test]
async fn a_commit_that_lands_out_of_id_order_is_neither_skipped_nor_reordered() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("o", todos(), Some(&app.token(None, "service_role"))).await;
    let mut slow = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("begin").execute(&mut slow).await.unwrap();
    sqlx::query("insert into todos (user_id, title) values ('u', 'first id, commits last')").execute(&mut slow).await.unwrap();
    app.sql("insert into todos (user_id, title) values ('u', 'second id, commits first')").await;
    let (now,): (String,) = sqlx::query_as("select clock_timestamp()::text").fetch_one(&app.pool).await.unwrap();
    reader_has_read_after(&app.pool, &now).await;
    sqlx::query("commit").execute(&mut slow).await.unwrap();
    assert_eq!(c.change("o").await["data"]["record"]["title"], "first id, commits last");
    assert_eq!(c.change("o").await["data"]["record"]["title"], "second id, commits first");
}

#[tokio::test]
async fn concurrent_writers_lose_nothing_and_repeat_nothing() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("w", todos(), Some(&app.token(None, "service_role"))).await;
    let (writers, each) = (8, 60);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = app.pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                sqlx::query("insert into todos (user_id, title, n) values ($1, $2, $3)")
                    .bind(format!("w{w}"))
                    .bind(format!("w{w}"))
                    .bind(i)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..writers * each {
        let record = c.change("w").await["data"]["record"].clone();
        assert!(ids.insert(record["id"].as_i64().unwrap()), "change delivered twice: {record}");
        let prev = last.insert(record["title"].as_str().unwrap().to_owned(), record["n"].as_i64().unwrap());
        assert_eq!(record["n"].as_i64().unwrap(), prev.map_or(0, |p| p + 1), "each writer's rows arrive in its commit order");
    }
    assert_eq!(ids.len(), (writers * each) as usize);
}

/// Inserts a captured row, then sends a sentinel NOTIFY; true if the bell rang before the sentinel.
async fn insert_rings(url: &str, bell: &mut PgListener) -> bool {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query("insert into t (user_id) values ('u')").execute(&mut c).await.unwrap();
    sqlx::query("select pg_notify('rowcast_changes', 'sentinel')").execute(&mut c).await.unwrap();
    let mut rang = false;
    loop {
        let note = tokio::time::timeout(WAIT, bell.recv()).await.expect("a notification").unwrap();
        if note.payload() == "sentinel" {
            return rang;
        }
        rang = true;
    }
}

#[tokio::test]
async fn writers_ring_the_doorbell_only_while_a_live_listener_is_idle() {
    let url = fresh_database().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("create table t (id serial primary key, user_id text); select rowcast.enable('public.t', owner_column => 'user_id');")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut bell = PgListener::connect(&url).await.unwrap();
    bell.listen("rowcast_changes").await.unwrap();
    let set = |idle: bool, seen: &str| {
        format!(
            "insert into rowcast.listeners (id, idle, seen_at) values ('00000000-0000-0000-0000-000000000001', {idle}, {seen}) \
                 on conflict (id) do update set idle = excluded.idle, seen_at = excluded.seen_at"
        )
    };
    assert!(!insert_rings(&url, &mut bell).await, "no listener registered: no bell");
    sqlx::query(&set(false, "now()")).execute(&mut conn).await.unwrap();
    assert!(!insert_rings(&url, &mut bell).await, "a busy listener gets no bell");
    sqlx::query(&set(true, "now()")).execute(&mut conn).await.unwrap();
    assert!(insert_rings(&url, &mut bell).await, "an idle listener is woken");
    sqlx::query(&set(true, "now() - interval '1 minute'")).execute(&mut conn).await.unwrap();
    assert!(!insert_rings(&url, &mut bell).await, "a listener silent for over 30 s is presumed dead");
}

#[tokio::test]
async fn read_changes_are_pruned_from_the_log() {
    let app = spawn_app_with(Limits { change_retention_secs: 0, handoff_ttl_secs: 0, poll_ms: 100, ..Limits::default() }).await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("p", todos(), Some(&app.token(None, "service_role"))).await;
    app.sql("insert into todos (user_id) select 'u' from generate_series(1, 20)").await;
    for _ in 0..20 {
        c.change("p").await;
    }
    eventually(|| async {
        match scalar::<i64>(&app.pool, "select count(*) from rowcast.changes").await {
            0 => Ok(()),
            left => Err(format!("{left} changes still in the log")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_disabled_table_stops_delivering_and_enable_needs_a_primary_key() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("create table other (id serial primary key, user_id text); select rowcast.enable('public.other', owner_column => 'user_id');")
        .await;
    let mut c = Client::v2(&app, &app.anon()).await;
    let both =
        json!([{"event": "INSERT", "schema": "public", "table": "todos"}, {"event": "INSERT", "schema": "public", "table": "other"}]);
    c.subscribe("d", both, Some(&app.token(None, "service_role"))).await;
    app.sql("select rowcast.disable('public.todos'); insert into todos (user_id) values ('u'); insert into other (user_id) values ('u');")
        .await;
    assert_eq!(c.change("d").await["data"]["table"], "other");
    let err = sqlx::raw_sql("create table nopk (user_id text); select rowcast.enable('public.nopk', owner_column => 'user_id');")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs a primary key"), "{err}");
    let err = sqlx::raw_sql("select rowcast.enable('public.other', owner_column => 'nope')").execute(&app.pool).await.unwrap_err();
    assert!(err.to_string().contains("no column named"), "{err}");
}

#[tokio::test]
async fn a_change_in_flight_when_the_gateway_starts_is_still_delivered() {
    let db = fresh_database().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    sqlx::raw_sql("create table todos (id bigserial primary key, user_id text not null, title text); select rowcast.enable('public.todos', owner_column => 'user_id');")
        .execute(&pool)
        .await
        .unwrap();
    let mut slow = PgConnection::connect(&db).await.unwrap();
    sqlx::query("begin").execute(&mut slow).await.unwrap();
    sqlx::query("insert into todos (user_id, title) values ('u', 'in flight at start')").execute(&mut slow).await.unwrap();
    sqlx::query("insert into todos (user_id, title) values ('u', 'committed before start')").execute(&pool).await.unwrap();
    let app = crate::harness::spawn_on(&db, rowcast::config::Limits { poll_ms: 100, ..Default::default() }, "", false).await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("s", todos(), Some(&app.token(None, "service_role"))).await;
    sqlx::query("commit").execute(&mut slow).await.unwrap();
    assert_eq!(c.change("s").await["data"]["record"]["title"], "in flight at start");
}

/// Rows a plan node and its children read (kept or filtered out).
fn rows_touched(node: &serde_json::Value) -> f64 {
    let own = ["Actual Rows", "Rows Removed by Filter"].iter().filter_map(|k| node[k].as_f64()).sum::<f64>();
    own + node["Plans"].as_array().map_or(0.0, |children| children.iter().map(rows_touched).sum())
}

#[tokio::test]
async fn a_read_pass_touches_only_the_rows_it_returns_however_long_the_log() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("insert into todos (user_id) select 'u' from generate_series(1, 20000)").await;
    let top: i64 = scalar(&app.pool, "select max(id) from rowcast.changes").await;
    let mut conn = app.pool.acquire().await.unwrap();
    // The plan a prepared statement settles on after five runs: the one the listener uses.
    sqlx::raw_sql(&format!(
        "set plan_cache_mode = force_generic_plan; prepare read_pass(bigint, bigint, bigint[], bigint) as {}",
        rowcast::changes::listener::READ
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let explain = format!("explain (analyze, format json) execute read_pass({}, {top}, '{{{}}}', 1000)", top - 10, top - 15_000);
    let (plan,): (serde_json::Value,) = sqlx::query_as(&explain).fetch_one(&mut *conn).await.unwrap();
    let touched = rows_touched(&plan[0]["Plan"]);
    // 10 rows above the mark and one gap id, each counted once per node on its way up.
    assert!(touched < 200.0, "a read pass of 11 rows touched {touched} rows of a 20,000-row log: {plan}");
}

#[tokio::test]
async fn a_read_pass_first_run_on_a_nearly_empty_log_does_not_scan_the_log_once_it_has_grown() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let mut conn = app.pool.acquire().await.unwrap();
    // Enough calls on a tiny log for PL/pgSQL to settle on a plan, as a new gateway's reader does.
    for _ in 0..10 {
        sqlx::query("select rows from rowcast.read_pass(0, '{1}', 1000)").execute(&mut *conn).await.unwrap();
    }
    app.sql("insert into todos (user_id) select 'u' from generate_series(1, 20000)").await;
    let top: i64 = scalar(&app.pool, "select max(id) from rowcast.changes").await;
    sqlx::query("begin").execute(&mut *conn).await.unwrap();
    sqlx::query("select rows from rowcast.read_pass($1, array[$2], 1000)")
        .bind(top - 10)
        .bind(top - 15_000)
        .execute(&mut *conn)
        .await
        .unwrap();
    let (seq_scans, read): (i64, i64) = sqlx::query_as(
        "select seq_scan, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables
         where relid = 'rowcast.changes'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    sqlx::query("commit").execute(&mut *conn).await.unwrap();
    assert_eq!(seq_scans, 0, "a pass with one gap id read the 20,000-row log from end to end");
    // Ten rows, the gap, and whatever the gateway's own heartbeats added since `top`.
    assert!(read < 200, "a pass of about 10 rows and one gap read {read} rows of the 20,000-row log");
}

#[tokio::test]
async fn the_one_call_read_pass_returns_what_read_returns_up_to_the_sequence() {
    use rowcast::changes::listener::{READ, READ_PASS};
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("insert into todos (user_id) select 'u' from generate_series(1, 50)").await;
    let top: i64 = scalar(&app.pool, "select max(id) from rowcast.changes").await;
    let (hw, gaps) = (top - 20, vec![top - 40, top - 45]);
    for batch in [1000_i64, 5] {
        let (_, rows, upper): (String, sqlx::types::Json<serde_json::Value>, i64) =
            sqlx::query_as(READ_PASS).bind(hw).bind(&gaps).bind(batch).fetch_one(&app.pool).await.unwrap();
        // The gateway's own cluster heartbeats may be captured meanwhile: the bound is at least
        // the sequence as it was before the call, and the rows go up to it.
        assert!(upper >= top, "the pass's bound {upper} is the sequence, read in the same call (at least {top})");
        let (_, expected): (String, sqlx::types::Json<serde_json::Value>) =
            sqlx::query_as(READ).bind(hw).bind(upper).bind(&gaps).bind(batch).fetch_one(&app.pool).await.unwrap();
        assert_eq!(rows.0, expected.0, "batch {batch}");
        let ids: Vec<i64> = rows.0.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
        let mut want: Vec<i64> = gaps.iter().rev().copied().chain(hw + 1..=upper).collect();
        want.truncate(batch as usize);
        assert_eq!(ids, want, "batch {batch}: the gap ids, then the ids above the mark, in order");
    }
}

#[tokio::test]
async fn a_change_committed_with_a_re_enable_is_delivered_under_the_new_visibility_rule() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    app.sql("select rowcast.enable('public.todos', public => true)").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("p", todos(), Some(&app.user("u1"))).await;
    for round in 0..10 {
        // Public: u1 sees u2's row. Then, in one transaction, the table becomes owner-scoped and
        // u2 writes: that row must not reach u1, whichever the reader meets first, the catalogue
        // notification or the change (the marker in the log orders them).
        app.sql(&format!("insert into todos (user_id, title) values ('u2', 'public {round}')")).await;
        assert_eq!(c.change("p").await["data"]["record"]["title"], format!("public {round}"));
        app.sql(&format!(
            "select rowcast.enable('public.todos', owner_column => 'user_id');
             insert into todos (user_id, title) values ('u2', 'secret {round}');"
        ))
        .await;
        app.sql(&format!("insert into todos (user_id, title) values ('u1', 'mine {round}')")).await;
        assert_eq!(c.change("p").await["data"]["record"]["title"], format!("mine {round}"), "round {round}: u2's row leaked to u1");
        app.sql("select rowcast.enable('public.todos', public => true)").await;
    }
    let markers: i64 =
        scalar(&app.pool, "select count(*) from rowcast.changes where schema_name = 'rowcast' and table_name = 'tables'").await;
    assert!(markers >= 20, "each enable leaves a marker in the log ({markers})");
}

#[tokio::test]
async fn a_statement_of_many_rows_is_captured_row_by_row_in_order_with_one_trigger_call_per_statement() {
    let app = spawn_app().await;
    app.owned_table("todos").await;
    let all = json!([{"event": "*", "schema": "public", "table": "todos"}]);
    let mut ops = Client::v2(&app, &app.anon()).await;
    ops.subscribe("all", all.clone(), Some(&app.token(None, "service_role"))).await;
    let mut u2 = Client::v2(&app, &app.anon()).await;
    u2.subscribe("mine", all, Some(&app.token(Some("u2"), "authenticated"))).await;

    let mut conn = app.pool.acquire().await.unwrap();
    for sql in [
        "begin",
        "set local track_functions = 'pl'",
        "insert into todos (user_id, title) select 'u' || g, 't' || g from generate_series(1, 3) g",
        "update todos set n = id * 10",
        "update todos set n = 0 where false",
        "delete from todos where id <= 2",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    let calls: Vec<(String, i64)> = sqlx::query_as(
        "select funcname::text, calls from pg_stat_xact_user_functions where schemaname = 'rowcast' and funcname like 'capture%' order by 1",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    sqlx::query("commit").execute(&mut *conn).await.unwrap();
    // Four statements, one of them writing nothing: four calls, none per row.
    assert_eq!(calls, vec![("capture_rows".to_owned(), 4)]);

    let mut seen = Vec::new();
    for _ in 0..8 {
        let data = ops.change("all").await["data"].clone();
        let row = if data["type"] == "DELETE" { &data["old_record"] } else { &data["record"] };
        seen.push(format!("{} {} {}", data["type"].as_str().unwrap(), row["id"], row["n"]));
    }
    assert_eq!(
        seen,
        ["INSERT 1 null", "INSERT 2 null", "INSERT 3 null", "UPDATE 1 10", "UPDATE 2 20", "UPDATE 3 30", "DELETE 1 null", "DELETE 2 null"]
    );
    // Each row's owner is its own: u2 sees its row's three changes and no other.
    for op in ["INSERT", "UPDATE", "DELETE"] {
        let data = u2.change("mine").await["data"].clone();
        assert_eq!(data["type"], op);
        let row = if op == "DELETE" { &data["old_record"] } else { &data["record"] };
        assert_eq!(row["id"], 2, "{data}");
    }
    // Everything was fanned out before the other client's eighth change: nothing else is queued.
    let rest = u2.frames_until_heartbeat().await;
    assert!(rest.iter().all(|f| f.event != "postgres_changes"), "{:?}", rest.iter().map(|f| &f.payload).collect::<Vec<_>>());
}
