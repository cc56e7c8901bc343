//! The listener: TCP connections accepted within limits, TLS handshakes bounded in number and
//! time, and each connection served over HTTP/2 until it reaches its maximum age.
//!
//! The broker serves its gRPC routes on hyper directly rather than through tonic's `Server`, so
//! that it decides how a call ends: tonic's server turns an expired `grpc-timeout` into
//! `CANCELLED`, which clients do not retry, and its `max_connection_age_grace` replaces the
//! graceful `GOAWAY` instead of following it. Here the RPC handlers answer deadlines themselves
//! (`DEADLINE_EXCEEDED` with details, see [`crate::rpc`]), and a connection's life ends in two
//! steps, as in gRPC's other servers: at its (jittered) maximum age it is sent `GOAWAY` and
//! takes no new calls, and calls still running after the grace period are cut.
//!
//! Limits against floods of slow or idle clients: at most `max_connections` connections (the
//! acceptor stops accepting at the limit, leaving newcomers in the kernel's backlog), at most
//! `max_concurrent_handshakes` handshakes at once, each within `handshake_timeout`, at most
//! `max_handshakes_per_ip` of them from one address (more are closed at once, so one host
//! cannot hold every handshake slot), and per connection at most `max_concurrent_streams` calls
//! and `max_header_list_size` bytes of headers. A TLS session resumed from the session cache brings back a client chain without a
//! new verification in rustls, so the acceptor verifies it again against the current bundles.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::HandshakeKind;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::codegen::Service as _;
use tonic::codegen::http;
use tonic::service::Routes;

use crate::settings::ServerSettings;
use crate::tls::{ConnectionInfo, Peer, TlsConfig};

/// How the listener treats connections; from `[server]`.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Open connections at most; beyond it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// TLS handshakes in progress at most.
    pub max_concurrent_handshakes: usize,
    /// TLS handshakes in progress from one IP address at most; more connections from it are
    /// closed at once.
    pub max_handshakes_per_ip: usize,
    /// A connection's life before it is sent `GOAWAY` (jittered by ±10 %).
    pub max_connection_age: Duration,
    /// How long calls may still run on a connection after its `GOAWAY`.
    pub max_connection_age_grace: Duration,
    /// Calls in flight per connection at most (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 pings on idle connections; a peer that does not answer within
    /// `keepalive_timeout` is disconnected.
    pub keepalive_interval: Duration,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Duration,
    /// The largest header block accepted, bytes.
    pub max_header_list_size: u32,
}

impl From<&ServerSettings> for TransportOptions {
    fn from(server: &ServerSettings) -> Self {
        Self {
            handshake_timeout: server.handshake_timeout,
            max_connections: server.max_connections,
            max_concurrent_handshakes: server.max_concurrent_handshakes,
            max_handshakes_per_ip: server.max_handshakes_per_ip,
            max_connection_age: server.max_connection_age,
            max_connection_age_grace: server.max_connection_age_grace,
            max_concurrent_streams: server.max_concurrent_streams,
            keepalive_interval: server.keepalive_interval,
            keepalive_timeout: server.keepalive_timeout,
            max_header_list_size: server.max_header_list_size,
        }
    }
}

/// Where the listener is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// No new connections; open ones are sent `GOAWAY` and finish their calls.
    Draining,
    /// Open connections are closed now.
    Closing,
}

/// A listener serving gRPC routes; see the module documentation.
#[derive(Debug)]
pub struct Serving {
    phase: watch::Sender<Phase>,
    acceptor: JoinHandle<()>,
}

/// Starts serving `routes` on `listener` with the TLS configuration `tls` holds at each
/// accept.
pub fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<TlsConfig>>,
    options: TransportOptions,
    routes: Routes,
) -> Serving {
    let (phase, watcher) = watch::channel(Phase::Serving);
    let acceptor = tokio::spawn(accept(listener, tls, options, routes.prepare(), watcher));
    Serving { phase, acceptor }
}

impl Serving {
    /// Stops accepting, sends every connection `GOAWAY`, waits up to `grace` for their calls to
    /// finish, then closes what is left.
    pub async fn shutdown(self, grace: Duration) {
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(grace, self.phase.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "in-flight RPCs did not finish within the grace period; closing their connections"
            );
            self.phase.send_replace(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.phase.closed()).await;
        }
        let _ = self.acceptor.await;
    }
}

/// The accept loop: one connection slot and one handshake slot per connection, or wait.
async fn accept(
    listener: TcpListener,
    tls: watch::Receiver<Arc<TlsConfig>>,
    options: TransportOptions,
    routes: Routes,
    mut phase: watch::Receiver<Phase>,
) {
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let handshakes = Arc::new(Semaphore::new(options.max_concurrent_handshakes));
    let per_ip = Arc::new(HandshakesPerIp::default());
    let options = Arc::new(options);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&connections).acquire_owned() => slot,
            _ = phase.changed() => return,
        };
        let (tcp, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or the peer gave up before we accepted.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = phase.changed() => return,
        };
        let Some(from_ip) =
            HandshakesPerIp::enter(&per_ip, remote_addr, options.max_handshakes_per_ip)
        else {
            tracing::warn!(peer = %remote_addr, "too many TLS handshakes in progress from this address; closing");
            continue;
        };
        let handshake = tokio::select! {
            permit = Arc::clone(&handshakes).acquire_owned() => permit,
            _ = phase.changed() => return,
        };
        let (Ok(slot), Ok(handshake)) = (slot, handshake) else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let config = Arc::clone(&tls.borrow());
        let tls = tls.clone();
        let options = Arc::clone(&options);
        let routes = routes.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = handshake_with(tcp, remote_addr, &config, options.handshake_timeout).await;
            drop(handshake);
            drop(from_ip);
            let Some(stream) = stream else { return };
            let Some(info) = connection_info(&stream, remote_addr, &config, tls) else {
                return;
            };
            serve_connection(stream, info, routes, &options, phase).await;
        });
    }
}

/// The TLS handshakes in progress per remote IP address.
#[derive(Debug, Default)]
struct HandshakesPerIp(Mutex<HashMap<IpAddr, usize>>);

/// One handshake counted for its address, until dropped.
struct HandshakeFrom {
    counts: Arc<HandshakesPerIp>,
    ip: IpAddr,
}

impl HandshakesPerIp {
    /// Counts a handshake from `addr`, unless `max` are in progress from its IP already.
    fn enter(counts: &Arc<Self>, addr: SocketAddr, max: usize) -> Option<HandshakeFrom> {
        let mut map = counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(addr.ip()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(HandshakeFrom {
            counts: Arc::clone(counts),
            ip: addr.ip(),
        })
    }
}

impl Drop for HandshakeFrom {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The TLS handshake within `timeout`; failures are logged with their reason.
async fn handshake_with(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    config: &TlsConfig,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(Arc::clone(&config.server));
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::warn!(peer = %remote_addr, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(peer = %remote_addr, ?timeout, "TLS handshake timed out");
            None
        }
    }
}

/// The peer of a completed handshake. A resumed session's chain is verified again against
/// the current bundles (rustls restores it from the session without verifying).
fn connection_info(
    stream: &TlsStream<TcpStream>,
    remote_addr: SocketAddr,
    config: &TlsConfig,
    tls: watch::Receiver<Arc<TlsConfig>>,
) -> Option<ConnectionInfo> {
    let connection = stream.get_ref().1;
    let chain: Vec<CertificateDer<'static>> = connection
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    if chain.is_empty() {
        tracing::warn!(peer = %remote_addr, "TLS handshake completed without a client certificate; closing");
        return None;
    }
    if connection.handshake_kind() == Some(HandshakeKind::Resumed)
        && let Err(error) = config.trust.verify_chain(&chain, UnixTime::now())
    {
        tracing::warn!(peer = %remote_addr, %error, "resumed TLS session refused: its client certificate no longer verifies");
        return None;
    }
    let peer = Peer::new(chain, tls, config.trust.generation());
    if let Err(error) = peer.identity() {
        tracing::warn!(peer = %remote_addr, %error, "client certificate carries no usable identity");
    }
    Some(ConnectionInfo {
        remote_addr,
        peer: Arc::new(peer),
    })
}

/// Serves one connection until the peer leaves, its age and grace run out, or the listener
/// closes it.
async fn serve_connection(
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
    routes: Routes,
    options: &TransportOptions,
    mut phase: watch::Receiver<Phase>,
) {
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        let mut routes = routes.clone();
        async move {
            std::future::poll_fn(|cx| {
                tonic::codegen::Service::<http::Request<Incoming>>::poll_ready(&mut routes, cx)
            })
            .await?;
            routes.call(request).await
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .max_header_list_size(options.max_header_list_size);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let age = tokio::time::sleep(jittered(options.max_connection_age));
    tokio::pin!(age);
    // Armed when the connection is sent GOAWAY for its age.
    let cut_off =
        tokio::time::sleep_until(Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    tokio::pin!(cut_off);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = &mut age, if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
                cut_off.as_mut().reset(Instant::now() + options.max_connection_age_grace);
            }
            () = &mut cut_off => {
                tracing::debug!("closing a connection whose calls outlived its grace period");
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

/// `age` lengthened or shortened by up to 10 %, so connections opened together (after a
/// deploy or a network blip) do not all reconnect together.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(0.9 + 0.2 * fastrand::f64())
}
