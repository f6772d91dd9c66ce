//! One socket's outgoing queue: bounded in frames and in bytes, never awaited by a producer.
//!
//! Owns the queue between everything that sends to a client (the fan-out,
//! broadcasts, the socket's own replies) and the socket's writer, and the
//! rule for a client that cannot keep up: the moment the queue would pass
//! either bound, everything queued is dropped (its memory released at once)
//! and the socket is marked to close with 1013. Pushing never waits, so no
//! socket can slow the fan-out or another socket. A frame larger than the
//! byte bound still goes when the queue is empty, so one big row is not
//! mistaken for a slow client.
//!
//! Frames are shared, already-encoded bytes: a change serialized once is
//! queued for every socket that receives it without a copy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a socket is being closed, and the close frame it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// RFC 6455 close code.
    pub code: u16,
    /// The reason sent in the close frame.
    pub reason: String,
}

impl Close {
    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Close { code, reason: reason.into() }
    }

    /// 1013: the client is not reading fast enough.
    pub fn slow(why: Slow) -> Self {
        Close::new(TRY_AGAIN_LATER, format!("slow consumer: {}", why.text()))
    }
}

/// Why a client counts as too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    /// Its queue passed a bound.
    QueueFull,
    /// One write made no progress for this many seconds.
    NoProgress(u64),
}

impl Slow {
    fn text(self) -> String {
        match self {
            Slow::QueueFull => "outgoing queue full".into(),
            Slow::NoProgress(secs) => format!("no write progress for {secs} s"),
        }
    }

    /// A short, fixed name for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Slow::QueueFull => "queue_full",
            Slow::NoProgress(_) => "no_write_progress",
        }
    }
}

/// How a queue ended: whether it was let go as slow, and how many frames that dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ended {
    pub slow: Option<Slow>,
    pub dropped: u64,
}

/// RFC 6455 1013 "try again later", used for slow consumers.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Most frames the writer takes at once (one vectored write).
pub const MAX_BATCH: usize = 32;

/// What a queued frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message: binary when it starts with `protocol::USER_BROADCAST`, else JSON text.
    Data,
    /// The answer to a client's ping.
    Pong,
}

/// One queued frame: its kind and its payload, shared with every other socket it went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub kind: Kind,
    pub bytes: Bytes,
}

/// Frames taken at once, in order: at least one, at most `MAX_BATCH`. The
/// first is held inline, so the usual batch of one allocates nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    head: Out,
    rest: VecDeque<Out>,
}

impl Batch {
    /// How many frames (never none).
    pub fn count(&self) -> usize {
        1 + self.rest.len()
    }

    /// Frame `i` (0 is the first).
    pub fn get(&self, i: usize) -> Option<&Out> {
        if i == 0 {
            Some(&self.head)
        } else {
            self.rest.get(i - 1)
        }
    }

    /// The frames in order.
    pub fn iter(&self) -> impl Iterator<Item = &Out> {
        std::iter::once(&self.head).chain(&self.rest)
    }
}

#[cfg(test)]
impl<const N: usize> From<[Out; N]> for Batch {
    fn from(frames: [Out; N]) -> Batch {
        let mut rest: VecDeque<Out> = frames.into();
        let head = rest.pop_front().expect("a batch has a frame");
        Batch { head, rest }
    }
}

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these frames, in order.
    Frames(Batch),
    /// Send this close frame and stop.
    Close(Close),
}

/// The bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub frames: usize,
    pub bytes: usize,
}

#[derive(Default)]
struct State {
    /// The oldest queued frame, inline: a socket that gets one frame at a
    /// time never allocates a queue. `None` only when `frames` is empty too.
    head: Option<Out>,
    /// The frames after `head`, in order.
    frames: VecDeque<Out>,
    bytes: usize,
    /// Set once; frames pushed after it are dropped.
    close: Option<Close>,
    /// Set when the socket was let go as slow (first reason only).
    ended: Ended,
}

impl State {
    /// Drops what is queued (its memory goes at once) and decides the close,
    /// unless one was decided already (the first reason wins).
    fn abort(&mut self, close: Close) {
        self.head = None;
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.close.get_or_insert(close);
    }

    /// Lets a slow client go: counts what is dropped, then aborts with 1013.
    fn let_go(&mut self, why: Slow) {
        if self.close.is_none() {
            self.ended = Ended { slow: Some(why), dropped: self.len() as u64 };
        }
        self.abort(Close::slow(why));
    }

    /// Frames queued.
    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.frames.len()
    }

    fn push_back(&mut self, frame: Out) {
        match self.head {
            None => self.head = Some(frame),
            Some(_) => self.frames.push_back(frame),
        }
    }

    /// Takes up to `MAX_BATCH` frames from the front.
    fn take_batch(&mut self) -> Option<Batch> {
        let head = self.head.take()?;
        // The usual case takes the whole queue, allocation and all: an idle
        // socket keeps no buffer, and a burst's memory goes with its write.
        let rest =
            if self.frames.len() < MAX_BATCH { std::mem::take(&mut self.frames) } else { self.frames.drain(..MAX_BATCH - 1).collect() };
        self.head = self.frames.pop_front();
        let batch = Batch { head, rest };
        self.bytes -= batch.iter().map(|o| o.bytes.len()).sum::<usize>();
        Some(batch)
    }
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    /// Rung each time the writer takes frames (`push_paced` waits on it).
    taken: Notify,
    bounds: Bounds,
}

/// Cheap-clone handle to one socket's queue.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// An empty queue with `bounds`.
    pub fn new(bounds: Bounds) -> Outbox {
        let bounds = Bounds { frames: bounds.frames.max(1), bytes: bounds.bytes.max(1) };
        let shared = Shared { state: Mutex::new(State::default()), ready: Notify::new(), taken: Notify::new(), bounds };
        Outbox { shared: Arc::new(shared) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("outbox lock poisoned")
    }

    /// Queues `frame`; on overflow drops the queue and marks the socket slow.
    pub fn push(&self, frame: Bytes) {
        let mut state = self.state();
        self.push_locked(&mut state, Out { kind: Kind::Data, bytes: frame });
    }

    /// Queues the answer to a client's ping, carrying its payload.
    pub fn pong(&self, payload: Bytes) {
        let mut state = self.state();
        self.push_locked(&mut state, Out { kind: Kind::Pong, bytes: payload });
    }

    /// Queues `frames` and then runs `then` before any other producer can queue
    /// behind them: a join's reply is queued and its subscription made live in
    /// one step, so no change can overtake the reply that names its binding ids.
    pub fn push_then<R>(&self, frames: impl IntoIterator<Item = Bytes>, then: impl FnOnce() -> R) -> R {
        let mut state = self.state();
        for frame in frames {
            self.push_locked(&mut state, Out { kind: Kind::Data, bytes: frame });
        }
        then()
    }

    fn push_locked(&self, state: &mut State, frame: Out) {
        if state.close.is_some() {
            return;
        }
        let queued = state.len();
        let over = queued >= self.shared.bounds.frames || (queued > 0 && state.bytes + frame.bytes.len() > self.shared.bounds.bytes);
        if over {
            tracing::warn!(queued, bytes = state.bytes, "a socket's outgoing queue is full: closing it as a slow consumer");
            state.let_go(Slow::QueueFull);
            state.ended.dropped += 1; // the frame that did not fit
        } else {
            state.bytes += frame.bytes.len();
            state.push_back(frame);
        }
        self.shared.ready.notify_one();
    }

    /// Queues `frames` no faster than the writer takes them, keeping the
    /// queue under half its bounds, so a long replay never counts as a slow
    /// consumer while the client reads. False if the socket is closing, or
    /// no frame was taken for `stall` (the caller lets it go).
    pub async fn push_paced(&self, frames: impl IntoIterator<Item = Bytes>, stall: std::time::Duration) -> bool {
        let half = Bounds { frames: (self.shared.bounds.frames / 2).max(1), bytes: self.shared.bounds.bytes / 2 };
        for frame in frames {
            loop {
                {
                    let mut state = self.state();
                    if state.close.is_some() {
                        return false;
                    }
                    let queued = state.len();
                    if queued == 0 || (queued < half.frames && state.bytes + frame.len() <= half.bytes) {
                        self.push_locked(&mut state, Out { kind: Kind::Data, bytes: frame });
                        break;
                    }
                }
                if tokio::time::timeout(stall, self.shared.taken.notified()).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Asks for the socket to close after what is queued (the first reason wins).
    pub fn close(&self, close: Close) {
        self.state().close.get_or_insert(close);
        self.shared.ready.notify_one();
    }

    /// Drops what is queued and closes with `close` (unless a close was already decided).
    pub fn abort(&self, close: Close) {
        self.state().abort(close);
        self.shared.ready.notify_one();
    }

    /// Drops what is queued and closes with 1013 for `why` (unless a close was already decided).
    pub fn let_go(&self, why: Slow) {
        self.state().let_go(why);
        self.shared.ready.notify_one();
    }

    /// Whether the socket was let go as slow, and the frames that dropped.
    pub fn ended(&self) -> Ended {
        self.state().ended
    }

    /// The close decided so far, if any.
    #[cfg(test)]
    pub(crate) fn closing(&self) -> Option<Close> {
        self.state().close.clone()
    }

    /// Frames and bytes waiting now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        let state = self.state();
        (state.len(), state.bytes)
    }

    /// The queued payloads, taken (tests look at what a socket was sent).
    #[cfg(test)]
    pub(crate) fn take_frames(&self) -> Vec<Bytes> {
        let mut state = self.state();
        state.bytes = 0;
        let head = state.head.take();
        head.into_iter().chain(std::mem::take(&mut state.frames)).map(|o| o.bytes).collect()
    }

    /// Waits for the next thing to write: the queued frames first (up to
    /// `MAX_BATCH`, in order), then the close.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            self.shared.ready.notified().await;
        }
    }

    fn try_next(&self) -> Option<Next> {
        let mut state = self.state();
        if let Some(batch) = state.take_batch() {
            self.shared.taken.notify_one();
            return Some(Next::Frames(batch));
        }
        state.close.clone().map(Next::Close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(frames: usize, bytes: usize) -> Outbox {
        Outbox::new(Bounds { frames, bytes })
    }

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    fn data(bytes: &'static [u8]) -> Out {
        Out { kind: Kind::Data, bytes: Bytes::from_static(bytes) }
    }

    #[tokio::test]
    async fn frames_come_out_in_order_then_the_close() {
        let o = outbox(10, 1000);
        o.push(Bytes::from_static(b"a"));
        o.push(Bytes::from_static(b"b"));
        o.close(Close::new(1000, "bye"));
        o.push(Bytes::from_static(b"late"));
        assert_eq!(o.next().await, Next::Frames([data(b"a"), data(b"b")].into()));
        assert_eq!(o.next().await, Next::Close(Close::new(1000, "bye")));
    }

    #[test]
    fn passing_the_frame_bound_drops_the_queue_and_marks_the_socket_slow() {
        let o = outbox(2, 1 << 20);
        o.push(frame(1));
        o.push(frame(1));
        o.push(frame(1));
        assert_eq!(o.len(), (0, 0));
        assert_eq!(o.closing(), Some(Close::new(1013, "slow consumer: outgoing queue full")));
        assert_eq!(o.ended(), Ended { slow: Some(Slow::QueueFull), dropped: 3 });
    }

    #[test]
    fn passing_the_byte_bound_drops_the_queue_and_marks_the_socket_slow() {
        let o = outbox(100, 1000);
        o.push(frame(600));
        assert_eq!(o.len(), (1, 600));
        o.push(frame(600));
        assert_eq!(o.len(), (0, 0));
        assert_eq!(o.closing().map(|c| c.code), Some(1013));
    }

    #[test]
    fn one_frame_larger_than_the_byte_bound_still_goes_when_the_queue_is_empty() {
        let o = outbox(100, 1000);
        o.push(frame(5000));
        assert_eq!(o.len(), (1, 5000));
        assert_eq!(o.closing(), None);
    }

    #[test]
    fn the_first_close_reason_wins() {
        let o = outbox(10, 1000);
        o.close(Close::new(1000, "idle"));
        o.let_go(Slow::NoProgress(10));
        assert_eq!(o.closing(), Some(Close::new(1000, "idle")));
        assert_eq!(o.ended(), Ended::default(), "a socket already closing is not counted as slow");
    }

    #[tokio::test]
    async fn letting_a_slow_socket_go_drops_and_counts_what_is_queued() {
        let o = outbox(10, 1000);
        o.push(frame(10));
        o.let_go(Slow::NoProgress(10));
        assert_eq!(o.ended(), Ended { slow: Some(Slow::NoProgress(10)), dropped: 1 });
        assert_eq!(o.next().await, Next::Close(Close::new(1013, "slow consumer: no write progress for 10 s")));
    }

    #[tokio::test]
    async fn push_then_runs_its_step_with_the_frames_already_queued() {
        let o = outbox(10, 1000);
        let seen = o.push_then([Bytes::from_static(b"reply")], || o.shared.state.try_lock().is_err());
        assert!(seen, "the step runs while producers are held off");
        assert_eq!(o.next().await, Next::Frames([data(b"reply")].into()));
    }

    #[tokio::test]
    async fn a_paced_push_longer_than_the_bounds_goes_out_whole_at_the_writers_pace() {
        let o = outbox(10, 1000);
        let writer = tokio::spawn({
            let o = o.clone();
            async move {
                let mut got = Vec::new();
                while got.len() < 100 {
                    let Next::Frames(batch) = o.next().await else { panic!("closed") };
                    got.extend(batch.iter().map(|f| f.bytes.clone()));
                }
                got
            }
        });
        let frames: Vec<Bytes> = (0..100).map(|i| Bytes::from(i.to_string())).collect();
        assert!(o.push_paced(frames.clone(), std::time::Duration::from_secs(5)).await);
        assert_eq!(o.ended(), Ended::default(), "ten times the frame bound, never a slow consumer");
        assert_eq!(writer.await.unwrap(), frames);
    }

    #[tokio::test]
    async fn a_paced_push_nobody_takes_gives_up_after_the_stall() {
        let o = outbox(4, 1000);
        let frames: Vec<Bytes> = (0..10).map(|i| Bytes::from(i.to_string())).collect();
        assert!(!o.push_paced(frames, std::time::Duration::from_millis(50)).await);
        assert_eq!(o.len().0, 2, "it stopped at half the bound");
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_when_a_frame_arrives() {
        let o = outbox(10, 1000);
        let writer = tokio::spawn({
            let o = o.clone();
            async move { o.next().await }
        });
        tokio::task::yield_now().await;
        o.push(Bytes::from_static(b"hi"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await.unwrap().unwrap();
        assert_eq!(got, Next::Frames([data(b"hi")].into()));
    }

    #[tokio::test]
    async fn a_long_queue_is_taken_in_batches_of_at_most_max_batch_in_order() {
        let o = outbox(1000, 1 << 20);
        for i in 0..MAX_BATCH + 3 {
            o.push(Bytes::from(i.to_string()));
        }
        let Next::Frames(first) = o.next().await else { panic!("expected frames") };
        let Next::Frames(rest) = o.next().await else { panic!("expected frames") };
        assert_eq!(first.count(), MAX_BATCH);
        assert_eq!(rest.count(), 3);
        let order: Vec<String> = first.iter().chain(rest.iter()).map(|o| String::from_utf8(o.bytes.to_vec()).unwrap()).collect();
        assert_eq!(order, (0..MAX_BATCH + 3).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(o.len(), (0, 0));
    }

    #[tokio::test]
    async fn a_pong_is_queued_in_order_with_the_messages() {
        let o = outbox(10, 1000);
        o.push(Bytes::from_static(b"a"));
        o.pong(Bytes::from_static(b"p"));
        let Next::Frames(frames) = o.next().await else { panic!("expected frames") };
        assert_eq!(frames.iter().map(|f| f.kind).collect::<Vec<_>>(), [Kind::Data, Kind::Pong]);
    }
}
