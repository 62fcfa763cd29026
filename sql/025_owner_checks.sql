-- 025_owner_checks: completing a lesson and issuing a certificate check who asks in the same
-- statement, so the REST API's common case is one round trip to the router, not a read of
-- the enrollment (is it theirs?) then the write.
--
-- complete_lesson gains an overload with two more arguments: the user who asks and whether
-- they are an admin. It answers a row rather than raising for what the caller handles
-- itself:
--   outcome 'not_found'       the enrollment does not exist, or it is another user's and the
--                             caller is no admin (reported as missing: nothing is written);
--   outcome 'lessons_needed'  a remote enrollment (its course on another shard) called
--                             without the course's current lesson ids: read them on the
--                             course's shard (course_id says which) and call again with them;
--   outcome 'done'            the lesson is completed (complete_lesson's own checks and
--                             errors, unchanged), progress_pct the enrollment's new progress.
-- The four-argument complete_lesson stays as it is. Both route by their first argument
-- (router.sharded_functions: "complete_lesson(1)").
CREATE FUNCTION complete_lesson(p_enrollment_id uuid, p_lesson_id uuid,
                                p_seconds_spent integer, p_course_lesson_ids uuid[],
                                p_user_id uuid, p_is_admin boolean)
RETURNS TABLE (outcome text, course_id uuid, progress_pct numeric)
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id uuid;
    v_course_id uuid;
    v_remote boolean;
BEGIN
    SELECT e.user_id, e.course_id, e.course_lesson_ids IS NOT NULL
      INTO v_user_id, v_course_id, v_remote
      FROM enrollments e WHERE e.enrollment_id = p_enrollment_id;
    IF NOT FOUND OR (v_user_id IS DISTINCT FROM p_user_id AND NOT coalesce(p_is_admin, false))
    THEN
        outcome := 'not_found';
    ELSIF v_remote AND p_course_lesson_ids IS NULL THEN
        outcome := 'lessons_needed';
        course_id := v_course_id;
    ELSE
        outcome := 'done';
        course_id := v_course_id;
        progress_pct := complete_lesson(p_enrollment_id, p_lesson_id, p_seconds_spent,
                                        p_course_lesson_ids);
    END IF;
    RETURN NEXT;
END
$$;

-- issue_certificate gains the same two arguments: it answers the certificate's row (issued
-- now or before), or no row when the enrollment does not exist or is another user's and the
-- caller is no admin (nothing is written). The one-argument issue_certificate stays as it is.
CREATE FUNCTION issue_certificate(p_enrollment_id uuid, p_user_id uuid, p_is_admin boolean)
RETURNS TABLE (certificate_id uuid, enrollment_id uuid, serial_number text,
               issued_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id uuid;
    v_certificate_id uuid;
BEGIN
    SELECT e.user_id INTO v_user_id FROM enrollments e WHERE e.enrollment_id = p_enrollment_id;
    IF NOT FOUND OR (v_user_id IS DISTINCT FROM p_user_id AND NOT coalesce(p_is_admin, false))
    THEN
        RETURN;
    END IF;
    v_certificate_id := issue_certificate(p_enrollment_id);
    RETURN QUERY SELECT c.certificate_id, c.enrollment_id, c.serial_number, c.issued_at
                   FROM certificates c WHERE c.certificate_id = v_certificate_id;
END
$$;
