-- Episode ids are scoped to the device that ships them (SPEC §2): the
-- stored key becomes (device, episode_id), so two devices may both store
-- `ep-0001`. Every existing row already names its device, so the rows are
-- kept as they are, under the new key.
--
-- `device` references `devices (name)` ON UPDATE CASCADE: `devices rename`
-- is one UPDATE of the device row that carries its episodes along in the
-- same transaction, and a row can never name a device that does not exist
-- (an upload checked under a device's old name that reaches the index
-- after a rename fails its insert and is retried, rather than storing a row
-- that no device owns).
--
-- SQLite cannot change a primary key in place: the table is rebuilt. No
-- other table references `episodes`, so this is safe with foreign keys on.

-- ferry never deletes a device, but a row whose device row is gone (a
-- database edited by hand) gets a revoked placeholder device, so that the
-- foreign key holds and the episode stays listed.
INSERT INTO devices (name, token_hash, revoked, created_at)
SELECT device, randomblob(32), 1, MIN(stored_at)
  FROM episodes
 WHERE device NOT IN (SELECT name FROM devices)
 GROUP BY device;

CREATE TABLE episodes_keyed_by_device (
    episode_id  TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    commit_id   TEXT    NOT NULL,
    device      TEXT    NOT NULL REFERENCES devices (name) ON UPDATE CASCADE,
    stored_at   INTEGER NOT NULL,
    -- The unique key that decides which of two racing uploads of one
    -- device is first; it also serves every lookup by device.
    PRIMARY KEY (device, episode_id)
);
INSERT INTO episodes_keyed_by_device (episode_id, sha256, size, commit_id, device, stored_at)
SELECT episode_id, sha256, size, commit_id, device, stored_at FROM episodes;

-- Drops the old indexes and the trigger with the table.
DROP TABLE episodes;
ALTER TABLE episodes_keyed_by_device RENAME TO episodes;

-- Objects are content-addressed and shared across devices: collection asks
-- whether any row, of any device, still references a digest.
CREATE INDEX episodes_sha256 ON episodes (sha256);
CREATE INDEX episodes_stored_at ON episodes (stored_at);
-- An operator may name an episode by its id alone when one device has it
-- (`episodes verify ID`): found without a scan.
CREATE INDEX episodes_episode_id ON episodes (episode_id);

CREATE TRIGGER episodes_record_upload AFTER INSERT ON episodes
BEGIN
    UPDATE devices
       SET last_upload_at = MAX(COALESCE(last_upload_at, 0), NEW.stored_at),
           last_seen_at   = MAX(COALESCE(last_seen_at, 0), NEW.stored_at)
     WHERE name = NEW.device;
END;
