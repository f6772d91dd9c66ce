//! One benchmark client socket: connect, join one channel, then read and
//! heartbeat like supabase-js, or stall (never poll again until drained).
//!
//! Owns the WebSocket and the timing of each frame (wall clock, taken before
//! decoding). Counting goes to the `Tally`; what the process does with many
//! sockets is `clients`' business.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::phoenix;
use crate::tally::Tally;
use crate::wire::{Event, JoinOutcome, Mode};

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// supabase-js's heartbeat interval.
const HEARTBEAT: Duration = Duration::from_secs(25);
/// Longest wait for the server's close frame after ours.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Who a socket is and how it joins.
pub struct Identity<'a> {
    pub index: usize,
    pub addr: SocketAddr,
    pub apikey: &'a str,
    pub token: &'a str,
    pub channel: &'a str,
    pub table: &'a str,
    pub filter: Option<&'a str>,
}

/// Microseconds since the epoch: one clock for every process on the machine.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Small buffers, so thousands of client sockets stay cheap (the defaults
/// cost 128 KiB each); frames may be as large as the server sends. Each read
/// zeroes up to the read size first, so it is about one change frame.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0)
}

/// Connects and joins; the outcome says whether the feed is live.
pub async fn open(id: &Identity<'_>) -> Result<(Ws, JoinOutcome), String> {
    let tcp = TcpStream::connect(id.addr).await.map_err(|e| format!("connect: {e}"))?;
    let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
    let url = phoenix::socket_url(id.addr, id.apikey);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config())).await.map_err(|e| format!("upgrade: {e}"))?;
    let (reply, system) = join(&mut ws, id).await?;
    Ok((ws, JoinOutcome { socket: id.index, reply, system, local_port }))
}

/// Sends the join; returns the reply status and the `system` message after it.
async fn join(ws: &mut Ws, id: &Identity<'_>) -> Result<(String, Option<String>), String> {
    let frame = phoenix::join(id.channel, id.table, id.filter, id.token);
    ws.send(Message::Text(frame.into())).await.map_err(|e| format!("send join: {e}"))?;
    let mut reply = None;
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => return Err(describe_close(frame)),
            Ok(_) => continue,
            Err(e) => return Err(format!("error: {e}")),
        };
        let Some(f) = phoenix::decode(&text) else { continue };
        if f.is_join_reply() {
            let status = f.reply_status();
            if status != "ok" {
                return Ok((status, None));
            }
            reply = Some(status);
        } else if f.event == "system" {
            if let Some(reply) = reply {
                return Ok((reply, Some(f.system_message())));
            }
        }
    }
    Err("end of stream during the join".into())
}

/// Did the join end in a live change feed?
pub fn is_subscribed(outcome: &JoinOutcome) -> bool {
    outcome.reply == "ok" && outcome.system.as_deref() == Some(phoenix::SUBSCRIBED)
}

/// Reads every frame and heartbeats until the server ends the socket or
/// `closing` says stop. `Count` tallies changes; `Trace` reports each frame.
pub async fn follow(mut ws: Ws, index: usize, mode: Mode, tally: Arc<Tally>, mut closing: watch::Receiver<bool>) {
    // Spread the heartbeats over the interval, as independent browsers would.
    let offset = Duration::from_millis(index as u64 * 7919 % HEARTBEAT.as_millis() as u64);
    // The timer and the watch are made once and polled in place: this loop
    // runs for every frame, and re-creating them per frame cost the load
    // generator a tenth of its CPU (the gateway's cores are the same two).
    let beat = tokio::time::sleep_until(Instant::now() + offset + HEARTBEAT);
    let closed = closing.changed();
    tokio::pin!(beat, closed);
    let mut next_ref = 1u64;
    loop {
        tokio::select! {
            // Frames first: while one is ready, the timer and the watch are not polled.
            biased;
            // The server's next frame.
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => on_text(&text, now_us(), index, mode, &tally),
                Some(Ok(Message::Close(frame))) => return tally.closed(describe_close(frame)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return tally.closed(format!("error: {e}")),
                None => return tally.closed("end of stream".into()),
            },
            // The tool asked every socket to close, or the process is ending.
            _ = &mut closed => return close_politely(ws).await,
            // The gateway's idle timer sees this, as it would supabase-js's.
            _ = &mut beat => {
                next_ref += 1;
                beat.as_mut().reset(Instant::now() + HEARTBEAT);
                if let Err(e) = ws.send(Message::Text(phoenix::heartbeat(next_ref).into())).await {
                    return tally.closed(format!("heartbeat send failed: {e}"));
                }
            }
        }
    }
}

fn on_text(text: &str, at_us: i64, index: usize, mode: Mode, tally: &Tally) {
    if matches!(mode, Mode::Count) {
        if let Some(seq) = phoenix::quick_change_seq(text) {
            return tally.delivered(seq, at_us);
        }
    }
    let Some(f) = phoenix::decode(text) else { return };
    match mode {
        Mode::Trace if f.topic != "phoenix" => {
            let message = (f.event == "system").then(|| f.system_message());
            tally.emit(Event::Frame { socket: index, at_us, event: f.event.clone(), seq: f.change_seq(), message });
        }
        _ => {
            if let Some(seq) = f.change_seq() {
                tally.delivered(seq, at_us);
            }
        }
    }
}

/// Sends a close frame and waits (bounded) for the server's.
pub async fn close_politely(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What a socket that was never read held, read now for at most `limit`.
pub struct Drained {
    pub changes: usize,
    pub bytes: u64,
    pub end: String,
}

/// Reads a stalled socket until it ends or `limit` passes.
pub async fn drain(mut ws: Ws, limit: Duration) -> Drained {
    let deadline = Instant::now() + limit;
    let mut d = Drained { changes: 0, bytes: 0, end: String::new() };
    loop {
        d.end = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => format!("still open after reading for {} s", limit.as_secs()),
            Ok(Some(Ok(Message::Text(text)))) => {
                d.bytes += text.len() as u64;
                d.changes += usize::from(phoenix::decode(&text).and_then(|f| f.change_seq()).is_some());
                continue;
            }
            Ok(Some(Ok(Message::Close(frame)))) => describe_close(frame),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => format!("error: {e}"),
            Ok(None) => "end of stream".into(),
        };
        return d;
    }
}

/// `close <code> <reason>`, or `close without a frame`.
fn describe_close(frame: Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!("close {} {}", u16::from(f.code), f.reason).trim_end().to_owned(),
        None => "close without a frame".into(),
    }
}
