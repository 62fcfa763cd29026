-- 021_course_statistics_remote: course_statistics() counts the enrollments held on other
-- shards (sql/009), and says which figures it cannot know.
--
-- course_statistics runs on the course's shard. A remote student's enrollment, its progress
-- and its payments live on the student's home shard; the course's shard holds only its seat
-- (remote_enrollments: held, or given back when it was cancelled or refunded). So:
--   * enrollments and cancellations are exact: local enrollments plus remote seats held /
--     given back (enrollments equals the course's enrollment_count);
--   * active, completions, completion_rate, avg_progress, gross_cents and refunded_cents
--     depend on rows of other shards: for a course with any remote enrollment they are NULL
--     (unknown here), never this shard's part passed off as the whole;
--   * remote_enrollments (new) says how many of the course's enrollments, cancelled or not,
--     are held on other shards: 0 means every figure is exact.
-- rating_avg and review_count were already exact (they count remote ratings).

DROP FUNCTION course_statistics(uuid);
CREATE FUNCTION course_statistics(p_course_id uuid)
RETURNS TABLE (course_id uuid, title text, enrollments bigint, active bigint,
               completions bigint, cancellations bigint, completion_rate numeric,
               avg_progress numeric, rating_avg numeric, review_count integer,
               gross_cents bigint, refunded_cents bigint, remote_enrollments bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM courses c WHERE c.course_id = p_course_id) THEN
        RAISE EXCEPTION 'course % does not exist', p_course_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
    WITH e AS (
        SELECT count(*) FILTER (WHERE e.status <> 'cancelled') AS enrolled,
               count(*) FILTER (WHERE e.status = 'active') AS active,
               count(*) FILTER (WHERE e.status = 'completed') AS completed,
               count(*) FILTER (WHERE e.status = 'cancelled') AS cancelled,
               avg(e.progress_pct) FILTER (WHERE e.status <> 'cancelled') AS avg_progress
          FROM enrollments e WHERE e.course_id = p_course_id
    ), r AS (
        SELECT count(*) AS remote,
               count(*) FILTER (WHERE r.seat_held) AS held,
               count(*) FILTER (WHERE NOT r.seat_held) AS released
          FROM remote_enrollments r WHERE r.course_id = p_course_id
    ), p AS (
        SELECT coalesce(sum(p.amount_cents) FILTER (WHERE p.status IN ('succeeded', 'refunded')),
                        0)::bigint AS gross,
               coalesce(sum(p.amount_cents) FILTER (WHERE p.status = 'refunded'), 0)::bigint
                   AS refunded
          FROM payments p JOIN enrollments e USING (enrollment_id)
         WHERE e.course_id = p_course_id
    )
    SELECT c.course_id, c.title, e.enrolled + r.held,
           CASE WHEN r.remote = 0 THEN e.active END,
           CASE WHEN r.remote = 0 THEN e.completed END,
           e.cancelled + r.released,
           CASE WHEN r.remote > 0 THEN NULL
                WHEN e.enrolled = 0 THEN 0
                ELSE round(e.completed::numeric / e.enrolled, 4) END,
           CASE WHEN r.remote = 0 THEN round(coalesce(e.avg_progress, 0), 2) END,
           c.rating_avg, c.review_count,
           CASE WHEN r.remote = 0 THEN p.gross END,
           CASE WHEN r.remote = 0 THEN p.refunded END,
           r.remote
      FROM courses c, e, r, p
     WHERE c.course_id = p_course_id;
END
$$;
