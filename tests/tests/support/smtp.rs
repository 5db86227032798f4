//! A bare SMTP client for tests: raw lines out, whole (multi-line) replies in, optional
//! STARTTLS. It sends exactly what a test writes, so tests can pipeline and misbehave.

use mailgate_core::io::BoxedIo;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One SMTP connection.
pub struct Smtp {
    io: BufReader<BoxedIo>,
}

/// One reply: its code and its lines' texts.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// Every line's text, joined (for `contains`).
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl Smtp {
    /// Connect and read the greeting.
    pub async fn connect(addr: &str) -> (Smtp, Reply) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = Smtp {
            io: BufReader::new(Box::new(tcp)),
        };
        let greeting = s.reply().await;
        (s, greeting)
    }

    /// Connect with implicit TLS (the submissions port), verifying with `connector`, and read
    /// the greeting.
    pub async fn connect_tls(
        addr: &str,
        connector: (
            tokio_rustls::TlsConnector,
            rustls::pki_types::ServerName<'static>,
        ),
    ) -> (Smtp, Reply) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector.0.connect(connector.1, tcp).await.unwrap();
        let mut s = Smtp {
            io: BufReader::new(Box::new(tls)),
        };
        let greeting = s.reply().await;
        (s, greeting)
    }

    /// Write raw bytes (several commands at once for pipelining).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// Write raw bytes; false when the server has closed the connection.
    pub async fn try_write(&mut self, bytes: &[u8]) -> bool {
        self.io.get_mut().write_all(bytes).await.is_ok() && self.io.get_mut().flush().await.is_ok()
    }

    /// Send one command line and read its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Read one reply (all its lines), waiting at most 10 s.
    pub async fn reply(&mut self) -> Reply {
        tokio::time::timeout(Duration::from_secs(10), self.read_reply())
            .await
            .expect("a reply within 10 s")
            .expect("a well-formed reply")
    }

    /// Read one reply, `None` when the server closed the connection.
    pub async fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line.get(..3)?.parse().ok()?;
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(Reply { code, lines });
            }
        }
    }

    /// `STARTTLS`, then the handshake, verifying with `connector`.
    pub async fn starttls(
        self,
        connector: (
            tokio_rustls::TlsConnector,
            rustls::pki_types::ServerName<'static>,
        ),
    ) -> Smtp {
        let mut s = self;
        let r = s.cmd("STARTTLS").await;
        assert_eq!(r.code, 220, "{r:?}");
        let tcp = s.io.into_inner();
        let tls = connector.0.connect(connector.1, tcp).await.unwrap();
        Smtp {
            io: BufReader::new(Box::new(tls)),
        }
    }

    /// A whole transaction: MAIL, each RCPT, DATA with `message` (dot-stuffed here), and the
    /// final reply.
    pub async fn send(&mut self, from: &str, to: &[&str], message: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(r.code, 250, "MAIL: {r:?}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            assert_eq!(r.code, 250, "RCPT {t}: {r:?}");
        }
        let r = self.cmd("DATA").await;
        assert_eq!(r.code, 354, "DATA: {r:?}");
        let mut data = String::new();
        for line in message.split("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.write(data.as_bytes()).await;
        self.reply().await
    }
}
