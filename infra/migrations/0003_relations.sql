-- Relations between people. Every table is keyed by a user id first (the shard key); pairs are
-- keyed by their lower id. No foreign keys: across shards they could not be enforced.

-- One row per (user, target): the swipe writer's target. 100 hash partitions, as in the design's
-- 100 tables, inside one database; a distributed PostgreSQL shards the same shape by user_id.
CREATE TABLE swipes (
    user_id    uuid NOT NULL,
    target_id  uuid NOT NULL,
    direction  text NOT NULL,
    super_like boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, target_id)
) PARTITION BY HASH (user_id);

DO $$
BEGIN
    FOR i IN 0..99 LOOP
        EXECUTE format('CREATE TABLE swipes_p%s PARTITION OF swipes FOR VALUES WITH (MODULUS 100, REMAINDER %s)',
                       lpad(i::text, 2, '0'), i);
    END LOOP;
END $$;

-- A mutual like makes one match: the swipe writer looks for the other half once its own swipes are
-- committed, so of two writers committing the halves at once the later one to look finds both; the
-- key makes a second one impossible. low_completed says whose writer created it (the low side's when
-- true): that writer announces it, again after a crash until notified is set.
CREATE TABLE matches (
    low_id        uuid NOT NULL,
    high_id       uuid NOT NULL,
    id            uuid NOT NULL,
    created_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    notified      boolean NOT NULL DEFAULT false,
    low_completed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (low_id, high_id)
);

-- Each match seen from each side, for "my matches" without a cross-shard query.
CREATE TABLE user_matches (
    user_id    uuid NOT NULL,
    match_id   uuid NOT NULL,
    other_id   uuid NOT NULL,
    created_at timestamptz NOT NULL,
    ended_at   timestamptz,
    PRIMARY KEY (user_id, match_id)
);
CREATE INDEX user_matches_by_other ON user_matches (user_id, other_id);

-- A block is stored on both sides, so "blocked either way" is one lookup on the viewer's shard.
CREATE TABLE blocks (
    user_id    uuid NOT NULL,
    other_id   uuid NOT NULL,
    by_me      boolean NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, other_id)
);

CREATE TABLE reports (
    reporter_id uuid NOT NULL,
    id          uuid NOT NULL,
    target_id   uuid NOT NULL,
    reason      text NOT NULL,
    details     text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (reporter_id, id)
);
CREATE INDEX reports_by_time ON reports (created_at);
