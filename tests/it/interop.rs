//! The real `@supabase/supabase-js` (pinned in tests/js/package-lock.json)
//! under Node against the gateway. The suite lives in tests/js; this test
//! gives it a fresh gateway and database and fails with its output.

use std::path::Path;

use crate::harness::{spawn_app, SECRET};

/// Runs `node --test <file>` in tests/js against `app`; panics with the output on failure.
pub async fn run_node_suite(app: &crate::harness::TestApp, file: &str) {
    run_node_suite_with(app, file, &[]).await;
}

/// `run_node_suite` with more environment variables for the suite.
pub async fn run_node_suite_with(app: &crate::harness::TestApp, file: &str, env: &[(&str, &str)]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/@supabase/supabase-js").exists(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (scripts/test does this)"
    );
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(&dir)
        .env("ROWCAST_URL", format!("http://{}", app.addr))
        .env("DATABASE_URL", &app.db_url)
        .env("JWT_SECRET", SECRET)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running node (is Node.js 20+ installed?)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "supabase-js suite {file} failed:\n{text}");
    println!("{text}");
}

#[tokio::test]
async fn the_official_supabase_js_client_passes_the_interop_suite() {
    let app = spawn_app().await;
    run_node_suite(&app, "interop.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_subscribers_follow_a_jobs_progress_live() {
    let app = spawn_app().await;
    run_node_suite(&app, "jobs.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_reads_snapshots_through_rest_v1() {
    let app = spawn_app().await;
    run_node_suite(&app, "rest.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_sees_selected_columns_and_rows_shared_by_organisation_or_team() {
    let app = spawn_app().await;
    run_node_suite(&app, "visibility.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_clients_see_each_other_through_presence() {
    let app = spawn_app().await;
    run_node_suite(&app, "presence.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_broadcasts_over_the_socket_and_over_rest() {
    let app = spawn_app().await;
    run_node_suite(&app, "broadcast.test.mjs").await;
}

#[tokio::test]
async fn supabase_js_private_channels_follow_the_realtime_messages_policies() {
    let app = spawn_app().await;
    run_node_suite(&app, "private.test.mjs").await;
}
