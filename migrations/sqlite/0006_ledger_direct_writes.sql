-- The app may change "usedGenerations" / "availableGenerations" itself. Every such change
-- of a balance that was not just written to the ledger gets a `direct_write` row, so that
-- the ledger keeps adding up and says what happened.
--
-- A change is accounted for when the row this connection inserted last (last_insert_rowid,
-- as it was when the UPDATE began) is a ledger row of this user with either
-- "balanceAfter" equal to the new balance (every row clerk-sync writes: it writes the row,
-- then the columns) or the change as its signed amount (an app that writes its own row,
-- then changes the columns). One lookup by rowid.
CREATE TRIGGER IF NOT EXISTS "User_credits_ledger"
AFTER UPDATE OF "usedGenerations", "availableGenerations" ON "User"
FOR EACH ROW
WHEN (NEW."availableGenerations" - NEW."usedGenerations")
       <> (OLD."availableGenerations" - OLD."usedGenerations")
 AND NOT EXISTS (
       SELECT 1 FROM "Transaction" t
       WHERE t.rowid = last_insert_rowid() AND t."userId" = NEW."id"
         AND (t."balanceAfter" = NEW."availableGenerations" - NEW."usedGenerations"
              OR CASE t."type" WHEN 'credit' THEN t."amount" WHEN 'debit' THEN -t."amount" END
                 = (NEW."availableGenerations" - NEW."usedGenerations")
                   - (OLD."availableGenerations" - OLD."usedGenerations")))
BEGIN
    INSERT INTO "Transaction" (
        "id", "tracking_id", "userId", "status", "amount", "type", "description",
        "reason", "balanceAfter", "createdAt"
    ) VALUES (
        'direct_' || lower(hex(randomblob(16))), NEW."clerkId", NEW."id", 'completed',
        abs((NEW."availableGenerations" - NEW."usedGenerations")
            - (OLD."availableGenerations" - OLD."usedGenerations")),
        CASE WHEN (NEW."availableGenerations" - NEW."usedGenerations")
                  > (OLD."availableGenerations" - OLD."usedGenerations")
             THEN 'credit' ELSE 'debit' END,
        'direct change of "User" credits by another writer', 'direct_write',
        NEW."availableGenerations" - NEW."usedGenerations",
        strftime('%Y-%m-%d %H:%M:%f', 'now')
    );
END;
