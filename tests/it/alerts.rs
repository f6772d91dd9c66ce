//! Alert thresholds: a crossing is POSTed to the webhook once, signed like
//! step calls, however many runners watch, and once more when it clears; a
//! notice the webhook refuses is sent again until it is taken.

use serde_json::{json, Value};

use rowcast::config::Limits;

use crate::harness::{eventually, fresh_database, spawn_on, RunnerApp};
use crate::step_server::{Event, Reply, StepServer};

/// The alert webhook's posts received so far, as JSON, with their signatures.
fn posts(events: Vec<Event>) -> Vec<(Value, Option<String>)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Called(call) => Some((serde_json::from_str(&call.body).unwrap(), call.signature)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_crossed_queue_depth_is_posted_once_signed_across_two_runners_and_once_when_it_clears() {
    let mut hook = StepServer::start(|_| Reply::Now(200, json!({}))).await;
    let toml = format!(
        "signing_secret = \"alert-secret\"\n[jobs.later]\nurl = \"{0}\"\n[alerts]\nwebhook = \"{0}\"\nqueue_depth = 2\nevery = \"100ms\"\n",
        hook.url
    );
    let db = fresh_database().await;
    let app = spawn_on(&db, Limits { poll_ms: 100, ..Limits::default() }, &toml, true).await;
    let second = RunnerApp::start(&db, &toml).await;
    // Two jobs due in an hour: the queue of `later` is 2 deep, nothing runs.
    for _ in 0..2 {
        sqlx::query("select rowcast.enqueue('later', '{}', 'u1', null, now() + interval '1 hour')").execute(&app.pool).await.unwrap();
    }
    let crossed = hook.next_call().await;
    let body: Value = serde_json::from_str(&crossed.body).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["alert"].as_str(), body["state"].as_str()),
        (Some("later"), Some("queue_depth"), Some("crossed"))
    );
    assert_eq!((body["value"].as_f64(), body["threshold"].as_f64()), (Some(2.0), Some(2.0)));
    let signature = crossed.signature.expect("the alert is signed");
    let t: i64 = signature.strip_prefix("t=").and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    assert_eq!(signature, rowcast::jobs::steps::sign("alert-secret", t, crossed.body.as_bytes()));

    sqlx::query("update rowcast.jobs set status = 'cancelled' where type = 'later'").execute(&app.pool).await.unwrap();
    let cleared = hook.next_call().await;
    let body: Value = serde_json::from_str(&cleared.body).unwrap();
    assert_eq!((body["alert"].as_str(), body["state"].as_str()), (Some("queue_depth"), Some("cleared")));
    // Many checks by two watchers later, still one post per change.
    let state: bool = sqlx::query_scalar("select crossed from rowcast.alert_states where type = 'later' and alert = 'queue_depth'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!state);
    second.stop().await;
    assert!(posts(hook.drain()).is_empty(), "no further alert posts");
}

#[tokio::test]
async fn a_crossing_the_webhook_refuses_is_sent_again_until_it_is_taken_and_then_never_again() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&calls);
    // Down for the first two tries, then up.
    let mut hook = StepServer::start(move |_| {
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < 2 {
            Reply::Now(503, json!({}))
        } else {
            Reply::Now(200, json!({}))
        }
    })
    .await;
    let toml = format!(
        "signing_secret = \"s\"\n[jobs.later]\nurl = \"{0}\"\n[alerts]\nwebhook = \"{0}\"\nqueue_depth = 1\nevery = \"100ms\"\n",
        hook.url
    );
    let db = fresh_database().await;
    let app = spawn_on(&db, Limits { poll_ms: 100, ..Limits::default() }, &toml, true).await;
    let second = RunnerApp::start(&db, &toml).await;
    sqlx::query("select rowcast.enqueue('later', '{}', 'u1', null, now() + interval '1 hour')").execute(&app.pool).await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(serde_json::from_str::<Value>(&hook.next_call().await.body).unwrap());
    }
    assert_eq!(bodies[0]["state"], "crossed");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "the same notice each time: {bodies:?}");
    // Delivered on the third try, after two refusals: the notice is settled once its answer is read.
    eventually(|| async {
        let owed: (Option<Value>, i32) =
            sqlx::query_as("select pending, attempts from rowcast.alert_states where type = 'later' and alert = 'queue_depth'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if owed == (None, 2) {
            Ok(())
        } else {
            Err(format!("still owed: {owed:?}"))
        }
    })
    .await;
    second.stop().await;
    assert!(posts(hook.drain()).is_empty(), "nothing more once it was taken");
}
