-- Episode ids are scoped to the device that ships them (SPEC §2): the
-- stored key becomes (device, episode_id), so two devices may both store
-- `ep-0001`. Every existing row already names its device, so the rows are
-- kept as they are, under the new key (changed in place).
--
-- `device` references `devices (name)` ON UPDATE CASCADE: `devices rename`
-- is one UPDATE of the device row that carries its episodes along in the
-- same transaction, and a row can never name a device that does not exist
-- (an upload checked under a device's old name that reaches the index
-- after a rename fails its insert and is retried, rather than storing a row
-- that no device owns).

-- ferry never deletes a device, but a row whose device row is gone (a
-- database edited by hand) gets a revoked placeholder device, so that the
-- foreign key holds and the episode stays listed.
INSERT INTO devices (name, token_hash, revoked, created_at)
SELECT device,
       decode(md5(random()::text || device) || md5(random()::text || device), 'hex'),
       TRUE, MIN(stored_at)
  FROM episodes
 WHERE device NOT IN (SELECT name FROM devices)
 GROUP BY device;

ALTER TABLE episodes DROP CONSTRAINT episodes_pkey;
-- The unique key that decides which of two racing uploads of one device is
-- first; it also serves every lookup by device.
ALTER TABLE episodes ADD PRIMARY KEY (device, episode_id);
DROP INDEX episodes_device;
-- An operator may name an episode by its id alone when one device has it
-- (`episodes verify ID`): found without a scan.
CREATE INDEX episodes_episode_id ON episodes (episode_id);
ALTER TABLE episodes ADD CONSTRAINT episodes_device_fkey
    FOREIGN KEY (device) REFERENCES devices (name) ON UPDATE CASCADE;
