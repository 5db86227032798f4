//! The TMTP tables on SQLite.

use super::*;
use crate::store::tmtp::{
    GroupMember, GroupStatus, NodeId, TmtpMember, TmtpPayload, TmtpPriority, TmtpQueued, TmtpStore,
};

/// The member row joined with its account's address.
const MEMBER: &str = "SELECT m.account_id, a.address, m.uid FROM tmtp_members m
                      JOIN accounts a ON a.id = m.account_id";

fn member_row(r: &Row) -> rusqlite::Result<(i64, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn member(row: (i64, String, String)) -> Result<TmtpMember, StoreError> {
    Ok(TmtpMember {
        account: row.0,
        address: parse_stored_address(&row.1)?,
        uid: row.2,
    })
}

fn find_member(
    c: &Connection,
    clause: &str,
    arg: &dyn rusqlite::ToSql,
) -> Result<Option<TmtpMember>, StoreError> {
    c.prepare_cached(&format!("{MEMBER} WHERE {clause}"))?
        .query_row([arg], member_row)
        .optional()?
        .map(member)
        .transpose()
}

#[async_trait]
impl TmtpStore for SqliteStore {
    async fn tmtp_add_member(
        &self,
        account: AccountId,
        uid: &str,
    ) -> Result<TmtpMember, StoreError> {
        let uid = uid.to_owned();
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO tmtp_members (account_id, uid, created_at)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![account, uid, now_ms()])?;
                find_member(c, "m.account_id = ?1", &account)?
                    .ok_or_else(|| StoreError::NoAccount(account.to_string()))
            })
            .await
    }

    async fn tmtp_member_by_uid(&self, uid: &str) -> Result<Option<TmtpMember>, StoreError> {
        let uid = uid.to_owned();
        self.read(move |c| find_member(c, "m.uid = ?1", &uid)).await
    }

    async fn tmtp_member_by_account(
        &self,
        account: AccountId,
    ) -> Result<Option<TmtpMember>, StoreError> {
        self.read(move |c| find_member(c, "m.account_id = ?1", &account))
            .await
    }

    async fn tmtp_add_node(
        &self,
        account: AccountId,
        label: &str,
        secret_hash: &[u8],
        copy_from: Option<NodeId>,
    ) -> Result<NodeId, StoreError> {
        let (label, hash) = (label.to_owned(), secret_hash.to_vec());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO tmtp_nodes (account_id, label, secret_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![account, label, hash, now_ms()])?;
                let node = c.last_insert_rowid();
                if let Some(from) = copy_from {
                    c.prepare_cached(
                        "INSERT INTO tmtp_queue (node_id, priority, tmtp_id, message_id, frame)
                         SELECT ?1, priority, tmtp_id, message_id, frame FROM tmtp_queue
                         WHERE node_id = ?2 ORDER BY seq",
                    )?
                    .execute(params![node, from])?;
                }
                Ok(node)
            })
            .await
    }

    async fn tmtp_verify_node(
        &self,
        uid: &str,
        secret_hash: &[u8],
    ) -> Result<Option<(TmtpMember, NodeId)>, StoreError> {
        let (uid, hash) = (uid.to_owned(), secret_hash.to_vec());
        self.read(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT m.account_id, a.address, m.uid, n.id FROM tmtp_nodes n
                     JOIN tmtp_members m ON m.account_id = n.account_id
                     JOIN accounts a ON a.id = m.account_id
                     WHERE n.secret_hash = ?1 AND m.uid = ?2",
                )?
                .query_row(params![hash, uid], |r| Ok((member_row(r)?, r.get(3)?)))
                .optional()?;
            row.map(|(m, node)| Ok((member(m)?, node))).transpose()
        })
        .await
    }

    async fn tmtp_nodes(&self, account: AccountId) -> Result<Vec<NodeId>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id FROM tmtp_nodes WHERE account_id = ?1 ORDER BY id")?;
            let rows = stmt.query_map([account], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<NodeId>>>()?)
        })
        .await
    }

    async fn tmtp_add_alias(&self, account: AccountId, alias: &str) -> Result<bool, StoreError> {
        let alias = alias.to_owned();
        self.writer
            .write(move |c| {
                let group: bool = c
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM tmtp_groups WHERE gid = ?1)")?
                    .query_row([&alias], |r| r.get(0))?;
                if group {
                    return Ok(false);
                }
                c.prepare_cached(
                    "INSERT OR IGNORE INTO tmtp_aliases (alias, account_id) VALUES (?1, ?2)",
                )?
                .execute(params![alias, account])?;
                let owner: i64 = c
                    .prepare_cached("SELECT account_id FROM tmtp_aliases WHERE alias = ?1")?
                    .query_row([&alias], |r| r.get(0))?;
                Ok(owner == account)
            })
            .await
    }

    async fn tmtp_alias(&self, alias: &str) -> Result<Option<AccountId>, StoreError> {
        let alias = alias.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT account_id FROM tmtp_aliases WHERE alias = ?1")?
                    .query_row([alias], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn tmtp_group(&self, gid: &str) -> Result<Vec<GroupMember>, StoreError> {
        let gid = gid.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT account_id, alias, status FROM tmtp_groups WHERE gid = ?1
                 ORDER BY account_id",
            )?;
            let rows = stmt.query_map([gid], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            rows.map(|row| {
                let (account, alias, status) = row?;
                Ok(GroupMember {
                    account,
                    alias,
                    status: GroupStatus::from_i64(status)
                        .ok_or_else(|| StoreError::Corrupt(format!("group status {status}")))?,
                })
            })
            .collect()
        })
        .await
    }

    async fn tmtp_set_group_member(&self, gid: &str, m: &GroupMember) -> Result<bool, StoreError> {
        let (gid, m) = (gid.to_owned(), m.clone());
        self.writer
            .write(move |c| {
                let alias: bool = c
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM tmtp_aliases WHERE alias = ?1)")?
                    .query_row([&gid], |r| r.get(0))?;
                if alias {
                    return Ok(false);
                }
                c.prepare_cached(
                    "INSERT INTO tmtp_groups (gid, account_id, alias, status) VALUES (?1,?2,?3,?4)
                     ON CONFLICT (gid, account_id)
                     DO UPDATE SET alias = excluded.alias, status = excluded.status",
                )?
                .execute(params![gid, m.account, m.alias, m.status as i64])?;
                Ok(true)
            })
            .await
    }

    async fn tmtp_set_ohi(
        &self,
        account: AccountId,
        target: AccountId,
        on: bool,
    ) -> Result<bool, StoreError> {
        self.writer
            .write(move |c| {
                let sql = if on {
                    "INSERT OR IGNORE INTO tmtp_ohi (account_id, target_id) VALUES (?1, ?2)"
                } else {
                    "DELETE FROM tmtp_ohi WHERE account_id = ?1 AND target_id = ?2"
                };
                Ok(c.prepare_cached(sql)?.execute(params![account, target])? > 0)
            })
            .await
    }

    async fn tmtp_ohi_targets(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT target_id FROM tmtp_ohi WHERE account_id = ?1 ORDER BY target_id",
            )?;
            let rows = stmt.query_map([account], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<AccountId>>>()?)
        })
        .await
    }

    async fn tmtp_ohi_sources(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT account_id FROM tmtp_ohi WHERE target_id = ?1 ORDER BY account_id",
            )?;
            let rows = stmt.query_map([account], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<AccountId>>>()?)
        })
        .await
    }

    async fn tmtp_enqueue(
        &self,
        nodes: &[NodeId],
        priority: TmtpPriority,
        tmtp_id: &str,
        payload: &TmtpPayload,
    ) -> Result<(), StoreError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let (nodes, tmtp_id, payload) = (nodes.to_vec(), tmtp_id.to_owned(), payload.clone());
        self.writer
            .write(move |c| {
                let (message, frame) = match &payload {
                    TmtpPayload::Frame(f) => (None, Some(&f[..])),
                    TmtpPayload::Message(m) => (Some(&m.0.as_bytes()[..]), None),
                };
                let mut stmt = c.prepare_cached(
                    "INSERT INTO tmtp_queue (node_id, priority, tmtp_id, message_id, frame)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for node in &nodes {
                    stmt.execute(params![node, priority as i64, tmtp_id, message, frame])?;
                }
                Ok(())
            })
            .await
    }

    async fn tmtp_next(&self, node: NodeId) -> Result<Option<TmtpQueued>, StoreError> {
        self.read(move |c| {
            let row: Option<(i64, String, Option<Vec<u8>>, Option<Vec<u8>>)> = c
                .prepare_cached(
                    "SELECT seq, tmtp_id, message_id, frame FROM tmtp_queue WHERE node_id = ?1
                     ORDER BY priority, seq LIMIT 1",
                )?
                .query_row([node], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            row.map(|(seq, tmtp_id, message, frame)| {
                let payload = match (message, frame) {
                    (Some(m), _) => TmtpPayload::Message(message_id_from_blob(&m)?),
                    (None, Some(f)) => TmtpPayload::Frame(f.into()),
                    (None, None) => {
                        return Err(StoreError::Corrupt(format!("empty TMTP queue entry {seq}")))
                    }
                };
                Ok(TmtpQueued {
                    seq,
                    tmtp_id,
                    payload,
                })
            })
            .transpose()
        })
        .await
    }

    async fn tmtp_ack(&self, node: NodeId, seq: i64) -> Result<bool, StoreError> {
        self.writer
            .write(move |c| {
                Ok(
                    c.prepare_cached("DELETE FROM tmtp_queue WHERE node_id = ?1 AND seq = ?2")?
                        .execute(params![node, seq])?
                        > 0,
                )
            })
            .await
    }
}
