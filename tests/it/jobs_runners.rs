//! Runners as separate processes and side by side: SIGKILL and lease rescue,
//! a late worker after SIGSTOP, SIGTERM draining, limits across two
//! processes, cron slots, expiry, rate limits and retention.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::harness::{eventually, gateway_only, scalar, spawn_jobs_app, wait_job, RunnerApp, RunnerProcess, TestApp};
use crate::step_server::{step, Call, Event, Reply, StepServer};

fn http_type(name: &str, url: &str, extra: &str) -> String {
    format!("signing_secret = \"test-signing-secret\"\n[jobs.{name}]\nurl = \"{url}\"\nbackoff_base = \"100ms\"\n{extra}\n")
}

/// (attempt, step) of every call the handler saw for `job`.
fn calls_of(events: &[Event], job: &str) -> Vec<(i64, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Called(c) if c.job_id() == job => Some((c.attempt(), c.next_step())),
            _ => None,
        })
        .collect()
}

async fn enqueue_sql(app: &TestApp, job_type: &str, user: &str) -> String {
    let (id,): (uuid::Uuid,) =
        sqlx::query_as("select id from rowcast.enqueue($1, '{}', $2)").bind(job_type).bind(user).fetch_one(&app.pool).await.unwrap();
    id.to_string()
}

#[tokio::test]
async fn a_runner_killed_with_sigkill_has_its_job_resumed_elsewhere_without_repeating_steps() {
    let hold = Arc::new(Notify::new());
    let h = hold.clone();
    let mut handler = StepServer::start(move |call: &Call| match (call.next_step(), call.attempt()) {
        (1, _) => Reply::Now(200, step(1, 3, json!("one"))),
        (2, 1) => Reply::Hold(h.clone(), 200, step(2, 3, json!("never"))),
        (n, _) if n <= 3 => Reply::Now(200, step(n, 3, json!(n))),
        _ => Reply::Now(200, json!({"done": true})),
    })
    .await;
    let toml = http_type("work", &handler.url, "");
    let app = gateway_only(&toml).await;
    let mut first = RunnerProcess::spawn(&app.db_url, &toml);
    let id = enqueue_sql(&app, "work", "alice").await;
    loop {
        let c = handler.next_call().await;
        if c.job_id() == id && c.next_step() == 2 {
            break;
        }
    }
    first.signal("KILL");
    first.exited().await;
    let killed_at = std::time::Instant::now();
    let second = RunnerApp::start(&app.db_url, &toml).await;
    let done = app.wait_job(&id, |j| j["status"] == "completed").await;
    assert!(killed_at.elapsed() < Duration::from_secs(30), "resumed within 30 s: {:?}", killed_at.elapsed());
    assert_eq!(done["attempts"], 2);
    let calls = calls_of(&handler.drain(), &id);
    assert!(!calls.contains(&(2, 1)), "step 1 was not run again: {calls:?}");
    let (steps,): (Value,) = sqlx::query_as("select jsonb_object_agg(step_id, output) from rowcast.job_steps where job_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(steps["s1"], "one");
    second.stop().await;
}

#[tokio::test]
async fn a_late_worker_cannot_overwrite_a_job_rescued_from_it() {
    let hold = Arc::new(Notify::new());
    let h = hold.clone();
    let mut handler = StepServer::start(move |call: &Call| match (call.next_step(), call.attempt()) {
        (1, 1) => Reply::Hold(h.clone(), 200, json!({"done": true, "output": "from the late worker"})),
        _ => Reply::Now(200, json!({"done": true, "output": "from the rescuer"})),
    })
    .await;
    let toml = http_type("work", &handler.url, "");
    let app = gateway_only(&toml).await;
    let mut late = RunnerProcess::spawn(&app.db_url, &toml);
    let id = enqueue_sql(&app, "work", "alice").await;
    let call = handler.next_call().await;
    assert_eq!((call.job_id(), call.attempt()), (id.clone(), 1));
    late.signal("STOP");
    let rescuer = RunnerApp::start(&app.db_url, &toml).await;
    let done = app.wait_job(&id, |j| j["status"] == "completed").await;
    assert_eq!((done["attempts"].as_i64(), done["output"].clone()), (Some(2), json!("from the rescuer")));
    rescuer.stop().await;
    late.signal("CONT");
    hold.notify_waiters();
    late.signal("TERM");
    assert!(late.exited().await.success());
    let after = app.wait_job(&id, |_| true).await;
    assert_eq!(
        (after["output"].clone(), after["attempts"].as_i64(), after["updated_at"].clone()),
        (json!("from the rescuer"), Some(2), done["updated_at"].clone())
    );
}

#[tokio::test]
async fn sigterm_lets_the_running_step_finish_then_hands_the_job_back() {
    let mut handler = StepServer::start(|call: &Call| match call.next_step() {
        1 => Reply::Now(200, step(1, 3, json!(1))),
        n if n <= 3 && call.attempt() == 1 => Reply::After(Duration::from_millis(800), 200, step(n, 3, json!(n))),
        n if n <= 3 => Reply::Now(200, step(n, 3, json!(n))),
        _ => Reply::Now(200, json!({"done": true})),
    })
    .await;
    let toml = http_type("work", &handler.url, "");
    let app = gateway_only(&toml).await;
    let mut runner = RunnerProcess::spawn(&app.db_url, &toml);
    let id = enqueue_sql(&app, "work", "alice").await;
    let mut calls = Vec::new();
    while calls.last() != Some(&(1, 2)) {
        let c = handler.next_call().await;
        calls.push((c.attempt(), c.next_step()));
    }
    runner.signal("TERM");
    assert!(runner.exited().await.success(), "a clean exit");
    let released = app.wait_job(&id, |_| true).await;
    assert_eq!(
        (released["status"].as_str(), released["attempts"].as_i64(), released["progress"].as_i64()),
        (Some("pending"), Some(0), Some(66))
    );
    assert_eq!(released["message"], "released by a stopping runner");
    let next = RunnerApp::start(&app.db_url, &toml).await;
    app.wait_job(&id, |j| j["status"] == "completed").await;
    calls.extend(calls_of(&handler.drain(), &id));
    assert_eq!(calls, [(1, 1), (1, 2), (1, 3), (1, 4)], "no step ran twice; the released attempt was not spent");
    next.stop().await;
}

#[tokio::test]
async fn concurrency_limits_hold_across_two_runner_processes_and_no_attempt_runs_twice() {
    let handler = StepServer::start(|call: &Call| match call.next_step() {
        n if n <= 2 => Reply::After(Duration::from_millis(60), 200, step(n, 2, json!(n))),
        _ => Reply::Now(200, json!({"done": true})),
    })
    .await;
    let toml = http_type("limited", &handler.url, "concurrency = 3\nconcurrency_per_user = 1");
    let app = gateway_only(&toml).await;
    let mut a = RunnerProcess::spawn(&app.db_url, &toml);
    let mut b = RunnerProcess::spawn(&app.db_url, &toml);
    // Both must be up before the work starts, or the first one can finish it alone.
    a.ready(&app.pool).await;
    b.ready(&app.pool).await;
    // Which runners hold leases while the jobs run (leases go when a job ends).
    let watch = tokio::spawn({
        let pool = app.pool.clone();
        async move {
            let mut workers = HashSet::new();
            loop {
                let now: Vec<String> =
                    sqlx::query_scalar("select worker from rowcast.job_leases").fetch_all(&pool).await.unwrap_or_default();
                workers.extend(now);
                if workers.len() >= 2 {
                    return workers;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(enqueue_sql(&app, "limited", &format!("user{}", i % 4)).await);
    }
    for id in &ids {
        let done = app.wait_job(id, |j| j["status"] == "completed").await;
        assert_eq!(done["attempts"], 1);
    }
    let workers = tokio::time::timeout(Duration::from_secs(1), watch).await;
    assert!(matches!(workers, Ok(Ok(ref w)) if w.len() >= 2), "both runner processes held leases: {workers:?}");
    let mut handler = handler;
    let events = handler.drain();
    let mut seen = HashSet::new();
    for e in &events {
        if let Event::Called(c) = e {
            assert!(seen.insert((c.job_id(), c.next_step())), "a step was called twice: {}", c.job_id());
        }
    }
    assert_eq!(seen.len(), 16 * 3);
    let (max, max_per_user) = {
        let load = handler.load.lock().unwrap();
        (load.max, load.max_per_user)
    };
    assert!(max <= 3, "at most 3 running at once, saw {max}");
    assert_eq!(max_per_user, 1, "at most 1 per user");
    a.signal("TERM");
    b.signal("TERM");
    a.exited().await;
    b.exited().await;
}

#[tokio::test]
async fn each_cron_slot_fires_exactly_once_across_runners() {
    let toml = "[[cron]]\nname = \"tick\"\nschedule = \"* * * * * *\"\ntype = \"demo\"\ninput = { steps = 1, step_ms = 1 }\n";
    let app = spawn_jobs_app(toml).await;
    let other = RunnerApp::start(&app.db_url, toml).await;
    let third = RunnerApp::start(&app.db_url, toml).await;
    eventually(|| async {
        match scalar::<i64>(&app.pool, "select count(*) from rowcast.cron_slots where name = 'tick'").await {
            n if n >= 4 => Ok(()),
            n => Err(format!("cron fired {n} slots so far")),
        }
    })
    .await;
    other.stop().await;
    third.stop().await;
    let (slots, jobs, distinct): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from rowcast.cron_slots where name = 'tick'), \
                (select count(*) from rowcast.jobs where type = 'demo'), \
                (select count(distinct job_id) from rowcast.cron_slots where name = 'tick')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((jobs, distinct), (slots, slots), "one job per slot");
}

#[tokio::test]
async fn jobs_stuck_pending_or_running_past_their_limits_fail_with_a_clear_error() {
    let handler = StepServer::start(|_: &Call| Reply::After(Duration::from_secs(60), 200, json!({"done": true}))).await;
    let app = spawn_jobs_app(&http_type(
        "stuck",
        &handler.url,
        "concurrency = 1\ntimeout = \"1m\"\npending_timeout = \"1s\"\nrunning_timeout = \"2s\"",
    ))
    .await;
    let mut handler = handler;
    let running = enqueue_sql(&app, "stuck", "alice").await;
    handler.next_call().await;
    let waiting = enqueue_sql(&app, "stuck", "alice").await;
    let expired = app.wait_job(&waiting, |j| j["status"] == "failed").await;
    assert_eq!(expired["error"], "expired: still pending after 1 s");
    let timed_out = app.wait_job(&running, |j| j["status"] == "failed").await;
    assert_eq!(timed_out["error"], "timed out: still running after 2 s");
    handler.dropped(&running, 1).await;
}

#[tokio::test]
async fn the_rate_limit_spaces_a_users_starts() {
    let app = spawn_jobs_app("[jobs.rated]\nbuiltin = \"demo\"\nrate_limit = \"2/1s\"\n").await;
    let body = json!({"type": "rated", "input": {"steps": 1, "step_ms": 1}});
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.enqueue("alice", body.clone()).await["id"].as_str().unwrap().to_owned());
    }
    let other = app.enqueue("bob", body).await;
    for id in ids.iter().chain([other["id"].as_str().unwrap().to_owned()].iter()) {
        app.wait_job(id, |j| j["status"] == "completed").await;
    }
    let starts: Vec<(f64,)> =
        sqlx::query_as("select extract(epoch from started_at)::float8 from rowcast.job_starts where user_id = 'alice' order by 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(starts.len(), 5);
    for w in starts.windows(3) {
        assert!(w[2].0 - w[0].0 >= 1.0, "no three starts within one second: {starts:?}");
    }
}

#[tokio::test]
async fn finished_jobs_are_pruned_after_their_retention() {
    let app = spawn_jobs_app("[retention]\ncompleted = \"1s\"\nfailed = \"1h\"\n").await;
    let done = app.enqueue("alice", json!({"type": "demo", "input": {"steps": 1, "step_ms": 1}})).await;
    let failed = app.enqueue("alice", json!({"type": "demo", "input": {"mode": "fail", "step_ms": 1}})).await;
    app.wait_job(failed["id"].as_str().unwrap(), |j| j["status"] == "failed").await;
    let pruned = format!("select count(*) = 0 from rowcast.jobs where id = '{}'", done["id"].as_str().unwrap());
    let (pruned, pool) = (&pruned, &app.pool);
    eventually(|| async move {
        if scalar::<bool>(pool, pruned).await {
            Ok(())
        } else {
            Err("the completed job is still there".into())
        }
    })
    .await;
    let still = wait_job(&app.pool, failed["id"].as_str().unwrap(), |_| true).await;
    assert_eq!(still["status"], "failed", "failed jobs keep their longer retention");
}

#[tokio::test]
async fn a_step_still_running_after_the_grace_period_is_interrupted_and_its_job_handed_back() {
    let mut handler = StepServer::start(|_: &Call| Reply::After(Duration::from_secs(60), 200, json!({"done": true}))).await;
    let toml = format!(
        "{}[runner]\npoll = \"100ms\"\nlease = \"2s\"\nshutdown_grace = \"1s\"\n",
        http_type("long", &handler.url, "timeout = \"2m\"")
    );
    let app = gateway_only(&toml).await;
    let mut runner = RunnerProcess::spawn(&app.db_url, &toml);
    let id = enqueue_sql(&app, "long", "alice").await;
    handler.next_call().await;
    runner.signal("TERM");
    assert!(runner.exited().await.success(), "a clean exit after the grace period");
    handler.dropped(&id, 1).await;
    let released = app.wait_job(&id, |_| true).await;
    assert_eq!((released["status"].as_str(), released["attempts"].as_i64()), (Some("pending"), Some(0)));
    assert_eq!(released["message"], "released by a stopping runner");
}

#[tokio::test]
async fn a_claim_does_not_walk_the_backlog_of_a_user_at_their_limit() {
    // No runner: the test claims by hand, with the type's limit written as a runner would.
    let app = gateway_only("").await;
    let db = &app.pool;
    // The hog is at their limit with 5,000 jobs queued first; another user's job comes after them.
    sqlx::raw_sql(
        "insert into rowcast.job_types (type, concurrency_per_user) values ('capped', 1);
         insert into rowcast.jobs (type, user_id, status, attempts) values ('capped', 'hog', 'running', 1);
         insert into rowcast.jobs (type, user_id, run_at) select 'capped', 'hog', now() - interval '1 hour' from generate_series(1, 5000);
         insert into rowcast.jobs (type, user_id, run_at) values ('capped', 'other', now() - interval '1 minute');
         analyze rowcast.jobs;",
    )
    .execute(db)
    .await
    .unwrap();
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("begin").execute(&mut *conn).await.unwrap();
    let (user,): (Option<String>,) =
        sqlx::query_as("select user_id from rowcast.claim('capped', 'test-worker', 30)").fetch_one(&mut *conn).await.unwrap();
    let (fetched,): (i64,) = sqlx::query_as(
        "select coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) from pg_stat_xact_user_tables where relid = 'rowcast.jobs'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    sqlx::query("rollback").execute(&mut *conn).await.unwrap();
    assert_eq!(user.as_deref(), Some("other"), "the job of the user below their limit is claimed");
    assert!(fetched < 500, "the claim read {fetched} job rows to get past the capped user's 5,000");
}
