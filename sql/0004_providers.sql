-- payhook schema, version 4: providers.
--
-- Every stored event says which provider sent it and the provider's ids of
-- the objects it is about (Stripe: payment intent and charge; Adyen:
-- pspReference and originalReference). payload (jsonb) holds the event as
-- a value; payload_raw holds a provider event's bytes exactly as received
-- (jsonb re-spaces and re-orders keys, and Stripe's signature covers the
-- bytes). For an Adyen item it is the item's NotificationRequestItem object
-- as it stood in the signed batch; the item carries its own signature.
-- payhook's own (generic) events leave it NULL: their hot path is unchanged.
--
-- A provider's dispute may name its payment objects instead of the order
-- (Stripe). The consumer resolves it from payment_events.provider_object_ids;
-- one whose payment is not stored yet waits in parked_disputes, written in
-- the consumer's transaction, and is applied in the transaction of the
-- payment event that names one of its objects. Both sides take an advisory
-- lock per object id first, so neither can miss the other. A dispute that
-- waits longer than DISPUTE_PAYMENT_WAIT is dead-lettered by the sweeper.

ALTER TABLE payment_events
    ADD COLUMN provider            text   NOT NULL DEFAULT 'generic',
    ADD COLUMN provider_object_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN payload_raw         text;
-- Partial: payhook's own events name no objects and cost the index nothing.
CREATE INDEX payment_events_objects_idx ON payment_events
    USING gin (provider_object_ids) WHERE provider <> 'generic';

ALTER TABLE chargeback_events
    ADD COLUMN provider            text   NOT NULL DEFAULT 'generic',
    ADD COLUMN provider_object_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN payload_raw         text;

CREATE TABLE parked_disputes (
    provider_event_id text        PRIMARY KEY,
    provider          text        NOT NULL,
    object_ids        text[]      NOT NULL CHECK (cardinality(object_ids) > 0),
    -- The Kafka record (key, and the envelope as the consumer decoded it;
    -- its payload is the provider's bytes as received), so it can be decoded
    -- again when its payment arrives, or dead-lettered whole.
    record_key        text        NOT NULL,
    record_value      text        NOT NULL,
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    parked_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parked_disputes_objects_idx ON parked_disputes USING gin (object_ids);
CREATE INDEX parked_disputes_parked_at_idx ON parked_disputes (parked_at);
