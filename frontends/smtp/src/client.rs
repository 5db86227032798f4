//! An SMTP client: greeting, EHLO (HELO when refused), STARTTLS, and transactions pipelined
//! when the server offers PIPELINING (MAIL, RCPT…, DATA sent together, RFC 2920), the message
//! dot-stuffed. Used by the relay transport and by `mailgate bench smtp`. Every reply line is
//! bounded and every reply waited for with a time limit: the server may be a stranger's.

use mailgate_core::io::BoxedIo;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;

/// The longest reply line taken (RFC 5321 §4.5.3.1.5 says 512 octets; some servers send more).
const MAX_REPLY_LINE: u64 = 4096;
/// The most lines one reply may have (EHLO's keywords).
const MAX_REPLY_LINES: usize = 100;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(std::io::Error),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A reply that is not SMTP.
    #[error("malformed reply: {0:?}")]
    Malformed(String),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
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

impl ClientError {
    /// Is this a permanent refusal (a `5xx` reply)? Everything else may work later.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Refused { code, .. } if (500..600).contains(code))
    }
}

/// One SMTP connection after EHLO.
pub struct SmtpClient {
    io: BufReader<BoxedIo>,
    timeout: Duration,
    helo: String,
    /// The EHLO keywords (upper case, with their parameters), empty after HELO.
    extensions: Vec<String>,
}

impl SmtpClient {
    /// Connect to `addr`, read the greeting and say EHLO as `helo`.
    pub async fn connect(addr: &str, helo: &str) -> Result<SmtpClient, ClientError> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        SmtpClient::start(Box::new(tcp), helo, Duration::from_secs(60)).await
    }

    /// Read the greeting on `io` and say EHLO as `helo` (HELO when EHLO is refused); every
    /// reply is waited for at most `timeout`.
    pub async fn start(
        io: BoxedIo,
        helo: &str,
        timeout: Duration,
    ) -> Result<SmtpClient, ClientError> {
        let mut c = SmtpClient {
            io: BufReader::new(io),
            timeout,
            helo: helo.to_owned(),
            extensions: Vec::new(),
        };
        c.expect("greeting", 220).await?;
        c.hello().await?;
        Ok(c)
    }

    async fn hello(&mut self) -> Result<(), ClientError> {
        self.write(format!("EHLO {}\r\n", self.helo).as_bytes())
            .await?;
        let (code, lines) = self.reply().await?;
        if code == 250 {
            self.extensions = lines
                .iter()
                .skip(1)
                .map(|l| l.to_ascii_uppercase())
                .collect();
            return Ok(());
        }
        // A server that knows no ESMTP: plain HELO, no extensions.
        self.write(format!("HELO {}\r\n", self.helo).as_bytes())
            .await?;
        self.extensions.clear();
        self.expect("HELO", 250).await
    }

    /// Does the server offer `keyword` (`STARTTLS`, `PIPELINING`, …)?
    pub fn offers(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| {
            e.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The server's `SIZE` limit, when it announces one.
    pub fn size_limit(&self) -> Option<u64> {
        self.extensions.iter().find_map(|e| {
            let mut words = e.split_ascii_whitespace();
            (words.next() == Some("SIZE"))
                .then(|| words.next()?.parse().ok())
                .flatten()
                .filter(|n| *n > 0)
        })
    }

    /// STARTTLS, the handshake with `connector` for `name`, and EHLO again (RFC 3207).
    pub async fn starttls(
        mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> Result<SmtpClient, ClientError> {
        self.write(b"STARTTLS\r\n").await?;
        self.expect("STARTTLS", 220).await?;
        // Anything the server sent ahead of the handshake is an injection attempt.
        if !self.io.buffer().is_empty() {
            return Err(ClientError::Malformed("data after 220 to STARTTLS".into()));
        }
        let tcp = self.io.into_inner();
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut c = SmtpClient {
            io: BufReader::new(Box::new(tls)),
            timeout: self.timeout,
            helo: self.helo,
            extensions: Vec::new(),
        };
        c.hello().await?;
        Ok(c)
    }

    /// One transaction: `from` (empty: the null reverse-path) to every one of `to`, with
    /// `params` after MAIL FROM (`BODY=8BITMIME`, `SMTPUTF8`, `SIZE=n`); pipelined when the
    /// server offers it. `Ok` once the server accepted the message (`250` after the dot).
    pub async fn send_with(
        &mut self,
        from: &str,
        params: &str,
        to: &[&str],
        message: &[u8],
    ) -> Result<(), ClientError> {
        let mail = format!("MAIL FROM:<{from}>{params}\r\n");
        let rcpts: Vec<String> = to.iter().map(|t| format!("RCPT TO:<{t}>\r\n")).collect();
        if self.offers("PIPELINING") {
            let mut head = mail;
            for r in &rcpts {
                head.push_str(r);
            }
            head.push_str("DATA\r\n");
            self.write(head.as_bytes()).await?;
            // Every reply is read, so a refusal leaves the connection in step.
            let mail = self.expect("MAIL", 250).await;
            let mut rcpt = Ok(());
            for _ in to {
                let r = self.expect("RCPT", 250).await;
                if rcpt.is_ok() {
                    rcpt = r;
                }
            }
            let data = self.expect("DATA", 354).await;
            match (mail, rcpt, data) {
                (Ok(()), Ok(()), Ok(())) => {}
                (mail, rcpt, data) => {
                    if data.is_ok() {
                        // The server wants a message after all: end it empty, so nothing is sent.
                        self.write(b".\r\n").await?;
                        let _ = self.expect("message", 250).await;
                    }
                    mail?;
                    rcpt?;
                    return data;
                }
            }
        } else {
            self.write(mail.as_bytes()).await?;
            self.expect("MAIL", 250).await?;
            for r in &rcpts {
                self.write(r.as_bytes()).await?;
                self.expect("RCPT", 250).await?;
            }
            self.write(b"DATA\r\n").await?;
            self.expect("DATA", 354).await?;
        }
        self.write(&dot_stuffed(message)).await?;
        self.expect("message", 250).await
    }

    /// [`SmtpClient::send_with`] without parameters.
    pub async fn send(
        &mut self,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> Result<(), ClientError> {
        self.send_with(from, "", to, message).await
    }

    /// Say QUIT and wait (briefly) for the answer.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.reply()).await;
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let io = self.io.get_mut();
        tokio::time::timeout(self.timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout(self.timeout))?
        .map_err(ClientError::Io)
    }

    async fn expect(&mut self, step: &'static str, code: u16) -> Result<(), ClientError> {
        let (got, lines) = self.reply().await?;
        if got == code {
            Ok(())
        } else {
            Err(ClientError::Refused {
                step,
                code: got,
                text: lines.join(" / "),
            })
        }
    }

    /// One (multi-line) reply, within the time limit: its code and its lines' texts.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), ClientError> {
        tokio::time::timeout(self.timeout, self.read_reply())
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn read_reply(&mut self) -> Result<(u16, Vec<String>), ClientError> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.io)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut raw)
                .await?;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if raw.last() != Some(&b'\n') {
                return Err(ClientError::Malformed("reply line too long".into()));
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ClientError::Malformed(line.chars().take(80).collect()))?;
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, lines));
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(ClientError::Malformed("reply has too many lines".into()));
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

/// The cause is shown in the message, not again as a source: `{:#}` prints it once.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
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
