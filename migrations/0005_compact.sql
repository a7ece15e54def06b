-- convoy audit database, version 5: the same facts in fewer bytes.
--   conversations: was a table holding a copy of each conversation's latest
--     snapshot, which is also the response of the row that returned it (and
--     was upserted at random places in its B-tree on every outcome). It is
--     now a view over `audit`: same columns, same answers, one copy of the
--     JSON, no extra page written per outcome.
--   attempts: WITHOUT ROWID, so its primary key is the table itself.
-- (New databases also get 16 KiB pages: a ~2.6 KB audit row filled a 4 KiB
-- page only half.)

-- Which rows' responses hold their conversation (set by the writer with
-- the outcome: no other page is written for it).
ALTER TABLE audit ADD COLUMN holds_snapshot INTEGER;
UPDATE audit SET holds_snapshot = 1
WHERE status = 'succeeded' AND json_valid(response) AND (
      (api = 'attention' AND (json_type(response, '$.attributes') = 'object'
                              OR json_type(response, '$.data.attributes') = 'object'))
   OR (api = 'vg' AND json_type(response, '$.data') = 'object'));
DROP TABLE conversations;

-- The latest snapshot per conversation: the newest row whose response
-- holds it (found through `audit_by_conversation`). The conversation in a
-- response: VG's `data`; Attention's resource (the body itself, or its `data`).
CREATE VIEW conversations AS
SELECT a.api, a.conversation_id,
       CASE WHEN a.api = 'attention' AND json_type(a.response, '$.attributes') IS NOT NULL THEN a.response
            ELSE a.response -> '$.data' END AS snapshot,
       a.batch_id, a.row_key, a.finished_at AS updated_at
FROM audit a
WHERE a.holds_snapshot = 1
  AND NOT EXISTS (SELECT 1 FROM audit n
                  WHERE n.conversation_id = a.conversation_id AND n.api = a.api AND n.holds_snapshot = 1
                    AND (n.finished_at > a.finished_at
                         OR (n.finished_at = a.finished_at AND n.rowid > a.rowid)));

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

-- What bounded each API in a batch's last pass (JSON array, one object per
-- API: calls, their rate, the pace, 429s, time paused, calls in flight,
-- latency, and `bound` in words), for `convoy status NAME`.
ALTER TABLE batches ADD COLUMN pacing TEXT;
