-- The ferry index (PostgreSQL). Times are unix seconds (UTC).

CREATE TABLE devices (
    name            TEXT    PRIMARY KEY,
    -- sha256 of the token; the token itself is never stored.
    token_hash      BYTEA   NOT NULL UNIQUE,
    revoked         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT  NOT NULL,
    last_seen_at    BIGINT,
    last_upload_at  BIGINT
);

CREATE TABLE commits (
    commit_id   TEXT    PRIMARY KEY,
    head        BOOLEAN NOT NULL DEFAULT FALSE,
    note        TEXT,
    allowed_at  BIGINT  NOT NULL
);
-- At most one head commit.
CREATE UNIQUE INDEX commits_one_head ON commits (head) WHERE head;

CREATE TABLE episodes (
    -- The unique key that decides which of two racing uploads is first.
    episode_id  TEXT    PRIMARY KEY,
    sha256      TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    commit_id   TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    stored_at   BIGINT  NOT NULL
);
CREATE INDEX episodes_sha256 ON episodes (sha256);
CREATE INDEX episodes_device ON episodes (device);
CREATE INDEX episodes_stored_at ON episodes (stored_at);
