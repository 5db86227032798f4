//! A small SMTP client: EHLO, then pipelined transactions (MAIL, RCPT…, DATA sent together,
//! RFC 2920), the message dot-stuffed. Used by `mailgate bench smtp`.

use mailgate_core::io::BoxedIo;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A reply that is not SMTP.
    #[error("malformed reply: {0:?}")]
    Malformed(String),
    /// The server refused a step.
    #[error("{step} refused: {code} {text}")]
    Refused {
        /// Which command.
        step: &'static str,
        /// Its reply code.
        code: u16,
        /// Its reply text.
        text: String,
    },
}

/// One SMTP connection after EHLO.
pub struct SmtpClient {
    io: BufReader<BoxedIo>,
    timeout: Duration,
}

impl SmtpClient {
    /// Connect to `addr`, read the greeting and say EHLO as `helo`.
    pub async fn connect(addr: &str, helo: &str) -> Result<SmtpClient, ClientError> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut c = SmtpClient {
            io: BufReader::new(Box::new(tcp)),
            timeout: Duration::from_secs(60),
        };
        c.expect("greeting", 220).await?;
        c.io.get_mut()
            .write_all(format!("EHLO {helo}\r\n").as_bytes())
            .await?;
        c.io.get_mut().flush().await?;
        c.expect("EHLO", 250).await?;
        Ok(c)
    }

    /// One transaction, pipelined; `Ok` once the server accepted the message (`250`).
    pub async fn send(
        &mut self,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> Result<(), ClientError> {
        let mut head = format!("MAIL FROM:<{from}>\r\n");
        for t in to {
            head.push_str(&format!("RCPT TO:<{t}>\r\n"));
        }
        head.push_str("DATA\r\n");
        self.io.get_mut().write_all(head.as_bytes()).await?;
        self.io.get_mut().flush().await?;
        self.expect("MAIL", 250).await?;
        for _ in to {
            self.expect("RCPT", 250).await?;
        }
        self.expect("DATA", 354).await?;
        self.io.get_mut().write_all(&dot_stuffed(message)).await?;
        self.io.get_mut().flush().await?;
        self.expect("message", 250).await
    }

    async fn expect(&mut self, step: &'static str, code: u16) -> Result<(), ClientError> {
        let (got, text) = tokio::time::timeout(self.timeout, self.reply())
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        if got == code {
            Ok(())
        } else {
            Err(ClientError::Refused {
                step,
                code: got,
                text,
            })
        }
    }

    /// One (multi-line) reply: its code and its last line's text.
    async fn reply(&mut self) -> Result<(u16, String), ClientError> {
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await? == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| ClientError::Malformed(line.to_owned()))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line.get(4..).unwrap_or_default().to_owned()));
            }
        }
    }
}

/// `message` as a data block: CRLF line ends, leading dots doubled, the final dot line.
pub fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let text = message.strip_suffix(b"\r\n").unwrap_or(message);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_blocks_are_dot_stuffed_and_terminated() {
        assert_eq!(
            super::dot_stuffed(b"a\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n".to_vec()
        );
    }
}
