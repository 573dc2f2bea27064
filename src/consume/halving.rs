//! Finding the one record that makes a transaction fail, by halving.
//!
//! When a run of `n` records fails, its first half is tried alone next; if
//! it commits, the failure is in the second half, which is halved in turn;
//! if it fails, the first half is. Good records on either side commit as
//! they are found, and a bad record among `n` is isolated in about
//! `2·log2(n)` transactions. Only a record that failed *on its own* is
//! blamed; what happens to it then (a pause, a dead letter) is the
//! partition loop's decision ([`super::partition`]).
//!
//! [`Halving`] is the bookkeeping: the loop asks it how many records the
//! next transaction takes, and tells it how each one went. The loop's unit
//! tests drive it through scripted transactions; the tests here pin the
//! transitions.

use rskafka::record::RecordAndOffset;

/// A run of offsets `[from, to)` known to hold a record that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Suspect {
    from: i64,
    to: i64,
}

/// Who a failed transaction blames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// A run of several records: its first half is tried next.
    Run,
    /// One record, on its own.
    Record,
}

/// Where the search for a failing record stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Halving {
    suspect: Option<Suspect>,
}

impl Halving {
    /// Whether a failing record is being isolated. Its transactions are
    /// then never combined with other partitions' runs, so each outcome is
    /// this run's alone.
    pub fn isolating(&self) -> bool {
        self.suspect.is_some()
    }

    /// How many records of `rest` (the fetched records from the position
    /// on, in offset order) the next transaction takes: all that fit in a
    /// batch or, while isolating, the first half of the suspect run (one
    /// record once the run is down to one).
    pub fn next_len(&self, rest: &[RecordAndOffset], max_batch: usize) -> usize {
        let want = match self.suspect {
            Some(s) if rest.first().is_some_and(|r| r.offset == s.from) => {
                let in_run = rest.iter().take_while(|r| r.offset < s.to).count();
                (in_run / 2).max(1)
            }
            _ => max_batch.max(1),
        };
        want.min(rest.len())
    }

    /// The run ending before `next` committed: the failure, if any, is after
    /// it.
    pub fn committed(&mut self, next: i64) {
        self.suspect = self.suspect.and_then(|s| {
            let rest = Suspect {
                from: next,
                to: s.to,
            };
            (rest.from < rest.to).then_some(rest)
        });
    }

    /// The run `[first, next)` of `n` records failed.
    pub fn failed(&mut self, first: i64, next: i64, n: usize) -> Blame {
        if n > 1 {
            self.suspect = Some(Suspect {
                from: first,
                to: next,
            });
            Blame::Run
        } else {
            self.suspect = None;
            Blame::Record
        }
    }

    /// Forget the search (the position moved under the loop, or the
    /// blamed record was dealt with).
    pub fn reset(&mut self) {
        self.suspect = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rskafka::record::Record;

    fn records(offsets: std::ops::Range<i64>) -> Vec<RecordAndOffset> {
        offsets
            .map(|offset| RecordAndOffset {
                record: Record {
                    key: None,
                    value: None,
                    headers: Default::default(),
                    timestamp: Utc::now(),
                },
                offset,
            })
            .collect()
    }

    #[test]
    fn a_failed_run_is_halved_until_one_record_is_left() {
        let all = records(0..10);
        let mut h = Halving::default();
        assert_eq!(h.next_len(&all, 100), 10);
        assert_eq!(h.failed(0, 10, 10), Blame::Run);
        assert!(h.isolating());
        assert_eq!(h.next_len(&all, 100), 5);
        // 0..5 fails: its half next.
        assert_eq!(h.failed(0, 5, 5), Blame::Run);
        assert_eq!(h.next_len(&all, 100), 2);
        // 0..2 commits: the rest of the suspect run, 2..5, is halved.
        h.committed(2);
        assert_eq!(h.next_len(&all[2..], 100), 1);
        h.committed(3);
        assert_eq!(h.next_len(&all[3..], 100), 1);
        assert_eq!(h.failed(3, 4, 1), Blame::Record);
        assert!(!h.isolating());
        // Past the blamed record, whole batches again.
        assert_eq!(h.next_len(&all[4..], 100), 6);
    }

    #[test]
    fn a_suspect_run_that_commits_to_its_end_is_cleared() {
        let mut h = Halving::default();
        h.failed(10, 14, 4);
        h.committed(12);
        assert!(h.isolating());
        h.committed(14);
        assert!(!h.isolating());
        assert_eq!(h.next_len(&records(14..20), 3), 3);
    }

    #[test]
    fn batches_never_exceed_what_was_fetched_or_the_limit() {
        let h = Halving::default();
        assert_eq!(h.next_len(&records(0..3), 2000), 3);
        assert_eq!(h.next_len(&records(0..3000), 2000), 2000);
        assert_eq!(h.next_len(&records(0..5), 0), 1);
        assert_eq!(h.next_len(&[], 10), 0);
    }
}
