-- 009_remote_enrollments: a student enrolls in a course of another region's catalogue.
--
-- The enrollment and everything that hangs from it (payments, invoices, lesson progress,
-- reviews, the certificate) stay on the student's home shard, beside their user; the course,
-- its capacity and its enrollment count stay on the course's shard. A foreign key cannot
-- reach another shard, so for such a *remote* enrollment:
--   * the student's shard keeps the course's terms on the enrollment (price and currency,
--     taken when enrolling; the course's lesson ids, refreshed at each completed lesson):
--     progress, payment and certificate then work from them as from a local course;
--   * the course's shard keeps a row in remote_enrollments (the enrollment's id, its seat,
--     its review's rating, the coupon its payment redeemed, never the student's id or any
--     personal data): enrollment_count and rating_avg count them with the local ones;
--   * both are written in one transaction over the two shards (two-phase commit, README
--     "Enrolling across regions"): remote_course_terms and hold_remote_seat on the course's
--     shard, enroll_remote on the student's.
-- The foreign keys from enrollments to courses, lesson_progress to lessons and payments to
-- coupons are replaced by the checks below: a referenced id minted on this shard must name a
-- row here (locked FOR KEY SHARE, as the foreign key did), and one minted on another shard
-- must be a georoute id, on an enrollment that carries its course's terms. Deleting a course
-- with enrollments, or a coupon with payments, is refused as ON DELETE RESTRICT did; deleting
-- a lesson deletes its progress rows here, as ON DELETE CASCADE did.
--
-- SQLSTATEs added: GR014 a remote enrollment's seat is held on the course's shard (cancel or
-- refund it together with release_remote_seat there).

ALTER TABLE enrollments DROP CONSTRAINT enrollments_course_id_fkey;
ALTER TABLE lesson_progress DROP CONSTRAINT lesson_progress_lesson_id_fkey;
ALTER TABLE payments DROP CONSTRAINT payments_coupon_id_fkey;

-- A remote enrollment's copy of its course's terms; NULL, all three, for a local one.
ALTER TABLE enrollments
    ADD COLUMN course_price_cents integer CHECK (course_price_cents >= 0),
    ADD COLUMN course_currency char(3) CHECK (course_currency ~ '^[A-Z]{3}$'),
    ADD COLUMN course_lesson_ids uuid[],
    ADD CONSTRAINT enrollments_course_terms_check CHECK (
        (course_price_cents IS NULL) = (course_currency IS NULL)
        AND (course_price_cents IS NULL) = (course_lesson_ids IS NULL));

-- Whether an id was minted on this shard.
CREATE FUNCTION georoute_is_local(p_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT georoute_shard_of(p_id) IS NOT DISTINCT FROM (SELECT number FROM georoute_shard)
$$;

-- ---- the course's shard: enrollments held on other shards ---------------------------------

CREATE TABLE remote_enrollments (
    enrollment_id uuid PRIMARY KEY,   -- the enrollment, on its student's home shard
    course_id     uuid NOT NULL REFERENCES courses (course_id) ON DELETE RESTRICT,
    seat_held     boolean NOT NULL DEFAULT true,   -- false once cancelled
    rating        smallint CHECK (rating BETWEEN 1 AND 5),   -- its review's, if any
    coupon_id     uuid REFERENCES coupons (coupon_id) ON DELETE RESTRICT,  -- redeemed by it
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (georoute_shard_of(enrollment_id) IS NOT NULL)
);
-- enrollment_count, rating and coupon redemptions by course; FK to courses.
CREATE INDEX remote_enrollments_course_idx ON remote_enrollments (course_id);
-- apply_coupon: redemptions of a coupon; FK to coupons.
CREATE INDEX remote_enrollments_coupon_idx ON remote_enrollments (coupon_id)
    WHERE coupon_id IS NOT NULL;
CREATE TRIGGER remote_enrollments_updated_at BEFORE UPDATE ON remote_enrollments
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();

-- A course's rating from its reviews here and the ratings of its remote enrollments.
CREATE FUNCTION refresh_course_rating(p_course_id uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE courses c
       SET review_count = s.n, rating_avg = s.avg_rating
      FROM (SELECT count(*)::integer AS n, round(avg(r.rating), 2) AS avg_rating
              FROM (SELECT rating FROM reviews WHERE course_id = p_course_id
                    UNION ALL
                    SELECT rating FROM remote_enrollments
                     WHERE course_id = p_course_id AND rating IS NOT NULL) r) s
     WHERE c.course_id = p_course_id;
END
$$;

CREATE OR REPLACE FUNCTION trg_review_rating() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_course_id uuid;
BEGIN
    FOREACH v_course_id IN ARRAY ARRAY[
        CASE WHEN TG_OP <> 'INSERT' THEN OLD.course_id END,
        CASE WHEN TG_OP <> 'DELETE' THEN NEW.course_id END]
    LOOP
        CONTINUE WHEN v_course_id IS NULL;
        -- A review of a remote enrollment finds no course here: its rating is kept on the
        -- course's shard (set_remote_rating).
        PERFORM refresh_course_rating(v_course_id);
        EXIT WHEN TG_OP = 'UPDATE' AND OLD.course_id = NEW.course_id;
    END LOOP;
    RETURN NULL;
END
$$;

-- enrollment_count counts held seats too; rating_avg counts remote ratings.
CREATE FUNCTION trg_remote_enrollment_aggregates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_old integer := CASE WHEN TG_OP <> 'INSERT' AND OLD.seat_held THEN 1 ELSE 0 END;
    v_new integer := CASE WHEN TG_OP <> 'DELETE' AND NEW.seat_held THEN 1 ELSE 0 END;
    v_course_id uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.course_id ELSE NEW.course_id END;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.course_id <> NEW.course_id THEN
        RAISE EXCEPTION 'a remote enrollment does not change course' USING ERRCODE = 'GR011';
    END IF;
    IF v_new <> v_old THEN
        UPDATE courses SET enrollment_count = enrollment_count + v_new - v_old
         WHERE course_id = v_course_id;
    END IF;
    IF (CASE WHEN TG_OP <> 'INSERT' THEN OLD.rating END)
       IS DISTINCT FROM (CASE WHEN TG_OP <> 'DELETE' THEN NEW.rating END) THEN
        PERFORM refresh_course_rating(v_course_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER remote_enrollments_aggregates
    AFTER INSERT OR DELETE OR UPDATE OF seat_held, rating, course_id ON remote_enrollments
    FOR EACH ROW EXECUTE FUNCTION trg_remote_enrollment_aggregates();

-- The terms a student of another shard enrolls under, with the course row locked (FOR
-- UPDATE, as enroll() locks it) until the transaction ends: enrollments into it from every
-- region queue here. Refuses a course that is missing (P0002), not published (GR002), full
-- (GR001), the course's own instructor (GR011), or a student of this shard (GR003: enroll()).
CREATE FUNCTION remote_course_terms(p_course_id uuid, p_user_id uuid)
RETURNS TABLE (course_id uuid, price_cents integer, currency char(3), lesson_ids uuid[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_course courses%ROWTYPE;
BEGIN
    IF georoute_is_local(p_user_id) OR georoute_shard_of(p_user_id) IS NULL THEN
        RAISE EXCEPTION 'user % is not a student of another shard: enroll() enrolls this '
                        'shard''s own students', p_user_id USING ERRCODE = 'GR003';
    END IF;
    SELECT * INTO v_course FROM courses c WHERE c.course_id = p_course_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist on this shard', p_course_id
            USING ERRCODE = 'P0002';
    ELSIF v_course.status <> 'published' THEN
        RAISE EXCEPTION 'course % is % and not open for enrollment', p_course_id, v_course.status
            USING ERRCODE = 'GR002';
    ELSIF v_course.instructor_id = p_user_id THEN
        RAISE EXCEPTION 'instructor % cannot enroll in their own course', p_user_id
            USING ERRCODE = 'GR011';
    ELSIF v_course.capacity IS NOT NULL AND v_course.enrollment_count >= v_course.capacity THEN
        RAISE EXCEPTION 'course % is full (capacity %)', p_course_id, v_course.capacity
            USING ERRCODE = 'GR001';
    END IF;
    RETURN QUERY
    SELECT v_course.course_id, v_course.price_cents, v_course.currency,
           coalesce((SELECT array_agg(l.lesson_id ORDER BY m.position, l.position)
                       FROM lessons l JOIN course_modules m USING (module_id)
                      WHERE m.course_id = p_course_id), '{}'::uuid[]);
END
$$;

-- Take a seat of the course for an enrollment held on another shard (or take it again after
-- a cancellation). The course row is locked and its capacity checked as enroll() does, so
-- local and remote enrollments together never exceed it (GR001). Returns the enrollment
-- count after. Holding a seat already held changes nothing.
CREATE FUNCTION hold_remote_seat(p_course_id uuid, p_enrollment_id uuid)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_course courses%ROWTYPE;
    v_held boolean;
BEGIN
    IF georoute_is_local(p_enrollment_id) OR georoute_shard_of(p_enrollment_id) IS NULL THEN
        RAISE EXCEPTION 'enrollment % is not held on another shard', p_enrollment_id
            USING ERRCODE = 'GR003';
    END IF;
    SELECT * INTO v_course FROM courses WHERE course_id = p_course_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist on this shard', p_course_id
            USING ERRCODE = 'P0002';
    ELSIF v_course.status <> 'published' THEN
        RAISE EXCEPTION 'course % is % and not open for enrollment', p_course_id, v_course.status
            USING ERRCODE = 'GR002';
    END IF;
    SELECT seat_held INTO v_held FROM remote_enrollments
     WHERE enrollment_id = p_enrollment_id AND course_id = p_course_id FOR UPDATE;
    IF v_held THEN
        RETURN v_course.enrollment_count;
    END IF;
    IF v_course.capacity IS NOT NULL AND v_course.enrollment_count >= v_course.capacity THEN
        RAISE EXCEPTION 'course % is full (capacity %)', p_course_id, v_course.capacity
            USING ERRCODE = 'GR001';
    END IF;
    INSERT INTO remote_enrollments AS r (enrollment_id, course_id)
    VALUES (p_enrollment_id, p_course_id)
    ON CONFLICT (enrollment_id) DO UPDATE SET seat_held = true
     WHERE r.course_id = excluded.course_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % holds a seat of another course', p_enrollment_id
            USING ERRCODE = '23505';
    END IF;
    RETURN v_course.enrollment_count + 1;
END
$$;

-- Give back the seat of a cancelled remote enrollment; false when it held none.
CREATE FUNCTION release_remote_seat(p_course_id uuid, p_enrollment_id uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE remote_enrollments SET seat_held = false
     WHERE enrollment_id = p_enrollment_id AND course_id = p_course_id AND seat_held;
    RETURN FOUND;
END
$$;

-- The rating of a remote enrollment's review (NULL: no review), counted in the course's.
CREATE FUNCTION set_remote_rating(p_course_id uuid, p_enrollment_id uuid, p_rating integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_rating IS NOT NULL AND p_rating NOT BETWEEN 1 AND 5 THEN
        RAISE EXCEPTION 'rating must be between 1 and 5, got %', p_rating USING ERRCODE = '22023';
    END IF;
    UPDATE remote_enrollments SET rating = p_rating
     WHERE enrollment_id = p_enrollment_id AND course_id = p_course_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % holds no seat of course %', p_enrollment_id, p_course_id
            USING ERRCODE = 'P0002';
    END IF;
END
$$;

-- ---- the student's shard: the remote enrollment itself -----------------------------------

-- Enroll a student of this shard in a course of another shard, under the terms read there
-- (remote_course_terms, in the same transaction over both shards). Refuses duplicates
-- (23505), inactive users (GR009) and a course of this shard (GR003: enroll() takes those).
CREATE FUNCTION enroll_remote(p_user_id uuid, p_course_id uuid, p_price_cents integer,
                              p_currency text, p_lesson_ids uuid[])
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_user users%ROWTYPE;
    v_existing enrollments%ROWTYPE;
    v_status enrollment_status;
    v_enrollment_id uuid;
BEGIN
    SELECT * INTO v_user FROM users WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist on this shard', p_user_id USING ERRCODE = 'P0002';
    ELSIF NOT v_user.is_active THEN
        RAISE EXCEPTION 'user % is deactivated', p_user_id USING ERRCODE = 'GR009';
    END IF;
    IF georoute_is_local(p_course_id) OR georoute_shard_of(p_course_id) IS NULL THEN
        RAISE EXCEPTION 'course % is not a course of another shard: enroll() takes this '
                        'shard''s courses', p_course_id USING ERRCODE = 'GR003';
    END IF;
    IF p_price_cents IS NULL OR p_price_cents < 0 OR p_currency IS NULL OR p_lesson_ids IS NULL
    THEN
        RAISE EXCEPTION 'a remote enrollment needs its course''s price, currency and lessons'
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_existing FROM enrollments
     WHERE user_id = p_user_id AND course_id = p_course_id FOR UPDATE;
    IF FOUND AND v_existing.status <> 'cancelled' THEN
        RAISE EXCEPTION 'user % is already enrolled in course %', p_user_id, p_course_id
            USING ERRCODE = '23505';
    END IF;
    v_status := CASE WHEN p_price_cents > 0 THEN 'pending_payment' ELSE 'active' END;
    IF FOUND THEN
        UPDATE enrollments
           SET status = v_status, cancelled_at = NULL, completed_at = NULL, enrolled_at = now(),
               course_price_cents = p_price_cents, course_currency = upper(p_currency),
               course_lesson_ids = p_lesson_ids
         WHERE enrollment_id = v_existing.enrollment_id;
        RETURN v_existing.enrollment_id;
    END IF;
    INSERT INTO enrollments (user_id, course_id, status, course_price_cents, course_currency,
                             course_lesson_ids)
    VALUES (p_user_id, p_course_id, v_status, p_price_cents, upper(p_currency), p_lesson_ids)
    RETURNING enrollment_id INTO v_enrollment_id;
    RETURN v_enrollment_id;
END
$$;

-- ---- the checks that replace the foreign keys --------------------------------------------

CREATE FUNCTION trg_enrollment_course_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF georoute_is_local(NEW.course_id) THEN
        PERFORM 1 FROM courses WHERE course_id = NEW.course_id FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'course % of enrollment % does not exist', NEW.course_id,
                NEW.enrollment_id USING ERRCODE = '23503';
        ELSIF NEW.course_lesson_ids IS NOT NULL THEN
            RAISE EXCEPTION 'enrollment % is in a course of this shard: it keeps no copy of '
                            'its terms', NEW.enrollment_id USING ERRCODE = '23514';
        END IF;
    ELSIF georoute_shard_of(NEW.course_id) IS NULL THEN
        RAISE EXCEPTION 'course % of enrollment % is not a georoute id', NEW.course_id,
            NEW.enrollment_id USING ERRCODE = '23503';
    ELSIF NEW.course_lesson_ids IS NULL THEN
        RAISE EXCEPTION 'enrollment % is in course % of another shard: it needs that '
                        'course''s terms (enroll_remote)', NEW.enrollment_id, NEW.course_id
            USING ERRCODE = '23503';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER enrollments_course_check
    BEFORE INSERT OR UPDATE OF course_id, course_lesson_ids ON enrollments
    FOR EACH ROW EXECUTE FUNCTION trg_enrollment_course_check();

CREATE FUNCTION trg_course_delete_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM enrollments WHERE course_id = OLD.course_id) THEN
        RAISE EXCEPTION 'course % has enrollments and cannot be deleted', OLD.course_id
            USING ERRCODE = '23503';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER courses_delete_check BEFORE DELETE ON courses
    FOR EACH ROW EXECUTE FUNCTION trg_course_delete_check();

-- A payment's coupon, when minted here, exists here (a payment of another shard's coupon came
-- with its user, who moved; its redemption is counted in remote_enrollments there).
CREATE FUNCTION trg_payment_coupon_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.coupon_id IS NOT NULL AND georoute_is_local(NEW.coupon_id) THEN
        PERFORM 1 FROM coupons WHERE coupon_id = NEW.coupon_id FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'coupon % of payment % does not exist', NEW.coupon_id,
                NEW.payment_id USING ERRCODE = '23503';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER payments_coupon_check BEFORE INSERT OR UPDATE OF coupon_id ON payments
    FOR EACH ROW EXECUTE FUNCTION trg_payment_coupon_check();

CREATE FUNCTION trg_coupon_delete_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM payments WHERE coupon_id = OLD.coupon_id) THEN
        RAISE EXCEPTION 'coupon % was redeemed and cannot be deleted', OLD.coupon_id
            USING ERRCODE = '23503';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER coupons_delete_check BEFORE DELETE ON coupons
    FOR EACH ROW EXECUTE FUNCTION trg_coupon_delete_check();

CREATE FUNCTION trg_lesson_delete_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM lesson_progress WHERE lesson_id = OLD.lesson_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER lessons_delete_progress AFTER DELETE ON lessons
    FOR EACH ROW EXECUTE FUNCTION trg_lesson_delete_progress();

-- ---- lesson progress: a remote enrollment's lessons are its copy of the course's ---------

-- The lesson ids of an enrollment's course: its copy for a remote one, else this shard's.
CREATE FUNCTION enrollment_lesson_ids(p_enrollment_id uuid)
RETURNS uuid[] LANGUAGE sql STABLE AS $$
    SELECT coalesce(e.course_lesson_ids,
                    ARRAY(SELECT l.lesson_id FROM lessons l JOIN course_modules m USING (module_id)
                           WHERE m.course_id = e.course_id))
      FROM enrollments e WHERE e.enrollment_id = p_enrollment_id
$$;

CREATE OR REPLACE FUNCTION trg_lesson_progress_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_remote_lessons uuid[];
BEGIN
    SELECT course_lesson_ids INTO v_remote_lessons FROM enrollments
     WHERE enrollment_id = NEW.enrollment_id;
    IF v_remote_lessons IS NOT NULL THEN
        IF NEW.lesson_id = ANY (v_remote_lessons) THEN
            RETURN NEW;
        END IF;
    ELSE
        PERFORM 1 FROM enrollments e
           JOIN course_modules m ON m.course_id = e.course_id
           JOIN lessons l ON l.module_id = m.module_id
          WHERE e.enrollment_id = NEW.enrollment_id AND l.lesson_id = NEW.lesson_id
            FOR KEY SHARE OF l;
        IF FOUND THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'lesson % is not part of the course of enrollment %',
        NEW.lesson_id, NEW.enrollment_id USING ERRCODE = 'GR006';
END
$$;

CREATE OR REPLACE FUNCTION trg_lesson_progress_recalc() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_enrollment_id uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.enrollment_id
                                 ELSE NEW.enrollment_id END;
    v_total integer;
    v_done integer;
    v_pct numeric(5, 2);
BEGIN
    v_total := coalesce(cardinality(enrollment_lesson_ids(v_enrollment_id)), 0);
    SELECT count(*) INTO v_done FROM lesson_progress
     WHERE enrollment_id = v_enrollment_id AND status = 'completed';
    v_pct := CASE WHEN v_total = 0 THEN 0 ELSE least(100, round(100.0 * v_done / v_total, 2)) END;
    UPDATE enrollments
       SET progress_pct = v_pct,
           status = CASE WHEN v_pct >= 100 AND status = 'active' THEN 'completed'
                         WHEN v_pct < 100 AND status = 'completed' THEN 'active'
                         ELSE status END,
           completed_at = CASE WHEN v_pct >= 100 AND status IN ('active', 'completed')
                               THEN coalesce(completed_at, now())
                               WHEN v_pct < 100 AND status = 'completed' THEN NULL
                               ELSE completed_at END
     WHERE enrollment_id = v_enrollment_id;
    RETURN NULL;
END
$$;

-- complete_lesson gains p_course_lesson_ids: for a remote enrollment, the course's lesson ids
-- as its shard has them now (read there just before); they replace the enrollment's copy.
DROP FUNCTION complete_lesson(uuid, uuid, integer);
CREATE FUNCTION complete_lesson(p_enrollment_id uuid, p_lesson_id uuid,
                                p_seconds_spent integer DEFAULT 0,
                                p_course_lesson_ids uuid[] DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    v_enrollment enrollments%ROWTYPE;
    v_progress numeric;
BEGIN
    SELECT * INTO v_enrollment FROM enrollments WHERE enrollment_id = p_enrollment_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    ELSIF v_enrollment.status NOT IN ('active', 'completed') THEN
        RAISE EXCEPTION 'enrollment % is % and not active', p_enrollment_id, v_enrollment.status
            USING ERRCODE = 'GR012';
    END IF;
    IF p_seconds_spent < 0 THEN
        RAISE EXCEPTION 'seconds spent must be >= 0, got %', p_seconds_spent
            USING ERRCODE = '22023';
    END IF;
    IF p_course_lesson_ids IS NOT NULL THEN
        IF v_enrollment.course_lesson_ids IS NULL THEN
            RAISE EXCEPTION 'enrollment % is in a course of this shard: its lessons are here',
                p_enrollment_id USING ERRCODE = '22023';
        END IF;
        UPDATE enrollments SET course_lesson_ids = p_course_lesson_ids
         WHERE enrollment_id = p_enrollment_id
           AND course_lesson_ids IS DISTINCT FROM p_course_lesson_ids;
    END IF;
    IF NOT (p_lesson_id = ANY (enrollment_lesson_ids(p_enrollment_id))) THEN
        RAISE EXCEPTION 'lesson % is not part of course %', p_lesson_id, v_enrollment.course_id
            USING ERRCODE = 'GR006';
    END IF;
    INSERT INTO lesson_progress AS lp (enrollment_id, lesson_id, status, seconds_spent,
                                       completed_at)
    VALUES (p_enrollment_id, p_lesson_id, 'completed', p_seconds_spent, now())
    ON CONFLICT (enrollment_id, lesson_id) DO UPDATE
       SET status = 'completed',
           completed_at = coalesce(lp.completed_at, excluded.completed_at),
           seconds_spent = lp.seconds_spent + excluded.seconds_spent;
    SELECT progress_pct INTO v_progress FROM enrollments WHERE enrollment_id = p_enrollment_id;
    RETURN v_progress;
END
$$;

CREATE OR REPLACE FUNCTION course_progress(p_enrollment_id uuid)
RETURNS TABLE (lessons_total integer, lessons_completed integer, progress_pct numeric,
               status enrollment_status)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_status enrollment_status;
BEGIN
    SELECT e.status INTO v_status FROM enrollments e WHERE e.enrollment_id = p_enrollment_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    END IF;
    lessons_total := coalesce(cardinality(enrollment_lesson_ids(p_enrollment_id)), 0);
    SELECT count(*)::integer INTO lessons_completed
      FROM lesson_progress lp
     WHERE lp.enrollment_id = p_enrollment_id AND lp.status = 'completed';
    progress_pct := CASE WHEN lessons_total = 0 THEN 0
                         ELSE least(100, round(100.0 * lessons_completed / lessons_total, 2)) END;
    status := v_status;
    RETURN NEXT;
END
$$;

-- ---- cancelling, paying, refunding a remote enrollment -----------------------------------

-- p_remote_seat_released: the caller also runs release_remote_seat on the course's shard, in
-- the same transaction. Without it a remote enrollment is not cancelled (GR014): its seat
-- would stay taken for ever.
DROP FUNCTION cancel_enrollment(uuid);
CREATE FUNCTION cancel_enrollment(p_enrollment_id uuid,
                                  p_remote_seat_released boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_enrollment enrollments%ROWTYPE;
BEGIN
    SELECT * INTO v_enrollment FROM enrollments WHERE enrollment_id = p_enrollment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    ELSIF v_enrollment.status = 'completed' THEN
        RAISE EXCEPTION 'enrollment % is completed and cannot be cancelled', p_enrollment_id
            USING ERRCODE = 'GR011';
    ELSIF v_enrollment.status = 'cancelled' THEN
        RETURN;
    ELSIF v_enrollment.course_lesson_ids IS NOT NULL AND NOT p_remote_seat_released THEN
        RAISE EXCEPTION 'enrollment % holds a seat of course % on another shard: release it '
                        'there (release_remote_seat) in the same transaction',
            p_enrollment_id, v_enrollment.course_id USING ERRCODE = 'GR014';
    END IF;
    UPDATE enrollments SET status = 'cancelled', cancelled_at = now()
     WHERE enrollment_id = p_enrollment_id;
END
$$;

CREATE OR REPLACE FUNCTION process_payment(p_enrollment_id uuid, p_idempotency_key text,
                                           p_coupon_code text DEFAULT NULL,
                                           p_provider_ref text DEFAULT NULL)
RETURNS TABLE (payment_id uuid, amount_cents integer, currency char(3), status payment_status,
               replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_payment payments%ROWTYPE;
    v_enrollment enrollments%ROWTYPE;
    v_coupon_id uuid;
    v_amount integer;
    v_currency char(3);
BEGIN
    -- Lock the enrollment first: concurrent calls for it (same key or not) queue here, and the
    -- key lookup below then sees whatever the winner committed.
    SELECT * INTO v_enrollment FROM enrollments e
     WHERE e.enrollment_id = p_enrollment_id FOR UPDATE;
    SELECT * INTO v_payment FROM payments p WHERE p.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_payment.enrollment_id <> p_enrollment_id THEN
            RAISE EXCEPTION 'idempotency key % was already used for another enrollment',
                p_idempotency_key USING ERRCODE = 'GR004';
        END IF;
        RETURN QUERY SELECT v_payment.payment_id, v_payment.amount_cents, v_payment.currency,
                            v_payment.status, true;
        RETURN;
    END IF;
    IF v_enrollment.enrollment_id IS NULL THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    ELSIF EXISTS (SELECT 1 FROM payments p
                   WHERE p.enrollment_id = p_enrollment_id AND p.status = 'succeeded') THEN
        RAISE EXCEPTION 'enrollment % is already paid', p_enrollment_id USING ERRCODE = 'GR013';
    ELSIF v_enrollment.status <> 'pending_payment' THEN
        RAISE EXCEPTION 'enrollment % is % and does not await payment',
            p_enrollment_id, v_enrollment.status USING ERRCODE = 'GR012';
    END IF;
    IF v_enrollment.course_price_cents IS NOT NULL THEN
        -- A remote enrollment pays the price it enrolled under; the course's coupons live
        -- on its shard, with their redemption counts.
        IF p_coupon_code IS NOT NULL THEN
            RAISE EXCEPTION 'coupon % cannot be applied: the course is in another region''s '
                            'catalogue', p_coupon_code USING ERRCODE = 'GR005';
        END IF;
        v_amount := v_enrollment.course_price_cents;
        v_currency := v_enrollment.course_currency;
    ELSE
        SELECT c.price_cents, c.currency INTO v_amount, v_currency
          FROM courses c WHERE c.course_id = v_enrollment.course_id;
        IF p_coupon_code IS NOT NULL THEN
            -- Lock the coupon so two payments cannot both take its last redemption.
            PERFORM 1 FROM coupons k WHERE upper(k.code) = upper(p_coupon_code) FOR UPDATE;
            SELECT a.coupon_id, a.final_price_cents INTO v_coupon_id, v_amount
              FROM apply_coupon(v_enrollment.course_id, p_coupon_code) a;
        END IF;
    END IF;
    INSERT INTO payments (enrollment_id, coupon_id, idempotency_key, amount_cents, currency,
                          status, provider_ref)
    VALUES (p_enrollment_id, v_coupon_id, p_idempotency_key, v_amount, v_currency,
            'succeeded', p_provider_ref)
    RETURNING * INTO v_payment;
    UPDATE enrollments e SET status = 'active' WHERE e.enrollment_id = p_enrollment_id;
    RETURN QUERY SELECT v_payment.payment_id, v_payment.amount_cents, v_payment.currency,
                        v_payment.status, false;
END
$$;

DROP FUNCTION refund_payment(uuid, text);
CREATE FUNCTION refund_payment(p_payment_id uuid, p_reason text,
                               p_remote_seat_released boolean DEFAULT false)
RETURNS payment_status LANGUAGE plpgsql AS $$
DECLARE
    v_payment payments%ROWTYPE;
    v_remote boolean;
BEGIN
    SELECT * INTO v_payment FROM payments WHERE payment_id = p_payment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment % does not exist', p_payment_id USING ERRCODE = 'P0002';
    ELSIF v_payment.status = 'refunded' THEN
        RETURN v_payment.status;
    ELSIF v_payment.status <> 'succeeded' THEN
        RAISE EXCEPTION 'payment % is % and cannot be refunded', p_payment_id, v_payment.status
            USING ERRCODE = 'GR008';
    ELSIF EXISTS (SELECT 1 FROM certificates WHERE enrollment_id = v_payment.enrollment_id) THEN
        RAISE EXCEPTION 'payment % cannot be refunded: a certificate was issued', p_payment_id
            USING ERRCODE = 'GR008';
    END IF;
    SELECT course_lesson_ids IS NOT NULL INTO v_remote FROM enrollments
     WHERE enrollment_id = v_payment.enrollment_id AND status <> 'cancelled';
    IF v_remote AND NOT p_remote_seat_released THEN
        RAISE EXCEPTION 'the enrollment of payment % holds a seat of a course on another '
                        'shard: release it there (release_remote_seat) in the same '
                        'transaction', p_payment_id USING ERRCODE = 'GR014';
    END IF;
    UPDATE payments SET status = 'refunded', refunded_at = now(), refund_reason = p_reason
     WHERE payment_id = p_payment_id;
    UPDATE enrollments
       SET status = 'cancelled', cancelled_at = now(), completed_at = NULL
     WHERE enrollment_id = v_payment.enrollment_id AND status <> 'cancelled';
    RETURN 'refunded'::payment_status;
END
$$;

-- A coupon's redemptions include those of remote enrollments (payments that moved away
-- with their user).
CREATE OR REPLACE FUNCTION apply_coupon(p_course_id uuid, p_code text)
RETURNS TABLE (coupon_id uuid, discount_cents integer, final_price_cents integer)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_coupon coupons%ROWTYPE;
    v_price integer;
    v_redeemed bigint;
BEGIN
    SELECT c.price_cents INTO v_price FROM courses c WHERE c.course_id = p_course_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist', p_course_id USING ERRCODE = 'P0002';
    END IF;
    SELECT * INTO v_coupon FROM coupons k WHERE upper(k.code) = upper(p_code);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'coupon % does not exist', p_code USING ERRCODE = 'GR005';
    ELSIF v_coupon.course_id IS NOT NULL AND v_coupon.course_id <> p_course_id THEN
        RAISE EXCEPTION 'coupon % is not valid for course %', p_code, p_course_id
            USING ERRCODE = 'GR005';
    ELSIF now() < v_coupon.valid_from OR now() >= v_coupon.valid_until THEN
        RAISE EXCEPTION 'coupon % is not valid at this time', p_code USING ERRCODE = 'GR005';
    END IF;
    IF v_coupon.max_redemptions IS NOT NULL THEN
        SELECT (SELECT count(*) FROM payments p
                 WHERE p.coupon_id = v_coupon.coupon_id AND p.status IN ('pending', 'succeeded'))
             + (SELECT count(*) FROM remote_enrollments r
                 WHERE r.coupon_id = v_coupon.coupon_id AND r.seat_held)
          INTO v_redeemed;
        IF v_redeemed >= v_coupon.max_redemptions THEN
            RAISE EXCEPTION 'coupon % has been fully redeemed (% of %)',
                p_code, v_redeemed, v_coupon.max_redemptions USING ERRCODE = 'GR005';
        END IF;
    END IF;
    coupon_id := v_coupon.coupon_id;
    discount_cents := least(v_price, coalesce(v_coupon.amount_off_cents,
                                              round(v_price * v_coupon.percent_off / 100.0)));
    final_price_cents := v_price - discount_cents;
    RETURN NEXT;
END
$$;

-- ---- repair ------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION recalculate_aggregates()
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_changed integer := 0;
    v_rows integer;
BEGIN
    UPDATE enrollments e
       SET progress_pct = x.pct
      FROM (SELECT e2.enrollment_id,
                   CASE WHEN coalesce(cardinality(enrollment_lesson_ids(e2.enrollment_id)), 0) = 0
                        THEN 0
                        ELSE least(100, round(100.0 * coalesce(d.done, 0)
                                   / cardinality(enrollment_lesson_ids(e2.enrollment_id)), 2))
                   END AS pct
              FROM enrollments e2
              LEFT JOIN (SELECT lp.enrollment_id, count(*) AS done
                           FROM lesson_progress lp WHERE lp.status = 'completed'
                          GROUP BY lp.enrollment_id) d USING (enrollment_id)) x
     WHERE e.enrollment_id = x.enrollment_id AND e.progress_pct IS DISTINCT FROM x.pct;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_changed := v_changed + v_rows;
    UPDATE courses c
       SET enrollment_count = x.enrolled, review_count = x.reviews, rating_avg = x.rating
      FROM (SELECT c2.course_id,
                   ((SELECT count(*) FROM enrollments e
                      WHERE e.course_id = c2.course_id AND e.status <> 'cancelled')
                    + (SELECT count(*) FROM remote_enrollments r
                        WHERE r.course_id = c2.course_id AND r.seat_held))::integer AS enrolled,
                   ((SELECT count(*) FROM reviews r WHERE r.course_id = c2.course_id)
                    + (SELECT count(*) FROM remote_enrollments r
                        WHERE r.course_id = c2.course_id AND r.rating IS NOT NULL))::integer
                       AS reviews,
                   (SELECT round(avg(s.rating), 2)
                      FROM (SELECT r.rating FROM reviews r WHERE r.course_id = c2.course_id
                            UNION ALL
                            SELECT r.rating FROM remote_enrollments r
                             WHERE r.course_id = c2.course_id AND r.rating IS NOT NULL) s)
                       AS rating
              FROM courses c2) x
     WHERE c.course_id = x.course_id
       AND (c.enrollment_count, c.review_count, c.rating_avg)
           IS DISTINCT FROM (x.enrolled, x.reviews, x.rating);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_changed + v_rows;
END
$$;
