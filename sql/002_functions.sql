-- 002_functions: the business operations, each one transaction-safe on its own shard.
--
-- Errors carry SQLSTATEs clients can branch on:
--   P0002 not found              23505 duplicate (email, enrollment)
--   22023 invalid argument       GR000 georoute_shard not set
--   GR001 course full            GR002 course not open for enrollment
--   GR003 wrong region           GR004 idempotency key reused for another enrollment
--   GR005 coupon not applicable  GR006 lesson not part of the enrolled course
--   GR007 course not completed   GR008 refund refused
--   GR009 user inactive          GR010 not an instructor
--   GR011 invalid state change   GR012 enrollment not active
--   GR013 enrollment already paid

-- ---- audit ------------------------------------------------------------------------------

-- Append one audit entry. The actor defaults to the session's `georoute.actor_id` setting.
CREATE FUNCTION record_audit(p_action text, p_entity text, p_entity_id uuid,
                             p_details jsonb DEFAULT '{}'::jsonb, p_actor_id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_actor uuid := p_actor_id;
    v_audit_id uuid;
BEGIN
    IF p_action IS NULL OR length(p_action) = 0 THEN
        RAISE EXCEPTION 'audit action must not be empty' USING ERRCODE = '22023';
    END IF;
    IF v_actor IS NULL THEN
        v_actor := nullif(current_setting('georoute.actor_id', true), '')::uuid;
    END IF;
    INSERT INTO audit_log (actor_id, action, entity, entity_id, details)
    VALUES (v_actor, p_action, p_entity, p_entity_id, coalesce(p_details, '{}'::jsonb))
    RETURNING audit_id INTO v_audit_id;
    RETURN v_audit_id;
END
$$;

-- ---- users and sessions -----------------------------------------------------------------

CREATE FUNCTION register_user(p_email text, p_full_name text, p_home_region text,
                              p_country text, p_city text,
                              p_role user_role DEFAULT 'student',
                              p_password_hash text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_user_id uuid;
BEGIN
    IF p_home_region IS DISTINCT FROM georoute_region() THEN
        RAISE EXCEPTION 'user with home region % does not belong on shard %',
            p_home_region, georoute_region()
            USING ERRCODE = 'GR003', HINT = 'register the user on their home region''s shard';
    END IF;
    IF EXISTS (SELECT 1 FROM users WHERE lower(email) = lower(p_email)) THEN
        RAISE EXCEPTION 'email % is already registered', p_email USING ERRCODE = '23505';
    END IF;
    INSERT INTO users (email, full_name, role, home_region, country, city)
    VALUES (p_email, p_full_name, p_role, p_home_region, upper(p_country), p_city)
    RETURNING user_id INTO v_user_id;
    IF p_password_hash IS NOT NULL THEN
        INSERT INTO user_credentials (user_id, password_hash) VALUES (v_user_id, p_password_hash);
    END IF;
    RETURN v_user_id;
END
$$;

CREATE FUNCTION create_session(p_user_id uuid, p_token_hash text,
                               p_ttl interval DEFAULT interval '1 day',
                               p_ip inet DEFAULT NULL, p_user_agent text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_session_id uuid;
BEGIN
    SELECT is_active INTO v_active FROM users WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', p_user_id USING ERRCODE = 'P0002';
    ELSIF NOT v_active THEN
        RAISE EXCEPTION 'user % is deactivated', p_user_id USING ERRCODE = 'GR009';
    END IF;
    IF p_ttl <= interval '0' THEN
        RAISE EXCEPTION 'session ttl must be positive, got %', p_ttl USING ERRCODE = '22023';
    END IF;
    INSERT INTO user_sessions (user_id, token_hash, ip_address, user_agent, expires_at)
    VALUES (p_user_id, p_token_hash, p_ip, p_user_agent, now() + p_ttl)
    RETURNING session_id INTO v_session_id;
    RETURN v_session_id;
END
$$;

-- Deactivate a user: sessions revoked, account closed, reason audited. Returns the number of
-- sessions revoked; a second call is a no-op returning 0.
CREATE FUNCTION deactivate_user(p_user_id uuid, p_reason text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_revoked integer;
BEGIN
    SELECT is_active INTO v_active FROM users WHERE user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', p_user_id USING ERRCODE = 'P0002';
    END IF;
    IF NOT v_active THEN
        RETURN 0;
    END IF;
    IF p_reason IS NULL OR length(btrim(p_reason)) = 0 THEN
        RAISE EXCEPTION 'a reason is required to deactivate a user' USING ERRCODE = '22023';
    END IF;
    UPDATE user_sessions SET revoked_at = now()
     WHERE user_id = p_user_id AND revoked_at IS NULL AND expires_at > now();
    GET DIAGNOSTICS v_revoked = ROW_COUNT;
    UPDATE users SET is_active = false, deactivated_at = now() WHERE user_id = p_user_id;
    PERFORM record_audit('user.deactivated', 'users', p_user_id,
                         jsonb_build_object('reason', p_reason, 'sessions_revoked', v_revoked));
    RETURN v_revoked;
END
$$;

CREATE FUNCTION purge_expired_sessions(p_before timestamptz DEFAULT now())
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_deleted integer;
BEGIN
    DELETE FROM user_sessions WHERE expires_at < p_before OR revoked_at < p_before;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- ---- catalogue --------------------------------------------------------------------------

CREATE FUNCTION create_course(p_instructor_id uuid, p_category_id uuid, p_title text,
                              p_price_cents integer, p_currency text DEFAULT 'USD',
                              p_capacity integer DEFAULT NULL,
                              p_level course_level DEFAULT 'beginner',
                              p_language text DEFAULT 'en', p_description text DEFAULT '',
                              p_slug text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_role user_role;
    v_active boolean;
    v_course_id uuid := georoute_id();
    v_slug text := p_slug;
BEGIN
    SELECT role, is_active INTO v_role, v_active FROM users WHERE user_id = p_instructor_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instructor % does not exist', p_instructor_id USING ERRCODE = 'P0002';
    ELSIF v_role = 'student' THEN
        RAISE EXCEPTION 'user % is a student and cannot create courses', p_instructor_id
            USING ERRCODE = 'GR010';
    ELSIF NOT v_active THEN
        RAISE EXCEPTION 'user % is deactivated', p_instructor_id USING ERRCODE = 'GR009';
    END IF;
    IF p_price_cents IS NULL OR p_price_cents < 0 THEN
        RAISE EXCEPTION 'price must be >= 0, got %', p_price_cents USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM categories WHERE category_id = p_category_id) THEN
        RAISE EXCEPTION 'category % does not exist', p_category_id USING ERRCODE = 'P0002';
    END IF;
    IF v_slug IS NULL THEN
        -- Title words plus the id's random tail keep slugs readable and unique.
        v_slug := trim(BOTH '-' FROM regexp_replace(lower(p_title), '[^a-z0-9]+', '-', 'g'));
        v_slug := concat_ws('-', nullif(left(v_slug, 60), ''),
                            right(replace(v_course_id::text, '-', ''), 8));
        v_slug := regexp_replace(v_slug, '-+', '-', 'g');
    END IF;
    INSERT INTO courses (course_id, instructor_id, category_id, slug, title, description,
                         language, level, price_cents, currency, capacity)
    VALUES (v_course_id, p_instructor_id, p_category_id, v_slug, p_title, p_description,
            p_language, p_level, p_price_cents, upper(p_currency), p_capacity);
    RETURN v_course_id;
END
$$;

CREATE FUNCTION add_module(p_course_id uuid, p_title text)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_status course_status;
    v_position integer;
    v_module_id uuid;
BEGIN
    -- The course row lock serialises concurrent add_module calls on one course.
    SELECT status INTO v_status FROM courses WHERE course_id = p_course_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist', p_course_id USING ERRCODE = 'P0002';
    ELSIF v_status = 'archived' THEN
        RAISE EXCEPTION 'course % is archived', p_course_id USING ERRCODE = 'GR011';
    END IF;
    SELECT coalesce(max(position), 0) + 1 INTO v_position
      FROM course_modules WHERE course_id = p_course_id;
    INSERT INTO course_modules (course_id, position, title)
    VALUES (p_course_id, v_position, p_title)
    RETURNING module_id INTO v_module_id;
    RETURN v_module_id;
END
$$;

CREATE FUNCTION add_lesson(p_module_id uuid, p_title text, p_duration_seconds integer DEFAULT 0,
                           p_is_preview boolean DEFAULT false)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_status course_status;
    v_position integer;
    v_lesson_id uuid;
BEGIN
    SELECT c.status INTO v_status
      FROM course_modules m JOIN courses c USING (course_id)
     WHERE m.module_id = p_module_id
       FOR UPDATE OF m;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'module % does not exist', p_module_id USING ERRCODE = 'P0002';
    ELSIF v_status = 'archived' THEN
        RAISE EXCEPTION 'the course of module % is archived', p_module_id USING ERRCODE = 'GR011';
    END IF;
    IF p_duration_seconds < 0 THEN
        RAISE EXCEPTION 'lesson duration must be >= 0, got %', p_duration_seconds
            USING ERRCODE = '22023';
    END IF;
    SELECT coalesce(max(position), 0) + 1 INTO v_position
      FROM lessons WHERE module_id = p_module_id;
    INSERT INTO lessons (module_id, position, title, duration_seconds, is_preview)
    VALUES (p_module_id, v_position, p_title, p_duration_seconds, p_is_preview)
    RETURNING lesson_id INTO v_lesson_id;
    RETURN v_lesson_id;
END
$$;

-- Publish a draft course (it needs at least one lesson). Publishing twice returns the first
-- publication time; an archived course cannot be published again.
CREATE FUNCTION publish_course(p_course_id uuid)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    v_status course_status;
    v_published_at timestamptz;
BEGIN
    SELECT status, published_at INTO v_status, v_published_at
      FROM courses WHERE course_id = p_course_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist', p_course_id USING ERRCODE = 'P0002';
    ELSIF v_status = 'published' THEN
        RETURN v_published_at;
    ELSIF v_status = 'archived' THEN
        RAISE EXCEPTION 'course % is archived and cannot be published', p_course_id
            USING ERRCODE = 'GR011';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM lessons l JOIN course_modules m USING (module_id)
                    WHERE m.course_id = p_course_id) THEN
        RAISE EXCEPTION 'course % has no lessons and cannot be published', p_course_id
            USING ERRCODE = 'GR011';
    END IF;
    UPDATE courses SET status = 'published', published_at = now()
     WHERE course_id = p_course_id
    RETURNING published_at INTO v_published_at;
    RETURN v_published_at;
END
$$;

CREATE FUNCTION archive_course(p_course_id uuid)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_status course_status;
BEGIN
    SELECT status INTO v_status FROM courses WHERE course_id = p_course_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist', p_course_id USING ERRCODE = 'P0002';
    ELSIF v_status = 'draft' THEN
        RAISE EXCEPTION 'course % is a draft: delete it instead of archiving', p_course_id
            USING ERRCODE = 'GR011';
    END IF;
    UPDATE courses SET status = 'archived' WHERE course_id = p_course_id;
END
$$;

-- ---- enrollment and progress ------------------------------------------------------------

-- Enroll a user in a published course of this shard's catalogue. Free courses start active;
-- paid ones wait for process_payment. Refuses duplicates (23505) and full courses (GR001).
CREATE FUNCTION enroll(p_user_id uuid, p_course_id uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_user users%ROWTYPE;
    v_course courses%ROWTYPE;
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
    -- Lock the course: capacity checks of concurrent enrollments run one after another.
    SELECT * INTO v_course FROM courses WHERE course_id = p_course_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'course % does not exist on this shard', p_course_id
            USING ERRCODE = 'P0002';
    ELSIF v_course.status <> 'published' THEN
        RAISE EXCEPTION 'course % is % and not open for enrollment', p_course_id, v_course.status
            USING ERRCODE = 'GR002';
    ELSIF v_course.region <> v_user.home_region THEN
        RAISE EXCEPTION 'user % (home region %) cannot enroll in a % course',
            p_user_id, v_user.home_region, v_course.region USING ERRCODE = 'GR003';
    ELSIF v_course.instructor_id = p_user_id THEN
        RAISE EXCEPTION 'instructor % cannot enroll in their own course', p_user_id
            USING ERRCODE = 'GR011';
    END IF;
    SELECT * INTO v_existing FROM enrollments
     WHERE user_id = p_user_id AND course_id = p_course_id FOR UPDATE;
    IF FOUND AND v_existing.status <> 'cancelled' THEN
        RAISE EXCEPTION 'user % is already enrolled in course %', p_user_id, p_course_id
            USING ERRCODE = '23505';
    END IF;
    IF v_course.capacity IS NOT NULL AND v_course.enrollment_count >= v_course.capacity THEN
        RAISE EXCEPTION 'course % is full (capacity %)', p_course_id, v_course.capacity
            USING ERRCODE = 'GR001';
    END IF;
    v_status := CASE WHEN v_course.price_cents > 0 THEN 'pending_payment' ELSE 'active' END;
    IF FOUND THEN
        -- Re-enrolling after a cancellation reuses the row (one enrollment per user and course).
        UPDATE enrollments
           SET status = v_status, cancelled_at = NULL, completed_at = NULL, enrolled_at = now()
         WHERE enrollment_id = v_existing.enrollment_id;
        RETURN v_existing.enrollment_id;
    END IF;
    INSERT INTO enrollments (user_id, course_id, status)
    VALUES (p_user_id, p_course_id, v_status)
    RETURNING enrollment_id INTO v_enrollment_id;
    RETURN v_enrollment_id;
END
$$;

CREATE FUNCTION cancel_enrollment(p_enrollment_id uuid)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_status enrollment_status;
BEGIN
    SELECT status INTO v_status FROM enrollments WHERE enrollment_id = p_enrollment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    ELSIF v_status = 'completed' THEN
        RAISE EXCEPTION 'enrollment % is completed and cannot be cancelled', p_enrollment_id
            USING ERRCODE = 'GR011';
    ELSIF v_status = 'cancelled' THEN
        RETURN;
    END IF;
    UPDATE enrollments SET status = 'cancelled', cancelled_at = now()
     WHERE enrollment_id = p_enrollment_id;
END
$$;

-- Mark a lesson completed (idempotent; time spent accumulates). The trigger on
-- lesson_progress recalculates the enrollment's progress; the new percentage is returned.
CREATE FUNCTION complete_lesson(p_enrollment_id uuid, p_lesson_id uuid,
                                p_seconds_spent integer DEFAULT 0)
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
    IF NOT EXISTS (SELECT 1 FROM lessons l JOIN course_modules m USING (module_id)
                    WHERE l.lesson_id = p_lesson_id AND m.course_id = v_enrollment.course_id) THEN
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

CREATE FUNCTION course_progress(p_enrollment_id uuid)
RETURNS TABLE (lessons_total integer, lessons_completed integer, progress_pct numeric,
               status enrollment_status)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_course_id uuid;
    v_status enrollment_status;
BEGIN
    SELECT e.course_id, e.status INTO v_course_id, v_status
      FROM enrollments e WHERE e.enrollment_id = p_enrollment_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    END IF;
    SELECT count(*)::integer INTO lessons_total
      FROM lessons l JOIN course_modules m USING (module_id) WHERE m.course_id = v_course_id;
    SELECT count(*)::integer INTO lessons_completed
      FROM lesson_progress lp
     WHERE lp.enrollment_id = p_enrollment_id AND lp.status = 'completed';
    progress_pct := CASE WHEN lessons_total = 0 THEN 0
                         ELSE round(100.0 * lessons_completed / lessons_total, 2) END;
    status := v_status;
    RETURN NEXT;
END
$$;

CREATE FUNCTION issue_certificate(p_enrollment_id uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_status enrollment_status;
    v_certificate_id uuid;
BEGIN
    SELECT status INTO v_status FROM enrollments WHERE enrollment_id = p_enrollment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    ELSIF v_status <> 'completed' THEN
        RAISE EXCEPTION 'enrollment % is % : a certificate needs a completed course',
            p_enrollment_id, v_status USING ERRCODE = 'GR007';
    END IF;
    SELECT certificate_id INTO v_certificate_id
      FROM certificates WHERE enrollment_id = p_enrollment_id;
    IF FOUND THEN
        RETURN v_certificate_id;
    END IF;
    INSERT INTO certificates (enrollment_id, serial_number)
    VALUES (p_enrollment_id,
            'CERT-' || upper(left(replace(p_enrollment_id::text, '-', ''), 8)) || '-'
                    || upper(right(replace(p_enrollment_id::text, '-', ''), 12)))
    RETURNING certificate_id INTO v_certificate_id;
    RETURN v_certificate_id;
END
$$;

-- ---- money ------------------------------------------------------------------------------

-- Price a course with a coupon code, without redeeming it. Refuses (GR005) unknown, expired,
-- exhausted coupons and coupons for another course.
CREATE FUNCTION apply_coupon(p_course_id uuid, p_code text)
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
        SELECT count(*) INTO v_redeemed FROM payments p
         WHERE p.coupon_id = v_coupon.coupon_id AND p.status IN ('pending', 'succeeded');
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

-- Charge an enrollment, idempotent by key: a replay with the same key returns the original
-- payment (replayed = true) and never charges again; a key reused for another enrollment is
-- refused (GR004), and so is a second charge of a paid enrollment under a new key (GR013).
CREATE FUNCTION process_payment(p_enrollment_id uuid, p_idempotency_key text,
                                p_coupon_code text DEFAULT NULL,
                                p_provider_ref text DEFAULT NULL)
RETURNS TABLE (payment_id uuid, amount_cents integer, currency char(3), status payment_status,
               replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_payment payments%ROWTYPE;
    v_enrollment enrollments%ROWTYPE;
    v_course courses%ROWTYPE;
    v_coupon_id uuid;
    v_amount integer;
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
    SELECT * INTO v_course FROM courses c WHERE c.course_id = v_enrollment.course_id;
    v_amount := v_course.price_cents;
    IF p_coupon_code IS NOT NULL THEN
        -- Lock the coupon so two payments cannot both take its last redemption.
        PERFORM 1 FROM coupons k WHERE upper(k.code) = upper(p_coupon_code) FOR UPDATE;
        SELECT a.coupon_id, a.final_price_cents INTO v_coupon_id, v_amount
          FROM apply_coupon(v_course.course_id, p_coupon_code) a;
    END IF;
    INSERT INTO payments (enrollment_id, coupon_id, idempotency_key, amount_cents, currency,
                          status, provider_ref)
    VALUES (p_enrollment_id, v_coupon_id, p_idempotency_key, v_amount, v_course.currency,
            'succeeded', p_provider_ref)
    RETURNING * INTO v_payment;
    UPDATE enrollments e SET status = 'active' WHERE e.enrollment_id = p_enrollment_id;
    RETURN QUERY SELECT v_payment.payment_id, v_payment.amount_cents, v_payment.currency,
                        v_payment.status, false;
END
$$;

-- Issue the invoice of a captured payment (idempotent: returns the existing invoice).
-- The amount paid includes tax at p_tax_rate (e.g. 0.20); the number comes from a trigger.
CREATE FUNCTION issue_invoice(p_payment_id uuid, p_tax_rate numeric DEFAULT 0)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_payment payments%ROWTYPE;
    v_user users%ROWTYPE;
    v_invoice_id uuid;
    v_subtotal integer;
BEGIN
    IF p_tax_rate IS NULL OR p_tax_rate < 0 OR p_tax_rate >= 1 THEN
        RAISE EXCEPTION 'tax rate must be in [0, 1), got %', p_tax_rate USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_payment FROM payments WHERE payment_id = p_payment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment % does not exist', p_payment_id USING ERRCODE = 'P0002';
    END IF;
    SELECT invoice_id INTO v_invoice_id FROM invoices WHERE payment_id = p_payment_id;
    IF FOUND THEN
        RETURN v_invoice_id;
    END IF;
    IF v_payment.status <> 'succeeded' THEN
        RAISE EXCEPTION 'payment % is % : only captured payments are invoiced',
            p_payment_id, v_payment.status USING ERRCODE = 'GR011';
    END IF;
    SELECT u.* INTO v_user FROM users u JOIN enrollments e USING (user_id)
     WHERE e.enrollment_id = v_payment.enrollment_id;
    v_subtotal := round(v_payment.amount_cents / (1 + p_tax_rate));
    INSERT INTO invoices (payment_id, billing_name, billing_country, subtotal_cents, tax_cents,
                          currency)
    VALUES (p_payment_id, v_user.full_name, v_user.country, v_subtotal,
            v_payment.amount_cents - v_subtotal, v_payment.currency)
    RETURNING invoice_id INTO v_invoice_id;
    RETURN v_invoice_id;
END
$$;

-- Refund a captured payment and cancel its enrollment. Refunding twice is a no-op; payments
-- that were never captured, or whose course certificate was issued, are refused (GR008).
CREATE FUNCTION refund_payment(p_payment_id uuid, p_reason text)
RETURNS payment_status LANGUAGE plpgsql AS $$
DECLARE
    v_payment payments%ROWTYPE;
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
    UPDATE payments SET status = 'refunded', refunded_at = now(), refund_reason = p_reason
     WHERE payment_id = p_payment_id;
    UPDATE enrollments
       SET status = 'cancelled', cancelled_at = now(), completed_at = NULL
     WHERE enrollment_id = v_payment.enrollment_id AND status <> 'cancelled';
    RETURN 'refunded'::payment_status;
END
$$;

-- ---- reviews ----------------------------------------------------------------------------

CREATE FUNCTION upsert_review(p_user_id uuid, p_course_id uuid, p_rating integer,
                              p_body text DEFAULT '')
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_status enrollment_status;
    v_review_id uuid;
BEGIN
    IF p_rating IS NULL OR p_rating NOT BETWEEN 1 AND 5 THEN
        RAISE EXCEPTION 'rating must be between 1 and 5, got %', p_rating USING ERRCODE = '22023';
    END IF;
    SELECT status INTO v_status FROM enrollments
     WHERE user_id = p_user_id AND course_id = p_course_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is not enrolled in course %', p_user_id, p_course_id
            USING ERRCODE = 'GR012';
    ELSIF v_status NOT IN ('active', 'completed') THEN
        RAISE EXCEPTION 'enrollment of user % in course % is %', p_user_id, p_course_id, v_status
            USING ERRCODE = 'GR012';
    END IF;
    INSERT INTO reviews AS r (user_id, course_id, rating, body)
    VALUES (p_user_id, p_course_id, p_rating, coalesce(p_body, ''))
    ON CONFLICT (user_id, course_id) DO UPDATE SET rating = excluded.rating, body = excluded.body
    RETURNING r.review_id INTO v_review_id;
    RETURN v_review_id;
END
$$;

CREATE FUNCTION delete_review(p_review_id uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM reviews WHERE review_id = p_review_id;
    RETURN FOUND;
END
$$;

-- ---- analytics --------------------------------------------------------------------------

CREATE FUNCTION course_statistics(p_course_id uuid)
RETURNS TABLE (course_id uuid, title text, enrollments bigint, active bigint,
               completions bigint, cancellations bigint, completion_rate numeric,
               avg_progress numeric, rating_avg numeric, review_count integer,
               gross_cents bigint, refunded_cents bigint)
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
    ), p AS (
        SELECT coalesce(sum(p.amount_cents) FILTER (WHERE p.status IN ('succeeded', 'refunded')),
                        0)::bigint AS gross,
               coalesce(sum(p.amount_cents) FILTER (WHERE p.status = 'refunded'), 0)::bigint
                   AS refunded
          FROM payments p JOIN enrollments e USING (enrollment_id)
         WHERE e.course_id = p_course_id
    )
    SELECT c.course_id, c.title, e.enrolled, e.active, e.completed, e.cancelled,
           CASE WHEN e.enrolled = 0 THEN 0 ELSE round(e.completed::numeric / e.enrolled, 4) END,
           round(coalesce(e.avg_progress, 0), 2), c.rating_avg, c.review_count,
           p.gross, p.refunded
      FROM courses c, e, p
     WHERE c.course_id = p_course_id;
END
$$;

-- Revenue per day, course and currency over [p_from, p_to): gross counts captured payments
-- (including those later refunded), refunds are counted on the day of the payment.
CREATE FUNCTION revenue_report(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, course_id uuid, currency char(3), payments bigint, gross_cents bigint,
               refunded_cents bigint, net_cents bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF p_to <= p_from THEN
        RAISE EXCEPTION 'report range is empty: % >= %', p_from, p_to USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT (p.created_at AT TIME ZONE 'UTC')::date, e.course_id, p.currency, count(*),
           sum(p.amount_cents)::bigint,
           coalesce(sum(p.amount_cents) FILTER (WHERE p.status = 'refunded'), 0)::bigint,
           coalesce(sum(p.amount_cents) FILTER (WHERE p.status = 'succeeded'), 0)::bigint
      FROM payments p JOIN enrollments e USING (enrollment_id)
     WHERE p.created_at >= p_from AND p.created_at < p_to
       AND p.status IN ('succeeded', 'refunded')
     GROUP BY 1, 2, 3
     ORDER BY 1, 2, 3;
END
$$;

-- Enrollments, completions and cancellations per UTC day over [p_from, p_to), every day listed.
CREATE FUNCTION enrollment_statistics(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, enrollments bigint, completions bigint, cancellations bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF p_to <= p_from THEN
        RAISE EXCEPTION 'report range is empty: % >= %', p_from, p_to USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH days AS (
        SELECT d::date AS day
          FROM generate_series((p_from AT TIME ZONE 'UTC')::date,
                               ((p_to - interval '1 microsecond') AT TIME ZONE 'UTC')::date,
                               interval '1 day') AS d
    )
    SELECT days.day,
           (SELECT count(*) FROM enrollments e
             WHERE e.enrolled_at >= greatest(p_from, days.day::timestamp AT TIME ZONE 'UTC')
               AND e.enrolled_at < least(p_to, (days.day + 1)::timestamp AT TIME ZONE 'UTC')),
           (SELECT count(*) FROM enrollments e
             WHERE e.completed_at >= greatest(p_from, days.day::timestamp AT TIME ZONE 'UTC')
               AND e.completed_at < least(p_to, (days.day + 1)::timestamp AT TIME ZONE 'UTC')),
           (SELECT count(*) FROM enrollments e
             WHERE e.cancelled_at >= greatest(p_from, days.day::timestamp AT TIME ZONE 'UTC')
               AND e.cancelled_at < least(p_to, (days.day + 1)::timestamp AT TIME ZONE 'UTC'))
      FROM days
     ORDER BY days.day;
END
$$;

-- Published courses matching words in title/description, a category (with its children),
-- a price ceiling and a level; best text match, then rating, first.
CREATE FUNCTION search_catalogue(p_query text DEFAULT NULL, p_category_slug text DEFAULT NULL,
                                 p_max_price_cents integer DEFAULT NULL,
                                 p_level course_level DEFAULT NULL, p_limit integer DEFAULT 20)
RETURNS TABLE (course_id uuid, title text, slug text, price_cents integer, currency char(3),
               rating_avg numeric, enrollment_count integer, rank real)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_query tsquery;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'limit must be between 1 and 200, got %', p_limit USING ERRCODE = '22023';
    END IF;
    IF p_query IS NOT NULL AND length(btrim(p_query)) > 0 THEN
        v_query := plainto_tsquery('simple', p_query);
    END IF;
    RETURN QUERY
    SELECT c.course_id, c.title, c.slug, c.price_cents, c.currency, c.rating_avg,
           c.enrollment_count,
           CASE WHEN v_query IS NULL THEN 0::real ELSE ts_rank(c.search_vector, v_query) END
      FROM courses c
     WHERE c.status = 'published'
       AND (v_query IS NULL OR c.search_vector @@ v_query)
       AND (p_max_price_cents IS NULL OR c.price_cents <= p_max_price_cents)
       AND (p_level IS NULL OR c.level = p_level)
       AND (p_category_slug IS NULL OR c.category_id IN (
               SELECT k.category_id FROM categories k
                WHERE k.slug = p_category_slug
                   OR k.parent_id = (SELECT k2.category_id FROM categories k2
                                      WHERE k2.slug = p_category_slug)))
     ORDER BY 8 DESC, c.rating_avg DESC NULLS LAST, c.enrollment_count DESC, c.course_id
     LIMIT p_limit;
END
$$;

-- Recompute every cached aggregate from its source rows (after bulk loads that bypass
-- triggers, or as a repair). Returns the number of rows it changed.
CREATE FUNCTION recalculate_aggregates()
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_changed integer := 0;
    v_rows integer;
BEGIN
    UPDATE enrollments e
       SET progress_pct = x.pct
      FROM (SELECT e2.enrollment_id,
                   CASE WHEN t.total = 0 THEN 0
                        ELSE round(100.0 * coalesce(d.done, 0) / t.total, 2) END AS pct
              FROM enrollments e2
              JOIN (SELECT m.course_id, count(*) AS total
                      FROM lessons l JOIN course_modules m USING (module_id)
                     GROUP BY m.course_id) t USING (course_id)
              LEFT JOIN (SELECT lp.enrollment_id, count(*) AS done
                           FROM lesson_progress lp WHERE lp.status = 'completed'
                          GROUP BY lp.enrollment_id) d USING (enrollment_id)) x
     WHERE e.enrollment_id = x.enrollment_id AND e.progress_pct IS DISTINCT FROM x.pct;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_changed := v_changed + v_rows;
    UPDATE courses c
       SET enrollment_count = x.enrolled, review_count = x.reviews, rating_avg = x.rating
      FROM (SELECT c2.course_id,
                   (SELECT count(*) FROM enrollments e
                     WHERE e.course_id = c2.course_id AND e.status <> 'cancelled')::integer
                       AS enrolled,
                   (SELECT count(*) FROM reviews r WHERE r.course_id = c2.course_id)::integer
                       AS reviews,
                   (SELECT round(avg(r.rating), 2) FROM reviews r
                     WHERE r.course_id = c2.course_id) AS rating
              FROM courses c2) x
     WHERE c.course_id = x.course_id
       AND (c.enrollment_count, c.review_count, c.rating_avg)
           IS DISTINCT FROM (x.enrolled, x.reviews, x.rating);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_changed + v_rows;
END
$$;
