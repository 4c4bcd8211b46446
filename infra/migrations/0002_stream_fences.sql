-- The highest fencing token each consumer group has used on each stream partition. Redis hands
-- tokens out, but Redis may lose data; its counter restarts above what is recorded here.
CREATE TABLE stream_fences (
    group_name text    NOT NULL,
    partition  integer NOT NULL,
    fence      bigint  NOT NULL,
    PRIMARY KEY (group_name, partition)
);
