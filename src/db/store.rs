//! The domain's storage traits over one Postgres transaction.
//!
//! An order (or dispute) row moves only to an event that is later in the
//! event order (`domain::apply`): the `WHERE` of the two `advance`
//! statements compares `(occurred_at, precedence, provider_event_id)` rows,
//! with the precedence functions of `sql/0002_event_order.sql` and byte
//! order for the id.
//!
//! Each call is one set-based statement over arrays (`unnest`), so a batch of
//! a thousand events costs a handful of round trips, not a thousand. The
//! statements are prepared once per pooled connection (`prepare_cached`), not
//! parsed and planned again for every batch.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::DbError;
use crate::domain::{
    apply::EventStore,
    disputes::ChargebackEvent,
    orders::{PaymentEvent, SourcePosition},
    types::{Origin, ProviderEventId},
};

/// Storage over an open transaction on a pooled connection; the caller
/// commits.
pub struct PgStore<'a, 't> {
    tx: &'a Transaction<'t>,
}

impl std::fmt::Debug for PgStore<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl<'a, 't> PgStore<'a, 't> {
    pub fn new(tx: &'a Transaction<'t>) -> Self {
        Self { tx }
    }
}

fn ids(rows: Vec<tokio_postgres::Row>) -> Result<Vec<ProviderEventId>, DbError> {
    // The ids came from validated events; a row we cannot read back would be
    // a schema bug, so it is reported rather than skipped.
    rows.iter()
        .map(|r| {
            let s: &str = r.get(0);
            ProviderEventId::parse(s).map_err(|e| DbError::Build(e.to_string()))
        })
        .collect()
}

const INSERT_PAYMENTS: &str = "
INSERT INTO payment_events (provider_event_id, event_id, order_id, user_id, status, amount,
                            currency, occurred_at, payload, kafka_topic, kafka_partition,
                            kafka_offset, provider, provider_object_ids,
                            payload_raw)
SELECT p, e, o, u, s, a, c, t, j::jsonb, tp, pa, k, pr,
       ARRAY(SELECT jsonb_array_elements_text(ids::jsonb)),
       CASE WHEN pr = 'generic' THEN NULL ELSE j END
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[],
            $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::int4[], $12::int8[],
            $13::text[], $14::text[])
     AS x(p, e, o, u, s, a, c, t, j, tp, pa, k, pr, ids)
ON CONFLICT (provider_event_id) DO NOTHING
RETURNING provider_event_id";

const ADVANCE_ORDERS: &str = r#"
INSERT INTO orders AS cur (order_id, user_id, payment_status, amount, currency,
                           status_occurred_at, last_provider_event_id)
SELECT o, u, s, a, c, t, p
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
            $6::timestamptz[], $7::text[]) AS x(o, u, s, a, c, t, p)
ON CONFLICT (order_id) DO UPDATE
   SET user_id = EXCLUDED.user_id,
       payment_status = EXCLUDED.payment_status,
       amount = EXCLUDED.amount,
       currency = EXCLUDED.currency,
       status_occurred_at = EXCLUDED.status_occurred_at,
       last_provider_event_id = EXCLUDED.last_provider_event_id,
       updated_at = now()
 WHERE (EXCLUDED.status_occurred_at,
        payhook_payment_precedence(EXCLUDED.payment_status),
        EXCLUDED.last_provider_event_id COLLATE "C")
     > (cur.status_occurred_at,
        payhook_payment_precedence(cur.payment_status),
        cur.last_provider_event_id COLLATE "C")"#;

const INSERT_CHARGEBACKS: &str = "
INSERT INTO chargeback_events (provider_event_id, event_id, order_id, status, reason, amount,
                               currency, occurred_at, payload, kafka_topic, kafka_partition,
                               kafka_offset, provider, provider_object_ids,
                            payload_raw)
SELECT p, e, o, s, r, a, c, t, j::jsonb, tp, pa, k, pr,
       ARRAY(SELECT jsonb_array_elements_text(ids::jsonb)),
       CASE WHEN pr = 'generic' THEN NULL ELSE j END
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[],
            $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::int4[], $12::int8[],
            $13::text[], $14::text[])
     AS x(p, e, o, s, r, a, c, t, j, tp, pa, k, pr, ids)
ON CONFLICT (provider_event_id) DO NOTHING
RETURNING provider_event_id";

const ADVANCE_DISPUTES: &str = r#"
INSERT INTO disputes AS cur (order_id, status, reason, amount, currency, status_occurred_at,
                             last_provider_event_id)
SELECT o, s, r, a, c, t, p
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
            $6::timestamptz[], $7::text[]) AS x(o, s, r, a, c, t, p)
ON CONFLICT (order_id) DO UPDATE
   SET status = EXCLUDED.status,
       reason = EXCLUDED.reason,
       amount = EXCLUDED.amount,
       currency = EXCLUDED.currency,
       status_occurred_at = EXCLUDED.status_occurred_at,
       last_provider_event_id = EXCLUDED.last_provider_event_id,
       updated_at = now()
 WHERE (EXCLUDED.status_occurred_at,
        payhook_dispute_precedence(EXCLUDED.status),
        EXCLUDED.last_provider_event_id COLLATE "C")
     > (cur.status_occurred_at,
        payhook_dispute_precedence(cur.status),
        cur.last_provider_event_id COLLATE "C")"#;

/// The columns both kinds of event have, borrowed from one event.
struct Common<'e> {
    provider_event_id: &'e str,
    event_id: Uuid,
    order_id: &'e str,
    status: &'static str,
    amount: i64,
    currency: &'e str,
    occurred_at: DateTime<Utc>,
    payload: &'e str,
    source: &'e SourcePosition,
    origin: &'e Origin,
}

impl<'e> From<&'e PaymentEvent> for Common<'e> {
    fn from(e: &'e PaymentEvent) -> Self {
        let w = &e.webhook;
        Self {
            provider_event_id: w.provider_event_id.as_str(),
            event_id: e.event_id,
            order_id: w.order_id.as_str(),
            status: w.status.as_str(),
            amount: w.amount.minor_units(),
            currency: w.currency.as_str(),
            occurred_at: w.occurred_at.as_datetime(),
            payload: &e.payload,
            source: &e.source,
            origin: &e.origin,
        }
    }
}

impl<'e> From<&'e ChargebackEvent> for Common<'e> {
    fn from(e: &'e ChargebackEvent) -> Self {
        let w = &e.webhook;
        Self {
            provider_event_id: w.provider_event_id.as_str(),
            event_id: e.event_id,
            order_id: w.order_id.as_str(),
            status: w.status.as_str(),
            amount: w.amount.minor_units(),
            currency: w.currency.as_str(),
            occurred_at: w.occurred_at.as_datetime(),
            payload: &e.payload,
            source: &e.source,
            origin: &e.origin,
        }
    }
}

/// [`Common`] columns of a batch, gathered as arrays. Text columns borrow
/// from the events: nothing is copied before it is encoded.
struct Columns<'e> {
    provider_event_id: Vec<&'e str>,
    event_id: Vec<Uuid>,
    order_id: Vec<&'e str>,
    status: Vec<&'static str>,
    amount: Vec<i64>,
    currency: Vec<&'e str>,
    occurred_at: Vec<DateTime<Utc>>,
    payload: Vec<&'e str>,
    /// Where each event was read: a transaction can hold several
    /// partitions' events (the consumer's committer), and a released dispute
    /// keeps the position it was read at.
    topic: Vec<&'e str>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    provider: Vec<&'e str>,
    /// Each event's object ids as a JSON array (arrays of arrays cannot be
    /// ragged in Postgres).
    object_ids: Vec<String>,
}

impl<'e> Columns<'e> {
    fn of<E>(events: &[&'e E]) -> Self
    where
        &'e E: Into<Common<'e>>,
    {
        let n = events.len();
        let mut c = Self {
            provider_event_id: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            order_id: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            amount: Vec::with_capacity(n),
            currency: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            topic: Vec::with_capacity(n),
            partition: Vec::with_capacity(n),
            offset: Vec::with_capacity(n),
            provider: Vec::with_capacity(n),
            object_ids: Vec::with_capacity(n),
        };
        for &e in events {
            let r: Common<'e> = e.into();
            c.provider_event_id.push(r.provider_event_id);
            c.event_id.push(r.event_id);
            c.order_id.push(r.order_id);
            c.status.push(r.status);
            c.amount.push(r.amount);
            c.currency.push(r.currency);
            c.occurred_at.push(r.occurred_at);
            c.payload.push(r.payload);
            c.topic.push(&r.source.topic);
            c.partition.push(r.source.partition);
            c.offset.push(r.source.offset);
            c.provider.push(&r.origin.provider);
            c.object_ids.push(
                serde_json::to_string(&r.origin.object_ids).expect("strings always serialize"),
            );
        }
        c
    }
}

impl EventStore<PaymentEvent> for PgStore<'_, '_> {
    type Error = DbError;

    async fn insert_new(
        &mut self,
        events: &[&PaymentEvent],
    ) -> Result<Vec<ProviderEventId>, DbError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let c = Columns::of(events);
        let user_id: Vec<&str> = events.iter().map(|e| e.webhook.user_id.as_str()).collect();
        let stmt = self.tx.prepare_cached(INSERT_PAYMENTS).await?;
        let rows = self
            .tx
            .query(
                &stmt,
                &[
                    &c.provider_event_id,
                    &c.event_id,
                    &c.order_id,
                    &user_id,
                    &c.status,
                    &c.amount,
                    &c.currency,
                    &c.occurred_at,
                    &c.payload,
                    &c.topic,
                    &c.partition,
                    &c.offset,
                    &c.provider,
                    &c.object_ids,
                ],
            )
            .await?;
        ids(rows)
    }

    async fn advance(&mut self, latest: &[&PaymentEvent]) -> Result<u64, DbError> {
        let c = Columns::of(latest);
        let user_id: Vec<&str> = latest.iter().map(|e| e.webhook.user_id.as_str()).collect();
        let stmt = self.tx.prepare_cached(ADVANCE_ORDERS).await?;
        Ok(self
            .tx
            .execute(
                &stmt,
                &[
                    &c.order_id,
                    &user_id,
                    &c.status,
                    &c.amount,
                    &c.currency,
                    &c.occurred_at,
                    &c.provider_event_id,
                ],
            )
            .await?)
    }
}

fn reason_of(e: &ChargebackEvent) -> Option<&str> {
    e.webhook.reason.as_ref().map(|r| r.as_str())
}

impl EventStore<ChargebackEvent> for PgStore<'_, '_> {
    type Error = DbError;

    async fn insert_new(
        &mut self,
        events: &[&ChargebackEvent],
    ) -> Result<Vec<ProviderEventId>, DbError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let c = Columns::of(events);
        let reason: Vec<Option<&str>> = events.iter().map(|e| reason_of(e)).collect();
        let stmt = self.tx.prepare_cached(INSERT_CHARGEBACKS).await?;
        let rows = self
            .tx
            .query(
                &stmt,
                &[
                    &c.provider_event_id,
                    &c.event_id,
                    &c.order_id,
                    &c.status,
                    &reason,
                    &c.amount,
                    &c.currency,
                    &c.occurred_at,
                    &c.payload,
                    &c.topic,
                    &c.partition,
                    &c.offset,
                    &c.provider,
                    &c.object_ids,
                ],
            )
            .await?;
        ids(rows)
    }

    async fn advance(&mut self, latest: &[&ChargebackEvent]) -> Result<u64, DbError> {
        let c = Columns::of(latest);
        let reason: Vec<Option<&str>> = latest.iter().map(|e| reason_of(e)).collect();
        let stmt = self.tx.prepare_cached(ADVANCE_DISPUTES).await?;
        Ok(self
            .tx
            .execute(
                &stmt,
                &[
                    &c.order_id,
                    &c.status,
                    &reason,
                    &c.amount,
                    &c.currency,
                    &c.occurred_at,
                    &c.provider_event_id,
                ],
            )
            .await?)
    }
}
