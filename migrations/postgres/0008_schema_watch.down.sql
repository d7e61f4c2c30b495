-- Back to version 7: the time the schema was last whole goes.
DROP TABLE IF EXISTS clerk_sync."SchemaWatch";
