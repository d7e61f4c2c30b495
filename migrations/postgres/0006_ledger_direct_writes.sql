-- The app may change "usedGenerations" / "availableGenerations" itself, as the seed app
-- did (Prisma's `usedGenerations: { increment: 1 }`). Every such change of a balance that
-- the same transaction did not write a ledger row for gets a `direct_write` row, so that
-- the ledger keeps adding up and says what happened.
--
-- clerk-sync's own credit statements mark their transaction (clerk_sync.writer) and the
-- trigger does not run for them. Otherwise a change is accounted for when a ledger row of
-- this user was written earlier in the same transaction (its xmin is this transaction's
-- id) with either "balanceAfter" equal to the new balance or the change as its signed
-- amount (an app that writes its own row, then changes the columns). Rows are looked up by the
-- ("userId", "createdAt") index over the last day only.
--
-- The trigger names no column (neither `UPDATE OF` nor in its WHEN clause), which would
-- keep the app's own migrations from changing these columns' types; an update that leaves the balance
-- as it was returns at once. The function lives in schema clerk_sync; it names the app's
-- "Transaction" table by the schema it is in now, so that its plan is cached and the
-- caller's search_path is moot.
DO $fn$
BEGIN
    EXECUTE format($body$
CREATE OR REPLACE FUNCTION clerk_sync.record_direct_credit_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    balance bigint := NEW."availableGenerations"::bigint - NEW."usedGenerations";
    delta bigint := balance - (OLD."availableGenerations"::bigint - OLD."usedGenerations");
    now_utc timestamp(3) := (now() AT TIME ZONE 'UTC')::timestamp(3);
BEGIN
    IF delta = 0 THEN
        RETURN NULL;
    END IF;
    IF EXISTS (
        SELECT 1 FROM %1$I."Transaction" t
        WHERE t."userId" = NEW."id" AND t."createdAt" >= now_utc - interval '1 day'
          AND t.xmin = xid(pg_current_xact_id())
          AND (t."balanceAfter" = balance
               OR CASE t."type" WHEN 'credit' THEN t."amount" WHEN 'debit' THEN -t."amount" END
                  = delta)
    ) THEN
        RETURN NULL;
    END IF;
    INSERT INTO %1$I."Transaction" (
        "id", "tracking_id", "userId", "status", "amount", "type", "description",
        "reason", "balanceAfter", "createdAt"
    ) VALUES (
        'direct_' || replace(gen_random_uuid()::text, '-', ''), NEW."clerkId", NEW."id",
        'completed', abs(delta), CASE WHEN delta > 0 THEN 'credit' ELSE 'debit' END,
        'direct change of "User" credits by another writer', 'direct_write', balance,
        now_utc
    );
    RETURN NULL;
END
$$
$body$, current_schema());
END
$fn$;
COMMENT ON FUNCTION clerk_sync.record_direct_credit_change() IS
    'clerk-sync: a direct_write ledger row for each change of a balance that its transaction wrote no ledger row for';

-- clerk_sync.writer is set with set_config(..., true): for that transaction only, so it
-- never leaks to the next client of a transaction-mode pooler.
DROP TRIGGER IF EXISTS "User_credits_ledger" ON "User";
CREATE TRIGGER "User_credits_ledger"
AFTER UPDATE ON "User"
FOR EACH ROW
WHEN (current_setting('clerk_sync.writer', true) IS DISTINCT FROM 'on')
EXECUTE FUNCTION clerk_sync.record_direct_credit_change();
