-- 026_cancel_paid_enrollment: cancelling an enrollment whose payment was captured is refused.
--
-- Cancelling would keep the money and give nothing for it: such an enrollment is refunded
-- instead (refund_payment, which cancels it itself and records the refund on its invoice).
-- The check is made after the enrollment's row is locked, the lock process_payment takes
-- first: a payment and a cancellation of one enrollment queue there, so a cancellation never
-- slips in beside a payment being captured, nor a payment after a cancellation (the
-- cancelled enrollment no longer awaits payment: GR012).
--
-- Otherwise cancel_enrollment is unchanged (sql/009): a missing enrollment is P0002, a
-- completed one GR011, a cancelled one is answered unchanged, a remote one needs
-- p_remote_seat_released (GR014).
--
-- SQLSTATEs added: GR017 the enrollment has a captured payment (refund it instead).

CREATE OR REPLACE FUNCTION cancel_enrollment(p_enrollment_id uuid,
                                             p_remote_seat_released boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_enrollment enrollments%ROWTYPE;
    v_payment_id uuid;
BEGIN
    SELECT * INTO v_enrollment FROM enrollments WHERE enrollment_id = p_enrollment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'enrollment % does not exist', p_enrollment_id USING ERRCODE = 'P0002';
    ELSIF v_enrollment.status = 'completed' THEN
        RAISE EXCEPTION 'enrollment % is completed and cannot be cancelled', p_enrollment_id
            USING ERRCODE = 'GR011';
    ELSIF v_enrollment.status = 'cancelled' THEN
        RETURN;
    END IF;
    SELECT payment_id INTO v_payment_id FROM payments
     WHERE enrollment_id = p_enrollment_id AND status = 'succeeded'
     ORDER BY created_at, payment_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'enrollment % is paid (payment %): refund the payment instead, which '
                        'cancels the enrollment', p_enrollment_id, v_payment_id
            USING ERRCODE = 'GR017';
    END IF;
    IF v_enrollment.course_lesson_ids IS NOT NULL AND NOT p_remote_seat_released THEN
        RAISE EXCEPTION 'enrollment % holds a seat of course % on another shard: release it '
                        'there (release_remote_seat) in the same transaction',
            p_enrollment_id, v_enrollment.course_id USING ERRCODE = 'GR014';
    END IF;
    UPDATE enrollments SET status = 'cancelled', cancelled_at = now()
     WHERE enrollment_id = p_enrollment_id;
END
$$;
