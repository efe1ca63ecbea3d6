-- A stored episode records its device's last upload (and that the device
-- was seen) inside the INSERT itself, so that the commit stage indexes a
-- whole batch of uploads with one statement: one round trip, one synced
-- commit.
CREATE TRIGGER episodes_record_upload AFTER INSERT ON episodes
BEGIN
    UPDATE devices
       SET last_upload_at = MAX(COALESCE(last_upload_at, 0), NEW.stored_at),
           last_seen_at   = MAX(COALESCE(last_seen_at, 0), NEW.stored_at)
     WHERE name = NEW.device;
END;
