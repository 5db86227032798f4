//! The axum routes of the XHMTP front-end (the profile is docs/protocols/xhmtp.md):
//!
//! | route | what |
//! |---|---|
//! | `GET /<prefix>` | service document |
//! | `POST /<prefix>/submit` | a local account submits (Basic auth, JSON) |
//! | `POST /<prefix>/<user@domain>` | a peer notifies a local account |
//! | `GET /<prefix>/<user@domain>/feed` | the account's RSS feed (Basic auth) |
//! | `GET, PUT /<prefix>/<user@domain>/filters` | the account's notification filters |
//! | `GET /<prefix>/<sender-local>/<id>` | a hosted message (access code or sender's password) |
//! | `GET /<prefix>/<user@domain>/inbox/<id>` | a message in the account's mailbox (Basic auth) |
//!
//! Every error is JSON (`{"error", "message"}`). Handlers expect the connection's peer address
//! as `ConnectInfo<SocketAddr>` in the request extensions (the gateway's HTTP glue adds it).

use crate::access;
use crate::auth::{basic, Basic};
use crate::error::ApiError;
use crate::feed::{self, FeedItem};
use crate::filters::{Filters, FILTERS_SETTING};
use crate::service::Xhmtp;
use crate::wire::{self, MessageJson, NotifyRequest, SubmitRequest, SubmitResponse};
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mailgate_core::store::{Account, EntryQuery, NewNotification};
use mailgate_core::{Address, MessageId, Origin, Reservation, SubmitError, Submitter};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

type Shared = State<Arc<Xhmtp>>;
type Peer = ConnectInfo<SocketAddr>;

/// The router for the XHMTP listeners.
pub fn router(x: Arc<Xhmtp>) -> Router {
    let p = x.config.prefix.clone();
    Router::new()
        .route(&format!("/{p}"), get(service))
        .route(&format!("/{p}/submit"), post(submit))
        .route(&format!("/{p}/{{user}}"), post(notify))
        .route(&format!("/{p}/{{user}}/feed"), get(feed))
        .route(
            &format!("/{p}/{{user}}/filters"),
            get(get_filters).put(put_filters),
        )
        .route(&format!("/{p}/{{user}}/{{id}}"), get(message))
        .route(&format!("/{p}/{{user}}/inbox/{{id}}"), get(inbox_message))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(x)
}

/// Path parameters, with a JSON `400` (not axum's plain-text one) when a segment is not UTF-8.
struct Segments<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Segments(v))
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
    }
}

async fn service(State(x): Shared) -> Json<Value> {
    let mut domains: Vec<&String> = x.core.policy.local_domains.iter().collect();
    domains.sort();
    Json(json!({
        "service": "xhmtp",
        "server": "mailgate",
        "prefix": x.config.prefix,
        "domains": domains,
        "max_message_size": x.core.policy.max_message_size,
    }))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not support that method",
    )
}

/// Read at most `limit` bytes of `body` within the body time limit, holding memory for it in
/// the gateway's body budget, and parse it as JSON. The reservation is handed back with the
/// value: keep it while the value is in use.
async fn json_body<T: DeserializeOwned>(
    x: &Xhmtp,
    body: Body,
    limit: usize,
) -> Result<(T, Reservation), ApiError> {
    let timeout = std::time::Duration::from_secs(x.config.body_timeout_secs);
    let read = tokio::time::timeout(timeout, read_body(x, body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("request body not received within {timeout:?}"),
            )
            .closing()
        })??;
    let (bytes, reservation) = read;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))?;
    Ok((value, reservation))
}

/// Collect a body frame by frame, reserving budget before each frame is kept.
async fn read_body(
    x: &Xhmtp,
    body: Body,
    limit: usize,
) -> Result<(Vec<u8>, Reservation), ApiError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds {limit} bytes"),
        )
        .closing()
    };
    let mut reservation = x.core.budget.start();
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request("bad_body", format!("request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = out.len() + data.len();
        if len > limit {
            return Err(too_large());
        }
        reservation
            .grow_to(len)
            .await
            .map_err(|e| ApiError::busy(&e.to_string()).closing())?;
        out.extend_from_slice(&data);
    }
    Ok((out, reservation))
}

/// Log in as a local account; with `owner`, only as that account.
async fn login(
    x: &Xhmtp,
    peer: SocketAddr,
    headers: &HeaderMap,
    owner: Option<&Address>,
) -> Result<Account, ApiError> {
    let creds = basic(headers)?;
    let account = x.logins.login(&x.core, peer.ip(), &creds).await?;
    match owner {
        Some(o) if !account.address.same_account(o) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "these credentials are for another account",
        )),
        _ => Ok(account),
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    let status = match &e {
        SubmitError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SubmitError::NoRecipients | SubmitError::TooManyRecipients(..) => StatusCode::BAD_REQUEST,
        SubmitError::RelayDenied(_)
        | SubmitError::SenderMismatch(_)
        | SubmitError::LocalSenderUnauthenticated(_) => StatusCode::FORBIDDEN,
        SubmitError::UnknownRecipient(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SubmitError::StampSpent => StatusCode::CONFLICT,
        SubmitError::Store(_) => return ApiError::unavailable(&e),
    };
    ApiError::new(status, e.reason(), e.to_string())
}

async fn submit(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !x.core.limiter.check(&peer.ip()) {
        return Err(ApiError::rate_limited());
    }
    let account = login(&x, peer, &headers, None).await?;
    let (req, _budget): (SubmitRequest, _) = json_body(&x, body, x.config.max_body_bytes).await?;
    let message = req
        .into_message(account.address.clone())
        .map_err(|e| ApiError::bad_request("invalid_message", e.to_string()))?;
    let id = message.id;
    let recipients: Vec<String> = message
        .recipients
        .iter()
        .map(wire::format_address)
        .collect();
    let origin = Origin {
        protocol: crate::service::PROTOCOL,
        submitter: Submitter::Account(account),
    };
    let receipt = x
        .core
        .submit(message, &origin, None)
        .await
        .map_err(submit_error)?;
    let answer = SubmitResponse {
        id: id.to_string(),
        recipients,
        notified: receipt.queued.iter().map(wire::format_address).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The local account a path names, or `404`.
async fn local_account(x: &Xhmtp, user: &str) -> Result<Account, ApiError> {
    let shown: String = user.chars().take(256).collect();
    let missing = || ApiError::not_found(format!("no such recipient here: {shown}"));
    let address = Address::parse_xhmtp(user).map_err(|_| missing())?;
    if !x.core.policy.is_local(&address.domain) {
        return Err(missing());
    }
    x.core.store.account(&address).await?.ok_or_else(missing)
}

/// The checked parts of a notification's message URL.
/// A notification check that could not run because our own DNS look-up of `name` failed:
/// `503` with `Retry-After`, so the notifier retries instead of bouncing.
fn dns_unavailable(x: &Xhmtp, name: &str, e: &str) -> ApiError {
    tracing::info!(name, error = %e, "xhmtp: a notification check could not run");
    x.core.metrics.event("xhmtp_notify_in", "dns_unavailable");
    ApiError::busy(&format!("cannot look up {name} now; retry later"))
}

/// A notification's message URL, checked.
pub struct MessageUrl {
    /// The host the notifier must be an address of.
    pub host: String,
}

/// Check a notification's message URL for `recipient`: http(s), a host, the recipient as its
/// user name, at most 2048 bytes. Every refusal is a `400 bad_url`.
pub fn check_url(raw: &str, recipient: &Address) -> Result<MessageUrl, ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_url", m);
    if raw.len() > 2048 {
        return Err(bad("the message URL is longer than 2048 bytes".into()));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(format!("the message URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the message URL must be http or https".into()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad("the message URL has no host".into()))?
        .to_owned();
    let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
    let named = Address::parse_xhmtp(&user).ok();
    if !named.is_some_and(|n| n.same_account(recipient)) {
        return Err(bad(format!(
            "the message URL's user name must be the recipient {}",
            wire::format_address(recipient)
        )));
    }
    if url.password().is_none_or(str::is_empty) {
        return Err(bad("the message URL carries no access code".into()));
    }
    if url.path_segments().is_none_or(|s| s.count() < 2) {
        return Err(bad("the message URL has no message path".into()));
    }
    Ok(MessageUrl { host })
}

async fn filters_of(x: &Xhmtp, account: &Account) -> Result<Filters, ApiError> {
    Ok(x.core
        .store
        .setting(account.id, FILTERS_SETTING)
        .await?
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or_default())
}

async fn notify(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    Segments(user): Segments<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let result = accept_notification(&x, peer, &user, body).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.code,
    };
    x.core.metrics.event("xhmtp_notify_in", outcome);
    result
}

async fn accept_notification(
    x: &Xhmtp,
    peer: SocketAddr,
    user: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let account = local_account(x, user).await?;
    let (req, _budget): (NotifyRequest, _) =
        json_body(x, body, x.config.max_notification_bytes).await?;
    let url = check_url(&req.url, &account.address)?;
    let sender = req
        .from
        .as_deref()
        .map(wire::parse_address)
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_sender", e.to_string()))?;
    let date = req
        .date
        .as_deref()
        .map(wire::parse_date)
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_date", e.to_string()))?;
    let forbidden = |code, m: String| ApiError::new(StatusCode::FORBIDDEN, code, m);
    match x.locator.host_has(&url.host, peer.ip()).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(forbidden(
                "notifier_mismatch",
                format!(
                    "{} is not an address of {} (the message URL's host)",
                    peer.ip(),
                    url.host
                ),
            ))
        }
        // Our own look-up failed: nothing is known about the notifier yet; the peer retries.
        Err(e) => return Err(dns_unavailable(x, &url.host, &e)),
    }
    // The sender's domain must host the message: the URL's host is the domain or one of its
    // XHMTP servers. Otherwise anyone could announce mail "from" any domain from their own host.
    if let Some(from) = &sender {
        match x.locator.hosts_domain(&url.host, &from.domain).await {
            Ok(true) => {}
            Ok(false) => {
                x.core
                    .metrics
                    .event("xhmtp_notify_in", "sender_domain_mismatch");
                return Err(forbidden(
                    "sender_mismatch",
                    format!(
                        "{} is not a server of {} (the sender's domain): neither the domain itself nor an _xhmtp._tcp target",
                        url.host, from.domain
                    ),
                ));
            }
            Err(e) => return Err(dns_unavailable(x, &from.domain, &e)),
        }
    }
    filters_of(x, &account)
        .await?
        .admit(sender.as_ref())
        .map_err(|m| forbidden("filtered", m.to_owned()))?;
    if !x.notify_limit.check(&peer.ip()) {
        return Err(ApiError::rate_limited());
    }
    if let Some(size) = req.size {
        let max = x.core.policy.max_message_size;
        if size > max as u64 {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the message is {size} bytes; this server accepts at most {max}"),
            ));
        }
    }
    let (stored, created) = x
        .core
        .store
        .put_notification(NewNotification {
            account: account.id,
            url: req.url,
            sender,
            subject: req.subject,
            date,
            size: req.size,
            peer: peer.ip().to_string(),
        })
        .await?;
    if created {
        x.fetch_wake.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": stored.id,
            "status": if created { "accepted" } else { "duplicate" },
        })),
    )
        .into_response())
}

async fn feed(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    Segments(user): Segments<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let account = local_account(&x, &user).await?;
    login(&x, peer, &headers, Some(&account.address)).await?;
    let items = feed_items(&x, &account, &user).await?;
    let link = format!("{}{}", x.base_url, x.path(&[&user, "feed"]));
    let feed = feed::render(&wire::format_address(&account.address), &link, &items);
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(v) => v.to_str().is_ok_and(|v| feed::etag_matches(v, &feed.etag)),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| feed::not_modified_since(v, feed.last_modified)),
    };
    x.core.metrics.event(
        "xhmtp_feed",
        if not_modified { "not_modified" } else { "ok" },
    );
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/rss+xml; charset=utf-8"),
            )],
            feed.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&feed.etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(lm) = feed.last_modified {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm)) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(resp)
}

/// The newest notifications and INBOX messages of `account`, merged, newest first. INBOX
/// copies of fetched notifications are represented by their notification.
async fn feed_items(x: &Xhmtp, account: &Account, user: &str) -> Result<Vec<FeedItem>, ApiError> {
    let limit = x.config.feed_items;
    let store = &x.core.store;
    let notes = store.notifications(account.id, limit).await?;
    let entries = store
        .entries(
            account.id,
            mailgate_core::mailbox::INBOX,
            EntryQuery {
                limit: Some(limit),
                newest_first: true,
                ..EntryQuery::default()
            },
        )
        .await?;
    let copies: std::collections::HashSet<MessageId> =
        notes.iter().filter_map(|n| n.message).collect();
    let ids: Vec<MessageId> = entries
        .iter()
        .map(|e| e.message)
        .filter(|m| !copies.contains(m))
        .collect();
    let arrived: std::collections::HashMap<MessageId, i64> =
        entries.iter().map(|e| (e.message, e.added_at)).collect();
    let mut items: Vec<FeedItem> = notes.iter().map(FeedItem::from_notification).collect();
    for m in store.summaries(&ids).await? {
        let id = m.id.to_string();
        items.push(FeedItem {
            title: m.subject,
            link: format!("{}{}", x.base_url, x.path(&[user, "inbox", &id])),
            guid: id,
            date: m.received_at,
            arrived: arrived.get(&m.id).copied().unwrap_or(m.received_at),
            author: Some(wire::format_address(&m.sender)),
            size: Some(m.size),
            sender_unverified: m.sender_check.is_some_and(|c| !c.verified()),
        });
    }
    items.sort_by(|a, b| b.arrived.cmp(&a.arrived).then_with(|| b.guid.cmp(&a.guid)));
    items.truncate(limit as usize);
    Ok(items)
}

/// `GET /<prefix>/<user>/inbox/<id>`: a message in the account's mailbox, for the account.
async fn inbox_message(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    Segments((user, id)): Segments<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let account = local_account(&x, &user).await?;
    login(&x, peer, &headers, Some(&account.address)).await?;
    let missing = || ApiError::not_found("no such message in this mailbox");
    let id = wire::parse_id(&id).ok_or_else(missing)?;
    x.core
        .store
        .find_entry(account.id, id, None)
        .await?
        .ok_or_else(missing)?;
    let msg = x.core.store.message(id).await?.ok_or_else(missing)?;
    Ok(Json(MessageJson::from_message(&msg)).into_response())
}

async fn get_filters(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    Segments(user): Segments<String>,
    headers: HeaderMap,
) -> Result<Json<Filters>, ApiError> {
    let account = local_account(&x, &user).await?;
    login(&x, peer, &headers, Some(&account.address)).await?;
    Ok(Json(filters_of(&x, &account).await?))
}

async fn put_filters(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    Segments(user): Segments<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Filters>, ApiError> {
    let account = local_account(&x, &user).await?;
    login(&x, peer, &headers, Some(&account.address)).await?;
    let (filters, _budget): (Filters, _) = json_body(&x, body, 256 * 1024).await?;
    filters
        .validate()
        .map_err(|m| ApiError::bad_request("invalid_filters", m))?;
    let raw = serde_json::to_string(&filters).map_err(ApiError::unavailable)?;
    x.core
        .store
        .set_setting(account.id, FILTERS_SETTING, &raw)
        .await?;
    Ok(Json(filters))
}

async fn message(
    State(x): Shared,
    ConnectInfo(peer): Peer,
    Segments((sender_local, id)): Segments<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("no such message");
    let id = wire::parse_id(&id).ok_or_else(missing)?;
    let msg = x.core.store.message(id).await?.ok_or_else(missing)?;
    if !msg.sender.local.eq_ignore_ascii_case(&sender_local)
        || !x.core.policy.is_local(&msg.sender.domain)
    {
        return Err(missing());
    }
    let creds = basic(&headers)?;
    authorize_fetch(&x, peer, &creds, &msg).await?;
    x.core.metrics.event("xhmtp_serve", "ok");
    Ok(Json(MessageJson::from_message(&msg)).into_response())
}

/// A recipient with its access code, or the sender with its password.
async fn authorize_fetch(
    x: &Xhmtp,
    peer: SocketAddr,
    creds: &Basic,
    msg: &mailgate_core::Message,
) -> Result<(), ApiError> {
    let refused = || ApiError::unauthorized("wrong user name or access code");
    let who = Address::parse_any(&creds.user).map_err(|_| refused())?;
    if who.same_account(&msg.sender) {
        x.logins.login(&x.core, peer.ip(), creds).await?;
        return Ok(());
    }
    let grant = x
        .core
        .store
        .access(msg.id, &who)
        .await?
        .ok_or_else(refused)?;
    if !access::matches(&creds.password, &grant.code_hash) {
        x.core.metrics.event("xhmtp_serve", "bad_code");
        return Err(refused());
    }
    if grant.fetched_at.is_none() {
        x.core
            .store
            .mark_fetched(msg.id, &who, mailgate_core::message::now_ms())
            .await?;
    }
    Ok(())
}
