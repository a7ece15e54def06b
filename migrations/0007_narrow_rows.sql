-- convoy audit database, version 7: the same facts in fewer bytes.
--   A row's response (~2.5 KB) was stored inside its `audit` row, which the
--   plan inserts narrow and the outcome then grows in place: pages split, and
--   a 2.6 KB row in a 16 KiB page wasted the rest of the page. Responses now
--   live in `responses`, appended in the order they come (pages fill up),
--   beside a narrow row in `audit_rows`. And the batch name, stored five
--   times per row (the row, three indexes, `attempts`), is now a number:
--   `batches.no`. Times are integer milliseconds since 1970 (UTC) in the
--   tables, 6 bytes instead of 24, and the views show them as before.
--   `audit` and `attempts` are views with the same columns as the tables
--   they were, so every query of them answers as before. Both also take
--   INSERT, UPDATE and DELETE (their triggers write the tables below them).
--
--   batches.no        the batch's number: what `audit_rows` and
--                     `audit_attempts` store instead of its name
--   audit_rows        `audit` without `response`; `response_id` points into
--                     `responses`; `started_ms`, `finished_ms` for
--                     `started_at`, `finished_at`
--   responses         id, body: each body once; removed with its row (or
--                     when the row gets another)
--   audit_rows.reserved  a few bytes a planned row holds for what it gains
--                     when it is marked in flight and answered (its times,
--                     HTTP status, response number), let go at the mark so
--                     the row does not grow: the plan packs rows into full
--                     pages, and growing rows split them half empty
--   audit_attempts    `attempts` with `batch_no` for `batch_id`, `started_ms`
--                     for `started_at`

ALTER TABLE batches ADD COLUMN no INTEGER;
UPDATE batches SET no = rowid;
CREATE UNIQUE INDEX batches_by_no ON batches (no);
-- Every new batch is numbered, however it is inserted.
CREATE TRIGGER batches_numbered AFTER INSERT ON batches WHEN NEW.no IS NULL BEGIN
    UPDATE batches SET no = (SELECT COALESCE(max(no), 0) + 1 FROM batches) WHERE id = NEW.id;
END;

CREATE TABLE responses (
    id   INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE audit_rows (
    batch_no        INTEGER NOT NULL,
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
    response_id     INTEGER,
    started_ms      INTEGER,
    finished_ms     INTEGER,
    source_row      TEXT,
    pass            INTEGER NOT NULL DEFAULT 1,
    changes         TEXT,
    holds_snapshot  INTEGER,
    reserved        BLOB,             -- room the row grows into (see below)
    PRIMARY KEY (batch_no, row_key)
);

CREATE TABLE audit_attempts (
    batch_no    INTEGER NOT NULL,
    row_key     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    duration_ms INTEGER,
    http_status INTEGER,
    error       TEXT,
    PRIMARY KEY (batch_no, row_key, attempt)
) WITHOUT ROWID;

-- The rows keep their rowids (a running convoy knows its rows by them).
INSERT INTO responses (id, body) SELECT rowid, response FROM audit WHERE response IS NOT NULL;
INSERT INTO audit_rows (rowid, batch_no, row_key, row_number, row_hash, op, api, conversation_id, agent_id,
        method, url, request_body, status, attempts, http_status, error, response_id, started_ms, finished_ms,
        source_row, pass, changes, holds_snapshot)
    SELECT a.rowid, b.no, a.row_key, a.row_number, a.row_hash, a.op, a.api, a.conversation_id, a.agent_id,
        a.method, a.url, a.request_body, a.status, a.attempts, a.http_status, a.error,
        CASE WHEN a.response IS NOT NULL THEN a.rowid END, CAST(round((julianday(a.started_at) - 2440587.5) * 86400000.0) AS INTEGER), CAST(round((julianday(a.finished_at) - 2440587.5) * 86400000.0) AS INTEGER),
        a.source_row, a.pass, a.changes, a.holds_snapshot
    FROM audit a JOIN batches b ON b.id = a.batch_id;
INSERT INTO audit_attempts SELECT b.no, t.row_key, t.attempt, CAST(round((julianday(t.started_at) - 2440587.5) * 86400000.0) AS INTEGER), t.duration_ms, t.http_status, t.error
    FROM attempts t JOIN batches b ON b.id = t.batch_id;

DROP VIEW failures;
DROP VIEW conversation_history;
DROP VIEW batch_summary;
DROP VIEW conversations;
DROP TABLE audit;
DROP TABLE attempts;

CREATE INDEX audit_by_row_number ON audit_rows (batch_no, row_number);
CREATE INDEX audit_by_status ON audit_rows (batch_no, status);
CREATE INDEX audit_by_conversation ON audit_rows (conversation_id);

-- A body goes with its row, and a row that gets another body lets the old one go.
CREATE TRIGGER audit_rows_deleted AFTER DELETE ON audit_rows WHEN OLD.response_id IS NOT NULL BEGIN
    DELETE FROM responses WHERE id = OLD.response_id;
END;
CREATE TRIGGER audit_rows_answered AFTER UPDATE OF response_id ON audit_rows
WHEN OLD.response_id IS NOT NULL AND OLD.response_id IS NOT NEW.response_id BEGIN
    DELETE FROM responses WHERE id = OLD.response_id;
END;

CREATE VIEW audit AS
SELECT b.id AS batch_id, a.row_key, a.row_number, a.row_hash, a.op, a.api, a.conversation_id, a.agent_id,
       a.method, a.url, a.request_body, a.status, a.attempts, a.http_status, a.error, r.body AS response,
       strftime('%Y-%m-%dT%H:%M:%S', a.started_ms / 1000, 'unixepoch') || printf('.%03dZ', a.started_ms % 1000) AS started_at,
       strftime('%Y-%m-%dT%H:%M:%S', a.finished_ms / 1000, 'unixepoch') || printf('.%03dZ', a.finished_ms % 1000) AS finished_at,
       a.source_row, a.pass, a.changes, a.holds_snapshot
FROM audit_rows a JOIN batches b ON b.no = a.batch_no LEFT JOIN responses r ON r.id = a.response_id;

CREATE VIEW attempts AS
SELECT b.id AS batch_id, t.row_key, t.attempt, strftime('%Y-%m-%dT%H:%M:%S', t.started_ms / 1000, 'unixepoch') || printf('.%03dZ', t.started_ms % 1000) AS started_at, t.duration_ms, t.http_status, t.error
FROM audit_attempts t JOIN batches b ON b.no = t.batch_no;

-- Writing `audit` or `attempts` writes the tables below them (for scripts and repairs by hand).
CREATE TRIGGER audit_insert INSTEAD OF INSERT ON audit BEGIN
    INSERT INTO responses (body) SELECT NEW.response WHERE NEW.response IS NOT NULL;
    INSERT INTO audit_rows (batch_no, row_key, row_number, row_hash, op, api, conversation_id, agent_id,
            method, url, request_body, status, attempts, http_status, error, response_id, started_ms, finished_ms,
            source_row, pass, changes, holds_snapshot)
        VALUES ((SELECT no FROM batches WHERE id = NEW.batch_id), NEW.row_key, NEW.row_number, NEW.row_hash,
            NEW.op, NEW.api, NEW.conversation_id, NEW.agent_id, NEW.method, NEW.url, NEW.request_body,
            NEW.status, COALESCE(NEW.attempts, 0), NEW.http_status, NEW.error,
            CASE WHEN NEW.response IS NOT NULL THEN last_insert_rowid() END,
            CAST(round((julianday(NEW.started_at) - 2440587.5) * 86400000.0) AS INTEGER), CAST(round((julianday(NEW.finished_at) - 2440587.5) * 86400000.0) AS INTEGER),
            NEW.source_row, COALESCE(NEW.pass, 1), NEW.changes, NEW.holds_snapshot);
END;
CREATE TRIGGER audit_update INSTEAD OF UPDATE ON audit BEGIN
    INSERT INTO responses (body) SELECT NEW.response WHERE NEW.response IS NOT NULL AND NEW.response IS NOT OLD.response;
    UPDATE audit_rows SET batch_no = (SELECT no FROM batches WHERE id = NEW.batch_id), row_key = NEW.row_key,
        row_number = NEW.row_number, row_hash = NEW.row_hash, op = NEW.op, api = NEW.api,
        conversation_id = NEW.conversation_id, agent_id = NEW.agent_id, method = NEW.method, url = NEW.url,
        request_body = NEW.request_body, status = NEW.status, attempts = NEW.attempts,
        http_status = NEW.http_status, error = NEW.error,
        response_id = CASE WHEN NEW.response IS OLD.response THEN response_id
                           WHEN NEW.response IS NULL THEN NULL ELSE last_insert_rowid() END,
        started_ms = CAST(round((julianday(NEW.started_at) - 2440587.5) * 86400000.0) AS INTEGER), finished_ms = CAST(round((julianday(NEW.finished_at) - 2440587.5) * 86400000.0) AS INTEGER),
        source_row = NEW.source_row,
        pass = NEW.pass, changes = NEW.changes, holds_snapshot = NEW.holds_snapshot
    WHERE batch_no = (SELECT no FROM batches WHERE id = OLD.batch_id) AND row_key = OLD.row_key;
END;
CREATE TRIGGER audit_delete INSTEAD OF DELETE ON audit BEGIN
    DELETE FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = OLD.batch_id) AND row_key = OLD.row_key;
END;

CREATE TRIGGER attempts_insert INSTEAD OF INSERT ON attempts BEGIN
    INSERT INTO audit_attempts (batch_no, row_key, attempt, started_ms, duration_ms, http_status, error)
        VALUES ((SELECT no FROM batches WHERE id = NEW.batch_id), NEW.row_key, NEW.attempt,
            CAST(round((julianday(NEW.started_at) - 2440587.5) * 86400000.0) AS INTEGER), NEW.duration_ms, NEW.http_status, NEW.error);
END;
CREATE TRIGGER attempts_update INSTEAD OF UPDATE ON attempts BEGIN
    UPDATE audit_attempts SET batch_no = (SELECT no FROM batches WHERE id = NEW.batch_id), row_key = NEW.row_key,
        attempt = NEW.attempt, started_ms = CAST(round((julianday(NEW.started_at) - 2440587.5) * 86400000.0) AS INTEGER), duration_ms = NEW.duration_ms,
        http_status = NEW.http_status, error = NEW.error
    WHERE batch_no = (SELECT no FROM batches WHERE id = OLD.batch_id) AND row_key = OLD.row_key AND attempt = OLD.attempt;
END;
CREATE TRIGGER attempts_delete INSTEAD OF DELETE ON attempts BEGIN
    DELETE FROM audit_attempts
    WHERE batch_no = (SELECT no FROM batches WHERE id = OLD.batch_id) AND row_key = OLD.row_key AND attempt = OLD.attempt;
END;

-- The latest snapshot per conversation, as in version 5.
CREATE VIEW conversations AS
SELECT a.api, a.conversation_id,
       CASE WHEN a.api = 'attention' AND json_type(r.body, '$.attributes') IS NOT NULL THEN r.body
            ELSE r.body -> '$.data' END AS snapshot,
       b.id AS batch_id, a.row_key, strftime('%Y-%m-%dT%H:%M:%S', a.finished_ms / 1000, 'unixepoch') || printf('.%03dZ', a.finished_ms % 1000) AS updated_at
FROM audit_rows a JOIN batches b ON b.no = a.batch_no JOIN responses r ON r.id = a.response_id
WHERE a.holds_snapshot = 1
  AND NOT EXISTS (SELECT 1 FROM audit_rows n
                  WHERE n.conversation_id = a.conversation_id AND n.api = a.api AND n.holds_snapshot = 1
                    AND (n.finished_ms > a.finished_ms
                         OR (n.finished_ms = a.finished_ms AND n.rowid > a.rowid)));

CREATE VIEW failures AS
SELECT b.id AS batch_id, a.row_key, a.row_number, a.status, a.api, a.op, a.conversation_id, a.agent_id,
       a.attempts, a.http_status, a.error, strftime('%Y-%m-%dT%H:%M:%S', a.finished_ms / 1000, 'unixepoch') || printf('.%03dZ', a.finished_ms % 1000) AS finished_at,
       b.created_at AS batch_created_at
FROM audit_rows a JOIN batches b ON b.no = a.batch_no
WHERE a.status IN ('failed', 'invalid', 'pending', 'in_flight', 'held');

CREATE VIEW conversation_history AS
SELECT a.conversation_id, a.api, b.id AS batch_id, b.created_at AS batch_created_at, a.row_key, a.op, a.status,
       a.http_status, a.request_body, a.changes, a.error, strftime('%Y-%m-%dT%H:%M:%S', a.started_ms / 1000, 'unixepoch') || printf('.%03dZ', a.started_ms % 1000) AS started_at,
       strftime('%Y-%m-%dT%H:%M:%S', a.finished_ms / 1000, 'unixepoch') || printf('.%03dZ', a.finished_ms % 1000) AS finished_at
FROM audit_rows a JOIN batches b ON b.no = a.batch_no;

CREATE VIEW batch_summary AS
SELECT b.id AS batch_id, b.status, b.created_at, b.finished_at, b.send_seconds,
       count(a.row_key) AS rows,
       count(*) FILTER (WHERE a.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE a.status = 'failed') AS failed,
       count(*) FILTER (WHERE a.status = 'invalid') AS invalid,
       count(*) FILTER (WHERE a.status IN ('pending', 'in_flight')) AS pending,
       count(*) FILTER (WHERE a.status = 'held') AS held,
       count(*) FILTER (WHERE a.status = 'skipped') AS skipped
FROM batches b LEFT JOIN audit_rows a ON a.batch_no = b.no
GROUP BY b.id;
