//! Consumer transactions shared between partitions.
//!
//! Each partition consumer decodes its records on its own, but the runs it
//! would commit go to its topic's committer. A committer takes every run
//! that is waiting (from any of this process's partitions of the topic) and
//! applies them in **one** transaction: each run's fenced offset move first
//! (its own lease, epoch and expected position, exactly as a transaction of
//! its own would), then all their events together, then one commit. Runs
//! queue up while a transaction is in flight, so batching grows with load by
//! itself, as in the producer's lanes; a lone run is a transaction of its
//! own at no extra wait.
//!
//! Why: at a steady rate spread over many partitions, each partition's
//! transaction held a few events, and the per-transaction work (begin, lease
//! check, commit and its WAL flush, statement start-up) cost more than the
//! events themselves. See docs/performance.md.
//!
//! Nothing about correctness changes. A combined transaction commits all of
//! its runs or none. If it fails for any reason (a fence, a bad record, the
//! database), every run in it is tried again **alone**, in its own fenced
//! transaction, and its partition gets that result: the same outcome it
//! would have had without combining, so halving, dead-lettering, pausing and
//! fencing work as described in [`super::partition`]. Runs of different
//! partitions never share an order (an order's events all go to one
//! partition), so applying them together is applying them one after the
//! other.

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{
    classify::ProcessError,
    config::ConsumerConfig,
    events::TopicEvents,
    unit::{self, Move},
};
use crate::{
    db::{DbError, leases::Lease, offsets::Advance},
    domain::orders::Outcome,
    kafka::envelope::Event,
    metrics::Metrics,
};

/// Transactions a topic's committer runs at once. Two keep the database
/// busy while the next combined run is gathered; more would only split the
/// waiting runs into smaller transactions.
const WORKERS: usize = 2;

/// One partition's run of events, waiting to be committed.
struct Run {
    lease: Lease,
    advance: Advance,
    events: Vec<Event>,
    answer: oneshot::Sender<Result<Outcome, ProcessError>>,
}

/// The committers of this process, one per consumed topic. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Committers {
    by_topic: Arc<HashMap<String, mpsc::Sender<Run>>>,
}

impl Committers {
    /// No committers: every partition commits its own runs.
    pub fn none() -> Self {
        Self::default()
    }

    /// A committer for each topic of `configs`. Its workers stop once every
    /// clone of the returned value is gone.
    pub fn start(pool: &Pool, member: Uuid, metrics: &Metrics, configs: &[ConsumerConfig]) -> Self {
        let mut by_topic = HashMap::new();
        for cfg in configs {
            // Each partition has at most one run waiting.
            let (tx, rx) = mpsc::channel(1024);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..WORKERS {
                let worker = Worker {
                    rx: Arc::clone(&rx),
                    pool: pool.clone(),
                    member,
                    events: TopicEvents::new(metrics, &cfg.topic),
                    max_events: cfg.max_batch,
                    deadline: cfg.db_deadline,
                    gather: cfg.linger / 8,
                };
                tokio::spawn(worker.run());
            }
            by_topic.insert(cfg.topic.clone(), tx);
        }
        Self {
            by_topic: Arc::new(by_topic),
        }
    }

    /// Commits `events` with the fenced offset move `advance`, possibly
    /// together with other partitions' runs. Hands the events back when the
    /// topic has no committer (the caller commits them alone).
    pub(super) async fn commit(
        &self,
        lease: &Lease,
        advance: Advance,
        events: Vec<Event>,
    ) -> Result<Result<Outcome, ProcessError>, Vec<Event>> {
        let Some(tx) = self.by_topic.get(&lease.topic) else {
            return Err(events);
        };
        let (answer, answered) = oneshot::channel();
        let run = Run {
            lease: lease.clone(),
            advance,
            events,
            answer,
        };
        if let Err(mpsc::error::SendError(run)) = tx.send(run).await {
            return Err(run.events);
        }
        // A worker answers every run it takes; it only goes away with the
        // runtime.
        Ok(answered.await.unwrap_or_else(|_| {
            Err(ProcessError::Db(DbError::Build(
                "the committer stopped before answering".into(),
            )))
        }))
    }
}

struct Worker {
    rx: Arc<Mutex<mpsc::Receiver<Run>>>,
    pool: Pool,
    member: Uuid,
    events: TopicEvents,
    /// Most events in a combined transaction (`CONSUMER_MAX_BATCH`); a run
    /// that alone is larger goes alone.
    max_events: usize,
    deadline: Duration,
    /// How long a small transaction waits for other partitions' runs after
    /// its first one (an eighth of `CONSUMER_LINGER`).
    gather: Duration,
}

impl Worker {
    async fn run(self) {
        loop {
            let runs = {
                let mut rx = self.rx.lock().await;
                let Some(first) = rx.recv().await else { return };
                let mut events = first.events.len();
                let mut runs = vec![first];
                // Runs that are ready join this transaction. While it is
                // small (a trickle, not a backlog), so do runs that become
                // ready within `gather`: partitions answered together fetch
                // together, so after a few transactions their runs arrive
                // within that window.
                let until = tokio::time::Instant::now() + self.gather;
                while events < self.max_events {
                    let next = match rx.try_recv() {
                        Ok(r) => Some(r),
                        Err(_) if events < self.max_events / 8 => {
                            tokio::time::timeout_at(until, rx.recv())
                                .await
                                .ok()
                                .flatten()
                        }
                        Err(_) => None,
                    };
                    match next {
                        Some(r) if events + r.events.len() <= self.max_events => {
                            events += r.events.len();
                            runs.push(r);
                        }
                        Some(r) => {
                            // Too many for this one: it goes next, alone.
                            self.commit_alone(r).await;
                            break;
                        }
                        None => break,
                    }
                }
                runs
            };
            if runs.len() == 1 {
                let run = runs.into_iter().next().expect("one run");
                self.commit_alone(run).await;
            } else {
                self.commit_combined(runs).await;
            }
        }
    }

    /// One run in its own fenced transaction, as a partition would commit
    /// it without a committer.
    async fn commit_alone(&self, run: Run) {
        let fence = Move {
            lease: &run.lease,
            advance: run.advance,
        };
        let r = unit::commit(
            &self.pool,
            self.member,
            fence,
            unit::Events::Events(run.events),
            self.deadline,
        )
        .await;
        self.events.transaction(r.is_ok());
        let _ = run.answer.send(r);
    }

    /// Several runs in one transaction; if it fails, each alone.
    async fn commit_combined(&self, runs: Vec<Run>) {
        let moves: Vec<Move<'_>> = runs
            .iter()
            .map(|r| Move {
                lease: &r.lease,
                advance: r.advance,
            })
            .collect();
        // The events are cloned so that each run still has its own if the
        // combined transaction fails; they are small next to a transaction.
        let events: Vec<Event> = runs.iter().flat_map(|r| r.events.iter().cloned()).collect();
        let r = unit::commit_combined(&self.pool, self.member, &moves, events, self.deadline).await;
        drop(moves);
        self.events.transaction(r.is_ok());
        match r {
            Ok(outcome) => {
                // The topic's counters see the whole transaction once.
                let mut outcome = Some(outcome);
                for run in runs {
                    let _ = run.answer.send(Ok(outcome.take().unwrap_or_default()));
                }
            }
            Err(_) => {
                for run in runs {
                    self.commit_alone(run).await;
                }
            }
        }
    }
}
