-- convoy audit database, version 2: what `convoy status` and the README's queries lean on.

-- Seconds spent sending, over all passes of a batch (for its achieved rate).
ALTER TABLE batches ADD COLUMN send_seconds REAL NOT NULL DEFAULT 0;

-- Every row that has not succeeded, with why.
CREATE VIEW failures AS
SELECT a.batch_id, a.row_key, a.row_number, a.status, a.api, a.op, a.conversation_id, a.agent_id,
       a.attempts, a.http_status, a.error, a.finished_at, b.created_at AS batch_created_at
FROM audit a JOIN batches b ON b.id = a.batch_id
WHERE a.status IN ('failed', 'invalid', 'pending', 'in_flight');

-- Every edit ever made to a conversation, across batches, oldest first.
CREATE VIEW conversation_history AS
SELECT a.conversation_id, a.api, a.batch_id, b.created_at AS batch_created_at, a.row_key, a.op, a.status,
       a.http_status, a.request_body, a.error, a.started_at, a.finished_at
FROM audit a JOIN batches b ON b.id = a.batch_id;

-- One line per batch: its counts by status.
CREATE VIEW batch_summary AS
SELECT b.id AS batch_id, b.status, b.created_at, b.finished_at, b.send_seconds,
       count(a.row_key) AS rows,
       count(*) FILTER (WHERE a.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE a.status = 'failed') AS failed,
       count(*) FILTER (WHERE a.status = 'invalid') AS invalid,
       count(*) FILTER (WHERE a.status IN ('pending', 'in_flight')) AS pending
FROM batches b LEFT JOIN audit a ON a.batch_id = b.id
GROUP BY b.id;

CREATE INDEX batches_by_created ON batches (created_at);
CREATE INDEX attempts_by_duration ON attempts (duration_ms);
