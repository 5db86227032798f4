//! An IMMP client: connect, upgrade to TLS, authenticate (shared secret or cookie), deliver,
//! check cookies. Used by the server for AUTH COOKIE call-backs, by the relay transport and by
//! tests.

use crate::auth;
use crate::codec::{encode, Command, CommandKind, TlsLevel};
use crate::envelope::{Envelope, ENVELOPE_PART, ENVELOPE_TYPE};
use mailgate_core::io::BoxedIo;
use mailgate_core::{Address, Importance, Part};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Time allowed for connecting and for each reply line.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Longest reply line read.
const MAX_REPLY_LINE: u64 = 1024 * 1024;

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network or TLS failure.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    /// No reply in time.
    #[error("timed out")]
    Timeout,
    /// The server answered something unexpected (its reply is the text).
    #[error("server replied: {0}")]
    Refused(String),
}

/// One reply: its code and its text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// Status code.
    pub code: u16,
    /// Text of each line.
    pub lines: Vec<String>,
}

impl ClientReply {
    fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

/// One IMMP connection, upgraded to TLS.
pub struct ImmpClient {
    rd: BufReader<ReadHalf<BoxedIo>>,
    wr: WriteHalf<BoxedIo>,
    server_domain: Option<String>,
}

async fn line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<String, ClientError> {
    use tokio::io::AsyncReadExt;
    let mut buf = String::new();
    let n = tokio::time::timeout(TIMEOUT, r.take(MAX_REPLY_LINE).read_line(&mut buf))
        .await
        .map_err(|_| ClientError::Timeout)??;
    if n == 0 {
        return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(buf.trim_end_matches(['\r', '\n']).to_owned())
}

/// Split `[pipeline: ]code[-] text` into (code, continues, text).
fn parse_reply_line(l: &str) -> Option<(u16, bool, String)> {
    let l = match l.split_once(": ") {
        Some((p, rest))
            if !p.contains(' ') && p.len() <= 16 && !p.starts_with(char::is_numeric) =>
        {
            rest
        }
        _ => l,
    };
    let code: u16 = l.get(..3)?.parse().ok()?;
    let rest = &l[3..];
    let (more, text) = match rest.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, rest),
    };
    Some((code, more, text.trim_start().to_owned()))
}

impl ImmpClient {
    /// Connect to `addr`, read the greeting and upgrade to TLS (`UPGRADE TLS`).
    pub async fn connect(
        addr: &str,
        connector: TlsConnector,
        name: ServerName<'static>,
    ) -> Result<Self, ClientError> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let mut plain = BufReader::new(tcp);
        let server_domain = loop {
            let l = line(&mut plain).await?;
            if let Some(params) = l.strip_prefix("101 ") {
                break params
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix("d="))
                    .map(str::to_owned);
            }
            if !l.starts_with("100") {
                return Err(ClientError::Refused(l));
            }
        };
        let upgrade = encode(&Command {
            pipeline: None,
            kind: CommandKind::Upgrade(TlsLevel::Tls),
        });
        plain
            .get_mut()
            .write_all(format!("{upgrade}\n").as_bytes())
            .await?;
        let reply = line(&mut plain).await?;
        if !reply.starts_with("204 ") {
            return Err(ClientError::Refused(reply));
        }
        let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, plain.into_inner()))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let boxed: BoxedIo = Box::new(tls);
        let (rd, wr) = tokio::io::split(boxed);
        Ok(ImmpClient {
            rd: BufReader::new(rd),
            wr,
            server_domain,
        })
    }

    /// The domain the server named in its greeting (`101 … d=<domain>`).
    pub fn server_domain(&self) -> Option<&str> {
        self.server_domain.as_deref()
    }

    /// Send one command (or raw bytes) as written.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.wr.write_all(bytes).await?;
        Ok(())
    }

    async fn send(&mut self, kind: CommandKind) -> Result<(), ClientError> {
        let text = encode(&Command {
            pipeline: None,
            kind,
        });
        self.send_raw(format!("{text}\n").as_bytes()).await
    }

    /// Read the next complete reply (live `150` push lines are skipped).
    pub async fn reply(&mut self) -> Result<ClientReply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let l = line(&mut self.rd).await?;
            let Some((code, more, text)) = parse_reply_line(&l) else {
                return Err(ClientError::Refused(l));
            };
            if code == 150 {
                continue;
            }
            lines.push(text);
            if !more {
                return Ok(ClientReply { code, lines });
            }
        }
    }

    async fn expect(&mut self, code: u16) -> Result<ClientReply, ClientError> {
        let r = self.reply().await?;
        if r.code == code {
            Ok(r)
        } else {
            Err(ClientError::Refused(r.text()))
        }
    }

    /// AUTH SECRET / AUTH RESPONSE with the account's password.
    pub async fn auth_secret(
        &mut self,
        account: &Address,
        password: &str,
    ) -> Result<(), ClientError> {
        self.send(CommandKind::AuthSecret {
            account: account.to_string(),
            device: None,
        })
        .await?;
        self.expect(302).await?;
        let nonces = self.expect(303).await?;
        let text = nonces.lines.join(" ");
        let (n1, n2) = text
            .strip_prefix("n1=")
            .and_then(|r| r.split_once(" n2="))
            .ok_or_else(|| ClientError::Refused(text.clone()))?;
        let h = auth::derive_h(account, password);
        self.send(CommandKind::AuthResponse(auth::response(&h, n1, n2)))
            .await?;
        self.expect(210).await.map(|_| ())
    }

    /// AUTH COOKIE: authenticate as the server of `domain` with a cookie it issued.
    pub async fn auth_cookie(&mut self, cookie: &str, domain: &str) -> Result<(), ClientError> {
        self.send(CommandKind::AuthCookie {
            cookie: cookie.to_owned(),
            domain: domain.to_owned(),
        })
        .await?;
        self.expect(301).await?;
        self.expect(210).await.map(|_| ())
    }

    /// COOKIE CHECK: did this server issue `cookie` for `domain`?
    pub async fn cookie_check(&mut self, cookie: &str, domain: &str) -> Result<bool, ClientError> {
        self.send(CommandKind::CookieCheck {
            cookie: cookie.to_owned(),
            domain: domain.to_owned(),
        })
        .await?;
        Ok(self.reply().await?.code == 211)
    }

    /// DELIVER TO / DATA… / DONE; returns the message id the server gave.
    pub async fn deliver(
        &mut self,
        recipients: &[Address],
        subject: &str,
        parts: &[Part],
        importance: Importance,
    ) -> Result<String, ClientError> {
        self.deliver_with(recipients, subject, parts, importance, None)
            .await
    }

    /// [`ImmpClient::deliver`] with a relay envelope (server to server, after AUTH COOKIE).
    pub async fn deliver_with(
        &mut self,
        recipients: &[Address],
        subject: &str,
        parts: &[Part],
        importance: Importance,
        envelope: Option<&Envelope>,
    ) -> Result<String, ClientError> {
        self.send(CommandKind::DeliverTo {
            recipients: recipients.iter().map(ToString::to_string).collect(),
            important: match importance {
                Importance::High => Some(true),
                Importance::Low => Some(false),
                Importance::Normal => None,
            },
            multipart: parts.len() > 1,
        })
        .await?;
        self.expect(270).await?;
        if !subject.is_empty() {
            // A part named "subject" without a TYPE is the subject (see the profile).
            self.data_block(Some("subject".into()), None, false, subject.as_bytes())
                .await?;
        }
        for p in parts {
            self.data_block(
                Some(p.name.clone()),
                Some(p.media_type.clone()),
                p.content,
                &p.data,
            )
            .await?;
        }
        if let Some(env) = envelope {
            let json =
                serde_json::to_vec(env).map_err(|e| ClientError::Io(std::io::Error::other(e)))?;
            self.data_block(
                Some(ENVELOPE_PART.into()),
                Some(ENVELOPE_TYPE.into()),
                false,
                &json,
            )
            .await?;
        }
        self.send(CommandKind::Done).await?;
        let accepted = self.expect(273).await?;
        let text = accepted.lines.join(" ");
        Ok(text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// One DATA block with an exact LENGTH; waits for 271 and 272.
    async fn data_block(
        &mut self,
        name: Option<String>,
        media_type: Option<String>,
        content: bool,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.send(CommandKind::Data {
            name,
            media_type,
            length: Some(data.len() as u64),
            base64: false,
            content,
        })
        .await?;
        self.wr.write_all(data).await?;
        self.wr.write_all(b"\n").await?;
        self.expect(271).await?;
        self.expect(272).await.map(|_| ())
    }

    /// `SUBSCRIBE TO <node> FOR <who>` as a remotely authenticated server; returns the title.
    pub async fn subscribe_for(
        &mut self,
        node: &Address,
        who: &Address,
    ) -> Result<String, ClientError> {
        self.send(CommandKind::Subscribe {
            node: node.to_string(),
            on_behalf: Some(who.to_string()),
        })
        .await?;
        self.expect(380).await?;
        let done = self.expect(280).await?;
        let text = done.lines.join(" ");
        Ok(text
            .strip_prefix("Subscribed to: ")
            .unwrap_or(&text)
            .to_owned())
    }

    /// `PUSH TO <to> FROM <node>` with one DATA block.
    pub async fn push(
        &mut self,
        to: &Address,
        node: &Address,
        part: &Part,
        importance: Importance,
    ) -> Result<(), ClientError> {
        self.send(CommandKind::Push {
            to: to.to_string(),
            from: node.to_string(),
            important: importance == Importance::High,
        })
        .await?;
        self.expect(275).await?;
        self.send(CommandKind::Data {
            name: Some(part.name.clone()),
            media_type: Some(part.media_type.clone()),
            length: Some(part.data.len() as u64),
            base64: false,
            content: true,
        })
        .await?;
        self.wr.write_all(&part.data).await?;
        self.wr.write_all(b"\n").await?;
        self.expect(271).await?;
        self.expect(274).await.map(|_| ())
    }

    /// QUIT.
    pub async fn quit(mut self) {
        let _ = self.send(CommandKind::Quit).await;
        let _ = self.reply().await;
    }
}

/// The cause is shown in the message, not again as a source: `{:#}` prints it once.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line("250- {x}"),
            Some((250, true, "{x}".into()))
        );
        assert_eq!(
            parse_reply_line("f9ca: 250 3 messages"),
            Some((250, false, "3 messages".into()))
        );
        assert_eq!(
            parse_reply_line("273 id Message accepted"),
            Some((273, false, "id Message accepted".into()))
        );
        assert_eq!(parse_reply_line("garbage"), None);
    }
}
