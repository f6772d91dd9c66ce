//! The real `inngest` SDK (tests/inngest, pinned in its lock file) syncing
//! with rowcast: the Node suites drive the SDK's serve handler; these tests
//! give them a gateway (holding the apps' signing key and pinging one app
//! with `--inngest-app`, or in dev mode), then list what synced with
//! `rowcast inngest apps`.

use std::path::{Path, PathBuf};

use rowcast::config::Secret;
use rowcast::jobs::inngest::keys::SigningKey;
use rowcast::jobs::inngest::InngestSettings;

use crate::harness::{fresh_database, spawn_configured};

/// The key the gateway and the suite's apps share (`INNGEST_SIGNING_KEY`).
pub(crate) const KEY: &str = "signkey-test-8ee2262a15e8d3c42d6a840db7af3de2aab08ef632b32a37a687f24b9b4e1f1e";

/// tests/inngest, with its packages installed.
fn suite_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inngest");
    assert!(
        dir.join("node_modules/inngest").exists(),
        "tests/inngest/node_modules is missing: run `npm ci --prefix tests/inngest` (scripts/test does this)"
    );
    dir
}

/// Runs `node --test <file>` in tests/inngest with `env`; panics with its output on failure.
pub(crate) async fn run_suite(file: &str, env: &[(&str, String)]) {
    let mut node = tokio::process::Command::new("node");
    node.args(["--test", "--test-reporter=spec", "--test-concurrency=1", file]).current_dir(suite_dir()).kill_on_drop(true);
    for (k, v) in env {
        node.env(k, v);
    }
    let out = node.output().await.expect("running node (is Node.js 20+ installed?)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the inngest SDK suite {file} failed:\n{text}");
}

#[tokio::test]
async fn the_inngest_sdk_syncs_its_functions_by_put_and_by_inngest_app_and_a_wrong_key_is_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db = fresh_database().await;
    let settings = InngestSettings {
        signing_key: Some(SigningKey::parse(KEY).unwrap()),
        apps: vec![format!("http://127.0.0.1:{port}/api/inngest")],
        ..InngestSettings::default()
    };
    let app = spawn_configured(&db, move |c| c.inngest = settings).await;
    run_suite(
        "sync.test.mjs",
        &[
            ("INNGEST_DEV", "0".to_owned()),
            ("INNGEST_BASE_URL", format!("http://{}", app.addr)),
            ("INNGEST_SIGNING_KEY", KEY.to_owned()),
            ("INNGEST_APP_PORT", port.to_string()),
            ("DATABASE_URL", app.db_url.clone()),
        ],
    )
    .await;
    let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(["inngest", "apps"])
        .env("DATABASE_URL", &app.db_url)
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("summarizer  http://127.0.0.1:") && listed.contains("  summarizer-summarize\n"),
        "rowcast inngest apps:\n{listed}"
    );
    assert!(listed.contains("  deployer-new-one\n") && !listed.contains("deployer-old-one"), "rowcast inngest apps:\n{listed}");
}

#[tokio::test]
async fn inngest_send_single_and_batch_events_are_stored_with_ids_and_deduplicated_by_their_id() {
    const EVENT_KEY: &str = "rowcast-test-event-key-0123456789";
    let db = fresh_database().await;
    let settings = InngestSettings { event_key: Some(Secret::new(EVENT_KEY)), ..InngestSettings::default() };
    let app = spawn_configured(&db, move |c| c.inngest = settings).await;
    run_suite(
        "events.test.mjs",
        &[
            ("INNGEST_DEV", "0".to_owned()),
            ("INNGEST_BASE_URL", format!("http://{}", app.addr)),
            ("INNGEST_EVENT_KEY", EVENT_KEY.to_owned()),
            ("DATABASE_URL", app.db_url.clone()),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_unsigned_app_in_dev_mode_syncs_with_a_rowcast_in_dev_mode() {
    let db = fresh_database().await;
    let app = spawn_configured(&db, |c| c.inngest = InngestSettings { dev: true, ..InngestSettings::default() }).await;
    run_suite("dev.test.mjs", &[("INNGEST_DEV", format!("http://{}", app.addr)), ("DATABASE_URL", app.db_url.clone())]).await;
}

#[tokio::test]
async fn inngest_app_without_a_signing_key_or_dev_mode_stops_the_start_with_what_to_set() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(["serve", "--inngest-app", "http://127.0.0.1:9/api/inngest"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .env("JWT_SECRET", "a-secret-of-sixteen-bytes")
        .env_remove("ROWCAST_INNGEST_SIGNING_KEY")
        .env_remove("ROWCAST_INNGEST_DEV")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--inngest-app needs --inngest-signing-key"), "{err}");
}
