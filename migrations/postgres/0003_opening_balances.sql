-- Users who predate clerk-sync get one `adjustment` row so that, for every user,
-- credits minus debits in the ledger equal "availableGenerations" - "usedGenerations".
-- Existing ledger rows are read, never changed.
INSERT INTO "Transaction" (
    "id", "tracking_id", "userId", "status", "amount", "type", "description",
    "reason", "idempotencyKey", "balanceAfter", "createdAt"
)
SELECT
    'opening_' || x."id", x."clerkId", x."id", 'completed', ABS(x."delta"),
    CASE WHEN x."delta" > 0 THEN 'credit' ELSE 'debit' END,
    'opening balance when clerk-sync adopted this database',
    'adjustment', 'opening:' || x."id", x."balance", CURRENT_TIMESTAMP
FROM (
    SELECT
        u."id", u."clerkId",
        u."availableGenerations" - u."usedGenerations" AS "balance",
        (u."availableGenerations" - u."usedGenerations") - COALESCE((
            SELECT SUM(CASE WHEN t."type" = 'credit' THEN t."amount"
                            WHEN t."type" = 'debit' THEN -t."amount"
                            ELSE 0 END)
            FROM "Transaction" t
            WHERE t."userId" = u."id"
        ), 0) AS "delta"
    FROM "User" u
) x
WHERE x."delta" <> 0;
