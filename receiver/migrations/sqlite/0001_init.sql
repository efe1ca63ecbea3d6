-- The ferry index (SQLite). Times are unix seconds (UTC).

CREATE TABLE devices (
    name            TEXT    PRIMARY KEY NOT NULL,
    -- sha256 of the token; the token itself is never stored.
    token_hash      BLOB    NOT NULL UNIQUE,
    revoked         INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    last_seen_at    INTEGER,
    last_upload_at  INTEGER
);

CREATE TABLE commits (
    commit_id   TEXT    PRIMARY KEY NOT NULL,
    head        INTEGER NOT NULL DEFAULT 0,
    note        TEXT,
    allowed_at  INTEGER NOT NULL
);
-- At most one head commit.
CREATE UNIQUE INDEX commits_one_head ON commits (head) WHERE head = 1;

CREATE TABLE episodes (
    -- The unique key that decides which of two racing uploads is first.
    episode_id  TEXT    PRIMARY KEY NOT NULL,
    sha256      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    commit_id   TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    stored_at   INTEGER NOT NULL
);
CREATE INDEX episodes_sha256 ON episodes (sha256);
CREATE INDEX episodes_device ON episodes (device);
CREATE INDEX episodes_stored_at ON episodes (stored_at);
