//! The HTTP/1.1 accept loop: one task per connection, the peer address as
//! `ConnectInfo`, `TCP_NODELAY`, upgrades, and a graceful stop.
//!
//! Owned here rather than taken from `axum::serve` because that one reads
//! every connection through hyper-util's protocol sniffer, whose wrapper type
//! is private: an upgraded WebSocket then cannot be turned back into its
//! `TcpStream`, and its writes go through a shared lock instead of their own
//! write half (see `http::serve_upgraded`). Browsers open WebSockets over
//! HTTP/1.1, and the gateway speaks nothing else.
//!
//! On `stop`: no new connections; idle keep-alive connections close, requests
//! in flight finish, and the returned future ends when every connection task
//! has. Upgraded sockets are not connections any more: the app closes those.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Pause after a failed `accept` (typically out of file descriptors), so
/// the loop does not spin while the limit holds.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection may take to send a request's headers (hyper's
/// default, which needs a timer to hold): a peer that opens connections and
/// sends nothing cannot keep them.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop`, then waits for open
/// connections to finish their requests.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                connections.spawn(connection(tcp, peer, router.clone(), stop.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection's requests, in order, until the peer leaves or `stop`.
async fn connection(tcp: TcpStream, peer: SocketAddr, router: Router, stop: CancellationToken) {
    // Realtime frames are small and must not wait for an ACK (Nagle with delayed ACKs adds up to 40 ms).
    let _ = tcp.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let call = router.clone().oneshot(request.map(axum::body::Body::new));
        async move { Ok::<_, Infallible>(call.await.unwrap_or_else(|never| match never {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let outcome = tokio::select! {
        outcome = conn.as_mut() => outcome,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = outcome {
        debug!(error = %e, "connection ended with an error");
    }
}
