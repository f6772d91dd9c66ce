//! Asymmetric tokens against a JSON Web Key Set: each algorithm on every
//! door (socket, join, REST, jobs API), key rotation, a JWKS URL that hangs,
//! a JWKS file, and algorithm confusion. The keys are test-only, in
//! tests/fixtures/jwt; the JWKS is served by a small HTTP server here whose
//! answer the tests change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::{fresh_database, spawn_configured, Client, TestApp};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

/// The public JWKs of the fixture keys, by name (`rsa`, `rsaNext`, `ec`, `ed`).
fn public_jwk(name: &str) -> Value {
    let all: Value = serde_json::from_str(&std::fs::read_to_string(fixture("public-jwks.json")).unwrap()).unwrap();
    all[name].clone()
}

fn set_of(names: &[&str]) -> String {
    json!({ "keys": names.iter().map(|n| public_jwk(n)).collect::<Vec<_>>() }).to_string()
}

/// A token for `sub` signed by fixture key `der` under `alg` and `kid`.
fn signed(der: &str, alg: Algorithm, kid: &str, sub: &str) -> String {
    let der = std::fs::read(fixture(der)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
        Algorithm::ES256 => EncodingKey::from_ec_der(&der),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&der),
        other => panic!("no fixture for {other:?}"),
    };
    let now = rowcast::auth::now_secs();
    let claims = json!({"sub": sub, "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 600});
    jsonwebtoken::encode(&Header { kid: Some(kid.into()), ..Header::new(alg) }, &claims, &key).unwrap()
}

/// What the JWKS server answers.
enum Answer {
    Keys(String),
    /// Accept the request and never answer.
    Hang,
}

/// A JWKS endpoint whose answer the test sets, counting requests.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicU64>,
}

impl JwksServer {
    async fn start(keys: String) -> JwksServer {
        let answer = Arc::new(Mutex::new(Answer::Keys(keys)));
        let hits = Arc::new(AtomicU64::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let route = axum::routing::get(move || {
            let (a, h) = (a.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let keys = match &*a.lock().unwrap() {
                    Answer::Keys(k) => Some(k.clone()),
                    Answer::Hang => None,
                };
                match keys {
                    Some(k) => k,
                    None => std::future::pending().await,
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().route("/jwks.json", route)).await });
        JwksServer { addr, answer, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An app that takes keys from `url` (fetches bounded by `timeout_ms`), with an owned table `todos`.
async fn app_with_jwks(url: String, timeout_ms: u64) -> TestApp {
    let db = fresh_database().await;
    let app = spawn_configured(&db, |c| {
        c.jwks.jwks_url = Some(url);
        c.jwks.jwks_timeout_ms = timeout_ms;
    })
    .await;
    app.owned_table("todos").await;
    app
}

/// REST status and body for a read of `todos` with `token`.
async fn rest(app: &TestApp, token: &str) -> (u16, Value) {
    app.get_as("/rest/v1/todos?select=title", token).await
}

#[tokio::test]
async fn tokens_signed_with_rs256_es256_and_eddsa_open_the_socket_a_channel_rest_and_the_jobs_api() {
    let jwks = JwksServer::start(set_of(&["rsa", "ec", "ed"])).await;
    let app = app_with_jwks(jwks.url(), 3_000).await;
    app.sql("insert into todos (user_id, title) values ('bob', 'theirs')").await;
    for (der, alg, kid) in
        [("rsa.der", Algorithm::RS256, "rsa-1"), ("ec.der", Algorithm::ES256, "ec-1"), ("ed25519.der", Algorithm::EdDSA, "ed-1")]
    {
        let token = signed(der, alg, kid, "alice");
        let mut c = Client::v2(&app, &token).await;
        c.subscribe("c", json!([{"event": "*", "schema": "public", "table": "todos"}]), Some(&token)).await;
        app.sql(&format!("insert into todos (user_id, title) values ('alice', '{kid}')")).await;
        assert_eq!(c.change("c").await["data"]["record"]["title"], kid, "{alg:?}");
        let (status, body) = rest(&app, &token).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert!(body.as_array().unwrap().iter().all(|r| r["title"] != "theirs"), "{alg:?} saw bob's row: {body}");
        let (status, body) = app.get_as("/api/jobs", &token).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
}

#[tokio::test]
async fn a_rotated_in_key_is_fetched_once_and_a_key_dropped_upstream_is_refused_with_supabases_words() {
    let jwks = JwksServer::start(set_of(&["rsa"])).await;
    let app = app_with_jwks(jwks.url(), 3_000).await;
    let old = signed("rsa.der", Algorithm::RS256, "rsa-1", "alice");
    assert_eq!(rest(&app, &old).await.0, 200);
    let at_start = jwks.hits();
    jwks.answer(Answer::Keys(set_of(&["rsaNext"])));
    let new = signed("rsa-next.der", Algorithm::RS256, "rsa-2", "alice");
    assert_eq!(rest(&app, &new).await.0, 200, "the new kid is fetched on first sight");
    assert_eq!(rest(&app, &new).await.0, 200);
    assert_eq!(jwks.hits(), at_start + 1, "one fetch for the new key, then the cache");
    let (status, body) = rest(&app, &old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "Failed to generate JWT signer for key ID (kid) \"rsa-1\", check your JWT secret or JWKS configuration");
    let mut c = Client::v2(&app, &new).await;
    let reply = c.join("c", json!([]), Some(&old)).await;
    assert_eq!(
        reply["response"]["reason"],
        "JwtSignerError: Failed to generate JWT signer for key ID (kid) \"rsa-1\", check your JWT secret or JWKS configuration"
    );
}

#[tokio::test]
async fn a_jwks_url_that_hangs_times_out_and_the_keys_already_held_keep_working() {
    let jwks = JwksServer::start(set_of(&["rsa"])).await;
    let app = app_with_jwks(jwks.url(), 300).await;
    let known = signed("rsa.der", Algorithm::RS256, "rsa-1", "alice");
    assert_eq!(rest(&app, &known).await.0, 200);
    jwks.answer(Answer::Hang);
    let unknown = signed("rsa-next.der", Algorithm::RS256, "rsa-2", "alice");
    let started = Instant::now();
    let (status, body) = rest(&app, &unknown).await;
    assert_eq!(status, 401, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "the hanging fetch was not cut off: {:?}", started.elapsed());
    assert!(jwks.hits() >= 2, "the unknown kid asked the hanging URL");
    assert_eq!(rest(&app, &known).await.0, 200, "the key held before the outage still verifies");
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start_and_reread_for_an_unknown_kid() {
    let dir = std::env::temp_dir().join(format!("rowcast-jwks-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, set_of(&["ed"])).unwrap();
    let db = fresh_database().await;
    let app = spawn_configured(&db, |c| c.jwks.jwks_file = Some(file.clone())).await;
    app.owned_table("todos").await;
    assert_eq!(rest(&app, &signed("ed25519.der", Algorithm::EdDSA, "ed-1", "alice")).await.0, 200);
    std::fs::write(&file, set_of(&["ed", "ec"])).unwrap();
    assert_eq!(rest(&app, &signed("ec.der", Algorithm::ES256, "ec-1", "alice")).await.0, 200);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_key_verifies_only_under_its_own_algorithm() {
    let jwks = JwksServer::start(set_of(&["rsa", "ec"])).await;
    let app = app_with_jwks(jwks.url(), 3_000).await;
    let now = rowcast::auth::now_secs();
    let claims = json!({"sub": "alice", "role": "service_role", "exp": now + 600});
    // HS256 keyed with the RSA key file's text, naming the RSA key: the classic confusion.
    let key_bytes = std::fs::read(fixture("rsa.der")).unwrap();
    let hs = Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS256) };
    let confused = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(&key_bytes)).unwrap();
    let (status, body) = rest(&app, &confused).await;
    assert_eq!((status, body["message"].as_str()), (401, Some("Failed to validate JWT signature")), "{body}");
    // An RS256 token naming the EC key (pinned to ES256).
    let crossed = signed("rsa.der", Algorithm::RS256, "ec-1", "alice");
    let (status, body) = rest(&app, &crossed).await;
    assert_eq!((status, body["message"].as_str()), (401, Some("Failed to validate JWT signature")), "{body}");
}
