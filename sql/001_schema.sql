-- 001_schema: the e-learning schema, identical on every shard.
--
-- Data residency: a user lives on their home region's shard; a course is published in the
-- catalogue of the shard it is created on; a user enrolls only in courses of their home
-- region's catalogue. So enrollments, progress, payments, invoices, reviews and certificates
-- always sit beside both their user and their course, and every foreign key stays inside one
-- shard. `categories` is a reference table: the same rows (same ids) on every shard.
--
-- Normal form: every table is in 3NF. Three columns are maintained caches of aggregates
-- (courses.enrollment_count, courses.rating_avg/review_count, enrollments.progress_pct); they
-- are written only by triggers (003) and recomputed from source rows by
-- recalculate_aggregates(), so they can never be the only copy of a fact.
-- The one-row table georoute_shard and schema_migrations are created by `georoute db migrate`.

CREATE TYPE user_role AS ENUM ('student', 'instructor', 'admin');
CREATE TYPE course_level AS ENUM ('beginner', 'intermediate', 'advanced');
CREATE TYPE course_status AS ENUM ('draft', 'published', 'archived');
CREATE TYPE enrollment_status AS ENUM ('pending_payment', 'active', 'completed', 'cancelled');
CREATE TYPE progress_status AS ENUM ('started', 'completed');
CREATE TYPE payment_status AS ENUM ('pending', 'succeeded', 'failed', 'refunded');

-- georoute_id(): a UUIDv8 carrying the shard number in byte 7 (see README, "Ids").
-- bytes 0-5 unix ms big-endian | byte 6 = 0x80 | 4 random bits | byte 7 = shard number |
-- byte 8 = 0x80 | 6 random bits | bytes 9-15 random.
CREATE FUNCTION georoute_id() RETURNS uuid
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
DECLARE
    shard_number smallint;
    unix_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    random_bytes bytea := uuid_send(gen_random_uuid());  -- byte 8 already has variant 10xxxxxx
    id_bytes bytea;
BEGIN
    SELECT number INTO shard_number FROM georoute_shard;
    IF shard_number IS NULL THEN
        RAISE EXCEPTION 'georoute_shard is not set on this node'
            USING ERRCODE = 'GR000', HINT = 'run `georoute db migrate`';
    END IF;
    id_bytes := substr(int8send(unix_ms), 3, 6) || substr(random_bytes, 7, 10);
    id_bytes := set_byte(id_bytes, 6, 128 | (get_byte(random_bytes, 6) & 15));
    id_bytes := set_byte(id_bytes, 7, shard_number);
    RETURN encode(id_bytes, 'hex')::uuid;
END
$$;

-- The shard number an id was minted on, or NULL when the id is not a georoute (v8) id.
CREATE FUNCTION georoute_shard_of(id uuid) RETURNS smallint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    id_bytes bytea := uuid_send(id);
BEGIN
    IF get_byte(id_bytes, 6) >> 4 = 8 THEN
        RETURN get_byte(id_bytes, 7)::smallint;
    END IF;
    RETURN NULL;
END
$$;

-- This shard's region name (the row `georoute db migrate` writes).
CREATE FUNCTION georoute_region() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    region text;
BEGIN
    SELECT name INTO region FROM georoute_shard;
    IF region IS NULL THEN
        RAISE EXCEPTION 'georoute_shard is not set on this node'
            USING ERRCODE = 'GR000', HINT = 'run `georoute db migrate`';
    END IF;
    RETURN region;
END
$$;

CREATE TABLE users (
    user_id        uuid PRIMARY KEY DEFAULT georoute_id(),
    email          text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
    full_name      text NOT NULL CHECK (length(btrim(full_name)) > 0),
    role           user_role NOT NULL DEFAULT 'student',
    home_region    text NOT NULL CHECK (home_region IN ('north_america', 'europe', 'asia')),
    country        char(2) NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    city           text NOT NULL,
    is_active      boolean NOT NULL DEFAULT true,
    deactivated_at timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (is_active = (deactivated_at IS NULL))
);
-- Emails are unique case-insensitively (login looks them up with lower()).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE user_credentials (
    -- 1:1 with users, so the key is the user's own id (no default of its own).
    user_id          uuid PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    password_hash    text NOT NULL CHECK (length(password_hash) >= 20),
    hash_algorithm   text NOT NULL DEFAULT 'argon2id'
                     CHECK (hash_algorithm IN ('argon2id', 'bcrypt', 'scrypt')),
    failed_attempts  integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    locked_until     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_sessions (
    session_id  uuid PRIMARY KEY DEFAULT georoute_id(),
    user_id     uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    token_hash  text NOT NULL UNIQUE,
    ip_address  inet,
    user_agent  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK (expires_at > created_at),
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);

-- Reference table: seeded with the same ids on every shard.
CREATE TABLE categories (
    category_id uuid PRIMARY KEY DEFAULT georoute_id(),
    parent_id   uuid REFERENCES categories (category_id) ON DELETE RESTRICT,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    name        text NOT NULL,
    CHECK (parent_id IS DISTINCT FROM category_id)
);

CREATE TABLE courses (
    course_id        uuid PRIMARY KEY DEFAULT georoute_id(),
    instructor_id    uuid NOT NULL REFERENCES users (user_id) ON DELETE RESTRICT,
    category_id      uuid NOT NULL REFERENCES categories (category_id) ON DELETE RESTRICT,
    region           text NOT NULL DEFAULT georoute_region()
                     CHECK (region IN ('north_america', 'europe', 'asia')),
    slug             text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    title            text NOT NULL CHECK (length(btrim(title)) > 0),
    description      text NOT NULL DEFAULT '',
    language         char(2) NOT NULL DEFAULT 'en' CHECK (language ~ '^[a-z]{2}$'),
    level            course_level NOT NULL DEFAULT 'beginner',
    price_cents      integer NOT NULL CHECK (price_cents >= 0),
    currency         char(3) NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    capacity         integer CHECK (capacity IS NULL OR capacity > 0),
    status           course_status NOT NULL DEFAULT 'draft',
    published_at     timestamptz,
    enrollment_count integer NOT NULL DEFAULT 0 CHECK (enrollment_count >= 0),
    rating_avg       numeric(3, 2) CHECK (rating_avg IS NULL OR rating_avg BETWEEN 1 AND 5),
    review_count     integer NOT NULL DEFAULT 0 CHECK (review_count >= 0),
    search_vector    tsvector GENERATED ALWAYS AS (
                         to_tsvector('simple', title || ' ' || description)) STORED,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'draft') = (published_at IS NULL)),
    CHECK ((review_count = 0) = (rating_avg IS NULL))
);

CREATE TABLE course_modules (
    module_id  uuid PRIMARY KEY DEFAULT georoute_id(),
    course_id  uuid NOT NULL REFERENCES courses (course_id) ON DELETE CASCADE,
    position   integer NOT NULL CHECK (position > 0),
    title      text NOT NULL CHECK (length(btrim(title)) > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (course_id, position) DEFERRABLE INITIALLY IMMEDIATE
);

CREATE TABLE lessons (
    lesson_id        uuid PRIMARY KEY DEFAULT georoute_id(),
    module_id        uuid NOT NULL REFERENCES course_modules (module_id) ON DELETE CASCADE,
    position         integer NOT NULL CHECK (position > 0),
    title            text NOT NULL CHECK (length(btrim(title)) > 0),
    duration_seconds integer NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
    is_preview       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (module_id, position) DEFERRABLE INITIALLY IMMEDIATE
);

CREATE TABLE enrollments (
    enrollment_id uuid PRIMARY KEY DEFAULT georoute_id(),
    user_id       uuid NOT NULL REFERENCES users (user_id) ON DELETE RESTRICT,
    course_id     uuid NOT NULL REFERENCES courses (course_id) ON DELETE RESTRICT,
    status        enrollment_status NOT NULL DEFAULT 'active',
    progress_pct  numeric(5, 2) NOT NULL DEFAULT 0 CHECK (progress_pct BETWEEN 0 AND 100),
    enrolled_at   timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    cancelled_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, course_id),
    CHECK ((status = 'completed') = (completed_at IS NOT NULL)),
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);

CREATE TABLE lesson_progress (
    progress_id    uuid PRIMARY KEY DEFAULT georoute_id(),
    enrollment_id  uuid NOT NULL REFERENCES enrollments (enrollment_id) ON DELETE CASCADE,
    lesson_id      uuid NOT NULL REFERENCES lessons (lesson_id) ON DELETE CASCADE,
    status         progress_status NOT NULL DEFAULT 'started',
    seconds_spent  integer NOT NULL DEFAULT 0 CHECK (seconds_spent >= 0),
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enrollment_id, lesson_id),
    CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);

CREATE TABLE coupons (
    coupon_id        uuid PRIMARY KEY DEFAULT georoute_id(),
    course_id        uuid REFERENCES courses (course_id) ON DELETE CASCADE,  -- NULL: any course
    code             text NOT NULL CHECK (code ~ '^[A-Za-z0-9_-]{3,32}$'),
    percent_off      integer CHECK (percent_off BETWEEN 1 AND 100),
    amount_off_cents integer CHECK (amount_off_cents > 0),
    max_redemptions  integer CHECK (max_redemptions IS NULL OR max_redemptions > 0),
    valid_from       timestamptz NOT NULL DEFAULT now(),
    valid_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((percent_off IS NULL) <> (amount_off_cents IS NULL)),
    CHECK (valid_until IS NULL OR valid_until > valid_from)
);

CREATE TABLE payments (
    payment_id      uuid PRIMARY KEY DEFAULT georoute_id(),
    enrollment_id   uuid NOT NULL REFERENCES enrollments (enrollment_id) ON DELETE RESTRICT,
    coupon_id       uuid REFERENCES coupons (coupon_id) ON DELETE RESTRICT,
    idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 8 AND 200),
    amount_cents    integer NOT NULL CHECK (amount_cents >= 0),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          payment_status NOT NULL DEFAULT 'pending',
    provider_ref    text,
    refund_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    refunded_at     timestamptz,
    CHECK ((status = 'refunded') = (refunded_at IS NOT NULL))
);

CREATE TABLE invoices (
    invoice_id     uuid PRIMARY KEY DEFAULT georoute_id(),
    payment_id     uuid NOT NULL UNIQUE REFERENCES payments (payment_id) ON DELETE RESTRICT,
    invoice_number text NOT NULL UNIQUE,  -- assigned by trigger invoices_number (003)
    billing_name   text NOT NULL,
    billing_country char(2) NOT NULL CHECK (billing_country ~ '^[A-Z]{2}$'),
    -- A legal snapshot at issue time, not a copy of the payment: amounts never change after.
    subtotal_cents integer NOT NULL CHECK (subtotal_cents >= 0),
    tax_cents      integer NOT NULL CHECK (tax_cents >= 0),
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    issued_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reviews (
    review_id  uuid PRIMARY KEY DEFAULT georoute_id(),
    user_id    uuid NOT NULL,
    course_id  uuid NOT NULL,
    rating     smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, course_id),
    -- Only enrolled users review: the pair must be an enrollment on this shard.
    FOREIGN KEY (user_id, course_id) REFERENCES enrollments (user_id, course_id)
        ON DELETE CASCADE
);

CREATE TABLE certificates (
    certificate_id uuid PRIMARY KEY DEFAULT georoute_id(),
    enrollment_id  uuid NOT NULL UNIQUE REFERENCES enrollments (enrollment_id) ON DELETE RESTRICT,
    serial_number  text NOT NULL UNIQUE,
    issued_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    audit_id    uuid PRIMARY KEY DEFAULT georoute_id(),
    region      text NOT NULL DEFAULT georoute_region(),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor_id    uuid,          -- no FK: the trail outlives the users it mentions
    action      text NOT NULL CHECK (length(action) > 0),
    entity      text NOT NULL,
    entity_id   uuid,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
