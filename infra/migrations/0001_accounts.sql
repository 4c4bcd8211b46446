-- Every user-owned table is keyed by the owning user id first, so a distributed PostgreSQL
-- (Citus) can shard the schema by user_id as it is. Ids are UUIDv7 minted by the application.

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    email           text NOT NULL,
    password_hash   text NOT NULL,
    display_name    text NOT NULL,
    birth_date      date NOT NULL,
    gender          text NOT NULL,
    bio             text NOT NULL DEFAULT '',
    show_me         text[] NOT NULL,
    interest_tags   text[] NOT NULL DEFAULT '{}',
    age_min         smallint NOT NULL DEFAULT 18,
    age_max         smallint NOT NULL DEFAULT 99,
    max_distance_km integer NOT NULL DEFAULT 50,
    visibility      text NOT NULL DEFAULT 'VISIBLE',
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz
);

-- Email uniqueness cannot be a constraint on users once it is sharded by id, so emails live in
-- their own table keyed (and distributable) by the email itself.
CREATE TABLE user_emails (
    email   text PRIMARY KEY,
    user_id uuid NOT NULL
);

CREATE TABLE sessions (
    user_id           uuid NOT NULL,
    id                uuid NOT NULL,
    refresh_hash      bytea NOT NULL,
    prev_refresh_hash bytea,
    created_at        timestamptz NOT NULL,
    refreshed_at      timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    revoked_at        timestamptz,
    -- Where the session began (the client's address as the trusted edge saw it): for the
    -- account's security view and for coarse IP geolocation.
    created_ip        inet,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
