//! HTTP Basic credentials: parsing, and account logins with a short-lived cache (feed readers
//! poll, and argon2 is deliberately slow; a cached login is keyed by the stored password hash,
//! so changing the password ends it).

use crate::error::ApiError;
use crate::service::PROTOCOL;
use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mailgate_core::store::Account;
use mailgate_core::{Address, Core, LoginError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `user:password` from an `Authorization: Basic` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Basic {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Parse the `Authorization` header; every malformation is a `401` naming it.
pub fn basic(headers: &HeaderMap) -> Result<Basic, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("credentials required (HTTP Basic)"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Authorization header has no credentials"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::unauthorized("only the Basic scheme is supported"));
    }
    let raw = STANDARD
        .decode(token.trim())
        .map_err(|_| ApiError::unauthorized("Basic credentials are not base64"))?;
    let text = String::from_utf8(raw)
        .map_err(|_| ApiError::unauthorized("Basic credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| ApiError::unauthorized("Basic credentials lack a ':'"))?;
    Ok(Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

const TTL: Duration = Duration::from_secs(300);
const MAX_ENTRIES: usize = 10_000;

/// Recently verified logins.
#[derive(Default)]
pub struct LoginCache(Mutex<HashMap<[u8; 32], Instant>>);

fn cache_key(account: &Account, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(account.address.account_key().as_bytes());
    h.update([0]);
    h.update(account.password_hash.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

impl LoginCache {
    /// Check `basic` as a local account's login.
    /// A wrong password answers `401` with `Connection: close`; a banned peer or account `429`.
    pub async fn login(
        &self,
        core: &Core,
        peer: IpAddr,
        basic: &Basic,
    ) -> Result<Account, ApiError> {
        let refused = || ApiError::unauthorized("wrong user name or password").closing();
        let Ok(address) = Address::parse_any(&basic.user) else {
            core.login_failed(PROTOCOL, peer, &basic.user);
            return Err(refused());
        };
        let account = match core.store.account(&address).await? {
            Some(a) if core.policy.is_local(&address.domain) => a,
            _ => {
                core.login_allowed(PROTOCOL, peer, &address.account_key())
                    .map_err(login_error)?;
                core.login_failed(PROTOCOL, peer, &address.account_key());
                return Err(refused());
            }
        };
        let key = cache_key(&account, &basic.password);
        let now = Instant::now();
        if let Ok(map) = self.0.lock() {
            if map.get(&key).is_some_and(|t| now.duration_since(*t) < TTL) {
                return Ok(account);
            }
        }
        let account = core
            .password_login(PROTOCOL, peer, &address, &basic.password)
            .await
            .map_err(login_error)?;
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, t| now.duration_since(*t) < TTL);
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert(key, now);
        }
        Ok(account)
    }
}

/// A refused login as an HTTP answer.
fn login_error(e: LoginError) -> ApiError {
    match e {
        LoginError::Refused => ApiError::unauthorized("wrong user name or password").closing(),
        LoginError::Throttled(wait) => ApiError::rate_limited_for(wait, &e.to_string()),
        LoginError::Busy => ApiError::busy(&e.to_string()),
        LoginError::Store(s) => ApiError::unavailable(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn parses_and_refuses() {
        let ok = basic(&with(&format!(
            "Basic {}",
            STANDARD.encode("bob@b.test:s3:cret")
        )))
        .unwrap();
        assert_eq!(ok.user, "bob@b.test");
        assert_eq!(ok.password, "s3:cret");
        assert!(basic(&with(&format!("basic {}", STANDARD.encode("a:b")))).is_ok());
        for bad in ["Bearer abc", "Basic", "Basic !!!!", "Basic Ym9i"] {
            let e = basic(&with(bad)).unwrap_err();
            assert_eq!(e.status, 401, "{bad}");
        }
        assert_eq!(basic(&HeaderMap::new()).unwrap_err().status, 401);
        let not_utf8 = format!("Basic {}", STANDARD.encode([0xff, b':', b'x']));
        assert_eq!(basic(&with(&not_utf8)).unwrap_err().status, 401);
    }
}
