-- Back to version 4: clerk-sync's tables and its migration history return to the app's
-- schema with every row, and the guard type goes, so the previous release runs again.
DO $$
DECLARE
    app text := current_schema();
    own_table text;
BEGIN
    EXECUTE format('DROP DOMAIN IF EXISTS %I._sqlx_migrations', app);
    FOREACH own_table IN ARRAY ARRAY['ClerkUserSync', 'OutboxJob', '_sqlx_migrations'] LOOP
        IF to_regclass(format('clerk_sync.%I', own_table)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE clerk_sync.%I SET SCHEMA %I', own_table, app);
        END IF;
    END LOOP;
END
$$;
-- Only when empty: a later version's objects would have been reverted first.
DROP SCHEMA IF EXISTS clerk_sync;
