//! The router and policy: what every front-end calls to submit mail and authenticate users.
//!
//! [`Core::submit`] decides, per recipient, between a local mailbox (folder from `+folder`,
//! else INBOX) and the outbound queue; refuses relaying for anyone but an authenticated local
//! account (no open relay); refuses unknown local recipients at the door (no backscatter);
//! enforces the size limit; and writes everything in one durable transaction.

use crate::address::Address;
use crate::budget::MemoryBudget;
use crate::destinations::Destinations;
use crate::login::{LoginGuard, LoginLimits};
use crate::mailbox;
use crate::message::{Message, SenderCheck};
use crate::metrics::Metrics;
use crate::password::{hash_password, verify_password, PasswordError};
use crate::ratelimit::RateLimiter;
use crate::store::{
    Account, AccountRef, FolderChoice, LocalDelivery, RelayRequest, SpentStamp, Store, StoreError,
    Submission,
};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The in-flight body budget when config sets none.
pub const DEFAULT_BODY_BUDGET: usize = 512 * 1024 * 1024;
/// How long a password check waits for a free verifier before answering "busy".
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The message size limit when config sets none: the MMTP spec's 10 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// Routing and acceptance rules.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Domains this gateway holds mailboxes for (lower-case).
    pub local_domains: HashSet<String>,
    /// Largest message accepted, bytes ([`Message::size`]).
    pub max_message_size: usize,
    /// Most recipients of one message.
    pub max_recipients: usize,
}

impl Policy {
    /// Rules for the given local domains with default limits.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(local_domains: I) -> Self {
        Policy {
            local_domains: local_domains
                .into_iter()
                .map(|d| d.as_ref().to_ascii_lowercase())
                .collect(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: 100,
        }
    }

    /// Is `domain` one of ours?
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.contains(&domain.to_ascii_lowercase())
    }
}

/// Who is submitting.
#[derive(Debug, Clone)]
pub enum Submitter {
    /// A local account that authenticated on this connection.
    Account(Account),
    /// A peer that did not authenticate as a local account (a remote server, an anonymous
    /// sender); it may deliver to local accounts only, after the protocol's anti-abuse check.
    Peer(IpAddr),
    /// Mail the gateway fetched from the host a notification named (XHMTP): a peer's mail,
    /// whose sender only the front-end's own check ties to anything.
    Fetched,
    /// The gateway itself, on behalf of something it already authorised (a push published by
    /// the node's owner): it may relay, and sends as the node.
    Gateway,
}

/// Where a submission came from, for policy and metrics.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Front-end name (`mmtp`, `immp`, `xhmtp`).
    pub protocol: &'static str,
    /// Who submits.
    pub submitter: Submitter,
}

/// Why a submission was refused. Every front-end maps these to its own error replies.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Larger than the limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Message size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No recipients at all.
    #[error("message has no recipients")]
    NoRecipients,
    /// More recipients than allowed.
    #[error("message has {0} recipients; the limit is {1}")]
    TooManyRecipients(usize, usize),
    /// Remote recipient, but the submitter is not an authenticated local account.
    #[error("relaying to {0} denied: only authenticated local users may send to other domains")]
    RelayDenied(Address),
    /// Local domain, no such account.
    #[error("no such user here: {0}")]
    UnknownRecipient(Address),
    /// An authenticated account tried to send as someone else.
    #[error("sender {0} does not match the authenticated account")]
    SenderMismatch(Address),
    /// A sender address in a local domain from a peer that did not authenticate as it.
    #[error("sender {0} is an account of this server: authenticate as it to send as it")]
    LocalSenderUnauthenticated(Address),
    /// The anti-spam stamp was used before.
    #[error("anti-spam stamp already spent")]
    StampSpent,
    /// The store failed; nothing was accepted.
    #[error("temporary storage failure: {0}")]
    Store(StoreError),
}

impl SubmitError {
    /// Short reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SubmitError::TooLarge { .. } => "too_large",
            SubmitError::NoRecipients => "no_recipients",
            SubmitError::TooManyRecipients(..) => "too_many_recipients",
            SubmitError::RelayDenied(_) => "relay_denied",
            SubmitError::UnknownRecipient(_) => "unknown_recipient",
            SubmitError::SenderMismatch(_) => "sender_mismatch",
            SubmitError::LocalSenderUnauthenticated(_) => "local_sender_unauthenticated",
            SubmitError::StampSpent => "stamp_replay",
            SubmitError::Store(_) => "store_error",
        }
    }
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::StampSpent => SubmitError::StampSpent,
            other => SubmitError::Store(other),
        }
    }
}

/// Where each recipient of an accepted message went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Local deliveries: recipient and folder.
    pub local: Vec<(Address, String)>,
    /// The accounts of `local`, in the same order.
    pub local_accounts: Vec<crate::store::AccountId>,
    /// Remote recipients queued for relay.
    pub queued: Vec<Address>,
}

/// Errors of account management.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The domain is not one of ours.
    #[error("{0} is not a local domain")]
    NotLocal(String),
    /// Bad password.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a login did not succeed. Front-ends map these to their own replies; only `Refused` is
/// a wrong password.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown account or wrong password (deliberately the same).
    #[error("authentication failed")]
    Refused,
    /// Too many failed logins from this peer or for this account: try again after the delay.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// Every password verifier is busy.
    #[error("the server is busy verifying passwords; try again")]
    Busy,
    /// Store failure.
    #[error("temporary failure: {0}")]
    Store(StoreError),
}

/// A per-protocol secret derived from an account's password whenever it is set (e.g. IMMP's
/// PBKDF2 hash `h`), stored with [`Store::set_secret`] under [`SecretDeriver::kind`].
pub trait SecretDeriver: Send + Sync {
    /// The secret's kind (key in the account's secrets).
    fn kind(&self) -> &'static str;
    /// Derive it (CPU-heavy derivations are fine: this runs off the async threads).
    fn derive(&self, account: &Address, password: &str) -> Vec<u8>;
}

/// The handle every front-end holds: store, policy, metrics, shared anti-abuse state.
pub struct Core {
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Routing rules.
    pub policy: Policy,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Per-peer rate limiter for submissions and logins.
    pub limiter: RateLimiter<IpAddr>,
    /// Woken when a submission queued mail for relaying (the relay workers wait on it).
    pub relay_wake: tokio::sync::Notify,
    /// The accounts each submission placed mail for, as it commits (TMTP wakes those
    /// accounts' logged-in nodes; a receiver that falls behind polls the store instead).
    pub arrivals: tokio::sync::broadcast::Sender<crate::store::AccountId>,
    /// Memory for message bodies in flight, across every front-end.
    pub budget: MemoryBudget,
    /// Failed-login counts per peer and per account.
    pub logins: LoginGuard,
    /// Where connections a stranger can trigger (fetches, call-backs) may go.
    pub destinations: Destinations,
    /// Password verifications (argon2) running at once: one per core.
    verifiers: Semaphore,
    derivers: Vec<Arc<dyn SecretDeriver>>,
}

impl Core {
    /// Assemble the core.
    pub fn new(store: Arc<dyn Store>, policy: Policy, metrics: Arc<Metrics>) -> Self {
        Core {
            store,
            policy,
            metrics,
            limiter: RateLimiter::new(0.0, 1),
            relay_wake: tokio::sync::Notify::new(),
            arrivals: tokio::sync::broadcast::channel(1024).0,
            budget: MemoryBudget::new(DEFAULT_BODY_BUDGET, Duration::from_secs(2)),
            logins: LoginGuard::new(LoginLimits::default()),
            destinations: Destinations::default(),
            verifiers: Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
            derivers: Vec::new(),
        }
    }

    /// Replace the in-flight body budget.
    pub fn with_budget(mut self, budget: MemoryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Replace the deny list of stranger-triggered connections.
    pub fn with_destinations(mut self, destinations: Destinations) -> Self {
        self.destinations = destinations;
        self
    }

    /// Replace the failed-login limits.
    pub fn with_login_limits(mut self, limits: LoginLimits) -> Self {
        self.logins = LoginGuard::new(limits);
        self
    }

    /// Also derive and store this secret whenever a password is set.
    pub fn with_secret(mut self, deriver: Arc<dyn SecretDeriver>) -> Self {
        self.derivers.push(deriver);
        self
    }

    /// Replace the rate limiter (`rate` per second, `burst`; 0 disables).
    pub fn with_rate_limit(mut self, rate: f64, burst: u32) -> Self {
        self.limiter = RateLimiter::new(rate, burst);
        self
    }

    /// Validate, route and durably store a message. Returns only after the commit is on disk.
    pub async fn submit(
        &self,
        message: Message,
        origin: &Origin,
        stamp: Option<SpentStamp>,
    ) -> Result<Receipt, SubmitError> {
        let result = self.route_and_store(message, origin, stamp).await;
        match &result {
            Ok(receipt) => {
                self.metrics.message_accepted(origin.protocol);
                if !receipt.queued.is_empty() {
                    self.relay_wake.notify_waiters();
                }
                for account in &receipt.local_accounts {
                    let _ = self.arrivals.send(*account);
                }
            }
            Err(e) => self.metrics.message_refused(origin.protocol, e.reason()),
        }
        result
    }

    async fn route_and_store(
        &self,
        mut message: Message,
        origin: &Origin,
        stamp: Option<SpentStamp>,
    ) -> Result<Receipt, SubmitError> {
        let size = message.size();
        if size > self.policy.max_message_size {
            return Err(SubmitError::TooLarge {
                size,
                max: self.policy.max_message_size,
            });
        }
        if message.recipients.is_empty() {
            return Err(SubmitError::NoRecipients);
        }
        if message.recipients.len() > self.policy.max_recipients {
            return Err(SubmitError::TooManyRecipients(
                message.recipients.len(),
                self.policy.max_recipients,
            ));
        }
        self.check_sender(&mut message, origin)?;
        let mut receipt = Receipt::default();
        let mut deliveries = Vec::new();
        let mut relays = Vec::new();
        for rcpt in &message.recipients {
            if self.policy.is_local(&rcpt.domain) {
                // The account and folder are resolved inside the submit's transaction: no
                // read before it, and an unknown recipient fails the whole submit.
                let folder = match &rcpt.folder {
                    // Push notifications bypass the inbox.
                    _ if message.kind == crate::message::MessageKind::Push => {
                        FolderChoice::Exact(mailbox::PUSH.to_owned())
                    }
                    Some(f) => FolderChoice::Existing(f.clone()),
                    None => FolderChoice::Exact(mailbox::INBOX.to_owned()),
                };
                deliveries.push(LocalDelivery {
                    account: AccountRef::Address(rcpt.account()),
                    folder,
                });
            } else {
                if !matches!(origin.submitter, Submitter::Account(_) | Submitter::Gateway) {
                    return Err(SubmitError::RelayDenied(rcpt.clone()));
                }
                receipt.queued.push(rcpt.clone());
                // Remember the protocol the message arrived in: the relay uses it when it
                // has that transport, so mail stays in its protocol family when it can.
                relays.push(RelayRequest {
                    recipient: rcpt.clone(),
                    protocol: Some(origin.protocol.to_owned()),
                });
            }
        }
        let local: Vec<Address> = message
            .recipients
            .iter()
            .filter(|r| self.policy.is_local(&r.domain))
            .cloned()
            .collect();
        let placed = self
            .store
            .submit(Submission {
                message,
                deliveries,
                relays,
                stamp,
            })
            .await
            .map_err(|e| match e {
                StoreError::UnknownRecipient(a) => SubmitError::UnknownRecipient(
                    local
                        .iter()
                        .find(|r| r.same_account(&a))
                        .cloned()
                        .unwrap_or(a),
                ),
                other => other.into(),
            })?;
        for (rcpt, p) in local.into_iter().zip(placed) {
            receipt.local.push((rcpt, p.folder));
            receipt.local_accounts.push(p.account);
        }
        Ok(receipt)
    }

    /// Mail the gateway writes together with a state change — a bounce with the relay failure
    /// it reports, a fetched message with its notification — placed in one local account's
    /// INBOX under the same size and sender rules as [`Core::submit`]. The store writes the
    /// returned submission in the transaction of that change.
    pub fn local_delivery(
        &self,
        mut message: Message,
        to: AccountRef,
        origin: &Origin,
    ) -> Result<Submission, SubmitError> {
        let size = message.size();
        if size > self.policy.max_message_size {
            return Err(SubmitError::TooLarge {
                size,
                max: self.policy.max_message_size,
            });
        }
        self.check_sender(&mut message, origin)?;
        Ok(Submission {
            message,
            deliveries: vec![LocalDelivery {
                account: to,
                folder: FolderChoice::Exact(mailbox::INBOX.to_owned()),
            }],
            relays: Vec::new(),
            stamp: None,
        })
    }

    /// What ties the submitter to the message's sender, recorded in its security state; a
    /// sender the submitter may not use is refused.
    fn check_sender(&self, message: &mut Message, origin: &Origin) -> Result<(), SubmitError> {
        message.security.sender_check = Some(match &origin.submitter {
            Submitter::Account(account) => {
                if !account.address.same_account(&message.sender) {
                    return Err(SubmitError::SenderMismatch(message.sender.clone()));
                }
                SenderCheck::Account
            }
            Submitter::Gateway => SenderCheck::Gateway,
            Submitter::Peer(_) | Submitter::Fetched => {
                if self.policy.is_local(&message.sender.domain) {
                    return Err(SubmitError::LocalSenderUnauthenticated(
                        message.sender.clone(),
                    ));
                }
                // Only the front-end's own check of the peer against the sender's domain
                // counts; anything else it or the peer set is a claim.
                match message.security.sender_check {
                    Some(SenderCheck::Domain) => SenderCheck::Domain,
                    _ => SenderCheck::Unverified,
                }
            }
        });
        Ok(())
    }

    /// Check a local account's password: refused at once while the peer or the account is
    /// banned for failed logins; argon2 runs on a bounded set of blocking threads; every
    /// failure is counted and logged (see [`Core::login_failed`]).
    pub async fn password_login(
        &self,
        protocol: &'static str,
        peer: IpAddr,
        address: &Address,
        password: &str,
    ) -> Result<Account, LoginError> {
        let name = address.account_key();
        self.login_allowed(protocol, peer, &name)?;
        let account = match self.store.account(address).await? {
            Some(a) if self.policy.is_local(&a.address.domain) => a,
            _ => {
                self.login_failed(protocol, peer, &name);
                return Err(LoginError::Refused);
            }
        };
        let slot = tokio::time::timeout(VERIFY_WAIT, self.verifiers.acquire())
            .await
            .map_err(|_| LoginError::Busy)?
            .map_err(|_| LoginError::Busy)?;
        let password = password.to_owned();
        let phc = account.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .unwrap_or(false);
        drop(slot);
        if ok {
            self.login_succeeded(protocol, peer, &name);
            Ok(account)
        } else {
            self.login_failed(protocol, peer, &name);
            Err(LoginError::Refused)
        }
    }

    /// `Err(Throttled)` while the peer or the account is banned for failed logins.
    pub fn login_allowed(
        &self,
        protocol: &'static str,
        peer: IpAddr,
        account: &str,
    ) -> Result<(), LoginError> {
        self.logins.check(peer, account).map_err(|wait| {
            self.metrics
                .event(&format!("login_{protocol}"), "throttled");
            tracing::info!(
                target: "mailgate::auth",
                "login throttled protocol={protocol} peer={peer} account={account} wait={}s",
                wait.as_secs().max(1)
            );
            LoginError::Throttled(wait)
        })
    }

    /// Count, log and meter a failed login. The log line is stable for fail2ban:
    /// `login failed protocol=<p> peer=<ip> account=<address>` (never the password).
    pub fn login_failed(&self, protocol: &'static str, peer: IpAddr, account: &str) {
        self.logins.failed(peer, account);
        self.metrics.event(&format!("login_{protocol}"), "failed");
        tracing::info!(
            target: "mailgate::auth",
            "login failed protocol={protocol} peer={peer} account={account}"
        );
    }

    /// A login succeeded: its peer's and account's failures are forgotten.
    pub fn login_succeeded(&self, protocol: &'static str, peer: IpAddr, account: &str) {
        self.logins.succeeded(peer, account);
        self.metrics.event(&format!("login_{protocol}"), "ok");
    }

    /// Create a local account with a password (and its derived secrets).
    pub async fn add_account(
        &self,
        address: &Address,
        password: &str,
    ) -> Result<Account, AccountError> {
        if !self.policy.is_local(&address.domain) {
            return Err(AccountError::NotLocal(address.domain.clone()));
        }
        let (hash, secrets) = self.derive_all(address, password).await?;
        let account = self.store.create_account(address, &hash).await?;
        for (kind, value) in secrets {
            self.store.set_secret(account.id, kind, &value).await?;
        }
        Ok(account)
    }

    /// Replace a local account's password (and its derived secrets).
    pub async fn set_password(
        &self,
        address: &Address,
        password: &str,
    ) -> Result<(), AccountError> {
        let account = self
            .store
            .account(address)
            .await?
            .ok_or_else(|| StoreError::NoAccount(address.to_string()))?;
        let (hash, secrets) = self.derive_all(&account.address, password).await?;
        self.store.set_password_hash(address, &hash).await?;
        for (kind, value) in secrets {
            self.store.set_secret(account.id, kind, &value).await?;
        }
        Ok(())
    }

    /// The argon2 hash and every derived secret, computed off the async threads.
    async fn derive_all(
        &self,
        address: &Address,
        password: &str,
    ) -> Result<(String, Vec<(&'static str, Vec<u8>)>), PasswordError> {
        let hash = hash_off_thread(password).await?;
        let mut secrets = Vec::new();
        for d in &self.derivers {
            let kind = d.kind();
            let (d, a, p) = (d.clone(), address.account(), password.to_owned());
            let value = tokio::task::spawn_blocking(move || d.derive(&a, &p))
                .await
                .map_err(|e| PasswordError::Hash(e.to_string()))?;
            secrets.push((kind, value));
        }
        Ok((hash, secrets))
    }
}

async fn hash_off_thread(password: &str) -> Result<String, PasswordError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))?
}

/// The cause is shown in the message, not again as a source: `{:#}` prints it once.
impl From<StoreError> for LoginError {
    fn from(e: StoreError) -> Self {
        LoginError::Store(e)
    }
}
