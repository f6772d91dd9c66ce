//! The example step handler shipped in examples/step-handler runs a job to completion.

use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::harness::{spawn_jobs_app, WAIT};

/// Starts the example with `secret` on a free port; the process and its port.
async fn start_example(secret: &str) -> (Child, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/step-handler/handler.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .env("PORT", "0")
        .env("ROWCAST_SIGNING_SECRET", secret)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node (is Node.js 20+ installed?)");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("the example starts").unwrap().unwrap();
    (node, line.trim_start_matches("listening on ").to_owned())
}

fn config(secret: &str, port: &str) -> String {
    format!("signing_secret = \"{secret}\"\n[jobs.summarize]\nurl = \"http://127.0.0.1:{port}/\"\n")
}

#[tokio::test]
async fn the_shipped_node_example_handler_runs_a_signed_job_to_completion() {
    let (_node, port) = start_example("example-secret").await;
    let app = spawn_jobs_app(&config("example-secret", &port)).await;
    let row = app.enqueue("alice", json!({"type": "summarize", "input": {"doc": 42}})).await;
    let done = app.wait_job(row["id"].as_str().unwrap(), |j| j["status"] != "pending" && j["status"] != "running").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], json!({"text": "document 42 has five words", "words": 5}));
    assert_eq!(done["message"], "finished count");
    let (steps,): (i64,) = sqlx::query_as("select count(*) from rowcast.job_steps where job_id = $1::uuid")
        .bind(row["id"].as_str())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(steps, 2);
}

#[tokio::test]
async fn the_example_handler_refuses_a_wrong_signature_and_the_job_fails_at_once() {
    let (_node, port) = start_example("the-real-secret").await;
    let app = spawn_jobs_app(&config("a-wrong-secret", &port)).await;
    let row = app.enqueue("alice", json!({"type": "summarize", "input": {"doc": 1}})).await;
    let done = app.wait_job(row["id"].as_str().unwrap(), |j| j["status"] == "failed").await;
    assert_eq!((done["error"].as_str(), done["attempts"].as_i64()), (Some("bad signature"), Some(1)));
}
