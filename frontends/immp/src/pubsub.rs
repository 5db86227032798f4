//! Publish/subscribe and pushes for a pipeline: nodes, local and remote subscriptions, PUSH,
//! and storing pushes (PUSH folder, live `150` lines, relay to other domains).

use crate::codec::Reply;
use crate::mailbox::temporary;
use crate::payload::PartSpec;
use crate::pipeline::{Phase, Pipeline, PushTxn, Txn};
use crate::session::PROTOCOL;
use bytes::Bytes;
use mailgate_core::message::now_ms;
use mailgate_core::store::{LiveEvent, LiveKind};
use mailgate_core::{
    Address, ImidRef, Importance, Message, MessageKind, Origin, Part, SenderCheck, Submitter,
    TraceHop,
};

impl Pipeline {
    /// A node named in a command: `name` (own domain), `name@domain`, or the draft's
    /// `name@domain/sub` (= `name/sub@domain`).
    pub(crate) fn node_address(&self, text: &str) -> Result<Address, Reply> {
        let bad = |e: String| Reply::new(446, format!("Invalid node {text}: {e}."));
        if !text.contains('@') {
            return Address::parse_imid(&format!("{text}@{}", self.shared.server.domain))
                .map_err(|e| bad(e.to_string()));
        }
        let r = ImidRef::parse(text).map_err(|e| bad(e.to_string()))?;
        match r.mailbox {
            None => Ok(r.address.account()),
            Some(sub) => {
                let mut a = r.address.account();
                a.node.push(a.local.clone());
                let mut segs: Vec<&str> = sub.split('/').collect();
                a.local = segs.pop().unwrap_or_default().to_owned();
                a.node.extend(segs.into_iter().map(str::to_owned));
                Ok(a)
            }
        }
    }

    pub(crate) async fn publish(&mut self, node: &str, title: Option<String>) {
        let Phase::Local(account) = &self.shared.phase() else {
            return;
        };
        if node.contains('@') {
            self.say(Reply::new(
                401,
                "PUBLISH takes a node name; it is published on this domain.",
            ))
            .await;
            return;
        }
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(r).await,
        };
        let title = title.unwrap_or_else(|| addr.to_string());
        let reply = match self
            .shared
            .server
            .core
            .store
            .create_node(account.id, &addr, &title)
            .await
        {
            Ok(()) => Reply::new(260, format!("Node {addr} published.")),
            Err(mailgate_core::StoreError::Exists(_)) => {
                Reply::new(460, format!("Node {addr} exists already."))
            }
            Err(e) => temporary(e),
        };
        self.say(reply).await;
    }

    /// A local node this session's account owns, or the reply saying why not.
    pub(crate) async fn owned_node(&self, addr: &Address) -> Result<(), Reply> {
        let owner = match &self.shared.phase() {
            Phase::Local(a) => Some(a.id),
            _ => None,
        };
        match self.shared.server.core.store.node(addr).await {
            Ok(Some(n)) if Some(n.owner) == owner => Ok(()),
            Ok(Some(_)) => Err(Reply::new(403, format!("You do not own {addr}."))),
            Ok(None) => Err(Reply::new(405, format!("No node {addr}."))),
            Err(e) => Err(temporary(e)),
        }
    }

    pub(crate) async fn publish_to(&mut self, node: &str) {
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(r).await,
        };
        if let Err(r) = self.owned_node(&addr).await {
            return self.say(r).await;
        }
        let store = &self.shared.server.core.store;
        let (local, remote) = (
            store.subscribers(&addr).await,
            store.remote_subscribers(&addr).await,
        );
        let to = match (local, remote) {
            (Ok(mut l), Ok(r)) => {
                l.extend(r);
                l
            }
            (Err(e), _) | (_, Err(e)) => return self.say(temporary(e)).await,
        };
        self.txn = Some(Txn::Push(PushTxn {
            from: addr,
            to,
            importance: Importance::Normal,
            published: true,
        }));
        self.say(Reply::new(275, "Ready for the push DATA.")).await;
    }

    pub(crate) async fn subscribe(&mut self, node: &str) {
        let Phase::Local(account) = &self.shared.phase() else {
            return;
        };
        let (account, me) = (account.id, account.address.clone());
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(r).await,
        };
        let store = self.shared.server.core.store.clone();
        let local = self.shared.server.core.policy.is_local(&addr.domain);
        let title = if local {
            match store.node(&addr).await {
                Ok(Some(n)) => n.title,
                Ok(None) => return self.say(Reply::new(405, format!("No node {addr}."))).await,
                Err(e) => return self.say(temporary(e)).await,
            }
        } else {
            String::new()
        };
        self.say(Reply::new(
            380,
            format!("Subscription request for {addr} initiated."),
        ))
        .await;
        let title = if local {
            title
        } else {
            // Tell the node's server, which pushes to us from then on.
            match self.subscribe_remotely(&addr, &me).await {
                Ok(t) => t,
                Err(e) => {
                    return self
                        .say(Reply::new(
                            431,
                            format!("Cannot subscribe at {}: {e}.", addr.domain),
                        ))
                        .await
                }
            }
        };
        match store.subscribe(account, &addr, &title).await {
            Ok(s) => {
                self.say(Reply::new(280, format!("Subscribed to: {}", s.title)))
                    .await
            }
            Err(e) => self.say(temporary(e)).await,
        }
    }

    /// Subscribe `me` at the node's own server (cookie-authenticated); returns the title.
    async fn subscribe_remotely(&self, node: &Address, me: &Address) -> Result<String, String> {
        let server = &self.shared.server;
        let mut client = server
            .federation
            .connect_as(&server.core, &server.domain, &node.domain)
            .await?;
        let title = client
            .subscribe_for(node, me)
            .await
            .map_err(|e| e.to_string());
        client.quit().await;
        title
    }

    /// A remote server subscribes one of its users (`SUBSCRIBE TO <node> FOR <imid>`).
    pub(crate) async fn subscribe_for(&mut self, node: &str, who: &str) {
        let Phase::Remote(domain) = self.shared.phase() else {
            return self
                .say(Reply::new(
                    401,
                    "FOR is for servers subscribing their users.",
                ))
                .await;
        };
        let who = match Address::parse_imid(who) {
            Ok(a) if a.domain.eq_ignore_ascii_case(&domain) => a,
            Ok(a) => {
                return self
                    .say(Reply::new(403, format!("{a} is not a user of {domain}.")))
                    .await
            }
            Err(e) => {
                return self
                    .say(Reply::new(446, format!("Invalid IMID: {e}.")))
                    .await
            }
        };
        let addr = match self.node_address(node) {
            Ok(a) => a,
            Err(r) => return self.say(r).await,
        };
        let store = self.shared.server.core.store.clone();
        let title = match store.node(&addr).await {
            Ok(Some(n)) => n.title,
            Ok(None) => return self.say(Reply::new(405, format!("No node {addr}."))).await,
            Err(e) => return self.say(temporary(e)).await,
        };
        self.say(Reply::new(
            380,
            format!("Subscription request for {addr} initiated."),
        ))
        .await;
        match store.subscribe_remote(&addr, &who).await {
            Ok(_) => {
                self.say(Reply::new(280, format!("Subscribed to: {title}")))
                    .await
            }
            Err(e) => self.say(temporary(e)).await,
        }
    }

    pub(crate) async fn subscribe_list(&mut self) {
        let Phase::Local(account) = &self.shared.phase() else {
            return;
        };
        match self
            .shared
            .server
            .core
            .store
            .subscriptions(account.id)
            .await
        {
            Ok(subs) => {
                if !subs.is_empty() {
                    let lines = subs
                        .iter()
                        .map(|s| format!("{} {}", s.id, s.node))
                        .collect();
                    self.say(Reply { code: 281, lines }).await;
                }
                self.say(Reply::new(282, format!("{} subscriptions.", subs.len())))
                    .await;
            }
            Err(e) => self.say(temporary(e)).await,
        }
    }

    pub(crate) async fn unsubscribe(&mut self, what: &str) {
        let Phase::Local(account) = &self.shared.phase() else {
            return;
        };
        let key = match self.node_address(what) {
            Ok(a) if what.contains('@') => a.account_key(),
            _ => what.to_owned(),
        };
        match self
            .shared
            .server
            .core
            .store
            .unsubscribe(account.id, &key)
            .await
        {
            Ok(true) => {
                self.say(Reply::new(283, format!("Unsubscribed from {what}.")))
                    .await
            }
            Ok(false) => {
                self.say(Reply::new(405, format!("No subscription {what}.")))
                    .await
            }
            Err(e) => self.say(temporary(e)).await,
        }
    }

    pub(crate) async fn push(&mut self, to: &str, from: &str, important: bool) {
        let to = match Address::parse_imid(to) {
            Ok(a) => a,
            Err(e) => {
                return self
                    .say(Reply::new(446, format!("Invalid recipient {to}: {e}.")))
                    .await
            }
        };
        let from = match self.node_address(from) {
            Ok(a) => a,
            Err(r) => return self.say(r).await,
        };
        // Who may push as a node: its owner (a local node), or a server that proved by cookie
        // that it speaks for the node's domain (a remote node). Anyone else is refused.
        if self.shared.server.core.policy.is_local(&from.domain) {
            if let Err(r) = self.owned_node(&from).await {
                self.shared
                    .server
                    .core
                    .metrics
                    .event("immp_push", "not_owner");
                return self.say(r).await;
            }
        } else if !matches!(&self.shared.phase(), Phase::Remote(d) if d.eq_ignore_ascii_case(&from.domain))
        {
            self.shared
                .server
                .core
                .metrics
                .event("immp_push", "unverified_sender");
            return self
                .say(Reply::new(
                    403,
                    format!(
                        "A push from {from} must come from a server authenticated (AUTH COOKIE) for {}.",
                        from.domain
                    ),
                ))
                .await;
        }
        let store = self.shared.server.core.store.clone();
        let account = match store.account(&to).await {
            Ok(Some(a)) if self.shared.server.core.policy.is_local(&to.domain) => a,
            Ok(_) => {
                return self
                    .say(Reply::new(441, format!("No such user here: {to}.")))
                    .await
            }
            Err(e) => return self.say(temporary(e)).await,
        };
        let subscribed = match store.subscriptions(account.id).await {
            Ok(subs) => subs.iter().any(|s| s.node.same_account(&from)),
            Err(e) => return self.say(temporary(e)).await,
        };
        if !subscribed {
            return self
                .say(Reply::new(
                    430,
                    format!("{to} is not subscribed to {from}."),
                ))
                .await;
        }
        self.txn = Some(Txn::Push(PushTxn {
            from,
            to: vec![account.address],
            importance: if important {
                Importance::High
            } else {
                Importance::Normal
            },
            published: false,
        }));
        self.say(Reply::new(275, "Ready for the push DATA.")).await;
    }

    /// Store a push for every recipient (PUSH folder, bypassing the inbox) and show it to their
    /// open sessions.
    pub(crate) async fn deliver_push(
        &mut self,
        push: PushTxn,
        spec: PartSpec,
        data: Vec<u8>,
    ) -> Reply {
        let max = self.shared.server.core.policy.max_recipients.max(1);
        let mut delivered = 0;
        let mut last_id = None;
        for chunk in push.to.chunks(max) {
            let mut m = Message::new(push.from.clone(), chunk.to_vec(), "", "");
            m.kind = MessageKind::Push;
            m.importance = push.importance;
            m.parts = vec![Part {
                name: spec.name.clone().unwrap_or_else(|| "push".into()),
                media_type: spec
                    .media_type
                    .clone()
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                data: Bytes::from(data.clone()),
                content: true,
            }];
            m.trace.push(TraceHop {
                protocol: PROTOCOL.into(),
                peer: self.shared.peer.ip().to_string(),
                at: now_ms(),
            });
            // A local node's push was checked to come from its owner (published ones are
            // relayed to remote subscribers too); a remote node's from a server
            // cookie-authenticated for its domain.
            let local_node = self.shared.server.core.policy.is_local(&push.from.domain);
            let submitter = if push.published || local_node {
                Submitter::Gateway
            } else {
                m.security.sender_check = Some(SenderCheck::Domain);
                Submitter::Peer(self.shared.peer.ip())
            };
            let origin = Origin {
                protocol: PROTOCOL,
                submitter,
            };
            let id = m.id;
            match self.shared.server.core.submit(m, &origin, None).await {
                Ok(receipt) => {
                    delivered += receipt.local.len();
                    last_id = Some(id);
                    // Every node's open sessions of these accounts show it (this one's too).
                    let event = LiveEvent {
                        kind: LiveKind::Push(id),
                        accounts: receipt.local_accounts.clone(),
                    };
                    if let Err(e) = self.shared.server.core.store.publish_live(event).await {
                        tracing::warn!(error = %e, "a stored push was not shown live");
                    }
                }
                Err(e) => return Reply::new(750, format!("Push not stored: {e}.")),
            }
        }
        match last_id {
            Some(id) => Reply::new(
                274,
                format!("{id} Push delivered to {delivered} recipients."),
            ),
            None => Reply::new(274, "- Push delivered to 0 recipients."),
        }
    }
}
