//! The HTTP/1.1 listeners: connections accepted within limits, each request bounded in time,
//! headers and body, and a graceful stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::cache::Fetch;
use crate::config::ServerSettings;
use crate::responses::{self, Reply};
use crate::routes::{Handler, Listener};

/// Where a listener is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// No new connections; open ones finish the request they are on, then close.
    Draining,
    /// Open connections are closed now.
    Closing,
}

/// The limits of `[server]` that apply per connection and request.
#[derive(Debug, Clone)]
struct Limits {
    request_timeout: Duration,
    header_read_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    max_body_bytes: u64,
}

impl From<&ServerSettings> for Limits {
    fn from(server: &ServerSettings) -> Self {
        Self {
            request_timeout: server.request_timeout,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            max_body_bytes: server.max_body_bytes,
        }
    }
}

/// A listener serving a [`Handler`].
#[derive(Debug)]
pub(crate) struct Serving {
    phase: watch::Sender<Phase>,
    acceptor: JoinHandle<()>,
}

/// Starts serving `handler` on `listener` (as the `kind` of listener).
pub(crate) fn serve<F: Fetch>(
    listener: TcpListener,
    kind: Listener,
    handler: Arc<Handler<F>>,
    server: &ServerSettings,
) -> Serving {
    let (phase, watcher) = watch::channel(Phase::Serving);
    let acceptor = tokio::spawn(accept(
        listener,
        kind,
        handler,
        Limits::from(server),
        server.max_connections,
        watcher,
    ));
    Serving { phase, acceptor }
}

impl Serving {
    /// Stops accepting, lets open connections finish their request within `grace`, then
    /// closes what is left.
    pub(crate) async fn shutdown(self, grace: Duration) {
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(grace, self.phase.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "requests did not finish within the grace period; closing their connections"
            );
            self.phase.send_replace(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.phase.closed()).await;
        }
        let _ = self.acceptor.await;
    }
}

/// The accept loop: one connection slot per connection, or wait in the backlog.
async fn accept<F: Fetch>(
    listener: TcpListener,
    kind: Listener,
    handler: Arc<Handler<F>>,
    limits: Limits,
    max_connections: usize,
    mut phase: watch::Receiver<Phase>,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    let limits = Arc::new(limits);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&connections).acquire_owned() => slot,
            _ = phase.changed() => return,
        };
        let Ok(slot) = slot else { return };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or the peer left before we accepted.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = phase.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&limits);
        let phase = phase.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(tcp, peer, kind, handler, limits, phase).await;
        });
    }
}

/// Serves one connection until the peer leaves or the listener stops.
async fn serve_connection<F: Fetch>(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    handler: Arc<Handler<F>>,
    limits: Arc<Limits>,
    mut phase: watch::Receiver<Phase>,
) {
    let service_limits = Arc::clone(&limits);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&service_limits);
        async move { Ok::<_, Infallible>(answer(&handler, kind, &limits, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => match changed.map(|()| *phase.borrow_and_update()) {
                Ok(Phase::Serving) => {}
                Ok(Phase::Draining) => {
                    if !draining {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                Ok(Phase::Closing) | Err(_) => return,
            },
        }
    }
}

/// One request: its body refused if too large, then routed within the request timeout.
async fn answer<F: Fetch>(
    handler: &Handler<F>,
    kind: Listener,
    limits: &Limits,
    request: Request<Incoming>,
) -> Reply {
    let declared = request.body().size_hint().upper();
    if declared.is_none_or(|bytes| bytes > limits.max_body_bytes) {
        return responses::closing(responses::error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Metadata requests carry no body.",
        ));
    }
    let (parts, _body) = request.into_parts();
    let reply = match tokio::time::timeout(
        limits.request_timeout,
        handler.handle(kind, &parts.method, &parts.uri, &parts.headers),
    )
    .await
    {
        Ok(reply) => reply,
        Err(_) => responses::unavailable(
            &format!(
                "No answer within {}; the token broker may be slow or unreachable.",
                humantime::format_duration(limits.request_timeout)
            ),
            Duration::from_secs(1),
        ),
    };
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = reply.status().as_u16(),
        "request"
    );
    reply
}
