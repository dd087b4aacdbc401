-- Balances senders hold with this node, per capability (orchestrator side).
CREATE TABLE balances (
    sender      TEXT    NOT NULL,
    capability  TEXT    NOT NULL,
    balance     INTEGER NOT NULL CHECK (balance >= 0),
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
    units         INTEGER NOT NULL DEFAULT 0,
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    state         TEXT    NOT NULL CHECK (state IN ('applied', 'reserved', 'settled', 'released')),
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);

CREATE INDEX entries_spend ON entries (kind, party, capability, model);
CREATE INDEX entries_reserved ON entries (state, created_ms) WHERE state = 'reserved';
