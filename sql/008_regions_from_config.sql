-- Regions are the shards router.toml configures (`[shards.<region>]`), not a list in the
-- schema: the CHECKs that named north_america, europe and asia go. Every row that carries a
-- region is already held to this shard's own (the residency triggers of 003 compare it with
-- georoute_region(), the name `georoute db migrate` writes into georoute_shard), so nothing
-- weaker is accepted than before, and a shard of another name can hold its own rows.
ALTER TABLE users DROP CONSTRAINT users_home_region_check;
ALTER TABLE courses DROP CONSTRAINT courses_region_check;
-- The bootstrap (router/tools/db/migrate.py) now checks a shard name's shape, as
-- router/config.py does; shards bootstrapped before it keep the old check until here.
ALTER TABLE georoute_shard DROP CONSTRAINT IF EXISTS georoute_shard_name_check;
ALTER TABLE georoute_shard ADD CONSTRAINT georoute_shard_name_check
    CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$');
