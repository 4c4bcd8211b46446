-- The large tables not partitioned yet, hash-partitioned as swipes are, each by the key a sharded
-- PostgreSQL would distribute it by (docs/scaling.md): relations by user, matches by the pair's
-- lower id, the chat index by chat. Names, columns, keys and indexes stay as they were, whatever
-- earlier migrations gave them; every primary key already starts with the partition key, which a
-- unique index on a partitioned table must include.
DO $$
DECLARE
    t record;
    kept record;
    old text;
    constraints text[][];
    indexes text[];
    item text[];
    def text;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('matches', 'low_id'), ('user_matches', 'user_id'), ('blocks', 'user_id'),
                                   ('chat_archive_segments', 'chat_id')) AS v(name, key) LOOP
        old := t.name || '_unpartitioned';
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t.name, old);
        constraints := ARRAY[]::text[][];
        FOR kept IN SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
                    WHERE conrelid = old::regclass AND contype IN ('p', 'u') LOOP
            constraints := constraints || ARRAY[[kept.conname, kept.def]];
        END LOOP;
        SELECT coalesce(array_agg(indexdef), ARRAY[]::text[]) INTO indexes FROM pg_indexes
        WHERE tablename = old AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = old::regclass);

        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY HASH (%I)',
                       t.name, old, t.key);
        FOR i IN 0..31 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 32, REMAINDER %s)',
                           t.name || '_p' || lpad(i::text, 2, '0'), t.name, i);
        END LOOP;
        EXECUTE format('INSERT INTO %I SELECT * FROM %I', t.name, old);
        EXECUTE format('DROP TABLE %I', old);  -- frees the constraint and index names for the new table

        IF constraints <> ARRAY[]::text[][] THEN
            FOREACH item SLICE 1 IN ARRAY constraints LOOP
                EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', t.name, item[1], item[2]);
            END LOOP;
        END IF;
        FOREACH def IN ARRAY indexes LOOP
            EXECUTE regexp_replace(def, ' ON (\S+\.)?' || old || ' USING ', format(' ON %I USING ', t.name));
        END LOOP;
    END LOOP;
END $$;
