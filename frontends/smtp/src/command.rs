//! SMTP commands (RFC 5321 §4.1), parsed once from a line into typed values.

use mailgate_core::Address;

/// Longest command line accepted, CRLF included. RFC 5321 §4.5.3.1.4 sets 512; extensions'
/// parameters (SMTPUTF8 addresses, SIZE, BODY) make longer ones legitimate.
pub const MAX_COMMAND_LINE: usize = 2048;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]`; `None` is the null path `<>`.
    Mail {
        /// The reverse path.
        from: Option<Address>,
        /// Its parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path>`.
    Rcpt(Address),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030 CHUNKING): exactly `size` octets of the message follow.
    Bdat {
        /// The chunk's length in octets.
        size: u64,
        /// Whether this chunk ends the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN string`.
    Expn,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism.
        mechanism: Mechanism,
        /// The initial response, still base64 (`=` for an empty one).
        initial: Option<String>,
    },
}

/// The SASL mechanisms of submission (both send the password in the clear, so only over TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): `authzid NUL authcid NUL password`.
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login): user name, then password.
    Login,
}

/// `MAIL FROM` parameters this server knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the size the client declares.
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (RFC 6152).
    pub eight_bit: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub utf8: bool,
}

/// Why a line is not a command this server accepts; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb (500 5.5.1).
    Unknown,
    /// An AUTH mechanism this server does not offer (504 5.5.4).
    UnknownMechanism,
    /// Known verb, wrong arguments (501 5.5.4).
    Syntax(&'static str),
    /// An address that does not parse (501 5.1.3 / 553).
    BadAddress,
    /// A parameter this server does not implement (555 5.5.4).
    UnknownParameter(String),
    /// A `BDAT` whose chunk size cannot be read: the octets that follow cannot be told from
    /// commands, so the session must end (501 5.5.4, then close).
    BadChunk,
}

/// Parse one command line (without its CRLF).
pub fn parse(line: &str) -> Result<Command, CommandError> {
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.trim().is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax("this command takes no arguments"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.trim();
            if domain.is_empty() || domain.contains(' ') {
                return Err(CommandError::Syntax("EHLO and HELO need one domain"));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain.to_owned())
            } else {
                Command::Helo(domain.to_owned())
            })
        }
        "MAIL" => {
            let rest = strip_keyword(rest, "FROM:")
                .ok_or(CommandError::Syntax("use MAIL FROM:<address>"))?;
            let (path, params) = split_path(rest)?;
            let from = if path.is_empty() {
                None
            } else {
                Some(parse_path(path)?)
            };
            Ok(Command::Mail {
                from,
                params: mail_params(params)?,
            })
        }
        "RCPT" => {
            let rest =
                strip_keyword(rest, "TO:").ok_or(CommandError::Syntax("use RCPT TO:<address>"))?;
            let (path, params) = split_path(rest)?;
            if let Some(p) = params.split_whitespace().next() {
                return Err(CommandError::UnknownParameter(p.to_owned()));
            }
            if path.is_empty() {
                return Err(CommandError::BadAddress);
            }
            Ok(Command::Rcpt(parse_path(path)?))
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => {
            let mut words = rest.split(' ');
            let size = words
                .next()
                .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|w| w.parse().ok())
                .ok_or(CommandError::BadChunk)?;
            let last = match (words.next(), words.next()) {
                (None, _) => false,
                (Some(w), None) if w.eq_ignore_ascii_case("LAST") => true,
                _ => return Err(CommandError::BadChunk),
            };
            Ok(Command::Bdat { size, last })
        }
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if !rest.trim().is_empty() => Ok(Command::Vrfy),
        "EXPN" if !rest.trim().is_empty() => Ok(Command::Expn),
        "VRFY" | "EXPN" => Err(CommandError::Syntax("VRFY and EXPN need an argument")),
        "AUTH" => {
            let mut words = rest.split_ascii_whitespace();
            let mechanism = match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("PLAIN") => Mechanism::Plain,
                Some("LOGIN") => Mechanism::Login,
                Some(_) => return Err(CommandError::UnknownMechanism),
                None => {
                    return Err(CommandError::Syntax(
                        "use AUTH mechanism [initial-response]",
                    ))
                }
            };
            let initial = words.next().map(str::to_owned);
            if words.next().is_some() {
                return Err(CommandError::Syntax(
                    "use AUTH mechanism [initial-response]",
                ));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(CommandError::Unknown),
    }
}

/// `FROM:` / `TO:` (any case), with the space some clients put after the colon.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest[keyword.len()..].trim_start())
}

/// `<path> params` → the path inside the brackets, and the parameter text.
fn split_path(rest: &str) -> Result<(&str, &str), CommandError> {
    let inner = rest
        .strip_prefix('<')
        .ok_or(CommandError::Syntax("the address goes in angle brackets"))?;
    let end = inner
        .find('>')
        .ok_or(CommandError::Syntax("the address goes in angle brackets"))?;
    let (path, params) = (&inner[..end], &inner[end + 1..]);
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(CommandError::Syntax(
            "a space goes between address and parameters",
        ));
    }
    Ok((path, params.trim()))
}

/// A mailbox, with an RFC 5321 source route (`@a,@b:user@d`) dropped as §3.3 allows.
fn parse_path(path: &str) -> Result<Address, CommandError> {
    let mailbox = match path.strip_prefix('@') {
        Some(route) => route
            .split_once(':')
            .map(|(_, m)| m)
            .ok_or(CommandError::BadAddress)?,
        None => path,
    };
    // `Postmaster` alone (RFC 5321 §4.5.1) has no domain: the caller resolves it.
    if mailbox.eq_ignore_ascii_case("postmaster") {
        return Address::new("postmaster", "localhost").map_err(|_| CommandError::BadAddress);
    }
    if !mailbox.contains('@') || mailbox.starts_with('"') {
        // Quoted local parts are valid SMTP but no account of this server has one.
        return Err(CommandError::BadAddress);
    }
    // A domain in Unicode (SMTPUTF8) is looked up, and kept, as its A-labels.
    let (local, domain) = mailbox.rsplit_once('@').ok_or(CommandError::BadAddress)?;
    let domain = if domain.is_ascii() {
        std::borrow::Cow::Borrowed(domain)
    } else {
        std::borrow::Cow::Owned(
            idna::domain_to_ascii(domain).map_err(|_| CommandError::BadAddress)?,
        )
    };
    Address::parse_mailbox(&format!("{local}@{domain}")).map_err(|_| CommandError::BadAddress)
}

fn mail_params(params: &str) -> Result<MailParams, CommandError> {
    let mut out = MailParams::default();
    for p in params.split_whitespace() {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                out.size = Some(
                    v.parse()
                        .map_err(|_| CommandError::Syntax("SIZE takes a number"))?,
                )
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => out.eight_bit = true,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {}
            ("SMTPUTF8", None) => out.utf8 = true,
            _ => return Err(CommandError::UnknownParameter(p.to_owned())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_and_rcpt_parse_paths_and_parameters() {
        let c = parse("mail from:<alice@b.test> SIZE=100 BODY=8BITMIME").unwrap();
        assert_eq!(
            c,
            Command::Mail {
                from: Some(Address::parse_imid("alice@b.test").unwrap()),
                params: MailParams {
                    size: Some(100),
                    eight_bit: true,
                    utf8: false
                }
            }
        );
        assert_eq!(
            parse("MAIL FROM:<>").unwrap(),
            Command::Mail {
                from: None,
                params: MailParams::default()
            }
        );
        assert_eq!(
            parse("RCPT TO: <@relay.test:bob@a.test>").unwrap(),
            Command::Rcpt(Address::parse_imid("bob@a.test").unwrap())
        );
        assert_eq!(
            parse("RCPT TO:bob@a.test"),
            Err(CommandError::Syntax("the address goes in angle brackets"))
        );
        assert_eq!(parse("RCPT TO:<bob>"), Err(CommandError::BadAddress));
        assert!(matches!(
            parse("MAIL FROM:<a@b.test> FOO=1"),
            Err(CommandError::UnknownParameter(_))
        ));
        assert_eq!(
            parse("DATA x"),
            Err(CommandError::Syntax("this command takes no arguments"))
        );
        assert_eq!(
            parse("ehlo client.test").unwrap(),
            Command::Ehlo("client.test".into())
        );
        assert!(parse("EHLO").is_err());
    }

    #[test]
    fn bdat_needs_a_size_and_at_most_last() {
        assert_eq!(
            parse("BDAT 10").unwrap(),
            Command::Bdat {
                size: 10,
                last: false
            }
        );
        assert_eq!(
            parse("bdat 0 last").unwrap(),
            Command::Bdat {
                size: 0,
                last: true
            }
        );
        for bad in [
            "BDAT",
            "BDAT ",
            "BDAT x",
            "BDAT -1",
            "BDAT +1",
            "BDAT 1  LAST",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999999",
        ] {
            assert_eq!(parse(bad), Err(CommandError::BadChunk), "{bad}");
        }
    }
}
