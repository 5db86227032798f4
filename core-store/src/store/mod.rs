//! The durable store: an async [`Store`] trait and its SQLite back-end.
//!
//! The trait speaks only the model's types, so another back-end (PostgreSQL) can be added
//! without touching the front-ends.

mod location;
mod postgres;
mod rows;
mod sqlite;
pub mod tmtp;
mod transfer;

pub use location::StoreLocation;
pub use postgres::{PgOptions, PgStore, SslMode};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use transfer::{migrate_store, MigrateReport};

/// The store traits, for calling their methods: `use mailgate_core::store::prelude::*;`.
pub mod prelude {
    pub use super::tmtp::TmtpStore;
    pub use super::{HostedStore, LiveEvents, MailStore, PubSubStore, SettingsStore, Store};
}

use crate::address::Address;
use crate::message::{Message, MessageId};
use async_trait::async_trait;

/// Row id of an account.
pub type AccountId = i64;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database back-end failed, described in back-end-neutral terms.
    #[error("database error: {message}")]
    Backend {
        /// What kind of failure it was.
        kind: BackendErrorKind,
        /// The back-end's own description.
        message: String,
    },
    /// An account with that address exists already.
    #[error("account {0} exists already")]
    AccountExists(String),
    /// No account with that address.
    #[error("no account {0}")]
    NoAccount(String),
    /// A delivery's recipient is no account here.
    #[error("no such user here: {0}")]
    UnknownRecipient(Address),
    /// Something with that name exists already (a node).
    #[error("{0} exists already")]
    Exists(String),
    /// The anti-spam stamp was spent before (replay).
    #[error("stamp already spent")]
    StampSpent,
    /// The mailbox entry / folder / queue entry does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored data did not decode (corruption or a newer schema).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The transaction holding this write failed to commit; nothing of it was stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The store is shut down.
    #[error("store is closed")]
    Closed,
    /// File-system error (backup, data directory).
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

/// The kind of a back-end failure: what callers may act on, whatever the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The disk is full or failing, the database is read-only, corrupt or cannot be opened:
    /// nothing can be written until the operator acts (the store reports itself unhealthy).
    Storage,
    /// A constraint refused the change (a duplicate key, a missing row it refers to).
    Constraint,
    /// A concurrent transaction won (a deadlock or serialization failure): nothing of this
    /// one was stored, and running it again may succeed.
    Conflict,
    /// Anything else (a bad statement, a value out of range, a lost connection).
    Other,
}

impl StoreError {
    /// Is this the kind of error a full or failing disk gives (not a constraint or a bad value)?
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                kind: BackendErrorKind::Storage,
                ..
            } | StoreError::CommitFailed(_)
                | StoreError::Io(_)
        )
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Row id.
    pub id: AccountId,
    /// The account's address (no folder).
    pub address: Address,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
}

/// A public key in the key directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyRecord {
    /// Whose key (account key form).
    pub address: Address,
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// ASCII-armored key.
    pub armored: String,
    /// Registered by the account itself, authenticated (otherwise: trust on first use).
    pub owner_verified: bool,
}

/// A message placed in a local account's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDelivery {
    /// Receiving account.
    pub account: AccountRef,
    /// Folder.
    pub folder: FolderChoice,
}

impl LocalDelivery {
    /// Into this account's folder of exactly this path (made when missing).
    pub fn to(account: AccountId, folder: impl Into<String>) -> Self {
        LocalDelivery {
            account: AccountRef::Id(account),
            folder: FolderChoice::Exact(folder.into()),
        }
    }
}

/// The account of a delivery: known by id, or looked up by address inside the submit's own
/// transaction (no separate read; an unknown address fails the submit with
/// [`StoreError::UnknownRecipient`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountRef {
    /// By row id.
    Id(AccountId),
    /// By address (its account key).
    Address(Address),
}

/// The folder of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderChoice {
    /// This path, made when missing (`INBOX`, `INBOX/Receipts`, `PUSH`).
    Exact(String),
    /// The account's existing folder of this name — the path itself, else the shortest whose
    /// last component it is (case-insensitive) — or INBOX when there is none (`bob+work`).
    Existing(String),
}

/// Where a submit placed the message for one delivery, in the order of the deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The account.
    pub account: AccountId,
    /// The folder path.
    pub folder: String,
}

/// A recipient that must be relayed to another domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRequest {
    /// The remote recipient.
    pub recipient: Address,
    /// Protocol chosen at submit time, if any (else the relay worker chooses).
    pub protocol: Option<String>,
}

/// A spent anti-spam stamp, recorded in the same transaction as the message it paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentStamp {
    /// The stamp text.
    pub value: String,
    /// When the record may be forgotten (the stamp is too old to be accepted by then), Unix ms.
    pub expires_at: i64,
}

/// Everything `submit` writes in one durable transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The message.
    pub message: Message,
    /// Local mailbox entries to create.
    pub deliveries: Vec<LocalDelivery>,
    /// Outbound queue entries to create.
    pub relays: Vec<RelayRequest>,
    /// Stamp to mark spent; the submit fails with [`StoreError::StampSpent`] on replay.
    pub stamp: Option<SpentStamp>,
}

/// Per-entry flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// Read.
    pub seen: bool,
    /// Marked for deletion.
    pub deleted: bool,
}

/// One message in one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// Entry row id (unique per folder placement).
    pub id: i64,
    /// Owning account.
    pub account: AccountId,
    /// Folder path.
    pub folder: String,
    /// The stored message.
    pub message: MessageId,
    /// Flags.
    pub flags: Flags,
    /// When placed, Unix ms.
    pub added_at: i64,
}

/// A message without its parts: what listings, filters and counts need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// Store id.
    pub id: MessageId,
    /// Sender.
    pub sender: Address,
    /// Recipients as addressed.
    pub recipients: Vec<Address>,
    /// Subject.
    pub subject: String,
    /// Tags.
    pub tags: crate::message::Tags,
    /// Importance.
    pub importance: crate::message::Importance,
    /// Mail or push.
    pub kind: crate::message::MessageKind,
    /// Size ([`Message::size`]).
    pub size: u64,
    /// When accepted, Unix ms.
    pub received_at: i64,
    /// What tied the submitter to the sender (see [`crate::message::SenderCheck`]).
    pub sender_check: Option<crate::message::SenderCheck>,
}

/// A published node (IMMP PUBLISH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node@domain` (sub-nodes allowed: `newsletter/updates@domain`).
    pub address: Address,
    /// The owning account.
    pub owner: AccountId,
    /// Title shown to subscribers.
    pub title: String,
}

/// An account's subscription to a node (local or remote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Subscription id (UUID).
    pub id: String,
    /// The node.
    pub node: Address,
    /// Its title (the node address when unknown).
    pub title: String,
}

/// A folder with its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// Path, e.g. `INBOX/Receipts`.
    pub name: String,
    /// Entries not deleted.
    pub total: u64,
    /// Entries neither seen nor deleted.
    pub unseen: u64,
}

/// Which messages a listing or a count takes by their tags: every listed category must hold
/// at least one of its values; a category listed with no values takes every message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// Category → wanted values (MMTP `tagFilters`; [`IMPORTANCE_TAG`] for importance).
    pub categories: Vec<(String, Vec<String>)>,
}

impl TagFilter {
    /// The categories that actually restrict.
    pub fn restricting(&self) -> impl Iterator<Item = &(String, Vec<String>)> {
        self.categories
            .iter()
            .filter(|(_, values)| !values.is_empty())
    }
    /// Whether it takes every message.
    pub fn is_empty(&self) -> bool {
        self.restricting().next().is_none()
    }
    /// Messages of high importance (IMMP's `::important`).
    pub fn important() -> Self {
        TagFilter {
            categories: vec![(IMPORTANCE_TAG.to_owned(), vec!["high".to_owned()])],
        }
    }
}

/// The category under which the store indexes a message's importance alongside its tags
/// (value `high`); never one of MMTP's tag categories.
pub const IMPORTANCE_TAG: &str = "@importance";

/// How many live entries of a folder carry one tag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCount {
    /// Category (`priority`, `category`, `status`, `custom`, or [`IMPORTANCE_TAG`]).
    pub category: String,
    /// Value.
    pub value: String,
    /// Entries.
    pub count: u64,
}

/// Which entries of a folder to list.
#[derive(Debug, Clone, Default)]
pub struct EntryQuery {
    /// Only entries seen (`Some(true)`) or not yet seen (`Some(false)`).
    pub seen: Option<bool>,
    /// Include entries flagged deleted.
    pub include_deleted: bool,
    /// At most this many (`None`: all).
    pub limit: Option<u32>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Only entries after this entry id in the listing's order (paging).
    pub after: Option<i64>,
    /// Only live entries whose message matches (not with `include_deleted`).
    pub tags: TagFilter,
}

/// State of an outbound queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by a relay worker (lease until `lease_until`).
    InFlight,
    /// Delivered.
    Done,
    /// Given up; a bounce was produced.
    Failed,
}

impl QueueState {
    /// Lower-case name for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Pending => "pending",
            QueueState::InFlight => "in-flight",
            QueueState::Done => "done",
            QueueState::Failed => "failed",
        }
    }
}

/// One outbound queue entry: one message to one remote recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// Row id.
    pub id: i64,
    /// The message to relay.
    pub message: MessageId,
    /// The remote recipient.
    pub recipient: Address,
    /// Protocol chosen, if any.
    pub protocol: Option<String>,
    /// State.
    pub state: QueueState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt, Unix ms.
    pub next_attempt: i64,
    /// Last error text.
    pub last_error: Option<String>,
    /// When queued, Unix ms.
    pub created_at: i64,
}

/// How a relay attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Delivered: the entry is done.
    Delivered,
    /// Temporary failure: try again at `next_attempt`.
    Retry {
        /// Unix ms.
        next_attempt: i64,
        /// What went wrong.
        error: String,
    },
    /// Permanent failure: the entry failed; `bounce` (the delivery-status message for the
    /// sender) is stored in the same commit.
    Failed {
        /// What went wrong.
        error: String,
        /// The bounce, when the sender is a local account.
        bounce: Option<Box<Submission>>,
    },
}

/// Counts for metrics and `mailgate queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored messages.
    pub messages: u64,
    /// Accounts.
    pub accounts: u64,
    /// Queue entries pending or in flight.
    pub queue_depth: u64,
}

/// The durable store behind every front-end.
/// A recipient's grant to fetch a sender-hosted message (XHMTP): only the access code's
/// hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    /// The hosted message.
    pub message: MessageId,
    /// The recipient (account form).
    pub recipient: Address,
    /// SHA-256 of the access code.
    pub code_hash: Vec<u8>,
    /// When the recipient first fetched the message.
    pub fetched_at: Option<i64>,
}

/// State of an inbound notification's fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchState {
    /// Not fetched yet (or being retried).
    Pending,
    /// Fetched and in the recipient's INBOX.
    Fetched,
    /// The sender's server refused for good.
    Failed,
}

/// A notification an XHMTP peer sent for a local account, as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The recipient account.
    pub account: AccountId,
    /// Message URL at the sender's server (with the access code).
    pub url: String,
    /// The sender, unless anonymous.
    pub sender: Option<Address>,
    /// Subject, unless withheld.
    pub subject: Option<String>,
    /// The sender's date, ms since the epoch.
    pub date: Option<i64>,
    /// Announced size, bytes.
    pub size: Option<u64>,
    /// The notifier's IP address.
    pub peer: String,
}

/// A stored inbound notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Row id.
    pub id: i64,
    /// What was accepted.
    pub notice: NewNotification,
    /// When it was accepted, ms.
    pub received_at: i64,
    /// Fetch state.
    pub state: FetchState,
    /// The local copy once fetched.
    pub message: Option<MessageId>,
    /// Fetch attempts so far.
    pub attempts: u32,
    /// Last fetch error.
    pub last_error: Option<String>,
}

/// How a fetch attempt ended.
#[derive(Debug, Clone)]
pub enum FetchOutcome {
    /// Fetched: store this submission (the local copy) in the same transaction.
    Fetched(Box<Submission>),
    /// Try again at `next_attempt`.
    Retry {
        /// When, ms.
        next_attempt: i64,
        /// Why it failed.
        error: String,
    },
    /// Give up.
    Failed {
        /// Why.
        error: String,
    },
}

/// The mail store every back-end implements: submit, accounts, keys, mailboxes, the relay
/// queue, single-use tokens, and the store's own health.
#[async_trait]
pub trait MailStore: Send + Sync + 'static {
    /// Write message, mailbox entries, queue entries and spent stamp in one transaction;
    /// returns only once the commit is durable.
    async fn submit(&self, submission: Submission) -> Result<Vec<Placement>, StoreError>;

    /// Create an account; fails with [`StoreError::AccountExists`].
    async fn create_account(
        &self,
        address: &Address,
        password_hash: &str,
    ) -> Result<Account, StoreError>;
    /// Look an account up by address (case-insensitive, folder ignored).
    async fn account(&self, address: &Address) -> Result<Option<Account>, StoreError>;
    /// All accounts, ordered by address.
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Replace an account's password hash.
    async fn set_password_hash(&self, address: &Address, hash: &str) -> Result<(), StoreError>;
    /// Remove an account with its mailbox entries and secrets; false when there was none.
    async fn remove_account(&self, address: &Address) -> Result<bool, StoreError>;
    /// Store a per-protocol secret of an account (e.g. IMMP's `h`).
    async fn set_secret(
        &self,
        account: AccountId,
        kind: &str,
        value: &[u8],
    ) -> Result<(), StoreError>;
    /// Read a per-protocol secret.
    async fn secret(&self, account: AccountId, kind: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Register or replace a public key.
    async fn put_key(&self, key: PublicKeyRecord) -> Result<(), StoreError>;
    /// Look a public key up.
    async fn key(&self, address: &Address) -> Result<Option<PublicKeyRecord>, StoreError>;

    /// The folders of an account with counts (INBOX, SENT, DRAFTS, JUNK always exist).
    async fn folders(&self, account: AccountId) -> Result<Vec<FolderInfo>, StoreError>;
    /// Create a user folder (idempotent).
    async fn create_folder(&self, account: AccountId, name: &str) -> Result<(), StoreError>;
    /// Delete a user folder, its sub-folders and their entries; false when there was none.
    async fn delete_folder(&self, account: AccountId, name: &str) -> Result<bool, StoreError>;
    /// Entries of a folder, oldest first.
    async fn entries(
        &self,
        account: AccountId,
        folder: &str,
        query: EntryQuery,
    ) -> Result<Vec<MailboxEntry>, StoreError>;
    /// Load a stored message.
    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError>;
    /// How many live entries of a folder match `tags` (index lookups; no row is counted when
    /// the filter is empty: the folder's kept total is returned).
    async fn count_entries(
        &self,
        account: AccountId,
        folder: &str,
        tags: &TagFilter,
    ) -> Result<u64, StoreError>;
    /// The tag values of a folder's live entries with their counts (kept by the store).
    async fn tag_counts(
        &self,
        account: AccountId,
        folder: &str,
    ) -> Result<Vec<TagCount>, StoreError>;
    /// The account's (not deleted) mailbox entry holding `message`: in `folder`, or in any
    /// folder when `None`.
    async fn find_entry(
        &self,
        account: AccountId,
        message: MessageId,
        folder: Option<&str>,
    ) -> Result<Option<MailboxEntry>, StoreError>;
    /// Load summaries (no parts) of several messages, in the order asked; unknown ids are
    /// left out.
    async fn summaries(&self, ids: &[MessageId]) -> Result<Vec<MessageSummary>, StoreError>;
    /// Change an entry's flags (the entry must belong to `account`).
    async fn set_flags(
        &self,
        account: AccountId,
        entry: i64,
        flags: Flags,
    ) -> Result<(), StoreError>;
    /// Place an existing message in another folder of the same account (copy).
    async fn add_entry(
        &self,
        account: AccountId,
        folder: &str,
        message: MessageId,
    ) -> Result<i64, StoreError>;
    /// Delete these entries of `account` (others' ids are ignored); messages nobody references
    /// any more go too. Returns how many entries went.
    async fn remove_entries(&self, account: AccountId, entries: &[i64]) -> Result<u64, StoreError>;
    /// Drop the entries flagged deleted in a folder; messages nobody references any more go too.
    async fn expunge(&self, account: AccountId, folder: &str) -> Result<u64, StoreError>;

    /// Claim up to `limit` due queue entries for `lease_ms` (entries whose lease ran out count
    /// as due again, so a crashed worker never loses one).
    async fn claim_due(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<QueueEntry>, StoreError>;
    /// Record how an attempt ended.
    async fn finish_relay(&self, id: i64, outcome: RelayOutcome) -> Result<(), StoreError>;
    /// Make every leased relay entry and notification fetch due again (at start-up: the
    /// process that held the leases is gone). Returns how many were released.
    async fn release_leases(&self) -> Result<u64, StoreError>;
    /// Queue entries not done, optionally for one domain.
    async fn queue(&self, domain: Option<&str>) -> Result<Vec<QueueEntry>, StoreError>;
    /// Make entries due now (`None`: all pending and failed ones); returns how many.
    async fn retry_now(&self, id: Option<i64>, now: i64) -> Result<u64, StoreError>;
    /// Delete a queue entry; false when there was none.
    async fn drop_queued(&self, id: i64) -> Result<bool, StoreError>;

    /// Store a single-use token (cookie, nonce, access code hash) until `expires_at`.
    async fn put_token(
        &self,
        kind: &str,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError>;
    /// Take (read and delete) a token that has not expired.
    async fn take_token(
        &self,
        kind: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Forget expired tokens and stamps; returns how many rows went.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// Counts for metrics.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Whether the store can commit now: `Err` with the reason when the last write failed
    /// (disk full, I/O error) and a probe write fails too. Cheap while writes succeed.
    async fn health(&self) -> Result<(), StoreError>;
    /// Write a consistent copy of the whole store to `path` while it runs.
    async fn backup(&self, path: &std::path::Path) -> Result<(), StoreError>;
    /// Finish queued writes and stop the writer; later writes fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}

/// IMMP publish/subscribe: published nodes and their local and remote subscribers.
#[async_trait]
pub trait PubSubStore: Send + Sync + 'static {
    /// Publish a node owned by `owner`; fails with [`StoreError::Exists`].
    async fn create_node(
        &self,
        owner: AccountId,
        node: &Address,
        title: &str,
    ) -> Result<(), StoreError>;
    /// Look a published node up.
    async fn node(&self, node: &Address) -> Result<Option<NodeInfo>, StoreError>;
    /// Subscribe an account to a node (idempotent: returns the existing subscription).
    async fn subscribe(
        &self,
        account: AccountId,
        node: &Address,
        title: &str,
    ) -> Result<Subscription, StoreError>;
    /// An account's subscriptions, oldest first.
    async fn subscriptions(&self, account: AccountId) -> Result<Vec<Subscription>, StoreError>;
    /// Drop a subscription by id or node address; false when there was none.
    async fn unsubscribe(&self, account: AccountId, id_or_node: &str) -> Result<bool, StoreError>;
    /// Record that `subscriber` (an address on another domain) subscribed to a local node
    /// (idempotent); returns the subscription id.
    async fn subscribe_remote(
        &self,
        node: &Address,
        subscriber: &Address,
    ) -> Result<String, StoreError>;
    /// Subscribers of a local node on other domains.
    async fn remote_subscribers(&self, node: &Address) -> Result<Vec<Address>, StoreError>;
    /// The addresses of the local accounts subscribed to a node.
    async fn subscribers(&self, node: &Address) -> Result<Vec<Address>, StoreError>;
}

/// XHMTP's sender-hosted mail: access grants to hosted messages, and inbound notifications
/// with their fetch queue.
#[async_trait]
pub trait HostedStore: Send + Sync + 'static {
    /// Record a recipient's access grant to a hosted message (idempotent: a second grant for
    /// the same message and recipient keeps the first).
    async fn grant_access(
        &self,
        message: MessageId,
        recipient: &Address,
        code_hash: Vec<u8>,
    ) -> Result<(), StoreError>;
    /// A recipient's grant to a hosted message.
    async fn access(
        &self,
        message: MessageId,
        recipient: &Address,
    ) -> Result<Option<AccessGrant>, StoreError>;
    /// Note that `recipient` fetched `message` (the first time counts).
    async fn mark_fetched(
        &self,
        message: MessageId,
        recipient: &Address,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Delete hosted messages every recipient fetched more than `retention_ms` ago (and that
    /// no mailbox or pending queue entry still needs). Returns how many were deleted.
    async fn expire_hosted(&self, now: i64, retention_ms: i64) -> Result<u64, StoreError>;

    /// Store an inbound notification; a repeat of one already stored (same account and URL)
    /// returns the stored one and `false`.
    async fn put_notification(
        &self,
        notice: NewNotification,
    ) -> Result<(Notification, bool), StoreError>;
    /// An account's notifications, newest first.
    async fn notifications(
        &self,
        account: AccountId,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;
    /// Lease pending notifications whose fetch is due.
    async fn claim_fetches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Notification>, StoreError>;
    /// Record a fetch attempt's outcome (a fetched message is stored in the same commit).
    async fn finish_fetch(&self, id: i64, outcome: FetchOutcome) -> Result<(), StoreError>;
}

/// Per-account settings a front-end keeps (IMMP's compression, XHMTP's notification
/// filters): named text values, apart from the account's secrets.
#[async_trait]
pub trait SettingsStore: Send + Sync + 'static {
    /// Set (or replace) an account's setting.
    async fn set_setting(
        &self,
        account: AccountId,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError>;
    /// An account's setting, when set.
    async fn setting(&self, account: AccountId, name: &str) -> Result<Option<String>, StoreError>;
    /// A secret of the whole site that every node must share (the XHMTP access-code key, the
    /// domain's OpenPGP key): the stored one, or `candidate` stored first when there is none
    /// (the first node to ask decides; the others get its value).
    async fn site_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// Something that open sessions on any node may show at once, for these accounts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveEvent {
    /// What happened.
    pub kind: LiveKind,
    /// The accounts whose sessions show it.
    pub accounts: Vec<AccountId>,
}

/// What a live event tells.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveKind {
    /// An IMMP push, stored in the accounts' PUSH folders.
    Push(MessageId),
    /// A TMTP member came online (status 1) or went offline (2): its contacts' nodes hear it.
    Presence {
        /// The member's uid.
        from: String,
        /// 1 online, 2 offline.
        status: u8,
    },
}

/// Live events across every process sharing the store (a node's own included).
#[async_trait]
pub trait LiveEvents: Send + Sync + 'static {
    /// Tell every node's subscribers (after the change it reports is committed).
    async fn publish_live(&self, event: LiveEvent) -> Result<(), StoreError>;
    /// The events from now on; a subscriber that falls behind misses the oldest.
    fn subscribe_live(&self) -> tokio::sync::broadcast::Receiver<LiveEvent>;
}

/// Hand every live event to `show`, in order, until `stop` completes; a subscriber that falls
/// behind logs how many `what` it missed and goes on.
pub async fn follow_live<S, F, Fut>(
    store: &S,
    stop: impl std::future::Future<Output = ()>,
    what: &'static str,
    mut show: F,
) where
    S: LiveEvents + ?Sized,
    F: FnMut(LiveEvent) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::sync::broadcast::error::RecvError;
    let mut events = store.subscribe_live();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => return,
            e = events.recv() => e,
        };
        match event {
            Ok(event) => show(event).await,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "{what} fell behind; some were not shown");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// A whole store: the mail store and every capability the front-ends use.
pub trait Store:
    MailStore + PubSubStore + HostedStore + SettingsStore + LiveEvents + tmtp::TmtpStore
{
}

impl<T> Store for T where
    T: MailStore + PubSubStore + HostedStore + SettingsStore + LiveEvents + tmtp::TmtpStore
{
}

/// How many live events a subscriber may fall behind by before it misses some.
pub(crate) const LIVE_EVENT_BACKLOG: usize = 1024;

/// The cause is shown in the message, not again as a source: `{:#}` prints it once.
impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}
