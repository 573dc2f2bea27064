//! Disputes that arrive before their payment.
//!
//! A Stripe dispute names a charge and a payment intent, not an order. The
//! consumer resolves it from the payment events already stored (they keep
//! the provider's object ids). Webhooks are not delivered in order, so the
//! dispute may come first; then it **waits** in `parked_disputes`, written in
//! the consumer's transaction (so it is acknowledged only once it is stored),
//! and is applied in the transaction of the payment event that names one of
//! its objects ([`settle`]). Its final state still follows the event order:
//! waiting only delays when the dispute's events are applied, and the
//! dispute takes the greatest of them whatever their arrival.
//!
//! Both transactions first take an advisory lock per object id
//! ([`crate::db::parked::lock_objects`], sorted, so two never wait on each
//! other in a cycle): whichever commits first, the other's next statement
//! sees it, so a dispute and its payment consumed at the same moment never
//! both miss each other (`tests/it/providers.rs` holds a payment's
//! transaction open while the dispute's runs, both ways round). Only payment
//! events received from the same provider resolve its disputes: a Stripe
//! dispute is not matched against payhook's own (generic) payment events.
//!
//! A dispute whose payment never arrives is **dead-lettered** by the
//! [`Sweeper`] once it has waited `DISPUTE_PAYMENT_WAIT`, with a reason that
//! says which objects it waited for; `payhook dlq replay` sends it back once
//! the payment is known. The number waiting and the age of the oldest are
//! the `payhook_parked_disputes` and `payhook_parked_dispute_oldest_seconds`
//! gauges.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use deadpool_postgres::{Pool, Transaction};
use rskafka::record::Record;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    classify::ErrorClass,
    dlq::{self, Failure},
    events::WaitingEvents,
};
use crate::{
    db::{
        DbError,
        parked::{self, Parked, lock_key},
    },
    domain::{
        disputes::{ChargebackEvent, PendingChargeback},
        orders::PaymentEvent,
        types::OrderId,
    },
    kafka::{
        envelope::{Envelope, Event, HEADER_EVENT_ID, HEADER_TYPE},
        producer::Publish,
        signing::Signer,
    },
};

/// What [`settle`] did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Disputes now keyed to their order, to apply in this transaction.
    pub resolved: Vec<ChargebackEvent>,
    /// Disputes of this chunk that wait for their payment.
    pub parked: usize,
    /// Of `resolved`, those that had been waiting.
    pub released: usize,
}

/// In the consumer's transaction, after the chunk's payment events are
/// stored: resolves the chunk's pending disputes (or parks them), and
/// releases the disputes that waited for the chunk's payments.
pub async fn settle(
    tx: &Transaction<'_>,
    payments: &[PaymentEvent],
    pending: Vec<PendingChargeback>,
) -> Result<Settled, DbError> {
    let naming: Vec<&PaymentEvent> = payments
        .iter()
        .filter(|p| !p.origin.is_generic() && !p.origin.object_ids.is_empty())
        .collect();
    let mut keys: Vec<String> = Vec::new();
    for o in naming
        .iter()
        .map(|p| &p.origin)
        .chain(pending.iter().map(|d| &d.event.origin))
    {
        keys.extend(o.object_ids.iter().map(|id| lock_key(&o.provider, id)));
    }
    let mut out = Settled::default();
    if keys.is_empty() {
        return Ok(out);
    }
    parked::lock_objects(tx, &keys).await?;

    // Disputes that waited for these payments.
    let mut by_provider: BTreeMap<&str, Vec<&PaymentEvent>> = BTreeMap::new();
    for p in &naming {
        by_provider.entry(&p.origin.provider).or_default().push(p);
    }
    for (provider, payments) in by_provider {
        let ids: Vec<String> = payments
            .iter()
            .flat_map(|p| p.origin.object_ids.iter().cloned())
            .collect();
        for w in parked::waiting(tx, provider, &ids).await? {
            let Some(payment) = payments.iter().find(|p| {
                p.origin
                    .object_ids
                    .iter()
                    .any(|id| w.object_ids.contains(id))
            }) else {
                continue;
            };
            match decode(&w) {
                Ok(d) => {
                    parked::remove(tx, &w.provider, &w.provider_event_id).await?;
                    info!(provider_event_id = %w.provider_event_id, order_id = %payment.webhook.order_id,
                          "waiting dispute released by its payment");
                    out.resolved
                        .push(d.resolve(payment.webhook.order_id.clone()));
                    out.released += 1;
                }
                // It decoded when it was parked; if it no longer does, it
                // stays for the sweeper, which dead-letters it as it is.
                Err(e) => {
                    error!(provider_event_id = %w.provider_event_id, error = %e,
                           "a waiting dispute no longer decodes; left for the dead-letter sweep")
                }
            }
        }
    }

    // This chunk's disputes.
    for d in pending {
        let o = &d.event.origin;
        match parked::order_of(tx, &o.provider, &o.object_ids).await? {
            Some(order) => {
                let order = OrderId::parse(&order).map_err(|e| DbError::Build(e.to_string()))?;
                out.resolved.push(d.resolve(order));
            }
            None => {
                if parked::park(tx, &d).await? {
                    info!(provider_event_id = %d.event.webhook.provider_event_id,
                          object_ids = ?o.object_ids, "dispute waits for its payment");
                }
                out.parked += 1;
            }
        }
    }
    Ok(out)
}

/// Why a parked record cannot be used.
#[derive(Debug, thiserror::Error)]
enum ParkedError {
    #[error(transparent)]
    Decode(#[from] crate::kafka::envelope::DecodeError),
    #[error("not a pending dispute")]
    NotPending,
}

/// Decodes a parked record again. Its `occurred_at` passed the
/// `OCCURRED_AT_MAX_FUTURE` check when it was parked; that is not asked
/// again (the setting may have changed since).
fn decode(w: &Parked) -> Result<PendingChargeback, ParkedError> {
    let env = Envelope::decode(Some(w.record_value.as_bytes()))?;
    match env.into_event_within(w.source.clone(), Duration::MAX)? {
        Event::PendingChargeback(d) => Ok(d),
        _ => Err(ParkedError::NotPending),
    }
}

/// The record a parked dispute arrived as: same key and value, headers
/// `event_id` and `type` as the edge set them.
fn record_of(w: &Parked) -> Record {
    let env = Envelope::decode(Some(w.record_value.as_bytes())).ok();
    let mut headers = BTreeMap::new();
    if let Some(e) = &env {
        headers.insert(
            HEADER_EVENT_ID.to_owned(),
            e.event_id.to_string().into_bytes(),
        );
        headers.insert(HEADER_TYPE.to_owned(), e.kind.clone().into_bytes());
    }
    Record {
        key: Some(w.record_key.clone().into_bytes()),
        value: Some(w.record_value.clone().into_bytes()),
        headers,
        timestamp: env.map_or(w.parked_at, |e| e.timestamp),
    }
}

/// Dead-letters disputes that waited too long, one at a time, and keeps the
/// gauges.
#[derive(Clone, Debug)]
pub struct Sweeper {
    pub pool: Pool,
    /// The producer, in the service; tests interpose to inject faults.
    pub publisher: Arc<dyn Publish>,
    pub dlq_topic: String,
    /// `DISPUTE_PAYMENT_WAIT`.
    pub wait: Duration,
    /// `DISPUTE_SWEEP_INTERVAL`.
    pub interval: Duration,
    /// How long a claimed dispute is this sweeper's before another may take
    /// it over (longer than publishing one dead letter may take).
    pub claim_for: Duration,
    /// Bound on each database step.
    pub db_deadline: Duration,
    /// The dead-letter topic's `max.message.bytes`.
    pub dead_letter_max_bytes: usize,
    pub events: WaitingEvents,
    /// `ENVELOPE_SIGNING_KEYS`: the record inside the dead letter is signed
    /// again (its signature was checked when it was parked; the parked row
    /// keeps only its key and value), so `dlq replay` can send it back.
    pub signer: Option<Signer>,
}

/// Disputes dead-lettered per sweep at most; the next sweep goes on.
const SWEEP_BATCH: usize = 100;

/// Why a sweep stopped early; the next one tries again.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("dead letter not acknowledged: {0}")]
    Publish(#[from] crate::kafka::producer::PublishError),
}

impl Sweeper {
    /// Sweeps every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while tokio::select! { _ = shutdown.cancelled() => false, _ = tick.tick() => true } {
            if let Err(e) = self.sweep_once().await {
                warn!(error = %e, "dead-lettering waiting disputes failed; will retry");
            }
            if let Err(e) = self.refresh_gauges().await {
                warn!(error = %e, "cannot count waiting disputes");
            }
        }
    }

    /// Dead-letters up to [`SWEEP_BATCH`] disputes that waited `wait` or
    /// longer (by the database's clock), one at a time: claim it (from then
    /// on no payment releases it), publish its dead letter and wait for the
    /// broker's acknowledgement, then delete it. No transaction is open
    /// while publishing, so a payment never waits on the sweeper. Dying
    /// after the claim leaves it to the next sweep once the claim expires: a
    /// dispute may be dead-lettered twice, never both applied and
    /// dead-lettered. Returns how many were dead-lettered.
    pub async fn sweep_once(&self) -> Result<usize, SweepError> {
        let mut done = 0;
        while done < SWEEP_BATCH {
            let claimed =
                crate::db::bounded("claiming a waiting dispute", self.db_deadline, async {
                    let conn = self.pool.get().await?;
                    parked::claim_expired(&**conn, self.wait, self.claim_for).await
                })
                .await?;
            let Some(w) = claimed else { break };
            self.dead_letter(&w).await?;
            crate::db::bounded(
                "deleting a dead-lettered dispute",
                self.db_deadline,
                async {
                    let conn = self.pool.get().await?;
                    parked::remove_claimed(&**conn, &w.provider, &w.provider_event_id).await
                },
            )
            .await?;
            self.events.dead_lettered(1);
            done += 1;
        }
        Ok(done)
    }

    /// Publishes the dead letter of a claimed dispute.
    async fn dead_letter(&self, w: &Parked) -> Result<(), SweepError> {
        let wait = humantime::format_duration(self.wait).to_string();
        let f = Failure {
            source: w.source.clone(),
            class: ErrorClass::Permanent,
            message: format!(
                "{} dispute {} waited {wait} (DISPUTE_PAYMENT_WAIT) for a payment event \
                 naming one of {:?}, which never arrived; replay it once the payment is known",
                w.provider, w.provider_event_id, w.object_ids
            ),
            attempts: 1,
            first_failure: w.parked_at,
        };
        error!(provider_event_id = %w.provider_event_id, object_ids = ?w.object_ids,
               dlq = %self.dlq_topic, "dispute's payment never arrived; dead-lettering it");
        let mut original = record_of(w);
        if let Some(signer) = &self.signer {
            signer.sign(&mut original);
        }
        let letter = dlq::dead_letter(&original, &f, self.dead_letter_max_bytes);
        self.publisher.publish(&self.dlq_topic, letter).await?;
        Ok(())
    }

    async fn refresh_gauges(&self) -> Result<(), DbError> {
        let conn = self.pool.get().await?;
        let (n, oldest) = parked::stats(&conn).await?;
        self.events.waiting(n, oldest);
        Ok(())
    }
}
