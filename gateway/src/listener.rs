//! The accept loop every TCP front-end shares: connection limit, optional TLS handshake with a
//! timeout, one task and one tracing span per connection, graceful shutdown.

use mailgate_core::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use mailgate_core::io::BoxedIo as Conn;

/// One accepted connection as a front-end sees it.
pub struct Accepted {
    /// The stream (already decrypted when the listener does TLS).
    pub stream: Conn,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the listener did a TLS handshake.
    pub tls: bool,
    /// Fires when the gateway shuts down.
    pub shutdown: CancellationToken,
}

/// What every listener shares.
#[derive(Clone)]
pub struct ListenerContext {
    /// Metrics (connections).
    pub metrics: Arc<Metrics>,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Open connections allowed per listener.
    pub max_connections: usize,
    /// Open connections allowed per peer IP per listener.
    pub max_per_ip: usize,
    /// TLS handshake time limit.
    pub handshake_timeout: Duration,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Open connections per peer IP; a slot is released when its guard drops (connection closed).
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = self.0.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.0 .0.lock() {
            if let Some(n) = map.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.1);
                }
            }
        }
    }
}

/// Accept connections on `listener` until shutdown, running `handler` for each.
pub async fn serve<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: ListenerContext,
    handler: F,
) where
    F: Fn(Accepted) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(ctx.max_connections));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(protocol, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(protocol, %peer, "connection limit reached; closing connection");
            drop(tcp);
            continue;
        };
        let Some(ip_slot) = per_ip.acquire(peer.ip(), ctx.max_per_ip) else {
            tracing::warn!(protocol, %peer, "per-address connection limit reached; closing connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("conn", protocol, %peer, session);
        let (handler, tls, ctx2) = (handler.clone(), tls.clone(), ctx.clone());
        let is_tls = tls.is_some();
        ctx.tracker.spawn(
            async move {
                let _permit = (permit, ip_slot);
                let _open = ctx2.metrics.connection_opened(protocol);
                tracing::debug!("connected");
                let stream: Conn = match tls {
                    None => Box::new(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(ctx2.handshake_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("tls handshake timed out");
                                return;
                            }
                        }
                    }
                };
                handler(Accepted {
                    stream,
                    peer,
                    tls: is_tls,
                    shutdown: ctx2.shutdown.clone(),
                })
                .await;
                tracing::debug!("disconnected");
            }
            .instrument(span),
        );
    }
}
