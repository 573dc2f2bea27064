//! The payment rules over an in-memory store: the reference the SQL store
//! is held to (`tests/it/event_order.rs` runs random event sets through
//! both and compares the rows), and the store of the domain's unit tests.

use std::collections::{HashMap, HashSet};

use super::{
    apply::{EventRef, OrderKey},
    orders::{
        Conflict, PaymentAdvance, PaymentEvent, PaymentStatus, PaymentStore, Pins, Settle,
        order_status, payment_state,
    },
    types::OccurredAt,
};

/// A payment as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRow {
    pub order_id: String,
    pub status: PaymentStatus,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub refunded: i64,
    pub occurred_at: OccurredAt,
    pub provider_event_id: String,
    pub provider: String,
}

impl PaymentRow {
    fn key(&self) -> OrderKey<'_> {
        OrderKey {
            occurred_at: self.occurred_at,
            precedence: self.status.precedence(),
            provider_event_id: &self.provider_event_id,
            provider: &self.provider,
        }
    }
}

/// An order as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRow {
    pub pins: Pins,
    pub status: PaymentStatus,
    pub occurred_at: OccurredAt,
    pub provider_event_id: String,
    pub provider: String,
}

/// Everything in memory.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub events: HashSet<EventRef>,
    /// By `(provider, payment_id)`.
    pub payments: HashMap<(String, String), PaymentRow>,
    /// By `(provider, payment_id, refund key)`.
    pub refunds: HashMap<(String, String, String), i64>,
    pub orders: HashMap<String, OrderRow>,
}

impl PaymentStore for Memory {
    type Error = Conflict;

    async fn insert_new(&mut self, events: &[&PaymentEvent]) -> Result<Vec<EventRef>, Conflict> {
        Ok(events
            .iter()
            .map(|e| EventRef::of(*e))
            .filter(|r| self.events.insert(r.clone()))
            .collect())
    }

    async fn pins(&mut self, orders: &[&str]) -> Result<HashMap<String, Pins>, Conflict> {
        Ok(orders
            .iter()
            .filter_map(|o| {
                self.orders
                    .get(*o)
                    .map(|r| ((*o).to_owned(), r.pins.clone()))
            })
            .collect())
    }

    async fn advance_payments(&mut self, latest: &[PaymentAdvance<'_>]) -> Result<u64, Conflict> {
        let mut changed = 0;
        for a in latest {
            let e = a.event;
            let w = &e.webhook;
            let (provider, payment) = e.payment();
            let row = PaymentRow {
                order_id: w.order_id.to_string(),
                status: w.status,
                amount: a.amount,
                currency: a.currency.map(str::to_owned),
                refunded: 0,
                occurred_at: w.occurred_at,
                provider_event_id: w.provider_event_id.to_string(),
                provider: provider.to_owned(),
            };
            match self
                .payments
                .get_mut(&(provider.to_owned(), payment.to_owned()))
            {
                None => {
                    self.payments
                        .insert((provider.to_owned(), payment.to_owned()), row);
                    changed += 1;
                }
                Some(cur) => {
                    cur.amount = cur.amount.or(row.amount);
                    cur.currency = cur.currency.clone().or(row.currency.clone());
                    if row.key() > cur.key() {
                        cur.status = row.status;
                        cur.occurred_at = row.occurred_at;
                        cur.provider_event_id = row.provider_event_id;
                        changed += 1;
                    }
                }
            }
        }
        Ok(changed)
    }

    async fn add_refunds(&mut self, refunds: &[&PaymentEvent]) -> Result<(), Conflict> {
        for e in refunds {
            let r = e.webhook.refund.as_ref().expect("an event with a refund");
            let (provider, payment) = e.payment();
            let slot = self
                .refunds
                .entry((
                    provider.to_owned(),
                    payment.to_owned(),
                    r.key.as_str().to_owned(),
                ))
                .or_default();
            *slot = (*slot).max(r.amount.minor_units());
            let total: i64 = self
                .refunds
                .iter()
                .filter(|((p, id, _), _)| p == provider && id == payment)
                .map(|(_, a)| a)
                .sum();
            if let Some(row) = self
                .payments
                .get_mut(&(provider.to_owned(), payment.to_owned()))
            {
                row.refunded = total;
            }
        }
        Ok(())
    }

    async fn settle_orders(&mut self, orders: &[Settle<'_>]) -> Result<u64, Conflict> {
        let mut n = 0;
        for s in orders {
            let payments: Vec<&PaymentRow> = self
                .payments
                .values()
                .filter(|p| p.order_id == s.order_id)
                .collect();
            let Some(status) = order_status(
                payments
                    .iter()
                    .map(|p| payment_state(p.status, p.amount, p.refunded)),
            ) else {
                continue;
            };
            let last = payments.iter().map(|p| p.key()).max().expect("a payment");
            let (at, id, provider) = (
                last.occurred_at,
                last.provider_event_id.to_owned(),
                last.provider.to_owned(),
            );
            let pins = match self.orders.get(s.order_id) {
                Some(cur) => Pins {
                    user_id: cur.pins.user_id.clone().or(s.pins.user_id.clone()),
                    amount: cur.pins.amount.or(s.pins.amount),
                    currency: cur.pins.currency.clone().or(s.pins.currency.clone()),
                },
                None => s.pins.clone(),
            };
            self.orders.insert(
                s.order_id.to_owned(),
                OrderRow {
                    pins,
                    status,
                    occurred_at: at,
                    provider_event_id: id,
                    provider,
                },
            );
            n += 1;
        }
        Ok(n)
    }
}
