//! Reading from the IMMP stream: bounded command lines and DATA payloads.

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

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
    LengthMismatch,
}

/// Read a DATA payload: exactly `length` octets followed by a line end, or (without LENGTH)
/// lines up to two consecutive blank lines. Oversized payloads are read and discarded to stay in
/// sync, up to twice the limit; beyond that the connection is closed.
pub(crate) async fn read_payload<R: AsyncBufReadExt + Unpin>(
    io: &mut R,
    length: Option<u64>,
    max: usize,
) -> Result<Vec<u8>, PayloadError> {
    let hard = (max as u64).saturating_mul(2);
    match length {
        Some(n) if n > hard => Err(PayloadError::Unbounded),
        Some(n) => {
            let mut data = Vec::with_capacity(n.min(max as u64) as usize);
            (&mut *io)
                .take(n)
                .read_to_end(&mut data)
                .await
                .map_err(|_| PayloadError::Io)?;
            if (data.len() as u64) < n {
                return Err(PayloadError::Io);
            }
            // The payload must end where LENGTH says: next comes a line end.
            let next = io.fill_buf().await.map_err(|_| PayloadError::Io)?;
            match next.first() {
                Some(b'\n') => io.consume(1),
                Some(b'\r') if next.get(1) == Some(&b'\n') => io.consume(2),
                None => {}
                Some(_) => {
                    // Discard the rest of that line so the session stays in sync.
                    let _ = read_line(io).await;
                    return Err(PayloadError::LengthMismatch);
                }
            }
            if data.len() > max {
                return Err(PayloadError::TooLarge);
            }
            Ok(data)
        }
        None => {
            let mut lines: Vec<Vec<u8>> = Vec::new();
            let mut total = 0usize;
            loop {
                let mut line = Vec::new();
                let n = (&mut *io)
                    .take(MAX_LINE as u64 * 128)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|_| PayloadError::Io)?;
                if n == 0 {
                    return Err(PayloadError::Io);
                }
                total += n;
                if total as u64 > hard {
                    return Err(PayloadError::Unbounded);
                }
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.is_empty() && lines.last().is_some_and(Vec::is_empty) {
                    lines.pop();
                    break;
                }
                lines.push(line);
            }
            let data = lines.join(&b'\n');
            if data.len() > max {
                return Err(PayloadError::TooLarge);
            }
            Ok(data)
        }
    }
}
