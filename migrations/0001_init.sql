-- convoy audit database, version 1.
-- Times are UTC RFC 3339 text; JSON columns hold JSON text (query them with json_extract / ->>).

CREATE TABLE batches (
    id          TEXT PRIMARY KEY,            -- the batch name
    source      TEXT NOT NULL,               -- CSV path, '-' for stdin, or SQLite path
    source_kind TEXT NOT NULL CHECK (source_kind IN ('csv', 'stdin', 'sqlite')),
    source_table TEXT,                       -- the table, for SQLite sources
    columns     TEXT NOT NULL DEFAULT '[]',  -- JSON array: the source's column names, in order
    status      TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    options     TEXT NOT NULL DEFAULT '{}',  -- JSON of the effective options (never a secret)
    pid         INTEGER,                     -- the process that last ran it
    passes      INTEGER NOT NULL DEFAULT 1   -- 1 for the run, +1 for each resume
);

CREATE TABLE audit (
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
    status          TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed', 'invalid')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    http_status     INTEGER,
    error           TEXT,
    response        TEXT,
    started_at      TEXT,
    finished_at     TEXT,
    source_row      TEXT,                    -- JSON object: the row's cells as the source had them
    pass            INTEGER NOT NULL DEFAULT 1,  -- the batch pass that last saw this row in the source
    PRIMARY KEY (batch_id, row_key)
);
CREATE INDEX audit_by_row_number ON audit (batch_id, row_number);
CREATE INDEX audit_by_status ON audit (batch_id, status);
CREATE INDEX audit_by_conversation ON audit (conversation_id);

CREATE TABLE attempts (
    batch_id    TEXT NOT NULL,
    row_key     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    duration_ms INTEGER,
    http_status INTEGER,
    error       TEXT,
    PRIMARY KEY (batch_id, row_key, attempt)
);

CREATE TABLE conversations (
    api             TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    snapshot        TEXT NOT NULL,
    batch_id        TEXT NOT NULL,
    row_key         TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (api, conversation_id)
);

-- The pace learned per API and base URL by `--*-rate auto`, the start of the next run.
CREATE TABLE learned_rates (
    api          TEXT NOT NULL,
    base_url     TEXT NOT NULL,
    rate_per_sec REAL NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (api, base_url)
);
