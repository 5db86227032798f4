//! The byte-stream abstraction sessions and clients run over (plain TCP or TLS, boxed).

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed connection stream.
pub type BoxedIo = Box<dyn Io>;

/// A stream whose first byte was read already (to wait for a request without a buffer): it is
/// read again first.
pub struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `first` put back in front of it.
    pub fn new(first: u8, inner: S) -> Self {
        Prefixed {
            first: Some(first),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(b) = self.first.take() {
                buf.put_slice(&[b]);
                return std::task::Poll::Ready(Ok(()));
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call (a monotonic clock cheap enough to read per request).
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What the accept loop knows about one open connection: whether it authenticated and when it
/// was last active. A full listener makes room by closing the unauthenticated connection idle
/// the longest; sessions report activity with [`ConnState::touch`] and a login with
/// [`ConnState::set_authenticated`].
#[derive(Debug)]
pub struct ConnState {
    authenticated: AtomicBool,
    last_active: AtomicU64,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            authenticated: AtomicBool::new(false),
            last_active: AtomicU64::new(clock_ms()),
        }
    }
}

impl ConnState {
    /// A request or line arrived.
    pub fn touch(&self) {
        self.last_active.store(clock_ms(), Ordering::Relaxed);
    }

    /// The peer logged in (a local account, or a server proven by cookie).
    pub fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// Whether the peer logged in.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Milliseconds since the last activity.
    pub fn idle_ms(&self) -> u64 {
        clock_ms().saturating_sub(self.last_active.load(Ordering::Relaxed))
    }
}
