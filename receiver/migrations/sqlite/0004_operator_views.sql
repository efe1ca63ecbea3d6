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
    commit_id   TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
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
ALTER TABLE devices ADD COLUMN episode_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN episode_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE devices
   SET episode_count = (SELECT COUNT(*) FROM episodes e WHERE e.device = devices.name),
       episode_bytes = (SELECT COALESCE(SUM(e.size), 0) FROM episodes e WHERE e.device = devices.name);

DROP TRIGGER episodes_record_upload;
CREATE TRIGGER episodes_record_upload AFTER INSERT ON episodes
BEGIN
    UPDATE devices
       SET last_upload_at = MAX(COALESCE(last_upload_at, 0), NEW.stored_at),
           last_seen_at   = MAX(COALESCE(last_seen_at, 0), NEW.stored_at),
           episode_count  = episode_count + 1,
           episode_bytes  = episode_bytes + NEW.size
     WHERE name = NEW.device;
END;
