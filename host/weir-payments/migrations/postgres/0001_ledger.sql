-- The ledger on PostgreSQL: the same tables as on SQLite, with 64-bit integers. The node
-- creates them in a schema of the role's own (its connections' search_path), so a gateway
-- and an orchestrator can share one database without sharing a ledger.

-- Balances per (party, capability): what a sender holds here (orchestrator side), or what
-- this gateway holds with an orchestrator (gateway side).
CREATE TABLE balances (
    sender      TEXT    NOT NULL,
    capability  TEXT    NOT NULL,
    balance     BIGINT  NOT NULL CHECK (balance >= 0),
    PRIMARY KEY (sender, capability)
);

-- Every movement, keyed by a caller-chosen id so retries never apply twice.
-- kind: credit | reservation | spend.  state (reservations): reserved | settled | released.
CREATE TABLE entries (
    id            TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL CHECK (kind IN ('credit', 'reservation', 'spend')),
    party         TEXT    NOT NULL,
    capability    TEXT    NOT NULL,
    model         TEXT    NOT NULL DEFAULT '',
    units         BIGINT  NOT NULL DEFAULT 0,
    amount        BIGINT  NOT NULL CHECK (amount >= 0),
    state         TEXT    NOT NULL CHECK (state IN ('applied', 'reserved', 'settled', 'released')),
    created_ms    BIGINT  NOT NULL,
    updated_ms    BIGINT  NOT NULL,
    -- Which process made a reservation: a restart releases only what it left open.
    owner         TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX entries_spend ON entries (kind, party, capability, model);
CREATE INDEX entries_reserved ON entries (state, created_ms) WHERE state = 'reserved';
