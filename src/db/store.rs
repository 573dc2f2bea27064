//! The domain's storage traits over one Postgres transaction.
//!
//! A payment (or dispute) row moves only to an event that is later in the
//! event order (`domain::apply`): the statements compare `(occurred_at,
//! precedence, provider_event_id, provider)` rows, with the precedence
//! functions of `sql/0002_event_order.sql` and byte order for the texts.
//! An order's payment status is derived from its payments in SQL by the
//! rule of `domain::orders` (`payhook_payment_state`,
//! `sql/0006_scoped_payments.sql`); `tests/it/event_order.rs` holds the two
//! sides together.
//!
//! Each call is one set-based statement over arrays (`unnest`), so a batch of
//! a thousand events costs a handful of round trips, not a thousand. The
//! statements are prepared once per pooled connection (`prepare_cached`), not
//! parsed and planned again for every batch.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use std::collections::HashMap;

use super::DbError;
use crate::domain::{
    apply::{EventRef, EventStore},
    disputes::ChargebackEvent,
    orders::{PaymentAdvance, PaymentEvent, PaymentStore, Pins, Settle, SourcePosition},
    types::Origin,
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

/// `(provider, provider_event_id)` rows, as returned by the inserts.
fn refs(rows: Vec<tokio_postgres::Row>) -> Vec<EventRef> {
    rows.iter()
        .map(|r| EventRef {
            provider: r.get(0),
            provider_event_id: r.get(1),
        })
        .collect()
}

/// The payment rows of `sql/0002` and `sql/0006` compare events by this
/// row, in SQL as `domain::apply::OrderKey` does in Rust.
macro_rules! newer {
    ($new:literal, $cur:literal) => {
        concat!(
            "(",
            $new,
            ".status_occurred_at, payhook_payment_precedence(",
            $new,
            ".status), ",
            $new,
            ".last_provider_event_id COLLATE \"C\") > (",
            $cur,
            ".status_occurred_at, ",
            "payhook_payment_precedence(",
            $cur,
            ".status), ",
            $cur,
            ".last_provider_event_id COLLATE \"C\")"
        )
    };
}

const INSERT_PAYMENTS: &str = "
INSERT INTO payment_events (provider_event_id, event_id, order_id, user_id, status, amount,
                            currency, occurred_at, payload, kafka_topic, kafka_partition,
                            kafka_offset, provider, provider_object_ids,
                            payload_raw, payment_id, refund_key, refund_amount)
SELECT p, e, o, u, s, a, c, t, j::jsonb, tp, pa, k, pr,
       ARRAY(SELECT jsonb_array_elements_text(ids::jsonb)),
       CASE WHEN pr = 'generic' THEN NULL ELSE j END, pid, rk, ra
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[],
            $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::int4[], $12::int8[],
            $13::text[], $14::text[], $15::text[], $16::text[], $17::int8[])
     AS x(p, e, o, u, s, a, c, t, j, tp, pa, k, pr, ids, pid, rk, ra)
ON CONFLICT (provider, provider_event_id) DO NOTHING
RETURNING provider, provider_event_id";

const PINS: &str = "
SELECT order_id, user_id, amount, currency::text FROM orders WHERE order_id = ANY($1::text[])";

/// Each payment to its event, unless it holds a later one; its amount and
/// currency where unset. A row changes only when one of these does.
const ADVANCE_PAYMENTS: &str = concat!(
    "
INSERT INTO payments AS cur (provider, payment_id, order_id, status, amount, currency,
                             status_occurred_at, last_provider_event_id)
SELECT pr, pid, o, s, a, c, t, p
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[],
            $7::timestamptz[], $8::text[]) AS x(pr, pid, o, s, a, c, t, p)
ON CONFLICT (provider, payment_id) DO UPDATE
   SET amount = coalesce(cur.amount, EXCLUDED.amount),
       currency = coalesce(cur.currency, EXCLUDED.currency),
       status = CASE WHEN ",
    newer!("EXCLUDED", "cur"),
    " THEN EXCLUDED.status ELSE cur.status END,
       status_occurred_at = CASE WHEN ",
    newer!("EXCLUDED", "cur"),
    " THEN EXCLUDED.status_occurred_at ELSE cur.status_occurred_at END,
       last_provider_event_id = CASE WHEN ",
    newer!("EXCLUDED", "cur"),
    " THEN EXCLUDED.last_provider_event_id ELSE cur.last_provider_event_id END,
       updated_at = now()
 WHERE ",
    newer!("EXCLUDED", "cur"),
    "
    OR (cur.amount IS NULL AND EXCLUDED.amount IS NOT NULL)
    OR (cur.currency IS NULL AND EXCLUDED.currency IS NOT NULL)"
);

/// Each refund at the largest amount reported (one row per key per call).
const ADD_REFUNDS: &str = "
INSERT INTO payment_refunds AS cur (provider, payment_id, refund_key, amount)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
ON CONFLICT (provider, payment_id, refund_key)
DO UPDATE SET amount = greatest(cur.amount, EXCLUDED.amount)";

/// The payments' refunded amounts, brought up to date.
const SUM_REFUNDS: &str = "
UPDATE payments p
   SET refunded_amount = (SELECT coalesce(sum(f.amount), 0) FROM payment_refunds f
                           WHERE f.provider = p.provider AND f.payment_id = p.payment_id),
       updated_at = now()
 WHERE (p.provider, p.payment_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

/// Each order: pinned facts where unset, and the payment status, instant
/// and last event derived from its payments (`domain::orders`).
const SETTLE_ORDERS: &str = r#"
WITH x AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS x(o, u, a, c)
), q AS (
    SELECT p.*, payhook_payment_state(p.status, p.amount, p.refunded_amount) AS st
      FROM payments p WHERE p.order_id IN (SELECT o FROM x)
), d AS (
    SELECT order_id,
           CASE WHEN bool_or(st = 'succeeded') THEN 'succeeded'
                WHEN bool_or(st = 'refunded') THEN 'refunded'
                WHEN bool_or(st = 'pending') THEN 'pending'
                ELSE 'failed' END AS status
      FROM q GROUP BY order_id
), l AS (
    SELECT DISTINCT ON (order_id) order_id, status_occurred_at, last_provider_event_id, provider
      FROM q
     ORDER BY order_id, status_occurred_at DESC, payhook_payment_precedence(status) DESC,
              last_provider_event_id COLLATE "C" DESC, provider COLLATE "C" DESC
)
INSERT INTO orders AS cur (order_id, user_id, payment_status, amount, currency,
                           status_occurred_at, last_provider_event_id, last_provider)
SELECT x.o, x.u, d.status, x.a, x.c, l.status_occurred_at, l.last_provider_event_id, l.provider
  FROM x JOIN d ON d.order_id = x.o JOIN l ON l.order_id = x.o
ON CONFLICT (order_id) DO UPDATE
   SET user_id = coalesce(cur.user_id, EXCLUDED.user_id),
       amount = coalesce(cur.amount, EXCLUDED.amount),
       currency = coalesce(cur.currency, EXCLUDED.currency),
       payment_status = EXCLUDED.payment_status,
       status_occurred_at = EXCLUDED.status_occurred_at,
       last_provider_event_id = EXCLUDED.last_provider_event_id,
       last_provider = EXCLUDED.last_provider,
       updated_at = now()"#;

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
ON CONFLICT (provider, provider_event_id) DO NOTHING
RETURNING provider, provider_event_id";

const ADVANCE_DISPUTES: &str = r#"
INSERT INTO disputes AS cur (order_id, status, reason, amount, currency, status_occurred_at,
                             last_provider_event_id, last_provider)
SELECT o, s, r, a, c, t, p, pr
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
            $6::timestamptz[], $7::text[], $8::text[]) AS x(o, s, r, a, c, t, p, pr)
ON CONFLICT (order_id) DO UPDATE
   SET status = EXCLUDED.status,
       reason = EXCLUDED.reason,
       amount = EXCLUDED.amount,
       currency = EXCLUDED.currency,
       status_occurred_at = EXCLUDED.status_occurred_at,
       last_provider_event_id = EXCLUDED.last_provider_event_id,
       last_provider = EXCLUDED.last_provider,
       updated_at = now()
 WHERE (EXCLUDED.status_occurred_at,
        payhook_dispute_precedence(EXCLUDED.status),
        EXCLUDED.last_provider_event_id COLLATE "C",
        EXCLUDED.last_provider COLLATE "C")
     > (cur.status_occurred_at,
        payhook_dispute_precedence(cur.status),
        cur.last_provider_event_id COLLATE "C",
        cur.last_provider COLLATE "C")"#;

/// The columns both kinds of event have, borrowed from one event.
struct Common<'e> {
    provider_event_id: &'e str,
    event_id: Uuid,
    order_id: &'e str,
    status: &'static str,
    amount: Option<i64>,
    currency: Option<&'e str>,
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
            amount: w.amount.map(|a| a.minor_units()),
            currency: w.currency.as_ref().map(|c| c.as_str()),
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
            amount: Some(w.amount.minor_units()),
            currency: Some(w.currency.as_str()),
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
    amount: Vec<Option<i64>>,
    currency: Vec<Option<&'e str>>,
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

impl PaymentStore for PgStore<'_, '_> {
    type Error = DbError;

    async fn insert_new(&mut self, events: &[&PaymentEvent]) -> Result<Vec<EventRef>, DbError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let c = Columns::of(events);
        let user_id: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.webhook.user_id.as_ref().map(|u| u.as_str()))
            .collect();
        let payment_id: Vec<&str> = events
            .iter()
            .map(|e| e.webhook.payment_id.as_str())
            .collect();
        let refund_key: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.webhook.refund.as_ref().map(|r| r.key.as_str()))
            .collect();
        let refund_amount: Vec<Option<i64>> = events
            .iter()
            .map(|e| e.webhook.refund.as_ref().map(|r| r.amount.minor_units()))
            .collect();
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
                    &payment_id,
                    &refund_key,
                    &refund_amount,
                ],
            )
            .await?;
        Ok(refs(rows))
    }

    async fn pins(&mut self, orders: &[&str]) -> Result<HashMap<String, Pins>, DbError> {
        let stmt = self.tx.prepare_cached(PINS).await?;
        let rows = self.tx.query(&stmt, &[&orders]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Pins {
                        user_id: r.get(1),
                        amount: r.get(2),
                        currency: r.get(3),
                    },
                )
            })
            .collect())
    }

    async fn advance_payments(&mut self, latest: &[PaymentAdvance<'_>]) -> Result<u64, DbError> {
        let events: Vec<&PaymentEvent> = latest.iter().map(|a| a.event).collect();
        let mut c = Columns::of(&events);
        c.amount = latest.iter().map(|a| a.amount).collect();
        c.currency = latest.iter().map(|a| a.currency).collect();
        let payment_id: Vec<&str> = latest
            .iter()
            .map(|a| a.event.webhook.payment_id.as_str())
            .collect();
        let stmt = self.tx.prepare_cached(ADVANCE_PAYMENTS).await?;
        Ok(self
            .tx
            .execute(
                &stmt,
                &[
                    &c.provider,
                    &payment_id,
                    &c.order_id,
                    &c.status,
                    &c.amount,
                    &c.currency,
                    &c.occurred_at,
                    &c.provider_event_id,
                ],
            )
            .await?)
    }

    async fn add_refunds(&mut self, refunds: &[&PaymentEvent]) -> Result<(), DbError> {
        let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
        for e in refunds {
            let r = e.webhook.refund.as_ref().expect("an event with a refund");
            let (provider, payment) = e.payment();
            cols.0.push(provider);
            cols.1.push(payment);
            cols.2.push(r.key.as_str());
            cols.3.push(r.amount.minor_units());
        }
        let stmt = self.tx.prepare_cached(ADD_REFUNDS).await?;
        self.tx
            .execute(&stmt, &[&cols.0, &cols.1, &cols.2, &cols.3])
            .await?;
        let stmt = self.tx.prepare_cached(SUM_REFUNDS).await?;
        self.tx.execute(&stmt, &[&cols.0, &cols.1]).await?;
        Ok(())
    }

    async fn settle_orders(&mut self, orders: &[Settle<'_>]) -> Result<u64, DbError> {
        let ids: Vec<&str> = orders.iter().map(|s| s.order_id).collect();
        let users: Vec<Option<&str>> = orders.iter().map(|s| s.pins.user_id.as_deref()).collect();
        let amounts: Vec<Option<i64>> = orders.iter().map(|s| s.pins.amount).collect();
        let currencies: Vec<Option<&str>> =
            orders.iter().map(|s| s.pins.currency.as_deref()).collect();
        let stmt = self.tx.prepare_cached(SETTLE_ORDERS).await?;
        Ok(self
            .tx
            .execute(&stmt, &[&ids, &users, &amounts, &currencies])
            .await?)
    }
}

fn reason_of(e: &ChargebackEvent) -> Option<&str> {
    e.webhook.reason.as_ref().map(|r| r.as_str())
}

impl EventStore<ChargebackEvent> for PgStore<'_, '_> {
    type Error = DbError;

    async fn insert_new(&mut self, events: &[&ChargebackEvent]) -> Result<Vec<EventRef>, DbError> {
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
        Ok(refs(rows))
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
                    &c.provider,
                ],
            )
            .await?)
    }
}
