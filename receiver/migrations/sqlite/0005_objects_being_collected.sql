-- Objects the collector is deleting (store/collect.rs), each until a time
-- past any delete request's lifetime: a row whose object is here is not
-- inserted (the commit stage answers 503 and the device retries), so a
-- delete still on its way to the object store cannot take the object of an
-- episode acknowledged after the collector looked.
CREATE TABLE objects_being_collected (
    sha256 TEXT PRIMARY KEY,
    until  INTEGER NOT NULL
);
