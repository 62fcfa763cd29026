-- 011_georoute_backups: one row per verified base backup `georoute backup` took of this shard,
-- written on the shard's primary (so it replicates, and follows the shard through a failover).
-- Every router node reads the newest one for georoute_backup_last_success_timestamp_seconds
-- (router/ha/shard_checks.py, whose BACKUPS_DDL is this statement: a backup of a shard not yet
-- migrated makes the table itself). georoute's own table: never a reference table.
CREATE TABLE IF NOT EXISTS georoute_backups (
    backup_id   text PRIMARY KEY,
    finished_at timestamptz NOT NULL,
    size_bytes  bigint NOT NULL,
    source      text NOT NULL
);
