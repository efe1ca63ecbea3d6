-- A stored episode records its device's last upload (and that the device
-- was seen) inside the INSERT itself, so that the commit stage indexes a
-- whole batch of uploads with one statement: one round trip, one commit.
CREATE FUNCTION episodes_record_upload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices
       SET last_upload_at = GREATEST(last_upload_at, NEW.stored_at),
           last_seen_at   = GREATEST(last_seen_at, NEW.stored_at)
     WHERE name = NEW.device;
    RETURN NULL;
END
$$;

CREATE TRIGGER episodes_record_upload AFTER INSERT ON episodes
    FOR EACH ROW EXECUTE FUNCTION episodes_record_upload();
