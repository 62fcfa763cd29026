-- 021_invoice_refunds: a refunded payment's invoice says so (the REST API's admin refund,
-- POST /payments/{payment_id}/refund). An issued invoice is a legal document that never
-- changes (003); what it issued stays as it was, and its refund is recorded beside it, once:
-- when, and how much was paid back. refund_payment (002) marks the payment refunded; a
-- trigger records that on its invoice. Refunding again changes nothing (refund_payment
-- returns early, and the trigger fires only on the change of status).

ALTER TABLE invoices
    ADD COLUMN refunded_at    timestamptz,
    ADD COLUMN refunded_cents integer CHECK (refunded_cents >= 0),
    ADD CHECK ((refunded_at IS NULL) = (refunded_cents IS NULL));

-- The one change an issued invoice takes: its refund, recorded once, every other column as
-- it was. A user's move still deletes it (010: it is inserted again on the new shard, whole).
CREATE OR REPLACE FUNCTION trg_invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND georoute_moving() THEN
        RETURN OLD;  -- moved with its user, unchanged
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.refunded_at IS NULL AND NEW.refunded_at IS NOT NULL
       AND to_jsonb(NEW) - 'refunded_at' - 'refunded_cents'
           = to_jsonb(OLD) - 'refunded_at' - 'refunded_cents' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'invoice % is issued and cannot be %d', OLD.invoice_number, lower(TG_OP)
        USING ERRCODE = 'GR011';
END
$$;

CREATE FUNCTION trg_invoice_refunded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE invoices
       SET refunded_at = NEW.refunded_at, refunded_cents = NEW.amount_cents
     WHERE payment_id = NEW.payment_id AND refunded_at IS NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER payments_refund_invoice AFTER UPDATE OF status ON payments
    FOR EACH ROW WHEN (NEW.status = 'refunded' AND OLD.status IS DISTINCT FROM 'refunded')
    EXECUTE FUNCTION trg_invoice_refunded();
