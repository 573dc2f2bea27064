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
//! A failure that names its record (a pin conflict names the event it
//! refused) skips the halving: the records before it are tried as one run,
//! then the named one alone, so a partition full of such records costs about
//! three transactions per record instead of `2·log2(n)`. It is still blamed
//! only once it failed on its own: a name that turns out wrong costs a
//! transaction, then halving goes on. After such a failure the next runs
//! are short (twice the records that went before the named one, at least
//! 16) and double with each run that commits, so a partition dense with
//! such records re-applies a few records per failure, not a full batch.
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
    /// The record the failure named, within `from..to`.
    named: Option<i64>,
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
    /// After a failure that named its record: how many records a run takes
    /// until runs commit again (see [`Self::failed`]); `None`: a full batch.
    probe: Option<usize>,
}

/// The shortest run after a named failure.
const MIN_PROBE: usize = 16;
/// A probe that grew this long is dropped: full batches again.
const MAX_PROBE: usize = 1 << 16;

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
            Some(s) if rest.first().is_some_and(|r| r.offset == s.from) => match s.named {
                // The records before the named one, then the named one alone.
                Some(named) => rest.iter().take_while(|r| r.offset < named).count().max(1),
                None => {
                    let in_run = rest.iter().take_while(|r| r.offset < s.to).count();
                    (in_run / 2).max(1)
                }
            },
            _ => self.probe.unwrap_or(max_batch).min(max_batch).max(1),
        };
        want.min(rest.len())
    }

    /// The run ending before `next` committed: the failure, if any, is after
    /// it.
    pub fn committed(&mut self, next: i64) {
        if self.suspect.is_none() {
            // A run of the probe's length went through: longer ones again.
            self.probe = self
                .probe
                .map(|p| p.saturating_mul(2))
                .filter(|&p| p < MAX_PROBE);
        }
        self.suspect = self.suspect.and_then(|s| {
            let rest = Suspect {
                from: next,
                to: s.to,
                named: s.named.filter(|&n| n >= next),
            };
            (rest.from < rest.to).then_some(rest)
        });
    }

    /// The run `[first, next)` of `n` records failed, naming the record at
    /// `named` if the failure said which one it was.
    pub fn failed(&mut self, first: i64, next: i64, n: usize, named: Option<i64>) -> Blame {
        let named = named.filter(|&o| (first..next).contains(&o));
        if let (Some(o), true) = (named, n > 1) {
            // Records that fail by name tend to come in runs (a provider's
            // bad day): until runs commit again, take about twice the
            // records that went before this one, so a partition dense with
            // them is not re-applied a full batch at a time per record.
            let before = usize::try_from(o - first).unwrap_or(usize::MAX);
            self.probe = Some(before.saturating_add(1).saturating_mul(2).max(MIN_PROBE));
        }
        if n > 1 {
            // Each failure shrinks the next run (the records before the
            // name are fewer than the run), so following names ends.
            self.suspect = Some(Suspect {
                from: first,
                to: next,
                named,
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
        assert_eq!(h.failed(0, 10, 10, None), Blame::Run);
        assert!(h.isolating());
        assert_eq!(h.next_len(&all, 100), 5);
        // 0..5 fails: its half next.
        assert_eq!(h.failed(0, 5, 5, None), Blame::Run);
        assert_eq!(h.next_len(&all, 100), 2);
        // 0..2 commits: the rest of the suspect run, 2..5, is halved.
        h.committed(2);
        assert_eq!(h.next_len(&all[2..], 100), 1);
        h.committed(3);
        assert_eq!(h.next_len(&all[3..], 100), 1);
        assert_eq!(h.failed(3, 4, 1, None), Blame::Record);
        assert!(!h.isolating());
        // Past the blamed record, whole batches again.
        assert_eq!(h.next_len(&all[4..], 100), 6);
    }

    #[test]
    fn a_named_record_is_reached_in_two_steps() {
        let all = records(0..1000);
        let mut h = Halving::default();
        // 0..1000 fails naming 700: 0..700 next, then 700 alone.
        assert_eq!(h.failed(0, 1000, 1000, Some(700)), Blame::Run);
        assert_eq!(h.next_len(&all, 2000), 700);
        h.committed(700);
        assert_eq!(h.next_len(&all[700..], 2000), 1);
        assert_eq!(h.failed(700, 701, 1, Some(700)), Blame::Record);
        assert!(!h.isolating());
        assert_eq!(h.next_len(&all[701..], 2000), 299);
        // Named first: alone at once.
        let mut h = Halving::default();
        h.failed(0, 1000, 1000, Some(0));
        assert_eq!(h.next_len(&all, 2000), 1);
        // A name outside the run is ignored: plain halving.
        let mut h = Halving::default();
        h.failed(0, 1000, 1000, Some(5000));
        assert_eq!(h.next_len(&all, 2000), 500);
        // The run before the named record fails too, naming another: that
        // one next; without a name, halving.
        let mut h = Halving::default();
        h.failed(0, 1000, 1000, Some(700));
        assert_eq!(h.failed(0, 700, 700, Some(300)), Blame::Run);
        assert_eq!(h.next_len(&all, 2000), 300);
        assert_eq!(h.failed(0, 300, 300, None), Blame::Run);
        assert_eq!(h.next_len(&all, 2000), 150);
        // A wrong name (the named record commits alone): halving goes on
        // over the rest of the run.
        let mut h = Halving::default();
        h.failed(0, 10, 10, Some(4));
        h.committed(4);
        assert_eq!(h.next_len(&all[4..], 2000), 1);
        h.committed(5);
        assert!(h.isolating());
        assert_eq!(h.next_len(&all[5..], 2000), 2);
    }

    #[test]
    fn after_a_named_failure_runs_are_short_then_grow_back() {
        let all = records(0..100_000);
        let mut h = Halving::default();
        h.failed(0, 2000, 2000, Some(9));
        h.committed(9);
        h.failed(9, 10, 1, Some(9));
        // Twice the 9 before it, at least 16: 20.
        assert_eq!(h.next_len(&all[10..], 2000), 20);
        h.committed(30);
        assert_eq!(h.next_len(&all[30..], 2000), 40);
        h.committed(70);
        assert_eq!(h.next_len(&all[70..], 2000), 80);
        for _ in 0..10 {
            h.committed(1000);
        }
        // Grown past the batch, then dropped.
        assert_eq!(h.next_len(&all[1000..], 2000), 2000);
        assert_eq!(h, Halving::default());
    }

    #[test]
    fn a_suspect_run_that_commits_to_its_end_is_cleared() {
        let mut h = Halving::default();
        h.failed(10, 14, 4, None);
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
