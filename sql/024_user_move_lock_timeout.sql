-- 024_user_move_lock_timeout: the user move's writes on other shards than the user's wait on a
-- row lock for 2 s at most.
--
-- A move (router/engine/usermove.py) holds the user's rows on their shard (user_move_out)
-- while rekey_remote_enrollments updates their courses' shards and user_move_in writes on the
-- new one. An enrollment of the same user at the same moment holds its course's row
-- (remote_course_terms, FOR UPDATE) while it writes on the user's shard. Should the two meet,
-- each waits on the other on a different shard: a deadlock no PostgreSQL can see, which once
-- lasted until router.statement_timeout_seconds ended one of them. With these settings the
-- move gives up after 2 s (SQLSTATE 55P03, answered as a retryable "nothing was moved; run it
-- again"), its branches roll back, and the enrollment goes on. user_move_out keeps waiting as
-- long as it takes: it is the move's first write, so while it waits the move holds nothing
-- another transaction could be waiting on, and a second move of the same user must wait
-- there for the first to finish.
ALTER FUNCTION rekey_remote_enrollments(text, jsonb) SET lock_timeout = '2s';
ALTER FUNCTION user_move_in(text, jsonb) SET lock_timeout = '2s';
