//! A logged-in node's delivery loop: the head of its queue is sent, then nothing else until
//! the node acknowledges it (sent again after the ack timeout, and on the next login when the
//! link drops first); the acknowledgement is committed before the next message goes out.

use crate::render;
use crate::TmtpServer;
use bytes::Bytes;
use mailgate_core::store::tmtp::{NodeId, TmtpPayload, TmtpQueued};
use mailgate_core::store::AccountId;
use mailgate_core::Address;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The account setting that says who outside the member's site may reach its nodes.
pub const REACH_SETTING: &str = "tmtp.reach";

/// Who may reach a member's nodes (the `tmtp.reach` account setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only TMTP members of this site (the default: TMTP is members-only).
    Members,
    /// Any account of this gateway's domains.
    Local,
    /// Anyone whose mail reaches the INBOX.
    Anyone,
}

impl Reach {
    /// Parse the setting's value.
    pub fn parse(s: &str) -> Option<Reach> {
        match s {
            "members" => Some(Reach::Members),
            "local" => Some(Reach::Local),
            "anyone" => Some(Reach::Anyone),
            _ => None,
        }
    }
}

/// What a delivery loop needs.
pub(crate) struct Delivery {
    pub server: Arc<TmtpServer>,
    pub node: NodeId,
    pub account: AccountId,
    pub wake: Arc<Notify>,
    pub out: mpsc::Sender<Bytes>,
    pub acks: mpsc::Receiver<String>,
    pub stop: CancellationToken,
}

/// What a delivery loop remembers between messages: the uids of senders that are members (a
/// uid never changes; a sender that is no member is looked up again each time).
struct Known {
    senders: HashMap<Address, String>,
}

/// Senders a delivery loop remembers.
const KNOWN_SENDERS: usize = 1024;

/// Run until the link ends.
pub(crate) async fn run(mut d: Delivery) {
    let store = d.server.core.store.clone();
    let mut known = Known {
        senders: HashMap::new(),
    };
    let ack_timeout = Duration::from_secs(d.server.config.ack_timeout_secs.max(1));
    loop {
        let item = match store.tmtp_next(d.node).await {
            Ok(Some(item)) => item,
            Ok(None) => {
                tokio::select! {
                    _ = d.wake.notified() => {}
                    _ = tokio::time::sleep(crate::POLL) => {}
                    _ = d.stop.cancelled() => return,
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, node = d.node, "tmtp: cannot read a node's queue");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = d.stop.cancelled() => return,
                }
            }
        };
        let frame = match render_item(&d, &mut known, &item).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                // Gone from the store, or from a sender the member does not take TMTP mail
                // from: it stays in the mailbox, not in the node's queue.
                d.server.core.metrics.event("tmtp_delivery", "skipped");
                let _ = store.tmtp_ack(d.node, item.seq).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, node = d.node, "tmtp: cannot render a queued message");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = d.stop.cancelled() => return,
                }
            }
        };
        loop {
            if d.out.send(frame.clone()).await.is_err() {
                return;
            }
            d.server.core.metrics.event("tmtp_delivery", "sent");
            let deadline = tokio::time::Instant::now() + ack_timeout;
            let acked = loop {
                // An Ack that came before the link ended still counts: acks are looked at first.
                tokio::select! {
                    biased;
                    id = d.acks.recv() => match id {
                        Some(id) if id == item.tmtp_id => break true,
                        Some(_) => continue,
                        None => return,
                    },
                    _ = tokio::time::sleep_until(deadline) => break false,
                    _ = d.stop.cancelled() => return,
                }
            };
            if acked {
                break;
            }
            d.server.core.metrics.event("tmtp_delivery", "resent");
        }
        match store.tmtp_ack(d.node, item.seq).await {
            Ok(_) => d.server.core.metrics.event("tmtp_delivery", "acked"),
            Err(e) => {
                // Not removed: it goes again, and the node sees a repeat rather than a loss.
                tracing::warn!(error = %e, node = d.node, "tmtp: cannot record an ack");
            }
        }
    }
}

/// The frame for a queue entry; `None` when it is not to be sent.
async fn render_item(
    d: &Delivery,
    known: &mut Known,
    item: &TmtpQueued,
) -> Result<Option<Bytes>, mailgate_core::StoreError> {
    let id = match &item.payload {
        TmtpPayload::Frame(f) => return Ok(Some(f.clone())),
        TmtpPayload::Message(id) => *id,
    };
    let store = &d.server.core.store;
    let Some(message) = store.message(id).await? else {
        return Ok(None);
    };
    // Read each time: a change of the setting applies to the next message.
    let reach = store
        .setting(d.account, REACH_SETTING)
        .await?
        .and_then(|v| Reach::parse(&v))
        .unwrap_or(Reach::Members);
    let uid = match known.senders.get(&message.sender) {
        Some(uid) => Some(uid.clone()),
        None => {
            let member = match store.account(&message.sender).await? {
                Some(a) => store.tmtp_member_by_account(a.id).await?,
                None => None,
            };
            if let Some(m) = &member {
                if known.senders.len() >= KNOWN_SENDERS {
                    known.senders.clear();
                }
                known.senders.insert(message.sender.clone(), m.uid.clone());
            }
            member.map(|m| m.uid)
        }
    };
    let allowed = match reach {
        Reach::Members => uid.is_some(),
        Reach::Local => d.server.core.policy.is_local(&message.sender.domain),
        Reach::Anyone => true,
    };
    if !allowed {
        return Ok(None);
    }
    let from = uid.unwrap_or_else(|| message.sender.to_string());
    Ok(render::delivery(&message, &item.tmtp_id, &from).ok())
}
