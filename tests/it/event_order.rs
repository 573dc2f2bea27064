//! One event order in Rust and in SQL, checked against the real database.
//!
//! The consumer decides in Rust which event of a batch is an order's latest
//! (`domain::apply`), and Postgres decides whether it moves the stored row
//! (the `WHERE` of the upserts in `db::store`). The two must agree on every
//! instant Postgres can store, or an order's final state would depend on
//! how its events were batched. This property runs random event sets
//! through both: the Rust rule over an in-memory store, and the real SQL
//! upserts in Postgres, each with its own random batching and interleaving
//! of shards, and compares the final rows.

use std::collections::HashMap;

use payhook::{
    db::store::PgStore,
    domain::{
        apply::{EventStore, Keyed},
        orders::{OrderService, PaymentEvent, PaymentWebhook, SourcePosition},
        types::{OccurredAt, Origin, ProviderEventId},
    },
};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use serde_json::json;

use crate::helpers::Env;

/// Instants that collide: microsecond ties, a leap second and the instant
/// Postgres makes of it, and their neighbours.
const INSTANTS: &[&str] = &[
    "2016-12-31T23:59:59.999999Z",
    "2016-12-31T23:59:60Z",
    "2016-12-31T23:59:60.000001Z",
    "2017-01-01T00:00:00Z",
    "2017-01-01T00:00:00.000001Z",
    "2017-01-01T00:00:00.0000019Z",
    "2026-11-26T10:00:00Z",
    "2026-11-26T10:00:00.000000Z",
];

/// Ids that look alike: case, a Cyrillic letter, an accent, a zero-width
/// space, a prefix of another.
const IDS: &[&str] = &[
    "evt_a",
    "evt_A",
    "evt_\u{430}",
    "évt_a",
    "evt_a\u{200b}",
    "evt_",
    "evt_aa",
    "evt_b",
];

const STATUSES: &[&str] = &["pending", "failed", "succeeded", "refunded"];

/// The final state of each order: status, instant (µs), last event id.
type Rows = HashMap<String, (String, i64, String)>;

/// The Rust side: the domain's rule over an in-memory store.
#[derive(Default)]
struct Memory {
    ids: std::collections::HashSet<String>,
    orders: HashMap<String, (PaymentEvent, ())>,
}

impl EventStore<PaymentEvent> for Memory {
    type Error = std::convert::Infallible;

    async fn insert_new(
        &mut self,
        events: &[&PaymentEvent],
    ) -> Result<Vec<ProviderEventId>, Self::Error> {
        Ok(events
            .iter()
            .filter(|e| self.ids.insert(e.provider_event_id().to_owned()))
            .map(|e| e.webhook.provider_event_id.clone())
            .collect())
    }

    async fn advance(&mut self, latest: &[&PaymentEvent]) -> Result<u64, Self::Error> {
        let mut changed = 0;
        for e in latest {
            let later = match self.orders.get(e.order_id()) {
                Some((cur, ())) => e.order_key() > cur.order_key(),
                None => true,
            };
            if later {
                self.orders
                    .insert(e.order_id().to_owned(), ((*e).clone(), ()));
                changed += 1;
            }
        }
        Ok(changed)
    }
}

fn event(case: usize, order: usize, id: &str, status: &str, at: &str, n: usize) -> PaymentEvent {
    let body = json!({"provider_event_id": format!("{case}-{id}"),
                      "order_id": format!("c{case}-o{order}"), "user_id": "u", "status": status,
                      "amount": 1, "currency": "EUR", "occurred_at": at});
    PaymentEvent {
        event_id: uuid::Uuid::now_v7(),
        webhook: PaymentWebhook::from_json(&body).unwrap(),
        payload: body.to_string(),
        source: SourcePosition {
            topic: "t".into(),
            partition: 0,
            offset: n as i64,
        },
        origin: Origin::generic(),
    }
}

/// Splits `events` into batches of random sizes.
fn batches(events: Vec<PaymentEvent>, cuts: &[usize]) -> Vec<Vec<PaymentEvent>> {
    let mut out = Vec::new();
    let mut rest = events;
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = (c % rest.len()).max(1);
        let tail = rest.split_off(n);
        out.push(rest);
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_postgres_order_events_alike_whatever_the_batching() {
    let env = Env::new().await;
    let cases: usize = std::env::var("EVENT_ORDER_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases: cases as u32,
        failure_persistence: None,
        ..Config::default()
    });
    // Per case: events as (order, id, status, instant) indices, then cuts
    // and a shuffle seed for each side.
    let events = prop::collection::vec(
        (
            0..3usize,
            0..IDS.len(),
            0..STATUSES.len(),
            0..INSTANTS.len(),
        ),
        1..24,
    );
    let cuts = prop::collection::vec(1..8usize, 0..10);
    let strategy = (events, cuts.clone(), cuts, any::<u64>(), any::<u64>());
    let pool = payhook::db::pool(&env.db_url, 2, std::time::Duration::from_secs(5)).unwrap();
    let mut leap_cases = 0;
    for case in 0..cases {
        let (spec, rust_cuts, sql_cuts, rust_seed, sql_seed) =
            strategy.new_tree(&mut runner).unwrap().current();
        // One content per id: a repeat of an id is the same event.
        let mut content: HashMap<usize, (usize, usize, usize)> = HashMap::new();
        let all: Vec<PaymentEvent> = spec
            .iter()
            .enumerate()
            .map(|(n, &(o, id, st, at))| {
                let (o, st, at) = *content.entry(id).or_insert((o, st, at));
                event(case, o, IDS[id], STATUSES[st], INSTANTS[at], n)
            })
            .collect();
        leap_cases += usize::from(
            spec.iter().any(|e| INSTANTS[e.3].contains(":60"))
                && spec
                    .iter()
                    .any(|e| INSTANTS[e.3].starts_with("2017-01-01T00:00:00")),
        );
        let shuffled = |seed: u64| {
            use rand::{SeedableRng, seq::SliceRandom};
            let mut v = all.clone();
            v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            v
        };

        // Rust: the domain's rule, in memory.
        let mut memory = Memory::default();
        for b in batches(shuffled(rust_seed), &rust_cuts) {
            OrderService
                .process_payment_webhooks(&mut memory, &b)
                .await
                .unwrap();
        }
        let rust: Rows = memory
            .orders
            .into_iter()
            .map(|(order, (e, ()))| {
                (
                    order,
                    (
                        e.webhook.status.as_str().to_owned(),
                        e.webhook.occurred_at.as_datetime().timestamp_micros(),
                        e.provider_event_id().to_owned(),
                    ),
                )
            })
            .collect();

        // SQL: the real upserts, one transaction per batch.
        for b in batches(shuffled(sql_seed), &sql_cuts) {
            let mut conn = pool.get().await.unwrap();
            let tx = conn.transaction().await.unwrap();
            let mut store = PgStore::new(&tx);
            OrderService
                .process_payment_webhooks(&mut store, &b)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let sql: Rows = env
            .db
            .query(
                "SELECT order_id, payment_status,
                        (extract(epoch FROM status_occurred_at) * 1000000)::int8,
                        last_provider_event_id
                   FROM orders WHERE order_id LIKE $1",
                &[&format!("c{case}-%")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        assert_eq!(
            rust,
            sql,
            "case {case}: the Rust rule and Postgres disagree on {:?}",
            spec.iter()
                .map(|&(o, id, st, at)| (o, IDS[id], STATUSES[st], INSTANTS[at]))
                .collect::<Vec<_>>()
        );
    }
    eprintln!("event order: {cases} cases agree ({leap_cases} with a leap second and midnight)");
    assert!(leap_cases > 0, "the cases reach the leap second");
    env.cleanup().await;
}

#[test]
fn the_instants_collide_as_intended() {
    let at = |s: &str| OccurredAt::parse(s).unwrap();
    assert_eq!(at(INSTANTS[1]), at(INSTANTS[3]));
    assert_eq!(at(INSTANTS[4]), at(INSTANTS[5]));
    assert_eq!(at(INSTANTS[6]), at(INSTANTS[7]));
}
