-- payhook schema, version 6: events scoped to their provider, payments of
-- their own, and what an order pins.
--
-- Events are unique per provider: two providers may use the same id text
-- (and a generic signer must not pre-empt a provider's ids). The event order
-- breaks its last tie by provider too (orders.last_provider,
-- disputes.last_provider).
--
-- payments: one row per provider payment (a Stripe payment intent, an Adyen
--   pspReference; for payhook's own events, the order itself). Its status
--   is the greatest of its status events in the event order; its amount and
--   currency come from its first event that carries them; refunded_amount
--   is the sum of payment_refunds, where each refund counts once at the
--   largest amount reported for it. payhook_payment_state says what a
--   payment is; orders.payment_status is derived from an order's payments
--   (domain::orders::order_status, the same rule):
--     succeeded while any payment is succeeded (captured, not fully
--     refunded); else refunded when a payment was captured and every
--     captured one is fully refunded; else pending while any is pending;
--     else failed.
-- orders.user_id, amount, currency: pinned by the first event that carries
--   them (NULL until then: a provider's payment may name no user).
--
-- Existing data: unique constraints are rebuilt on (provider, id) (the old
-- ones held, so the new ones do too). Each existing order becomes one
-- payment, with the order's status, amount and currency: the payment its
-- last event named (a Stripe payment intent; an Adyen payment's
-- pspReference, its originalReference for a modification), or for
-- payhook's own events the order itself, so later events of that payment
-- continue it.

ALTER TABLE payment_events
    DROP CONSTRAINT payment_events_provider_event_id_key,
    ADD CONSTRAINT payment_events_provider_event_key UNIQUE (provider, provider_event_id),
    ALTER COLUMN user_id DROP NOT NULL,
    ALTER COLUMN amount DROP NOT NULL,
    ALTER COLUMN currency DROP NOT NULL,
    ADD COLUMN payment_id text,
    ADD COLUMN refund_key text,
    ADD COLUMN refund_amount bigint;

ALTER TABLE chargeback_events
    DROP CONSTRAINT chargeback_events_provider_event_id_key,
    ADD CONSTRAINT chargeback_events_provider_event_key UNIQUE (provider, provider_event_id);

ALTER TABLE parked_disputes
    DROP CONSTRAINT parked_disputes_pkey,
    ADD PRIMARY KEY (provider, provider_event_id);

ALTER TABLE orders
    ALTER COLUMN user_id DROP NOT NULL,
    ALTER COLUMN amount DROP NOT NULL,
    ALTER COLUMN currency DROP NOT NULL,
    ADD COLUMN last_provider text NOT NULL DEFAULT 'generic';

ALTER TABLE disputes
    ADD COLUMN last_provider text NOT NULL DEFAULT 'generic';

CREATE TABLE payments (
    provider               text        NOT NULL,
    payment_id             text        NOT NULL,
    order_id               text        NOT NULL,
    status                 text        NOT NULL
        CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    amount                 bigint      CHECK (amount >= 0),
    currency               char(3),
    refunded_amount        bigint      NOT NULL DEFAULT 0,
    status_occurred_at     timestamptz NOT NULL,
    last_provider_event_id text        NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, payment_id)
);
CREATE INDEX payments_order_idx ON payments (order_id);

CREATE TABLE payment_refunds (
    provider   text   NOT NULL,
    payment_id text   NOT NULL,
    refund_key text   NOT NULL,
    amount     bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (provider, payment_id, refund_key)
);

CREATE FUNCTION payhook_payment_state(status text, amount bigint, refunded bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status = 'succeeded' AND amount > 0 AND refunded >= amount
                THEN 'refunded' ELSE status END
$$;

WITH last AS (
    SELECT o.*, e.provider, e.provider_object_ids AS ids
      FROM orders o
      LEFT JOIN LATERAL (
          SELECT provider, provider_object_ids FROM payment_events e
           WHERE e.provider_event_id = o.last_provider_event_id AND e.order_id = o.order_id
           ORDER BY e.id LIMIT 1) e ON true
)
INSERT INTO payments (provider, payment_id, order_id, status, amount, currency,
                      status_occurred_at, last_provider_event_id)
SELECT coalesce(provider, 'generic'),
       CASE coalesce(provider, 'generic')
           WHEN 'stripe' THEN coalesce(ids[1], order_id)
           WHEN 'adyen' THEN coalesce(nullif(ids[2], ''), ids[1], order_id)
           ELSE order_id
       END,
       order_id, payment_status, amount, currency, status_occurred_at, last_provider_event_id
  FROM last;
UPDATE orders o SET last_provider = p.provider
  FROM payments p WHERE p.order_id = o.order_id;
