-- Operator views (SPEC §9).
--
-- Commits answered 412, per device: the receiver aggregates them in memory
-- and upserts a batch every few seconds (never a write per request), so a
-- row is (commit, device) with its number of attempts and first and last
-- time seen (unix seconds). Rows older than `rejected_window` are pruned
-- by the same flush, and a device keeps at most its newest 64 rows. No
-- foreign key on `device`: a flush must not fail for a device renamed
-- since its attempt was counted (`devices rename` moves the rows).
CREATE TABLE rejected_commits (
    commit_id   TEXT   NOT NULL,
    device      TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (commit_id, device)
);
CREATE INDEX rejected_commits_last_seen ON rejected_commits (last_seen);
-- A flush keeps only the newest rows of each device it wrote (so that one
-- device inventing commits fills its own share of the table, and only
-- that): found by device.
CREATE INDEX rejected_commits_device ON rejected_commits (device, last_seen);

-- Per-device totals kept by the INSERT trigger, so that the status page
-- and `devices list` read one row per device instead of counting and
-- summing every device's episodes on each request. Episode rows are never
-- deleted or resized; a rename carries the device row, totals included.
ALTER TABLE devices ADD COLUMN episode_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN episode_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE devices d
   SET episode_count = t.n, episode_bytes = t.bytes
  FROM (SELECT device, COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes
          FROM episodes GROUP BY device) t
 WHERE t.device = d.name;

CREATE OR REPLACE FUNCTION episodes_record_upload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices
       SET last_upload_at = GREATEST(last_upload_at, NEW.stored_at),
           last_seen_at   = GREATEST(last_seen_at, NEW.stored_at),
           episode_count  = episode_count + 1,
           episode_bytes  = episode_bytes + NEW.size
     WHERE name = NEW.device;
    RETURN NULL;
END
$$;
