-- What `convoy report` draws and `--metrics` tells a scheduler, beyond the
-- rows and attempts: the exit code of the batch's last run, and each API's
-- pacing sampled once a second while it was sent.

ALTER TABLE batches ADD COLUMN exit_code INTEGER;

-- One sample per API per second of a pass: the pace held (calls/s, NULL
-- unpaced), the limit learned so far, the calls on the wire, and whether
-- the API was held back then (0 no, 1 paused by Retry-After or a spent
-- quota, 2 down (an outage, probed), 3 stopped for the rest of the batch).
CREATE TABLE pacing_samples (
    batch_no  INTEGER NOT NULL,
    pass      INTEGER NOT NULL,
    api       TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    pace      REAL,
    learned   REAL,
    in_flight INTEGER NOT NULL,
    held      INTEGER NOT NULL,
    PRIMARY KEY (batch_no, pass, api, at_ms)
) WITHOUT ROWID;
