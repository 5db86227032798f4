//! The `MBOX` commands over the shared store: CHECK, INDEX, FETCH, CREATE, DELETE, MOVE.

use crate::codec::{CommandKind, MboxRef, Reply};
use base64::Engine;
use mailgate_core::mailbox::is_standard_folder;
use mailgate_core::message::rfc3339;
use mailgate_core::store::{
    Account, EntryQuery, Flags, FolderInfo, MailboxEntry, MessageSummary, TagFilter,
};
use mailgate_core::{Core, Message, MessageId};
use serde_json::{json, Value};

/// Run one MBOX command for `account`; returns the replies in order.
/// `gzip`: base64 output carries gzip streams (`SET COMPRESSION=GZIP`).
/// `page`: most entries one `MBOX INDEX` lists.
pub async fn run(
    core: &Core,
    account: &Account,
    kind: CommandKind,
    gzip: bool,
    page: u32,
) -> Vec<Reply> {
    let result = match kind {
        CommandKind::MboxCheck { mbox, recursive } => check(core, account, &mbox, recursive).await,
        CommandKind::MboxIndex { mbox, json } => index(core, account, &mbox, json, page).await,
        CommandKind::MboxFetch {
            mbox,
            json,
            pretty,
            mark_read,
        } => fetch(core, account, &mbox, json, pretty, mark_read, gzip).await,
        CommandKind::MboxCreate(path) => create(core, account, &path).await,
        CommandKind::MboxDelete(mbox) => delete(core, account, &mbox).await,
        CommandKind::MboxMove { from, to } => move_message(core, account, &from, &to).await,
        _ => Err(Reply::new(400, "Not a mailbox command.")),
    };
    result.unwrap_or_else(|r| vec![r])
}

/// `750`: the store failed; the client may try again.
pub(crate) fn temporary(e: impl std::fmt::Display) -> Reply {
    Reply::new(750, format!("Temporary failure: {e}."))
}

/// The stored folder a path names (case-insensitive), or 405.
async fn folder(core: &Core, account: &Account, path: &str) -> Result<String, Reply> {
    let folders = core.store.folders(account.id).await.map_err(temporary)?;
    folders
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case(path))
        .map(|f| f.name)
        .ok_or_else(|| Reply::new(405, format!("No such mailbox /{path}.")))
}

/// The store query of a filter (`*`, `unread`, `read`, `important`): every one is an index
/// range or the tag index.
fn filter_query(filter: Option<&str>) -> EntryQuery {
    match filter {
        Some("unread") => EntryQuery {
            seen: Some(false),
            ..EntryQuery::default()
        },
        Some("read") => EntryQuery {
            seen: Some(true),
            ..EntryQuery::default()
        },
        Some("important") => EntryQuery {
            tags: TagFilter::important(),
            ..EntryQuery::default()
        },
        _ => EntryQuery::default(),
    }
}

/// At most `limit` entries of a folder after the filter, after entry `after`, with summaries.
async fn listing(
    core: &Core,
    account: &Account,
    folder: &str,
    filter: Option<&str>,
    after: Option<i64>,
    limit: u32,
) -> Result<Vec<(MailboxEntry, MessageSummary)>, Reply> {
    let query = EntryQuery {
        after,
        limit: Some(limit),
        ..filter_query(filter)
    };
    let entries = core
        .store
        .entries(account.id, folder, query)
        .await
        .map_err(temporary)?;
    let ids: Vec<MessageId> = entries.iter().map(|e| e.message).collect();
    let mut summaries: std::collections::HashMap<_, _> = core
        .store
        .summaries(&ids)
        .await
        .map_err(temporary)?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    Ok(entries
        .into_iter()
        .filter_map(|e| summaries.remove(&e.message).map(|s| (e, s)))
        .collect())
}

/// `(unread, total)` of a folder under a filter, from the counts the store keeps (the
/// important filter counts its unread entries by the tag index).
async fn counts(
    core: &Core,
    account: &Account,
    folder: &FolderInfo,
    filter: &str,
) -> Result<(u64, u64), Reply> {
    Ok(match filter {
        "unread" => (folder.unseen, folder.unseen),
        "read" => (0, folder.total.saturating_sub(folder.unseen)),
        "important" => {
            let query = EntryQuery {
                tags: TagFilter::important(),
                ..EntryQuery::default()
            };
            let important = core
                .store
                .entries(account.id, &folder.name, query)
                .await
                .map_err(temporary)?;
            let unread = important.iter().filter(|e| !e.flags.seen).count() as u64;
            (unread, important.len() as u64)
        }
        _ => (folder.unseen, folder.total),
    })
}

async fn check(
    core: &Core,
    account: &Account,
    mbox: &MboxRef,
    recursive: bool,
) -> Result<Vec<Reply>, Reply> {
    let top = folder(core, account, &mbox.path).await?;
    let folders = core.store.folders(account.id).await.map_err(temporary)?;
    let prefix = format!("{}/", top.to_ascii_lowercase());
    let filter = mbox.filter.as_deref().unwrap_or("*");
    let mut lines = Vec::new();
    for f in folders {
        let wanted =
            f.name == top || (recursive && f.name.to_ascii_lowercase().starts_with(&prefix));
        if !wanted {
            continue;
        }
        let (unread, total) = counts(core, account, &f, filter).await?;
        lines.push(format!(
            "/{}::{filter} u={unread} t={total}",
            f.name.to_ascii_lowercase()
        ));
    }
    Ok(vec![Reply { code: 240, lines }])
}

fn summary_json(e: &MailboxEntry, s: &MessageSummary) -> Value {
    let mut flags = Vec::new();
    if e.flags.seen {
        flags.push("seen");
    }
    json!({
        "id": s.id.to_string(),
        "from": s.sender.to_string(),
        "to": s.recipients.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "subject": s.subject,
        "date": rfc3339(s.received_at),
        "size": s.size,
        "flags": flags,
        "importance": s.importance,
    })
}

/// `MBOX INDEX /<path>[::filter][#<id>] [+JSON]`: at most `page` entries, oldest first, after message `<id>` when given; the last line says how many, and when more are left
/// the id to ask after (`N messages; more after #<id>`).
async fn index(
    core: &Core,
    account: &Account,
    mbox: &MboxRef,
    as_json: bool,
    page: u32,
) -> Result<Vec<Reply>, Reply> {
    let name = folder(core, account, &mbox.path).await?;
    let after = match &mbox.id {
        Some(id) => Some(entry(core, account, &name, id).await?.id),
        None => None,
    };
    let mut list = listing(
        core,
        account,
        &name,
        mbox.filter.as_deref(),
        after,
        page.saturating_add(1),
    )
    .await?;
    let more = list.len() > page as usize;
    list.truncate(page as usize);
    let mut lines: Vec<String> = list
        .iter()
        .map(|(e, s)| {
            if as_json {
                summary_json(e, s).to_string()
            } else {
                format!(
                    "{} {} {} {:?}",
                    s.id,
                    if e.flags.seen { "read" } else { "unread" },
                    s.sender,
                    s.subject
                )
            }
        })
        .collect();
    match list.last().filter(|_| more) {
        Some((_, last)) => lines.push(format!("{} messages; more after #{}", list.len(), last.id)),
        None => lines.push(format!("{} messages", list.len())),
    }
    Ok(vec![Reply { code: 250, lines }])
}

/// Find the entry of message `id` in a folder.
async fn entry(
    core: &Core,
    account: &Account,
    folder: &str,
    id: &str,
) -> Result<MailboxEntry, Reply> {
    let not_found = || Reply::new(405, format!("No message {id} in /{folder}."));
    let id: MessageId = id.parse().map_err(|_| not_found())?;
    core.store
        .find_entry(account.id, id, Some(folder))
        .await
        .map_err(temporary)?
        .ok_or_else(not_found)
}

/// base64, of a gzip stream of the bytes when `gzip`.
fn b64(data: &[u8], gzip: bool) -> String {
    if gzip {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        if z.write_all(data).is_ok() {
            if let Ok(packed) = z.finish() {
                return base64::engine::general_purpose::STANDARD.encode(packed);
            }
        }
    }
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn part_json(p: &mailgate_core::Part, gzip: bool) -> Value {
    let text = p
        .media_type
        .starts_with("text/")
        .then(|| std::str::from_utf8(&p.data).ok())
        .flatten();
    match text {
        Some(t) => json!({
            "name": p.name, "type": p.media_type, "content": p.content, "encoding": "utf-8",
            "data": t,
        }),
        None => json!({
            "name": p.name, "type": p.media_type, "content": p.content,
            "encoding": if gzip { "gzip+base64" } else { "base64" },
            "data": b64(&p.data, gzip),
        }),
    }
}

/// The message as the draft's "Using JSON" shape: envelope plus parts.
pub fn message_json(m: &Message, seen: bool, gzip: bool) -> Value {
    let mut v = json!({
        "id": m.id.to_string(),
        "from": m.sender.to_string(),
        "to": m.recipients.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "subject": m.subject,
        "date": rfc3339(m.received_at),
        "importance": m.importance,
        "flags": if seen { vec!["seen"] } else { Vec::new() },
        "encrypted": m.security.encrypted,
        "parts": m.parts.iter().map(|p| part_json(p, gzip)).collect::<Vec<_>>(),
    });
    if let (Value::Object(fields), Ok(Value::Object(verdicts))) =
        (&mut v, serde_json::to_value(m.security.verdicts()))
    {
        fields.extend(verdicts);
    }
    v
}

/// A push as shown live in `150 PUSH <json>` lines.
pub fn push_json(m: &Message) -> Value {
    json!({
        "id": m.id.to_string(),
        "from": m.sender.to_string(),
        "date": rfc3339(m.received_at),
        "importance": m.importance,
        "parts": m.parts.iter().map(|p| part_json(p, false)).collect::<Vec<_>>(),
    })
}

/// The wire form of mail that arrived over SMTP: its original RFC 5322 message.
const SMTP_WIRE: &str = "smtp";

/// The message as MIME (multipart/mixed, base64 parts).
/// With `gzip`, each part is `Content-Encoding: gzip` inside its base64.
/// Mail that arrived over SMTP is its original message instead (with the `Received` and
/// `Authentication-Results` fields this gateway put on top), after a `Mailgate-Verdicts` field;
/// lines that are not UTF-8 are shown with replacement characters.
pub fn message_mime(m: &Message, gzip: bool) -> Vec<String> {
    if let Some(wire) = m.wire.as_ref().filter(|w| w.protocol == SMTP_WIRE && !gzip) {
        let mut out: Vec<String> = m
            .security
            .verdicts()
            .header()
            .map(|v| format!("Mailgate-Verdicts: {v}"))
            .into_iter()
            .collect();
        let text = String::from_utf8_lossy(&wire.bytes);
        out.extend(text.lines().map(str::to_owned));
        return out;
    }
    let boundary = format!("mailgate-{}", m.id.0.simple());
    let mut out = vec![
        format!("Message-ID: <{}@mailgate>", m.id),
        format!("From: {}", m.sender),
        format!(
            "To: {}",
            m.recipients
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("Subject: {}", m.subject.replace(['\r', '\n'], " ")),
        format!("Date: {}", rfc3339(m.received_at)),
    ];
    if let Some(verdicts) = m.security.verdicts().header() {
        out.push(format!("Mailgate-Verdicts: {verdicts}"));
    }
    if let Some(results) = &m.security.authentication {
        out.push(format!("Authentication-Results: {results}"));
    }
    out.extend([
        "MIME-Version: 1.0".into(),
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\""),
        String::new(),
    ]);
    for p in &m.parts {
        out.push(format!("--{boundary}"));
        out.push(format!("Content-Type: {}", p.media_type));
        let disposition = if p.content { "inline" } else { "attachment" };
        out.push(format!(
            "Content-Disposition: {disposition}; filename=\"{}\"",
            p.name.replace(['"', '\r', '\n'], "_")
        ));
        out.push("Content-Transfer-Encoding: base64".into());
        if gzip {
            out.push("Content-Encoding: gzip".into());
        }
        out.push(String::new());
        let text = b64(&p.data, gzip);
        out.extend(
            text.as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
    }
    out.push(format!("--{boundary}--"));
    out
}

async fn fetch(
    core: &Core,
    account: &Account,
    mbox: &MboxRef,
    as_json: bool,
    pretty: bool,
    mark_read: bool,
    gzip: bool,
) -> Result<Vec<Reply>, Reply> {
    let name = folder(core, account, &mbox.path).await?;
    let id = mbox.id.as_deref().unwrap_or_default();
    let e = entry(core, account, &name, id).await?;
    let message = core
        .store
        .message(e.message)
        .await
        .map_err(temporary)?
        .ok_or_else(|| Reply::new(405, format!("No message {id}.")))?;
    if mark_read && !e.flags.seen {
        core.store
            .set_flags(
                account.id,
                e.id,
                Flags {
                    seen: true,
                    ..e.flags
                },
            )
            .await
            .map_err(temporary)?;
    }
    let seen = e.flags.seen || mark_read;
    let (code, mut lines) = if as_json {
        let v = message_json(&message, seen, gzip);
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            v.to_string()
        };
        (250, text.lines().map(str::to_owned).collect::<Vec<_>>())
    } else {
        (251, message_mime(&message, gzip))
    };
    lines.push(format!("End of message {id}"));
    Ok(vec![Reply { code, lines }])
}

async fn create(core: &Core, account: &Account, path: &str) -> Result<Vec<Reply>, Reply> {
    if folder(core, account, path).await.is_ok() {
        return Err(Reply::new(450, format!("Mailbox /{path} exists already.")));
    }
    core.store
        .create_folder(account.id, path)
        .await
        .map_err(temporary)?;
    Ok(vec![Reply::new(252, format!("Mailbox /{path} created."))])
}

async fn delete(core: &Core, account: &Account, mbox: &MboxRef) -> Result<Vec<Reply>, Reply> {
    let name = folder(core, account, &mbox.path).await?;
    match &mbox.id {
        Some(id) => {
            let e = entry(core, account, &name, id).await?;
            core.store
                .remove_entries(account.id, &[e.id])
                .await
                .map_err(temporary)?;
            Ok(vec![Reply::new(252, format!("Message {id} deleted."))])
        }
        None => {
            if is_standard_folder(&name) {
                return Err(Reply::new(
                    450,
                    format!("/{name} is a standard mailbox and cannot be deleted."),
                ));
            }
            core.store
                .delete_folder(account.id, &name)
                .await
                .map_err(temporary)?;
            Ok(vec![Reply::new(252, format!("Mailbox /{name} deleted."))])
        }
    }
}

async fn move_message(
    core: &Core,
    account: &Account,
    from: &MboxRef,
    to: &str,
) -> Result<Vec<Reply>, Reply> {
    let source = folder(core, account, &from.path).await?;
    let target = folder(core, account, to).await?;
    let id = from.id.as_deref().unwrap_or_default();
    let e = entry(core, account, &source, id).await?;
    core.store
        .add_entry(account.id, &target, e.message)
        .await
        .map_err(temporary)?;
    core.store
        .remove_entries(account.id, &[e.id])
        .await
        .map_err(temporary)?;
    Ok(vec![Reply::new(
        252,
        format!("Message {id} moved to /{target}."),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_core::{Address, KeySource, SenderCheck};

    #[test]
    fn both_renderings_show_the_gateway_verdicts() {
        let mut m = Message::new(
            Address::parse_imid("carol@elsewhere.test").unwrap(),
            vec![Address::parse_imid("bob@b.test").unwrap()],
            "s",
            "b",
        );
        m.security.sender_check = Some(SenderCheck::Unverified);
        m.security.signature_verified = Some(false);
        m.security.key_source = Some(KeySource::SenderDomain);
        let v = message_json(&m, false, false);
        assert_eq!(v["senderVerified"], false);
        assert_eq!(v["senderCheck"], "unverified");
        assert_eq!(v["signatureVerified"], false);
        assert_eq!(v["keySource"], "sender-domain");
        let mime = message_mime(&m, false);
        assert!(mime.contains(
            &"Mailgate-Verdicts: sender=unverified; signature=unverified; key=sender-domain"
                .to_owned()
        ));
        m.security = Default::default();
        assert!(!message_mime(&m, false)
            .iter()
            .any(|l| l.starts_with("Mailgate-Verdicts")));
    }

    #[test]
    fn smtp_mail_is_fetched_in_its_original_form() {
        let mut m = Message::new(
            Address::parse_imid("carol@c.test").unwrap(),
            vec![Address::parse_imid("bob@b.test").unwrap()],
            "s",
            "b",
        );
        let original =
            "Received: from x\r\nFrom: Carol <carol@c.test>\r\nX-Kept: yes\r\n\r\nhi\r\n";
        m.wire = Some(mailgate_core::message::WireForm::new(
            "smtp",
            original.as_bytes().to_vec().into(),
        ));
        m.security.sender_check = Some(SenderCheck::Unverified);
        let mime = message_mime(&m, false);
        assert!(mime[0].starts_with("Mailgate-Verdicts: sender=unverified"));
        assert_eq!(
            mime[1..],
            [
                "Received: from x",
                "From: Carol <carol@c.test>",
                "X-Kept: yes",
                "",
                "hi"
            ]
        );
        // Other wire forms are rendered from the model.
        m.wire = Some(mailgate_core::message::WireForm::new(
            "mmtp",
            b"{}".to_vec().into(),
        ));
        assert!(message_mime(&m, false)
            .iter()
            .any(|l| l.starts_with("Content-Type: multipart/mixed")));
    }
}
