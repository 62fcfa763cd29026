-- An idempotency key names one request: the router stores a fingerprint of it with the key
-- (SHA-256 of the kind of request, the shard, and each statement's text and parameters;
-- router/idempotency.py) and refuses the key for any other request. Keys claimed before this
-- migration have none and are replayed as before, until the sweeper forgets them.
ALTER TABLE georoute_idempotency
    ADD COLUMN fingerprint bytea CHECK (fingerprint IS NULL OR length(fingerprint) = 32);
