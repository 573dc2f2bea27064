//! Failure classification and the retry policy, in one place.
//!
//! Reading [`ProcessError::class`] tells the whole story of what the consumer
//! retries: a record that can never succeed (it is not a valid envelope or
//! webhook) is **permanent**; everything else — the database restarting, a
//! pool timeout, a serialization failure, the broker moving a leader, a
//! timeout — is **transient** and retried with [`Backoff`], without ever
//! moving the partition past the record.
//!
//! An error whose nature is unknown is treated as transient: retrying a valid
//! payment forever is loud and safe, dropping it is neither.

use std::time::Duration;

use rand::Rng;

use crate::{db::DbError, messaging::KafkaError, messaging::envelope::DecodeError};

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
    #[error("database: {0}")]
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
}

impl ProcessError {
    /// The single retry decision.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Decode { .. } => ErrorClass::Permanent,
            // Database and broker trouble passes; a fenced write means our
            // position is stale, and re-reading it fixes that.
            Self::Db(_) | Self::Kafka(_) | Self::Fenced { .. } => ErrorClass::Transient,
        }
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
