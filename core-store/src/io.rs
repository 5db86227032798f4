//! The byte-stream abstraction sessions and clients run over (plain TCP or TLS, boxed).

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed connection stream.
pub type BoxedIo = Box<dyn Io>;
