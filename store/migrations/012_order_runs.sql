-- The run that recorded each order first (the workflow's first_execution_run_id,
-- the same across continue-as-new). A later run of the same order id (a
-- finished order started again) finds the order recorded by another run and
-- ends at once, changing nothing. NULL: recorded before this column; the next
-- run to record the order claims it, unless the ledger holds a message of the
-- order (an earlier run got that far: the next one is a second run).
ALTER TABLE orders ADD COLUMN first_run_id text;
