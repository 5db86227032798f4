//! Client requests, ops 0–12 as Protocol.md numbers them, checked as mnm checks them: the
//! fields each op requires, data only where the op carries it, `for` entries with an id and a
//! type of 1–3 (any type for OhiEdit).

use crate::frame::{ForEntry, Header};

/// Op numbers.
pub mod op {
    /// TmtpRev.
    pub const TMTP_REV: u8 = 0;
    /// Register.
    pub const REGISTER: u8 = 1;
    /// Login.
    pub const LOGIN: u8 = 2;
    /// UserEdit.
    pub const USER_EDIT: u8 = 3;
    /// OhiEdit.
    pub const OHI_EDIT: u8 = 4;
    /// GroupInvite.
    pub const GROUP_INVITE: u8 = 5;
    /// GroupEdit.
    pub const GROUP_EDIT: u8 = 6;
    /// Post.
    pub const POST: u8 = 7;
    /// PostNotify.
    pub const POST_NOTIFY: u8 = 8;
    /// Ping.
    pub const PING: u8 = 9;
    /// Ack.
    pub const ACK: u8 = 10;
    /// Pulse.
    pub const PULSE: u8 = 11;
    /// Quit.
    pub const QUIT: u8 = 12;
}

/// How an op's `datalen` may be: none, required (non-zero), or either.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Data {
    None,
    Required,
    Optional,
}

/// What one op requires, after mnm's `sHeaderDefs`.
struct Def {
    id: bool,
    uid: bool,
    node: bool,
    newnode: bool,
    newalias: bool,
    from: bool,
    to: bool,
    kind: bool,
    act: bool,
    gid: bool,
    /// `for` must be present (`Some`); `nonempty`: with at least one entry.
    for_list: Option<bool>,
    data: Data,
    note: bool,
}

const NONE: Def = Def {
    id: false,
    uid: false,
    node: false,
    newnode: false,
    newalias: false,
    from: false,
    to: false,
    kind: false,
    act: false,
    gid: false,
    for_list: None,
    data: Data::None,
    note: false,
};

fn def(op: u8) -> Option<Def> {
    Some(match op {
        op::TMTP_REV | op::USER_EDIT => Def { id: true, ..NONE },
        op::REGISTER => Def {
            newnode: true,
            newalias: true,
            ..NONE
        },
        op::LOGIN => Def {
            uid: true,
            node: true,
            ..NONE
        },
        op::OHI_EDIT => Def {
            id: true,
            kind: true,
            for_list: Some(true),
            ..NONE
        },
        op::GROUP_INVITE => Def {
            id: true,
            gid: true,
            from: true,
            to: true,
            data: Data::Optional,
            ..NONE
        },
        op::GROUP_EDIT => Def {
            id: true,
            act: true,
            gid: true,
            ..NONE
        },
        op::POST => Def {
            id: true,
            for_list: Some(false),
            data: Data::Required,
            ..NONE
        },
        op::POST_NOTIFY => Def {
            id: true,
            for_list: Some(false),
            data: Data::Required,
            note: true,
            ..NONE
        },
        op::PING => Def {
            id: true,
            from: true,
            to: true,
            data: Data::Optional,
            ..NONE
        },
        op::ACK => Def {
            id: true,
            kind: true,
            ..NONE
        },
        op::PULSE | op::QUIT => NONE,
        _ => return None,
    })
}

/// Does the header satisfy its op's definition (mnm's `tHeader.check`)?
pub fn check(h: &Header) -> bool {
    let Some(op) = h.op else { return false };
    let Some(d) = def(op) else { return false };
    let missing = |needed: bool, value: &str| needed && value.is_empty();
    let bad_lengths = h.datalen < h.datahead
        || h.datahead < 0
        || h.notelen < h.notehead
        || h.notehead < 0
        || match d.data {
            Data::None => h.datalen != 0,
            Data::Required => h.datalen == 0,
            Data::Optional => h.datalen < 0,
        }
        || d.note != (h.notelen != 0);
    let bad_fields = missing(d.id, &h.id)
        || missing(d.uid, &h.uid)
        || missing(d.node, &h.node)
        || missing(d.newnode, &h.newnode)
        || missing(d.newalias, &h.newalias)
        || missing(d.from, &h.from)
        || missing(d.to, &h.to)
        || missing(d.kind, &h.kind)
        || missing(d.act, &h.act)
        || missing(d.gid, &h.gid);
    let bad_for = match d.for_list {
        None => false,
        Some(nonempty) => match &h.for_list {
            None => true,
            Some(list) => nonempty && list.is_empty(),
        },
    };
    let bad_entry = |list: &Option<Vec<ForEntry>>| {
        list.iter()
            .flatten()
            .any(|e| e.id.is_empty() || (op != op::OHI_EDIT && !(1..=3).contains(&e.kind)))
    };
    !(bad_lengths || bad_fields || bad_for || bad_entry(&h.for_list) || bad_entry(&h.notefor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Header {
        Header::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn each_op_needs_its_fields() {
        assert!(check(&parse(r#"{"op":0,"id":"1"}"#)));
        assert!(!check(&parse(r#"{"op":0}"#)));
        assert!(check(&parse(r#"{"op":1,"newnode":"a","newalias":"_"}"#)));
        assert!(!check(&parse(r#"{"op":1,"newnode":"a"}"#)));
        assert!(!check(&parse(r#"{"op":2,"uid":"u"}"#)));
        assert!(check(&parse(r#"{"op":7,"id":"1","for":[],"datalen":1}"#)));
        assert!(!check(&parse(r#"{"op":7,"id":"1","for":[]}"#)));
        assert!(!check(&parse(r#"{"op":7,"id":"1","datalen":1}"#)));
        assert!(!check(&parse(
            r#"{"op":7,"id":"1","for":[{"id":"x","type":4}],"datalen":1}"#
        )));
        assert!(check(&parse(
            r#"{"op":4,"id":"1","type":"add","for":[{"id":"x"}]}"#
        )));
        assert!(!check(&parse(r#"{"op":4,"id":"1","type":"add","for":[]}"#)));
        assert!(check(&parse(r#"{"op":9,"id":"1","from":"a","to":"b"}"#)));
        assert!(!check(&parse(r#"{"op":10,"id":"1"}"#)));
        assert!(!check(&parse(r#"{"op":11,"datalen":3}"#)));
        assert!(!check(&parse(r#"{"op":13}"#)));
        assert!(!check(&parse(r#"{"id":"1"}"#)));
        assert!(!check(&parse(
            r#"{"op":7,"id":"1","for":[],"datalen":2,"datahead":3}"#
        )));
    }
}
