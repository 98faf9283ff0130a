//! Schema migrations, applied in order on open and recorded in `PRAGMA user_version`.
//!
//! Append new migrations; never edit one that has shipped.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the whole initial schema.
    r#"
CREATE TABLE orgs (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    plan              TEXT NOT NULL,
    rate_limit        INTEGER,
    pilot_mode        TEXT NOT NULL DEFAULT 'review',
    credits_monthly   INTEGER NOT NULL DEFAULT 5000,
    credits_remaining INTEGER NOT NULL DEFAULT 5000,
    credits_reset_at  TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE INDEX api_keys_org ON api_keys(org_id);

CREATE TABLE companies (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name        TEXT,
    name_norm   TEXT NOT NULL DEFAULT '',
    domain      TEXT,
    industry    TEXT,
    size        TEXT,
    context     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX companies_org_domain ON companies(org_id, domain) WHERE domain IS NOT NULL;
CREATE INDEX companies_org_name ON companies(org_id, name_norm);
CREATE INDEX companies_org_created ON companies(org_id, created_at, id);

CREATE TABLE contacts (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    email         TEXT,
    email_lower   TEXT,
    email_domain  TEXT,
    first_name    TEXT,
    last_name     TEXT,
    name_norm     TEXT NOT NULL DEFAULT '',
    company       TEXT,
    company_norm  TEXT NOT NULL DEFAULT '',
    title         TEXT,
    linkedin_url  TEXT,
    phone         TEXT,
    status        TEXT NOT NULL DEFAULT 'new',
    folder_id     TEXT,
    account_id    TEXT REFERENCES companies(id) ON DELETE SET NULL,
    custom_fields TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX contacts_org_email ON contacts(org_id, email_lower) WHERE email_lower IS NOT NULL;
CREATE INDEX contacts_org_domain ON contacts(org_id, email_domain);
CREATE INDEX contacts_org_name ON contacts(org_id, name_norm);
CREATE INDEX contacts_org_created ON contacts(org_id, created_at, id);
CREATE INDEX contacts_account ON contacts(account_id);

-- One row per distinct name token, so exact, prefix and fuzzy lookups never scan contacts.
CREATE TABLE contact_name_tokens (
    org_id      TEXT NOT NULL,
    token       TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    PRIMARY KEY (org_id, token, contact_id)
) WITHOUT ROWID;
CREATE INDEX contact_name_tokens_contact ON contact_name_tokens(contact_id);

CREATE TABLE campaigns (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    name_norm      TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'draft',
    type           TEXT NOT NULL DEFAULT 'email',
    campaign_mode  TEXT NOT NULL DEFAULT 'manual',
    config         TEXT NOT NULL DEFAULT '{}',
    steps          TEXT NOT NULL DEFAULT '[]',
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX campaigns_org_name ON campaigns(org_id, name_norm);
CREATE INDEX campaigns_org_created ON campaigns(org_id, created_at, id);

CREATE TABLE campaign_audiences (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    campaign_id  TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    contact_id   TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    status       TEXT NOT NULL DEFAULT 'active',
    added_at     TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (campaign_id, contact_id)
);
CREATE INDEX campaign_audiences_contact ON campaign_audiences(contact_id);

CREATE TABLE signals (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    contact_id    TEXT REFERENCES contacts(id) ON DELETE SET NULL,
    company       TEXT,
    company_norm  TEXT NOT NULL DEFAULT '',
    platform      TEXT NOT NULL,
    signal_type   TEXT NOT NULL,
    title         TEXT NOT NULL,
    content       TEXT,
    url           TEXT,
    intent_score  INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL DEFAULT 'new',
    detected_at   TEXT NOT NULL
);
CREATE INDEX signals_org_detected ON signals(org_id, detected_at);
CREATE INDEX signals_org_company ON signals(org_id, company_norm, detected_at);
CREATE INDEX signals_contact ON signals(contact_id, detected_at);

-- Every touch with a contact: emails, LinkedIn messages, meetings, calls and notes (channel 'note').
CREATE TABLE interactions (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    contact_id       TEXT REFERENCES contacts(id) ON DELETE CASCADE,
    campaign_id      TEXT REFERENCES campaigns(id) ON DELETE SET NULL,
    direction        TEXT NOT NULL,
    channel          TEXT NOT NULL,
    subject          TEXT,
    content          TEXT NOT NULL DEFAULT '',
    metadata         TEXT NOT NULL DEFAULT '{}',
    is_read          INTEGER NOT NULL DEFAULT 1,
    idempotency_key  TEXT,
    created_at       TEXT NOT NULL
);
CREATE INDEX interactions_org_created ON interactions(org_id, created_at);
CREATE INDEX interactions_contact_created ON interactions(contact_id, created_at);
CREATE INDEX interactions_org_channel_created ON interactions(org_id, channel, created_at);
CREATE INDEX interactions_campaign ON interactions(campaign_id);
CREATE UNIQUE INDEX interactions_org_idem ON interactions(org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE drafts (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    contact_id    TEXT REFERENCES contacts(id) ON DELETE CASCADE,
    channel       TEXT NOT NULL,
    subject       TEXT,
    body          TEXT NOT NULL,
    instructions  TEXT,
    status        TEXT NOT NULL DEFAULT 'draft',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX drafts_org_contact ON drafts(org_id, contact_id);

-- Messages accepted for sending; delivered after `deliver_after` unless cancelled first.
CREATE TABLE outbox (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    contact_id     TEXT REFERENCES contacts(id) ON DELETE CASCADE,
    draft_id       TEXT,
    channel        TEXT NOT NULL,
    subject        TEXT,
    body           TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'queued',
    deliver_after  TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    sent_at        TEXT
);
CREATE INDEX outbox_status_due ON outbox(status, deliver_after);

CREATE TABLE meetings (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    contact_id        TEXT REFERENCES contacts(id) ON DELETE CASCADE,
    title             TEXT NOT NULL,
    start_time        TEXT NOT NULL,
    duration_minutes  INTEGER NOT NULL,
    status            TEXT NOT NULL DEFAULT 'scheduled',
    created_at        TEXT NOT NULL
);
CREATE INDEX meetings_org_contact ON meetings(org_id, contact_id);

-- Research and enrichment jobs.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    contact_id   TEXT REFERENCES contacts(id) ON DELETE CASCADE,
    company      TEXT,
    topic        TEXT,
    status       TEXT NOT NULL DEFAULT 'queued',
    result       TEXT,
    previous     TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX jobs_status ON jobs(status, created_at);
CREATE INDEX jobs_org ON jobs(org_id, created_at);

CREATE TABLE audit_log (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL,
    key_id          TEXT,
    action_type     TEXT NOT NULL,
    action          TEXT NOT NULL,
    transcript      TEXT,
    execution_mode  TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    ids             TEXT NOT NULL DEFAULT '{}',
    elapsed_ms      REAL NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX audit_log_org_created ON audit_log(org_id, created_at);

-- What `undo_last` can reverse, newest first per key.
CREATE TABLE undo_entries (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    action_type  TEXT NOT NULL,
    summary      TEXT NOT NULL,
    undo         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    undone_at    TEXT
);
CREATE INDEX undo_entries_key_created ON undo_entries(org_id, key_id, created_at);

CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    secret      TEXT,
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks(org_id, active);
"#,
    // 2: indexes that serve the native fast path at any size (found by the scale bench: at 1M
    // contacts a contact's activity was read through the org-wide index, a linear scan).
    // Every list orders by (time, id), so both are in the index and no sort step is needed.
    r#"
CREATE INDEX interactions_org_contact_created ON interactions(org_id, contact_id, created_at, id);
CREATE INDEX interactions_org_direction_created ON interactions(org_id, direction, created_at, id);
DROP INDEX interactions_org_created;
CREATE INDEX interactions_org_created ON interactions(org_id, created_at, id);
CREATE INDEX signals_org_contact_detected ON signals(org_id, contact_id, detected_at, id);
DROP INDEX signals_org_detected;
CREATE INDEX signals_org_detected ON signals(org_id, detected_at, id);
"#,
    // 3: durable conversation state (DESIGN §15): idempotency records (client keys, derived
    // confirmation keys and the keyless dedupe window, per API key) and pending actions. Undo
    // entries already had a table; an index serves the retention sweep.
    r#"
CREATE TABLE idempotency_records (
    org_id       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    fingerprint  BLOB NOT NULL,
    outcome      TEXT NOT NULL,
    undo_id      TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (org_id, key_id, name)
) WITHOUT ROWID;
CREATE INDEX idempotency_records_expiry ON idempotency_records(expires_at);

CREATE TABLE pending_actions (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    plan         TEXT NOT NULL,
    action       TEXT NOT NULL,
    transcript   TEXT,
    state        TEXT NOT NULL DEFAULT 'open',
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    settled_at   INTEGER
);
CREATE INDEX pending_actions_expiry ON pending_actions(expires_at);
CREATE INDEX pending_actions_open ON pending_actions(state, expires_at);

CREATE INDEX undo_entries_created ON undo_entries(created_at);
-- 0 when undo_last found the world changed and left the effect alone (compare-and-set undo):
-- the entry is used up, but the effect was not undone.
ALTER TABLE undo_entries ADD COLUMN reverted INTEGER;
"#,
    // 4: the org's IANA time zone, in which times are spoken (DESIGN §20), and when each API key
    // was last used (shown by `keys list`).
    r#"
ALTER TABLE orgs ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
"#,
    // 5: job retries (issue 19): a failing job is retried with backoff, then marked failed, and
    // never stands in front of due jobs while it waits.
    r#"
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN next_attempt_at TEXT;
ALTER TABLE jobs ADD COLUMN last_error TEXT;
"#,
    // 6 (issue 13, WebSocket events): who started queued work, so its completion is announced
    // to that API key's sessions; and the events themselves, committed with the change they
    // announce and published by the background worker.
    r#"
ALTER TABLE jobs ADD COLUMN key_id TEXT;
ALTER TABLE outbox ADD COLUMN key_id TEXT;
CREATE TABLE event_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id          TEXT NOT NULL,
    event           TEXT NOT NULL,
    data            TEXT NOT NULL,
    spoken_summary  TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
"#,
    // 7 (issue 15) Webhook delivery: a transactional outbox. An event row is written in the same
    // transaction as the effect it reports, with one delivery row per subscription that wants
    // it; the delivery worker works through the deliveries and records every attempt.
    r#"
CREATE TABLE webhook_events (
    id          TEXT PRIMARY KEY,   -- the webhook-id header, the same for every attempt
    org_id      TEXT NOT NULL,
    type        TEXT NOT NULL,
    payload     TEXT NOT NULL,      -- the exact body that is signed and sent
    created_at  TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    webhook_id       TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    org_id           TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',  -- pending | succeeded | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,                 -- unix milliseconds
    response_status  INTEGER,
    last_error       TEXT,
    last_attempt_at  TEXT,
    created_at       TEXT NOT NULL
);
-- Each subscription's next pending delivery, without reading its whole backlog.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(webhook_id, next_attempt_ms, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, seq);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_id);
"#,
    // 8 (issue 13, `pending.expired`): a confirmation's expiry is announced once; the row stays
    // (a late confirmation still hears "expired") and remembers that it was announced.
    r#"
ALTER TABLE pending_actions ADD COLUMN expiry_announced INTEGER NOT NULL DEFAULT 0;
"#,
    // 9 (issue 16): chat threads (`POST /chat`): the last turns of each thread and the pending
    // action its last question parked, owned by one API key, dropped after `chat.thread_ttl_days`
    // idle; and the index behind "yes" without an id (the caller key's newest open pending
    // action).
    r#"
CREATE TABLE chat_threads (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    pending_action_id  TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
CREATE TABLE chat_turns (
    thread_id   TEXT NOT NULL REFERENCES chat_threads(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    role        TEXT NOT NULL,
    content     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (thread_id, seq)
);
CREATE INDEX chat_threads_idle ON chat_threads(updated_at);
CREATE INDEX pending_actions_by_key ON pending_actions(org_id, key_id, created_at);
"#,
    // 10 (issue 20, control): a key's confirmation policy ('standard' or 'two_step': dangerous
    // actions always ask, whatever `confirmed` says); and the per-key event journal that lets a
    // reconnecting WebSocket session replay what it missed (`resume_after`): a sequence
    // counter per API key that outlives the journal rows, and the rendered frames, kept for the
    // retention the row says.
    r#"
ALTER TABLE api_keys ADD COLUMN policy TEXT NOT NULL DEFAULT 'standard';
CREATE TABLE event_seq (
    key_id    TEXT PRIMARY KEY,
    last_seq  INTEGER NOT NULL
);
CREATE TABLE event_journal (
    key_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    frame       TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (key_id, seq)
);
CREATE INDEX event_journal_expiry ON event_journal(expires_ms);
"#,
    // 12: indexes in the order the fast path reads. Resolving a name ordered its matches by id
    // and listing a contact's campaigns by date, each through a temporary B-tree built per
    // lookup; with the id and the date in the index, the rows come out in order. (Both still
    // start with what their foreign keys' cascades search by.)
    r#"
DROP INDEX contacts_org_name;
CREATE INDEX contacts_org_name ON contacts(org_id, name_norm, id);
DROP INDEX campaign_audiences_contact;
CREATE INDEX campaign_audiences_contact ON campaign_audiences(contact_id, added_at);
"#,
    // 13 (issue 15): `GET /webhooks` shows a subscription disabled by a 410 (inactive) but not
    // one deleted through the API, so deletion gets its own mark; rows inactive before this
    // step cannot be told apart and count as deleted, so nothing deleted reappears. The index
    // finds each subscription's most recently attempted delivery (its `last_delivery`).
    r#"
ALTER TABLE webhooks ADD COLUMN deleted_at TEXT;
UPDATE webhooks SET deleted_at = updated_at WHERE active = 0;
CREATE INDEX webhook_deliveries_attempted ON webhook_deliveries(webhook_id, last_attempt_at)
    WHERE last_attempt_at IS NOT NULL;
"#,
    // 14 (issue 16, user_version 13): chat messages sent with an idempotency key (`POST /chat`,
    // DESIGN §8). A row is claimed, with the message's credit, when the message starts (`reply` NULL, `claimed_ms` the claim's time) and gets the reply in the
    // same transaction that saves the thread's turns, so a retry replays it instead of running
    // its tools and paying again. Kept for `native.idempotency_ttl_secs`.
    r#"
CREATE TABLE chat_idempotency (
    org_id       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    reply        TEXT,
    owner        TEXT NOT NULL,     -- the attempt holding the claim; only it stores or releases
    claimed_ms   INTEGER NOT NULL,  -- renewed while that attempt runs
    created_ms   INTEGER NOT NULL,
    PRIMARY KEY (org_id, key_id, idem_key)
);
CREATE INDEX chat_idempotency_age ON chat_idempotency(created_ms);
"#,
];

/// Brings the database up to the newest schema. Safe to call on every open, from several
/// processes: each step runs in an immediate transaction that re-checks the version.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let target = i as i64 + 1;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current < target {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", target)?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// The version a fully migrated database reports.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}
