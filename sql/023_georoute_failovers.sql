-- 023_georoute_failovers: one row per promotion of a replica by a router node's managed
-- failover (router/ha/promoter.py inserts it on the new primary, so it replicates and
-- follows the shard). Until this migration the promoter made the table itself on first use;
-- a cluster where it did already has this very table, hence IF NOT EXISTS (same columns).
-- georoute's own table: never a reference table.
CREATE TABLE IF NOT EXISTS georoute_failovers (
    at          timestamptz NOT NULL DEFAULT now(),
    shard       text NOT NULL,
    old_primary text NOT NULL,
    new_primary text NOT NULL,
    timeline    int,
    promoted_by text NOT NULL,
    reason      text NOT NULL
);
