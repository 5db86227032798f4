//! One canonical [`Address`] for all three protocol families.
//!
//! * MMTP: `(alice)%(example.com)` — exactly the spec's regex
//!   `^\([a-zA-Z0-9._-]+\)%\([a-zA-Z0-9.-]+\)$`.
//! * IMMP IMIDs: `alice@example.com`, `alice+receipts@example.com` (folder),
//!   `helpdesk/alice@example.com` (sub-node), optionally `imid:`-prefixed and with a
//!   `/mailbox#message-id` suffix (see [`ImidRef`]).
//! * XHMTP: `alice@example.com`.
//!
//! Domains are case-insensitive and stored lower-case. Local parts keep their case for display,
//! but accounts are looked up by [`Address::account_key`], which is lower-case throughout.

use std::fmt;

/// Longest local part (and node segment) accepted.
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest domain accepted.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest folder path accepted.
pub const MAX_FOLDER_LEN: usize = 255;
/// Longest address string accepted by any parser, before any other check.
pub const MAX_ADDRESS_LEN: usize = 1024;

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing to parse.
    #[error("address is empty")]
    Empty,
    /// Longer than [`MAX_ADDRESS_LEN`].
    #[error("address is longer than {MAX_ADDRESS_LEN} characters")]
    TooLong,
    /// MMTP form must look like `(local)%(domain)`.
    #[error("not an MMTP address: expected (local)%(domain)")]
    NotMmtp,
    /// No `@` separating the user part from the domain.
    #[error("missing '@' between user and domain")]
    MissingAt,
    /// Local part empty, too long or with a character outside `[A-Za-z0-9._-]`.
    #[error("invalid local part {0:?}: use 1-64 of A-Z a-z 0-9 . _ -")]
    BadLocal(String),
    /// Domain empty, too long or with a character outside `[A-Za-z0-9.-]`.
    #[error("invalid domain {0:?}: use 1-253 of A-Z a-z 0-9 . -")]
    BadDomain(String),
    /// Folder empty, too long, or with an empty path segment or a bad character.
    #[error("invalid folder {0:?}: use segments of A-Z a-z 0-9 . _ - separated by '/'")]
    BadFolder(String),
    /// A suffix (`/mailbox#id`) or `imid:` prefix where a plain address was expected.
    #[error("unexpected text after the domain: {0:?}")]
    TrailingText(String),
    /// The address has a sub-node or folder, which the target family cannot express.
    #[error("{0} addresses cannot carry a sub-node or folder")]
    NotRepresentable(&'static str),
}

/// A mail address in its canonical form: `node/…/local+folder@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The parent nodes of a sub-node IMID (`helpdesk` in `helpdesk/alice@d`), outermost first.
    pub node: Vec<String>,
    /// The local part (`alice`).
    pub local: String,
    /// The domain, lower-case.
    pub domain: String,
    /// The folder named with `+folder`, if any (may be nested with `/`).
    pub folder: Option<String>,
}

/// `.` and `..` are never names: they would read as path steps in a folder or node path.
fn is_dot_segment(s: &str) -> bool {
    s == "." || s == ".."
}

fn valid_local(s: &str) -> bool {
    !s.is_empty()
        && !is_dot_segment(s)
        && s.len() <= MAX_LOCAL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A local part as Internet mail carries it (RFC 5321 `Dot-string` of `atext`, and with
/// SMTPUTF8 any non-ASCII character of RFC 6531): `bounces+id=x`, `o'brien`, `jürgen`.
fn valid_mailbox_local(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LOCAL_LEN
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || "!#$%&'*+-/=?^_`{|}~.".contains(c)
                || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
        })
}

fn valid_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
}

/// The local part of the gateway's own address (bounces, server-to-server mail, its key).
pub const MAILER_DAEMON: &str = "mailer-daemon";

/// Is `s` a valid folder path (`Receipts`, `INBOX/Lists`)? Segments are non-empty and never
/// `.` or `..`.
pub fn valid_folder(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FOLDER_LEN
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && !is_dot_segment(seg)
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn check_len(s: &str) -> Result<(), AddressError> {
    if s.is_empty() {
        Err(AddressError::Empty)
    } else if s.len() > MAX_ADDRESS_LEN {
        Err(AddressError::TooLong)
    } else {
        Ok(())
    }
}

impl Address {
    /// A plain `local@domain` address; validates both parts.
    pub fn new(local: &str, domain: &str) -> Result<Self, AddressError> {
        if !valid_local(local) {
            return Err(AddressError::BadLocal(local.to_owned()));
        }
        if !valid_domain(domain) {
            return Err(AddressError::BadDomain(domain.to_owned()));
        }
        Ok(Address {
            node: Vec::new(),
            local: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
            folder: None,
        })
    }

    /// An Internet mail address of someone outside the gateway, as SMTP carries it: its local
    /// part may hold any RFC 5321 `atext` (and UTF-8) and names no node or folder. Addresses
    /// of local accounts are made with [`Address::new`] or parsed as IMIDs.
    pub fn mailbox(local: &str, domain: &str) -> Result<Self, AddressError> {
        if !valid_mailbox_local(local) {
            return Err(AddressError::BadLocal(local.to_owned()));
        }
        if !valid_domain(domain) {
            return Err(AddressError::BadDomain(domain.to_owned()));
        }
        Ok(Address {
            node: Vec::new(),
            local: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
            folder: None,
        })
    }

    /// Parse `local@domain` as an IMID when it is one (so `alice+folder@` names a folder),
    /// otherwise as an Internet mail address ([`Address::mailbox`]).
    pub fn parse_mailbox(s: &str) -> Result<Self, AddressError> {
        check_len(s)?;
        if let Ok(a) = Address::parse_imid(s) {
            return Ok(a);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::MissingAt)?;
        Address::mailbox(local, domain)
    }

    /// Parse an MMTP address `(local)%(domain)`, accepting exactly the spec's regex.
    pub fn parse_mmtp(s: &str) -> Result<Self, AddressError> {
        check_len(s)?;
        let inner = s
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or(AddressError::NotMmtp)?;
        let (local, domain) = inner.split_once(")%(").ok_or(AddressError::NotMmtp)?;
        // The regex's character classes exclude parentheses and '%', so a second separator
        // inside either half cannot match.
        if !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            || local.is_empty()
        {
            return Err(AddressError::BadLocal(local.to_owned()));
        }
        if local.len() > MAX_LOCAL_LEN {
            return Err(AddressError::BadLocal(local.to_owned()));
        }
        if !valid_domain(domain) {
            return Err(AddressError::BadDomain(domain.to_owned()));
        }
        Address::new(local, domain)
    }

    /// Print in MMTP form; fails for addresses with a sub-node or folder.
    pub fn to_mmtp(&self) -> Result<String, AddressError> {
        if !self.node.is_empty() || self.folder.is_some() {
            return Err(AddressError::NotRepresentable("MMTP"));
        }
        // The spec's regex takes only these in the local part.
        if !valid_local(&self.local) {
            return Err(AddressError::BadLocal(self.local.clone()));
        }
        Ok(format!("({})%({})", self.local, self.domain))
    }

    /// Parse a plain IMID (`[node/]*local[+folder]@domain`), with no `imid:` prefix or suffix.
    pub fn parse_imid(s: &str) -> Result<Self, AddressError> {
        let r = ImidRef::parse(s)?;
        if r.mailbox.is_some() || r.message_id.is_some() || r.prefixed {
            return Err(AddressError::TrailingText(s.to_owned()));
        }
        Ok(r.address)
    }

    /// Parse an XHMTP address: strictly `local@domain`.
    pub fn parse_xhmtp(s: &str) -> Result<Self, AddressError> {
        check_len(s)?;
        let (local, domain) = s.split_once('@').ok_or(AddressError::MissingAt)?;
        if domain.contains('@') || domain.contains('/') {
            return Err(AddressError::BadDomain(domain.to_owned()));
        }
        if local.contains('+') || local.contains('/') {
            return Err(AddressError::NotRepresentable("XHMTP"));
        }
        Address::new(local, domain)
    }

    /// Print in XHMTP form; fails for addresses with a sub-node or folder.
    pub fn to_xhmtp(&self) -> Result<String, AddressError> {
        if !self.node.is_empty() || self.folder.is_some() {
            return Err(AddressError::NotRepresentable("XHMTP"));
        }
        Ok(format!("{}@{}", self.local, self.domain))
    }

    /// Parse any family: MMTP when it starts with `(`, otherwise an IMID.
    pub fn parse_any(s: &str) -> Result<Self, AddressError> {
        if s.starts_with('(') {
            Address::parse_mmtp(s)
        } else {
            Address::parse_imid(s)
        }
    }

    /// The same address without its folder: the account it names.
    pub fn account(&self) -> Address {
        Address {
            folder: None,
            ..self.clone()
        }
    }

    /// The case-insensitive key of the account: `node/local@domain`, lower-case, no folder.
    pub fn account_key(&self) -> String {
        let mut key = String::with_capacity(self.local.len() + self.domain.len() + 8);
        for n in &self.node {
            key.push_str(n);
            key.push('/');
        }
        key.push_str(&self.local);
        key.push('@');
        key.push_str(&self.domain);
        key.make_ascii_lowercase();
        key
    }

    /// Do both name the same account (ignoring case and folder)?
    pub fn same_account(&self, other: &Address) -> bool {
        self.domain == other.domain
            && self.local.eq_ignore_ascii_case(&other.local)
            && self.node.len() == other.node.len()
            && self
                .node
                .iter()
                .zip(&other.node)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// Canonical IMID form: `node/local+folder@domain`.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.node {
            write!(f, "{n}/")?;
        }
        f.write_str(&self.local)?;
        if let Some(folder) = &self.folder {
            write!(f, "+{folder}")?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse_any(s)
    }
}

/// An IMMP reference: `[imid:]address[/mailbox[#message-id]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImidRef {
    /// The address part.
    pub address: Address,
    /// The mailbox (folder path) after the domain, if any.
    pub mailbox: Option<String>,
    /// The message id after `#`, if any.
    pub message_id: Option<String>,
    /// Whether the text carried the `imid:` scheme prefix.
    pub prefixed: bool,
}

impl ImidRef {
    /// Parse an IMID reference.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        check_len(s)?;
        let (prefixed, rest) = match s.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("imid:") => (true, &s[5..]),
            _ => (false, s),
        };
        let (user, after_at) = rest.split_once('@').ok_or(AddressError::MissingAt)?;
        let (domain, suffix) = match after_at.find(['/', '#']) {
            Some(i) => (&after_at[..i], Some(&after_at[i..])),
            None => (after_at, None),
        };
        if !valid_domain(domain) {
            return Err(AddressError::BadDomain(domain.to_owned()));
        }
        let (path, folder) = match user.split_once('+') {
            Some((p, f)) => {
                if !valid_folder(f) {
                    return Err(AddressError::BadFolder(f.to_owned()));
                }
                (p, Some(f.to_owned()))
            }
            None => (user, None),
        };
        let mut segments: Vec<String> = Vec::new();
        for seg in path.split('/') {
            if !valid_local(seg) {
                return Err(AddressError::BadLocal(seg.to_owned()));
            }
            segments.push(seg.to_owned());
        }
        let local = segments
            .pop()
            .ok_or(AddressError::BadLocal(String::new()))?;
        let (mailbox, message_id) = match suffix {
            None => (None, None),
            Some(sfx) => {
                let (mbox, id) = match sfx.split_once('#') {
                    Some((m, id)) => (m, Some(id)),
                    None => (sfx, None),
                };
                let mailbox = match mbox.strip_prefix('/') {
                    Some(m) if valid_folder(m) => Some(m.to_owned()),
                    Some(m) => return Err(AddressError::BadFolder(m.to_owned())),
                    None if mbox.is_empty() => None,
                    None => return Err(AddressError::TrailingText(mbox.to_owned())),
                };
                let message_id = match id {
                    Some(id)
                        if !id.is_empty()
                            && id.len() <= 128
                            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                    {
                        Some(id.to_owned())
                    }
                    Some(id) => return Err(AddressError::TrailingText(format!("#{id}"))),
                    None => None,
                };
                (mailbox, message_id)
            }
        };
        Ok(ImidRef {
            address: Address {
                node: segments,
                local,
                domain: domain.to_ascii_lowercase(),
                folder,
            },
            mailbox,
            message_id,
            prefixed,
        })
    }
}

impl fmt::Display for ImidRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefixed {
            f.write_str("imid:")?;
        }
        write!(f, "{}", self.address)?;
        if let Some(m) = &self.mailbox {
            write!(f, "/{m}")?;
        }
        if let Some(id) = &self.message_id {
            write!(f, "#{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mmtp_examples() {
        let a = Address::parse_mmtp("(alice)%(Example.COM)").unwrap();
        assert_eq!(a.local, "alice");
        assert_eq!(a.domain, "example.com");
        assert_eq!(a.to_mmtp().unwrap(), "(alice)%(example.com)");
        assert_eq!(a.to_string(), "alice@example.com");
    }

    #[test]
    fn mmtp_rejections_name_the_reason() {
        assert_eq!(Address::parse_mmtp(""), Err(AddressError::Empty));
        assert_eq!(
            Address::parse_mmtp("alice@example.com"),
            Err(AddressError::NotMmtp)
        );
        assert_eq!(
            Address::parse_mmtp("(al ice)%(example.com)"),
            Err(AddressError::BadLocal("al ice".into()))
        );
        assert_eq!(
            Address::parse_mmtp("(alice)%(exa_mple.com)"),
            Err(AddressError::BadDomain("exa_mple.com".into()))
        );
        assert_eq!(
            Address::parse_mmtp("()%(example.com)"),
            Err(AddressError::BadLocal("".into()))
        );
        assert!(Address::parse_mmtp("(a)%(b)%(c)").is_err());
        assert!(Address::parse_mmtp("(alice)%(example.com) ").is_err());
        assert_eq!(
            Address::parse_mmtp(&"x".repeat(2000)),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn imid_forms() {
        let a = Address::parse_imid("alice+receipts@example.com").unwrap();
        assert_eq!(a.folder.as_deref(), Some("receipts"));
        assert_eq!(a.account_key(), "alice@example.com");
        let h = Address::parse_imid("helpdesk/Alice@Domain.com").unwrap();
        assert_eq!(h.node, vec!["helpdesk".to_string()]);
        assert_eq!(h.local, "Alice");
        assert_eq!(h.account_key(), "helpdesk/alice@domain.com");
        assert_eq!(h.to_string(), "helpdesk/Alice@domain.com");
        assert!(h.to_mmtp().is_err());

        let r = ImidRef::parse("imid:alice@domain.com/INBOX#619b982c-f9b4-4263-bbc7-755afc7710dd")
            .unwrap();
        assert!(r.prefixed);
        assert_eq!(r.mailbox.as_deref(), Some("INBOX"));
        assert_eq!(
            r.message_id.as_deref(),
            Some("619b982c-f9b4-4263-bbc7-755afc7710dd")
        );
        assert!(Address::parse_imid("imid:alice@domain.com").is_err());
    }

    #[test]
    fn imid_rejections_name_the_reason() {
        assert_eq!(
            Address::parse_imid("alice.example.com"),
            Err(AddressError::MissingAt)
        );
        assert_eq!(
            Address::parse_imid("alice+@example.com"),
            Err(AddressError::BadFolder("".into()))
        );
        assert_eq!(
            Address::parse_imid("/alice@example.com"),
            Err(AddressError::BadLocal("".into()))
        );
        assert_eq!(
            Address::parse_imid("alice@"),
            Err(AddressError::BadDomain("".into()))
        );
        assert!(Address::parse_imid("alice@example.com/INBOX").is_err());
        assert!(ImidRef::parse("alice@example.com/INBOX#bad id").is_err());
        assert!(ImidRef::parse("alice@example.com/IN BOX").is_err());
    }

    #[test]
    fn xhmtp_forms() {
        let a = Address::parse_xhmtp("bob@B.example").unwrap();
        assert_eq!(a.to_xhmtp().unwrap(), "bob@b.example");
        assert_eq!(
            Address::parse_xhmtp("bob+x@b.example"),
            Err(AddressError::NotRepresentable("XHMTP"))
        );
        assert_eq!(Address::parse_xhmtp("bob"), Err(AddressError::MissingAt));
        assert!(Address::parse_xhmtp("bob@b@c").is_err());
    }

    #[test]
    fn same_account_across_families() {
        let m = Address::parse_mmtp("(alice)%(example.com)").unwrap();
        let i = Address::parse_imid("Alice+work@EXAMPLE.com").unwrap();
        let x = Address::parse_xhmtp("alice@example.com").unwrap();
        assert!(m.same_account(&i));
        assert!(i.same_account(&x));
        assert_eq!(m.account_key(), i.account_key());
    }

    fn local() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,64}".prop_filter("not a dot segment", |s| !is_dot_segment(s))
    }
    fn domain() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9.-]{1,60}"
    }
    #[test]
    fn internet_mailboxes_take_what_smtp_carries() {
        for good in [
            "bounces+id=42@lists.example",
            "o'brien@b.test",
            "jürgen@b.test",
            "a.b-c@b.test",
        ] {
            let a = Address::parse_mailbox(good).unwrap();
            assert_eq!(a.to_string(), good);
        }
        // A local account's plus-folder stays a folder.
        assert_eq!(
            Address::parse_mailbox("alice+Receipts@a.test")
                .unwrap()
                .folder
                .as_deref(),
            Some("Receipts")
        );
        // What a local account's address (an IMID) may be is taken as it is, even where RFC 5321
        // would not write it so (`a..b`, `.a`): such an account can exist and must get its mail.
        for imid in ["a..b@b.test", ".a@b.test"] {
            assert_eq!(Address::parse_mailbox(imid).unwrap().to_string(), imid);
        }
        for bad in ["a b@b.test", "a@b@", "a\u{7}@b.test", "@b.test"] {
            assert!(Address::parse_mailbox(bad).is_err(), "{bad}");
        }
        // MMTP's regex has no room for them.
        assert!(Address::parse_mailbox("x=y@b.test")
            .unwrap()
            .to_mmtp()
            .is_err());
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        for bad in [
            "../alice@a.test",
            "./alice@a.test",
            "a//alice@a.test",
            "alice+..@a.test",
            "alice+INBOX/../x@a.test",
            "alice+INBOX//x@a.test",
            "alice+@a.test",
            "..@a.test",
        ] {
            assert!(Address::parse_imid(bad).is_err(), "{bad}");
        }
        assert!(valid_folder("INBOX/Lists.old"));
        assert!(!valid_folder("INBOX/.."));
        assert!(!valid_folder("./x"));
    }

    fn folder() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,12}(/[a-zA-Z0-9._-]{1,12}){0,2}".prop_filter("no dot segments", |s| {
            s.split('/').all(|g| !is_dot_segment(g))
        })
    }

    proptest! {
        #[test]
        fn mmtp_round_trip(l in local(), d in domain()) {
            let text = format!("({l})%({d})");
            let a = Address::parse_mmtp(&text).unwrap();
            prop_assert_eq!(a.to_mmtp().unwrap(), format!("({l})%({})", d.to_ascii_lowercase()));
            prop_assert_eq!(Address::parse_mmtp(&a.to_mmtp().unwrap()).unwrap(), a);
        }

        #[test]
        fn imid_round_trip(nodes in proptest::collection::vec(local(), 0..3), l in local(),
                           f in proptest::option::of(folder()), d in domain(),
                           mbox in proptest::option::of(folder()),
                           id in proptest::option::of("[a-f0-9-]{1,36}"), prefixed: bool) {
            let a = Address { node: nodes, local: l, domain: d.to_ascii_lowercase(), folder: f };
            let r = ImidRef { address: a.clone(), mailbox: mbox, message_id: id, prefixed };
            prop_assert_eq!(ImidRef::parse(&r.to_string()).unwrap(), r);
            prop_assert_eq!(Address::parse_imid(&a.to_string()).unwrap(), a);
        }

        #[test]
        fn xhmtp_round_trip(l in local(), d in domain()) {
            let a = Address::parse_xhmtp(&format!("{l}@{d}")).unwrap();
            prop_assert_eq!(Address::parse_xhmtp(&a.to_xhmtp().unwrap()).unwrap(), a);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}") {
            let _ = Address::parse_mmtp(&s);
            let _ = Address::parse_imid(&s);
            let _ = Address::parse_xhmtp(&s);
            let _ = ImidRef::parse(&s);
        }

        #[test]
        fn mmtp_parser_matches_the_spec_regex(s in "[()%a-z.@_ -]{0,20}") {
            let re_like = s.starts_with('(') && s.ends_with(')') && {
                let inner = &s[1..s.len()-1];
                match inner.split_once(")%(") {
                    Some((l, d)) => !l.is_empty() && !d.is_empty()
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                        && d.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b)),
                    None => false,
                }
            };
            prop_assert_eq!(Address::parse_mmtp(&s).is_ok(), re_like);
        }
    }
}
