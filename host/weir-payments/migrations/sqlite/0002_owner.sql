-- Which process made a reservation, so a restart releases only what it left open (another
-- process sharing the ledger may still be running its jobs). Rows from before are nobody's:
-- the first process to start releases them.
ALTER TABLE entries ADD COLUMN owner TEXT NOT NULL DEFAULT '';
