-- The highest message number each chat may hand out. Redis numbers the messages, but Redis may lose
-- its data: a chat's counter then resumes above what is reserved here, so no number is ever reused.
-- Taken a block at a time, so this is one write per thousand messages. Keyed by the chat (its own
-- shard key); no foreign key, as everywhere.
CREATE TABLE chat_sequences (
    chat_id  uuid   PRIMARY KEY,
    reserved bigint NOT NULL
);
