-- payhook schema, version 7: payload retention (PAYLOAD_RETENTION).
--
-- payment_events.payload / payload_raw and chargeback_events.payload /
-- payload_raw hold the provider's whole object (for Stripe and Adyen:
-- billing details, e-mail, card brand and last4, shopper IP...). payhook
-- never reads them back: ordering, pins, disputes and duplicates use the
-- other columns. With PAYLOAD_RETENTION set, a periodic job sets both to
-- NULL on rows stored longer ago than that, and stamps payload_cleared_at.
--
-- The partial indexes hold only rows whose payload is still there, so the
-- job finds the old ones without scanning the table, and a cleared row
-- leaves them.

ALTER TABLE payment_events
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN payload_cleared_at timestamptz;
CREATE INDEX payment_events_payload_kept_idx ON payment_events (stored_at)
    WHERE payload IS NOT NULL;

ALTER TABLE chargeback_events
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN payload_cleared_at timestamptz;
CREATE INDEX chargeback_events_payload_kept_idx ON chargeback_events (stored_at)
    WHERE payload IS NOT NULL;
