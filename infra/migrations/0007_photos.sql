-- Profile photos, keyed by the owner first (the shard key, as everywhere). A row is born when an
-- upload is granted (UPLOADING, invisible), and confirming it makes it a job: PROCESSING rows are
-- the photo worker's queue, taken with a lease so a crashed worker's photos go to another one. The
-- queue lives here rather than in Redis so that "confirmed" is one commit, with nothing to lose.
CREATE TABLE photos (
    user_id           uuid NOT NULL,
    id                uuid NOT NULL,
    -- GONE: its account was deleted; the photo worker drops the row and the objects.
    state             text NOT NULL CHECK (state IN ('UPLOADING', 'PROCESSING', 'READY', 'REJECTED', 'GONE')),
    rejection         text,
    position          integer NOT NULL,
    content_type      text NOT NULL,
    byte_size         integer NOT NULL,
    -- Names the public objects; unguessable, so knowing a photo's id does not give its URL.
    token             text NOT NULL,
    renditions        jsonb NOT NULL DEFAULT '[]',  -- [[key, width, height], ...], widest first
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    upload_expires_at timestamptz NOT NULL,
    lease_until       timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX photos_to_process ON photos (updated_at) WHERE state = 'PROCESSING';
CREATE INDEX photos_pending_uploads ON photos (upload_expires_at) WHERE state = 'UPLOADING';
CREATE INDEX photos_rejected ON photos (updated_at) WHERE state = 'REJECTED';
CREATE INDEX photos_gone ON photos (updated_at) WHERE state = 'GONE';

-- In the same commit as the account's deletion, so no crash can leave its photos public. The owner's
-- rows only: the primary key's prefix, on the owner's shard.
CREATE FUNCTION photos_of_deleted_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE photos SET state = 'GONE', updated_at = now() WHERE user_id = NEW.id;
    RETURN NULL;
END $$;

CREATE TRIGGER users_deleted_photos AFTER UPDATE OF deleted_at ON users
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
    EXECUTE FUNCTION photos_of_deleted_account();

-- Objects to delete from S3 (uploads done with, photos deleted, accounts gone). A row is written in
-- the same transaction that drops the photo, and removed only after the object is gone.
CREATE TABLE photo_garbage (
    key       text PRIMARY KEY,
    queued_at timestamptz NOT NULL DEFAULT now()
);
