-- convoy audit database, version 6: `auto` also remembers an API's cap on
-- concurrent calls.
--   learned_rates.in_flight: the most calls the API serves at once, found
--     from its 429s (NULL: none found). A lane starts the next run there.
--   learned_rates.window_quota: the calls one long window (a 429's
--     Retry-After of 2 s or more) accepts (NULL: none seen). The next run
--     sends that many and one probe a window.
--   learned_rates.rate_per_sec may now be NULL: an API limited only by a
--     cap on concurrent calls, or by long windows, has no rate to remember.
CREATE TABLE learned_rates_v6 (
    api          TEXT NOT NULL,
    base_url     TEXT NOT NULL,
    rate_per_sec REAL,
    in_flight    INTEGER,
    window_quota INTEGER,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (api, base_url)
);
INSERT INTO learned_rates_v6 (api, base_url, rate_per_sec, updated_at)
    SELECT api, base_url, rate_per_sec, updated_at FROM learned_rates;
DROP TABLE learned_rates;
ALTER TABLE learned_rates_v6 RENAME TO learned_rates;
