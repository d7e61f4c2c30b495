-- Back to version 1: clerk-sync's own tables go (at version 2–4 they live in the app's
-- schema). Their rows are clerk-sync's bookkeeping, not the app's data; `migrate
-- --revert-to` below 2 says how many rows it drops and asks first.
DROP TABLE IF EXISTS "OutboxJob";
DROP TABLE IF EXISTS "ClerkUserSync";
