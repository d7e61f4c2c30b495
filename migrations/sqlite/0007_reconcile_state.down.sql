-- Back to version 6: the reconcile cursor goes (a scan under way starts over).
DROP TABLE IF EXISTS "ReconcileState";
