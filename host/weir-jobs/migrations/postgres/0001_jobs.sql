-- Async generation jobs, their webhook deliveries and delivery attempts (PostgreSQL).
CREATE TABLE jobs (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    tenant           TEXT    NOT NULL,
    model            TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    webhook_url      TEXT,
    priority         BIGINT NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    timeout_ms       BIGINT NOT NULL,
    run_after        BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    progress         BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    result           TEXT,
    error            TEXT,
    charge           BIGINT,
    gpu_ms           BIGINT,
    output_units     BIGINT,
    orchestrator     TEXT,
    expires_at       BIGINT,
    idem_key         TEXT,
    idem_hash        TEXT,
    UNIQUE (tenant, idem_key)
);
CREATE INDEX jobs_queued ON jobs (state, priority DESC, seq);
CREATE INDEX jobs_tenant ON jobs (tenant, seq);
CREATE INDEX jobs_lease ON jobs (state, lease_until);

CREATE TABLE webhook_deliveries (
    id          TEXT    PRIMARY KEY,
    job_id      TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    lease_until BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_at);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);

CREATE TABLE webhook_attempts (
    delivery_id TEXT    NOT NULL,
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status      BIGINT,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
