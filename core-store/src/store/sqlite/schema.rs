//! Embedded schema migrations, applied in order at start-up (tracked in `PRAGMA user_version`).

use rusqlite::Connection;

/// Each entry moves the schema one version up. Append only; never edit a released step.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    r#"
    CREATE TABLE accounts (
        id            INTEGER PRIMARY KEY,
        address_key   TEXT NOT NULL UNIQUE,
        address       TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE account_secrets (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        kind       TEXT NOT NULL,
        value      BLOB NOT NULL,
        PRIMARY KEY (account_id, kind)
    ) WITHOUT ROWID;
    CREATE TABLE public_keys (
        address_key TEXT PRIMARY KEY,
        address     TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        armored     TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Rows with large blobs live in rowid tables (WITHOUT ROWID suits small rows only).
    CREATE TABLE messages (
        rowid         INTEGER PRIMARY KEY,
        id            BLOB NOT NULL UNIQUE,
        sender        TEXT NOT NULL,
        subject       TEXT NOT NULL,
        kind          INTEGER NOT NULL,
        importance    INTEGER NOT NULL,
        received_at   INTEGER NOT NULL,
        size          INTEGER NOT NULL,
        meta          TEXT NOT NULL,
        wire_protocol TEXT,
        wire          BLOB
    );
    CREATE TABLE parts (
        rowid      INTEGER PRIMARY KEY,
        message_id BLOB NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        name       TEXT NOT NULL,
        media_type TEXT NOT NULL,
        is_content INTEGER NOT NULL,
        data       BLOB NOT NULL,
        UNIQUE (message_id, idx)
    );
    CREATE TABLE folders (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name       TEXT NOT NULL COLLATE NOCASE,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE entries (
        id         INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        folder     TEXT NOT NULL COLLATE NOCASE,
        message_id BLOB NOT NULL REFERENCES messages(id),
        seen       INTEGER NOT NULL DEFAULT 0,
        deleted    INTEGER NOT NULL DEFAULT 0,
        added_at   INTEGER NOT NULL
    );
    CREATE INDEX entries_by_folder ON entries (account_id, folder, id);
    CREATE INDEX entries_by_message ON entries (message_id);
    CREATE TABLE queue (
        id           INTEGER PRIMARY KEY,
        message_id   BLOB NOT NULL REFERENCES messages(id),
        recipient    TEXT NOT NULL,
        domain       TEXT NOT NULL,
        protocol     TEXT,
        state        INTEGER NOT NULL DEFAULT 0,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        lease_until  INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        created_at   INTEGER NOT NULL
    );
    CREATE INDEX queue_due ON queue (state, next_attempt);
    CREATE INDEX queue_by_domain ON queue (domain);
    CREATE TABLE stamps (
        stamp      TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX stamps_expiry ON stamps (expires_at);
    CREATE TABLE tokens (
        kind       TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;
    CREATE INDEX tokens_expiry ON tokens (expires_at);
    "#,
    // 2: published nodes and subscriptions (IMMP publish/subscribe); the PUSH folder.
    r#"
    CREATE TABLE nodes (
        address_key TEXT PRIMARY KEY,
        address     TEXT NOT NULL,
        owner       INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        title       TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        id         TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        node       TEXT NOT NULL,
        title      TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (account_id, node)
    ) WITHOUT ROWID;
    CREATE INDEX subscriptions_by_node ON subscriptions (node);
    INSERT OR IGNORE INTO folders (account_id, name) SELECT id, 'PUSH' FROM accounts;
    "#,
    // 3: subscribers on other domains (subscribed by their servers).
    r#"
    CREATE TABLE remote_subscriptions (
        id         TEXT PRIMARY KEY,
        node       TEXT NOT NULL,
        subscriber TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (node, subscriber)
    ) WITHOUT ROWID;
    "#,
    // 4: XHMTP: access grants to sender-hosted messages; inbound notifications and their fetches.
    r#"
    CREATE TABLE access_grants (
        message_id BLOB NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        recipient  TEXT NOT NULL,
        code_hash  BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        fetched_at INTEGER,
        PRIMARY KEY (message_id, recipient)
    ) WITHOUT ROWID;
    CREATE TABLE notifications (
        id           INTEGER PRIMARY KEY,
        account_id   INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        url          TEXT NOT NULL,
        sender       TEXT,
        subject      TEXT,
        sent_at      INTEGER,
        size         INTEGER,
        peer         TEXT NOT NULL,
        received_at  INTEGER NOT NULL,
        state        INTEGER NOT NULL DEFAULT 0,
        message_id   BLOB REFERENCES messages(id) ON DELETE SET NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        lease_until  INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        UNIQUE (account_id, url)
    );
    CREATE INDEX notifications_due ON notifications (state, next_attempt);
    CREATE INDEX notifications_feed ON notifications (account_id, id);
    "#,
    // 5: the origin key of relayed mail (sender and the id it had where it was first
    // accepted), so a repeat delivery of the same message to the same account is dropped.
    r#"
    ALTER TABLE messages ADD COLUMN origin_key TEXT;
    CREATE INDEX messages_origin ON messages (origin_key) WHERE origin_key IS NOT NULL;
    "#,
    // 6: whether a key was registered by its account's owner, authenticated (only such keys
    // make signatures verified; keys from before this migration are not known to be).
    r#"
    ALTER TABLE public_keys ADD COLUMN owner_verified INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: nothing read counts rows. Triggers keep per-folder totals, per-folder tag counts, the
    // tags of every live (not deleted) entry, and store-wide counts, in the same transaction
    // as the change; indexes for every foreign key and ordered listing.
    MIGRATION_7,
    // 8: per-account settings get their own table; IMMP's compression and XHMTP's filters
    // move there from the secrets.
    r#"
    CREATE TABLE account_settings (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        value      TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID;
    INSERT INTO account_settings (account_id, name, value)
      SELECT account_id, kind, CAST(value AS TEXT) FROM account_secrets
      WHERE kind IN ('immp.compression', 'xhmtp-filters');
    DELETE FROM account_secrets WHERE kind IN ('immp.compression', 'xhmtp-filters');
    "#,
    // 9: secrets of the whole site (the XHMTP access-code key, the domain's OpenPGP key), kept
    // with the mail so every process sharing the store uses the same ones.
    r#"
    CREATE TABLE site_secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 10: TMTP members, nodes, aliases, groups, presence lists and per-node queues.
    r#"
    CREATE TABLE tmtp_members (
        account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        uid        TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tmtp_nodes (
        id          INTEGER PRIMARY KEY,
        account_id  INTEGER NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
        label       TEXT NOT NULL,
        secret_hash BLOB NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX tmtp_nodes_by_account ON tmtp_nodes (account_id);
    CREATE TABLE tmtp_aliases (
        alias      TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX tmtp_aliases_by_account ON tmtp_aliases (account_id);
    CREATE TABLE tmtp_groups (
        gid        TEXT NOT NULL,
        account_id INTEGER NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
        alias      TEXT NOT NULL,
        status     INTEGER NOT NULL,
        PRIMARY KEY (gid, account_id)
    ) WITHOUT ROWID;
    CREATE INDEX tmtp_groups_by_account ON tmtp_groups (account_id);
    CREATE TABLE tmtp_ohi (
        account_id INTEGER NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
        target_id  INTEGER NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
        PRIMARY KEY (account_id, target_id)
    ) WITHOUT ROWID;
    CREATE INDEX tmtp_ohi_by_target ON tmtp_ohi (target_id);
    CREATE TABLE tmtp_queue (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id    INTEGER NOT NULL REFERENCES tmtp_nodes(id) ON DELETE CASCADE,
        priority   INTEGER NOT NULL,
        tmtp_id    TEXT NOT NULL,
        message_id BLOB,
        frame      BLOB
    );
    CREATE INDEX tmtp_queue_by_node ON tmtp_queue (node_id, priority, seq);
    -- Mail reaching a member's INBOX, from any front-end, is queued for each of its nodes in
    -- the same transaction.
    CREATE TRIGGER tmtp_queue_inbox AFTER INSERT ON entries
      WHEN NEW.folder = 'INBOX' COLLATE NOCASE BEGIN
      INSERT INTO tmtp_queue (node_id, priority, tmtp_id, message_id)
        SELECT id, 1, lower(hex(NEW.message_id)), NEW.message_id
        FROM tmtp_nodes WHERE account_id = NEW.account_id;
    END;
"#,
];

/// Counters and indexes (migration 7). A live entry is one not flagged deleted.
const MIGRATION_7: &str = r#"
    ALTER TABLE folders ADD COLUMN total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE folders ADD COLUMN unseen INTEGER NOT NULL DEFAULT 0;
    UPDATE folders SET
      total = (SELECT COUNT(*) FROM entries e WHERE e.account_id = folders.account_id
               AND e.folder = folders.name AND e.deleted = 0),
      unseen = (SELECT COUNT(*) FROM entries e WHERE e.account_id = folders.account_id
                AND e.folder = folders.name AND e.deleted = 0 AND e.seen = 0);

    CREATE TABLE entry_tags (
        account_id INTEGER NOT NULL,
        folder     TEXT NOT NULL COLLATE NOCASE,
        category   TEXT NOT NULL,
        value      TEXT NOT NULL,
        entry_id   INTEGER NOT NULL,
        PRIMARY KEY (account_id, folder, category, value, entry_id)
    ) WITHOUT ROWID;
    CREATE INDEX entry_tags_by_entry ON entry_tags (entry_id);
    INSERT OR IGNORE INTO entry_tags (account_id, folder, category, value, entry_id)
      SELECT e.account_id, e.folder, c.key, v.value, e.id
      FROM entries e JOIN messages m ON m.id = e.message_id,
           json_each(m.meta, '$.tags') c, json_each(c.value) v
      WHERE e.deleted = 0
      UNION ALL
      SELECT e.account_id, e.folder, '@importance', 'high', e.id
      FROM entries e JOIN messages m ON m.id = e.message_id
      WHERE e.deleted = 0 AND m.importance = 1;
    CREATE TABLE folder_tags (
        account_id INTEGER NOT NULL,
        folder     TEXT NOT NULL COLLATE NOCASE,
        category   TEXT NOT NULL,
        value      TEXT NOT NULL,
        n          INTEGER NOT NULL,
        PRIMARY KEY (account_id, folder, category, value)
    ) WITHOUT ROWID;
    INSERT INTO folder_tags (account_id, folder, category, value, n)
      SELECT account_id, folder, category, value, COUNT(*) FROM entry_tags
      GROUP BY account_id, folder, category, value;

    CREATE TRIGGER entries_insert AFTER INSERT ON entries WHEN NEW.deleted = 0 BEGIN
      UPDATE folders SET total = total + 1, unseen = unseen + (NEW.seen = 0)
        WHERE account_id = NEW.account_id AND name = NEW.folder;
      INSERT OR IGNORE INTO entry_tags (account_id, folder, category, value, entry_id)
        SELECT NEW.account_id, NEW.folder, c.key, v.value, NEW.id
        FROM messages m, json_each(m.meta, '$.tags') c, json_each(c.value) v
        WHERE m.id = NEW.message_id
        UNION ALL
        SELECT NEW.account_id, NEW.folder, '@importance', 'high', NEW.id
        FROM messages m WHERE m.id = NEW.message_id AND m.importance = 1;
      INSERT INTO folder_tags (account_id, folder, category, value, n)
        SELECT account_id, folder, category, value, 1 FROM entry_tags WHERE entry_id = NEW.id
        ON CONFLICT (account_id, folder, category, value) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER entries_delete AFTER DELETE ON entries WHEN OLD.deleted = 0 BEGIN
      UPDATE folders SET total = total - 1, unseen = unseen - (OLD.seen = 0)
        WHERE account_id = OLD.account_id AND name = OLD.folder;
      -- (An upsert: each tag's row by its key, never a range of rows.)
      INSERT INTO folder_tags (account_id, folder, category, value, n)
        SELECT account_id, folder, category, value, 0 FROM entry_tags WHERE entry_id = OLD.id
        ON CONFLICT (account_id, folder, category, value) DO UPDATE SET n = n - 1;
      DELETE FROM entry_tags WHERE entry_id = OLD.id;
    END;
    CREATE TRIGGER entries_update AFTER UPDATE OF seen, deleted, folder ON entries BEGIN
      UPDATE folders SET total = total - (OLD.deleted = 0),
                         unseen = unseen - (OLD.deleted = 0 AND OLD.seen = 0)
        WHERE account_id = OLD.account_id AND name = OLD.folder;
      UPDATE folders SET total = total + (NEW.deleted = 0),
                         unseen = unseen + (NEW.deleted = 0 AND NEW.seen = 0)
        WHERE account_id = NEW.account_id AND name = NEW.folder;
      -- The tags leave the old place when the entry stops being live there...
      INSERT INTO folder_tags (account_id, folder, category, value, n)
        SELECT account_id, folder, category, value, 0 FROM entry_tags
        WHERE OLD.deleted = 0 AND (NEW.deleted <> 0 OR OLD.folder <> NEW.folder COLLATE NOCASE)
          AND entry_id = OLD.id
        ON CONFLICT (account_id, folder, category, value) DO UPDATE SET n = n - 1;
      DELETE FROM entry_tags
        WHERE OLD.deleted = 0 AND (NEW.deleted <> 0 OR OLD.folder <> NEW.folder COLLATE NOCASE)
          AND entry_id = OLD.id;
      -- ...and come to the new one when it starts being live there.
      INSERT OR IGNORE INTO entry_tags (account_id, folder, category, value, entry_id)
        SELECT NEW.account_id, NEW.folder, c.key, v.value, NEW.id
        FROM messages m, json_each(m.meta, '$.tags') c, json_each(c.value) v
        WHERE NEW.deleted = 0 AND (OLD.deleted <> 0 OR OLD.folder <> NEW.folder COLLATE NOCASE)
          AND m.id = NEW.message_id
        UNION ALL
        SELECT NEW.account_id, NEW.folder, '@importance', 'high', NEW.id
        FROM messages m
        WHERE NEW.deleted = 0 AND (OLD.deleted <> 0 OR OLD.folder <> NEW.folder COLLATE NOCASE)
          AND m.id = NEW.message_id AND m.importance = 1;
      INSERT INTO folder_tags (account_id, folder, category, value, n)
        SELECT account_id, folder, category, value, 1 FROM entry_tags
        WHERE NEW.deleted = 0 AND (OLD.deleted <> 0 OR OLD.folder <> NEW.folder COLLATE NOCASE)
          AND entry_id = NEW.id
        ON CONFLICT (account_id, folder, category, value) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER accounts_tags_delete AFTER DELETE ON accounts BEGIN
      DELETE FROM folder_tags WHERE account_id = OLD.id;
    END;

    CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters (name, n) VALUES
      ('messages', (SELECT COUNT(*) FROM messages)),
      ('accounts', (SELECT COUNT(*) FROM accounts)),
      ('queue_pending', (SELECT COUNT(*) FROM queue WHERE state IN (0, 1)));
    CREATE TRIGGER messages_count_insert AFTER INSERT ON messages BEGIN
      UPDATE counters SET n = n + 1 WHERE name = 'messages';
    END;
    CREATE TRIGGER messages_count_delete AFTER DELETE ON messages BEGIN
      UPDATE counters SET n = n - 1 WHERE name = 'messages';
    END;
    CREATE TRIGGER accounts_count_insert AFTER INSERT ON accounts BEGIN
      UPDATE counters SET n = n + 1 WHERE name = 'accounts';
    END;
    CREATE TRIGGER accounts_count_delete AFTER DELETE ON accounts BEGIN
      UPDATE counters SET n = n - 1 WHERE name = 'accounts';
    END;
    CREATE TRIGGER queue_count_insert AFTER INSERT ON queue WHEN NEW.state IN (0, 1) BEGIN
      UPDATE counters SET n = n + 1 WHERE name = 'queue_pending';
    END;
    CREATE TRIGGER queue_count_delete AFTER DELETE ON queue WHEN OLD.state IN (0, 1) BEGIN
      UPDATE counters SET n = n - 1 WHERE name = 'queue_pending';
    END;
    CREATE TRIGGER queue_count_update AFTER UPDATE OF state ON queue
      WHEN (OLD.state IN (0, 1)) <> (NEW.state IN (0, 1)) BEGIN
      UPDATE counters SET n = n + (NEW.state IN (0, 1)) - (OLD.state IN (0, 1))
        WHERE name = 'queue_pending';
    END;

    CREATE INDEX entries_unseen ON entries (account_id, folder, id) WHERE seen = 0 AND deleted = 0;
    CREATE INDEX entries_seen ON entries (account_id, folder, id) WHERE seen = 1 AND deleted = 0;
    CREATE INDEX nodes_by_owner ON nodes (owner);
    CREATE INDEX queue_by_message ON queue (message_id);
    CREATE INDEX queue_leases ON queue (state, lease_until);
    CREATE INDEX notifications_by_message ON notifications (message_id)
      WHERE message_id IS NOT NULL;
    CREATE INDEX subscriptions_by_account ON subscriptions (account_id, created_at);
    CREATE INDEX subscriptions_by_node_time ON subscriptions (node, created_at);
    CREATE INDEX remote_subscriptions_by_node ON remote_subscriptions (node, created_at);
    CREATE INDEX access_grants_fetched ON access_grants (fetched_at);
"#;

/// Bring the schema up to date; refuses a database newer than this binary.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let target = MIGRATIONS.len() as i64;
    if current > target {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "database schema version {current} is newer than this mailgate ({target})"
            )),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/architecture.md lists every migration the binary applies, and no more.
    #[test]
    fn every_migration_is_documented() {
        let doc = include_str!("../../../../docs/architecture.md");
        for n in 1..=MIGRATIONS.len() {
            assert!(
                doc.contains(&format!("| Migration {n} |")),
                "docs/architecture.md does not describe migration {n}"
            );
        }
        let next = MIGRATIONS.len() + 1;
        assert!(
            !doc.contains(&format!("| Migration {next} |")),
            "docs/architecture.md describes migration {next}, which does not exist"
        );
    }

    /// Settings kept among the secrets before migration 8 move to their own table; secrets
    /// stay where they were.
    #[test]
    fn migration_8_moves_settings_out_of_the_secrets() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        conn.execute_batch(
            r#"
            INSERT INTO accounts (id, address_key, address, password_hash, created_at)
              VALUES (1, 'bob@a.test', 'bob@a.test', 'x', 0);
            INSERT INTO account_secrets (account_id, kind, value) VALUES
              (1, 'immp', x'0102'), (1, 'immp.compression', CAST('GZIP' AS BLOB)),
              (1, 'xhmtp-filters', CAST('{"block":[]}' AS BLOB));
            "#,
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let settings: Vec<(String, String)> = conn
            .prepare("SELECT name, value FROM account_settings ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            settings,
            vec![
                ("immp.compression".to_owned(), "GZIP".to_owned()),
                ("xhmtp-filters".to_owned(), r#"{"block":[]}"#.to_owned())
            ]
        );
        let secrets: Vec<String> = conn
            .prepare("SELECT kind FROM account_secrets")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(secrets, vec!["immp".to_owned()]);
    }

    /// A store of schema 6 with mail in it gets correct counts from migration 7's backfill.
    #[test]
    fn migration_7_counts_what_is_already_stored() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..6] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 6).unwrap();
        conn.execute_batch(
            r#"
            INSERT INTO accounts (id, address_key, address, password_hash, created_at)
              VALUES (1, 'bob@a.test', 'bob@a.test', 'x', 0);
            INSERT INTO folders (account_id, name) VALUES (1, 'INBOX'), (1, 'INBOX/Work');
            INSERT INTO messages (id, sender, subject, kind, importance, received_at, size, meta)
              VALUES (x'01', 'c@b.test', 's', 0, 1, 0, 1,
                      '{"recipients":[],"tags":{"category":["work","shop"]}}'),
                     (x'02', 'c@b.test', 's', 0, 0, 0, 1,
                      '{"recipients":[],"tags":{"category":["work"],"priority":["low"]}}'),
                     (x'03', 'c@b.test', 's', 0, 0, 0, 1, '{"recipients":[]}');
            INSERT INTO entries (account_id, folder, message_id, seen, deleted, added_at)
              VALUES (1, 'INBOX', x'01', 0, 0, 0), (1, 'INBOX', x'02', 1, 0, 0),
                     (1, 'INBOX', x'03', 0, 1, 0), (1, 'INBOX/Work', x'02', 0, 0, 0);
            INSERT INTO queue (message_id, recipient, domain, state, next_attempt, created_at)
              VALUES (x'01', 'd@c.test', 'c.test', 0, 0, 0), (x'02', 'd@c.test', 'c.test', 3, 0, 0);
            "#,
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let folder = |name: &str| -> (i64, i64) {
            conn.query_row(
                "SELECT total, unseen FROM folders WHERE account_id = 1 AND name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(folder("INBOX"), (2, 1));
        assert_eq!(folder("INBOX/Work"), (1, 1));
        let tag = |folder: &str, cat: &str, value: &str| -> i64 {
            conn.query_row(
                "SELECT n FROM folder_tags WHERE account_id = 1 AND folder = ?1
                 AND category = ?2 AND value = ?3",
                [folder, cat, value],
                |r| r.get(0),
            )
            .unwrap_or(0)
        };
        assert_eq!(tag("INBOX", "category", "work"), 2);
        assert_eq!(tag("INBOX", "category", "shop"), 1);
        assert_eq!(tag("INBOX", "@importance", "high"), 1);
        assert_eq!(tag("INBOX/Work", "priority", "low"), 1);
        let counter = |name: &str| -> i64 {
            conn.query_row("SELECT n FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(counter("messages"), 3);
        assert_eq!(counter("accounts"), 1);
        assert_eq!(counter("queue_pending"), 1);
    }
}
