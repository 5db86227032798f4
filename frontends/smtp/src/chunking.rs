//! CHUNKING (RFC 3030): a message sent as `BDAT` chunks of declared length, with no
//! dot-stuffing and no end-of-data line. Every chunk's octets are read, whatever the reply:
//! they cannot be told apart from commands otherwise.

use crate::session::Data;
use mailgate_core::budget::{MemoryBudget, Reservation};
use mailgate_core::io::BoxedIo;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The chunks of the message under way, as `BDAT` commands bring them.
pub(crate) struct Chunks {
    data: Vec<u8>,
    reservation: Reservation,
    /// Why the message is refused, once it is (the rest of it is read and dropped).
    refused: Option<Data>,
}

impl Chunks {
    /// No chunk yet; the bytes kept will be reserved in `budget`.
    pub(crate) fn new(budget: &MemoryBudget) -> Self {
        Chunks {
            data: Vec::new(),
            reservation: budget.start(),
            refused: None,
        }
    }

    /// Read the next chunk of `size` octets, keeping it while the message stays within `max`
    /// octets and the memory budget. Bytes are reserved as they arrive, so a peer that
    /// announces a large chunk and sends nothing holds nothing. An error means the connection
    /// failed or closed.
    pub(crate) async fn read(
        &mut self,
        io: &mut BufReader<BoxedIo>,
        size: u64,
        max: usize,
    ) -> std::io::Result<()> {
        let fits = usize::try_from(size).is_ok_and(|n| self.data.len().saturating_add(n) <= max);
        if !fits && self.refused.is_none() {
            self.refuse(Data::TooLarge);
        }
        let mut left = size;
        while left > 0 {
            let buf = filled(io).await?;
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            if self.refused.is_none() {
                if self
                    .reservation
                    .grow_to(self.data.len() + take)
                    .await
                    .is_ok()
                {
                    self.data.extend_from_slice(&buf[..take]);
                } else {
                    self.refuse(Data::Busy);
                }
            }
            io.consume(take);
            left -= take as u64;
        }
        Ok(())
    }

    /// Why the message is refused, when it is (after any chunk).
    pub(crate) fn refused(&self) -> Option<&Data> {
        self.refused.as_ref()
    }

    /// The whole message after `BDAT … LAST`. Lines must end with CRLF as in `DATA`: this
    /// server does not offer BINARYMIME, so a bare LF is refused the same way.
    pub(crate) fn finish(self) -> Data {
        if let Some(refused) = self.refused {
            return refused;
        }
        let bare_lf = self
            .data
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || self.data[i - 1] != b'\r'));
        if bare_lf {
            Data::BareLf
        } else {
            Data::Message(self.data, self.reservation)
        }
    }

    fn refuse(&mut self, why: Data) {
        self.refused = Some(why);
        self.data = Vec::new();
    }
}

/// Read and drop a chunk of `size` octets (a `BDAT` refused before its octets).
pub(crate) async fn skip(io: &mut BufReader<BoxedIo>, size: u64) -> std::io::Result<()> {
    let mut left = size;
    while left > 0 {
        let take = filled(io)
            .await?
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        io.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// The reader's next bytes; an error when the peer closed the connection.
async fn filled(io: &mut BufReader<BoxedIo>) -> std::io::Result<&[u8]> {
    let buf = io.fill_buf().await?;
    if buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed in a BDAT chunk",
        ));
    }
    Ok(buf)
}
