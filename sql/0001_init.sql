-- payhook schema, version 1.
--
-- Events are recorded once each (UNIQUE provider_event_id: a duplicate is a
-- success that changes nothing). Orders and disputes hold the latest state by
-- occurred_at, so a late, older event never moves them backwards.
-- consumer_offsets is written in the same transaction as the effects, which is
-- what makes consumption exactly-once.

CREATE TABLE orders (
    order_id               text        PRIMARY KEY,
    user_id                text        NOT NULL,
    payment_status         text        NOT NULL
        CHECK (payment_status IN ('pending', 'succeeded', 'failed', 'refunded')),
    amount                 bigint      NOT NULL CHECK (amount >= 0),
    currency               char(3)     NOT NULL,
    status_occurred_at     timestamptz NOT NULL,
    last_provider_event_id text        NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment_events (
    id                bigserial   PRIMARY KEY,
    provider_event_id text        NOT NULL UNIQUE,
    event_id          uuid        NOT NULL,
    order_id          text        NOT NULL,
    user_id           text        NOT NULL,
    status            text        NOT NULL,
    amount            bigint      NOT NULL,
    currency          char(3)     NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb       NOT NULL,
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    stored_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_events_order_idx ON payment_events (order_id, id);

CREATE TABLE disputes (
    order_id               text        PRIMARY KEY,
    status                 text        NOT NULL CHECK (status IN ('opened', 'won', 'lost')),
    reason                 text,
    amount                 bigint      NOT NULL CHECK (amount >= 0),
    currency               char(3)     NOT NULL,
    status_occurred_at     timestamptz NOT NULL,
    last_provider_event_id text        NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chargeback_events (
    id                bigserial   PRIMARY KEY,
    provider_event_id text        NOT NULL UNIQUE,
    event_id          uuid        NOT NULL,
    order_id          text        NOT NULL,
    status            text        NOT NULL,
    reason            text,
    amount            bigint      NOT NULL,
    currency          char(3)     NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb       NOT NULL,
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    stored_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chargeback_events_order_idx ON chargeback_events (order_id, id);

CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
