//! The socket's write side, on the TCP write half itself rather than through tungstenite.
//!
//! Owns server frame headers, the writer task and the read half's adapter.
//! A server's frames are unmasked (RFC 6455 5.1), so every socket that gets a
//! change gets the same payload bytes: the writer sends a 2-10 byte header
//! and the shared payload with one vectored write, without copying it into a
//! per-socket buffer, and takes everything queued (up to `MAX_BATCH` frames)
//! in that same write; a lone small frame is copied beside its header on the
//! stack and goes with a plain `send`. Nothing is buffered between writes, so a large row
//! costs no memory beyond its shared payload, whatever the socket's life.
//!
//! tungstenite still reads: it gets the read half and a write side that
//! discards, because the answers it would write itself (pongs, the close
//! echo) are queued on the outbox by the control loop and written here, in
//! order with everything else.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::realtime::outbox::{Batch, Close, Kind, Next, Out, Outbox, Slow, MAX_BATCH};
use crate::realtime::protocol;

/// RFC 6455 opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Pong = 0xA,
}

/// Longest close reason: a control frame's payload is at most 125 bytes, 2 of them the code.
const MAX_REASON_BYTES: usize = 123;
/// Most slices handed to one `writev`.
const MAX_SLICES: usize = 64;

/// A final, unmasked frame header for a payload of `len` bytes.
#[derive(Clone, Copy)]
struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    fn new(op: Op, len: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | op as u8;
        let used = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Header { bytes, len: used }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

fn op_of(out: &Out) -> Op {
    match out.kind {
        Kind::Pong => Op::Pong,
        Kind::Data if out.bytes.first() == Some(&protocol::USER_BROADCAST) => Op::Binary,
        Kind::Data => Op::Text,
    }
}

/// Why a write did not happen.
enum Stalled {
    /// The connection failed.
    Gone,
    /// One write made no progress within the deadline.
    NoProgress,
}

/// The writer: drains the outbox onto the socket. A write that makes no
/// progress within `deadline` means the client stopped reading: the queue is
/// dropped and the close frame gets the same deadline before the socket goes.
pub(super) async fn write<W>(mut w: W, outbox: Outbox, deadline: Duration, done: CancellationToken)
where
    W: AsyncWrite + Unpin,
{
    loop {
        match outbox.next().await {
            Next::Frames(frames) => match write_frames(&mut w, &frames, deadline).await {
                Ok(()) => {}
                Err(Stalled::Gone) => break,
                Err(Stalled::NoProgress) => {
                    warn!(secs = deadline.as_secs(), "no write progress: closing the socket as a slow consumer");
                    outbox.let_go(Slow::NoProgress(deadline.as_secs()));
                }
            },
            Next::Close(close) => {
                let _ = timeout(deadline, async {
                    let _ = w.write_all(&close_frame(&close)).await;
                    w.shutdown().await
                })
                .await;
                break;
            }
        }
    }
    done.cancel();
}

/// A whole close frame: code and reason, the reason cut to fit at a character boundary.
fn close_frame(close: &Close) -> Vec<u8> {
    let mut cut = close.reason.len().min(MAX_REASON_BYTES);
    while !close.reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &close.reason.as_bytes()[..cut];
    let mut frame = Header::new(Op::Close, 2 + reason.len()).as_slice().to_vec();
    frame.extend_from_slice(&close.code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// A frame's header and payload together at most this long are copied into
/// one stack buffer and sent with a plain `send`: a change to a single socket
/// is one such frame, and `send` skips the vectored path's per-call work.
const COPY_BELOW: usize = 2048;

/// How far a batch has been written: piece `2k` is frame `k`'s header,
/// piece `2k + 1` its payload; `offset` bytes of piece `at` are out.
#[derive(Clone, Copy, Default)]
struct Written {
    at: usize,
    offset: usize,
}

/// Writes `batch` in order: each header beside its shared payload, in as
/// few writes as the kernel takes. Nothing is allocated: each attempt builds
/// its headers and slices on the stack (they are cheap to rebuild), so the
/// writer task holds no buffer between writes or while it waits.
async fn write_frames<W>(w: &mut W, batch: &Batch, deadline: Duration) -> Result<(), Stalled>
where
    W: AsyncWrite + Unpin,
{
    let total = batch.count() * 2;
    let mut done = Written::default();
    loop {
        while done.at < total && piece_len(batch, done.at) == done.offset {
            done = Written { at: done.at + 1, offset: 0 };
        }
        if done.at == total {
            return Ok(());
        }
        let mut written = write_within(w, deadline, |w, cx| poll_write_from(w, cx, batch, done)).await?;
        while written > 0 {
            let left = piece_len(batch, done.at) - done.offset;
            if written < left {
                done.offset += written;
                break;
            }
            written -= left;
            done = Written { at: done.at + 1, offset: 0 };
        }
    }
}

fn header_of(out: &Out) -> Header {
    Header::new(op_of(out), out.bytes.len())
}

fn piece_len(batch: &Batch, i: usize) -> usize {
    let out = batch.get(i / 2).expect("a piece of the batch");
    if i % 2 == 0 {
        header_of(out).len as usize
    } else {
        out.bytes.len()
    }
}

/// One write attempt of what is left of `batch` after `done`.
fn poll_write_from<W>(w: Pin<&mut W>, cx: &mut Context<'_>, batch: &Batch, done: Written) -> Poll<std::io::Result<usize>>
where
    W: AsyncWrite,
{
    let first = batch.get(done.at / 2).expect("an unwritten frame");
    let header = header_of(first);
    if batch.count() == 1 && done.at == 0 && done.offset == 0 && header.as_slice().len() + first.bytes.len() <= COPY_BELOW {
        let mut buf = [0u8; COPY_BELOW];
        let (h, p) = (header.as_slice(), &first.bytes[..]);
        buf[..h.len()].copy_from_slice(h);
        buf[h.len()..h.len() + p.len()].copy_from_slice(p);
        return w.poll_write(cx, &buf[..h.len() + p.len()]);
    }
    let mut headers = [Header::new(Op::Text, 0); MAX_BATCH];
    for (h, out) in headers.iter_mut().zip(batch.iter()) {
        *h = header_of(out);
    }
    let piece = |i: usize| -> &[u8] {
        if i % 2 == 0 {
            headers[i / 2].as_slice()
        } else {
            &batch.get(i / 2).expect("a frame of the batch").bytes
        }
    };
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let mut n = 0;
    for (slot, i) in slices.iter_mut().zip(done.at..batch.count() * 2) {
        *slot = IoSlice::new(if i == done.at { &piece(i)[done.offset..] } else { piece(i) });
        n += 1;
    }
    w.poll_write_vectored(cx, &slices[..n])
}

/// One write, giving up after `deadline` without progress. Most writes
/// finish at once, so the timer is armed only when the first poll says the
/// socket is full.
async fn write_within<W, F>(w: &mut W, deadline: Duration, mut attempt: F) -> Result<usize, Stalled>
where
    W: AsyncWrite + Unpin,
    F: FnMut(Pin<&mut W>, &mut Context<'_>) -> Poll<std::io::Result<usize>>,
{
    let mut write = std::future::poll_fn(|cx| attempt(Pin::new(&mut *w), cx));
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut write).poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => timeout(deadline, write).await.map_err(|_| Stalled::NoProgress)?,
    };
    match result {
        Ok(0) => Err(Stalled::Gone),
        Ok(n) => Ok(n),
        Err(e) => {
            debug!(error = %e, "socket write failed");
            Err(Stalled::Gone)
        }
    }
}

/// The read half as tungstenite sees it: bytes the HTTP layer read ahead of
/// the upgrade come first; what tungstenite writes is dropped (see the module
/// header).
pub(super) struct ReadSide<R> {
    ahead: Bytes,
    read: R,
}

impl<R> ReadSide<R> {
    /// `ahead` is copied out: it is a view of the HTTP layer's whole read
    /// buffer (8 KiB), which an idle socket would otherwise keep for life.
    pub(super) fn new(ahead: Bytes, read: R) -> Self {
        ReadSide { ahead: Bytes::copy_from_slice(&ahead), read }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;

    fn parse(bytes: &[u8]) -> (FrameHeader, u64, usize) {
        let mut cursor = Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
        (header, len, cursor.position() as usize)
    }

    #[test]
    fn a_socket_keeps_no_share_of_the_http_layers_read_buffer() {
        let mut buf = bytes::BytesMut::with_capacity(8192);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nabc");
        let mut whole = buf.freeze();
        let ahead = whole.split_off(18);
        let side = ReadSide::new(ahead, tokio::io::empty());
        assert!(whole.is_unique(), "the socket still holds the 8 KiB read buffer");
        assert_eq!(&side.ahead[..], b"abc");
        let empty = ReadSide::new(whole.slice(0..0), tokio::io::empty());
        assert!(whole.is_unique(), "an empty read-ahead still holds the read buffer");
        drop(empty);
    }

    #[test]
    fn headers_parse_back_as_final_unmasked_frames_of_each_length_form() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 3_000_000] {
            let h = Header::new(Op::Text, len);
            let (header, parsed_len, used) = parse(h.as_slice());
            assert!(header.is_final);
            assert!(header.mask.is_none(), "server frames are unmasked");
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!((parsed_len, used), (len as u64, h.as_slice().len()), "length {len}");
        }
    }

    #[test]
    fn a_user_broadcast_goes_binary_a_pong_as_pong_and_json_as_text() {
        let out = |kind, bytes: &'static [u8]| Out { kind, bytes: Bytes::from_static(bytes) };
        assert_eq!(op_of(&out(Kind::Data, &[protocol::USER_BROADCAST, 1])), Op::Binary);
        assert_eq!(op_of(&out(Kind::Data, b"[null]")), Op::Text);
        assert_eq!(op_of(&out(Kind::Pong, b"hi")), Op::Pong);
        let (header, ..) = parse(Header::new(Op::Pong, 2).as_slice());
        assert_eq!(header.opcode, OpCode::Control(Control::Pong));
    }

    #[test]
    fn a_close_frame_carries_the_code_and_a_reason_cut_at_a_character_boundary() {
        let frame = close_frame(&Close::new(1013, "é".repeat(100)));
        let (header, len, used) = parse(&frame);
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(len as usize, frame.len() - used);
        assert!(len <= 125);
        assert_eq!(&frame[used..used + 2], &1013u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[used + 2..]).is_ok());
    }

    #[tokio::test]
    async fn queued_frames_arrive_whole_and_in_order_through_a_small_pipe() {
        // A 64-byte pipe forces many partial writes.
        let (client, server) = tokio::io::duplex(64);
        let outbox = Outbox::new(crate::realtime::outbox::Bounds { frames: 100, bytes: 1 << 20 });
        let big: String = "x".repeat(70_000);
        outbox.push(Bytes::from_static(b"[\"a\"]"));
        outbox.push(Bytes::from(big.clone()));
        outbox.pong(Bytes::from_static(b"p"));
        outbox.close(Close::new(1000, "bye"));
        let done = CancellationToken::new();
        tokio::spawn(write(server, outbox, Duration::from_secs(5), done.clone()));
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(client, tungstenite::protocol::Role::Client, None).await;
        use futures_util::StreamExt;
        let mut got = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            got.push(m);
        }
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], tungstenite::Message::text("[\"a\"]"));
        assert_eq!(got[1], tungstenite::Message::text(big));
        assert_eq!(got[2], tungstenite::Message::Pong(Bytes::from_static(b"p")));
        let tungstenite::Message::Close(Some(close)) = &got[3] else { panic!("expected a close, got {:?}", got[3]) };
        assert_eq!((u16::from(close.code), close.reason.as_str()), (1000, "bye"));
        done.cancelled().await;
    }

    /// Everything `outbox` holds, written by the writer into a pipe of
    /// `pipe` bytes and read back as messages until the close.
    async fn written_through(pipe: usize, outbox: Outbox) -> Vec<tungstenite::Message> {
        use futures_util::StreamExt;
        let (client, server) = tokio::io::duplex(pipe);
        outbox.close(Close::new(1000, "bye"));
        tokio::spawn(write(server, outbox, Duration::from_secs(5), CancellationToken::new()));
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(client, tungstenite::protocol::Role::Client, None).await;
        let mut got = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            got.push(m);
        }
        got
    }

    #[tokio::test]
    async fn a_single_small_frame_sent_from_the_stack_buffer_survives_partial_writes() {
        let outbox = Outbox::new(crate::realtime::outbox::Bounds { frames: 100, bytes: 1 << 20 });
        let text: String = (0..COPY_BELOW - 10).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        outbox.push(Bytes::from(text.clone()));
        let got = written_through(7, outbox).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], tungstenite::Message::text(text));
    }

    #[tokio::test]
    async fn more_frames_than_one_batch_holds_arrive_in_order() {
        let outbox = Outbox::new(crate::realtime::outbox::Bounds { frames: 1000, bytes: 1 << 20 });
        let count = MAX_BATCH * 2 + 3;
        for i in 0..count {
            outbox.push(Bytes::from(format!("[{i}]")));
        }
        let got = written_through(100, outbox).await;
        let texts: Vec<String> = got[..count].iter().map(|m| m.to_text().unwrap().to_owned()).collect();
        assert_eq!(texts, (0..count).map(|i| format!("[{i}]")).collect::<Vec<_>>());
        assert!(matches!(got[count], tungstenite::Message::Close(_)));
    }

    #[tokio::test]
    async fn bytes_read_ahead_of_the_upgrade_come_before_the_socket() {
        use tokio::io::AsyncReadExt;
        let mut side = ReadSide::new(Bytes::from_static(b"ab"), &b"cd"[..]);
        let mut all = Vec::new();
        side.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcd");
    }
}
