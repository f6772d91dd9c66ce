//! Operators' side: `/metrics` after a known workload, `/ready` under lag and
//! while draining, and JSON logs that carry no secret or row data.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, fresh_database, http_get, spawn_app_with, spawn_jobs_app, Client, TestApp, SECRET, WAIT};
use rowcast::config::Limits;

/// Scrapes until every line of `expected` is in the text (counters move just
/// after the rows the test waits on), then returns the text.
async fn metrics_with(app: &TestApp, expected: &[&str]) -> String {
    eventually(|| async {
        let (status, text) = app.get("/metrics").await;
        let missing: Vec<&&str> = expected.iter().filter(|line| !text.lines().any(|l| l == **line)).collect();
        match (status, missing.is_empty()) {
            (200, true) => Ok(text),
            _ => Err(format!("status {status}; missing {missing:?} in:\n{text}")),
        }
    })
    .await
}

#[tokio::test]
async fn metrics_count_a_known_workload_exactly() {
    let app = spawn_jobs_app("").await;
    app.owned_table("todos").await;
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("mine", json!([{"event": "*", "schema": "public", "table": "todos"}]), Some(&app.user("alice"))).await;
    let refused = c.join("bad", json!([]), Some("not-a-token")).await;
    assert_eq!(refused["status"], "error", "{refused}");
    for n in 1..=3 {
        app.sql(&format!("insert into public.todos (user_id, n) values ('alice', {n})")).await;
    }
    for _ in 0..3 {
        c.change("mine").await;
    }
    let (status, _) =
        app.post("/realtime/v1/api/broadcast", &app.anon(), json!({"messages": [{"topic": "room", "event": "e", "payload": {}}]})).await;
    assert_eq!(status, 202);
    // 1 attempt that completes; 1 that fails at step 2 (after step 1 broadcast its activity);
    // 1 that retries at step 3 and completes on attempt 2 (steps 1 and 2 broadcast).
    let ok = app.enqueue("alice", json!({"type": "demo", "input": {"steps": 1, "step_ms": 1}})).await;
    let failing = app.enqueue("alice", json!({"type": "demo", "input": {"mode": "fail", "steps": 2, "step_ms": 1}})).await;
    let flaky = app.enqueue("alice", json!({"type": "demo", "input": {"mode": "flaky", "steps": 3, "step_ms": 1}})).await;
    let later = app.enqueue("alice", json!({"type": "demo", "input": {}, "run_at": "2999-01-01T00:00:00Z"})).await;
    for (job, status) in [(&ok, "completed"), (&failing, "failed"), (&flaky, "completed")] {
        app.wait_job(job["id"].as_str().unwrap(), |j| j["status"] == status).await;
    }
    metrics_with(&app, &["rowcast_jobs_pending{type=\"demo\"} 1"]).await;
    let (status, _) = app.post(&format!("/api/jobs/{}/cancel", later["id"].as_str().unwrap()), &app.user("alice"), json!({})).await;
    assert_eq!(status, 200);
    metrics_with(
        &app,
        &[
            "rowcast_sockets 1",
            "rowcast_channels 1",
            "rowcast_joins_total{outcome=\"ok\"} 1",
            "rowcast_joins_total{outcome=\"token\"} 1",
            "rowcast_deliveries_total{kind=\"postgres_changes\"} 3",
            "rowcast_broadcasts_total{source=\"rest\"} 1",
            "rowcast_broadcasts_total{source=\"sql\"} 3",
            "rowcast_jobs_created_total{type=\"demo\"} 4",
            "rowcast_jobs_started_total{type=\"demo\"} 4",
            "rowcast_jobs_completed_total{type=\"demo\"} 2",
            "rowcast_jobs_failed_total{type=\"demo\"} 1",
            "rowcast_jobs_retried_total{type=\"demo\"} 1",
            "rowcast_jobs_cancelled_total{type=\"demo\"} 1",
            "rowcast_job_run_seconds_count{type=\"demo\"} 4",
            "rowcast_http_requests_total{route=\"/api/jobs\",status=\"202\"} 4",
            "rowcast_http_requests_total{route=\"/api/jobs/{id}/cancel\",status=\"200\"} 1",
            "rowcast_change_log_lag_ids 0",
        ],
    )
    .await;
    let text = metrics_with(&app, &[]).await;
    assert!(!text.contains("rowcast_jobs_pending{"), "nothing is pending after the cancel:\n{text}");
    let delivered: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rowcast_change_delivery_seconds_count "))
        .and_then(|v| v.parse().ok())
        .expect("the latency histogram is rendered");
    assert!(delivered >= 3.0, "every change read is timed (the todos and the job rows)");
}

#[tokio::test]
async fn ready_answers_503_while_the_listener_is_behind_and_200_once_it_catches_up() {
    let app = spawn_app_with(Limits { poll_ms: 200, ready_max_lag_secs: 1, ..Limits::default() }).await;
    app.owned_table("todos").await;
    let ready = || async { http_get(app.addr, "/ready").await };
    eventually(|| async {
        match ready().await {
            (200, body) if body.contains("ready") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Holding the listener's own row stalls it at its next bookkeeping write,
    // while writers keep committing: it falls behind as one stuck on a lock would.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("select 1 from rowcast.listeners for update").execute(&mut *tx).await.unwrap();
    let pool = app.pool.clone();
    let writer = tokio::spawn(async move {
        loop {
            let _ = sqlx::query("insert into public.todos (user_id) values ('w')").execute(&pool).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (_, body) = eventually(|| async {
        match ready().await {
            (503, body) if body.contains("behind") => Ok((503, body)),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    assert!(body.contains("limit 1 s"), "{body}");
    assert_eq!(app.get("/health").await.0, 200, "liveness is not readiness: a lagging node is alive");
    tx.rollback().await.unwrap();
    writer.abort();
    eventually(|| async {
        match ready().await {
            (200, _) => Ok(()),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_draining_node_fails_ready_refuses_new_sockets_then_tells_open_ones_to_reconnect() {
    let app = spawn_app_with(Limits { poll_ms: 200, drain_delay_secs: 3, ..Limits::default() }).await;
    let (addr, url) = (app.addr, app.ws_url(&app.anon(), "2.0.0"));
    let mut open = Client::v2(&app, &app.anon()).await;
    assert_eq!(open.join("room", json!([]), None).await["status"], "ok");
    let stopping = tokio::spawn(app.shutdown());
    let body = eventually(|| async {
        match http_get(addr, "/ready").await {
            (503, body) => Ok(body),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    assert!(body.contains("draining"), "{body}");
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("a new socket should be refused while draining, got {:?}", other.map(|_| ())),
    }
    open.heartbeat().await;
    open.told_to_reconnect(&["realtime:room"]).await;
    tokio::time::timeout(WAIT, stopping).await.expect("the app stops").expect("shutdown task");
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_carry_no_secret_token_or_row_data() {
    let db = fresh_database().await;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(["serve", "--log-format", "json", "--listen", &format!("127.0.0.1:{port}"), "--demo-jobs"])
        .env("DATABASE_URL", &db)
        .env("JWT_SECRET", SECRET)
        .env("ROWCAST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting rowcast");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(child.try_wait().unwrap().is_none(), "rowcast exited at start");
        assert!(tokio::time::Instant::now() < deadline, "rowcast did not listen within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = TestApp::attach(addr, &db).await;
    app.wait_healthy().await;
    // No app runs in this test process to install the TLS provider the test's HTTP client needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    app.owned_table("notes").await;
    let token = app.user("alice-7d2f");
    let row_value = "row-value-that-must-not-be-logged-3391";
    let input_value = "job-input-that-must-not-be-logged-5521";
    let mut c = Client::v2(&app, &app.anon()).await;
    c.subscribe("n", json!([{"event": "*", "schema": "public", "table": "notes"}]), Some(&token)).await;
    app.sql(&format!("insert into public.notes (user_id, title) values ('alice-7d2f', '{row_value}')")).await;
    assert_eq!(c.change("n").await["data"]["record"]["title"], row_value);
    let (status, rows) = app.get_as("/rest/v1/notes?select=*", &token).await;
    assert_eq!((status, rows[0]["title"].as_str()), (200, Some(row_value)));
    let job = app.enqueue("alice-7d2f", json!({"type": "demo", "input": {"steps": 1, "step_ms": 1, "note": input_value}})).await;
    app.wait_job(job["id"].as_str().unwrap(), |j| j["status"] == "completed").await;
    let bad = c.join("bad", json!([]), Some(&format!("{token}x"))).await;
    assert_eq!(bad["status"], "error");
    drop(c);
    let pid = child.id().expect("running") as i32;
    // SAFETY: sends SIGTERM to the child we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await.expect("rowcast stops on SIGTERM").unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() > 10, "expected a run's worth of debug logs, got:\n{logs}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(v["level"].is_string() && (v["message"].is_string() || v["message"].is_null()), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"message\":\"channel joined\"")), "structured fields are kept:\n{logs}");
    let token_signature = token.rsplit('.').next().unwrap();
    for (what, needle) in [
        ("the JWT secret", SECRET),
        ("a user's token", token.as_str()),
        ("a token's signature", token_signature),
        ("row data", row_value),
        ("job input", input_value),
    ] {
        assert!(
            !logs.contains(needle),
            "{what} appears in the logs:\n{}",
            lines.iter().filter(|l| l.contains(needle)).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

#[tokio::test]
async fn the_gateways_database_sessions_never_jit_compile() {
    // Its statements read a few rows each; compiling one took longer than running it a hundred times.
    let pool = rowcast::app::connect(&fresh_database().await).await.unwrap();
    let (jit,): (String,) = sqlx::query_as("show jit").fetch_one(&pool).await.unwrap();
    assert_eq!(jit, "off");
}
