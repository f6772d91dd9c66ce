//! One call of a job's step handler, and what it answered.
//!
//! The HTTP step protocol (Inngest in spirit): rowcast POSTs
//! `{job: {id, type, user_id, input, attempt}, steps: {<id>: <output>}}`,
//! signed with `X-Rowcast-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`. The handler re-runs its code from the top, returns
//! memoized outputs for steps in `steps`, runs the first missing step and
//! answers `{step: {id, output}, progress?, message?, broadcast?}`, `{done: true, output}`,
//! both at once when the step it ran was the last (`{step, ..., done: true,
//! output}`: stored with the completion in one write, one round trip fewer),
//! `{error: {message, retriable: false}}`, or a retriable error (5xx, 408,
//! 429, a timeout, or `{error: {message, retry_after_ms?}}`).
//! `broadcast` is a list of `{topic, event, payload, private?}` sent when the
//! step's result is stored, in the same statement, so a retried step whose
//! result is already stored sends nothing again (at most `MAX_STEP_BROADCASTS`;
//! `private` defaults to false). The built-in `demo` handler answers the same way in-process. Also owns
//! the backoff formula. Nothing here touches the database.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::inngest::call::FunctionCall;
use super::model::Job;
use crate::config::Secret;

/// A finished step, as the handler reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub id: String,
    pub output: Value,
    pub progress: Option<i32>,
    pub message: Option<String>,
    /// `{topic, event, payload, private}` each, sent when the step is stored.
    pub broadcasts: Vec<Value>,
}

/// The steps a job's earlier calls finished: each one's output by id, and
/// the ids in the order they finished (the Inngest SDK reads both).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memo {
    pub outputs: Map<String, Value>,
    pub order: Vec<String>,
}

impl Memo {
    /// Stored steps as `(id, output)` in the order they finished.
    pub fn from_ordered(steps: Vec<(String, Value)>) -> Memo {
        let mut memo = Memo::default();
        for (id, output) in steps {
            memo.insert(id, output);
        }
        memo
    }

    /// Records a finished step (a repeat keeps its first place).
    pub fn insert(&mut self, id: String, output: Value) {
        if self.outputs.insert(id.clone(), output).is_none() {
            self.order.push(id);
        }
    }

    /// How many steps finished.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no step finished yet.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What one call answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A step finished: store it (and send its broadcasts), then call again.
    Step(StepResult),
    /// Several steps finished at once (parallel steps): store them all; then
    /// retry the attempt with `retry`'s message and delay if one of the group
    /// failed, else call again.
    Steps { steps: Vec<StepResult>, retry: Option<(String, Option<Duration>)> },
    /// The job finished, with the step that finished it when the same answer carried one.
    Done { output: Value, last: Option<StepResult> },
    /// Fail now, whatever attempts are left.
    Fail { message: String },
    /// Retry this step after a backoff (or after `after`).
    Retry { message: String, after: Option<Duration> },
    /// Not now (a concurrency limit is full): hand the job back, attempt
    /// unspent, to be claimed again after `after`.
    Defer { message: String, after: Duration },
}

/// How a type's steps run.
#[derive(Clone)]
pub enum StepHandler {
    /// The HTTP step protocol.
    Http { url: String, secret: Option<Secret>, client: reqwest::Client },
    /// The built-in demo.
    Demo,
    /// A synced Inngest function, called with the SDK's protocol.
    Inngest(Arc<FunctionCall>),
}

impl StepHandler {
    /// Calls the handler once, with the steps earlier calls finished.
    pub async fn call(&self, job: &Job, memo: &Memo, cancel: &CancellationToken) -> Outcome {
        match self {
            StepHandler::Http { url, secret, client } => {
                http_call(client, url, secret.as_ref().map(Secret::expose), job, &memo.outputs).await
            }
            StepHandler::Demo => demo(job, &memo.outputs, cancel).await,
            StepHandler::Inngest(function) => function.call(job, memo).await,
        }
    }
}

/// The signature header value for `body` at `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

#[derive(Deserialize)]
struct Answer {
    step: Option<StepAnswer>,
    #[serde(default)]
    done: bool,
    output: Option<Value>,
    progress: Option<i32>,
    message: Option<String>,
    error: Option<ErrorAnswer>,
    #[serde(default)]
    broadcast: Vec<Value>,
}

/// Most broadcasts one step answer may carry.
pub const MAX_STEP_BROADCASTS: usize = 16;

/// The step answer's broadcasts, each `{topic, event, payload, private}`, or why they are refused.
fn broadcasts(items: Vec<Value>) -> Result<Vec<Value>, String> {
    if items.len() > MAX_STEP_BROADCASTS {
        return Err(format!("a step answer may carry at most {MAX_STEP_BROADCASTS} broadcasts, got {}", items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let text = |k: &str| b.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
            let (Some(topic), Some(event)) = (text("topic"), text("event")) else {
                return Err(format!("broadcast {i} of the step answer needs a topic and an event"));
            };
            let private = b.get("private").and_then(Value::as_bool).unwrap_or(false);
            Ok(json!({"topic": topic, "event": event, "payload": b.get("payload").cloned().unwrap_or(json!({})), "private": private}))
        })
        .collect()
}

#[derive(Deserialize)]
struct StepAnswer {
    id: String,
    #[serde(default)]
    output: Value,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    message: Option<String>,
    #[serde(default = "yes")]
    retriable: bool,
    retry_after_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

async fn http_call(client: &reqwest::Client, url: &str, secret: Option<&str>, job: &Job, steps: &Map<String, Value>) -> Outcome {
    let body = json!({
        "job": {"id": job.id, "type": job.job_type, "user_id": job.user_id, "input": job.input, "attempt": job.attempts},
        "steps": steps,
    })
    .to_string();
    let mut request = client.post(url).header("content-type", "application/json");
    if let Some(secret) = secret {
        request = request.header("x-rowcast-signature", sign(secret, crate::auth::now_secs(), body.as_bytes()));
    }
    let response = match request.body(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry { message: format!("step handler unreachable: {}", without_url(&e)), after: None },
    };
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).map(Duration::from_secs);
    let answer = response.json::<Answer>().await.ok();
    interpret(status, answer, retry_after)
}

/// Errors from reqwest name the URL; step URLs may carry tokens, so keep it out of job rows.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

fn interpret(status: u16, answer: Option<Answer>, retry_after: Option<Duration>) -> Outcome {
    let retriable_status = status >= 500 || status == 408 || status == 429;
    match answer {
        Some(Answer { error: Some(e), .. }) => {
            let message = e.message.unwrap_or_else(|| format!("step handler answered {status} with an error"));
            if e.retriable && (retriable_status || status < 400) {
                Outcome::Retry { message, after: e.retry_after_ms.map(Duration::from_millis).or(retry_after) }
            } else {
                Outcome::Fail { message }
            }
        }
        _ if retriable_status => Outcome::Retry { message: format!("step handler answered {status}"), after: retry_after },
        _ if status >= 400 => Outcome::Fail { message: format!("step handler answered {status}") },
        Some(Answer { step: Some(step), progress, message, broadcast, done, output, .. }) => match broadcasts(broadcast) {
            Ok(broadcasts) => {
                let step =
                    StepResult { id: step.id, output: step.output, progress: progress.map(|p| p.clamp(0, 100)), message, broadcasts };
                if done {
                    Outcome::Done { output: output.unwrap_or(Value::Null), last: Some(step) }
                } else {
                    Outcome::Step(step)
                }
            }
            Err(message) => Outcome::Fail { message },
        },
        Some(Answer { done: true, output, .. }) => Outcome::Done { output: output.unwrap_or(Value::Null), last: None },
        _ => Outcome::Retry { message: format!("step handler answered {status} without step, done or error"), after: None },
    }
}

/// The demo: `mode` quick (5 × 300 ms), slow (10 × 1 s), flaky (step 3
/// fails retriably on attempt 1), fail (step 2 fails for good), retryfail
/// (step 1 fails retriably every time); `steps` and `step_ms` override.
async fn demo(job: &Job, steps: &Map<String, Value>, cancel: &CancellationToken) -> Outcome {
    let mode = job.input.get("mode").and_then(Value::as_str).unwrap_or("quick");
    let (default_steps, default_ms) = if mode == "slow" { (10, 1000) } else { (5, 300) };
    let total = job.input.get("steps").and_then(Value::as_u64).unwrap_or(default_steps).clamp(1, 1000);
    let step_ms = job.input.get("step_ms").and_then(Value::as_u64).unwrap_or(default_ms);
    let done = steps.len() as u64;
    let output = json!({"steps": total, "mode": mode});
    if done >= total {
        return Outcome::Done { output, last: None };
    }
    let next = done + 1;
    match (mode, next, job.attempts) {
        ("flaky", 3, 1) => return Outcome::Retry { message: "flaky step failed, will retry".into(), after: None },
        ("fail", 2, _) => return Outcome::Fail { message: "demo failure: this job always fails".into() },
        ("retryfail", 1, _) => return Outcome::Retry { message: "demo failure: this step fails every time".into(), after: None },
        _ => {}
    }
    if cancel.is_cancelled() {
        return Outcome::Retry { message: "step interrupted".into(), after: None };
    }
    // A 0 ms step takes no timer tick (a sleep of 0 still waits for the next millisecond).
    if step_ms > 0 {
        tokio::select! {
            // Cancelled (user, timeout or shutdown): stop the work at once.
            _ = cancel.cancelled() => return Outcome::Retry { message: "step interrupted".into(), after: None },
            // The step's "work".
            _ = tokio::time::sleep(Duration::from_millis(step_ms)) => {}
        }
    }
    let step = StepResult {
        id: format!("step-{next}"),
        output: json!({"finished_at": chrono::Utc::now()}),
        progress: Some((next * 100 / total) as i32),
        message: Some(format!("step {next} of {total}")),
        // What the next step is doing, for the page's transient line (not stored on the job).
        broadcasts: (next < total)
            .then(|| json!({"topic": format!("job:{}", job.id), "event": "activity", "payload": {"text": activity(next + 1)}, "private": false}))
            .into_iter()
            .collect(),
    };
    // The last step finishes the job in the same answer, as an HTTP handler may.
    if next == total {
        Outcome::Done { output, last: Some(step) }
    } else {
        Outcome::Step(step)
    }
}

/// A made-up description of demo step `n`.
fn activity(n: u64) -> String {
    const WORK: [&str; 5] = ["fetching the video", "transcribing", "chunking the transcript", "embedding chunks", "writing the summary"];
    format!("step {n}: {}", WORK[(n as usize - 1) % WORK.len()])
}

/// Delay before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped, with
/// "equal jitter" (half fixed, half random) so retries of many jobs spread out.
pub fn backoff(attempt: i32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt - 1).clamp(0, 20)).min(cap);
    exp / 2 + exp.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// A uniform random number in [0, 1).
pub fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: Value) -> Outcome {
        interpret(status, serde_json::from_value(body).ok(), None)
    }

    #[test]
    fn answers_map_to_outcomes() {
        let step = StepResult { id: "a".into(), output: json!(1), progress: Some(100), message: Some("m".into()), broadcasts: vec![] };
        assert_eq!(parse(200, json!({"step": {"id": "a", "output": 1}, "progress": 150, "message": "m"})), Outcome::Step(step.clone()));
        assert_eq!(parse(200, json!({"done": true, "output": {"x": 1}})), Outcome::Done { output: json!({"x": 1}), last: None });
        assert_eq!(
            parse(200, json!({"step": {"id": "a", "output": 1}, "progress": 150, "message": "m", "done": true, "output": 2})),
            Outcome::Done { output: json!(2), last: Some(step) }
        );
        assert_eq!(parse(200, json!({"error": {"message": "bad", "retriable": false}})), Outcome::Fail { message: "bad".into() });
        assert_eq!(
            parse(200, json!({"error": {"message": "later", "retry_after_ms": 1500}})),
            Outcome::Retry { message: "later".into(), after: Some(Duration::from_millis(1500)) }
        );
        assert!(matches!(parse(503, json!(null)), Outcome::Retry { .. }));
        assert!(matches!(parse(429, json!({})), Outcome::Retry { .. }));
        assert!(matches!(parse(404, json!(null)), Outcome::Fail { .. }));
        assert!(matches!(parse(400, json!({"error": {"message": "no"}})), Outcome::Fail { .. }));
        assert!(matches!(parse(200, json!({"what": 1})), Outcome::Retry { .. }));
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(30, base, cap, 1.0), cap);
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let s = sign("secret", 1_700_000_000, b"{}");
        assert!(s.starts_with("t=1700000000,v1=") && s.len() == "t=1700000000,v1=".len() + 64);
        assert_ne!(s, sign("secret", 1_700_000_001, b"{}"));
        assert_ne!(s, sign("secret", 1_700_000_000, b"{ }"));
        assert_ne!(s, sign("other", 1_700_000_000, b"{}"));
    }
}
