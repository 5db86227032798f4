//! The RSS 2.0 feed of an account's notifications (the `rss` crate writes the XML), with the
//! validators feed readers poll with: a strong `ETag` over the body and `Last-Modified` from
//! the newest item.

use mailgate_core::store::Notification;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A rendered feed.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The XML.
    pub body: Vec<u8>,
    /// `"<hex>"`.
    pub etag: String,
    /// Newest item's arrival, whole seconds.
    pub last_modified: Option<SystemTime>,
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The id a notification names: the last path segment of its message URL.
pub fn guid(n: &Notification) -> String {
    url::Url::parse(&n.notice.url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_owned))
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("notification-{}", n.id))
}

/// Render `items` (newest first) as the feed of `account` at `link`.
pub fn render(account: &str, link: &str, items: &[Notification]) -> Feed {
    let mut channel = rss::Channel::default();
    channel.set_title(format!("Messages for {account}"));
    channel.set_link(link.to_owned());
    channel.set_description(format!(
        "XHMTP notifications received for {account}, newest first"
    ));
    channel.set_generator(Some("mailgate".to_owned()));
    let newest = items.iter().map(|n| n.received_at).max();
    if let Some(ms) = newest {
        channel.set_last_build_date(Some(httpdate::fmt_http_date(time(ms))));
    }
    channel.set_items(
        items
            .iter()
            .map(|n| {
                let mut item = rss::Item::default();
                item.set_title(Some(
                    n.notice
                        .subject
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "(no subject)".to_owned()),
                ));
                item.set_link(Some(n.notice.url.clone()));
                let mut guid = rss::Guid::default();
                guid.set_value(self::guid(n));
                guid.set_permalink(false);
                item.set_guid(Some(guid));
                item.set_pub_date(Some(httpdate::fmt_http_date(time(
                    n.notice.date.unwrap_or(n.received_at),
                ))));
                if let Some(sender) = &n.notice.sender {
                    item.set_author(Some(crate::wire::format_address(sender)));
                }
                let size = n
                    .notice
                    .size
                    .map(|s| format!(", {s} bytes"))
                    .unwrap_or_default();
                let from = n.notice.sender.as_ref().map_or_else(
                    || "an anonymous sender".to_owned(),
                    crate::wire::format_address,
                );
                item.set_description(Some(format!("Message from {from}{size}")));
                item
            })
            .collect::<Vec<_>>(),
    );
    let body = channel
        .write_to(Vec::new())
        .unwrap_or_else(|_| b"<?xml version=\"1.0\"?><rss version=\"2.0\"/>".to_vec());
    let digest = Sha256::digest(&body);
    Feed {
        etag: format!("\"{}\"", hex::encode(&digest[..16])),
        last_modified: newest.map(|ms| time(ms / 1000 * 1000)),
        body,
    }
}

/// Does `If-None-Match` name `etag` (or `*`)?
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/") == etag
    })
}

/// Is the feed unchanged since `If-Modified-Since`?
pub fn not_modified_since(if_modified_since: &str, last_modified: Option<SystemTime>) -> bool {
    match (httpdate::parse_http_date(if_modified_since), last_modified) {
        (Ok(since), Some(lm)) => lm <= since,
        _ => false,
    }
}
