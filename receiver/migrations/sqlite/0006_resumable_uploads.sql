-- Resumable (tus) uploads whose bytes are in the shared object store
-- (store/uploads/shared.rs): every replica can continue any of them. The
-- bytes received are S3 multipart parts (`parts`: their ETags, in order,
-- a JSON array) and at most one part's worth of bytes in an
-- incomplete-part object (`tail` bytes long, at `tail_key`: a key per
-- write, so that a write of a PATCH that lost its lease lands beside it,
-- never on it); `hash` is the sha256 state of all of them. A PATCH holds
-- the row's lease (`lease`, until `lease_until`) while it runs, so that
-- one PATCH at a time writes parts.
CREATE TABLE resumable_uploads (
    upload_id   TEXT PRIMARY KEY,
    device      TEXT NOT NULL REFERENCES devices (name) ON UPDATE CASCADE ON DELETE CASCADE,
    episode_id  TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    length      INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    expires     INTEGER NOT NULL,
    multipart   TEXT NOT NULL,
    parts       TEXT NOT NULL,
    hash        BLOB NOT NULL,
    tail_key    TEXT NOT NULL,
    tail        INTEGER NOT NULL,
    interrupted INTEGER NOT NULL,
    lease       TEXT,
    lease_until INTEGER NOT NULL
);
CREATE INDEX resumable_uploads_by_device ON resumable_uploads (device);
CREATE INDEX resumable_uploads_by_expiry ON resumable_uploads (expires);
