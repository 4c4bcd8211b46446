-- Where each chat stream partition's archive has reached: the last window written to S3 and the last
-- stream entry it holds. Entries after it are in the stream still (they are trimmed only up to it),
-- so whoever owns the partition next rebuilds the open window from there. scope names the stream,
-- as in stream_fences.
CREATE TABLE chat_archive_positions (
    scope        text    NOT NULL,
    partition    integer NOT NULL,
    window_start bigint  NOT NULL,  -- ms since the epoch
    last_entry   text    NOT NULL,  -- a stream entry id
    PRIMARY KEY (scope, partition)
);
-- One row per chat per archived window: the byte range of the window's object holding that chat's
-- messages seq_from..seq_to. A history page finds its range reads here.
CREATE TABLE chat_archive_segments (
    chat_id     uuid    NOT NULL,
    seq_from    bigint  NOT NULL,
    seq_to      bigint  NOT NULL,
    messages    integer NOT NULL,
    object_key  text    NOT NULL,
    byte_offset bigint  NOT NULL,
    byte_length integer NOT NULL,
    PRIMARY KEY (chat_id, seq_from)
);
CREATE INDEX chat_archive_segments_to ON chat_archive_segments (chat_id, seq_to);
-- Each chat's data key, wrapped by the master key (infra/archive_keys.py): its archived segments are
-- sealed with it, so setting wrapped to NULL erases the chat in every object without touching them.
-- erase_after is set when the chat ends: at once, or later for a reported chat kept for moderation.
CREATE TABLE chat_archive_keys (
    chat_id     uuid PRIMARY KEY,
    wrapped     bytea,
    erase_after timestamptz
);
CREATE INDEX chat_archive_keys_due ON chat_archive_keys (erase_after) WHERE wrapped IS NOT NULL;
-- An ended chat (a match) is looked up by its id alone to see whether either side reported the other.
CREATE INDEX user_matches_by_match ON user_matches (match_id);
