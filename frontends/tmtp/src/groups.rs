//! Distribution groups, as mnm keeps them: GroupInvite creates a group (its inviter the first
//! member) or invites to it; GroupEdit joins, changes a member's alias or drops a member (a
//! member dropping itself is invited again; dropping another bars it). Every change is told
//! to the group's members in a `member` message.

use crate::frame::{quit, Header};
use crate::ids;
use crate::request::op;
use crate::session::{std_frame, std_frame_at, store_error, End, Session, ALIAS_MIN};
use bytes::Bytes;
use mailgate_core::store::tmtp::{GroupMember, GroupStatus, TmtpPriority};
use mailgate_core::store::AccountId;

/// The ack of a group op: the invitation's id and date, or nothing, or the error.
type Acked = Result<Option<(String, i64)>, String>;

/// The joined members of a group, for a sender that is in it (invited or joined).
pub(crate) async fn joined(
    s: &Session,
    gid: &str,
    by: AccountId,
) -> Result<Vec<AccountId>, String> {
    let rows = s
        .server
        .core
        .store
        .tmtp_group(gid)
        .await
        .map_err(store_error)?;
    if rows.is_empty() {
        return Err(format!("GroupGetUsers: iGid {gid} not found"));
    }
    let member = |a: AccountId| rows.iter().find(|r| r.account == a);
    if !member(by).is_some_and(|r| r.status != GroupStatus::Barred) {
        return Err(format!("GroupGetUsers: not a member of {gid}"));
    }
    Ok(rows
        .iter()
        .filter(|r| r.status == GroupStatus::Joined)
        .map(|r| r.account)
        .collect())
}

/// GroupInvite (op 5) or GroupEdit (op 6): `Err` ends the link (a malformed request).
pub(crate) async fn edit(s: &Session, op: u8, h: &Header, data: Bytes) -> Result<Acked, End> {
    let act = if op == op::GROUP_INVITE {
        "invite"
    } else {
        h.act.as_str()
    };
    match act {
        "invite" => Ok(invite(s, h, data).await),
        "join" | "alias" | "drop" => {
            if act == "alias" && h.newalias.is_empty() || act == "drop" && h.to.is_empty() {
                return Err(End::Quit(quit::HEADER));
            }
            Ok(change(s, act, h).await)
        }
        _ => Err(End::Quit(quit::HEADER)),
    }
}

fn row(rows: &[GroupMember], account: AccountId) -> Option<&GroupMember> {
    rows.iter().find(|r| r.account == account)
}

async fn set(s: &Session, gid: &str, m: GroupMember) -> Result<(), String> {
    match s.server.core.store.tmtp_set_group_member(gid, &m).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("GroupInvite: gid {gid} not available")),
        Err(e) => Err(store_error(e)),
    }
}

async fn invite(s: &Session, h: &Header, data: Bytes) -> Acked {
    let me = s.login.as_ref().expect("group ops after login");
    let (account, uid) = (me.member.account, me.member.uid.clone());
    if h.gid.len() < ALIAS_MIN {
        return Err(format!("gid must be {ALIAS_MIN}+ characters"));
    }
    let store = &s.server.core.store;
    if store.tmtp_alias(&h.from).await.map_err(store_error)? != Some(account) {
        return Err(format!(
            "GroupInvite: iByAlias {} not for iByUid {uid}",
            h.from
        ));
    }
    s.check_pings(account)?;
    let invitee = store
        .tmtp_alias(&h.to)
        .await
        .map_err(store_error)?
        .ok_or_else(|| format!("GroupInvite: iAlias {} not found", h.to))?;
    let rows = store.tmtp_group(&h.gid).await.map_err(store_error)?;
    if rows.is_empty() {
        let founder = GroupMember {
            account,
            alias: h.from.clone(),
            status: GroupStatus::Joined,
        };
        set(s, &h.gid, founder).await?;
    } else {
        if row(&rows, account).map(|r| r.status) != Some(GroupStatus::Joined) {
            return Err(format!("GroupInvite: iByUid {uid} not a member"));
        }
        if row(&rows, invitee).map(|r| r.status) == Some(GroupStatus::Joined) {
            return Err(format!("GroupInvite: iAlias {} already joined", h.to));
        }
    }
    let invited = GroupMember {
        account: invitee,
        alias: h.to.clone(),
        status: GroupStatus::Invited,
    };
    set(s, &h.gid, invited).await?;
    let id = ids::new_id();
    let posted = mailgate_core::message::now_ms();
    let frame = std_frame_at("invite", &id, &uid, posted)
        .with("gid", h.gid.clone())
        .with("alias", h.from.clone())
        .with("to", h.to.clone())
        .with_data(data);
    s.queue_frame(&[invitee], None, TmtpPriority::Normal, &id, frame)
        .await?;
    tell(s, &h.gid, "invite", &h.to, None, None).await?;
    Ok(Some((id, posted)))
}

async fn change(s: &Session, act: &str, h: &Header) -> Acked {
    let me = s.login.as_ref().expect("group ops after login");
    let account = me.member.account;
    let store = &s.server.core.store;
    let rows = store.tmtp_group(&h.gid).await.map_err(store_error)?;
    if rows.is_empty() {
        return Err(format!("GroupEdit: iGid {} not found", h.gid));
    }
    let mine = row(&rows, account).cloned();
    match act {
        "join" => {
            let Some(mine) = mine.filter(|r| r.status != GroupStatus::Barred) else {
                return Err(format!("GroupJoin: not invited to {}", h.gid));
            };
            let alias = if h.newalias.is_empty() {
                mine.alias.clone()
            } else if owns(s, account, &h.newalias).await? {
                h.newalias.clone()
            } else {
                return Err(format!("GroupJoin: iNewAlias {} not yours", h.newalias));
            };
            if mine.status != GroupStatus::Joined || alias != mine.alias {
                let joined = GroupMember {
                    account,
                    alias: alias.clone(),
                    status: GroupStatus::Joined,
                };
                set(s, &h.gid, joined).await?;
            }
            tell(s, &h.gid, "join", &alias, None, None).await?;
        }
        "alias" => {
            let Some(mine) = mine.filter(|r| r.status == GroupStatus::Joined) else {
                return Err(format!("GroupAlias: not a member of {}", h.gid));
            };
            if !owns(s, account, &h.newalias).await? {
                return Err(format!("GroupAlias: iNewAlias {} not yours", h.newalias));
            }
            let renamed = GroupMember {
                alias: h.newalias.clone(),
                ..mine.clone()
            };
            set(s, &h.gid, renamed).await?;
            tell(s, &h.gid, "alias", &mine.alias, Some(&h.newalias), None).await?;
        }
        _ => {
            let Some(target) = rows.iter().find(|r| r.alias == h.to).cloned() else {
                return Err(format!("GroupQuit: iAlias {} not a member", h.to));
            };
            let status = if target.account == account {
                GroupStatus::Invited
            } else if mine.map(|r| r.status) == Some(GroupStatus::Joined) {
                GroupStatus::Barred
            } else {
                return Err(format!("GroupQuit: not a member of {}", h.gid));
            };
            let dropped = GroupMember { status, ..target };
            let who = dropped.account;
            set(s, &h.gid, dropped).await?;
            tell(s, &h.gid, "drop", &h.to, None, Some(who)).await?;
        }
    }
    Ok(None)
}

/// Is `alias` one of `account`'s aliases?
async fn owns(s: &Session, account: AccountId, alias: &str) -> Result<bool, String> {
    let owner = s
        .server
        .core
        .store
        .tmtp_alias(alias)
        .await
        .map_err(store_error)?;
    Ok(owner == Some(account))
}

/// The `member` message to every joined member of the group (and to `also`).
async fn tell(
    s: &Session,
    gid: &str,
    act: &str,
    alias: &str,
    newalias: Option<&str>,
    also: Option<AccountId>,
) -> Result<(), String> {
    let me = s.login.as_ref().expect("group ops after login");
    let rows = s
        .server
        .core
        .store
        .tmtp_group(gid)
        .await
        .map_err(store_error)?;
    let mut accounts: Vec<AccountId> = rows
        .iter()
        .filter(|r| r.status == GroupStatus::Joined)
        .map(|r| r.account)
        .collect();
    accounts.extend(also);
    let id = ids::new_id();
    let mut frame = std_frame("member", &id, &me.member.uid)
        .with("act", act)
        .with("gid", gid)
        .with("alias", alias);
    if let Some(n) = newalias {
        frame.set("newalias", n);
    }
    s.queue_frame(&accounts, None, TmtpPriority::Normal, &id, frame)
        .await
}
