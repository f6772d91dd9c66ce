//! Step calls and failure hooks over https: a CA made by the test signs the
//! handler's certificate, and the runner trusts it through `--ca-file`.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

use crate::harness::{eventually, fresh_database, jobs_config, spawn_configured, TestApp};
use crate::step_server::{step, Call, Event, Reply, StepServer};

/// A private CA's PEM, and a certificate for localhost it signed with that
/// certificate's key, both as PEM and as DER.
pub(crate) struct PrivateCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// Makes a CA and a localhost certificate it signed.
pub(crate) fn make_private_ca() -> PrivateCa {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "rowcast test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    PrivateCa {
        ca_pem,
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        cert_der: leaf.der().clone(),
        key_der: leaf_key.serialize_der(),
    }
}

/// A private CA (its PEM) and a TLS acceptor whose certificate for localhost it signed.
fn private_ca() -> (String, tokio_rustls::TlsAcceptor) {
    let ca = make_private_ca();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key_der));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ca.cert_der], key)
        .unwrap();
    (ca.ca_pem, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One type whose steps and failure hook are `url`, signed.
fn secure_type(url: &str) -> String {
    format!("signing_secret = \"test-signing-secret\"\n[jobs.secure]\nurl = \"{url}\"\nmax_attempts = 1\non_failure = \"{url}\"\n")
}

/// A gateway and runner that trust `ca_file` (if any) besides the system's roots.
async fn app_trusting(toml: &str, ca_file: Option<std::path::PathBuf>) -> TestApp {
    let db = fresh_database().await;
    let jobs = jobs_config(toml);
    spawn_configured(&db, move |c| {
        c.jobs = jobs;
        c.runner = true;
        c.ca_file = ca_file;
    })
    .await
}

pub(crate) fn ca_file(pem: &str) -> (tempfile_dir::Dir, std::path::PathBuf) {
    let dir = tempfile_dir::Dir::new();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    (dir, path)
}

/// A directory removed when dropped (the tests' own, to keep dev-dependencies lean).
pub(crate) mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!("rowcast-https-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn steps_and_the_failure_hook_reach_an_https_handler_whose_ca_is_in_the_ca_file() {
    let (pem, tls) = private_ca();
    let mut handler = StepServer::start_tls(tls, |call: &Call| {
        if call.body.contains("\"job.failed\"") {
            Reply::Now(200, json!({}))
        } else if call.job["input"]["fail"] == true {
            Reply::Now(200, json!({"error": {"message": "bad input", "retriable": false}}))
        } else {
            let mut last = step(1, 1, json!("over tls"));
            last["done"] = json!(true);
            last["output"] = json!({"secure": true});
            Reply::Now(200, last)
        }
    })
    .await;
    assert!(handler.url.starts_with("https://localhost:"));
    let (_dir, path) = ca_file(&pem);
    let app = app_trusting(&secure_type(&handler.url), Some(path)).await;
    let ok = app.enqueue("alice", json!({"type": "secure"})).await;
    let done = app.wait_job(ok["id"].as_str().unwrap(), |j| j["status"] == "completed").await;
    assert_eq!(done["output"], json!({"secure": true}));
    let bad = app.enqueue("alice", json!({"type": "secure", "input": {"fail": true}})).await;
    app.wait_job(bad["id"].as_str().unwrap(), |j| j["status"] == "failed").await;
    loop {
        if let Event::Called(call) = handler.next().await {
            if call.body.contains("\"job.failed\"") {
                let body: Value = serde_json::from_str(&call.body).unwrap();
                assert_eq!(body["job"]["id"], bad["id"], "the hook got the failed job over https");
                break;
            }
        }
    }
}

#[tokio::test]
async fn an_https_handler_with_an_untrusted_certificate_is_refused_and_the_job_retries() {
    let (_pem, tls) = private_ca();
    let mut handler = StepServer::start_tls(tls, |_: &Call| Reply::Now(200, json!({"done": true, "output": 1}))).await;
    let app = app_trusting(&secure_type(&handler.url).replace("max_attempts = 1", "max_attempts = 5"), None).await;
    let row = app.enqueue("alice", json!({"type": "secure"})).await;
    let id = row["id"].as_str().unwrap().to_owned();
    loop {
        match handler.next().await {
            Event::Handshake(e) => {
                assert!(e.contains("UnknownCA"), "the runner refused the certificate as signed by an unknown CA: {e}");
                break;
            }
            Event::Called(_) => panic!("a step call got through without a trusted certificate"),
            _ => {}
        }
    }
    let error: String = eventually(|| async {
        let error: Option<String> =
            sqlx::query_scalar("select error from rowcast.jobs where id = $1::uuid").bind(&id).fetch_one(&app.pool).await.unwrap();
        error.ok_or_else(|| "no error on the job yet".to_owned())
    })
    .await;
    assert!(error.contains("step handler unreachable"), "the job says why: {error}");
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_stops_the_start_with_its_path() {
    let (_dir, path) = ca_file("not a certificate\n");
    let mut config = rowcast::app::AppConfig::new(fresh_database().await, "127.0.0.1:0".parse().unwrap(), None);
    config.runner = true;
    config.gateway = false;
    config.ca_file = Some(path.clone());
    let error = match rowcast::app::App::build(config).await {
        Ok(_) => panic!("a CA file without certificates was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("holds no certificate") && error.contains(&path.display().to_string()), "{error}");
}
