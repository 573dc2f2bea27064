//! Payment webhooks and the order state they drive.
//!
//! An order's state never goes backwards: providers do not promise to deliver
//! events in order, so every event is recorded, but only an event at least as
//! recent (by `occurred_at`) as the one already applied changes the order.

#[cfg(test)]
use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

pub use super::apply::Outcome;
use super::apply::{EventStore, Keyed, apply_batch};
use super::types::{
    Amount, Currency, Fields, OccurredAt, OrderId, Origin, ProviderEventId, UserId, ValidationError,
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
    pub user_id: UserId,
    pub status: PaymentStatus,
    pub amount: Amount,
    pub currency: Currency,
    pub occurred_at: OccurredAt,
}

impl PaymentWebhook {
    /// Validates a parsed JSON body. Unknown fields are allowed: providers add
    /// fields, and the raw body is stored whole.
    pub fn from_json(v: &Value) -> Result<Self, ValidationError> {
        let f = Fields::of(v)?;
        Ok(Self {
            provider_event_id: ProviderEventId::parse(f.string("provider_event_id")?)?,
            order_id: OrderId::parse(f.string("order_id")?)?,
            user_id: UserId::parse(f.string("user_id")?)?,
            status: f.one_of("status", &PaymentStatus::ALL)?,
            amount: f.amount()?,
            currency: f.currency()?,
            occurred_at: f.occurred_at()?,
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

/// Storage the order service needs: `insert_new` records payment events,
/// `advance` moves orders.
pub trait PaymentStore: EventStore<PaymentEvent> {}
impl<S: EventStore<PaymentEvent>> PaymentStore for S {}

/// Applies payment webhooks to orders.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderService;

impl OrderService {
    /// Applies a batch of events, given in the order they were accepted.
    pub async fn process_payment_webhooks<S: PaymentStore + Send>(
        &self,
        store: &mut S,
        events: &[PaymentEvent],
    ) -> Result<Outcome, S::Error> {
        apply_batch(store, events).await
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
        assert_eq!(w.amount.minor_units(), 1999);
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

    /// An in-memory store with the same rules as the SQL one.
    #[derive(Default)]
    struct FakeStore {
        events: Vec<String>,
        orders: HashMap<String, (PaymentStatus, OccurredAt, String)>,
    }

    impl EventStore<PaymentEvent> for FakeStore {
        type Error = std::convert::Infallible;

        async fn insert_new(
            &mut self,
            events: &[&PaymentEvent],
        ) -> Result<Vec<ProviderEventId>, Self::Error> {
            let mut new = Vec::new();
            for e in events {
                let id = e.webhook.provider_event_id.clone();
                if !self.events.contains(&id.as_str().to_owned()) {
                    self.events.push(id.as_str().to_owned());
                    new.push(id);
                }
            }
            Ok(new)
        }

        async fn advance(&mut self, latest: &[&PaymentEvent]) -> Result<u64, Self::Error> {
            let mut n = 0;
            for e in latest {
                let w = &e.webhook;
                let slot = self.orders.entry(w.order_id.to_string());
                let apply = match &slot {
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let (status, at, id) = o.get();
                        e.order_key()
                            > super::super::apply::OrderKey {
                                occurred_at: *at,
                                precedence: status.precedence(),
                                provider_event_id: id,
                            }
                    }
                    std::collections::hash_map::Entry::Vacant(_) => true,
                };
                if apply {
                    n += 1;
                    let state = (w.status, w.occurred_at, w.provider_event_id.to_string());
                    slot.insert_entry(state);
                }
            }
            Ok(n)
        }
    }

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

    #[tokio::test]
    async fn duplicates_change_nothing_and_old_events_do_not_regress_state() {
        let mut store = FakeStore::default();
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
        assert_eq!(store.orders["o1"].0, PaymentStatus::Succeeded);

        // A late, older event is stored but does not move the order back.
        let late = event("e0", "o1", "pending", "2026-11-26T09:59:00Z");
        let out = svc.process_payment_webhook(&mut store, late).await.unwrap();
        assert_eq!((out.stored, out.changed), (1, 0));
        assert_eq!(store.orders["o1"].0, PaymentStatus::Succeeded);

        // The same batch again is all duplicates.
        let out = svc
            .process_payment_webhooks(&mut store, &batch)
            .await
            .unwrap();
        assert_eq!((out.stored, out.duplicates, out.changed), (0, 4, 0));
    }
}
