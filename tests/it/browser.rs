//! The demo page and the browser extension in a real Chromium (Debian's, via
//! playwright-core): the suites live in tests/browser; this test gives them a
//! gateway in demo mode (demo sessions, demo jobs, the web demo served) on a
//! fresh database. Screenshots land in tests/artifacts/.

use std::path::Path;

use rowcast::app::{App, AppConfig};
use rowcast::config::Secret;

use crate::harness::{fresh_database, jobs_config, SECRET};

#[tokio::test]
async fn the_demo_page_and_the_extension_work_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/test (it runs npm ci)"
    );
    assert!(
        root.join("web-demo/node_modules/@supabase/supabase-js").exists(),
        "web-demo/node_modules is missing: run scripts/test (it runs npm ci)"
    );
    let db = fresh_database().await;
    let mut config = AppConfig::new(db.clone(), "127.0.0.1:0".parse().unwrap(), Some(Secret::new(SECRET)));
    // A failure rate alert after a single failed run, for the dashboard suite to show.
    config.jobs = jobs_config("[alerts]\nmin_ended = 1\n");
    config.demo = true;
    config.web_dir = root.join("web-demo");
    let app = App::build(config).await.expect("building the demo app");
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let artifacts = root.join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1", "tests/browser/"])
        .current_dir(root)
        .env("ROWCAST_URL", format!("http://{addr}"))
        .env("ARTIFACTS_DIR", &artifacts)
        .env("JWT_SECRET", SECRET)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running node");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = stop.send(());
    let _ = task.await;
    assert!(out.status.success(), "browser suite failed:\n{text}");
    println!("{text}");
}
