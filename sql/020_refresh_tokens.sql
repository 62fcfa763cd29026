-- 020_refresh_tokens: the REST API's rotating refresh tokens (api/domain/auth.py), kept in
-- user_sessions on the user's home shard. A refresh token is "<session_id>.<secret>": the id
-- routes it (a georoute id) and only the SHA-256 of the secret is stored. Each refresh marks
-- the presented session rotated and issues a new one in the same family; presenting a rotated
-- session again means the token was copied, so the whole family is revoked (RFC 9700, 4.14.2).

ALTER TABLE user_sessions
    ADD COLUMN family_id  uuid,
    ADD COLUMN rotated_at timestamptz,
    ADD CHECK (rotated_at IS NULL OR rotated_at >= created_at);

-- revoke_refresh_family and rotate_refresh_token: the live sessions of one family.
CREATE INDEX user_sessions_family_idx ON user_sessions (user_id, family_id)
    WHERE revoked_at IS NULL;

-- A new refresh session for an active user: a new family, or p_family_id's when rotating.
CREATE FUNCTION issue_refresh_token(p_user_id uuid, p_token_hash text, p_ttl_seconds integer,
                                    p_family_id uuid DEFAULT NULL)
RETURNS TABLE (session_id uuid, family_id uuid, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_session_id uuid;
BEGIN
    IF p_ttl_seconds IS NULL OR p_ttl_seconds <= 0 THEN
        RAISE EXCEPTION 'refresh ttl must be positive, got %', p_ttl_seconds
            USING ERRCODE = '22023';
    END IF;
    v_session_id := create_session(p_user_id, p_token_hash, make_interval(secs => p_ttl_seconds));
    UPDATE user_sessions s SET family_id = coalesce(p_family_id, v_session_id)
     WHERE s.session_id = v_session_id;
    RETURN QUERY SELECT s.session_id, s.family_id, s.expires_at
                   FROM user_sessions s WHERE s.session_id = v_session_id;
END
$$;

-- Trade a refresh token for a new one. outcome: 'rotated' (new_session_id and the user's role
-- and region are set), 'invalid' (no such session, or the secret does not match: nothing
-- changes), 'expired', 'revoked', 'inactive' (the user was deactivated), or 'reused' (the
-- session was already rotated: every live session of its family is revoked, and committed).
CREATE FUNCTION rotate_refresh_token(p_session_id uuid, p_token_hash text,
                                     p_new_token_hash text, p_ttl_seconds integer)
RETURNS TABLE (outcome text, user_id uuid, role user_role, home_region text,
               new_session_id uuid, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_session user_sessions%ROWTYPE;
    v_user users%ROWTYPE;
    v_new record;
BEGIN
    SELECT * INTO v_session FROM user_sessions s WHERE s.session_id = p_session_id FOR UPDATE;
    IF NOT FOUND OR v_session.token_hash <> p_token_hash OR v_session.family_id IS NULL THEN
        RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::user_role, NULL::text,
                            NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_session.rotated_at IS NOT NULL THEN
        UPDATE user_sessions s SET revoked_at = now()
         WHERE s.user_id = v_session.user_id AND s.family_id = v_session.family_id
           AND s.revoked_at IS NULL;
        PERFORM record_audit('session.refresh_reused', 'user_sessions', p_session_id,
                             jsonb_build_object('family_id', v_session.family_id),
                             v_session.user_id);
        RETURN QUERY SELECT 'reused'::text, v_session.user_id, NULL::user_role, NULL::text,
                            NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_session.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, v_session.user_id, NULL::user_role, NULL::text,
                            NULL::uuid, NULL::timestamptz;
        RETURN;
    ELSIF v_session.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired'::text, v_session.user_id, NULL::user_role, NULL::text,
                            NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT * INTO v_user FROM users u WHERE u.user_id = v_session.user_id;
    IF NOT v_user.is_active THEN
        RETURN QUERY SELECT 'inactive'::text, v_session.user_id, NULL::user_role, NULL::text,
                            NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE user_sessions s SET rotated_at = now() WHERE s.session_id = p_session_id;
    SELECT * INTO v_new
      FROM issue_refresh_token(v_session.user_id, p_new_token_hash, p_ttl_seconds,
                               v_session.family_id);
    RETURN QUERY SELECT 'rotated'::text, v_user.user_id, v_user.role, v_user.home_region,
                        v_new.session_id, v_new.expires_at;
END
$$;

-- Log out: revoke the presented session's whole family (only with its secret). Returns the
-- number of sessions revoked (0 for an unknown session or a wrong secret).
CREATE FUNCTION revoke_refresh_family(p_session_id uuid, p_token_hash text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_session user_sessions%ROWTYPE;
    v_revoked integer;
BEGIN
    SELECT * INTO v_session FROM user_sessions s WHERE s.session_id = p_session_id;
    IF NOT FOUND OR v_session.token_hash <> p_token_hash OR v_session.family_id IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE user_sessions s SET revoked_at = now()
     WHERE s.user_id = v_session.user_id AND s.family_id = v_session.family_id
       AND s.revoked_at IS NULL;
    GET DIAGNOSTICS v_revoked = ROW_COUNT;
    RETURN v_revoked;
END
$$;
