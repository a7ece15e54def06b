-- convoy audit database, version 4: live state (contract section 8).
--   batches.status gains 'planned' (made by `convoy plan`, sent by `convoy apply`),
--   batches.source_kind gains 'undo' (a batch built by `convoy undo`, not read from a file).
--   audit.changes: what a row changes (or changed), field by field:
--       {"labels": {"before": {...}, "after": {...}}, "title": {...}, "tags": {"add": [...]}, ...}
--   reads: every GET of a conversation convoy made, and why:
--       pre_image  the conversation just before the batch first touched it (one per conversation)
--       state      a later read to judge rows against (a resume of a --skip-unchanged batch)
--       verify     a read settling a row left in_flight by a crash
--       check      a read before undoing a conversation (did anyone change it since?)
-- SQLite cannot change a CHECK constraint in place, so `batches` is rebuilt
-- (the views that read it are dropped first and made again after).

DROP VIEW failures;
DROP VIEW conversation_history;
DROP VIEW batch_summary;

CREATE TABLE batches_v4 (
    id           TEXT PRIMARY KEY,
    source       TEXT NOT NULL,
    source_kind  TEXT NOT NULL CHECK (source_kind IN ('csv', 'stdin', 'sqlite', 'undo')),
    source_table TEXT,
    columns      TEXT NOT NULL DEFAULT '[]',
    status       TEXT NOT NULL CHECK (status IN ('planned', 'running', 'completed', 'failed', 'interrupted')),
    created_at   TEXT NOT NULL,
    finished_at  TEXT,
    options      TEXT NOT NULL DEFAULT '{}',
    pid          INTEGER,
    passes       INTEGER NOT NULL DEFAULT 1,
    send_seconds REAL NOT NULL DEFAULT 0
);
INSERT INTO batches_v4 SELECT id, source, source_kind, source_table, columns, status, created_at, finished_at,
    options, pid, passes, send_seconds FROM batches;
DROP TABLE batches;
ALTER TABLE batches_v4 RENAME TO batches;
CREATE INDEX batches_by_created ON batches (created_at);

ALTER TABLE audit ADD COLUMN changes TEXT;
CREATE INDEX audit_by_batch_conversation ON audit (batch_id, api, conversation_id, row_number);

CREATE TABLE reads (
    id              INTEGER PRIMARY KEY,
    batch_id        TEXT NOT NULL,
    api             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    agent_id        TEXT,
    purpose         TEXT NOT NULL CHECK (purpose IN ('pre_image', 'state', 'verify', 'check')),
    row_key         TEXT,            -- the row it was read for
    url             TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 1,
    http_status     INTEGER,
    error           TEXT,
    state           TEXT,            -- JSON: the conversation as read; NULL when it could not be read
    read_at         TEXT NOT NULL
);
CREATE UNIQUE INDEX reads_one_pre_image ON reads (batch_id, api, conversation_id) WHERE purpose = 'pre_image';
CREATE INDEX reads_by_conversation ON reads (conversation_id);

-- Each conversation's state just before a batch first touched it (what `undo` puts back).
CREATE VIEW pre_images AS
SELECT batch_id, api, conversation_id, agent_id, state, http_status, read_at
FROM reads WHERE purpose = 'pre_image';

CREATE VIEW failures AS
SELECT a.batch_id, a.row_key, a.row_number, a.status, a.api, a.op, a.conversation_id, a.agent_id,
       a.attempts, a.http_status, a.error, a.finished_at, b.created_at AS batch_created_at
FROM audit a JOIN batches b ON b.id = a.batch_id
WHERE a.status IN ('failed', 'invalid', 'pending', 'in_flight', 'held');

CREATE VIEW conversation_history AS
SELECT a.conversation_id, a.api, a.batch_id, b.created_at AS batch_created_at, a.row_key, a.op, a.status,
       a.http_status, a.request_body, a.changes, a.error, a.started_at, a.finished_at
FROM audit a JOIN batches b ON b.id = a.batch_id;

CREATE VIEW batch_summary AS
SELECT b.id AS batch_id, b.status, b.created_at, b.finished_at, b.send_seconds,
       count(a.row_key) AS rows,
       count(*) FILTER (WHERE a.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE a.status = 'failed') AS failed,
       count(*) FILTER (WHERE a.status = 'invalid') AS invalid,
       count(*) FILTER (WHERE a.status IN ('pending', 'in_flight')) AS pending,
       count(*) FILTER (WHERE a.status = 'held') AS held,
       count(*) FILTER (WHERE a.status = 'skipped') AS skipped
FROM batches b LEFT JOIN audit a ON a.batch_id = b.id
GROUP BY b.id;
