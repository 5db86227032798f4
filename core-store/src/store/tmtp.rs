//! What the TMTP front-end keeps in the store: members (a permanent uid per account), their
//! nodes (one secret per device), aliases, distribution groups, presence lists and the per-node
//! delivery queue.
//!
//! Mail placed in a member's INBOX by any front-end is queued for each of the member's nodes in
//! the same transaction (a trigger on `entries`), so a crash can never leave a message in the
//! mailbox that the member's devices will not be sent.

use super::{AccountId, StoreError};
use crate::address::Address;
use crate::message::MessageId;
use async_trait::async_trait;
use bytes::Bytes;

/// Row id of a member's node (device).
pub type NodeId = i64;

/// A TMTP member: a local account with a permanent uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmtpMember {
    /// The account.
    pub account: AccountId,
    /// The account's address.
    pub address: Address,
    /// The member's permanent TMTP user id.
    pub uid: String,
}

/// A member's standing in a group (mnm's invited / joined / barred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// Invited; may join, receives nothing yet.
    Invited = 1,
    /// A member: receives what is posted to the group.
    Joined = 2,
    /// Dropped by another member; must be invited again.
    Barred = 3,
}

impl GroupStatus {
    /// The stored number back to a status.
    pub fn from_i64(n: i64) -> Option<Self> {
        match n {
            1 => Some(GroupStatus::Invited),
            2 => Some(GroupStatus::Joined),
            3 => Some(GroupStatus::Barred),
            _ => None,
        }
    }
}

/// One row of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's account.
    pub account: AccountId,
    /// The alias the member is known by in the group.
    pub alias: String,
    /// Invited, joined or barred.
    pub status: GroupStatus,
}

/// What a queue entry sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TmtpPayload {
    /// A complete frame (header and data), rendered when it was queued.
    Frame(Bytes),
    /// A stored message, rendered as a `delivery` when it is sent (it may be mail from any
    /// protocol; it stays in the mailbox after the node acknowledges it).
    Message(MessageId),
}

/// Queue priority: `user` messages go ahead of everything older (mnm's `E` before `M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmtpPriority {
    /// Account changes (`user`).
    Urgent = 0,
    /// Everything else.
    Normal = 1,
}

/// The next entry of a node's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmtpQueued {
    /// Queue position (unique, increasing).
    pub seq: i64,
    /// The TMTP id the node acknowledges.
    pub tmtp_id: String,
    /// What to send.
    pub payload: TmtpPayload,
}

/// The TMTP tables.
#[async_trait]
pub trait TmtpStore: Send + Sync + 'static {
    /// Make `account` a member with `uid`; a member already keeps its uid (returned).
    async fn tmtp_add_member(
        &self,
        account: AccountId,
        uid: &str,
    ) -> Result<TmtpMember, StoreError>;
    /// The member with this uid.
    async fn tmtp_member_by_uid(&self, uid: &str) -> Result<Option<TmtpMember>, StoreError>;
    /// The member behind this account, when it is one.
    async fn tmtp_member_by_account(
        &self,
        account: AccountId,
    ) -> Result<Option<TmtpMember>, StoreError>;
    /// Add a node whose secret hashes to `secret_hash`; with `copy_from`, the new node's queue
    /// starts as a copy of that node's (mnm's `newnode` from a logged-in node).
    async fn tmtp_add_node(
        &self,
        account: AccountId,
        label: &str,
        secret_hash: &[u8],
        copy_from: Option<NodeId>,
    ) -> Result<NodeId, StoreError>;
    /// The member and node of this uid and secret hash, when they match.
    async fn tmtp_verify_node(
        &self,
        uid: &str,
        secret_hash: &[u8],
    ) -> Result<Option<(TmtpMember, NodeId)>, StoreError>;
    /// Every node of an account.
    async fn tmtp_nodes(&self, account: AccountId) -> Result<Vec<NodeId>, StoreError>;
    /// Give `account` this alias: `false` when another account or a group has it.
    async fn tmtp_add_alias(&self, account: AccountId, alias: &str) -> Result<bool, StoreError>;
    /// The account an alias names.
    async fn tmtp_alias(&self, alias: &str) -> Result<Option<AccountId>, StoreError>;
    /// Every row of a group (empty when there is no such group).
    async fn tmtp_group(&self, gid: &str) -> Result<Vec<GroupMember>, StoreError>;
    /// Set one member's row of a group (the group exists while it has rows). `false` when the
    /// group would be new and `gid` is an alias.
    async fn tmtp_set_group_member(
        &self,
        gid: &str,
        member: &GroupMember,
    ) -> Result<bool, StoreError>;
    /// Turn on or off `account`'s presence notices to `target`; `true` when that changed.
    async fn tmtp_set_ohi(
        &self,
        account: AccountId,
        target: AccountId,
        on: bool,
    ) -> Result<bool, StoreError>;
    /// The accounts `account` tells of its presence.
    async fn tmtp_ohi_targets(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError>;
    /// The accounts that tell `account` of their presence.
    async fn tmtp_ohi_sources(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError>;
    /// Queue one payload for each of these nodes, in one commit.
    async fn tmtp_enqueue(
        &self,
        nodes: &[NodeId],
        priority: TmtpPriority,
        tmtp_id: &str,
        payload: &TmtpPayload,
    ) -> Result<(), StoreError>;
    /// The head of a node's queue: urgent entries first, then in queue order.
    async fn tmtp_next(&self, node: NodeId) -> Result<Option<TmtpQueued>, StoreError>;
    /// Remove an acknowledged entry; `false` when it was not queued.
    async fn tmtp_ack(&self, node: NodeId, seq: i64) -> Result<bool, StoreError>;
}
