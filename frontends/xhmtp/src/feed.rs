//! The RSS 2.0 feed of an account (the `rss` crate writes the XML): one item per XHMTP
//! notification (linking to the sender's server) and per other INBOX message (linking to
//! `/<prefix>/<user>/inbox/<id>` here), with the validators feed readers poll with: a strong
//! `ETag` over the body and `Last-Modified` from the newest item.

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

/// One feed item, from a notification or from a message in the INBOX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    /// Subject.
    pub title: String,
    /// Where the reader fetches the message.
    pub link: String,
    /// The message id.
    pub guid: String,
    /// The sender's date, ms.
    pub date: i64,
    /// When it arrived here, ms (the order and `Last-Modified`).
    pub arrived: i64,
    /// Sender, unless anonymous.
    pub author: Option<String>,
    /// Size, bytes, when known.
    pub size: Option<u64>,
    /// Nothing tied the sender's address to whoever handed the message over.
    pub sender_unverified: bool,
}

/// The id a notification names: the last path segment of its message URL.
pub fn notification_guid(n: &Notification) -> String {
    url::Url::parse(&n.notice.url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_owned))
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("notification-{}", n.id))
}

impl FeedItem {
    /// The item of a notification: its link is the sender's message URL.
    pub fn from_notification(n: &Notification) -> Self {
        FeedItem {
            title: n.notice.subject.clone().unwrap_or_default(),
            link: n.notice.url.clone(),
            guid: notification_guid(n),
            date: n.notice.date.unwrap_or(n.received_at),
            arrived: n.received_at,
            author: n.notice.sender.as_ref().map(crate::wire::format_address),
            size: n.notice.size,
            // A named sender's domain was checked to host the message.
            sender_unverified: false,
        }
    }
}

/// Render `items` (newest first) as the feed of `account` at `link`.
pub fn render(account: &str, link: &str, items: &[FeedItem]) -> Feed {
    let mut channel = rss::Channel::default();
    channel.set_title(format!("Messages for {account}"));
    channel.set_link(link.to_owned());
    channel.set_description(format!(
        "Mail and notifications for {account}, newest first"
    ));
    channel.set_generator(Some("mailgate".to_owned()));
    let newest = items.iter().map(|n| n.arrived).max();
    if let Some(ms) = newest {
        channel.set_last_build_date(Some(httpdate::fmt_http_date(time(ms))));
    }
    channel.set_items(
        items
            .iter()
            .map(|n| {
                let mut item = rss::Item::default();
                let title = if n.title.is_empty() {
                    "(no subject)".to_owned()
                } else {
                    n.title.clone()
                };
                item.set_title(Some(title));
                item.set_link(Some(n.link.clone()));
                let mut guid = rss::Guid::default();
                guid.set_value(n.guid.clone());
                guid.set_permalink(false);
                item.set_guid(Some(guid));
                item.set_pub_date(Some(httpdate::fmt_http_date(time(n.date))));
                item.set_author(n.author.clone());
                let size = n.size.map(|s| format!(", {s} bytes")).unwrap_or_default();
                let from = n.author.as_deref().unwrap_or("an anonymous sender");
                let mark = if n.sender_unverified {
                    " (sender not verified)"
                } else {
                    ""
                };
                item.set_description(Some(format!("Message from {from}{mark}{size}")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_senders_are_marked_in_the_feed() {
        let item = |unverified| FeedItem {
            title: "t".into(),
            link: "http://x/".into(),
            guid: "g".into(),
            date: 0,
            arrived: 0,
            author: Some("carol@elsewhere.test".into()),
            size: None,
            sender_unverified: unverified,
        };
        let text = |f: Feed| String::from_utf8(f.body).unwrap();
        assert!(text(render("bob", "http://x/", &[item(true)])).contains("(sender not verified)"));
        assert!(!text(render("bob", "http://x/", &[item(false)])).contains("not verified"));
    }
}
