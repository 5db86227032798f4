//! The nodes logged in on this gateway: one session per node, a wake-up for each node's
//! delivery loop, and the channel presence notices reach a node's link through.

use bytes::Bytes;
use mailgate_core::store::tmtp::NodeId;
use mailgate_core::store::AccountId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// One logged-in node.
struct Slot {
    account: AccountId,
    wake: Arc<Notify>,
    out: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<NodeId, Slot>,
    accounts: HashMap<AccountId, Vec<NodeId>>,
}

/// The registry of logged-in nodes.
#[derive(Default)]
pub struct Online {
    state: Mutex<State>,
}

/// A node's claim on its session; released when dropped.
pub struct Claim {
    /// Wakes the node's delivery loop.
    pub wake: Arc<Notify>,
    /// The account's first node online here.
    pub first: bool,
}

impl Online {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a node's session; `None` when the node has one already.
    pub fn claim(
        &self,
        node: NodeId,
        account: AccountId,
        out: mpsc::Sender<Bytes>,
    ) -> Option<Claim> {
        let mut s = self.lock();
        if s.nodes.contains_key(&node) {
            return None;
        }
        let wake = Arc::new(Notify::new());
        s.nodes.insert(
            node,
            Slot {
                account,
                wake: wake.clone(),
                out,
            },
        );
        let nodes = s.accounts.entry(account).or_default();
        nodes.push(node);
        Some(Claim {
            wake,
            first: nodes.len() == 1,
        })
    }

    /// End a node's session; `true` when it was the account's last node online here.
    pub fn release(&self, node: NodeId) -> bool {
        let mut s = self.lock();
        let Some(slot) = s.nodes.remove(&node) else {
            return false;
        };
        let Some(nodes) = s.accounts.get_mut(&slot.account) else {
            return false;
        };
        nodes.retain(|n| *n != node);
        if nodes.is_empty() {
            s.accounts.remove(&slot.account);
            true
        } else {
            false
        }
    }

    /// Wake these nodes' delivery loops (those logged in here).
    pub fn wake_nodes(&self, nodes: &[NodeId]) {
        let s = self.lock();
        for n in nodes {
            if let Some(slot) = s.nodes.get(n) {
                slot.wake.notify_one();
            }
        }
    }

    /// Wake every node of an account logged in here.
    pub fn wake_account(&self, account: AccountId) {
        let s = self.lock();
        for n in s.accounts.get(&account).into_iter().flatten() {
            if let Some(slot) = s.nodes.get(n) {
                slot.wake.notify_one();
            }
        }
    }

    /// Whether any node of the account is logged in here.
    pub fn is_online(&self, account: AccountId) -> bool {
        self.lock().accounts.contains_key(&account)
    }

    /// Send a frame now to every node of `account` logged in here; dropped for a node whose
    /// link is backed up (presence notices are not queued, as in mnm).
    pub fn notify(&self, account: AccountId, frame: &Bytes) {
        let s = self.lock();
        for n in s.accounts.get(&account).into_iter().flatten() {
            if let Some(slot) = s.nodes.get(n) {
                let _ = slot.out.try_send(frame.clone());
            }
        }
    }
}
