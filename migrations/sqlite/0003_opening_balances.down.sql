-- Version 3 only wrote ledger rows. They stay: they are part of the ledger that the app
-- and every earlier release read, and removing them would make it stop adding up.
SELECT 1;
