//! The partition loop's [`Sink`] over Postgres: fenced transactions under
//! the partition's lease ([`super::unit`]), combined with other partitions'
//! runs through the topic's [`Committers`] when the loop allows it, and dead
//! letters published inside their transaction.

use std::time::Duration;

use deadpool_postgres::Pool;
use rskafka::record::Record;
use uuid::Uuid;

use super::{
    classify::ProcessError,
    committer::Committers,
    dlq::{self, Failure},
    events::TopicEvents,
    partition::Sink,
    unit::{self, Effect, Move},
};
use crate::{
    db::{
        self, DbError,
        leases::Lease,
        offsets::{self, Advance, Stored},
    },
    domain::orders::Outcome,
    kafka::{envelope::Event, producer::Producer},
};

/// Where dead letters go.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    pub producer: Producer,
    pub topic: String,
    /// The topic's `max.message.bytes`: no dead letter is larger.
    pub max_bytes: usize,
}

/// One partition's way into the database, under its lease.
pub struct PgSink {
    pub pool: Pool,
    /// This process, as the lease tables know it.
    pub member: Uuid,
    pub lease: Lease,
    pub committers: Committers,
    pub dead_letters: DeadLetters,
    pub events: TopicEvents,
    /// Longest a transaction may take (`DATABASE_STATEMENT_TIMEOUT` + 1 s).
    pub db_deadline: Duration,
    /// Longest the broker may take to acknowledge a dead letter.
    pub publish_timeout: Duration,
}

impl Sink for PgSink {
    async fn stored(&self) -> Result<Option<Stored>, DbError> {
        let l = &self.lease;
        db::bounded("reading the stored offset", self.db_deadline, async {
            let conn = self.pool.get().await?;
            offsets::load_stored(&**conn, &l.group, &l.topic, l.partition).await
        })
        .await
    }

    async fn apply(
        &self,
        advance: Advance,
        events: Vec<Event>,
        combine: bool,
    ) -> Result<Outcome, ProcessError> {
        let events = if combine {
            match self.committers.commit(&self.lease, advance, events).await {
                Ok(r) => return r,
                Err(events) => events,
            }
        } else {
            events
        };
        let fence = Move {
            lease: &self.lease,
            advance,
        };
        let r = unit::commit(
            &self.pool,
            self.member,
            fence,
            unit::Events::Events(events),
            self.db_deadline,
        )
        .await;
        self.events.transaction(r.is_ok());
        r
    }

    async fn dead_letter(
        &self,
        advance: Advance,
        original: &Record,
        failure: &Failure,
    ) -> Result<(), ProcessError> {
        let dl = &self.dead_letters;
        let letter = dlq::dead_letter(original, failure, dl.max_bytes);
        let publish = async {
            dl.producer
                .publish(&dl.topic, letter)
                .await
                .map(|_| ())
                .map_err(|e| ProcessError::DeadLetter {
                    message: e.to_string(),
                    refused: e.refused(),
                })
        };
        let fence = Move {
            lease: &self.lease,
            advance,
        };
        let r = unit::commit(
            &self.pool,
            self.member,
            fence,
            Effect::DeadLetter(publish),
            self.db_deadline + self.publish_timeout,
        )
        .await;
        self.events.transaction(r.is_ok());
        r.map(|_| ())
    }

    fn dead_letter_topic(&self) -> &str {
        &self.dead_letters.topic
    }
}
