//! Embedded schema migrations for PostgreSQL, applied in order at start-up under an advisory
//! lock, so nodes starting at once migrate one after the other (the later ones find nothing to
//! do). The applied version is kept in `mailgate_schema`.
//!
//! The logical tables and columns are SQLite's (see `sqlite/schema.rs`), so `mailgate store
//! migrate` copies rows between them; what each database does better differs: counts kept by
//! triggers are per-row deltas here (`counter_deltas`), never one hot row every writer locks;
//! folder names compare case-insensitively through a generated `key` column.

use super::pg_error;
use crate::store::StoreError;
use tokio_postgres::Client;

/// Key of the advisory lock that serialises migrations across nodes ("mailgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d61_696c_6761_7465;

/// Each entry moves the schema one version up. Append only; never edit a released step.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    id            BIGSERIAL PRIMARY KEY,
    address_key   TEXT NOT NULL UNIQUE,
    address       TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE TABLE account_secrets (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    value      BYTEA NOT NULL,
    PRIMARY KEY (account_id, kind)
);
CREATE TABLE account_settings (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE site_secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE public_keys (
    address_key    TEXT PRIMARY KEY,
    address        TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    armored        TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    owner_verified BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE messages (
    id            UUID PRIMARY KEY,
    sender        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    kind          SMALLINT NOT NULL,
    importance    SMALLINT NOT NULL,
    received_at   BIGINT NOT NULL,
    size          BIGINT NOT NULL,
    meta          JSONB NOT NULL,
    wire_protocol TEXT,
    wire          BYTEA,
    origin_key    TEXT
);
CREATE INDEX messages_origin ON messages (origin_key) WHERE origin_key IS NOT NULL;
CREATE TABLE parts (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    name       TEXT NOT NULL,
    media_type TEXT NOT NULL,
    is_content BOOLEAN NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (message_id, idx)
);
CREATE TABLE folders (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    key        TEXT GENERATED ALWAYS AS (lower(name)) STORED,
    total      BIGINT NOT NULL DEFAULT 0,
    unseen     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, key)
);
CREATE TABLE entries (
    id         BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    folder     TEXT NOT NULL,
    folder_key TEXT GENERATED ALWAYS AS (lower(folder)) STORED,
    message_id UUID NOT NULL REFERENCES messages(id),
    seen       BOOLEAN NOT NULL DEFAULT FALSE,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    added_at   BIGINT NOT NULL
);
CREATE INDEX entries_by_folder ON entries (account_id, folder_key, id);
CREATE INDEX entries_unseen ON entries (account_id, folder_key, id) WHERE NOT seen AND NOT deleted;
CREATE INDEX entries_seen ON entries (account_id, folder_key, id) WHERE seen AND NOT deleted;
CREATE INDEX entries_by_message ON entries (message_id);
CREATE TABLE entry_tags (
    account_id BIGINT NOT NULL,
    folder_key TEXT NOT NULL,
    category   TEXT NOT NULL,
    value      TEXT NOT NULL,
    entry_id   BIGINT NOT NULL,
    PRIMARY KEY (account_id, folder_key, category, value, entry_id)
);
CREATE INDEX entry_tags_by_entry ON entry_tags (entry_id);
CREATE TABLE folder_tags (
    account_id BIGINT NOT NULL,
    folder_key TEXT NOT NULL,
    category   TEXT NOT NULL,
    value      TEXT NOT NULL,
    n          BIGINT NOT NULL,
    PRIMARY KEY (account_id, folder_key, category, value)
);
CREATE TABLE queue (
    id           BIGSERIAL PRIMARY KEY,
    message_id   UUID NOT NULL REFERENCES messages(id),
    recipient    TEXT NOT NULL,
    domain       TEXT NOT NULL,
    protocol     TEXT,
    state        SMALLINT NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX queue_due ON queue (next_attempt) WHERE state = 0;
CREATE INDEX queue_leases ON queue (lease_until) WHERE state = 1;
CREATE INDEX queue_by_domain ON queue (domain);
CREATE INDEX queue_by_message ON queue (message_id);
CREATE TABLE stamps (
    stamp      TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX stamps_expiry ON stamps (expires_at);
CREATE TABLE tokens (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX tokens_expiry ON tokens (expires_at);
CREATE TABLE nodes (
    address_key TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    owner       BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX nodes_by_owner ON nodes (owner);
CREATE TABLE subscriptions (
    id         TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    node       TEXT NOT NULL,
    title      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, node)
);
CREATE INDEX subscriptions_by_account ON subscriptions (account_id, created_at);
CREATE INDEX subscriptions_by_node_time ON subscriptions (node, created_at);
CREATE TABLE remote_subscriptions (
    id         TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (node, subscriber)
);
CREATE INDEX remote_subscriptions_by_node ON remote_subscriptions (node, created_at);
CREATE TABLE access_grants (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient  TEXT NOT NULL,
    code_hash  BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    fetched_at BIGINT,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX access_grants_fetched ON access_grants (fetched_at);
CREATE TABLE notifications (
    id           BIGSERIAL PRIMARY KEY,
    account_id   BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    url          TEXT NOT NULL,
    sender       TEXT,
    subject      TEXT,
    sent_at      BIGINT,
    size         BIGINT,
    peer         TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    state        SMALLINT NOT NULL DEFAULT 0,
    message_id   UUID REFERENCES messages(id) ON DELETE SET NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    UNIQUE (account_id, url)
);
CREATE INDEX notifications_due ON notifications (state, next_attempt);
CREATE INDEX notifications_feed ON notifications (account_id, id);
CREATE INDEX notifications_by_message ON notifications (message_id) WHERE message_id IS NOT NULL;

-- Store-wide counts: each change adds a row (no row every writer would lock); reading sums
-- them, and purging folds them into one row per name.
CREATE TABLE counter_deltas (name TEXT NOT NULL, n BIGINT NOT NULL);
CREATE INDEX counter_deltas_by_name ON counter_deltas (name);

CREATE FUNCTION mailgate_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO counter_deltas VALUES (TG_ARGV[0], 1);
    RETURN NEW;
  END IF;
  INSERT INTO counter_deltas VALUES (TG_ARGV[0], -1);
  RETURN OLD;
END $$;
-- Queue entries count while pending or in flight.
CREATE FUNCTION mailgate_count_queue() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  was BOOLEAN := FALSE;
  now BOOLEAN := FALSE;
BEGIN
  IF TG_OP <> 'INSERT' THEN was := OLD.state IN (0, 1); END IF;
  IF TG_OP <> 'DELETE' THEN now := NEW.state IN (0, 1); END IF;
  IF was <> now THEN
    INSERT INTO counter_deltas VALUES ('queue_pending', CASE WHEN now THEN 1 ELSE -1 END);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER messages_count AFTER INSERT OR DELETE ON messages
  FOR EACH ROW EXECUTE FUNCTION mailgate_count('messages');
CREATE TRIGGER accounts_count AFTER INSERT OR DELETE ON accounts
  FOR EACH ROW EXECUTE FUNCTION mailgate_count('accounts');
CREATE TRIGGER queue_count AFTER INSERT OR DELETE OR UPDATE OF state ON queue
  FOR EACH ROW EXECUTE FUNCTION mailgate_count_queue();

-- A live entry (not deleted) counts in its folder's totals and tag counts.
CREATE FUNCTION mailgate_entry_live(e entries, sign INTEGER) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE folders SET total = total + sign, unseen = unseen + CASE WHEN e.seen THEN 0 ELSE sign END
    WHERE account_id = e.account_id AND key = e.folder_key;
  IF sign > 0 THEN
    INSERT INTO entry_tags (account_id, folder_key, category, value, entry_id)
      SELECT e.account_id, e.folder_key, c.key, v.value, e.id
      FROM messages m, jsonb_each(m.meta->'tags') c, jsonb_array_elements_text(c.value) v(value)
      WHERE m.id = e.message_id
      UNION ALL
      SELECT e.account_id, e.folder_key, '@importance', 'high', e.id
      FROM messages m WHERE m.id = e.message_id AND m.importance = 1
      ON CONFLICT DO NOTHING;
    INSERT INTO folder_tags (account_id, folder_key, category, value, n)
      SELECT account_id, folder_key, category, value, 1 FROM entry_tags WHERE entry_id = e.id
      ORDER BY category, value
      ON CONFLICT (account_id, folder_key, category, value) DO UPDATE SET n = folder_tags.n + 1;
  ELSE
    UPDATE folder_tags f SET n = f.n - 1 FROM entry_tags t
      WHERE t.entry_id = e.id AND f.account_id = t.account_id AND f.folder_key = t.folder_key
        AND f.category = t.category AND f.value = t.value;
    DELETE FROM entry_tags WHERE entry_id = e.id;
  END IF;
END $$;
CREATE FUNCTION mailgate_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NOT NEW.deleted THEN PERFORM mailgate_entry_live(NEW, 1); END IF;
    RETURN NEW;
  ELSIF TG_OP = 'DELETE' THEN
    IF NOT OLD.deleted THEN PERFORM mailgate_entry_live(OLD, -1); END IF;
    RETURN OLD;
  END IF;
  IF NOT OLD.deleted AND (NEW.deleted OR OLD.folder_key <> NEW.folder_key) THEN
    PERFORM mailgate_entry_live(OLD, -1);
  ELSIF NOT OLD.deleted AND NOT NEW.deleted AND OLD.seen <> NEW.seen THEN
    UPDATE folders SET unseen = unseen + CASE WHEN NEW.seen THEN -1 ELSE 1 END
      WHERE account_id = NEW.account_id AND key = NEW.folder_key;
  END IF;
  IF NOT NEW.deleted AND (OLD.deleted OR OLD.folder_key <> NEW.folder_key) THEN
    PERFORM mailgate_entry_live(NEW, 1);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER entries_counts AFTER INSERT OR DELETE OR UPDATE OF seen, deleted, folder ON entries
  FOR EACH ROW EXECUTE FUNCTION mailgate_entries();
CREATE FUNCTION mailgate_account_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM folder_tags WHERE account_id = OLD.id;
  DELETE FROM entry_tags WHERE account_id = OLD.id;
  RETURN OLD;
END $$;
CREATE TRIGGER accounts_tags_delete AFTER DELETE ON accounts
  FOR EACH ROW EXECUTE FUNCTION mailgate_account_gone();
"#,
    // 2: TMTP members, nodes, aliases, groups, presence lists and per-node queues (SQLite's 10).
    r#"
CREATE TABLE tmtp_members (
    account_id BIGINT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    uid        TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE tmtp_nodes (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
    label       TEXT NOT NULL,
    secret_hash BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX tmtp_nodes_by_account ON tmtp_nodes (account_id);
CREATE TABLE tmtp_aliases (
    alias      TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE
);
CREATE INDEX tmtp_aliases_by_account ON tmtp_aliases (account_id);
CREATE TABLE tmtp_groups (
    gid        TEXT NOT NULL,
    account_id BIGINT NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
    alias      TEXT NOT NULL,
    status     SMALLINT NOT NULL,
    PRIMARY KEY (gid, account_id)
);
CREATE INDEX tmtp_groups_by_account ON tmtp_groups (account_id);
CREATE TABLE tmtp_ohi (
    account_id BIGINT NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
    target_id  BIGINT NOT NULL REFERENCES tmtp_members(account_id) ON DELETE CASCADE,
    PRIMARY KEY (account_id, target_id)
);
CREATE INDEX tmtp_ohi_by_target ON tmtp_ohi (target_id);
CREATE TABLE tmtp_queue (
    seq        BIGSERIAL PRIMARY KEY,
    node_id    BIGINT NOT NULL REFERENCES tmtp_nodes(id) ON DELETE CASCADE,
    priority   SMALLINT NOT NULL,
    tmtp_id    TEXT NOT NULL,
    message_id UUID,
    frame      BYTEA
);
CREATE INDEX tmtp_queue_by_node ON tmtp_queue (node_id, priority, seq);
CREATE FUNCTION mailgate_tmtp_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tmtp_queue (node_id, priority, tmtp_id, message_id)
    SELECT id, 1, replace(NEW.message_id::text, '-', ''), NEW.message_id
    FROM tmtp_nodes WHERE account_id = NEW.account_id;
  RETURN NEW;
END $$;
CREATE TRIGGER tmtp_queue_inbox AFTER INSERT ON entries
  FOR EACH ROW WHEN (lower(NEW.folder) = 'inbox') EXECUTE FUNCTION mailgate_tmtp_inbox();
"#,
];

/// Bring the schema up to date under the migration lock; refuses a database newer than this
/// binary.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let result = apply(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error);
    result.and(unlock.map(|_| ()))
}

async fn apply(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS mailgate_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg_error)?;
    let current: i32 = client
        .query_opt("SELECT version FROM mailgate_schema", &[])
        .await
        .map_err(pg_error)?
        .map_or(0, |r| r.get(0));
    let target = MIGRATIONS.len() as i32;
    if current > target {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this mailgate ({target})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = (i + 1) as i32;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute("DELETE FROM mailgate_schema", &[])
            .await
            .map_err(pg_error)?;
        tx.execute(
            "INSERT INTO mailgate_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version, "applied store migration (PostgreSQL)");
    }
    Ok(())
}
