//! A real HTTP step handler for the job tests, scripted by a closure.
//!
//! It is a small raw HTTP/1.1 server (keep-alive, Content-Length bodies) so
//! that it can see the moment the runner closes a connection: that is how a
//! cancelled or timed-out step reaches a handler. Every request and every
//! dropped request is reported as an `Event`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use crate::harness::WAIT;

/// One step call as the handler saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub job: Value,
    pub steps: Map<String, Value>,
    pub signature: Option<String>,
    pub body: String,
}

impl Call {
    /// The job's id.
    pub fn job_id(&self) -> String {
        self.job["id"].as_str().unwrap_or_default().to_owned()
    }
    /// The attempt number.
    pub fn attempt(&self) -> i64 {
        self.job["attempt"].as_i64().unwrap_or(0)
    }
    /// The first step id not yet in `steps`, for programs named s1, s2, ...
    pub fn next_step(&self) -> usize {
        self.steps.len() + 1
    }
}

/// How to answer a call.
pub enum Reply {
    /// Answer at once.
    Now(u16, Value),
    /// Answer after a delay (unless the client goes away first).
    After(Duration, u16, Value),
    /// Never answer until `release` is notified (or the client goes away).
    Hold(Arc<Notify>, u16, Value),
}

/// What the server observed.
#[derive(Debug, Clone)]
pub enum Event {
    /// A call arrived.
    Called(Call),
    /// A call was answered.
    Answered,
    /// The client closed the connection before the answer.
    Dropped { job: String, step: usize },
    /// A TLS handshake failed (https servers only).
    Handshake(String),
}

/// The running server.
pub struct StepServer {
    pub url: String,
    events: mpsc::UnboundedReceiver<Event>,
    /// Calls currently being handled, per user and in total, and the maxima seen.
    pub load: Arc<Mutex<Load>>,
}

/// In-flight accounting for concurrency tests.
#[derive(Debug, Default)]
pub struct Load {
    pub now: usize,
    pub max: usize,
    pub per_user: HashMap<String, usize>,
    pub max_per_user: usize,
}

type Script = Arc<dyn Fn(&Call) -> Reply + Send + Sync>;

/// A step answer `{step: {id: "s<n>", output}, progress, message}`.
pub fn step(n: usize, of: usize, output: Value) -> Value {
    json!({"step": {"id": format!("s{n}"), "output": output}, "progress": n * 100 / of, "message": format!("step {n} of {of}")})
}

/// Runs `steps` steps, then `{done: true}`: the usual program.
pub fn program(steps: usize) -> impl Fn(&Call) -> Reply + Send + Sync {
    move |call: &Call| {
        let n = call.next_step();
        if n > steps {
            Reply::Now(200, json!({"done": true, "output": {"steps": steps}}))
        } else {
            Reply::Now(200, step(n, steps, json!({"attempt": call.attempt()})))
        }
    }
}

impl StepServer {
    /// Starts a server answering with `script`.
    pub async fn start(script: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> StepServer {
        StepServer::start_on(None, script).await
    }

    /// Starts an https server (TLS by `tls`, at `https://localhost:<port>/steps`) answering with `script`.
    pub async fn start_tls(tls: tokio_rustls::TlsAcceptor, script: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> StepServer {
        StepServer::start_on(Some(tls), script).await
    }

    async fn start_on(tls: Option<tokio_rustls::TlsAcceptor>, script: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> StepServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = if tls.is_some() { format!("https://localhost:{port}/steps") } else { format!("http://127.0.0.1:{port}/steps") };
        let (tx, events) = mpsc::unbounded_channel();
        let load = Arc::new(Mutex::new(Load::default()));
        let script: Script = Arc::new(script);
        let shared = (tx, load.clone(), script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, load, script) = shared.clone();
                match tls.clone() {
                    None => drop(tokio::spawn(serve(stream, tx, load, script))),
                    Some(tls) => drop(tokio::spawn(async move {
                        // A failed handshake (an untrusted certificate) is reported as a dropped connection.
                        match tls.accept(stream).await {
                            Ok(stream) => serve(stream, tx, load, script).await,
                            Err(e) => drop(tx.send(Event::Handshake(e.to_string()))),
                        }
                    })),
                }
            }
        });
        StepServer { url, events, load }
    }

    /// The next event (panics after `WAIT`).
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv()).await.expect("no step-handler event within the wait").expect("server alive")
    }

    /// Waits for the next call, skipping other events.
    pub async fn next_call(&mut self) -> Call {
        loop {
            if let Event::Called(call) = self.next().await {
                return call;
            }
        }
    }

    /// Waits until the call for `job`'s step `step` is dropped by the client.
    pub async fn dropped(&mut self, job: &str, step: usize) {
        loop {
            if let Event::Dropped { job: j, step: s } = self.next().await {
                if j == job && s == step {
                    return;
                }
            }
        }
    }

    /// Every remaining event already received, without waiting.
    pub fn drain(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<(Option<String>, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let header = |name: &str| {
                head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned()))
            };
            let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return Some((header("x-rowcast-signature"), body));
        }
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, tx: mpsc::UnboundedSender<Event>, load: Arc<Mutex<Load>>, script: Script) {
    let mut buf = Vec::new();
    while let Some((signature, body)) = read_request(&mut stream, &mut buf).await {
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let call = Call { job: v["job"].clone(), steps: v["steps"].as_object().cloned().unwrap_or_default(), signature, body };
        let (job, step, user) = (call.job_id(), call.next_step(), call.job["user_id"].as_str().unwrap_or("").to_owned());
        let _ = tx.send(Event::Called(call.clone()));
        enter(&load, &user);
        let reply = script(&call);
        let answer = match reply {
            Reply::Now(status, body) => Some((status, body)),
            Reply::After(delay, status, body) => wait_or_gone(&mut stream, tokio::time::sleep(delay)).await.then_some((status, body)),
            Reply::Hold(release, status, body) => wait_or_gone(&mut stream, release.notified()).await.then_some((status, body)),
        };
        leave(&load, &user);
        let Some((status, body)) = answer else {
            let _ = tx.send(Event::Dropped { job, step });
            return;
        };
        let text = body.to_string();
        let response = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}", text.len());
        if stream.write_all(response.as_bytes()).await.is_err() {
            let _ = tx.send(Event::Dropped { job, step });
            return;
        }
        let _ = tx.send(Event::Answered);
    }
}

/// Waits for `until`; false if the client closed the connection first.
async fn wait_or_gone<S: AsyncRead + Unpin>(stream: &mut S, until: impl std::future::Future<Output = ()>) -> bool {
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = until => true,
        // Any read result here (EOF or error) means the client went away.
        _ = stream.read(&mut probe) => false,
    }
}

fn enter(load: &Mutex<Load>, user: &str) {
    let mut l = load.lock().unwrap();
    l.now += 1;
    l.max = l.max.max(l.now);
    let n = l.per_user.entry(user.to_owned()).or_default();
    *n += 1;
    let n = *n;
    l.max_per_user = l.max_per_user.max(n);
}

fn leave(load: &Mutex<Load>, user: &str) {
    let mut l = load.lock().unwrap();
    l.now -= 1;
    *l.per_user.entry(user.to_owned()).or_default() -= 1;
}
