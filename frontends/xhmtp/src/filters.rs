//! Per-account notification filters: allow and deny lists of sender addresses or domains, and
//! "reject anonymous". An allow match always admits; otherwise a deny match (or `*`) refuses;
//! anonymous notifications are admitted unless the account rejects them.
//!
//! Stored as the account setting [`FILTERS_SETTING`] (JSON), set with `PUT /<prefix>/<user>/filters`.

use mailgate_core::Address;
use serde::{Deserialize, Serialize};

/// The account setting the filters are stored under.
pub const FILTERS_SETTING: &str = "xhmtp-filters";

/// Most entries in one list.
pub const MAX_ENTRIES: usize = 1000;

/// One account's filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Senders always admitted: `user@domain`, `domain`, or `*`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Senders refused unless allowed.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Refuse notifications without a sender.
    #[serde(default)]
    pub reject_anonymous: bool,
}

fn valid_entry(e: &str) -> bool {
    if e == "*" {
        return true;
    }
    match e.split_once('@') {
        Some(_) => Address::parse_xhmtp(e).is_ok(),
        None => Address::new("x", e).is_ok(),
    }
}

fn matches(entry: &str, sender: &Address) -> bool {
    entry == "*"
        || match entry.split_once('@') {
            Some((local, domain)) => {
                local.eq_ignore_ascii_case(&sender.local)
                    && domain.eq_ignore_ascii_case(&sender.domain)
            }
            None => entry.eq_ignore_ascii_case(&sender.domain),
        }
}

impl Filters {
    /// Refuse malformed entries and oversized lists.
    pub fn validate(&self) -> Result<(), String> {
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_ENTRIES {
                return Err(format!("{name}: at most {MAX_ENTRIES} entries"));
            }
            if let Some(bad) = list.iter().find(|e| !valid_entry(e)) {
                return Err(format!(
                    "{name}: {bad:?} is not an address, a domain or \"*\""
                ));
            }
        }
        Ok(())
    }

    /// `Err(reason)` when a notification from `sender` is refused.
    pub fn admit(&self, sender: Option<&Address>) -> Result<(), &'static str> {
        let Some(sender) = sender else {
            return if self.reject_anonymous {
                Err("this recipient refuses anonymous messages")
            } else {
                Ok(())
            };
        };
        if self.allow.iter().any(|e| matches(e, sender)) {
            return Ok(());
        }
        if self.deny.iter().any(|e| matches(e, sender)) {
            return Err("this recipient refuses messages from this sender");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse_xhmtp(s).unwrap()
    }

    #[test]
    fn allow_beats_deny() {
        let f = Filters {
            allow: vec!["friend@spam.test".into()],
            deny: vec!["spam.test".into(), "eve@b.test".into()],
            reject_anonymous: true,
        };
        assert!(f.validate().is_ok());
        assert!(f.admit(Some(&a("friend@spam.test"))).is_ok());
        assert!(f.admit(Some(&a("x@SPAM.test"))).is_err());
        assert!(f.admit(Some(&a("eve@b.test"))).is_err());
        assert!(f.admit(Some(&a("bob@b.test"))).is_ok());
        assert!(f.admit(None).is_err());
        let whitelist = Filters {
            allow: vec!["a.test".into()],
            deny: vec!["*".into()],
            reject_anonymous: false,
        };
        assert!(whitelist.admit(Some(&a("x@a.test"))).is_ok());
        assert!(whitelist.admit(Some(&a("x@c.test"))).is_err());
        assert!(whitelist.admit(None).is_ok());
        let bad = Filters {
            deny: vec!["not an entry".into()],
            ..Filters::default()
        };
        assert!(bad.validate().is_err());
    }
}
