//! Reading from the IMMP stream: bounded command lines and DATA payloads.

use base64::Engine;
use mailgate_core::budget::{MemoryBudget, Reservation};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest command line (the profile's 8 KiB).
pub const MAX_LINE: usize = 8 * 1024;

/// One framed line.
pub(crate) enum Line {
    Text(String),
    TooLong,
    Eof,
}

pub(crate) async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else {
                Line::TooLong
            });
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            buf.extend_from_slice(&chunk[..used]);
            if buf.len() > MAX_LINE + 2 {
                too_long = true;
                buf.clear();
            }
        }
        r.consume(used);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

/// Decode a payload: base64 (white space ignored) when asked, then gunzip when the session
/// compresses (at most `max` bytes come out of a gzip stream).
pub(crate) fn decode(
    payload: Vec<u8>,
    base64: bool,
    gzip: bool,
    max: usize,
) -> Result<Vec<u8>, String> {
    if !base64 {
        return Ok(payload);
    }
    let compact: Vec<u8> = payload
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| e.to_string())?;
    if !gzip {
        return Ok(raw);
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a gzip stream ({e})"))?;
    if out.len() > max {
        return Err(format!("decompresses to more than {max} bytes"));
    }
    Ok(out)
}

/// The options of one DATA command.
pub(crate) struct PartSpec {
    pub name: Option<String>,
    pub media_type: Option<String>,
    pub base64: bool,
    pub content: bool,
}

/// Why a DATA payload could not be taken.
pub(crate) enum PayloadError {
    Io,
    TooLarge,
    Unbounded,
    /// The body budget had no room: the payload was read and dropped (answer `750`).
    Busy,
}

/// A payload and the budget reservation that covers its bytes.
pub(crate) struct Payload {
    pub data: Vec<u8>,
    pub budget: Reservation,
}

/// Read a DATA payload: exactly `length` octets when LENGTH is given (a line end right after
/// them is optional: it is consumed when it is already there, and a later one is an empty
/// line the session skips), otherwise lines up to two consecutive blank lines (one blank line
/// inside the payload is kept). Memory is reserved in `budget` before bytes are kept; a
/// payload over `max`, or one the budget has no room for, is read and dropped to stay in sync,
/// up to twice `max`; beyond that the connection is closed.
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(
    io: &mut BufReader<R>,
    length: Option<u64>,
    max: usize,
    budget: &MemoryBudget,
) -> Result<Payload, PayloadError> {
    let hard = (max as u64).saturating_mul(2);
    let mut reservation = budget.start();
    match length {
        Some(n) if n > hard => Err(PayloadError::Unbounded),
        Some(n) if n > max as u64 => {
            discard(io, n).await?;
            Err(PayloadError::TooLarge)
        }
        Some(n) => {
            if reservation.grow_to(n as usize).await.is_err() {
                discard(io, n).await?;
                return Err(PayloadError::Busy);
            }
            let mut data = Vec::with_capacity(n as usize);
            (&mut *io)
                .take(n)
                .read_to_end(&mut data)
                .await
                .map_err(|_| PayloadError::Io)?;
            if (data.len() as u64) < n {
                return Err(PayloadError::Io);
            }
            match io.buffer() {
                [b'\n', ..] => io.consume(1),
                [b'\r', b'\n', ..] => io.consume(2),
                _ => {}
            }
            Ok(Payload {
                data,
                budget: reservation,
            })
        }
        None => {
            let mut data: Vec<u8> = Vec::new();
            let mut total = 0u64;
            let mut kept = true;
            let mut last_blank = false;
            let mut verdict = None;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = (&mut *io)
                    .take(MAX_LINE as u64 * 128)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|_| PayloadError::Io)?;
                if n == 0 {
                    return Err(PayloadError::Io);
                }
                total += n as u64;
                if total > hard {
                    return Err(PayloadError::Unbounded);
                }
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                let blank = line.is_empty();
                if blank && last_blank {
                    break;
                }
                if kept {
                    // A blank line is held back until the next line shows it is inside.
                    let pending = usize::from(last_blank) + usize::from(!data.is_empty());
                    let len = data.len() + pending + line.len();
                    if len > max {
                        kept = false;
                        verdict = Some(PayloadError::TooLarge);
                    } else if reservation.grow_to(len).await.is_err() {
                        kept = false;
                        verdict = Some(PayloadError::Busy);
                    } else if !blank {
                        if !data.is_empty() {
                            data.push(b'\n');
                        }
                        if last_blank {
                            data.push(b'\n');
                        }
                        data.extend_from_slice(&line);
                    }
                    if !kept {
                        data = Vec::new();
                    }
                }
                last_blank = blank;
            }
            match verdict {
                Some(e) => Err(e),
                None => Ok(Payload {
                    data,
                    budget: reservation,
                }),
            }
        }
    }
}

/// Read and drop `n` octets (in 64 KiB reads, which go past the line buffer).
async fn discard<R: AsyncRead + Unpin>(
    io: &mut BufReader<R>,
    mut n: u64,
) -> Result<(), PayloadError> {
    let mut scratch = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let got = io
            .read(&mut scratch[..want])
            .await
            .map_err(|_| PayloadError::Io)?;
        if got == 0 {
            return Err(PayloadError::Io);
        }
        n -= got as u64;
    }
    Ok(())
}

/// Read DATA payloads with (`Some`) or without LENGTH from `input` until it is used up, as the
/// session does, and decode each as base64 and gzip; for the fuzz target (never panics,
/// memory bounded by `max`).
pub fn fuzz_payloads(input: &[u8], length: Option<u64>, max: usize) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(r) => r,
        Err(_) => return,
    };
    runtime.block_on(async {
        let budget = MemoryBudget::new(max.saturating_mul(4), std::time::Duration::ZERO);
        let mut io = BufReader::new(input);
        for _ in 0..16 {
            match read_payload(&mut io, length, max, &budget).await {
                Ok(p) => {
                    assert!(p.data.len() <= max, "payload over the limit");
                    let _ = decode(p.data.clone(), true, false, max);
                    let _ = decode(p.data, true, true, max);
                }
                Err(PayloadError::Io | PayloadError::Unbounded) => break,
                Err(_) => {}
            }
        }
    });
}
