//! Calling an Inngest function: one execution request to the app's serve
//! handler, and what its answer means for the run.
//!
//! A run is a job whose input is `{event, events}`; its memoized steps are
//! the SDK's step state, keyed by the SDK's hashed step ids, each stored as
//! the memo value the SDK reads back (`{"data": ..}` or `{"error": ..}`).
//! rowcast first sends a discovery request (`stepId=step`). The SDK runs the
//! first new step itself when it finds exactly one, and answers `StepRun`,
//! `StepError` or `StepFailed`. When it finds several (`Promise.all`) it
//! answers them as `StepPlanned`, and rowcast calls each with its own
//! `stepId` and immediate execution off, all at once, and waits for the
//! whole group before discovering again, so no step runs twice. Every body
//! is canonical JSON, signed when rowcast has a signing key.
//!
//! Retries are per step, as Inngest's: a `StepError` or a thrown function
//! error retries the run after the job type's backoff (or the `Retry-After`
//! the SDK sent), and each stored step gives the next one the function's
//! retries again (the attempt loop raises the job's `max_attempts`). On a
//! step's last attempt its error is stored as its memo, so the SDK throws it
//! into the function, which may catch it. `NonRetriableError`
//! (400 with `X-Inngest-No-Retry: true`) fails the run at once. Nothing
//! here touches the database.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

use super::canonical;
use super::gate::{self, Entry, Gate};
use super::keys::SigningKey;
use crate::jobs::model::Job;
use crate::jobs::steps::{random_unit, Memo, Outcome, StepResult};

/// One synced function, as the runner calls it.
#[derive(Clone)]
pub struct FunctionCall {
    /// The function's `runtime.url`: the serve URL with `fnId` and `stepId=step`.
    pub url: String,
    pub key: Option<SigningKey>,
    pub client: reqwest::Client,
    /// `dev` or `cloud`, sent as `X-Inngest-Server-Kind`.
    pub server_kind: &'static str,
    /// Attempts each step has (the function's retries + 1).
    pub attempts: i32,
    /// Keyed concurrency limits to enter before calling, if any.
    pub gate: Option<Gate>,
}

impl std::fmt::Debug for FunctionCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCall").field("key", &self.key).finish_non_exhaustive()
    }
}

/// One op of a 206 answer.
#[derive(Debug, Clone, Deserialize)]
struct Op {
    id: String,
    op: String,
    name: Option<String>,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    data: Option<Value>,
    error: Option<Value>,
}

/// What one request's answer says.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// The function returned (200).
    Returned(Value),
    /// Finished steps to store, steps to call, and a retriable step error.
    Ops { finished: Vec<StepResult>, planned: Vec<String>, retry: Option<(String, Option<Duration>)> },
    /// The function or step failed; retry unless `final`.
    Error { message: String, last: bool, after: Option<Duration> },
}

impl FunctionCall {
    /// Calls the function once for `job`, with the steps it has finished.
    pub async fn call(&self, job: &Job, memo: &Memo) -> Outcome {
        if memo.len() >= MAX_STEPS {
            return Outcome::Fail { message: format!("the run stored {MAX_STEPS} steps, the most one run may have") };
        }
        if let Some(gate) = &self.gate {
            let after = gate::WAIT.mul_f64(1.0 + random_unit());
            match gate.enter(job, memo.is_empty()).await {
                Ok(Entry::In) => {}
                Ok(Entry::Full) => return Outcome::Defer { message: "waiting for a concurrency slot".into(), after },
                Ok(Entry::Throttled(wait)) => return Outcome::Defer { message: "throttled".into(), after: wait },
                Err(_) => return Outcome::Defer { message: "could not take a concurrency slot; trying again".into(), after },
            }
        }
        let last_attempt = job.attempts >= job.max_attempts;
        match self.request(job, memo, None, last_attempt).await {
            Answer::Returned(output) => Outcome::Done { output, last: None },
            Answer::Error { message, last: true, .. } => Outcome::Fail { message },
            Answer::Error { message, after, .. } => Outcome::Retry { message, after },
            Answer::Ops { mut finished, planned, mut retry } => {
                let runs = planned.iter().map(|id| self.request(job, memo, Some(id), last_attempt));
                for answer in futures_util::future::join_all(runs).await {
                    match answer {
                        Answer::Ops { finished: f, retry: r, .. } => {
                            finished.extend(f);
                            retry = retry.or(r);
                        }
                        Answer::Error { message, last: true, .. } => return Outcome::Fail { message },
                        Answer::Error { message, after, .. } => retry = retry.or(Some((message, after))),
                        Answer::Returned(_) => retry = retry.or(Some(("a planned step answered 200 instead of its result".into(), None))),
                    }
                }
                if finished.is_empty() && retry.is_none() {
                    retry = Some(("the function answered 206 without a step it ran".into(), None));
                }
                Outcome::Steps { steps: finished, retry }
            }
        }
    }

    /// One signed request: discovery, or the planned step `step`.
    async fn request(&self, job: &Job, memo: &Memo, step: Option<&str>, last_attempt: bool) -> Answer {
        let body = canonical::to_string(&request_body(job, memo, step.is_some(), self.attempts));
        let url = match step {
            Some(id) => with_step(&self.url, id),
            None => self.url.clone(),
        };
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-inngest-server-kind", self.server_kind)
            .header("x-run-id", job.id.to_string());
        if let Some(key) = &self.key {
            request = request.header("x-inngest-signature", key.sign(&body, crate::auth::now_secs()));
        }
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_timeout() { "timed out" } else { "unreachable" };
                return Answer::Error { message: format!("the Inngest app is {why}"), last: false, after: None };
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match read_capped(response).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(message) => return Answer::Error { message, last: true, after: None },
        };
        interpret(status, &headers, body, last_attempt)
    }
}

/// Largest answer rowcast reads from an app: Inngest's limit on a step's or
/// a function's output is 4 MB, and a run's stored state is sent with every
/// call, so an answer past it fails the run instead of growing every request.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Most steps one run may store (Inngest's limit is 1,000 per function).
pub const MAX_STEPS: usize = 1000;

/// The answer's body, or why it is refused (too large, or cut off).
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER_BYTES => {
                return Err(format!("the function's answer is larger than {} MiB", MAX_ANSWER_BYTES >> 20));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            // Cut off mid-body: read what came as no answer at all (retried).
            Err(_) => return Ok(Vec::new()),
        }
    }
}

/// The execution request's body (before canonicalising). The job's
/// `max_attempts` grows by a step's attempts each time a step finishes, so
/// the attempt of the current step is the job's attempt less those before it.
fn request_body(job: &Job, memo: &Memo, planned: bool, per_step: i32) -> Value {
    let attempt = (job.attempts - 1 - (job.max_attempts - per_step)).max(0);
    let event = job.input.get("event").cloned().unwrap_or_else(|| json!({"name": job.job_type, "data": {}}));
    let events = job.input.get("events").cloned().unwrap_or_else(|| json!([event.clone()]));
    json!({
        "event": event,
        "events": events,
        "steps": memo.outputs,
        "ctx": {
            "run_id": job.id,
            "attempt": attempt,
            "max_attempts": per_step,
            "disable_immediate_execution": planned,
            "use_api": false,
            "stack": {"stack": memo.order, "current": memo.order.len()},
        },
        "version": -1,
    })
}

/// `url` with its `stepId` set to `step`.
fn with_step(url: &str, step: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    let pairs: Vec<(String, String)> = parsed.query_pairs().filter(|(k, _)| k != "stepId").map(|(k, v)| (k.into(), v.into())).collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs).append_pair("stepId", step);
    parsed.into()
}

fn interpret(status: u16, headers: &HeaderMap, body: Value, last_attempt: bool) -> Answer {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let after = header("retry-after").and_then(retry_after);
    match status {
        200 => Answer::Returned(body),
        206 => match serde_json::from_value::<Vec<Op>>(body) {
            Ok(ops) => sort_ops(ops, after, last_attempt),
            Err(_) => Answer::Error { message: "the function answered 206 without a list of steps".into(), last: false, after: None },
        },
        _ => {
            let no_retry = header("x-inngest-no-retry") == Some("true");
            let message = error_text(&body).unwrap_or_else(|| format!("the Inngest app answered {status}"));
            Answer::Error { message, last: no_retry, after }
        }
    }
}

/// Sorts a 206's ops into steps to store, to call, and a step error to retry.
fn sort_ops(ops: Vec<Op>, after: Option<Duration>, last_attempt: bool) -> Answer {
    let (mut finished, mut planned, mut retry) = (Vec::new(), Vec::new(), None);
    for op in ops {
        let label = op.display_name.clone().or_else(|| op.name.clone());
        let step = |output: Value| StepResult { id: op.id.clone(), output, progress: None, message: label.clone(), broadcasts: vec![] };
        match op.op.as_str() {
            "StepRun" => finished.push(step(json!({"data": op.data.clone().unwrap_or(Value::Null)}))),
            "StepFailed" => finished.push(step(json!({"error": op.error.clone().unwrap_or(Value::Null)}))),
            "StepError" if last_attempt => finished.push(step(json!({"error": op.error.clone().unwrap_or(Value::Null)}))),
            "StepError" => {
                let message = op.error.as_ref().and_then(error_text).unwrap_or_else(|| "a step failed".into());
                retry = retry.or(Some((message, after)));
            }
            "StepPlanned" => planned.push(op.id),
            other => {
                let message = format!("{other} ({}) is not supported by rowcast yet", label.unwrap_or_default());
                return Answer::Error { message, last: true, after: None };
            }
        }
    }
    Answer::Ops { finished, planned, retry }
}

/// `Name: message` from a serialized error, as JavaScript prints one.
fn error_text(error: &Value) -> Option<String> {
    let message = error.get("message").and_then(Value::as_str)?;
    Some(match error.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => format!("{name}: {message}"),
        _ => message.to_owned(),
    })
}

/// A `Retry-After` of seconds or a date, as a delay from now.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(secs.max(0.0)).ok();
    }
    let at = chrono::DateTime::parse_from_rfc3339(value).or_else(|_| chrono::DateTime::parse_from_rfc2822(value)).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok().or(Some(Duration::ZERO))
}

/// The run's first event, as its input holds it.
pub fn run_input(event: Value) -> Value {
    json!({"event": event.clone(), "events": [event]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: Value, last: bool) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        interpret(status, &map, body, last)
    }

    fn step(id: &str, output: Value, label: &str) -> StepResult {
        StepResult { id: id.into(), output, progress: None, message: Some(label.into()), broadcasts: vec![] }
    }

    #[test]
    fn a_returned_function_and_a_step_it_ran_read_as_done_and_as_a_memo_to_store() {
        assert_eq!(answer(200, &[], json!({"ok": 1}), false), Answer::Returned(json!({"ok": 1})));
        let ran = json!([{"id": "h1", "op": "StepRun", "name": "fetch", "displayName": "fetch transcript", "data": {"t": "x"}}]);
        assert_eq!(
            answer(206, &[], ran, false),
            Answer::Ops { finished: vec![step("h1", json!({"data": {"t": "x"}}), "fetch transcript")], planned: vec![], retry: None }
        );
        let undefined = json!([{"id": "h1", "op": "StepRun", "name": "n"}]);
        assert!(matches!(answer(206, &[], undefined, false), Answer::Ops { finished, .. } if finished[0].output == json!({"data": null})));
    }

    #[test]
    fn parallel_steps_are_planned_and_step_errors_retry_until_the_last_attempt_stores_them() {
        let planned = json!([{"id": "a", "op": "StepPlanned", "name": "a"}, {"id": "b", "op": "StepPlanned", "name": "b"}]);
        assert_eq!(answer(206, &[], planned, false), Answer::Ops { finished: vec![], planned: vec!["a".into(), "b".into()], retry: None });
        let error = json!([{"id": "a", "op": "StepError", "name": "a", "error": {"name": "Error", "message": "boom"}}]);
        let retried = answer(206, &[("retry-after", "3")], error.clone(), false);
        assert_eq!(
            retried,
            Answer::Ops { finished: vec![], planned: vec![], retry: Some(("Error: boom".into(), Some(Duration::from_secs(3)))) }
        );
        let stored = answer(206, &[], error, true);
        let memo = json!({"error": {"name": "Error", "message": "boom"}});
        assert_eq!(stored, Answer::Ops { finished: vec![step("a", memo, "a")], planned: vec![], retry: None });
        let failed = json!([{"id": "a", "op": "StepFailed", "name": "a", "error": {"name": "NonRetriableError", "message": "no"}}]);
        assert!(matches!(answer(206, &[], failed, false), Answer::Ops { finished, .. } if finished[0].output["error"]["message"] == "no"));
    }

    #[test]
    fn thrown_errors_retry_unless_the_sdk_says_no_retry_and_unsupported_ops_fail_plainly() {
        let err = json!({"name": "NonRetriableError", "message": "transcript unavailable", "stack": "..."});
        assert_eq!(
            answer(400, &[("x-inngest-no-retry", "true")], err.clone(), false),
            Answer::Error { message: "NonRetriableError: transcript unavailable".into(), last: true, after: None }
        );
        assert_eq!(
            answer(500, &[("x-inngest-no-retry", "false"), ("retry-after", "2")], json!({"name": "Error", "message": "x"}), false),
            Answer::Error { message: "Error: x".into(), last: false, after: Some(Duration::from_secs(2)) }
        );
        assert!(matches!(answer(502, &[], Value::Null, false), Answer::Error { last: false, .. }));
        let sleep = json!([{"id": "s", "op": "Sleep", "name": "1m", "displayName": "wait a minute"}]);
        assert!(
            matches!(answer(206, &[], sleep, false), Answer::Error { last: true, message, .. } if message.contains("Sleep (wait a minute)"))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("1.5"), Some(Duration::from_millis(1500)));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
        assert!(retry_after(&soon).is_some_and(|d| d > Duration::from_secs(25) && d <= Duration::from_secs(30)));
        assert_eq!(retry_after("2000-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(retry_after("soon"), None);
    }

    fn run_job(attempts: i32, max_attempts: i32) -> Job {
        let now = chrono::Utc::now();
        Job {
            id: uuid::Uuid::new_v4(),
            job_type: "app-f".into(),
            user_id: None,
            status: crate::jobs::model::JobStatus::Running,
            progress: 0,
            message: None,
            input: run_input(json!({"name": "a/b", "data": {}})),
            output: None,
            error: None,
            attempts,
            max_attempts,
            idempotency_key: None,
            run_at: now,
            priority: 0,
            parent_id: None,
            created_at: now,
            started_at: Some(now),
            completed_at: None,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn a_run_at_the_step_limit_fails_without_calling_the_app() {
        // Nothing listens on port 9: a call would answer "unreachable", a retry.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let f = FunctionCall {
            url: "http://127.0.0.1:9/".into(),
            key: None,
            client: reqwest::Client::new(),
            server_kind: "dev",
            attempts: 4,
            gate: None,
        };
        let memo = Memo::from_ordered((0..MAX_STEPS).map(|i| (format!("s{i}"), json!({"data": i}))).collect());
        assert!(matches!(f.call(&run_job(1, 4), &memo).await, Outcome::Fail { message } if message.contains("1000 steps")));
    }

    #[test]
    fn each_step_is_told_its_own_attempt_out_of_the_functions_attempts() {
        // retries: 3 (4 attempts a step); the first step failed twice, then finished on attempt 3,
        // which renewed the run's budget to 3 + 3 = 6; the next step failed on attempt 3 too, so
        // attempt 4 is its second.
        let body = request_body(&run_job(4, 6), &Memo::default(), false, 4);
        assert_eq!((body["ctx"]["attempt"].clone(), body["ctx"]["max_attempts"].clone()), (json!(1), json!(4)));
        let first = request_body(&run_job(1, 4), &Memo::default(), false, 4);
        assert_eq!(first["ctx"]["attempt"], json!(0));
        assert_eq!(first["event"]["name"], "a/b");
    }

    #[test]
    fn a_planned_step_is_called_at_the_same_url_with_its_own_step_id() {
        assert_eq!(with_step("http://h:1/api/inngest?fnId=app-f&stepId=step", "abc"), "http://h:1/api/inngest?fnId=app-f&stepId=abc");
    }
}
