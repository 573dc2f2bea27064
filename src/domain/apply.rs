//! The one rule both services follow when applying a batch of events.
//!
//! 1. Keep the first of each event in the batch: an event is its provider
//!    and its `provider_event_id` ([`EventRef`]; ids are unique per provider
//!    only, so two providers may share an id text).
//! 2. Record those not stored yet; a duplicate is a success that changes
//!    nothing.
//! 3. Of the new ones, per state they move (a payment, a dispute), the
//!    latest by the **event order** moves it — unless it already holds a
//!    later event. State never goes backwards. (An order's payment status is
//!    then derived from its payments: `domain::orders`.)
//!
//! # The event order
//!
//! Providers send whole-second timestamps and retry out of order, so two
//! events of one order often share `occurred_at`; arrival order must not
//! decide between them, or the same events applied in another order would
//! leave another state. Events are totally ordered by [`OrderKey`]:
//!
//! 1. `occurred_at`, at the precision Postgres stores (microseconds;
//!    [`OccurredAt`] is truncated to it when parsed);
//! 2. then the status's **precedence** in its life cycle (payments:
//!    `pending` < `failed` < `succeeded` < `refunded`; disputes: `opened` <
//!    `won` < `lost`), so at the same instant the later stage wins;
//! 3. then `provider_event_id`, compared byte by byte, so two distinct
//!    events of one provider are never equal;
//! 4. then the provider's name, byte by byte.
//!
//! The SQL side (`sql/0002_event_order.sql`, used by the `advance`
//! statements in `db::store`) applies the same rule with `COLLATE "C"` (byte
//! order) and the same precedence functions; a test holds the two together.
//! Because the order is total and state only moves up in it, a final state
//! is the maximum of the events received, whatever their arrival order or
//! batching.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
};

use super::types::OccurredAt;

/// An event's identity: its provider and the provider's id for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventRef {
    pub provider: String,
    pub provider_event_id: String,
}

impl EventRef {
    pub fn of(e: &impl Keyed) -> Self {
        Self {
            provider: e.provider().to_owned(),
            provider_event_id: e.provider_event_id().to_owned(),
        }
    }
}

/// What the rule needs to know about an event.
pub trait Keyed {
    /// The provider that sent it: ids are unique per provider only.
    fn provider(&self) -> &str;
    fn provider_event_id(&self) -> &str;
    fn order_id(&self) -> &str;
    fn occurred_at(&self) -> OccurredAt;
    /// The status's place in its life cycle (see the module doc).
    fn precedence(&self) -> u8;

    /// The event's place in the event order of its order.
    fn order_key(&self) -> OrderKey<'_> {
        OrderKey {
            occurred_at: self.occurred_at(),
            precedence: self.precedence(),
            provider_event_id: self.provider_event_id(),
            provider: self.provider(),
        }
    }
}

/// The total order of the events of one order: compared field by field, in
/// declaration order (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey<'a> {
    pub occurred_at: OccurredAt,
    pub precedence: u8,
    pub provider_event_id: &'a str,
    /// Last: two providers may use the same id text.
    pub provider: &'a str,
}

/// Storage for one kind of event. Both calls run inside the caller's
/// transaction, which also records the consumer offset.
pub trait EventStore<E> {
    type Error;

    /// Records each event whose `(provider, provider_event_id)` is not stored
    /// yet, and returns those that were new. Events already stored are left
    /// alone.
    fn insert_new(
        &mut self,
        events: &[&E],
    ) -> impl Future<Output = Result<Vec<EventRef>, Self::Error>> + Send;

    /// Sets each order's state (payment status, or dispute status) from the
    /// given event unless it already holds a state that occurred later. At
    /// most one event per order.
    fn advance(&mut self, latest: &[&E]) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events stored for the first time.
    pub stored: usize,
    /// Events that were already stored (or repeated within the batch).
    pub duplicates: usize,
    /// Rows whose state changed.
    pub changed: u64,
}

/// Applies a batch of events, given in the order they were accepted.
pub async fn apply_batch<E, S>(store: &mut S, events: &[E]) -> Result<Outcome, S::Error>
where
    E: Keyed + Sync,
    S: EventStore<E> + Send,
{
    let unique = first_of_each(events);
    let new = store.insert_new(&unique).await?;
    let fresh = only_new(unique, &new);
    let latest = latest_per_key(&fresh, |e| (e.order_id(), e.order_key()));
    let changed = if latest.is_empty() {
        0
    } else {
        store.advance(&latest).await?
    };
    Ok(Outcome {
        stored: fresh.len(),
        duplicates: events.len() - fresh.len(),
        changed,
    })
}

/// Keeps the first event of each `(provider, provider_event_id)`, in order.
pub fn first_of_each<T: Keyed>(items: &[T]) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(items.len());
    items
        .iter()
        .filter(|t| seen.insert((t.provider(), t.provider_event_id())))
        .collect()
}

/// Of `unique`, the events `new` names (those stored just now), in order.
pub fn only_new<'a, T: Keyed>(unique: Vec<&'a T>, new: &[EventRef]) -> Vec<&'a T> {
    let new: HashSet<(&str, &str)> = new
        .iter()
        .map(|r| (r.provider.as_str(), r.provider_event_id.as_str()))
        .collect();
    unique
        .into_iter()
        .filter(|e| new.contains(&(e.provider(), e.provider_event_id())))
        .collect()
}

/// For each key, the greatest item by `K`. Items whose `K` are equal are
/// interchangeable (the event order is total, so only repeats of one event
/// compare equal); the first is kept. Result in order of each key's first
/// item.
pub fn latest_per_key<'a, T, Q: std::hash::Hash + Eq, K: Ord>(
    items: &[&'a T],
    key_and_order: impl Fn(&'a T) -> (Q, K),
) -> Vec<&'a T> {
    let mut slot: HashMap<Q, usize> = HashMap::with_capacity(items.len());
    let mut out: Vec<&'a T> = Vec::new();
    for &item in items {
        let (key, order) = key_and_order(item);
        match slot.get(&key) {
            Some(&i) => {
                if order > key_and_order(out[i]).1 {
                    out[i] = item;
                }
            }
            None => {
                slot.insert(key, out.len());
                out.push(item);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_per_key_keeps_the_greatest_whatever_the_position() {
        let items = [("a", 1), ("b", 5), ("a", 3), ("a", 3), ("b", 4)];
        let refs: Vec<&(&str, i32)> = items.iter().collect();
        let out = latest_per_key(&refs, |(k, t)| (*k, *t));
        assert_eq!(out.len(), 2);
        assert!(std::ptr::eq(out[0], &items[2]));
        assert!(std::ptr::eq(out[1], &items[1]));
        let mut rev = refs.clone();
        rev.reverse();
        let out = latest_per_key(&rev, |(k, t)| (*k, *t));
        assert_eq!((*out[0], *out[1]), (("b", 5), ("a", 3)));
    }

    #[test]
    fn the_event_order_compares_time_then_precedence_then_id() {
        let t = |s| OccurredAt::parse(s).unwrap();
        let k = |at, precedence, id| OrderKey {
            occurred_at: t(at),
            precedence,
            provider_event_id: id,
            provider: "p",
        };
        let early = "2026-11-26T10:00:00Z";
        let late = "2026-11-26T10:00:01Z";
        // Time first, whatever the status.
        assert!(k(late, 0, "a") > k(early, 3, "z"));
        // Then the life cycle.
        assert!(k(early, 2, "a") > k(early, 0, "z"));
        // Then the id, byte by byte ("B" < "a" < "é").
        assert!(k(early, 1, "a") > k(early, 1, "B"));
        assert!(k(early, 1, "\u{e9}") > k(early, 1, "z"));
        // Then the provider: the same id text from two providers is two
        // events.
        let mut other = k(early, 1, "a");
        other.provider = "q";
        assert!(other > k(early, 1, "a"));
        // Sub-microsecond digits are not part of it: Postgres keeps none.
        assert_eq!(
            k("2026-11-26T10:00:00.0000011Z", 1, "a"),
            k("2026-11-26T10:00:00.0000019Z", 1, "a")
        );
    }

    /// An event of the test: order, status precedence, time (whole
    /// seconds, so ties are common), id.
    #[derive(Clone, Debug)]
    struct Ev {
        order: String,
        precedence: u8,
        at: OccurredAt,
        id: String,
    }

    impl Keyed for Ev {
        fn provider(&self) -> &str {
            "generic"
        }
        fn provider_event_id(&self) -> &str {
            &self.id
        }
        fn order_id(&self) -> &str {
            &self.order
        }
        fn occurred_at(&self) -> OccurredAt {
            self.at
        }
        fn precedence(&self) -> u8 {
            self.precedence
        }
    }

    /// The SQL store's rules, in memory: ids recorded once, state moved only
    /// to a greater event.
    #[derive(Default)]
    struct Model {
        ids: HashSet<String>,
        state: HashMap<String, Ev>,
    }

    impl EventStore<Ev> for Model {
        type Error = std::convert::Infallible;

        async fn insert_new(&mut self, events: &[&Ev]) -> Result<Vec<EventRef>, Self::Error> {
            Ok(events
                .iter()
                .filter(|e| self.ids.insert(e.id.clone()))
                .map(|e| EventRef::of(*e))
                .collect())
        }

        async fn advance(&mut self, latest: &[&Ev]) -> Result<u64, Self::Error> {
            let mut n = 0;
            for e in latest {
                let greater = self
                    .state
                    .get(&e.order)
                    .is_none_or(|cur| e.order_key() > cur.order_key());
                if greater {
                    self.state.insert(e.order.clone(), (*e).clone());
                    n += 1;
                }
            }
            Ok(n)
        }
    }

    fn final_state(events: &[Ev], batches: &[usize]) -> Vec<(String, String)> {
        let mut store = Model::default();
        let mut rest = events;
        let mut sizes = batches.iter().cycle();
        futures::executor::block_on(async {
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).clamp(1, rest.len());
                apply_batch(&mut store, &rest[..n]).await.unwrap();
                rest = &rest[n..];
            }
        });
        let mut out: Vec<(String, String)> =
            store.state.into_iter().map(|(o, e)| (o, e.id)).collect();
        out.sort();
        out
    }

    proptest::proptest! {
        /// The same set of events, in any arrival order and any batching,
        /// with duplicates and tied timestamps, leaves the same state.
        #[test]
        fn final_state_does_not_depend_on_arrival_order_or_batching(
            raw in proptest::collection::vec((0u8..4, 0u8..4, 0i64..3, 0u8..12), 1..40),
            seed in proptest::prelude::any::<u64>(),
            batches in proptest::collection::vec(1usize..8, 1..4),
        ) {
            let events: Vec<Ev> = raw
                .iter()
                .map(|&(order, precedence, secs, id)| Ev {
                    order: format!("o{order}"),
                    precedence,
                    at: OccurredAt::parse(&format!("2026-11-26T10:00:0{secs}Z")).unwrap(),
                    // The id decides which of two copies is "the" event;
                    // the same id always carries the same fields.
                    id: format!("e{id}-{order}-{precedence}-{secs}"),
                })
                .collect();
            let expected = final_state(&events, &[events.len()]);
            // A deterministic shuffle from the seed.
            let mut shuffled = events.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            proptest::prop_assert_eq!(final_state(&shuffled, &batches), expected.clone());
            let mut reversed = events.clone();
            reversed.reverse();
            proptest::prop_assert_eq!(final_state(&reversed, &[1]), expected);
        }
    }
}
