-- 003_triggers: the invariants that must hold however a row is written.

-- ---- updated_at -------------------------------------------------------------------------

CREATE FUNCTION trg_set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER user_credentials_updated_at BEFORE UPDATE ON user_credentials
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER courses_updated_at BEFORE UPDATE ON courses
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER course_modules_updated_at BEFORE UPDATE ON course_modules
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER lessons_updated_at BEFORE UPDATE ON lessons
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER enrollments_updated_at BEFORE UPDATE ON enrollments
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER lesson_progress_updated_at BEFORE UPDATE ON lesson_progress
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();
CREATE TRIGGER reviews_updated_at BEFORE UPDATE ON reviews
    FOR EACH ROW EXECUTE FUNCTION trg_set_updated_at();

-- ---- residency: rows carrying a region must belong to this shard -------------------------

-- TG_ARGV[0] names the region column.
CREATE FUNCTION trg_enforce_region() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_region text := to_jsonb(NEW) ->> TG_ARGV[0];
BEGIN
    IF v_region IS DISTINCT FROM georoute_region() THEN
        RAISE EXCEPTION '%.% = % does not belong on shard %',
            TG_TABLE_NAME, TG_ARGV[0], v_region, georoute_region()
            USING ERRCODE = 'GR003';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_region BEFORE INSERT OR UPDATE OF home_region ON users
    FOR EACH ROW EXECUTE FUNCTION trg_enforce_region('home_region');
CREATE TRIGGER courses_region BEFORE INSERT OR UPDATE OF region ON courses
    FOR EACH ROW EXECUTE FUNCTION trg_enforce_region('region');

-- ---- lesson progress --------------------------------------------------------------------

-- A progress row's lesson must belong to its enrollment's course (no FK can say this in 3NF).
CREATE FUNCTION trg_lesson_progress_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM enrollments e
                     JOIN course_modules m ON m.course_id = e.course_id
                     JOIN lessons l ON l.module_id = m.module_id
                    WHERE e.enrollment_id = NEW.enrollment_id AND l.lesson_id = NEW.lesson_id) THEN
        RAISE EXCEPTION 'lesson % is not part of the course of enrollment %',
            NEW.lesson_id, NEW.enrollment_id USING ERRCODE = 'GR006';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER lesson_progress_check BEFORE INSERT OR UPDATE OF enrollment_id, lesson_id
    ON lesson_progress FOR EACH ROW EXECUTE FUNCTION trg_lesson_progress_check();

-- Recalculate the enrollment's progress; all lessons done completes the enrollment.
CREATE FUNCTION trg_lesson_progress_recalc() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_enrollment_id uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.enrollment_id
                                 ELSE NEW.enrollment_id END;
    v_total integer;
    v_done integer;
    v_pct numeric(5, 2);
BEGIN
    SELECT count(*) INTO v_total
      FROM enrollments e JOIN course_modules m ON m.course_id = e.course_id
      JOIN lessons l ON l.module_id = m.module_id
     WHERE e.enrollment_id = v_enrollment_id;
    SELECT count(*) INTO v_done FROM lesson_progress
     WHERE enrollment_id = v_enrollment_id AND status = 'completed';
    v_pct := CASE WHEN v_total = 0 THEN 0 ELSE round(100.0 * v_done / v_total, 2) END;
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

CREATE TRIGGER lesson_progress_recalc AFTER INSERT OR UPDATE OR DELETE ON lesson_progress
    FOR EACH ROW EXECUTE FUNCTION trg_lesson_progress_recalc();

-- ---- course aggregates ------------------------------------------------------------------

CREATE FUNCTION trg_review_rating() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_course_id uuid;
BEGIN
    FOREACH v_course_id IN ARRAY ARRAY[
        CASE WHEN TG_OP <> 'INSERT' THEN OLD.course_id END,
        CASE WHEN TG_OP <> 'DELETE' THEN NEW.course_id END]
    LOOP
        CONTINUE WHEN v_course_id IS NULL;
        UPDATE courses c
           SET review_count = s.n, rating_avg = s.avg_rating
          FROM (SELECT count(*)::integer AS n, round(avg(rating), 2) AS avg_rating
                  FROM reviews WHERE course_id = v_course_id) s
         WHERE c.course_id = v_course_id;
        EXIT WHEN TG_OP = 'UPDATE' AND OLD.course_id = NEW.course_id;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER reviews_rating AFTER INSERT OR DELETE OR UPDATE OF rating, course_id ON reviews
    FOR EACH ROW EXECUTE FUNCTION trg_review_rating();

-- enrollment_count counts enrollments that are not cancelled.
CREATE FUNCTION trg_enrollment_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_old integer := CASE WHEN TG_OP <> 'INSERT' AND OLD.status <> 'cancelled' THEN 1 ELSE 0 END;
    v_new integer := CASE WHEN TG_OP <> 'DELETE' AND NEW.status <> 'cancelled' THEN 1 ELSE 0 END;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.course_id <> NEW.course_id THEN
        UPDATE courses SET enrollment_count = enrollment_count - v_old
         WHERE course_id = OLD.course_id;
        UPDATE courses SET enrollment_count = enrollment_count + v_new
         WHERE course_id = NEW.course_id;
    ELSIF v_new <> v_old THEN
        UPDATE courses SET enrollment_count = enrollment_count + v_new - v_old
         WHERE course_id = CASE WHEN TG_OP = 'DELETE' THEN OLD.course_id ELSE NEW.course_id END;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER enrollments_count AFTER INSERT OR DELETE OR UPDATE OF status, course_id
    ON enrollments FOR EACH ROW EXECUTE FUNCTION trg_enrollment_count();

-- ---- invoice numbering ------------------------------------------------------------------

-- Per shard: INV-<shard number>-<year>-<8-digit sequence>, e.g. INV-2-2026-00000042.
CREATE SEQUENCE invoice_number_seq AS bigint START 1;

CREATE FUNCTION trg_invoice_number() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.invoice_number IS NULL THEN
        NEW.invoice_number := format('INV-%s-%s-%s',
            (SELECT number FROM georoute_shard),
            to_char(NEW.issued_at AT TIME ZONE 'UTC', 'YYYY'),
            lpad(nextval('invoice_number_seq')::text, 8, '0'));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER invoices_number BEFORE INSERT ON invoices
    FOR EACH ROW EXECUTE FUNCTION trg_invoice_number();

-- Invoices are legal documents: once issued they never change.
CREATE FUNCTION trg_invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'invoice % is issued and cannot be %d', OLD.invoice_number, lower(TG_OP)
        USING ERRCODE = 'GR011';
END
$$;

CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION trg_invoice_immutable();

-- ---- audit trail ------------------------------------------------------------------------

-- TG_ARGV[0] names the primary key column. Updates record only the columns that changed.
CREATE FUNCTION trg_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_old jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    v_new jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    v_changes jsonb;
BEGIN
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

CREATE TRIGGER users_audit AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION trg_audit_row('user_id');
CREATE TRIGGER courses_audit AFTER INSERT OR UPDATE OF status, price_cents, capacity, title
    OR DELETE ON courses FOR EACH ROW EXECUTE FUNCTION trg_audit_row('course_id');
CREATE TRIGGER enrollments_audit AFTER INSERT OR UPDATE OF status OR DELETE ON enrollments
    FOR EACH ROW EXECUTE FUNCTION trg_audit_row('enrollment_id');
CREATE TRIGGER payments_audit AFTER INSERT OR UPDATE OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION trg_audit_row('payment_id');
CREATE TRIGGER invoices_audit AFTER INSERT ON invoices
    FOR EACH ROW EXECUTE FUNCTION trg_audit_row('invoice_id');
