-- payhook schema, version 2: the event order.
--
-- The state of an order (and of its dispute) is the greatest of the events it
-- received, in a total order that does not depend on arrival:
--   1. occurred_at (microseconds, as stored),
--   2. the status's precedence in its life cycle,
--   3. provider_event_id, byte by byte (COLLATE "C").
-- The Rust side (domain::apply::OrderKey, PaymentStatus::precedence,
-- DisputeStatus::precedence) applies the same rule; a test holds them
-- together. The functions are IMMUTABLE SQL, so the planner inlines them.

CREATE FUNCTION payhook_payment_precedence(status text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'pending'   THEN 0
        WHEN 'failed'    THEN 1
        WHEN 'succeeded' THEN 2
        WHEN 'refunded'  THEN 3
    END
$$;

CREATE FUNCTION payhook_dispute_precedence(status text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'opened' THEN 0
        WHEN 'won'    THEN 1
        WHEN 'lost'   THEN 2
    END
$$;
