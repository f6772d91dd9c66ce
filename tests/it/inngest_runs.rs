//! Inngest functions run by rowcast, driven by the Node suites in
//! tests/inngest (the real `inngest` SDK): each test starts a self-hosted
//! rowcast (signing and event keys, as `inngest start`) in some shape and
//! gives the suite the SDK's environment for it.

use rowcast::config::Secret;
use rowcast::jobs::inngest::keys::SigningKey;
use rowcast::jobs::inngest::InngestSettings;

use crate::harness::{fresh_database, spawn_configured, RunnerProcess, TestApp, SECRET};
use crate::inngest::{run_suite, KEY};

/// A self-hosted rowcast's Inngest settings: the suite's signing key and `event_key`.
fn self_hosted(event_key: &str) -> InngestSettings {
    InngestSettings {
        signing_key: Some(SigningKey::parse(KEY).unwrap()),
        event_key: Some(Secret::new(event_key)),
        ..InngestSettings::default()
    }
}

/// The SDK's environment for `app`: self-hosted mode, its URL, the keys, and the database.
fn sdk_env(app: &TestApp, event_key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("INNGEST_DEV", "0".to_owned()),
        ("INNGEST_BASE_URL", format!("http://{}", app.addr)),
        ("INNGEST_SIGNING_KEY", KEY.to_owned()),
        ("INNGEST_EVENT_KEY", event_key.to_owned()),
        ("DATABASE_URL", app.db_url.clone()),
    ]
}

#[tokio::test]
async fn inngest_functions_run_as_jobs_step_by_step_with_retries_failures_chains_limits_and_cancel() {
    const EVENT_KEY: &str = "rowcast-test-event-key-runs";
    let db = fresh_database().await;
    let settings = self_hosted(EVENT_KEY);
    let app = spawn_configured(&db, move |c| c.inngest = settings).await;
    let mut env = sdk_env(&app, EVENT_KEY);
    env.extend([("SERVICE_TOKEN", app.token(None, "service_role")), ("ANON_KEY", app.anon()), ("JWT_SECRET", SECRET.to_owned())]);
    run_suite("run.test.mjs", &env).await;
}

#[tokio::test]
async fn a_run_whose_runner_is_sigkilled_mid_step_resumes_on_another_without_rerunning_finished_steps() {
    const EVENT_KEY: &str = "rowcast-test-event-key-kill";
    let db = fresh_database().await;
    let settings = self_hosted(EVENT_KEY);
    // The gateway runs no jobs: two runner processes share them, and the suite kills the one holding the run.
    let app = spawn_configured(&db, move |c| {
        c.inngest = settings;
        c.runner = false;
    })
    .await;
    let pool = sqlx::PgPool::connect(&app.db_url).await.unwrap();
    let env = [("ROWCAST_INNGEST_SIGNING_KEY", KEY)];
    let runners = [RunnerProcess::spawn_with(&app.db_url, "", &env), RunnerProcess::spawn_with(&app.db_url, "", &env)];
    for r in &runners {
        r.ready(&pool).await;
    }
    run_suite("kill.test.mjs", &sdk_env(&app, EVENT_KEY)).await;
}

#[tokio::test]
async fn an_owner_past_the_active_run_cap_is_refused_with_429_when_sending_and_skipped_from_sql() {
    const EVENT_KEY: &str = "rowcast-test-event-key-admission";
    let db = fresh_database().await;
    let settings = InngestSettings { max_active_per_user: Some(2), ..self_hosted(EVENT_KEY) };
    let app = spawn_configured(&db, move |c| c.inngest = settings).await;
    run_suite("admission.test.mjs", &sdk_env(&app, EVENT_KEY)).await;
}

#[tokio::test]
async fn an_inngest_app_served_over_https_by_a_private_ca_syncs_by_inngest_app_and_runs() {
    const EVENT_KEY: &str = "rowcast-test-event-key-https";
    let ca = crate::https::make_private_ca();
    let (dir, ca_path) = crate::https::ca_file(&ca.ca_pem);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &ca.cert_pem).unwrap();
    std::fs::write(&key, &ca.key_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db = fresh_database().await;
    let settings = InngestSettings { apps: vec![format!("https://localhost:{port}/api/inngest")], ..self_hosted(EVENT_KEY) };
    let app = spawn_configured(&db, move |c| {
        c.inngest = settings;
        c.ca_file = Some(ca_path);
    })
    .await;
    let mut env = sdk_env(&app, EVENT_KEY);
    env.extend([("INNGEST_APP_PORT", port.to_string()), ("TLS_CERT", cert.display().to_string()), ("TLS_KEY", key.display().to_string())]);
    run_suite("https.test.mjs", &env).await;
}
