//! The transaction unit: how a run of records becomes effects in Postgres.
//!
//! Every consumer transaction has the same shape:
//! 1. **fence**: move the stored offset (`consumer_offsets`) from the
//!    position the consumer expects to the one after its run. The statement
//!    requires this process's lease at its epoch and locks the lease and
//!    offset rows until commit ([`crate::db::offsets::advance`]), so a
//!    consumer whose lease or position is stale learns it before writing
//!    anything;
//! 2. **effect**: apply the run's events (payments, chargebacks, disputes
//!    waiting for their payment), or publish a dead letter and wait for the
//!    broker's acknowledgement;
//! 3. **commit**, within a client-side deadline.
//!
//! Effect and acknowledgement commit or vanish together: a crash at any
//! point neither loses nor repeats an effect. The partition loop
//! ([`super::partition`], through [`super::sink`]) commits one run at a time
//! with [`commit`]; the [`super::committer`] commits several partitions'
//! runs with [`commit_combined`], which fences each of them first.

use std::{future::Future, time::Duration};

use deadpool_postgres::{Pool, Transaction};
use tracing::debug;
use uuid::Uuid;

use super::{classify::ProcessError, waiting};
use crate::{
    db::{
        DbError,
        leases::Lease,
        offsets::{self, Advance},
        store::PgStore,
    },
    domain::{
        disputes::{ChargebackEvent, DisputeService},
        orders::{OrderService, Outcome, PaymentEvent},
    },
    kafka::envelope::Event,
};

/// What a fenced transaction does between its fence and its commit.
pub enum Effect<P> {
    /// Apply these events.
    Events(Vec<Event>),
    /// Publish a dead letter (the future resolves once the broker has
    /// acknowledged it, or with [`ProcessError::DeadLetter`]) before the
    /// offset moves past its record.
    DeadLetter(P),
}

/// A run of events as [`commit`] takes it; no dead letter to publish.
pub type Events = Effect<std::future::Ready<Result<(), ProcessError>>>;

/// One fenced move of a partition's stored offset: this process holds
/// `lease`, the database holds `advance.expected`, and the run ends before
/// `advance.next`.
#[derive(Clone, Copy, Debug)]
pub struct Move<'a> {
    pub lease: &'a Lease,
    pub advance: Advance,
}

/// One partition's run in its own transaction: fence, effect, commit, all
/// within `deadline`.
pub async fn commit<P>(
    pool: &Pool,
    member: Uuid,
    fence_move: Move<'_>,
    effect: Effect<P>,
    deadline: Duration,
) -> Result<Outcome, ProcessError>
where
    P: Future<Output = Result<(), ProcessError>>,
{
    with_deadline(deadline, async {
        let mut conn = pool.get().await.map_err(DbError::from)?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        // On error, dropping `tx` rolls back; nothing was written.
        fence(&tx, member, fence_move).await?;
        let outcome = match effect {
            Effect::Events(events) => apply_events(&tx, events).await?,
            Effect::DeadLetter(publish) => {
                publish.await?;
                Outcome::default()
            }
        };
        tx.commit().await.map_err(DbError::from)?;
        Ok(outcome)
    })
    .await
}

/// Several partitions' runs in one transaction: every run's fence first, in
/// `(group, topic, partition)` order (the lease rows' one lock order, see
/// [`crate::db::leases`]), then all their events, then one commit. Any
/// fence or failure rolls all of it back (the committer then retries each
/// run alone).
pub async fn commit_combined(
    pool: &Pool,
    member: Uuid,
    moves: &[Move<'_>],
    events: Vec<Event>,
    deadline: Duration,
) -> Result<Outcome, ProcessError> {
    with_deadline(deadline, async {
        let mut conn = pool.get().await.map_err(DbError::from)?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let mut ordered: Vec<Move<'_>> = moves.to_vec();
        ordered.sort_by(|a, b| {
            (&a.lease.group, &a.lease.topic, a.lease.partition).cmp(&(
                &b.lease.group,
                &b.lease.topic,
                b.lease.partition,
            ))
        });
        for m in ordered {
            fence(&tx, member, m).await?;
        }
        let outcome = apply_events(&tx, events).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(outcome)
    })
    .await
}

/// A transaction with a client-side deadline: a database that stops
/// answering without closing the connection is a transient failure after
/// `after`, not a partition stuck for the kernel's keepalive time.
async fn with_deadline(
    after: Duration,
    tx: impl Future<Output = Result<Outcome, ProcessError>>,
) -> Result<Outcome, ProcessError> {
    match tokio::time::timeout(after, tx).await {
        Ok(r) => r,
        Err(_) => Err(ProcessError::Db(DbError::Timeout {
            what: "a consumer transaction",
            after,
        })),
    }
}

/// The first statement of every effect transaction: moves the stored offset
/// if this member still holds the lease at its epoch, and locks both rows
/// until commit; otherwise says why not.
async fn fence(tx: &Transaction<'_>, member: Uuid, m: Move<'_>) -> Result<(), ProcessError> {
    match offsets::advance(tx, member, m.lease, m.advance).await? {
        Ok(()) => Ok(()),
        Err(offsets::Fenced::Lease) => Err(ProcessError::LeaseLost {
            epoch: m.lease.epoch,
        }),
        Err(offsets::Fenced::Offset(found)) => Err(ProcessError::Fenced {
            expected: m.advance.expected,
            found,
        }),
    }
}

/// The effects of a run of events, inside the fenced transaction.
async fn apply_events(tx: &Transaction<'_>, events: Vec<Event>) -> Result<Outcome, DbError> {
    let mut payments: Vec<PaymentEvent> = Vec::new();
    let mut chargebacks: Vec<ChargebackEvent> = Vec::new();
    let mut pending = Vec::new();
    for ev in events {
        match ev {
            Event::Payment(p) => payments.push(p),
            Event::Chargeback(c) => chargebacks.push(c),
            Event::PendingChargeback(d) => pending.push(d),
        }
    }
    let mut store = PgStore::new(tx);
    let a = OrderService
        .process_payment_webhooks(&mut store, &payments)
        .await?;
    // Disputes that name a payment, not an order: resolved (or parked) now,
    // and those that waited for these payments released.
    let settled = waiting::settle(tx, &payments, pending).await?;
    chargebacks.extend(settled.resolved);
    let b = DisputeService
        .process_chargebacks(&mut store, &chargebacks)
        .await?;
    for p in &payments {
        debug!(event_id = %p.event_id, order_id = %p.webhook.order_id, topic = %p.source.topic,
               partition = p.source.partition, offset = p.source.offset, "payment applied");
    }
    for c in &chargebacks {
        debug!(event_id = %c.event_id, order_id = %c.webhook.order_id, topic = %c.source.topic,
               partition = c.source.partition, offset = c.source.offset, "chargeback applied");
    }
    Ok(Outcome {
        stored: a.stored + b.stored,
        duplicates: a.duplicates + b.duplicates,
        changed: a.changed + b.changed,
    })
}
