-- 004_indexes: every index names the query that needs it. Primary keys and the UNIQUE
-- constraints of 001 (which also serve lookups) are not repeated here.

-- users
-- API GET /users?role=instructor (admin console lists active instructors/admins).
CREATE INDEX users_role_active_idx ON users (role) WHERE is_active;
-- Analytics: learners per country and city.
CREATE INDEX users_country_city_idx ON users (country, city);
-- Analytics: sign-ups per day; admin console "newest users" page.
CREATE INDEX users_created_at_idx ON users (created_at);
-- Admin search by name prefix (ILIKE 'abc%' via lower()).
CREATE INDEX users_full_name_lower_idx ON users (lower(full_name) text_pattern_ops);

-- user_credentials
-- Security job: accounts currently locked out after failed logins.
CREATE INDEX user_credentials_locked_idx ON user_credentials (locked_until)
    WHERE locked_until IS NOT NULL;

-- user_sessions
-- API GET /users/{id}/sessions (active sessions, newest expiry first); deactivate_user.
CREATE INDEX user_sessions_user_expires_idx ON user_sessions (user_id, expires_at DESC);
-- purge_expired_sessions: live sessions ordered by expiry.
CREATE INDEX user_sessions_expires_idx ON user_sessions (expires_at) WHERE revoked_at IS NULL;
-- purge_expired_sessions: revoked sessions by revocation time.
CREATE INDEX user_sessions_revoked_idx ON user_sessions (revoked_at)
    WHERE revoked_at IS NOT NULL;

-- categories
-- search_catalogue: a category with its children; FK checks when deleting a parent.
CREATE INDEX categories_parent_idx ON categories (parent_id);

-- courses
-- Instructor dashboard: my courses, newest first; FK from courses to users.
CREATE INDEX courses_instructor_created_idx ON courses (instructor_id, created_at DESC);
-- Browse by category (search_catalogue with p_category_slug); FK to categories.
CREATE INDEX courses_category_status_idx ON courses (category_id, status);
-- Catalogue home page: newest published courses.
CREATE INDEX courses_published_at_idx ON courses (published_at DESC) WHERE status = 'published';
-- search_catalogue full-text match on title and description.
CREATE INDEX courses_search_idx ON courses USING gin (search_vector);
-- search_catalogue with p_max_price_cents; "free courses" page (price_cents = 0).
CREATE INDEX courses_price_idx ON courses (price_cents) WHERE status = 'published';
-- Catalogue "top rated" page, search_catalogue tie-break.
CREATE INDEX courses_rating_idx ON courses (rating_avg DESC NULLS LAST, enrollment_count DESC)
    WHERE status = 'published';
-- Catalogue filters by language and level.
CREATE INDEX courses_language_level_idx ON courses (language, level) WHERE status = 'published';
-- Catalogue "most popular" page.
CREATE INDEX courses_popular_idx ON courses (enrollment_count DESC) WHERE status = 'published';
-- Catalogue page by title (case-insensitive prefix) and sorted A-Z listings.
CREATE INDEX courses_title_lower_idx ON courses (lower(title) text_pattern_ops);

-- course_modules: (course_id, position) UNIQUE serves "modules of a course in order".
-- Admin: recently edited modules (content review queue).
CREATE INDEX course_modules_updated_idx ON course_modules (updated_at);

-- lessons: (module_id, position) UNIQUE serves "lessons of a module in order".
-- Public course page: free preview lessons of a module.
CREATE INDEX lessons_preview_idx ON lessons (module_id) WHERE is_preview;
-- Analytics: lessons by length (course duration buckets).
CREATE INDEX lessons_duration_idx ON lessons (duration_seconds);

-- enrollments: (user_id, course_id) UNIQUE serves "is user X enrolled in course Y".
-- Course roster and course_statistics; FK from enrollments to courses; enroll capacity counts.
CREATE INDEX enrollments_course_status_idx ON enrollments (course_id, status);
-- API GET /users/{id}/enrollments ("my courses", most recent first).
CREATE INDEX enrollments_user_enrolled_idx ON enrollments (user_id, enrolled_at DESC);
-- enrollment_statistics: enrollments per day.
CREATE INDEX enrollments_enrolled_at_idx ON enrollments (enrolled_at);
-- enrollment_statistics: completions per day.
CREATE INDEX enrollments_completed_at_idx ON enrollments (completed_at)
    WHERE completed_at IS NOT NULL;
-- enrollment_statistics: cancellations per day.
CREATE INDEX enrollments_cancelled_at_idx ON enrollments (cancelled_at)
    WHERE cancelled_at IS NOT NULL;
-- Billing job: enrollments still awaiting payment, oldest first.
CREATE INDEX enrollments_pending_idx ON enrollments (enrolled_at)
    WHERE status = 'pending_payment';

-- lesson_progress: (enrollment_id, lesson_id) UNIQUE serves complete_lesson's upsert.
-- Analytics: lesson drop-off (completions per lesson); FK from lesson_progress to lessons.
CREATE INDEX lesson_progress_lesson_status_idx ON lesson_progress (lesson_id, status);
-- Progress trigger and course_progress: completed lessons of one enrollment.
CREATE INDEX lesson_progress_completed_idx ON lesson_progress (enrollment_id)
    WHERE status = 'completed';
-- Learner activity feed: recently completed lessons.
CREATE INDEX lesson_progress_completed_at_idx ON lesson_progress (completed_at)
    WHERE completed_at IS NOT NULL;

-- coupons
-- apply_coupon / process_payment look coupons up by code, case-insensitively; codes are
-- unique per shard in that sense.
CREATE UNIQUE INDEX coupons_code_upper_key ON coupons (upper(code));
-- Course page: coupons of a course; FK from coupons to courses.
CREATE INDEX coupons_course_idx ON coupons (course_id) WHERE course_id IS NOT NULL;
-- Marketing job: coupons expiring soon.
CREATE INDEX coupons_valid_until_idx ON coupons (valid_until) WHERE valid_until IS NOT NULL;

-- payments: idempotency_key UNIQUE serves process_payment's replay lookup.
-- "Never charge twice": at most one captured payment per enrollment.
CREATE UNIQUE INDEX payments_one_capture_per_enrollment_key ON payments (enrollment_id)
    WHERE status = 'succeeded';
-- Payment history of an enrollment; course_statistics join; FK to enrollments.
CREATE INDEX payments_enrollment_created_idx ON payments (enrollment_id, created_at DESC);
-- revenue_report: payments in a date range (amount and status read from the index).
CREATE INDEX payments_created_idx ON payments (created_at) INCLUDE (amount_cents, status);
-- apply_coupon: redemptions of a coupon; FK to coupons.
CREATE INDEX payments_coupon_idx ON payments (coupon_id, status) WHERE coupon_id IS NOT NULL;
-- Billing job: payments stuck pending or failed, to retry or notify.
CREATE INDEX payments_unsettled_idx ON payments (status, created_at)
    WHERE status IN ('pending', 'failed');
-- Finance: refunds in a date range.
CREATE INDEX payments_refunded_at_idx ON payments (refunded_at) WHERE refunded_at IS NOT NULL;
-- Support: look a payment up by the provider's reference.
CREATE INDEX payments_provider_ref_idx ON payments (provider_ref) WHERE provider_ref IS NOT NULL;

-- invoices: payment_id and invoice_number UNIQUE serve issue_invoice and lookup by number.
-- Accounting export: invoices issued in a period.
CREATE INDEX invoices_issued_at_idx ON invoices (issued_at);
-- Tax report: invoices per billing country and period.
CREATE INDEX invoices_country_issued_idx ON invoices (billing_country, issued_at);

-- reviews: (user_id, course_id) UNIQUE serves upsert_review and "my review of this course".
-- Course page: newest reviews of a course; rating trigger aggregates by course.
CREATE INDEX reviews_course_created_idx ON reviews (course_id, created_at DESC);
-- Course page: rating distribution (count per star).
CREATE INDEX reviews_course_rating_idx ON reviews (course_id, rating);
-- FK from reviews to enrollments (user_id, course_id) is served by the UNIQUE above; a
-- user's reviews page: newest first.
CREATE INDEX reviews_user_created_idx ON reviews (user_id, created_at DESC);

-- certificates: enrollment_id and serial_number UNIQUE serve issue and public verification.
-- Analytics: certificates issued per month.
CREATE INDEX certificates_issued_at_idx ON certificates (issued_at);

-- audit_log
-- Admin: history of one entity.
CREATE INDEX audit_log_entity_idx ON audit_log (entity, entity_id, occurred_at DESC);
-- Admin: what did this actor do.
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, occurred_at DESC)
    WHERE actor_id IS NOT NULL;
-- Compliance export: a time range of the append-only trail (BRIN: tiny, time-ordered data).
CREATE INDEX audit_log_occurred_brin ON audit_log USING brin (occurred_at);
-- Security review: all events of one action (e.g. user.deactivated) in a period.
CREATE INDEX audit_log_action_idx ON audit_log (action, occurred_at DESC);
