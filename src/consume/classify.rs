//! Failure classification and the retry policy, in one place.
//!
//! Reading [`ProcessError::class`] tells the whole story of what the consumer
//! retries and what it dead-letters:
//!
//! - **permanent**: the record can never succeed as it is. It is not a valid
//!   envelope or webhook, or the database refused *its data*: SQLSTATE class
//!   `22` (data exception: an escape, a number or a date the column cannot
//!   hold, a string too long), `23` (integrity constraint violation: a
//!   `CHECK`, `NOT NULL` or a unique index other than the idempotency one,
//!   which `ON CONFLICT` absorbs) and `54` (program limit exceeded: an index
//!   row too large). The consumer isolates the one record that causes it
//!   and dead-letters it; the partition moves on.
//! - **transient**: time (or an operator) can heal it, and no record is to
//!   blame. The database unreachable or restarting (`08` connection
//!   exception, `57P01`..`57P03` admin/crash shutdown, cannot connect now),
//!   out of resources (`53`: disk full, out of memory, too many
//!   connections), a serialization failure or deadlock (`40`), a cancelled
//!   statement (`57014`: `statement_timeout`), a lock not available (`55`),
//!   a read-only transaction during a failover (`25`), a missing table or
//!   privilege (`42`: a deployment mistake that dead-lettering every record
//!   would turn into an outage), an internal error (`XX`), a pool timeout,
//!   the broker unreachable, a leader moving, a timeout, and **anything not
//!   listed**. The partition pauses with [`Backoff`] and retries; its offset
//!   does not move.
//!
//! An error whose nature is unknown is treated as transient: retrying a valid
//! payment until an operator looks is loud and safe, dropping it is neither.

use std::time::Duration;

use rand::Rng;

use crate::{
    db::DbError,
    kafka::{KafkaError, envelope::DecodeError},
};

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The same record may succeed later; retry it, do not move past it.
    Transient,
    /// The record can never succeed as it is.
    Permanent,
}

/// Why applying a record (or a batch) failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("record at offset {offset} cannot be decoded: {source}")]
    Decode {
        offset: i64,
        #[source]
        source: DecodeError,
    },
    /// A pin conflict is the record's data, not the database's trouble:
    /// its reason is shown as it is.
    #[error("{}{}", if matches!(.0, DbError::Conflict(_)) { "" } else { "database: " }, .0)]
    Db(#[from] DbError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "stored offset for this partition is {found:?}, expected {expected:?}: another consumer moved it"
    )]
    Fenced {
        expected: Option<i64>,
        found: Option<i64>,
    },
    #[error("the partition's lease (epoch {epoch}) is no longer this process's")]
    LeaseLost { epoch: i64 },
    #[error("dead letter not acknowledged: {message}")]
    DeadLetter {
        message: String,
        /// The broker refused it for what it is (too large, invalid):
        /// sending it again gets the same answer.
        refused: bool,
    },
}

impl ProcessError {
    /// The single retry decision.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Decode { .. } | Self::Db(DbError::Conflict(_)) => ErrorClass::Permanent,
            Self::Db(e) => match e.sqlstate() {
                Some(code) => sqlstate_class(code),
                // Pool timeouts, closed connections, I/O: the database, not
                // the record.
                None => ErrorClass::Transient,
            },
            // Broker trouble passes; a fenced write means our position is
            // stale, and re-reading it fixes that.
            Self::Kafka(_)
            | Self::Fenced { .. }
            | Self::LeaseLost { .. }
            | Self::DeadLetter { .. } => ErrorClass::Transient,
        }
    }

    /// The offset in `topic`/`partition` of the record this failure names,
    /// when it names one there (a pin conflict says which event it
    /// refused; in a transaction shared by several partitions it may be
    /// another's): the search for the failing record can go straight to it
    /// ([`super::halving`]).
    pub fn names_record(&self, topic: &str, partition: i32) -> Option<i64> {
        match self {
            Self::Db(DbError::Conflict(c))
                if c.read_at.topic == topic && c.read_at.partition == partition =>
            {
                Some(c.read_at.offset)
            }
            _ => None,
        }
    }
}

/// What a SQLSTATE says about the record being written (see the module
/// doc for why each class is where it is).
pub fn sqlstate_class(code: &str) -> ErrorClass {
    match code.get(..2) {
        // Data exception, integrity constraint violation, program limit
        // exceeded: this record's data, every time.
        Some("22" | "23" | "54") => ErrorClass::Permanent,
        // 08 connection, 25 transaction state, 40 rollback (serialization,
        // deadlock), 42 schema/privilege, 53 resources, 55 object state
        // (locks), 57 operator intervention (shutdown, statement timeout),
        // 58 system (I/O), XX internal, and everything else.
        _ => ErrorClass::Transient,
    }
}

/// Exponential backoff with full jitter: the n-th pause is drawn uniformly
/// from `[min, min(max, min * 2^n)]`, so many partitions failing together do
/// not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Failures seen since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        if ceiling <= self.min {
            return self.min;
        }
        rand::rng().random_range(self.min..=ceiling)
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(200);
        let mut b = Backoff::new(min, max);
        for n in 0..20u32 {
            let d = b.next_delay();
            let ceiling = (min * 2u32.pow(n.min(10))).min(max);
            assert!(d >= min && d <= ceiling, "attempt {n}: {d:?}");
        }
        assert_eq!(b.attempts(), 20);
        b.reset();
        assert_eq!(b.next_delay(), min);
    }

    #[test]
    fn sqlstates_are_classified_by_class() {
        for code in [
            "22P05", "22003", "22008", "22001", "22021", "23514", "23502", "23505", "54000",
        ] {
            assert_eq!(sqlstate_class(code), ErrorClass::Permanent, "{code}");
        }
        for code in [
            "08006", "08001", "57P01", "57P03", "57014", "53100", "53300", "40001", "40P01",
            "55P03", "25006", "42P01", "42501", "58030", "XX000", "P0001", "",
        ] {
            assert_eq!(sqlstate_class(code), ErrorClass::Transient, "{code}");
        }
    }

    #[test]
    fn decode_errors_are_permanent_and_fencing_is_transient() {
        let e = ProcessError::Decode {
            offset: 3,
            source: DecodeError::NoValue,
        };
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e = ProcessError::Fenced {
            expected: Some(1),
            found: Some(2),
        };
        assert_eq!(e.class(), ErrorClass::Transient);
    }
}
