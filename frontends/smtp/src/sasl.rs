//! The SASL responses of `AUTH PLAIN` (RFC 4616) and `AUTH LOGIN`, decoded from base64.

use base64::Engine;

/// Why a response was refused (501 5.5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not base64, or not UTF-8 inside.
    #[error("the response is not base64 of UTF-8 text")]
    Encoding,
    /// PLAIN without its three NUL-separated fields.
    #[error("PLAIN wants authzid NUL authcid NUL password")]
    Fields,
    /// PLAIN naming an identity to act as other than the one logging in.
    #[error("acting as another identity is not supported")]
    OtherIdentity,
}

/// Longest response taken (a user name and a password, base64).
pub const MAX_RESPONSE: usize = 2048;

/// One base64 field; `=` is the empty response (RFC 4954 §4).
pub fn field(b64: &str) -> Result<String, SaslError> {
    let b64 = b64.trim();
    if b64 == "=" {
        return Ok(String::new());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SaslError::Encoding)?;
    String::from_utf8(raw).map_err(|_| SaslError::Encoding)
}

/// A PLAIN response: the user name and the password.
pub fn plain(b64: &str) -> Result<(String, String), SaslError> {
    let text = field(b64)?;
    let mut parts = text.split('\0');
    let (Some(authz), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Fields);
    };
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
        return Err(SaslError::OtherIdentity);
    }
    Ok((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_and_login_responses() {
        assert_eq!(
            plain(&b64(b"\0alice@a.test\0pw")).unwrap(),
            ("alice@a.test".into(), "pw".into())
        );
        assert_eq!(
            plain(&b64(b"alice@a.test\0alice@a.test\0pw")).unwrap().0,
            "alice@a.test"
        );
        assert_eq!(
            plain(&b64(b"bob@a.test\0alice@a.test\0pw")),
            Err(SaslError::OtherIdentity)
        );
        assert_eq!(plain(&b64(b"alice\0pw")), Err(SaslError::Fields));
        assert_eq!(plain("!!!"), Err(SaslError::Encoding));
        assert_eq!(field("=").unwrap(), "");
        assert_eq!(field(&b64(b"alice@a.test")).unwrap(), "alice@a.test");
        assert_eq!(field(&b64(&[0xff, 0xfe])), Err(SaslError::Encoding));
    }
}
