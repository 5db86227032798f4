//! Embedded schema migrations, applied in order at start-up (tracked in `PRAGMA user_version`).

use rusqlite::Connection;

/// Each entry moves the schema one version up. Append only; never edit a released step.
const MIGRATIONS: &[&str] = &[
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
];

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
