-- The decisions of two-phase commits (router/engine/twophase.py, README "Transactions over
-- several shards"). A transaction that wrote on several shards inserts ('commit') here inside
-- its own branch on one of them, its coordinator, and commits that branch: that commit is the
-- decision. Its other branches are prepared as 'georoute:<gtid>:<coordinator>:<shard>', so a
-- router that finds one in pg_prepared_xacts knows where to read its fate. A recovering
-- router records 'abort' for a prepared branch without a decision (after a grace period)
-- with ON CONFLICT DO NOTHING: whichever insert commits first decides, and the other gives
-- way. Rows are deleted once no branch of theirs is left prepared on any shard.
CREATE TABLE georoute_tx_decisions (
    gtid         text PRIMARY KEY CHECK (gtid ~ '^[0-9a-f]{32}$'),
    decision     text NOT NULL CHECK (decision IN ('commit', 'abort')),
    participants text[] NOT NULL,  -- the shards whose branches were prepared
    router       text NOT NULL,    -- the router node that wrote the row
    -- clock_timestamp(): when the row was written, not when its transaction began.
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
