-- clerk-sync's own tables leave the app's schema for schema clerk_sync, where a Prisma
-- datasource on the app's schema never sees them. (Its migration history moves too:
-- `clerk-sync migrate` moves it in this same transaction, before this file runs.)
-- ALTER TABLE … SET SCHEMA keeps every row, index and constraint and rewrites nothing:
-- one short lock, inside one transaction. Idempotent: a table already moved is left.
CREATE SCHEMA IF NOT EXISTS clerk_sync;
DO $$
DECLARE
    app text := current_schema();
    own_table text;
BEGIN
    FOREACH own_table IN ARRAY ARRAY['ClerkUserSync', 'OutboxJob'] LOOP
        IF to_regclass(format('%I.%I', app, own_table)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I.%I SET SCHEMA clerk_sync', app, own_table);
        END IF;
    END LOOP;
    -- A release before this one, started against this database, would recreate its
    -- history and empty tables in the app's schema and write there. A type named like
    -- its history table makes that release stop at its first statement instead:
    -- `type "_sqlx_migrations" already exists`. Prisma ignores it.
    IF to_regtype(format('%I._sqlx_migrations', app)) IS NULL THEN
        EXECUTE format('CREATE DOMAIN %I._sqlx_migrations AS text CHECK (false)', app);
        EXECUTE format('COMMENT ON DOMAIN %I._sqlx_migrations IS %L', app,
            'clerk-sync keeps its tables in schema clerk_sync since migration 5; this '
            'stops an older clerk-sync from recreating them here. '
            '`clerk-sync migrate --revert-to 4` removes it.');
    END IF;
END
$$;
