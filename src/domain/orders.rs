//! Payment webhooks, the payments they move, and the order state derived
//! from its payments.
//!
//! # The truth of an order
//!
//! An order may be paid by several payments (a checkout retried creates a
//! second Stripe payment intent; each Adyen payment has its own
//! `pspReference`). Each payment keeps its own state:
//!
//! - its **status**: of the payment's status events, the greatest in the
//!   event order ([`super::apply`]): `pending` < `failed` < `succeeded` <
//!   `refunded` at equal instants; never backwards, whatever the arrival;
//! - its **amount** and currency, from the first event that carries them;
//! - its **refunded amount**: the sum of its refunds, each known by a key
//!   and counted once at its largest reported amount (a Stripe charge
//!   reports its refunded total, an Adyen refund its own amount), so
//!   partial refunds add up in any order.
//!
//! A payment **is** `refunded` when its status is `refunded`, or when it
//! succeeded and its refunds reach its (non-zero) amount; otherwise it is
//! its status ([`payment_state`]). The order's `payment_status` is derived
//! from its payments by one rule ([`order_status`]):
//!
//! 1. `succeeded` while any payment is succeeded (captured, not fully
//!    refunded);
//! 2. else `refunded` when a payment was captured and every captured one is
//!    fully refunded;
//! 3. else `pending` while any payment is pending;
//! 4. else `failed`.
//!
//! Each payment's state is a function of its events' set, so the order's is
//! too: arrival order and batching do not matter.
//!
//! # What is pinned
//!
//! An order's `user_id`, `amount` and `currency` are set by the first event
//! that carries them, and never overwritten. A later event that names
//! another user, amount or currency is refused as a [`Conflict`] (the
//! consumer dead-letters it with the reason; the order is unchanged). An
//! event that names no user (a provider's payment without the configured
//! key) is applied with the user unknown, and does not conflict.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

pub use super::apply::Outcome;
use super::apply::{EventRef, Keyed, OrderKey, first_of_each, latest_per_key, only_new};
use super::types::{
    Amount, Currency, Fields, OccurredAt, OrderId, Origin, PaymentId, ProviderEventId, RefundKey,
    UserId, ValidationError,
};

/// Where a payment currently stands, as the provider reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [(&'static str, Self); 4] = [
        ("pending", Self::Pending),
        ("succeeded", Self::Succeeded),
        ("failed", Self::Failed),
        ("refunded", Self::Refunded),
    ];

    /// Place in the life cycle, for ties in `occurred_at` (the event order,
    /// `domain::apply`). The SQL function of the same meaning is in
    /// `sql/0002_event_order.sql`.
    pub fn precedence(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Failed => 1,
            Self::Succeeded => 2,
            Self::Refunded => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }
}

/// A validated payment webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentWebhook {
    pub provider_event_id: ProviderEventId,
    pub order_id: OrderId,
    /// The payment of the order it is about; payhook's own events name none,
    /// and are about the order's one payment (its id is the order's).
    pub payment_id: PaymentId,
    /// `None`: the user is unknown (a provider's event without it).
    pub user_id: Option<UserId>,
    pub status: PaymentStatus,
    /// The payment's amount; `None` for an event that does not carry it
    /// (an Adyen refund carries its own amount only).
    pub amount: Option<Amount>,
    pub currency: Option<Currency>,
    pub occurred_at: OccurredAt,
    /// A refund this event reports.
    pub refund: Option<Refund>,
}

/// A refund an event reports: its key within the payment and its amount so
/// far. A refund reported several times counts once, at its largest amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    pub key: RefundKey,
    pub amount: Amount,
}

impl PaymentWebhook {
    /// Validates payhook's own format (the `/webhooks/payments/orders`
    /// body): every field required but `payment_id`. Unknown fields are
    /// allowed: providers add fields, and the raw body is stored whole.
    pub fn from_json(v: &Value) -> Result<Self, ValidationError> {
        let w = Self::from_mapped(v)?;
        let f = Fields::of(v)?;
        // Required in payhook's own format.
        f.string("user_id")?;
        f.amount()?;
        f.currency()?;
        Ok(w)
    }

    /// Validates a provider's mapped event: as [`Self::from_json`], with
    /// `user_id`, `amount` and `currency` optional, and the refund fields
    /// (`refund_key` with `refund_amount`).
    pub fn from_mapped(v: &Value) -> Result<Self, ValidationError> {
        let f = Fields::of(v)?;
        let order_id = OrderId::parse(f.string("order_id")?)?;
        let payment_id = match f.optional_string("payment_id")? {
            Some(p) => PaymentId::parse(p)?,
            None => PaymentId::parse(order_id.as_str())?,
        };
        let refund = match f.optional_string("refund_key")? {
            Some(k) => Some(Refund {
                key: RefundKey::parse(k)?,
                amount: f.amount_at("refund_amount")?,
            }),
            None => None,
        };
        Ok(Self {
            provider_event_id: ProviderEventId::parse(f.string("provider_event_id")?)?,
            order_id,
            payment_id,
            user_id: f
                .optional_string("user_id")?
                .map(UserId::parse)
                .transpose()?,
            status: f.one_of("status", &PaymentStatus::ALL)?,
            amount: f.optional_amount("amount")?,
            currency: f
                .optional_string("currency")?
                .map(Currency::parse)
                .transpose()?,
            occurred_at: f.occurred_at()?,
            refund,
        })
    }
}

/// Where an event was read from; kept with the stored event for audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A payment webhook as delivered to the service: the validated fields, the
/// envelope's `event_id` and the raw payload to store.
#[derive(Clone, Debug)]
pub struct PaymentEvent {
    pub event_id: Uuid,
    pub webhook: PaymentWebhook,
    /// The webhook body exactly as received (valid JSON): payhook's own
    /// format, or the provider's event.
    pub payload: String,
    pub source: SourcePosition,
    pub origin: Origin,
}

impl Keyed for PaymentEvent {
    fn provider(&self) -> &str {
        &self.origin.provider
    }

    fn provider_event_id(&self) -> &str {
        self.webhook.provider_event_id.as_str()
    }

    fn order_id(&self) -> &str {
        self.webhook.order_id.as_str()
    }

    fn occurred_at(&self) -> OccurredAt {
        self.webhook.occurred_at
    }

    fn precedence(&self) -> u8 {
        self.webhook.status.precedence()
    }
}

impl PaymentEvent {
    /// The payment it moves: payments are per provider.
    pub fn payment(&self) -> (&str, &str) {
        (self.provider(), self.webhook.payment_id.as_str())
    }
}

/// What a payment is, from its status, amount and refunds (see the module
/// doc). The SQL side is `payhook_payment_state` in
/// `sql/0006_scoped_payments.sql`.
pub fn payment_state(status: PaymentStatus, amount: Option<i64>, refunded: i64) -> PaymentStatus {
    match (status, amount) {
        (PaymentStatus::Succeeded, Some(a)) if a > 0 && refunded >= a => PaymentStatus::Refunded,
        _ => status,
    }
}

/// An order's payment status from its payments' states (see the module
/// doc); `None` for an order with no payment.
pub fn order_status(states: impl IntoIterator<Item = PaymentStatus>) -> Option<PaymentStatus> {
    let (mut any, mut succeeded, mut refunded, mut pending) = (false, false, false, false);
    for s in states {
        any = true;
        match s {
            PaymentStatus::Succeeded => succeeded = true,
            PaymentStatus::Refunded => refunded = true,
            PaymentStatus::Pending => pending = true,
            PaymentStatus::Failed => {}
        }
    }
    any.then_some(if succeeded {
        PaymentStatus::Succeeded
    } else if refunded {
        PaymentStatus::Refunded
    } else if pending {
        PaymentStatus::Pending
    } else {
        PaymentStatus::Failed
    })
}

/// An order's pinned facts: set by the first event that carries each, never
/// overwritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    pub user_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

/// An event that disagrees with what its order has pinned: refused, for
/// good (the consumer dead-letters it with this reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "order {order_id} is pinned to {field} {pinned:?} (its first event's); {event} says \
     {found:?}: refused, the order is unchanged"
)]
pub struct Conflict {
    pub order_id: String,
    pub field: &'static str,
    pub pinned: String,
    pub found: String,
    /// The refused event: `<provider> event <provider_event_id>`.
    pub event: String,
    /// Where the refused event was read, so the consumer can set it apart
    /// without searching for it.
    pub read_at: Box<SourcePosition>,
}

impl Pins {
    /// Takes what `e` carries where nothing is pinned yet; refuses what
    /// disagrees.
    pub fn merge(&mut self, e: &PaymentEvent) -> Result<(), Conflict> {
        let w = &e.webhook;
        let conflict = |field, pinned: String, found: String| Conflict {
            order_id: w.order_id.to_string(),
            field,
            pinned,
            found,
            event: format!("{} event {}", e.provider(), w.provider_event_id),
            read_at: Box::new(e.source.clone()),
        };
        if let Some(u) = &w.user_id {
            match &self.user_id {
                Some(p) if p != u.as_str() => {
                    return Err(conflict("user_id", p.clone(), u.to_string()));
                }
                Some(_) => {}
                None => self.user_id = Some(u.to_string()),
            }
        }
        if let Some(a) = w.amount {
            match self.amount {
                Some(p) if p != a.minor_units() => {
                    return Err(conflict(
                        "amount",
                        p.to_string(),
                        a.minor_units().to_string(),
                    ));
                }
                Some(_) => {}
                None => self.amount = Some(a.minor_units()),
            }
        }
        if let Some(c) = &w.currency {
            match &self.currency {
                Some(p) if p != c.as_str() => {
                    return Err(conflict("currency", p.clone(), c.as_str().to_owned()));
                }
                Some(_) => {}
                None => self.currency = Some(c.as_str().to_owned()),
            }
        }
        Ok(())
    }
}

/// One order to settle: its id, its pins after this batch.
#[derive(Clone, Debug)]
pub struct Settle<'a> {
    pub order_id: &'a str,
    pub pins: Pins,
}

/// One payment to move: its greatest new event, and the amount and
/// currency of any new event of it that carries them (they agree: the
/// order's pins refuse an event that disagrees). The latest event may carry
/// none (an Adyen refund), so they are not read from it.
#[derive(Clone, Copy, Debug)]
pub struct PaymentAdvance<'a> {
    pub event: &'a PaymentEvent,
    pub amount: Option<i64>,
    pub currency: Option<&'a str>,
}

/// Storage the order service needs, over one transaction. Postgres
/// (`db::store::PgStore`) and memory ([`super::model::Memory`]) implement
/// it with the same rules.
pub trait PaymentStore {
    type Error: From<Conflict>;

    /// Records each event whose `(provider, provider_event_id)` is not
    /// stored yet; returns those that were new.
    fn insert_new(
        &mut self,
        events: &[&PaymentEvent],
    ) -> impl Future<Output = Result<Vec<EventRef>, Self::Error>> + Send;

    /// The pinned facts of these orders (orders not stored yet are absent).
    fn pins(
        &mut self,
        orders: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Pins>, Self::Error>> + Send;

    /// Moves each payment to its event unless the payment holds a later
    /// event, and sets the payment's amount and currency where unset. At
    /// most one entry per payment.
    fn advance_payments(
        &mut self,
        latest: &[PaymentAdvance<'_>],
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Records the refunds these events report (at most one event per
    /// refund key), each at the largest amount reported, and brings their
    /// payments' refunded amounts up to date.
    fn add_refunds(
        &mut self,
        refunds: &[&PaymentEvent],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Creates or updates each order: its pins where unset, and its payment
    /// status, instant and last event from its payments ([`order_status`];
    /// the last event is the greatest of its payments' in the event order).
    fn settle_orders(
        &mut self,
        orders: &[Settle<'_>],
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// Applies payment webhooks to payments and orders.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderService;

impl OrderService {
    /// Applies a batch of events, given in the order they were accepted:
    /// records the new ones; refuses the batch if one disagrees with its
    /// order's pins (a [`Conflict`]: the consumer then finds it alone and
    /// dead-letters it); moves each payment to its greatest new event;
    /// records refunds; and derives each touched order's state.
    pub async fn process_payment_webhooks<S: PaymentStore + Send>(
        &self,
        store: &mut S,
        events: &[PaymentEvent],
    ) -> Result<Outcome, S::Error> {
        let unique = first_of_each(events);
        let new = store.insert_new(&unique).await?;
        let fresh = only_new(unique, &new);
        if fresh.is_empty() {
            return Ok(Outcome {
                duplicates: events.len(),
                ..Outcome::default()
            });
        }
        let mut orders: Vec<&str> = Vec::new();
        for e in &fresh {
            if !orders.contains(&e.order_id()) {
                orders.push(e.order_id());
            }
        }
        let mut pins = store.pins(&orders).await?;
        for e in &fresh {
            pins.entry(e.order_id().to_owned()).or_default().merge(e)?;
        }
        let latest: Vec<PaymentAdvance<'_>> =
            latest_per_key(&fresh, |e| (e.payment(), e.order_key()))
                .into_iter()
                .map(|event| {
                    let mine = || fresh.iter().filter(|e| e.payment() == event.payment());
                    PaymentAdvance {
                        event,
                        amount: mine().find_map(|e| e.webhook.amount.map(|a| a.minor_units())),
                        currency: mine()
                            .find_map(|e| e.webhook.currency.as_ref().map(|c| c.as_str())),
                    }
                })
                .collect();
        let changed = store.advance_payments(&latest).await?;
        let refunds: Vec<&PaymentEvent> = fresh
            .iter()
            .copied()
            .filter(|e| e.webhook.refund.is_some())
            .collect();
        if !refunds.is_empty() {
            // One event per refund key: the largest amount.
            let largest = latest_per_key(&refunds, |e| {
                let r = e.webhook.refund.as_ref().expect("filtered");
                ((e.payment(), r.key.as_str()), r.amount)
            });
            store.add_refunds(&largest).await?;
        }
        let settle: Vec<Settle<'_>> = orders
            .iter()
            .map(|o| Settle {
                order_id: o,
                pins: pins.remove(*o).unwrap_or_default(),
            })
            .collect();
        store.settle_orders(&settle).await?;
        Ok(Outcome {
            stored: fresh.len(),
            duplicates: events.len() - fresh.len(),
            changed,
        })
    }

    /// Convenience for a single webhook.
    pub async fn process_payment_webhook<S: PaymentStore + Send>(
        &self,
        store: &mut S,
        event: PaymentEvent,
    ) -> Result<Outcome, S::Error> {
        self.process_payment_webhooks(store, std::slice::from_ref(&event))
            .await
    }
}

/// The greatest of two optional keys (the order's last event).
pub fn greatest<'a>(a: Option<OrderKey<'a>>, b: OrderKey<'a>) -> OrderKey<'a> {
    match a {
        Some(a) if a > b => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({"provider_event_id":"evt_1","order_id":"ord_42","user_id":"usr_7",
               "status":"succeeded","amount":1999,"currency":"USD",
               "occurred_at":"2026-11-26T10:00:00Z","extra":{"provider":"adds fields"}})
    }

    #[test]
    fn a_valid_webhook_parses_and_keeps_unknown_fields_out_of_the_way() {
        let w = PaymentWebhook::from_json(&body()).unwrap();
        assert_eq!(w.order_id.as_str(), "ord_42");
        assert_eq!(w.status, PaymentStatus::Succeeded);
        assert_eq!(w.amount.map(|a| a.minor_units()), Some(1999));
    }

    #[test]
    fn every_field_is_validated() {
        let cases: &[(&str, Value, &str)] = &[
            ("provider_event_id", json!(""), "invalid_field"),
            ("order_id", json!(42), "invalid_field"),
            ("user_id", Value::Null, "missing_field"),
            ("status", json!("paid"), "invalid_field"),
            ("amount", json!(-5), "invalid_field"),
            ("currency", json!("usd"), "invalid_field"),
            ("occurred_at", json!("noon"), "invalid_field"),
        ];
        for (field, value, code) in cases {
            let mut b = body();
            b[*field] = value.clone();
            let e = PaymentWebhook::from_json(&b).unwrap_err();
            assert_eq!(
                (e.field, e.code),
                (Some(*field), *code),
                "{field}: {}",
                e.detail
            );
        }
        let mut b = body();
        b.as_object_mut().unwrap().remove("currency");
        assert_eq!(
            PaymentWebhook::from_json(&b).unwrap_err().code,
            "missing_field"
        );
    }

    use crate::domain::model::Memory;

    fn event(id: &str, order: &str, status: &str, at: &str) -> PaymentEvent {
        let mut b = body();
        b["provider_event_id"] = json!(id);
        b["order_id"] = json!(order);
        b["status"] = json!(status);
        b["occurred_at"] = json!(at);
        PaymentEvent {
            event_id: Uuid::new_v4(),
            webhook: PaymentWebhook::from_json(&b).unwrap(),
            payload: b.to_string(),
            source: SourcePosition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            origin: Origin::generic(),
        }
    }

    /// A provider's event of payment `payment` of `order`, with `extra`
    /// fields (a refund, no user, another amount).
    fn provider_event(
        id: &str,
        order: &str,
        payment: &str,
        status: &str,
        at: &str,
        extra: Value,
    ) -> PaymentEvent {
        let mut b = json!({"provider_event_id": id, "order_id": order, "payment_id": payment,
                           "user_id": "usr_7", "status": status, "amount": 1000, "currency": "EUR",
                           "occurred_at": at});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        PaymentEvent {
            event_id: Uuid::new_v4(),
            webhook: PaymentWebhook::from_mapped(&b).unwrap(),
            payload: b.to_string(),
            source: SourcePosition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            origin: Origin {
                provider: "stripe".into(),
                object_ids: vec![payment.into()],
            },
        }
    }

    fn status(store: &Memory, order: &str) -> PaymentStatus {
        store.orders[order].status
    }

    #[tokio::test]
    async fn duplicates_change_nothing_and_old_events_do_not_regress_state() {
        let mut store = Memory::default();
        let svc = OrderService;
        let batch = [
            event("e1", "o1", "pending", "2026-11-26T10:00:00Z"),
            event("e2", "o1", "succeeded", "2026-11-26T10:05:00Z"),
            event("e1", "o1", "pending", "2026-11-26T10:00:00Z"),
            event("e3", "o2", "failed", "2026-11-26T09:00:00Z"),
        ];
        let out = svc
            .process_payment_webhooks(&mut store, &batch)
            .await
            .unwrap();
        assert_eq!((out.stored, out.duplicates, out.changed), (3, 1, 2));
        assert_eq!(status(&store, "o1"), PaymentStatus::Succeeded);

        // A late, older event is stored but does not move the order back.
        let late = event("e0", "o1", "pending", "2026-11-26T09:59:00Z");
        let out = svc.process_payment_webhook(&mut store, late).await.unwrap();
        assert_eq!((out.stored, out.changed), (1, 0));
        assert_eq!(status(&store, "o1"), PaymentStatus::Succeeded);

        // The same batch again is all duplicates.
        let out = svc
            .process_payment_webhooks(&mut store, &batch)
            .await
            .unwrap();
        assert_eq!((out.stored, out.duplicates, out.changed), (0, 4, 0));
    }

    #[test]
    fn the_order_follows_its_payments_by_one_rule() {
        use PaymentStatus::*;
        assert_eq!(order_status([]), None);
        assert_eq!(order_status([Succeeded, Failed]), Some(Succeeded));
        assert_eq!(order_status([Failed, Pending]), Some(Pending));
        assert_eq!(order_status([Failed, Failed]), Some(Failed));
        assert_eq!(order_status([Refunded, Failed]), Some(Refunded));
        assert_eq!(order_status([Refunded, Succeeded]), Some(Succeeded));
        assert_eq!(payment_state(Succeeded, Some(1000), 999), Succeeded);
        assert_eq!(payment_state(Succeeded, Some(1000), 1000), Refunded);
        assert_eq!(payment_state(Succeeded, Some(0), 0), Succeeded);
        assert_eq!(payment_state(Succeeded, None, 500), Succeeded);
        assert_eq!(payment_state(Pending, Some(1), 5), Pending);
    }

    /// Every arrival order of the events, one at a time.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    async fn final_status(events: &[PaymentEvent], order: &[usize]) -> PaymentStatus {
        let mut store = Memory::default();
        for &i in order {
            OrderService
                .process_payment_webhook(&mut store, events[i].clone())
                .await
                .unwrap();
        }
        status(&store, "ord_1")
    }

    #[tokio::test]
    async fn an_order_paid_by_one_intent_stays_paid_when_a_retry_is_canceled() {
        let events = [
            provider_event(
                "e1",
                "ord_1",
                "pi_1",
                "succeeded",
                "2026-11-26T10:00:00Z",
                json!({}),
            ),
            provider_event(
                "e2",
                "ord_1",
                "pi_2",
                "pending",
                "2026-11-26T10:05:00Z",
                json!({}),
            ),
            provider_event(
                "e3",
                "ord_1",
                "pi_2",
                "failed",
                "2026-11-26T10:06:00Z",
                json!({}),
            ),
        ];
        for order in permutations(3) {
            assert_eq!(
                final_status(&events, &order).await,
                PaymentStatus::Succeeded,
                "{order:?}"
            );
        }
    }

    #[tokio::test]
    async fn partial_refunds_add_up_and_refund_only_once_whole() {
        let refund = |id: &str, at: &str, key: &str, amount: i64, status: &str| {
            provider_event(
                id,
                "ord_1",
                "pi_1",
                status,
                at,
                json!({"refund_key": key, "refund_amount": amount}),
            )
        };
        let events = [
            provider_event(
                "e1",
                "ord_1",
                "pi_1",
                "succeeded",
                "2026-11-26T10:00:00Z",
                json!({}),
            ),
            // Adyen-like: each refund with its own key and amount.
            refund("r1", "2026-11-26T11:00:00Z", "psp_r1", 300, "succeeded"),
            refund("r2", "2026-11-26T12:00:00Z", "psp_r2", 700, "succeeded"),
        ];
        for order in permutations(3) {
            assert_eq!(
                final_status(&events, &order).await,
                PaymentStatus::Refunded,
                "{order:?}"
            );
        }
        // Only the first refund: still succeeded, 300 refunded.
        let mut store = Memory::default();
        for e in &events[..2] {
            OrderService
                .process_payment_webhook(&mut store, e.clone())
                .await
                .unwrap();
        }
        assert_eq!(status(&store, "ord_1"), PaymentStatus::Succeeded);
        assert_eq!(
            store.payments[&("stripe".into(), "pi_1".into())].refunded,
            300
        );
        // Stripe-like: one key, its total growing; counted once at its largest.
        let events = [
            provider_event(
                "e1",
                "ord_1",
                "pi_1",
                "succeeded",
                "2026-11-26T10:00:00Z",
                json!({}),
            ),
            refund(
                "c1",
                "2026-11-26T11:00:00Z",
                "charge:ch_1",
                500,
                "succeeded",
            ),
            refund(
                "c2",
                "2026-11-26T12:00:00Z",
                "charge:ch_1",
                1000,
                "refunded",
            ),
        ];
        for order in permutations(3) {
            assert_eq!(
                final_status(&events, &order).await,
                PaymentStatus::Refunded,
                "{order:?}"
            );
        }
        assert_eq!(
            final_status(&events, &[0, 1]).await,
            PaymentStatus::Succeeded
        );
    }

    #[tokio::test]
    async fn what_an_order_pins_a_later_event_cannot_change() {
        let mut store = Memory::default();
        let first = provider_event(
            "e1",
            "ord_1",
            "pi_1",
            "pending",
            "2026-11-26T10:00:00Z",
            json!({}),
        );
        OrderService
            .process_payment_webhook(&mut store, first)
            .await
            .unwrap();
        // (Each refused event has an id of its own: the in-memory store has
        // no transaction to roll its insert back, as Postgres does.)
        for (n, (field, value)) in [
            ("user_id", json!("usr_x")),
            ("amount", json!(999)),
            ("currency", json!("USD")),
        ]
        .into_iter()
        .enumerate()
        {
            let e = provider_event(
                &format!("e2-{n}"),
                "ord_1",
                "pi_1",
                "succeeded",
                "2026-11-26T11:00:00Z",
                json!({ field: value }),
            );
            let c = OrderService
                .process_payment_webhook(&mut store, e)
                .await
                .unwrap_err();
            assert_eq!(c.field, field, "{c}");
            assert!(
                c.to_string().contains("refused, the order is unchanged"),
                "{c}"
            );
        }
        assert_eq!(status(&store, "ord_1"), PaymentStatus::Pending);
        // An event without a user does not conflict; the user stays.
        let e = provider_event(
            "e3",
            "ord_1",
            "pi_1",
            "succeeded",
            "2026-11-26T11:00:00Z",
            json!({"user_id": null}),
        );
        OrderService
            .process_payment_webhook(&mut store, e)
            .await
            .unwrap();
        assert_eq!(status(&store, "ord_1"), PaymentStatus::Succeeded);
        assert_eq!(store.orders["ord_1"].pins.user_id.as_deref(), Some("usr_7"));
        // A first event without a user leaves it unknown; a later one sets it.
        let e = provider_event(
            "e4",
            "ord_2",
            "pi_9",
            "succeeded",
            "2026-11-26T11:00:00Z",
            json!({"user_id": null}),
        );
        OrderService
            .process_payment_webhook(&mut store, e)
            .await
            .unwrap();
        assert_eq!(store.orders["ord_2"].pins.user_id, None);
    }

    #[test]
    fn payhooks_own_format_requires_user_amount_and_currency() {
        for field in ["user_id", "amount", "currency"] {
            let mut b = body();
            b.as_object_mut().unwrap().remove(field);
            assert_eq!(
                PaymentWebhook::from_json(&b).unwrap_err().code,
                "missing_field",
                "{field}"
            );
            assert!(PaymentWebhook::from_mapped(&b).is_ok(), "{field}");
        }
        let w = PaymentWebhook::from_json(&body()).unwrap();
        assert_eq!(
            w.payment_id.as_str(),
            "ord_42",
            "its own payment: the order"
        );
    }
}
