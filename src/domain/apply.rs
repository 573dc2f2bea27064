//! The one rule both services follow when applying a batch of events.
//!
//! 1. Keep the first of each `provider_event_id` in the batch.
//! 2. Record those not stored yet; a duplicate is a success that changes
//!    nothing.
//! 3. Of the new ones, per order, the latest by `occurred_at` (the later in
//!    the batch on a tie, because it was accepted later) moves the order's
//!    state — unless the state already holds a later event. State never goes
//!    backwards.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
};

use super::types::{OccurredAt, ProviderEventId};

/// What the rule needs to know about an event.
pub trait Keyed {
    fn provider_event_id(&self) -> &str;
    fn order_id(&self) -> &str;
    fn occurred_at(&self) -> OccurredAt;
}

/// Storage for one kind of event. Both calls run inside the caller's
/// transaction, which also records the consumer offset.
pub trait EventStore<E> {
    type Error;

    /// Records each event whose `provider_event_id` is not stored yet, and
    /// returns the ids that were new. Events already stored are left alone.
    fn insert_new(
        &mut self,
        events: &[&E],
    ) -> impl Future<Output = Result<Vec<ProviderEventId>, Self::Error>> + Send;

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
    let unique = first_of_each(events, |e| e.provider_event_id());
    let new_ids = store.insert_new(&unique).await?;
    let new: HashSet<&str> = new_ids.iter().map(|i| i.as_str()).collect();
    let fresh: Vec<&E> = unique
        .into_iter()
        .filter(|e| new.contains(e.provider_event_id()))
        .collect();
    let latest = latest_per_key(&fresh, |e| (e.order_id(), e.occurred_at()));
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

/// Keeps the first event for each id, in order.
fn first_of_each<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|t| seen.insert(id(t))).collect()
}

/// For each key, the item with the latest time; on a tie the later item wins,
/// because it was accepted later. Result in order of each key's first item.
fn latest_per_key<'a, T, K: Ord + Copy>(
    items: &[&'a T],
    key_and_time: impl Fn(&T) -> (&str, K),
) -> Vec<&'a T> {
    let mut slot: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut out: Vec<&'a T> = Vec::new();
    for &item in items {
        let (key, time) = key_and_time(item);
        match slot.get(key) {
            Some(&i) => {
                if time >= key_and_time(out[i]).1 {
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
    fn latest_per_key_prefers_later_items_on_ties() {
        let items = [("a", 1), ("b", 5), ("a", 3), ("a", 3), ("b", 4)];
        let refs: Vec<&(&str, i32)> = items.iter().collect();
        let out = latest_per_key(&refs, |&(k, t)| (k, t));
        assert_eq!(out.len(), 2);
        assert!(std::ptr::eq(out[0], &items[3]));
        assert!(std::ptr::eq(out[1], &items[1]));
    }
}
