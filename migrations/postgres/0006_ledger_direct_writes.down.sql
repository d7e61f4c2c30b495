-- Back to version 5: direct changes of a balance are no longer recorded. The
-- direct_write rows written so far stay in the ledger.
DROP TRIGGER IF EXISTS "User_credits_ledger" ON "User";
DROP FUNCTION IF EXISTS clerk_sync.record_direct_credit_change();
