-- Exactly-once writes for requests that carry an idempotency key (router/executor.py).
-- The router inserts the key in the same transaction as the write; a retry with the same
-- key finds it and gets the stored reply instead of applying the write again. A concurrent
-- duplicate waits on the key's row lock until the first attempt commits or rolls back.
CREATE TABLE georoute_idempotency (
    idem_key    text PRIMARY KEY CHECK (length(idem_key) BETWEEN 1 AND 200),
    status      text,
    reply       bytea,          -- columns and rows, MessagePack with the protocol's ext types
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Expiry sweeps (rows older than the retry horizon) scan by age.
CREATE INDEX georoute_idempotency_created_at_idx ON georoute_idempotency (created_at);
