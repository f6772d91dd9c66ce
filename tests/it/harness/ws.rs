//! A raw Phoenix client over tokio-tungstenite, speaking vsn 1.0.0 or 2.0.0.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{TestApp, WAIT};

/// A decoded server frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub join_ref: Value,
    pub msg_ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// How a socket ended, seen from the client.
#[derive(Debug)]
pub enum Ended {
    Closed(Option<(u16, String)>),
}

/// A raw Phoenix client over tokio-tungstenite.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    v2: bool,
    next_ref: u32,
}

impl Client {
    /// Connects with `apikey` speaking `vsn`.
    pub async fn connect(app: &TestApp, apikey: &str, vsn: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(app.ws_url(apikey, vsn)).await.expect("websocket connect");
        Client { ws, v2: vsn.starts_with('2'), next_ref: 1 }
    }

    /// Connects speaking vsn 2.0.0 with `apikey`.
    pub async fn v2(app: &TestApp, apikey: &str) -> Client {
        Client::connect(app, apikey, "2.0.0").await
    }

    /// A fresh ref.
    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends a frame in this socket's serializer.
    pub async fn send(&mut self, join_ref: Option<&str>, msg_ref: &str, topic: &str, event: &str, payload: Value) {
        let text = if self.v2 {
            json!([join_ref, msg_ref, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": msg_ref, "topic": topic, "event": event, "payload": payload}).to_string()
        };
        self.send_raw(Message::Text(text.into())).await;
    }

    /// Sends any message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("websocket send");
    }

    /// The next text frame (panics after `WAIT`).
    pub async fn recv(&mut self) -> Frame {
        match self.next().await {
            Ok(f) => f,
            Err(ended) => panic!("socket ended while a frame was expected: {ended:?}"),
        }
    }

    /// The next frame, or how the socket ended.
    pub async fn next(&mut self) -> Result<Frame, Ended> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("no frame within the wait");
            match msg {
                Some(Ok(Message::Text(text))) => return Ok(self.decode(text.as_str())),
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string()))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Closed(None)),
            }
        }
    }

    /// Waits for the next pong, skipping other frames; returns its payload.
    pub async fn pong(&mut self) -> Vec<u8> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("no pong within the wait");
            match msg {
                Some(Ok(Message::Pong(payload))) => return payload.to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended while a pong was expected: {other:?}"),
            }
        }
    }

    /// Sends our close frame and returns the server's answer to it.
    pub async fn close_and_wait(&mut self, code: u16) -> Option<(u16, String)> {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: code.into(), reason: "".into() };
        self.send_raw(Message::Close(Some(frame))).await;
        self.closed().await
    }

    /// Waits for the close frame, skipping other frames.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            if let Err(Ended::Closed(c)) = self.next().await {
                return c;
            }
        }
    }

    /// Every frame until the socket ends, and how it ended.
    pub async fn rest(&mut self) -> (Vec<Frame>, Option<(u16, String)>) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                Ok(f) => frames.push(f),
                Err(Ended::Closed(c)) => return (frames, c),
            }
        }
    }

    /// Reads to the end of a socket the server is shutting down: each of
    /// `topics` must get the contract's operator disconnect (a `system` ok
    /// "Server requested disconnect") and no `phx_close`, which would tell
    /// supabase-js not to rejoin; then a 1001 close.
    /// Returns every frame it read.
    pub async fn told_to_reconnect(&mut self, topics: &[&str]) -> Vec<Frame> {
        let (frames, close) = self.rest().await;
        for topic in topics {
            let told = frames.iter().find(|f| f.topic == *topic && f.event == "system" && f.payload["extension"] == "system");
            let told = told.unwrap_or_else(|| panic!("no system message on {topic}: {frames:?}"));
            let channel = topic.strip_prefix("realtime:").unwrap();
            assert_eq!(
                told.payload,
                json!({"extension": "system", "status": "ok", "message": "Server requested disconnect", "channel": channel})
            );
        }
        assert!(frames.iter().all(|f| f.event != "phx_close"), "phx_close makes supabase-js drop the channel for good: {frames:?}");
        assert_eq!(close, Some((1001, "server shutting down".to_owned())));
        frames
    }

    fn decode(&self, text: &str) -> Frame {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("server sent non-JSON {text:?}: {e}"));
        if self.v2 {
            let a = v.as_array().unwrap_or_else(|| panic!("v2 frame is not an array: {text}"));
            assert_eq!(a.len(), 5, "v2 frames have five elements: {text}");
            Frame { join_ref: a[0].clone(), msg_ref: a[1].clone(), topic: s(&a[2]), event: s(&a[3]), payload: a[4].clone() }
        } else {
            assert!(v.get("join_ref").is_none(), "v1 server frames carry no join_ref: {text}");
            Frame {
                join_ref: Value::Null,
                msg_ref: v["ref"].clone(),
                topic: s(&v["topic"]),
                event: s(&v["event"]),
                payload: v["payload"].clone(),
            }
        }
    }

    /// Waits for a frame with `event` on `topic`, skipping others.
    pub async fn recv_event(&mut self, topic: &str, event: &str) -> Frame {
        loop {
            let f = self.recv().await;
            if f.topic == topic && f.event == event {
                return f;
            }
        }
    }

    /// Joins `realtime:<name>` with `bindings`; returns the reply payload.
    pub async fn join(&mut self, name: &str, bindings: Value, access_token: Option<&str>) -> Value {
        let topic = format!("realtime:{name}");
        let r = self.make_ref();
        let mut payload = json!({"config": {"broadcast": {"self": false, "ack": false}, "presence": {"key": ""}, "postgres_changes": bindings, "private": false}});
        if let Some(t) = access_token {
            payload["access_token"] = json!(t);
        }
        self.send(Some(&r), &r, &topic, "phx_join", payload).await;
        self.reply_to(&r).await
    }

    /// The reply to push `r`, skipping other frames.
    pub async fn reply_to(&mut self, r: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f.event == "phx_reply" && f.msg_ref == json!(r) {
                return f.payload;
            }
        }
    }

    /// Joins and asserts an `ok` reply followed by `Subscribed to PostgreSQL`.
    pub async fn subscribe(&mut self, name: &str, bindings: Value, access_token: Option<&str>) -> Value {
        let reply = self.join(name, bindings, access_token).await;
        assert_eq!(reply["status"], "ok", "join refused: {reply}");
        let sys = self.recv_event(&format!("realtime:{name}"), "system").await;
        assert_eq!(sys.payload["message"], "Subscribed to PostgreSQL", "{}", sys.payload);
        reply
    }

    /// The next `postgres_changes` payload on `realtime:<name>`.
    pub async fn change(&mut self, name: &str) -> Value {
        self.recv_event(&format!("realtime:{name}"), "postgres_changes").await.payload
    }

    /// Sends a heartbeat and waits for its reply (proves the socket is healthy).
    pub async fn heartbeat(&mut self) {
        self.frames_until_heartbeat().await;
    }

    /// Sends a heartbeat and returns every frame that arrived before its reply:
    /// whatever the server had queued for this socket by then.
    pub async fn frames_until_heartbeat(&mut self) -> Vec<Frame> {
        let r = self.make_ref();
        self.send(None, &r, "phoenix", "heartbeat", json!({})).await;
        let mut seen = Vec::new();
        loop {
            let f = self.recv().await;
            if f.topic == "phoenix" && f.msg_ref == json!(r) {
                assert_eq!(f.payload, json!({"status": "ok", "response": {}}));
                return seen;
            }
            seen.push(f);
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}
