-- convoy audit database, version 3: two more row statuses.
--   held:    not sent, because a later edit of the same conversation already
--            succeeded (sending it would undo that edit); `error` says which.
--   skipped: judged to change nothing, never sent; `error` says why.
-- SQLite cannot change a CHECK constraint in place, so `audit` is rebuilt
-- (the views that read it are dropped first and made again after).

DROP VIEW failures;
DROP VIEW conversation_history;
DROP VIEW batch_summary;

CREATE TABLE audit_v3 (
    batch_id        TEXT NOT NULL,
    row_key         TEXT NOT NULL,
    row_number      INTEGER NOT NULL,
    row_hash        TEXT NOT NULL,
    op              TEXT,
    api             TEXT,
    conversation_id TEXT,
    agent_id        TEXT,
    method          TEXT,
    url             TEXT,
    request_body    TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed', 'invalid', 'held', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    http_status     INTEGER,
    error           TEXT,
    response        TEXT,
    started_at      TEXT,
    finished_at     TEXT,
    source_row      TEXT,
    pass            INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (batch_id, row_key)
);
INSERT INTO audit_v3 SELECT batch_id, row_key, row_number, row_hash, op, api, conversation_id, agent_id,
    method, url, request_body, status, attempts, http_status, error, response, started_at, finished_at,
    source_row, pass FROM audit;
DROP TABLE audit;
ALTER TABLE audit_v3 RENAME TO audit;
CREATE INDEX audit_by_row_number ON audit (batch_id, row_number);
CREATE INDEX audit_by_status ON audit (batch_id, status);
CREATE INDEX audit_by_conversation ON audit (conversation_id);

CREATE VIEW failures AS
SELECT a.batch_id, a.row_key, a.row_number, a.status, a.api, a.op, a.conversation_id, a.agent_id,
       a.attempts, a.http_status, a.error, a.finished_at, b.created_at AS batch_created_at
FROM audit a JOIN batches b ON b.id = a.batch_id
WHERE a.status IN ('failed', 'invalid', 'pending', 'in_flight', 'held');

CREATE VIEW conversation_history AS
SELECT a.conversation_id, a.api, a.batch_id, b.created_at AS batch_created_at, a.row_key, a.op, a.status,
       a.http_status, a.request_body, a.error, a.started_at, a.finished_at
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
