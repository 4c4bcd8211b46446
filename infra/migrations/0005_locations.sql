-- Where people are, snapped: only cells are stored, never coordinates, so nothing finer than a
-- cell can leak from this table either. Keyed by the user id, like users (colocated shards).
CREATE TABLE user_locations (
    user_id         uuid PRIMARY KEY,
    device_cell     text,
    device_at       timestamptz,
    ip_cell         text,
    ip_accuracy_km  integer,
    ip_at           timestamptz,
    cell            text,          -- the one discovery uses (device while fresh, else IP)
    bucket          text,          -- the bucket cell that should list them; derived from cell
    updated_at      timestamptz NOT NULL
);

ALTER TABLE users ADD COLUMN last_active_at timestamptz;
ALTER TABLE users ADD COLUMN show_activity boolean NOT NULL DEFAULT true;

-- Change capture for the geohash buckets: one row per person with changes not yet applied to
-- Redis. The location updater locks rows, reads the current state, applies it, and deletes the
-- rows in the same transaction, so a restart misses nothing and a replay is harmless. Queuing
-- updates an existing row rather than skipping it: the row lock keeps the updater from reading a
-- state older than a change still being committed and then deleting the row that announced it.
CREATE TABLE discovery_changes (
    user_id    uuid PRIMARY KEY,
    queued_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX discovery_changes_by_time ON discovery_changes (queued_at);

-- Where the buckets list each person, as the updater last applied it: the bucket to leave when
-- they move. Only the updater writes it, so it never waits on a lock that API requests hold.
CREATE TABLE discovery_listed (
    user_id   uuid PRIMARY KEY,
    bucket    text NOT NULL,
    listed_at timestamptz NOT NULL
);

CREATE FUNCTION queue_discovery_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO discovery_changes (user_id) VALUES (NEW.user_id)
    ON CONFLICT (user_id) DO UPDATE SET queued_at = now();
    RETURN NULL;
END $$;

CREATE TRIGGER user_locations_changed AFTER INSERT ON user_locations
    FOR EACH ROW EXECUTE FUNCTION queue_discovery_change();
CREATE TRIGGER user_locations_moved AFTER UPDATE ON user_locations
    FOR EACH ROW WHEN (OLD.cell IS DISTINCT FROM NEW.cell) EXECUTE FUNCTION queue_discovery_change();

CREATE FUNCTION queue_profile_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO discovery_changes (user_id)
    SELECT user_id FROM user_locations WHERE user_id = NEW.id
    ON CONFLICT (user_id) DO UPDATE SET queued_at = now();
    RETURN NULL;
END $$;

-- Only what a bucket record holds; activity counts by the day, so at most one change a day.
CREATE TRIGGER users_changed_for_discovery AFTER UPDATE ON users
    FOR EACH ROW WHEN (
        OLD.gender IS DISTINCT FROM NEW.gender OR OLD.birth_date IS DISTINCT FROM NEW.birth_date
        OR OLD.show_me IS DISTINCT FROM NEW.show_me OR OLD.interest_tags IS DISTINCT FROM NEW.interest_tags
        OR OLD.age_min IS DISTINCT FROM NEW.age_min OR OLD.age_max IS DISTINCT FROM NEW.age_max
        OR OLD.max_distance_km IS DISTINCT FROM NEW.max_distance_km OR OLD.visibility IS DISTINCT FROM NEW.visibility
        OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at OR OLD.show_activity IS DISTINCT FROM NEW.show_activity
        OR (OLD.last_active_at AT TIME ZONE 'UTC')::date IS DISTINCT FROM (NEW.last_active_at AT TIME ZONE 'UTC')::date
    ) EXECUTE FUNCTION queue_profile_change();
