//! Clients that poll the REST snapshot, as the apps rowcast replaces do:
//! each user GETs its own row every `interval` over one keep-alive HTTP/1.1
//! connection (hyper's client), with the first poll at a random-looking
//! offset so the polls spread over the interval as independent browsers' do.
//!
//! Owns the HTTP side only; what a poll's answer means is the scenario's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rowcast::auth::Minter;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::socket::now_us;

/// One answered poll: when the answer arrived (Unix µs) and the row's `n`.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub at_us: i64,
    pub n: i64,
}

/// Every user's polls, in order, and the polls that failed.
pub struct Polled {
    pub by_user: Vec<Vec<Poll>>,
    pub failed: usize,
}

/// Polls `/rest/v1/bench_owned?select=n&user_id=eq.u<i>` for users
/// `0..users` every `interval` until `until`.
pub async fn run(addr: SocketAddr, secret: &str, users: usize, interval: Duration, until: Instant) -> anyhow::Result<Polled> {
    let minter = Minter::new(secret);
    let apikey = minter.mint(None, "anon", 6 * 3600);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for user in 0..users {
        let token = minter.mint(Some(&format!("u{user}")), "authenticated", 6 * 3600);
        let offset = interval.mul_f64((user as f64 * 0.618_034).fract());
        let (apikey, first) = (apikey.clone(), start + offset);
        tasks.spawn(async move { (user, poll_one(addr, user, &apikey, &token, interval, first, until).await) });
    }
    let mut polled = Polled { by_user: vec![Vec::new(); users], failed: 0 };
    while let Some(done) = tasks.join_next().await {
        let (user, result) = done?;
        let (polls, failed) = result.with_context(|| format!("poller of u{user}"))?;
        polled.by_user[user] = polls;
        polled.failed += failed;
    }
    Ok(polled)
}

async fn poll_one(
    addr: SocketAddr,
    user: usize,
    apikey: &str,
    token: &str,
    interval: Duration,
    first: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<Poll>, usize)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let uri = format!("/rest/v1/bench_owned?select=n&user_id=eq.u{user}");
    let (mut polls, mut failed) = (Vec::new(), 0);
    let mut next = first;
    while next < until {
        tokio::time::sleep_until(next).await;
        next += interval;
        let request = hyper::Request::get(uri.as_str())
            .header("host", addr.to_string())
            .header("apikey", apikey)
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())?;
        let response = send.send_request(request).await?;
        let ok = response.status().is_success();
        let body = response.into_body().collect().await?.to_bytes();
        let at_us = now_us();
        match (ok, row_n(&body)) {
            (true, Some(n)) => polls.push(Poll { at_us, n }),
            _ => failed += 1,
        }
    }
    Ok((polls, failed))
}

/// `n` of the one row in `[{"n": 12}]`.
fn row_n(body: &[u8]) -> Option<i64> {
    let rows: Vec<serde_json::Value> = serde_json::from_slice(body).ok()?;
    rows.first()?.get("n")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_reads_n_of_the_one_row() {
        assert_eq!(row_n(br#"[{"n": 12}]"#), Some(12));
        assert_eq!(row_n(b"[]"), None);
        assert_eq!(row_n(br#"{"message": "no"}"#), None);
    }
}
