-- convoy audit database, version 5: the same facts in fewer bytes.
--   conversations: was a table holding a copy of each conversation's latest
--     snapshot, which is also the response of the row that returned it. It
--     is now a view over `latest` (which row returned each conversation's
--     latest snapshot) and that row's `audit.response`: same columns, same
--     answers, one copy of the JSON.
--   attempts: WITHOUT ROWID, so its primary key is the table itself.
-- (New databases also get 16 KiB pages: a ~2.6 KB audit row filled a 4 KiB
-- page only half.)

CREATE TABLE latest (
    api             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    batch_id        TEXT NOT NULL,
    row_key         TEXT NOT NULL,
    PRIMARY KEY (api, conversation_id)
) WITHOUT ROWID;
INSERT INTO latest (api, conversation_id, batch_id, row_key)
SELECT api, conversation_id, batch_id, row_key FROM conversations;
DROP TABLE conversations;

-- The conversation in a response: VG's `data`; Attention's resource (the
-- body itself, or its `data`).
CREATE VIEW conversations AS
SELECT l.api, l.conversation_id,
       CASE WHEN l.api = 'attention' AND json_type(a.response, '$.attributes') IS NOT NULL THEN a.response
            ELSE a.response -> '$.data' END AS snapshot,
       l.batch_id, l.row_key, a.finished_at AS updated_at
FROM latest l JOIN audit a ON a.batch_id = l.batch_id AND a.row_key = l.row_key;

CREATE TABLE attempts_v5 (
    batch_id    TEXT NOT NULL,
    row_key     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    duration_ms INTEGER,
    http_status INTEGER,
    error       TEXT,
    PRIMARY KEY (batch_id, row_key, attempt)
) WITHOUT ROWID;
INSERT INTO attempts_v5 SELECT batch_id, row_key, attempt, started_at, duration_ms, http_status, error FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v5 RENAME TO attempts;


-- An index that costs more bytes than it saves time: a conversation's rows
-- of one batch are found through `audit_by_conversation`. (The rebuilt
-- `attempts` drops `attempts_by_duration` too: the slowest calls are one
-- scan of `attempts`.)
DROP INDEX audit_by_batch_conversation;

-- `convoy prune`: what was removed from a batch. NULL: nothing; 'bulk': its
-- responses (but each conversation's latest), source rows and pre-images;
-- 'rows': its rows, attempts and reads (but each conversation's latest row).
ALTER TABLE batches ADD COLUMN pruned TEXT;
