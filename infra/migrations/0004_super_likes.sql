-- Super likes seen from the recipient's side, keyed by the recipient (the shard key of whoever
-- reads them): their candidates list puts these senders first. Written by the swipe writer in the
-- same transaction as the swipe itself.
CREATE TABLE super_likes_received (
    user_id    uuid NOT NULL,
    sender_id  uuid NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, sender_id)
) PARTITION BY HASH (user_id);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format('CREATE TABLE super_likes_received_p%s PARTITION OF super_likes_received'
                       ' FOR VALUES WITH (MODULUS 16, REMAINDER %s)', lpad(i::text, 2, '0'), i);
    END LOOP;
END $$;
