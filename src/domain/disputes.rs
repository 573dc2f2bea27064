//! Chargeback webhooks and the dispute state they drive.
//!
//! One dispute per order. As with payments, every chargeback event is
//! recorded, and only one at least as recent as the applied one changes the
//! dispute's status.

use serde_json::Value;
use uuid::Uuid;

use super::apply::{EventStore, Keyed, Outcome, apply_batch};
use super::orders::SourcePosition;
use super::types::{
    Amount, Currency, Fields, OccurredAt, OrderId, Origin, ProviderEventId, Reason, ValidationError,
};

/// Where a dispute stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisputeStatus {
    Opened,
    Won,
    Lost,
}

impl DisputeStatus {
    pub const ALL: [(&'static str, Self); 3] = [
        ("opened", Self::Opened),
        ("won", Self::Won),
        ("lost", Self::Lost),
    ];

    /// Place in the life cycle, for ties in `occurred_at` (the event order,
    /// `domain::apply`). The SQL function of the same meaning is in
    /// `sql/0002_event_order.sql`.
    pub fn precedence(self) -> u8 {
        match self {
            Self::Opened => 0,
            Self::Won => 1,
            Self::Lost => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Won => "won",
            Self::Lost => "lost",
        }
    }
}

/// A validated chargeback webhook. It names no user: the provider only knows
/// the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargebackWebhook {
    pub provider_event_id: ProviderEventId,
    pub order_id: OrderId,
    pub status: DisputeStatus,
    /// The provider's reason code, when it sends one.
    pub reason: Option<Reason>,
    pub amount: Amount,
    pub currency: Currency,
    pub occurred_at: OccurredAt,
}

impl ChargebackWebhook {
    pub fn from_json(v: &Value) -> Result<Self, ValidationError> {
        let f = Fields::of(v)?;
        Ok(Self {
            provider_event_id: ProviderEventId::parse(f.string("provider_event_id")?)?,
            order_id: OrderId::parse(f.string("order_id")?)?,
            status: f.one_of("status", &DisputeStatus::ALL)?,
            reason: f
                .optional_string("reason")?
                .map(Reason::parse)
                .transpose()?,
            amount: f.amount()?,
            currency: f.currency()?,
            occurred_at: f.occurred_at()?,
        })
    }
}

/// A chargeback as delivered to the service.
#[derive(Clone, Debug)]
pub struct ChargebackEvent {
    pub event_id: Uuid,
    pub webhook: ChargebackWebhook,
    pub payload: String,
    pub source: SourcePosition,
    pub origin: Origin,
}

/// A provider's dispute that names its payment objects, not the order
/// (Stripe's disputes name a charge and a payment intent). `event` is
/// complete and valid except for `webhook.order_id`, which holds the
/// record's key until [`PendingChargeback::resolve`] sets the order the
/// stored payment events name.
#[derive(Clone, Debug)]
pub struct PendingChargeback {
    pub event: ChargebackEvent,
    /// The Kafka record's key and value, kept whole so a dispute that waits
    /// can be decoded again, or dead-lettered as it arrived.
    pub record_key: String,
    pub record_value: String,
}

impl PendingChargeback {
    /// The chargeback, now keyed to its order.
    pub fn resolve(self, order_id: OrderId) -> ChargebackEvent {
        let mut event = self.event;
        event.webhook.order_id = order_id;
        event
    }
}

impl Keyed for ChargebackEvent {
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

/// Storage the dispute service needs: `insert_new` records chargeback
/// events, `advance` moves disputes.
pub trait ChargebackStore: EventStore<ChargebackEvent> {}
impl<S: EventStore<ChargebackEvent>> ChargebackStore for S {}

/// Applies chargebacks to disputes.
#[derive(Clone, Copy, Debug, Default)]
pub struct DisputeService;

impl DisputeService {
    /// Applies a batch of chargebacks, given in the order they were accepted.
    pub async fn process_chargebacks<S: ChargebackStore + Send>(
        &self,
        store: &mut S,
        events: &[ChargebackEvent],
    ) -> Result<Outcome, S::Error> {
        apply_batch(store, events).await
    }

    /// Convenience for a single chargeback.
    pub async fn process_chargeback<S: ChargebackStore + Send>(
        &self,
        store: &mut S,
        event: ChargebackEvent,
    ) -> Result<Outcome, S::Error> {
        self.process_chargebacks(store, std::slice::from_ref(&event))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({"provider_event_id":"cb_9","order_id":"ord_42","status":"opened",
               "reason":"fraudulent","amount":1999,"currency":"USD",
               "occurred_at":"2026-11-26T11:00:00Z"})
    }

    #[test]
    fn a_valid_chargeback_parses() {
        let c = ChargebackWebhook::from_json(&body()).unwrap();
        assert_eq!(c.status, DisputeStatus::Opened);
        assert_eq!(c.reason.unwrap().as_str(), "fraudulent");
    }

    #[test]
    fn reason_is_optional_but_checked_and_user_id_is_not_needed() {
        let mut b = body();
        b.as_object_mut().unwrap().remove("reason");
        assert!(ChargebackWebhook::from_json(&b).unwrap().reason.is_none());
        b["reason"] = json!("");
        assert_eq!(
            ChargebackWebhook::from_json(&b).unwrap_err().field,
            Some("reason")
        );
        b["reason"] = json!(7);
        assert_eq!(
            ChargebackWebhook::from_json(&b).unwrap_err().field,
            Some("reason")
        );
    }

    #[test]
    fn status_must_be_a_dispute_status() {
        let mut b = body();
        b["status"] = json!("succeeded");
        let e = ChargebackWebhook::from_json(&b).unwrap_err();
        assert_eq!(e.field, Some("status"));
        assert!(e.detail.contains("opened, won, lost"), "{}", e.detail);
    }
}
