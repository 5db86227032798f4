//! mailgate's TMTP front-end: the protocol of mnm's relay server (`Protocol.md` of
//! networkimprov/mnm), members-only store-and-forward over TLS. A member is a mailgate
//! account with a permanent uid and one secret per device ("node"); mail placed in the
//! member's INBOX by any protocol is delivered to each node, one message in flight per node
//! until its Ack, and stays in the mailbox for the other protocols.

pub mod client;
pub mod config;
mod delivery;
pub mod frame;
mod groups;
pub mod ids;
mod online;
pub mod render;
pub mod request;
mod session;

use mailgate_core::io::{BoxedIo, ConnState};
use mailgate_core::ratelimit::RateLimiter;
use mailgate_core::store::tmtp::{NodeId, TmtpMember, TmtpPayload, TmtpPriority};
use mailgate_core::store::{follow_live, AccountId, LiveEvent, LiveKind};
use mailgate_core::{Address, Core, StoreError};
use online::Online;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use config::{Registration, TmtpConfig};
pub use delivery::{Reach, REACH_SETTING};

/// How often a logged-in node's queue is looked at when nothing woke it (mail stored by
/// another gateway sharing the store, or by a path that does not announce arrivals).
const POLL: Duration = Duration::from_secs(5);

/// The TMTP server: shared by every connection of its listener.
pub struct TmtpServer {
    core: Arc<Core>,
    /// Members registered over TMTP get an account in this domain.
    domain: String,
    config: TmtpConfig,
    online: Online,
    /// Registrations per address (an IPv6 address's /64).
    registrations: RateLimiter<IpAddr>,
    /// Pings and invitations per member: contact with strangers, which Protocol.md lets a
    /// server limit.
    pings: RateLimiter<AccountId>,
}

/// Pings and invitations one member may send per day.
const PINGS_PER_DAY: u32 = 200;

/// A node's credentials, as `mailgate user node add` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    /// The member's uid.
    pub uid: String,
    /// The node's secret (shown once; only its hash is stored).
    pub node: String,
}

impl TmtpServer {
    /// A server registering members in `domain` (the first local domain).
    pub fn new(core: Arc<Core>, domain: impl Into<String>, config: TmtpConfig) -> Self {
        let per_hour = config.registrations_per_hour;
        TmtpServer {
            core,
            domain: domain.into(),
            registrations: RateLimiter::new(f64::from(per_hour) / 3600.0, per_hour.max(1)),
            config,
            online: Online::default(),
            pings: RateLimiter::new(f64::from(PINGS_PER_DAY) / 86_400.0, PINGS_PER_DAY),
        }
    }

    /// Run one session on an accepted (TLS) connection.
    pub async fn handle(
        self: &Arc<Self>,
        stream: BoxedIo,
        peer: SocketAddr,
        shutdown: CancellationToken,
        state: Arc<ConnState>,
    ) {
        session::run(self.clone(), stream, peer, shutdown, state).await
    }

    /// Wake the logged-in nodes of accounts that mail arrives for, until `shutdown`.
    pub async fn watch_arrivals(self: Arc<Self>, shutdown: CancellationToken) {
        let mut arrivals = self.core.arrivals.subscribe();
        loop {
            let account = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = arrivals.recv() => a,
            };
            match account {
                Ok(account) => self.online.wake_account(account),
                // Missed some: the nodes' polls find that mail.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Show presence notices to the nodes logged in here, whichever gateway sharing the store
    /// published them, until `shutdown`.
    pub async fn watch_presence(self: Arc<Self>, shutdown: CancellationToken) {
        let store = self.core.store.clone();
        follow_live(&*store, shutdown.cancelled(), "presence notices", |event| {
            if let LiveKind::Presence { from, status } = event.kind {
                let frame = session::ohi_frame(&from, status);
                for account in event.accounts {
                    self.online.notify(account, &frame);
                }
            }
            std::future::ready(())
        })
        .await
    }

    /// Tell the nodes of `accounts`, on every gateway sharing the store, that the member `uid`
    /// came online (1) or went offline (2).
    async fn tell_presence(&self, uid: &str, status: u8, accounts: Vec<AccountId>) {
        if accounts.is_empty() {
            return;
        }
        let event = LiveEvent {
            kind: LiveKind::Presence {
                from: uid.to_owned(),
                status,
            },
            accounts,
        };
        if let Err(e) = self.core.store.publish_live(event).await {
            tracing::warn!(error = %e, "tmtp: a presence notice was not sent");
        }
    }

    /// Queue a payload for nodes and wake those logged in here.
    async fn enqueue(
        &self,
        nodes: &[NodeId],
        priority: TmtpPriority,
        tmtp_id: &str,
        payload: &TmtpPayload,
    ) -> Result<(), StoreError> {
        self.core
            .store
            .tmtp_enqueue(nodes, priority, tmtp_id, payload)
            .await?;
        self.online.wake_nodes(nodes);
        Ok(())
    }

    /// Queue a payload for every node of these accounts.
    async fn enqueue_for(
        &self,
        accounts: &[AccountId],
        except: Option<NodeId>,
        priority: TmtpPriority,
        tmtp_id: &str,
        payload: &TmtpPayload,
    ) -> Result<(), StoreError> {
        let mut nodes = Vec::new();
        for a in accounts {
            nodes.extend(self.core.store.tmtp_nodes(*a).await?);
        }
        nodes.retain(|n| Some(*n) != except);
        nodes.sort_unstable();
        nodes.dedup();
        self.enqueue(&nodes, priority, tmtp_id, payload).await
    }

    /// Make an existing account a member (when it is not one yet) and give it a new node;
    /// returns the uid and the node's secret.
    pub async fn add_node(
        core: &Core,
        address: &Address,
        label: &str,
    ) -> Result<NodeCredentials, StoreError> {
        let account = core
            .store
            .account(address)
            .await?
            .ok_or_else(|| StoreError::NoAccount(address.to_string()))?;
        let member = Self::member_of(core, account.id).await?;
        let (node, hash) = ids::new_node_secret();
        core.store
            .tmtp_add_node(account.id, label, &hash, None)
            .await?;
        Ok(NodeCredentials {
            uid: member.uid,
            node,
        })
    }

    /// The member behind an account, made one with a fresh uid when it is not yet.
    async fn member_of(core: &Core, account: AccountId) -> Result<TmtpMember, StoreError> {
        match core.store.tmtp_member_by_account(account).await? {
            Some(m) => Ok(m),
            None => core.store.tmtp_add_member(account, &ids::new_uid()).await,
        }
    }
}
