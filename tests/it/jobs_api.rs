//! The job REST API and the HTTP step protocol, end to end with a runner.

use serde_json::{json, Value};

use crate::harness::{eventually, spawn_jobs_app};
use crate::step_server::{program, step, Call, Event, Reply, StepServer};

fn http_type(name: &str, url: &str, extra: &str) -> String {
    format!("signing_secret = \"test-signing-secret\"\n[jobs.{name}]\nurl = \"{url}\"\nbackoff_base = \"200ms\"\nbackoff_max = \"1s\"\n{extra}\n")
}

fn id(row: &Value) -> String {
    row["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_enqueued_demo_job_returns_202_at_once_and_runs_to_completion() {
    let app = spawn_jobs_app("").await;
    let row = app.enqueue("alice", json!({"type": "demo", "input": {"steps": 3, "step_ms": 10}})).await;
    assert_eq!((row["status"].as_str(), row["user_id"].as_str(), row["attempts"].as_i64()), (Some("pending"), Some("alice"), Some(0)));
    let done = app.wait_job(&id(&row), |j| j["status"] == "completed").await;
    assert_eq!((done["progress"].as_i64(), done["attempts"].as_i64()), (Some(100), Some(1)));
    assert_eq!(done["output"], json!({"steps": 3, "mode": "quick"}));
    assert_eq!(done["message"], "step 3 of 3");
    let (status, got) = app.get_as(&format!("/api/jobs/{}", id(&row)), &app.user("alice")).await;
    assert_eq!((status, got["status"].as_str()), (200, Some("completed")));
    let (status, list) = app.get_as("/api/jobs?status=completed&type=demo&limit=5", &app.user("alice")).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
}

#[tokio::test]
async fn another_users_job_is_a_404_and_the_service_role_sees_all() {
    let app = spawn_jobs_app("").await;
    let row = app.enqueue("alice", json!({"type": "demo", "input": {"steps": 1, "step_ms": 1}})).await;
    let path = format!("/api/jobs/{}", id(&row));
    assert_eq!(app.get_as(&path, &app.user("bob")).await.0, 404);
    assert_eq!(app.post(&format!("{path}/cancel"), &app.user("bob"), json!({})).await.0, 404);
    assert_eq!(app.get_as(&path, &app.token(None, "service_role")).await.0, 200);
    let (_, bobs) = app.get_as("/api/jobs", &app.user("bob")).await;
    assert_eq!(bobs, json!([]));
}

#[tokio::test]
async fn bad_requests_get_precise_errors() {
    let app = spawn_jobs_app("[jobs.admin]\nbuiltin = \"demo\"\nenqueue = \"service\"\n").await;
    let alice = app.user("alice");
    let cases = [
        (app.post("/api/jobs", "not-a-jwt", json!({"type": "demo"})).await, 401, "not a valid JWT"),
        (app.post("/api/jobs", &app.anon(), json!({"type": "demo"})).await, 401, "signed-in user"),
        (app.post("/api/jobs", &alice, json!({"type": "nope"})).await, 400, "unknown job type"),
        (app.post("/api/jobs", &alice, json!({"input": {}})).await, 400, "type"),
        (app.post("/api/jobs", &alice, json!({"type": "demo", "colour": 1})).await, 400, "colour"),
        (app.post("/api/jobs", &alice, json!({"type": "admin"})).await, 403, "service role"),
        (app.post("/api/jobs", &alice, json!({"type": "demo", "user_id": "bob"})).await, 403, "another user"),
        (app.get_as("/api/jobs?limit=0", &alice).await, 400, "limit"),
    ];
    for ((status, body), want_status, want_text) in cases {
        assert_eq!(status, want_status, "{body}");
        assert!(body["error"].as_str().unwrap_or_default().contains(want_text), "{body} should mention {want_text}");
    }
}

#[tokio::test]
async fn a_duplicate_idempotency_key_is_409_with_the_active_job_and_free_again_after_it_ends() {
    let app = spawn_jobs_app("").await;
    let body = json!({"type": "demo", "input": {"steps": 1, "step_ms": 1}, "idempotency_key": "k1", "run_at": "2999-01-01T00:00:00Z"});
    let first = app.enqueue("alice", body.clone()).await;
    let (status, dup) = app.post("/api/jobs", &app.user("alice"), body.clone()).await;
    assert_eq!((status, dup["job_id"].as_str()), (409, first["id"].as_str()));
    app.enqueue("bob", body.clone()).await;
    let (status, _) = app.post(&format!("/api/jobs/{}/cancel", id(&first)), &app.user("alice"), json!({})).await;
    assert_eq!(status, 200);
    app.enqueue("alice", body).await;
}

#[tokio::test]
async fn more_active_jobs_than_max_active_per_user_is_429() {
    let app = spawn_jobs_app("[jobs.capped]\nbuiltin = \"demo\"\nmax_active_per_user = 2\n").await;
    let later = json!({"type": "capped", "run_at": "2999-01-01T00:00:00Z"});
    app.enqueue("alice", later.clone()).await;
    app.enqueue("alice", later.clone()).await;
    let (status, body) = app.post("/api/jobs", &app.user("alice"), later.clone()).await;
    assert_eq!(status, 429);
    assert!(body["error"].as_str().unwrap().contains("at most 2"), "{body}");
    app.enqueue("bob", later).await;
}

#[tokio::test]
async fn http_steps_are_signed_and_memoized_and_a_retry_skips_finished_steps() {
    let mut handler = StepServer::start(|call: &Call| match (call.next_step(), call.attempt()) {
        (2, 1) => Reply::Now(503, json!({})),
        (n, _) if n <= 3 => Reply::Now(200, step(n, 3, json!({"attempt": call.attempt()}))),
        _ => Reply::Now(200, json!({"done": true, "output": {"ok": true}})),
    })
    .await;
    let app = spawn_jobs_app(&http_type("summarize", &handler.url, "max_attempts = 3")).await;
    let row = app.enqueue("alice", json!({"type": "summarize", "input": {"doc": 7}})).await;
    let done = app.wait_job(&id(&row), |j| j["status"] == "completed").await;
    assert_eq!((done["attempts"].as_i64(), done["output"].clone()), (Some(2), json!({"ok": true})));
    let calls: Vec<Call> = handler.drain().into_iter().filter_map(|e| if let Event::Called(c) = e { Some(c) } else { None }).collect();
    let seen: Vec<(i64, usize)> = calls.iter().map(|c| (c.attempt(), c.next_step())).collect();
    assert_eq!(seen, [(1, 1), (1, 2), (2, 2), (2, 3), (2, 4)], "step 1 is never run again");
    assert_eq!(calls[2].steps["s1"], json!({"attempt": 1}), "the retry is handed step 1's memoized output");
    assert_eq!(calls[0].job["input"], json!({"doc": 7}));
    for c in &calls {
        let sig = c.signature.as_deref().expect("every call is signed");
        let t: i64 = sig.trim_start_matches("t=").split(',').next().unwrap().parse().unwrap();
        assert_eq!(sig, rowcast::jobs::steps::sign("test-signing-secret", t, c.body.as_bytes()));
    }
}

#[tokio::test]
async fn a_last_step_answered_with_done_is_stored_with_the_completion_in_one_row_change() {
    let handler = StepServer::start(|call: &Call| match call.next_step() {
        1 => Reply::Now(200, step(1, 2, json!("first"))),
        _ => {
            let mut last = step(2, 2, json!("second"));
            last["done"] = json!(true);
            last["output"] = json!({"ok": 2});
            last["broadcast"] = json!([{"topic": "done-topic", "event": "finished", "payload": {"n": 2}}]);
            Reply::Now(200, last)
        }
    })
    .await;
    let app = spawn_jobs_app(&http_type("folded", &handler.url, "")).await;
    // Captured as if a page were open (migration 0028: nobody watching, nothing is logged).
    app.sql("select setval('rowcast.jobs_watched_until', 4102444800)").await;
    let row = app.enqueue("alice", json!({"type": "folded"})).await;
    let done = app.wait_job(&id(&row), |j| j["status"] == "completed").await;
    assert_eq!(
        (done["output"].clone(), done["progress"].as_i64(), done["message"].as_str()),
        (json!({"ok": 2}), Some(100), Some("step 2 of 2"))
    );
    let steps: Value = sqlx::query_scalar("select jsonb_object_agg(step_id, output) from rowcast.job_steps where job_id = $1::uuid")
        .bind(id(&row))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(steps, json!({"s1": "first", "s2": "second"}), "the last step is stored like any other");
    let updates: i64 = sqlx::query_scalar(
        "select count(*) from rowcast.changes where schema_name = 'rowcast' and table_name = 'jobs' and op = 'UPDATE' and record->>'id' = $1",
    )
    .bind(id(&row))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(updates, 3, "claim, step 1, then step 2 with the completion in one write");
    let sent: i64 =
        sqlx::query_scalar("select count(*) from realtime.messages where topic = 'done-topic'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(sent, 1, "the last step's broadcast is sent once");
}

#[tokio::test]
async fn a_non_retriable_error_fails_at_once_and_runs_the_failure_hook() {
    let handler = StepServer::start(|_: &Call| Reply::Now(200, json!({"error": {"message": "bad input", "retriable": false}}))).await;
    let app = spawn_jobs_app(&format!("{}on_failure = \"job:demo\"\n", http_type("strict", &handler.url, "max_attempts = 5"))).await;
    let row = app.enqueue("alice", json!({"type": "strict"})).await;
    let failed = app.wait_job(&id(&row), |j| j["status"] == "failed").await;
    assert_eq!((failed["attempts"].as_i64(), failed["error"].as_str()), (Some(1), Some("bad input")));
    let input: Value = eventually(|| async {
        let follow: Option<Value> = sqlx::query_scalar("select input from rowcast.jobs where type = 'demo' and user_id = 'alice'")
            .fetch_optional(&app.pool)
            .await
            .unwrap();
        follow.ok_or_else(|| "no follow-up job yet".to_owned())
    })
    .await;
    assert_eq!(input["failed_job"]["id"], row["id"]);
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_last_attempt_fails_the_job() {
    let handler = StepServer::start(|_: &Call| Reply::Now(200, json!({"error": {"message": "busy", "retry_after_ms": 400}}))).await;
    let app = spawn_jobs_app(&http_type("busy", &handler.url, "max_attempts = 3")).await;
    let row = app.enqueue("alice", json!({"type": "busy"})).await;
    let started = std::time::Instant::now();
    let failed = app.wait_job(&id(&row), |j| j["status"] == "failed").await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["error"], "busy (gave up after 3 attempts)");
    assert!(started.elapsed() >= std::time::Duration::from_millis(800), "two waits of 400 ms: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_step_over_its_timeout_is_cut_off_and_retried() {
    let mut handler = StepServer::start(|call: &Call| match call.attempt() {
        1 => Reply::After(std::time::Duration::from_secs(30), 200, json!({"done": true})),
        _ => Reply::Now(200, json!({"done": true, "output": "second try"})),
    })
    .await;
    let app = spawn_jobs_app(&http_type("slow", &handler.url, "timeout = \"300ms\"")).await;
    let row = app.enqueue("alice", json!({"type": "slow"})).await;
    handler.dropped(&id(&row), 1).await;
    let done = app.wait_job(&id(&row), |j| j["status"] == "completed").await;
    assert_eq!((done["attempts"].as_i64(), done["output"].clone()), (Some(2), json!("second try")));
}

#[tokio::test]
async fn cancelling_a_running_job_tells_its_handler_and_writes_nothing_more() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let hold = release.clone();
    let mut handler = StepServer::start(move |call: &Call| match call.next_step() {
        1 => Reply::Now(200, step(1, 3, json!(1))),
        n => Reply::Hold(hold.clone(), 200, step(n, 3, json!(n))),
    })
    .await;
    let app = spawn_jobs_app(&http_type("held", &handler.url, "")).await;
    let row = app.enqueue("alice", json!({"type": "held"})).await;
    app.wait_job(&id(&row), |j| j["progress"] == 33).await;
    let (status, cancelled) = app.post(&format!("/api/jobs/{}/cancel", id(&row)), &app.user("alice"), json!({})).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")));
    handler.dropped(&id(&row), 2).await;
    release.notify_waiters();
    let (steps,): (i64,) =
        sqlx::query_as("select count(*) from rowcast.job_steps where job_id = $1::uuid").bind(id(&row)).fetch_one(&app.pool).await.unwrap();
    let after = app.wait_job(&id(&row), |_| true).await;
    assert_eq!((steps, after["status"].as_str(), after["progress"].as_i64()), (1, Some("cancelled"), Some(33)));
    let (status, _) = app.post(&format!("/api/jobs/{}/cancel", id(&row)), &app.user("alice"), json!({})).await;
    assert_eq!(status, 409, "a cancelled job cannot be cancelled again");
}

#[tokio::test]
async fn retrying_a_failed_job_resumes_after_its_finished_steps() {
    let fail_first = std::sync::atomic::AtomicBool::new(true);
    let mut handler = StepServer::start(move |call: &Call| {
        if call.next_step() == 2 && fail_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Reply::Now(200, json!({"error": {"message": "no", "retriable": false}}));
        }
        program(2)(call)
    })
    .await;
    let app = spawn_jobs_app(&http_type("again", &handler.url, "")).await;
    let row = app.enqueue("alice", json!({"type": "again"})).await;
    app.wait_job(&id(&row), |j| j["status"] == "failed").await;
    let (status, retried) = app.post(&format!("/api/jobs/{}/retry", id(&row)), &app.user("alice"), json!({})).await;
    assert_eq!((status, retried["status"].as_str(), retried["attempts"].as_i64()), (202, Some("pending"), Some(0)));
    app.wait_job(&id(&row), |j| j["status"] == "completed").await;
    let steps: Vec<usize> =
        handler.drain().into_iter().filter_map(|e| if let Event::Called(c) = e { Some(c.next_step()) } else { None }).collect();
    assert_eq!(steps, [1, 2, 2, 3], "step 1 ran once");
}

#[tokio::test]
async fn a_bulk_enqueue_creates_children_whose_progress_the_parent_counts() {
    let app = spawn_jobs_app("").await;
    let child = json!({"type": "demo", "input": {"steps": 2, "step_ms": 5}});
    let (status, parent) = app.post("/api/jobs/bulk", &app.user("alice"), json!({"jobs": [child, child, child]})).await;
    assert_eq!((status, parent["type"].as_str(), parent["status"].as_str()), (202, Some("bulk"), Some("running")));
    let done = app.wait_job(&id(&parent), |j| j["status"] == "completed").await;
    assert_eq!((done["progress"].as_i64(), done["message"].as_str()), (Some(100), Some("3 of 3 jobs finished")));
    let (children,): (i64,) = sqlx::query_as("select count(*) from rowcast.jobs where parent_id = $1::uuid and status = 'completed'")
        .bind(id(&parent))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(children, 3);
}

#[tokio::test]
async fn sql_enqueue_joins_the_apps_own_transaction() {
    let app = spawn_jobs_app("").await;
    let mut tx = app.pool.begin().await.unwrap();
    let (rolled,): (uuid::Uuid,) = sqlx::query_as("select id from rowcast.enqueue('demo', '{\"steps\": 1, \"step_ms\": 1}', 'alice')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    let (kept,): (uuid::Uuid,) = sqlx::query_as("select id from rowcast.enqueue('demo', '{\"steps\": 1, \"step_ms\": 1}', 'alice')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    app.wait_job(&kept.to_string(), |j| j["status"] == "completed").await;
    let (n,): (i64,) = sqlx::query_as("select count(*) from rowcast.jobs where id = $1").bind(rolled).fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0, "a rolled-back enqueue leaves no job");
}

#[tokio::test]
async fn an_http_failure_hook_receives_the_failed_job_signed() {
    let mut handler = StepServer::start(|call: &Call| {
        if call.body.contains("\"job.failed\"") {
            Reply::Now(200, json!({}))
        } else {
            Reply::Now(200, json!({"error": {"message": "boom", "retriable": false}}))
        }
    })
    .await;
    let hook = handler.url.clone();
    let app = spawn_jobs_app(&format!("{}on_failure = \"{hook}\"\n", http_type("hooked", &handler.url, ""))).await;
    let row = app.enqueue("alice", json!({"type": "hooked"})).await;
    app.wait_job(&id(&row), |j| j["status"] == "failed").await;
    loop {
        let call = handler.next_call().await;
        if call.body.contains("\"job.failed\"") {
            let body: Value = serde_json::from_str(&call.body).unwrap();
            assert_eq!((body["job"]["id"].clone(), body["job"]["error"].as_str()), (row["id"].clone(), Some("boom")));
            let sig = call.signature.expect("the hook call is signed");
            let t: i64 = sig.trim_start_matches("t=").split(',').next().unwrap().parse().unwrap();
            assert_eq!(sig, rowcast::jobs::steps::sign("test-signing-secret", t, call.body.as_bytes()));
            break;
        }
    }
}

#[tokio::test]
async fn serve_mode_offers_no_way_to_obtain_a_token() {
    let app = spawn_jobs_app("").await;
    let (status, _) = app.get("/demo/session?user=alice").await;
    assert_eq!(status, 404, "demo sessions exist only in `rowcast demo`");
}
