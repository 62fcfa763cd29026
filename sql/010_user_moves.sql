-- 010_user_moves: moving a user and everything that is theirs to another region's shard
-- (README "Moving a user between regions"; carried out by router/engine/usermove.py).
--
-- The move is one transaction over shards (two-phase commit): user_move_out on the user's
-- shard returns their rows and deletes them, user_move_in on the new shard writes them back
-- under ids minted there, rekey_remote_enrollments on every shard keeps each course's record
-- of enrollments held elsewhere (009) true, and the old -> new id of every moved row goes into
-- moved_ids, a reference table (the same rows on every shard). Ids carry their home shard, so
-- a moved row gets a new id; the old one still resolves through moved_ids
-- (resolve_moved_id).
--
-- While a move writes (the transaction-local setting georoute.moving = 'on', set and cleared
-- by these functions), the audit triggers stay silent (the trail moves with the user, and
-- nothing about them is left behind), lesson progress is copied without being recomputed,
-- and an issued invoice may be deleted (it is written again, unchanged, on the new shard).
--
-- SQLSTATEs added: GR015 the user is already in that region; GR016 the user teaches courses
-- (a course stays in the catalogue it was published in).

CREATE TABLE moved_ids (
    old_id   uuid PRIMARY KEY,
    new_id   uuid NOT NULL,
    kind     text NOT NULL CHECK (kind ~ '^[a-z_]+$'),  -- the table the row belongs to
    moved_at timestamptz NOT NULL,  -- given by the mover: the copies must be identical
    CHECK (old_id <> new_id)
);
-- Every id a row had before (resolve_moved_id follows chains back).
CREATE INDEX moved_ids_new_idx ON moved_ids (new_id);

-- Where an id lives now: itself when it never moved, else the end of its chain of moves.
CREATE FUNCTION resolve_moved_id(p_id uuid)
RETURNS uuid LANGUAGE sql STABLE AS $$
    WITH RECURSIVE hops(id, depth) AS (
        SELECT p_id, 0
        UNION ALL
        SELECT m.new_id, h.depth + 1 FROM hops h JOIN moved_ids m ON m.old_id = h.id
         WHERE h.depth < 64
    )
    SELECT id FROM hops ORDER BY depth DESC LIMIT 1
$$;

CREATE FUNCTION georoute_moving() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('georoute.moving', true), '') = 'on'
$$;

CREATE OR REPLACE FUNCTION trg_invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND georoute_moving() THEN
        RETURN OLD;  -- moved with its user, unchanged
    END IF;
    RAISE EXCEPTION 'invoice % is issued and cannot be %d', OLD.invoice_number, lower(TG_OP)
        USING ERRCODE = 'GR011';
END
$$;

CREATE OR REPLACE FUNCTION trg_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_old jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    v_new jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    v_changes jsonb;
BEGIN
    IF georoute_moving() THEN
        RETURN NULL;  -- a move: the trail moves as it is (user_move_out / user_move_in)
    END IF;
    IF TG_OP = 'UPDATE' THEN
        SELECT coalesce(jsonb_object_agg(n.key, jsonb_build_array(v_old -> n.key, n.value)),
                        '{}'::jsonb)
          INTO v_changes
          FROM jsonb_each(v_new) n
         WHERE n.key NOT IN ('updated_at', 'search_vector')
           AND n.value IS DISTINCT FROM v_old -> n.key;
        IF v_changes = '{}'::jsonb THEN
            RETURN NULL;
        END IF;
    ELSE
        v_changes := coalesce(v_new, v_old) - 'search_vector';
    END IF;
    PERFORM record_audit(TG_TABLE_NAME || '.' || lower(TG_OP), TG_TABLE_NAME,
                         (coalesce(v_new, v_old) ->> TG_ARGV[0])::uuid, v_changes);
    RETURN NULL;
END
$$;

-- Lesson progress moves as it is: its rows were checked when written, and the enrollment's
-- progress and status come along (recomputing them row by row would reopen and re-complete
-- a completed enrollment, changing its completed_at).
DROP TRIGGER lesson_progress_check ON lesson_progress;
CREATE TRIGGER lesson_progress_check BEFORE INSERT OR UPDATE OF enrollment_id, lesson_id
    ON lesson_progress FOR EACH ROW WHEN (NOT georoute_moving())
    EXECUTE FUNCTION trg_lesson_progress_check();
DROP TRIGGER lesson_progress_recalc ON lesson_progress;
CREATE TRIGGER lesson_progress_recalc AFTER INSERT OR UPDATE OR DELETE ON lesson_progress
    FOR EACH ROW WHEN (NOT georoute_moving()) EXECUTE FUNCTION trg_lesson_progress_recalc();

-- The user's rows on this shard, as one JSON document, deleted as they are read. Refuses a
-- user who is not here (P0002), already lives in p_to_region (GR015), or teaches (GR016).
-- Enrollments in this shard's courses leave with those courses' terms (they become remote
-- enrollments, 009); `seats` says what each course's shard must record of each enrollment.
CREATE FUNCTION user_move_out(p_user_id uuid, p_to_region text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_user users%ROWTYPE;
    v_out jsonb;
    v_enrollments uuid[];
    v_payments uuid[];
    v_ids uuid[];
BEGIN
    SELECT * INTO v_user FROM users WHERE user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist on this shard', p_user_id USING ERRCODE = 'P0002';
    ELSIF p_to_region = georoute_region() THEN
        RAISE EXCEPTION 'user % already lives in %', p_user_id, p_to_region
            USING ERRCODE = 'GR015';
    ELSIF EXISTS (SELECT 1 FROM courses WHERE instructor_id = p_user_id) THEN
        RAISE EXCEPTION 'user % teaches courses, which stay in the % catalogue: a user with '
                        'courses does not move', p_user_id, georoute_region()
            USING ERRCODE = 'GR016';
    END IF;
    PERFORM set_config('georoute.moving', 'on', true);
    SELECT coalesce(array_agg(enrollment_id), '{}') INTO v_enrollments
      FROM enrollments WHERE user_id = p_user_id;
    SELECT coalesce(array_agg(payment_id), '{}') INTO v_payments
      FROM payments WHERE enrollment_id = ANY (v_enrollments);
    SELECT jsonb_build_object(
        'user', to_jsonb(v_user),
        'user_credentials', (SELECT coalesce(jsonb_agg(to_jsonb(c)), '[]')
                               FROM user_credentials c WHERE c.user_id = p_user_id),
        'user_sessions', (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]')
                            FROM user_sessions s WHERE s.user_id = p_user_id),
        'enrollments', (SELECT coalesce(jsonb_agg(
                            to_jsonb(e) || CASE WHEN georoute_is_local(e.course_id) THEN
                                jsonb_build_object(
                                    'course_price_cents', c.price_cents,
                                    'course_currency', c.currency,
                                    'course_lesson_ids', to_jsonb(enrollment_lesson_ids(
                                        e.enrollment_id)))
                            ELSE '{}'::jsonb END), '[]')
                          FROM enrollments e LEFT JOIN courses c ON c.course_id = e.course_id
                         WHERE e.user_id = p_user_id),
        'lesson_progress', (SELECT coalesce(jsonb_agg(to_jsonb(lp)), '[]')
                              FROM lesson_progress lp
                             WHERE lp.enrollment_id = ANY (v_enrollments)),
        'payments', (SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]')
                       FROM payments p WHERE p.payment_id = ANY (v_payments)),
        'invoices', (SELECT coalesce(jsonb_agg(to_jsonb(i)), '[]')
                       FROM invoices i WHERE i.payment_id = ANY (v_payments)),
        'reviews', (SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]')
                      FROM reviews r WHERE r.user_id = p_user_id),
        'certificates', (SELECT coalesce(jsonb_agg(to_jsonb(k)), '[]')
                           FROM certificates k WHERE k.enrollment_id = ANY (v_enrollments)),
        'seats', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'course_id', e.course_id, 'old_enrollment_id', e.enrollment_id,
                      'seat_held', e.status <> 'cancelled',
                      'rating', (SELECT r.rating FROM reviews r
                                  WHERE r.user_id = e.user_id AND r.course_id = e.course_id),
                      'coupon_id', (SELECT p.coupon_id FROM payments p
                                     WHERE p.enrollment_id = e.enrollment_id
                                       AND p.coupon_id IS NOT NULL
                                       AND p.status IN ('pending', 'succeeded')
                                     ORDER BY p.created_at DESC LIMIT 1))), '[]')
                    FROM enrollments e WHERE e.user_id = p_user_id))
      INTO v_out;
    v_ids := ARRAY[p_user_id] || v_enrollments || v_payments
          || ARRAY(SELECT session_id FROM user_sessions WHERE user_id = p_user_id)
          || ARRAY(SELECT progress_id FROM lesson_progress WHERE enrollment_id = ANY (v_enrollments))
          || ARRAY(SELECT invoice_id FROM invoices WHERE payment_id = ANY (v_payments))
          || ARRAY(SELECT review_id FROM reviews WHERE user_id = p_user_id)
          || ARRAY(SELECT certificate_id FROM certificates
                    WHERE enrollment_id = ANY (v_enrollments));
    v_out := v_out || jsonb_build_object(
        'audit_log', (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.occurred_at), '[]')
                        FROM audit_log a
                       WHERE a.actor_id = p_user_id OR a.entity_id = ANY (v_ids)),
        'from_region', georoute_region());
    DELETE FROM audit_log WHERE actor_id = p_user_id OR entity_id = ANY (v_ids);
    DELETE FROM certificates WHERE enrollment_id = ANY (v_enrollments);
    DELETE FROM invoices WHERE payment_id = ANY (v_payments);
    DELETE FROM payments WHERE payment_id = ANY (v_payments);
    DELETE FROM reviews WHERE user_id = p_user_id;
    DELETE FROM lesson_progress WHERE enrollment_id = ANY (v_enrollments);
    DELETE FROM enrollments WHERE user_id = p_user_id;
    DELETE FROM user_sessions WHERE user_id = p_user_id;
    DELETE FROM user_credentials WHERE user_id = p_user_id;
    DELETE FROM users WHERE user_id = p_user_id;
    PERFORM set_config('georoute.moving', '', true);
    RETURN v_out;
END
$$;

-- Write a user_move_out document on this shard (p_region: its name) under new ids. Returns
-- {"user_id": new id, "moved": [{old_id, new_id, kind}], "seats": [...]}, `seats` with each
-- enrollment's new id (NULL when its course is on this shard: the enrollment is local now).
CREATE FUNCTION user_move_in(p_region text, p_data jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_map jsonb := '{}'::jsonb;  -- old id -> new id
    v_moved jsonb := '[]'::jsonb;
    v_kind text;
    v_key text;
    v_row jsonb;
    v_user_id uuid;
    v_seats jsonb;
BEGIN
    IF p_region IS DISTINCT FROM georoute_region() THEN
        RAISE EXCEPTION 'this is shard %, not %', georoute_region(), p_region
            USING ERRCODE = 'GR003';
    END IF;
    PERFORM set_config('georoute.moving', 'on', true);
    -- Every moved row gets an id minted here.
    FOR v_kind, v_key IN VALUES ('user_sessions', 'session_id'), ('enrollments', 'enrollment_id'),
            ('lesson_progress', 'progress_id'), ('payments', 'payment_id'),
            ('invoices', 'invoice_id'), ('reviews', 'review_id'),
            ('certificates', 'certificate_id'), ('audit_log', 'audit_id') LOOP
        FOR v_row IN SELECT jsonb_array_elements(p_data -> v_kind) LOOP
            v_map := v_map || jsonb_build_object(v_row ->> v_key, georoute_id());
            IF v_kind <> 'audit_log' THEN
                v_moved := v_moved || jsonb_build_object('old_id', v_row ->> v_key,
                    'new_id', v_map ->> (v_row ->> v_key), 'kind', v_kind);
            END IF;
        END LOOP;
    END LOOP;
    v_user_id := georoute_id();
    v_map := v_map || jsonb_build_object(p_data -> 'user' ->> 'user_id', v_user_id);
    v_moved := v_moved || jsonb_build_object('old_id', p_data -> 'user' ->> 'user_id',
                                             'new_id', v_user_id, 'kind', 'users');
    INSERT INTO users SELECT (jsonb_populate_record(NULL::users, p_data -> 'user'
        || jsonb_build_object('user_id', v_user_id, 'home_region', p_region))).*;
    INSERT INTO user_credentials
    SELECT (jsonb_populate_record(NULL::user_credentials,
                                  r || jsonb_build_object('user_id', v_user_id))).*
      FROM jsonb_array_elements(p_data -> 'user_credentials') r;
    INSERT INTO user_sessions
    SELECT (jsonb_populate_record(NULL::user_sessions, r || jsonb_build_object(
                'session_id', v_map -> (r ->> 'session_id'), 'user_id', v_user_id,
                'family_id', coalesce(v_map -> (r ->> 'family_id'), r -> 'family_id')))).*
      FROM jsonb_array_elements(p_data -> 'user_sessions') r;
    -- An enrollment whose course is on this shard is local now: it keeps no copy of its terms.
    INSERT INTO enrollments
    SELECT (jsonb_populate_record(NULL::enrollments, r || jsonb_build_object(
                'enrollment_id', v_map -> (r ->> 'enrollment_id'), 'user_id', v_user_id)
                || CASE WHEN georoute_is_local((r ->> 'course_id')::uuid) THEN
                       jsonb_build_object('course_price_cents', NULL, 'course_currency', NULL,
                                          'course_lesson_ids', NULL)
                   ELSE '{}'::jsonb END)).*
      FROM jsonb_array_elements(p_data -> 'enrollments') r;
    INSERT INTO lesson_progress
    SELECT (jsonb_populate_record(NULL::lesson_progress, r || jsonb_build_object(
                'progress_id', v_map -> (r ->> 'progress_id'),
                'enrollment_id', v_map -> (r ->> 'enrollment_id')))).*
      FROM jsonb_array_elements(p_data -> 'lesson_progress') r;
    INSERT INTO payments
    SELECT (jsonb_populate_record(NULL::payments, r || jsonb_build_object(
                'payment_id', v_map -> (r ->> 'payment_id'),
                'enrollment_id', v_map -> (r ->> 'enrollment_id')))).*
      FROM jsonb_array_elements(p_data -> 'payments') r;
    INSERT INTO invoices
    SELECT (jsonb_populate_record(NULL::invoices, r || jsonb_build_object(
                'invoice_id', v_map -> (r ->> 'invoice_id'),
                'payment_id', v_map -> (r ->> 'payment_id')))).*
      FROM jsonb_array_elements(p_data -> 'invoices') r;
    INSERT INTO reviews
    SELECT (jsonb_populate_record(NULL::reviews, r || jsonb_build_object(
                'review_id', v_map -> (r ->> 'review_id'), 'user_id', v_user_id))).*
      FROM jsonb_array_elements(p_data -> 'reviews') r;
    INSERT INTO certificates
    SELECT (jsonb_populate_record(NULL::certificates, r || jsonb_build_object(
                'certificate_id', v_map -> (r ->> 'certificate_id'),
                'enrollment_id', v_map -> (r ->> 'enrollment_id')))).*
      FROM jsonb_array_elements(p_data -> 'certificates') r;
    INSERT INTO audit_log
    SELECT (jsonb_populate_record(NULL::audit_log, r || jsonb_build_object(
                'audit_id', v_map -> (r ->> 'audit_id'), 'region', p_region,
                'actor_id', coalesce(v_map -> (r ->> 'actor_id'), r -> 'actor_id'),
                'entity_id', coalesce(v_map -> (r ->> 'entity_id'), r -> 'entity_id')))).*
      FROM jsonb_array_elements(p_data -> 'audit_log') r;
    PERFORM set_config('georoute.moving', '', true);
    PERFORM record_audit('user.moved_in', 'users', v_user_id,
                         jsonb_build_object('from_region', p_data ->> 'from_region',
                                            'old_user_id', p_data -> 'user' ->> 'user_id'),
                         v_user_id);
    SELECT coalesce(jsonb_agg(s || jsonb_build_object(
               'new_enrollment_id', CASE WHEN georoute_is_local((s ->> 'course_id')::uuid)
                                         THEN NULL
                                         ELSE v_map -> (s ->> 'old_enrollment_id') END)), '[]')
      INTO v_seats FROM jsonb_array_elements(p_data -> 'seats') s;
    RETURN jsonb_build_object('user_id', v_user_id, 'moved', v_moved, 'seats', v_seats);
END
$$;

-- On a course's shard (p_region: its name), what it records of enrollments held elsewhere
-- after a move (`seats` of user_move_in): each enrollment of one of its courses is recorded
-- under its new id, or no more when it became local to this shard. Other courses are left
-- to their own shards. Returns how many enrollments of this shard's courses it saw.
CREATE FUNCTION rekey_remote_enrollments(p_region text, p_seats jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_seat record;
    v_seen integer := 0;
BEGIN
    IF p_region IS DISTINCT FROM georoute_region() THEN
        RAISE EXCEPTION 'this is shard %, not %', georoute_region(), p_region
            USING ERRCODE = 'GR003';
    END IF;
    FOR v_seat IN SELECT * FROM jsonb_to_recordset(p_seats) AS s(
            course_id uuid, old_enrollment_id uuid, new_enrollment_id uuid, seat_held boolean,
            rating smallint, coupon_id uuid) LOOP
        CONTINUE WHEN NOT georoute_is_local(v_seat.course_id);
        v_seen := v_seen + 1;
        DELETE FROM remote_enrollments WHERE enrollment_id = v_seat.old_enrollment_id;
        IF v_seat.new_enrollment_id IS NOT NULL THEN
            INSERT INTO remote_enrollments (enrollment_id, course_id, seat_held, rating,
                                            coupon_id)
            VALUES (v_seat.new_enrollment_id, v_seat.course_id, v_seat.seat_held,
                    v_seat.rating, v_seat.coupon_id);
        END IF;
    END LOOP;
    RETURN v_seen;
END
$$;
