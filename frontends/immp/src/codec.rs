//! IMMP command lines → typed [`Command`]s (nom), and [`Reply`] values → lines.
//!
//! Framing comes first (the session hands over one complete line of at most 8 KiB); this module
//! only parses. A line holds one or more commands separated by `;` outside quotes; each command
//! is `[AS <pipeline>] KEYWORD… [parameters] [switches]`. Keywords and switches are
//! case-insensitive; parameters may be double-quoted with `\"` and `\\` escapes; switches are
//! `+NAME` / `-NAME`.

use nom::branch::alt;
use nom::bytes::complete::{escaped_transform, is_not, take_while1};
use nom::character::complete::{char, one_of, space0, space1};
use nom::combinator::{all_consuming, map, value};
use nom::multi::separated_list0;
use nom::sequence::{delimited, pair};
use nom::IResult;
use std::fmt::Write;

/// Longest pipeline id.
pub const MAX_PIPELINE_LEN: usize = 16;

/// One lexical element of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A bare word.
    Word(String),
    /// A double-quoted string (unescaped).
    Quoted(String),
    /// `+NAME` (`true`) or `-NAME` (`false`), the name as written.
    Switch(bool, String),
}

/// Why a line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but white space.
    #[error("empty command")]
    Empty,
    /// Lexical error (unterminated quote, bad character).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The pipeline id is not 1–16 of `[A-Za-z0-9_-]`.
    #[error("invalid pipeline id {0:?}")]
    Pipeline(String),
    /// Unknown command.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// Known command, wrong arguments.
    #[error("{0}")]
    Usage(String),
}

/// TLS levels of `UPGRADE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLevel {
    /// Any TLS the server offers (1.2 or 1.3).
    Tls,
    /// TLS 1.2 or newer.
    Tls2,
    /// TLS 1.3 only.
    Tls3,
}

/// A mailbox path with an optional `::filter` and `#message-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxRef {
    /// Folder path without leading `/` (`inbox/lists`).
    pub path: String,
    /// Filter after `::` (`*`, `unread`, `read`, `important`).
    pub filter: Option<String>,
    /// Message id after `#`.
    pub id: Option<String>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// `UPGRADE TLS|TLS2|TLS3`.
    Upgrade(TlsLevel),
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `AUTH SECRET <account> ["device"]`.
    AuthSecret {
        /// The account.
        account: String,
        /// Device label.
        device: Option<String>,
    },
    /// `AUTH RESPONSE <hex>`.
    AuthResponse(String),
    /// `AUTH COOKIE <cookie> <issuer-domain>`: a server authenticates for its domain.
    AuthCookie {
        /// The cookie the issuer gave its own server.
        cookie: String,
        /// The issuing domain.
        domain: String,
    },
    /// `COOKIE CHECK <cookie> <domain>`: is this cookie one we issued for `domain`?
    CookieCheck {
        /// The cookie.
        cookie: String,
        /// The domain it was presented to.
        domain: String,
    },
    /// `DELIVER TO <imid>[, <imid>…] [+IMPORTANT|-IMPORTANT] [+MULTIPART]`.
    DeliverTo {
        /// Recipients as written.
        recipients: Vec<String>,
        /// `Some(true)` for +IMPORTANT, `Some(false)` for -IMPORTANT.
        important: Option<bool>,
        /// +MULTIPART.
        multipart: bool,
    },
    /// `DATA [NAME n] [TYPE t] [LENGTH l] [+BASE64] [+CONTENT]`.
    Data {
        /// Part name.
        name: Option<String>,
        /// Media type.
        media_type: Option<String>,
        /// Exact payload length.
        length: Option<u64>,
        /// Payload is base64.
        base64: bool,
        /// This is the content part.
        content: bool,
    },
    /// `DONE`.
    Done,
    /// `MBOX CHECK <path>[::filter] [+RECURSIVE]`.
    MboxCheck {
        /// Folder and filter.
        mbox: MboxRef,
        /// Include sub-folders.
        recursive: bool,
    },
    /// `MBOX INDEX <path>[::filter] [+JSON]`.
    MboxIndex {
        /// Folder and filter.
        mbox: MboxRef,
        /// JSON output.
        json: bool,
    },
    /// `MBOX FETCH <path>#<id> [+JSON] [+PRETTY] [-READ]`.
    MboxFetch {
        /// Folder and id.
        mbox: MboxRef,
        /// JSON output (else MIME).
        json: bool,
        /// Indented JSON.
        pretty: bool,
        /// Mark as read (default true; `-READ` keeps it unread).
        mark_read: bool,
    },
    /// `MBOX CREATE <path>`.
    MboxCreate(String),
    /// `MBOX DELETE <path>[#id]`.
    MboxDelete(MboxRef),
    /// `MBOX MOVE <path>#<id> <path>`.
    MboxMove {
        /// Source folder and id.
        from: MboxRef,
        /// Target folder.
        to: String,
    },
    /// `KEY REQUEST <domain|imid>`.
    KeyRequest(String),
    /// `KEY PUBLISH`: the next DATA block is the caller's armored public key.
    KeyPublish,
    /// `PUBLISH <node> ["title"]`: create a node owned by the caller.
    Publish {
        /// Node name (`newsletter` or `newsletter/updates`).
        node: String,
        /// Title.
        title: Option<String>,
    },
    /// `PUBLISH TO <node>`: the next DATA block is pushed to every subscriber.
    PublishTo(String),
    /// `SUBSCRIBE TO <node@domain> [FOR <imid>]` (FOR: a remote server subscribing one of its
    /// users).
    Subscribe {
        /// The node.
        node: String,
        /// The remote user, when a server subscribes on behalf of one.
        on_behalf: Option<String>,
    },
    /// `SUBSCRIBE LIST`.
    SubscribeList,
    /// `UNSUBSCRIBE <uuid|node@domain>`.
    Unsubscribe(String),
    /// `SET [GLOBAL] <key>[=<value>]`: show (no value) or change a setting, for this session or
    /// (GLOBAL) for the account.
    Set {
        /// Persist for the account.
        global: bool,
        /// Setting name, upper-case.
        key: String,
        /// New value, upper-case.
        value: Option<String>,
    },
    /// `PUSH TO <imid> FROM <node@domain> [+IMPORTANT]`: the next DATA block is the push.
    Push {
        /// Recipient.
        to: String,
        /// The pushing node.
        from: String,
        /// +IMPORTANT.
        important: bool,
    },
}

/// A parsed command with its pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `AS <id>` pipeline, if any.
    pub pipeline: Option<String>,
    /// The command.
    pub kind: CommandKind,
}

fn quoted(i: &str) -> IResult<&str, String> {
    delimited(
        char('"'),
        map(
            nom::combinator::opt(escaped_transform(
                is_not("\\\""),
                '\\',
                alt((value("\\", char('\\')), value("\"", char('"')))),
            )),
            Option::unwrap_or_default,
        ),
        char('"'),
    )(i)
}

fn bare(i: &str) -> IResult<&str, &str> {
    take_while1(|c: char| !c.is_whitespace() && c != '"' && c != ';')(i)
}

fn token(i: &str) -> IResult<&str, Token> {
    alt((
        map(quoted, Token::Quoted),
        map(pair(one_of("+-"), bare), |(sign, name): (char, &str)| {
            if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                Token::Switch(sign == '+', name.to_owned())
            } else {
                Token::Word(format!("{sign}{name}"))
            }
        }),
        map(bare, |w: &str| Token::Word(w.to_owned())),
    ))(i)
}

fn tokens(i: &str) -> IResult<&str, Vec<Token>> {
    delimited(space0, separated_list0(space1, token), space0)(i)
}

/// Split a line at `;` outside quotes.
fn segments(line: &str) -> Result<Vec<&str>, ParseError> {
    let mut out = Vec::new();
    let (mut start, mut in_quote, mut escaped) = (0, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            ';' if !in_quote => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote {
        return Err(ParseError::Syntax("unterminated quoted string".into()));
    }
    out.push(&line[start..]);
    Ok(out)
}

/// Parse one line into its commands.
pub fn parse_line(line: &str) -> Result<Vec<Command>, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut out = Vec::new();
    for seg in segments(line)? {
        if seg.trim().is_empty() {
            continue;
        }
        let (_, toks) = all_consuming(tokens)(seg)
            .map_err(|_| ParseError::Syntax(format!("cannot read {:?}", seg.trim())))?;
        out.push(command(toks)?);
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    }
}

fn param(t: &Token) -> Option<&str> {
    match t {
        Token::Word(w) | Token::Quoted(w) => Some(w),
        Token::Switch(..) => None,
    }
}

fn valid_pipeline(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PIPELINE_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parse `path[::filter][#id]`.
pub fn mbox_ref(text: &str) -> Result<MboxRef, ParseError> {
    let (rest, id) = match text.split_once('#') {
        Some((r, id)) if !id.is_empty() => (r, Some(id.to_owned())),
        Some(_) => return Err(ParseError::Usage("empty message id after '#'".into())),
        None => (text, None),
    };
    let (path, filter) = match rest.split_once("::") {
        Some((p, f)) => (p, Some(f.to_ascii_lowercase())),
        None => (rest, None),
    };
    // One leading '/' is the mailbox root; every segment after it is a name (no empty,
    // `.` or `..` segments).
    let path = path.strip_prefix('/').unwrap_or(path);
    if !mailgate_core::address::valid_folder(path) {
        return Err(ParseError::Usage(format!("invalid mailbox path {text:?}")));
    }
    if let Some(f) = &filter {
        if !matches!(f.as_str(), "*" | "unread" | "read" | "important") {
            return Err(ParseError::Usage(format!(
                "unknown filter {f:?}: use *, unread, read or important"
            )));
        }
    }
    Ok(MboxRef {
        path: path.to_owned(),
        filter,
        id,
    })
}

struct Args {
    params: Vec<String>,
    switches: Vec<(bool, String)>,
}

impl Args {
    fn of(toks: &[Token]) -> Args {
        let mut params = Vec::new();
        let mut switches = Vec::new();
        for t in toks {
            match t {
                Token::Switch(on, name) => switches.push((*on, name.to_ascii_uppercase())),
                other => params.extend(param(other).map(str::to_owned)),
            }
        }
        Args { params, switches }
    }

    fn switch(&self, name: &str) -> Option<bool> {
        self.switches
            .iter()
            .rev()
            .find(|(_, n)| n == name)
            .map(|(on, _)| *on)
    }

    fn only_switches(&self, allowed: &[&str], usage: &str) -> Result<(), ParseError> {
        match self
            .switches
            .iter()
            .find(|(_, n)| !allowed.contains(&n.as_str()))
        {
            Some((_, n)) => Err(ParseError::Usage(format!(
                "unknown switch {n}; usage: {usage}"
            ))),
            None => Ok(()),
        }
    }
}

fn command(mut toks: Vec<Token>) -> Result<Command, ParseError> {
    let mut pipeline = None;
    if toks.first().and_then(word).as_deref() == Some("AS") {
        let id = match toks.get(1) {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => w.clone(),
            // `AS -a …`: a pipeline id may start with '-', which also reads as a switch.
            Some(Token::Switch(on, name)) => format!("{}{name}", if *on { '+' } else { '-' }),
            None => return Err(ParseError::Pipeline(String::new())),
        };
        if !valid_pipeline(&id) {
            return Err(ParseError::Pipeline(id));
        }
        pipeline = Some(id);
        toks.drain(..2);
    }
    let first = toks.first().and_then(word).ok_or(ParseError::Empty)?;
    let second = toks.get(1).and_then(word).unwrap_or_default();
    let usage = |u: &str| ParseError::Usage(format!("usage: {u}"));
    let kind = match (first.as_str(), second.as_str()) {
        ("NOOP", _) if toks.len() == 1 => CommandKind::Noop,
        ("QUIT", _) if toks.len() == 1 => CommandKind::Quit,
        ("DONE", _) if toks.len() == 1 => CommandKind::Done,
        ("NOOP" | "QUIT" | "DONE", _) => return Err(usage(&first)),
        ("UPGRADE", level) if toks.len() == 2 => CommandKind::Upgrade(match level {
            "TLS" => TlsLevel::Tls,
            "TLS2" => TlsLevel::Tls2,
            "TLS3" => TlsLevel::Tls3,
            other => {
                return Err(ParseError::Usage(format!(
                    "cannot upgrade to {other}; offered: TLS TLS2 TLS3"
                )))
            }
        }),
        ("UPGRADE", _) => return Err(usage("UPGRADE TLS|TLS2|TLS3")),
        ("AUTH" | "AUTHENTICATE", "SECRET") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            a.only_switches(&[], "AUTH SECRET <account> [\"device\"]")?;
            match a.params.as_slice() {
                [account] => CommandKind::AuthSecret {
                    account: account.clone(),
                    device: None,
                },
                [account, device] => CommandKind::AuthSecret {
                    account: account.clone(),
                    device: Some(device.clone()),
                },
                _ => return Err(usage("AUTH SECRET <account> [\"device\"]")),
            }
        }
        ("AUTH" | "AUTHENTICATE", "COOKIE") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            match a.params.as_slice() {
                [cookie, domain] if a.switches.is_empty() => CommandKind::AuthCookie {
                    cookie: cookie.clone(),
                    domain: domain.clone(),
                },
                _ => return Err(usage("AUTH COOKIE <cookie> <issuer-domain>")),
            }
        }
        ("COOKIE", "CHECK") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            match a.params.as_slice() {
                [cookie, domain] if a.switches.is_empty() => CommandKind::CookieCheck {
                    cookie: cookie.clone(),
                    domain: domain.clone(),
                },
                _ => return Err(usage("COOKIE CHECK <cookie> <domain>")),
            }
        }
        ("AUTH" | "AUTHENTICATE", "RESPONSE") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            match a.params.as_slice() {
                [hex] if a.switches.is_empty() => CommandKind::AuthResponse(hex.clone()),
                _ => return Err(usage("AUTH RESPONSE <hex>")),
            }
        }
        ("DELIVER", "TO") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            a.only_switches(&["IMPORTANT", "MULTIPART"], "DELIVER TO <imid>[, <imid>…]")?;
            let recipients: Vec<String> = a
                .params
                .iter()
                .flat_map(|p| p.split(','))
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if recipients.is_empty() {
                return Err(usage(
                    "DELIVER TO <imid>[, <imid>…] [+IMPORTANT|-IMPORTANT] [+MULTIPART]",
                ));
            }
            CommandKind::DeliverTo {
                recipients,
                important: a.switch("IMPORTANT"),
                multipart: a.switch("MULTIPART").unwrap_or(false),
            }
        }
        ("DATA", _) => {
            let rest = &toks[1..];
            let a = Args::of(rest);
            a.only_switches(
                &["BASE64", "CONTENT"],
                "DATA [NAME n] [TYPE t] [LENGTH l] [+BASE64] [+CONTENT]",
            )?;
            let (mut name, mut media_type, mut length) = (None, None, None);
            let mut i = 0;
            let params = &a.params;
            while i < params.len() {
                let key = params[i].to_ascii_uppercase();
                let val = params.get(i + 1);
                match (key.as_str(), val) {
                    ("NAME", Some(v)) => name = Some(v.clone()),
                    ("TYPE", Some(v)) => media_type = Some(v.clone()),
                    ("LENGTH", Some(v)) => {
                        length = Some(v.parse::<u64>().map_err(|_| {
                            ParseError::Usage(format!("LENGTH {v:?} is not a number"))
                        })?)
                    }
                    // The draft's example: `DATA logo.jpg TYPE image/jpg` (bare name first).
                    (_, _) if i == 0 && name.is_none() => {
                        name = Some(params[i].clone());
                        i += 1;
                        continue;
                    }
                    _ => {
                        return Err(usage(
                            "DATA [NAME n] [TYPE t] [LENGTH l] [+BASE64] [+CONTENT]",
                        ))
                    }
                }
                i += 2;
            }
            CommandKind::Data {
                name,
                media_type,
                length,
                base64: a.switch("BASE64").unwrap_or(false),
                content: a.switch("CONTENT").unwrap_or(false),
            }
        }
        ("MBOX", sub) => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            let one = |u: &str| -> Result<String, ParseError> {
                match a.params.as_slice() {
                    [p] => Ok(p.clone()),
                    _ => Err(usage(u)),
                }
            };
            match sub {
                "CHECK" => {
                    a.only_switches(&["RECURSIVE"], "MBOX CHECK <path>[::filter] [+RECURSIVE]")?;
                    CommandKind::MboxCheck {
                        mbox: mbox_ref(&one("MBOX CHECK <path>[::filter] [+RECURSIVE]")?)?,
                        recursive: a.switch("RECURSIVE").unwrap_or(false),
                    }
                }
                "INDEX" => {
                    a.only_switches(&["JSON"], "MBOX INDEX <path>[::filter] [+JSON]")?;
                    CommandKind::MboxIndex {
                        mbox: mbox_ref(&one("MBOX INDEX <path>[::filter] [+JSON]")?)?,
                        json: a.switch("JSON").unwrap_or(false),
                    }
                }
                "FETCH" => {
                    let u = "MBOX FETCH <path>#<id> [+JSON] [+PRETTY] [-READ]";
                    a.only_switches(&["JSON", "PRETTY", "READ"], u)?;
                    let mbox = mbox_ref(&one(u)?)?;
                    if mbox.id.is_none() {
                        return Err(usage(u));
                    }
                    CommandKind::MboxFetch {
                        mbox,
                        json: a.switch("JSON").unwrap_or(false),
                        pretty: a.switch("PRETTY").unwrap_or(false),
                        mark_read: a.switch("READ").unwrap_or(true),
                    }
                }
                "CREATE" => {
                    let m = mbox_ref(&one("MBOX CREATE <path>")?)?;
                    CommandKind::MboxCreate(m.path)
                }
                "DELETE" => CommandKind::MboxDelete(mbox_ref(&one("MBOX DELETE <path>[#id]")?)?),
                "MOVE" => {
                    let u = "MBOX MOVE <path>#<id> <path>";
                    match a.params.as_slice() {
                        [from, to] => {
                            let from = mbox_ref(from)?;
                            if from.id.is_none() {
                                return Err(usage(u));
                            }
                            CommandKind::MboxMove {
                                from,
                                to: mbox_ref(to)?.path,
                            }
                        }
                        _ => return Err(usage(u)),
                    }
                }
                _ => return Err(usage("MBOX CHECK|INDEX|FETCH|CREATE|DELETE|MOVE …")),
            }
        }
        ("SET", _) => {
            let u = "SET [GLOBAL] <key>[=<value>]";
            let a = Args::of(&toks[1..]);
            a.only_switches(&[], u)?;
            let (global, rest) = match a.params.split_first() {
                Some((g, rest)) if g.eq_ignore_ascii_case("GLOBAL") => (true, rest),
                _ => (false, a.params.as_slice()),
            };
            let [setting] = rest else {
                return Err(usage(u));
            };
            let (key, value) = match setting.split_once('=') {
                Some((k, v)) => (k, Some(v.to_ascii_uppercase())),
                None => (setting.as_str(), None),
            };
            if key.is_empty() || value.as_deref() == Some("") || (global && value.is_none()) {
                return Err(usage(u));
            }
            CommandKind::Set {
                global,
                key: key.to_ascii_uppercase(),
                value,
            }
        }
        ("PUBLISH", "TO") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            match a.params.as_slice() {
                [node] if a.switches.is_empty() => CommandKind::PublishTo(node.clone()),
                _ => return Err(usage("PUBLISH TO <node>")),
            }
        }
        ("PUBLISH", _) => {
            let a = Args::of(&toks[1..]);
            let u = "PUBLISH <node> [\"title\"]";
            a.only_switches(&[], u)?;
            match a.params.as_slice() {
                [node] => CommandKind::Publish {
                    node: node.clone(),
                    title: None,
                },
                [node, title] => CommandKind::Publish {
                    node: node.clone(),
                    title: Some(title.clone()),
                },
                _ => return Err(usage(u)),
            }
        }
        ("SUBSCRIBE", "LIST") if toks.len() == 2 => CommandKind::SubscribeList,
        ("SUBSCRIBE", "TO") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            match a.params.as_slice() {
                [node] if a.switches.is_empty() => CommandKind::Subscribe {
                    node: node.clone(),
                    on_behalf: None,
                },
                [node, kw, who] if a.switches.is_empty() && kw.eq_ignore_ascii_case("FOR") => {
                    CommandKind::Subscribe {
                        node: node.clone(),
                        on_behalf: Some(who.clone()),
                    }
                }
                _ => return Err(usage("SUBSCRIBE TO <node@domain> [FOR <imid>]")),
            }
        }
        ("SUBSCRIBE", _) => return Err(usage("SUBSCRIBE TO <node@domain> | SUBSCRIBE LIST")),
        ("UNSUBSCRIBE", _) => {
            let a = Args::of(&toks[1..]);
            match a.params.as_slice() {
                [x] if a.switches.is_empty() => CommandKind::Unsubscribe(x.clone()),
                _ => return Err(usage("UNSUBSCRIBE <uuid|node@domain>")),
            }
        }
        ("PUSH", "TO") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            let u = "PUSH TO <imid> FROM <node@domain> [+IMPORTANT]";
            a.only_switches(&["IMPORTANT"], u)?;
            match a.params.as_slice() {
                [to, from_kw, from] if from_kw.eq_ignore_ascii_case("FROM") => CommandKind::Push {
                    to: to.clone(),
                    from: from.clone(),
                    important: a.switch("IMPORTANT").unwrap_or(false),
                },
                _ => return Err(usage(u)),
            }
        }
        ("KEY", "PUBLISH") if toks.len() == 2 => CommandKind::KeyPublish,
        ("KEY", "REQUEST") => {
            let a = Args::of(toks.get(2..).unwrap_or_default());
            match a.params.as_slice() {
                [x] if a.switches.is_empty() => CommandKind::KeyRequest(x.clone()),
                _ => return Err(usage("KEY REQUEST <domain|imid>")),
            }
        }
        (other, _) => return Err(ParseError::Unknown(other.to_owned())),
    };
    Ok(Command { pipeline, kind })
}

fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(['+', '-'])
        && s.chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != ';' && c != '\\' && c != ',');
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn mbox_text(m: &MboxRef) -> String {
    let mut s = format!("/{}", m.path);
    if let Some(f) = &m.filter {
        let _ = write!(s, "::{f}");
    }
    if let Some(id) = &m.id {
        let _ = write!(s, "#{id}");
    }
    s
}

fn flag(out: &mut String, on: bool, name: &str) {
    if on {
        let _ = write!(out, " +{name}");
    }
}

/// Write a command as a line (without the newline); parsing it gives the same command.
pub fn encode(cmd: &Command) -> String {
    let mut out = String::new();
    if let Some(p) = &cmd.pipeline {
        let _ = write!(out, "AS {p} ");
    }
    match &cmd.kind {
        CommandKind::Upgrade(l) => out.push_str(match l {
            TlsLevel::Tls => "UPGRADE TLS",
            TlsLevel::Tls2 => "UPGRADE TLS2",
            TlsLevel::Tls3 => "UPGRADE TLS3",
        }),
        CommandKind::Noop => out.push_str("NOOP"),
        CommandKind::Quit => out.push_str("QUIT"),
        CommandKind::Done => out.push_str("DONE"),
        CommandKind::AuthSecret { account, device } => {
            let _ = write!(out, "AUTH SECRET {}", q(account));
            if let Some(d) = device {
                let _ = write!(out, " {}", q(d));
            }
        }
        CommandKind::AuthResponse(h) => {
            let _ = write!(out, "AUTH RESPONSE {}", q(h));
        }
        CommandKind::AuthCookie { cookie, domain } => {
            let _ = write!(out, "AUTH COOKIE {} {}", q(cookie), q(domain));
        }
        CommandKind::CookieCheck { cookie, domain } => {
            let _ = write!(out, "COOKIE CHECK {} {}", q(cookie), q(domain));
        }
        CommandKind::DeliverTo {
            recipients,
            important,
            multipart,
        } => {
            let list: Vec<String> = recipients.iter().map(|r| q(r)).collect();
            let _ = write!(out, "DELIVER TO {}", list.join(" "));
            match important {
                Some(true) => out.push_str(" +IMPORTANT"),
                Some(false) => out.push_str(" -IMPORTANT"),
                None => {}
            }
            flag(&mut out, *multipart, "MULTIPART");
        }
        CommandKind::Data {
            name,
            media_type,
            length,
            base64,
            content,
        } => {
            out.push_str("DATA");
            if let Some(n) = name {
                let _ = write!(out, " NAME {}", q(n));
            }
            if let Some(t) = media_type {
                let _ = write!(out, " TYPE {}", q(t));
            }
            if let Some(l) = length {
                let _ = write!(out, " LENGTH {l}");
            }
            flag(&mut out, *base64, "BASE64");
            flag(&mut out, *content, "CONTENT");
        }
        CommandKind::MboxCheck { mbox, recursive } => {
            let _ = write!(out, "MBOX CHECK {}", q(&mbox_text(mbox)));
            flag(&mut out, *recursive, "RECURSIVE");
        }
        CommandKind::MboxIndex { mbox, json } => {
            let _ = write!(out, "MBOX INDEX {}", q(&mbox_text(mbox)));
            flag(&mut out, *json, "JSON");
        }
        CommandKind::MboxFetch {
            mbox,
            json,
            pretty,
            mark_read,
        } => {
            let _ = write!(out, "MBOX FETCH {}", q(&mbox_text(mbox)));
            flag(&mut out, *json, "JSON");
            flag(&mut out, *pretty, "PRETTY");
            if !mark_read {
                out.push_str(" -READ");
            }
        }
        CommandKind::MboxCreate(p) => {
            let _ = write!(out, "MBOX CREATE /{p}");
        }
        CommandKind::MboxDelete(m) => {
            let _ = write!(out, "MBOX DELETE {}", q(&mbox_text(m)));
        }
        CommandKind::MboxMove { from, to } => {
            let _ = write!(out, "MBOX MOVE {} /{to}", q(&mbox_text(from)));
        }
        CommandKind::KeyRequest(x) => {
            let _ = write!(out, "KEY REQUEST {}", q(x));
        }
        CommandKind::Publish { node, title } => {
            // Always quoted, so a node named "to" is not read as PUBLISH TO.
            let _ = write!(
                out,
                "PUBLISH \"{}\"",
                node.replace('\\', "\\\\").replace('"', "\\\"")
            );
            if let Some(t) = title {
                let _ = write!(out, " {}", q(t));
            }
        }
        CommandKind::PublishTo(node) => {
            let _ = write!(out, "PUBLISH TO {}", q(node));
        }
        CommandKind::Subscribe { node, on_behalf } => {
            let _ = write!(out, "SUBSCRIBE TO {}", q(node));
            if let Some(who) = on_behalf {
                let _ = write!(out, " FOR {}", q(who));
            }
        }
        CommandKind::SubscribeList => out.push_str("SUBSCRIBE LIST"),
        CommandKind::KeyPublish => out.push_str("KEY PUBLISH"),
        CommandKind::Set { global, key, value } => {
            out.push_str(if *global { "SET GLOBAL " } else { "SET " });
            let setting = match value {
                Some(v) => format!("{key}={v}"),
                None => key.clone(),
            };
            out.push_str(&q(&setting));
        }
        CommandKind::Unsubscribe(x) => {
            let _ = write!(out, "UNSUBSCRIBE {}", q(x));
        }
        CommandKind::Push {
            to,
            from,
            important,
        } => {
            let _ = write!(out, "PUSH TO {} FROM {}", q(to), q(from));
            flag(&mut out, *important, "IMPORTANT");
        }
    }
    out
}

/// A reply: a status code and one or more text lines (all but the last carry `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub code: u16,
    /// Text lines.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// Render with an optional pipeline prefix; each line ends in `\n`.
    pub fn render(&self, pipeline: Option<&str>) -> String {
        let mut out = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            if let Some(p) = pipeline {
                let _ = write!(out, "{p}: ");
            }
            let sep = if i + 1 < n { "-" } else { "" };
            let text = self.lines.get(i).map_or("", String::as_str);
            // A reply line never carries a raw line break.
            let text = text.replace(['\r', '\n'], " ");
            let _ = writeln!(out, "{}{sep} {text}", self.code);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(line: &str) -> Command {
        let mut v = parse_line(line).unwrap();
        assert_eq!(v.len(), 1, "{line}");
        v.remove(0)
    }

    #[test]
    fn known_answers() {
        assert_eq!(one("noop").kind, CommandKind::Noop);
        assert_eq!(
            one("UPGRADE tls3").kind,
            CommandKind::Upgrade(TlsLevel::Tls3)
        );
        assert_eq!(
            one(r#"AUTH SECRET noccy@noccylabs.info "Desktop Computer (Mail Client)""#).kind,
            CommandKind::AuthSecret {
                account: "noccy@noccylabs.info".into(),
                device: Some("Desktop Computer (Mail Client)".into())
            }
        );
        assert_eq!(
            one("auth response 8843d7f92416211de9ebb963ff4ce28125932878").kind,
            CommandKind::AuthResponse("8843d7f92416211de9ebb963ff4ce28125932878".into())
        );
        let c = one("AS f9ca MBOX INDEX /inbox::unread +JSON");
        assert_eq!(c.pipeline.as_deref(), Some("f9ca"));
        assert_eq!(
            c.kind,
            CommandKind::MboxIndex {
                mbox: MboxRef {
                    path: "inbox".into(),
                    filter: Some("unread".into()),
                    id: None
                },
                json: true
            }
        );
        assert_eq!(
            one("AS beef MBOX FETCH /inbox#9507ce26-d34e-41cb-9f14-4eeff943e25e +JSON -READ").kind,
            CommandKind::MboxFetch {
                mbox: MboxRef {
                    path: "inbox".into(),
                    filter: None,
                    id: Some("9507ce26-d34e-41cb-9f14-4eeff943e25e".into())
                },
                json: true,
                pretty: false,
                mark_read: false
            }
        );
        assert_eq!(
            one("DELIVER TO noccy+analytics@noccylabs.info, bob@x.test +IMPORTANT +MULTIPART").kind,
            CommandKind::DeliverTo {
                recipients: vec!["noccy+analytics@noccylabs.info".into(), "bob@x.test".into()],
                important: Some(true),
                multipart: true
            }
        );
        assert_eq!(
            one("DATA logo.jpg TYPE image/jpg +BASE64").kind,
            CommandKind::Data {
                name: Some("logo.jpg".into()),
                media_type: Some("image/jpg".into()),
                length: None,
                base64: true,
                content: false
            }
        );
        assert_eq!(
            one("DATA index.html TYPE text/html LENGTH 1742 +CONTENT").kind,
            CommandKind::Data {
                name: Some("index.html".into()),
                media_type: Some("text/html".into()),
                length: Some(1742),
                base64: false,
                content: true
            }
        );
        assert_eq!(
            one("MBOX CHECK /inbox::* +RECURSIVE").kind,
            CommandKind::MboxCheck {
                mbox: MboxRef {
                    path: "inbox".into(),
                    filter: Some("*".into()),
                    id: None
                },
                recursive: true
            }
        );
        assert_eq!(
            one("key request example.com").kind,
            CommandKind::KeyRequest("example.com".into())
        );
        assert_eq!(
            one(r#"MBOX MOVE /inbox#abc "/Archive""#).kind,
            CommandKind::MboxMove {
                from: MboxRef {
                    path: "inbox".into(),
                    filter: None,
                    id: Some("abc".into())
                },
                to: "Archive".into()
            }
        );
    }

    #[test]
    fn chaining_and_quoting() {
        let v =
            parse_line(r#"AS a NOOP; AS b AUTH SECRET x@y.z "semi;colon \"q\" \\"; QUIT"#).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].pipeline.as_deref(), Some("a"));
        assert_eq!(
            v[1].kind,
            CommandKind::AuthSecret {
                account: "x@y.z".into(),
                device: Some("semi;colon \"q\" \\".into())
            }
        );
        assert_eq!(v[2].kind, CommandKind::Quit);
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(parse_line("   "), Err(ParseError::Empty));
        assert!(matches!(parse_line("FROB"), Err(ParseError::Unknown(_))));
        assert!(matches!(
            parse_line("AUTH SECRET \"open"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_line("AS !! NOOP"),
            Err(ParseError::Pipeline(_))
        ));
        assert!(matches!(
            parse_line("AS 12345678901234567 NOOP"),
            Err(ParseError::Pipeline(_))
        ));
        assert!(matches!(
            parse_line("UPGRADE SSL3"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            parse_line("NOOP extra"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            parse_line("MBOX FETCH /inbox +JSON"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            parse_line("MBOX INDEX /inbox::weird"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            parse_line("DATA LENGTH x"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            parse_line("MBOX INDEX /inbox +BOGUS"),
            Err(ParseError::Usage(_))
        ));
    }

    #[test]
    fn replies_render_with_continuations_and_pipelines() {
        let r = Reply {
            code: 240,
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.render(None), "240- a\n240 b\n");
        assert_eq!(Reply::new(200, "OK").render(Some("x1")), "x1: 200 OK\n");
        assert_eq!(Reply::new(250, "x\ny").render(None), "250 x y\n");
    }

    fn text() -> impl Strategy<Value = String> {
        "[ -~]{1,20}"
    }
    fn path() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}"
    }
    fn mbox(with_id: bool) -> impl Strategy<Value = MboxRef> {
        (
            path(),
            proptest::option::of(prop_oneof![
                Just("*"),
                Just("unread"),
                Just("read"),
                Just("important")
            ]),
            "[a-f0-9-]{1,36}",
        )
            .prop_map(move |(path, filter, id)| MboxRef {
                path,
                filter: filter.map(str::to_owned),
                id: with_id.then_some(id),
            })
    }

    fn kind() -> impl Strategy<Value = CommandKind> {
        prop_oneof![
            Just(CommandKind::Noop),
            Just(CommandKind::Quit),
            Just(CommandKind::Done),
            prop_oneof![
                Just(TlsLevel::Tls),
                Just(TlsLevel::Tls2),
                Just(TlsLevel::Tls3)
            ]
            .prop_map(CommandKind::Upgrade),
            (text(), proptest::option::of(text()))
                .prop_map(|(account, device)| CommandKind::AuthSecret { account, device }),
            "[a-f0-9]{1,40}".prop_map(CommandKind::AuthResponse),
            ("[a-f0-9]{1,40}", "[a-z.]{1,20}")
                .prop_map(|(cookie, domain)| CommandKind::AuthCookie { cookie, domain }),
            ("[a-f0-9]{1,40}", "[a-z.]{1,20}")
                .prop_map(|(cookie, domain)| CommandKind::CookieCheck { cookie, domain }),
            (
                proptest::collection::vec("[a-z0-9.+/@]{1,20}", 1..4),
                proptest::option::of(any::<bool>()),
                any::<bool>()
            )
                .prop_map(|(recipients, important, multipart)| {
                    CommandKind::DeliverTo {
                        recipients,
                        important,
                        multipart,
                    }
                }),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(any::<u64>()),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(name, media_type, length, base64, content)| {
                    CommandKind::Data {
                        name,
                        media_type,
                        length,
                        base64,
                        content,
                    }
                }),
            (mbox(false), any::<bool>())
                .prop_map(|(mbox, recursive)| CommandKind::MboxCheck { mbox, recursive }),
            (mbox(false), any::<bool>())
                .prop_map(|(mbox, json)| CommandKind::MboxIndex { mbox, json }),
            (mbox(true), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(mbox, json, pretty, mark_read)| CommandKind::MboxFetch {
                    mbox,
                    json,
                    pretty,
                    mark_read
                }
            ),
            path().prop_map(CommandKind::MboxCreate),
            mbox(true).prop_map(|m| CommandKind::MboxDelete(MboxRef { filter: None, ..m })),
            (mbox(true), path()).prop_map(|(from, to)| CommandKind::MboxMove {
                from: MboxRef {
                    filter: None,
                    ..from
                },
                to
            }),
            text().prop_map(CommandKind::KeyRequest),
            (path(), proptest::option::of(text()))
                .prop_map(|(node, title)| CommandKind::Publish { node, title }),
            path().prop_map(CommandKind::PublishTo),
            (
                "[a-z0-9/]{1,12}@[a-z.]{1,12}",
                proptest::option::of("[a-z0-9]{1,8}@[a-z.]{1,12}")
            )
                .prop_map(|(node, on_behalf)| CommandKind::Subscribe { node, on_behalf }),
            Just(CommandKind::SubscribeList),
            Just(CommandKind::KeyPublish),
            (
                any::<bool>(),
                "[A-Z][A-Z0-9_]{0,10}".prop_filter("GLOBAL is a keyword", |k| k != "GLOBAL"),
                proptest::option::of("[A-Z0-9]{1,8}")
            )
                .prop_map(|(global, key, value)| CommandKind::Set {
                    global: global && value.is_some(),
                    key,
                    value
                }),
            text().prop_map(CommandKind::Unsubscribe),
            ("[a-z0-9.+/@]{1,20}", "[a-z0-9/@.]{1,20}", any::<bool>()).prop_map(
                |(to, from, important)| CommandKind::Push {
                    to,
                    from,
                    important
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(k in kind(), p in proptest::option::of("[A-Za-z0-9_-]{1,16}")) {
            let cmd = Command { pipeline: p, kind: k };
            let line = encode(&cmd);
            let parsed = parse_line(&line);
            prop_assert_eq!(parsed, Ok(vec![cmd]), "{}", line);
        }

        #[test]
        fn parsing_never_panics(line in "\\PC{0,200}") {
            if let Ok(cmds) = parse_line(&line) {
                for c in cmds {
                    let again = parse_line(&encode(&c));
                    prop_assert_eq!(again, Ok(vec![c]));
                }
            }
        }
    }
}
