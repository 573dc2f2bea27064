//! One truth of an order in Rust and in SQL, checked against the real
//! database.
//!
//! The consumer decides in Rust which event of a batch is each payment's
//! latest (`domain::apply`), and Postgres decides whether it moves the
//! stored payment (the `WHERE` of the upserts in `db::store`), sums the
//! refunds and derives the order from its payments. The two must agree on
//! every instant Postgres can store, or an order's final state would depend
//! on how its events were batched. This property runs random event sets
//! (several providers sharing id texts, several payments per order, partial
//! refunds reported several times, events with and without amounts) through
//! both: the domain's reference store in memory (`domain::model::Memory`),
//! and the real SQL in Postgres, each with its own random arrival order and
//! batching, and compares the final payments and orders.

use std::collections::HashMap;

use payhook::{
    db::store::PgStore,
    domain::{
        model::Memory,
        orders::{OrderService, PaymentEvent, PaymentWebhook, SourcePosition},
        types::{OccurredAt, Origin},
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
/// space, a prefix of another. Every provider uses the same texts.
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

const PROVIDERS: &[&str] = &["generic", "stripe", "adyen"];
const STATUSES: &[&str] = &["pending", "failed", "succeeded", "refunded"];
const REFUNDS: &[i64] = &[30, 70, 100];

/// Each order's final row: status, instant (µs), last event and its
/// provider, user, amount, currency.
type Orders = HashMap<
    String,
    (
        String,
        i64,
        String,
        String,
        Option<String>,
        Option<i64>,
        Option<String>,
    ),
>;
/// Each payment's final row, by (provider, payment): order, status, amount,
/// currency, refunded amount, instant (µs), last event.
type Payments = HashMap<
    (String, String),
    (
        String,
        String,
        Option<i64>,
        Option<String>,
        i64,
        i64,
        String,
    ),
>;

/// One generated event: indices into the tables above.
#[derive(Clone, Copy, Debug)]
struct Spec {
    order: usize,
    id: usize,
    provider: usize,
    payment: usize,
    status: usize,
    at: usize,
    /// Whether it carries the order's user, amount and currency.
    carries: bool,
    /// A refund it reports: key and amount.
    refund: Option<(usize, usize)>,
}

fn event(case: usize, s: Spec, n: usize) -> PaymentEvent {
    let provider = PROVIDERS[s.provider];
    let order = format!("c{case}-o{}", s.order);
    // The database is shared by the cases: each has its own ids.
    let mut body = json!({"provider_event_id": format!("{case}-{}", IDS[s.id]), "order_id": order,
                          "status": STATUSES[s.status], "occurred_at": INSTANTS[s.at]});
    // payhook's own events are about the order's one payment.
    if provider != "generic" {
        body["payment_id"] = json!(format!("{order}-p{}", s.payment));
    }
    if s.carries {
        body["user_id"] = json!("u");
        body["amount"] = json!(100);
        body["currency"] = json!("EUR");
    }
    if let Some((key, amount)) = s.refund {
        body["refund_key"] = json!(format!("r{key}"));
        body["refund_amount"] = json!(REFUNDS[amount]);
    }
    PaymentEvent {
        event_id: uuid::Uuid::now_v7(),
        webhook: PaymentWebhook::from_mapped(&body).unwrap(),
        payload: body.to_string(),
        source: SourcePosition {
            topic: "t".into(),
            partition: 0,
            offset: n as i64,
        },
        origin: Origin {
            provider: provider.into(),
            object_ids: Vec::new(),
        },
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
async fn rust_and_postgres_keep_the_same_truth_whatever_the_arrival_and_batching() {
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
    let spec = (
        (0..3usize, 0..IDS.len(), 0..PROVIDERS.len(), 0..2usize),
        (
            0..STATUSES.len(),
            0..INSTANTS.len(),
            any::<bool>(),
            prop::option::of((0..2usize, 0..REFUNDS.len())),
        ),
    )
        .prop_map(
            |((order, id, provider, payment), (status, at, carries, refund))| Spec {
                order,
                id,
                provider,
                payment,
                status,
                at,
                carries,
                refund,
            },
        );
    let events = prop::collection::vec(spec, 1..32);
    let cuts = prop::collection::vec(1..8usize, 0..10);
    let strategy = (events, cuts.clone(), cuts, any::<u64>(), any::<u64>());
    let pool = payhook::db::pool(&env.db_url, 2, std::time::Duration::from_secs(5)).unwrap();
    let (mut leap_cases, mut shared_ids, mut refunded_by_parts, mut several_payments) =
        (0, 0, 0, 0);
    for case in 0..cases {
        let (spec, rust_cuts, sql_cuts, rust_seed, sql_seed) =
            strategy.new_tree(&mut runner).unwrap().current();
        // One content per (provider, id): a repeat is the same event.
        let mut content: HashMap<(usize, usize), Spec> = HashMap::new();
        let spec: Vec<Spec> = spec
            .into_iter()
            .map(|s| *content.entry((s.provider, s.id)).or_insert(s))
            .collect();
        let all: Vec<PaymentEvent> = spec
            .iter()
            .enumerate()
            .map(|(n, &s)| event(case, s, n))
            .collect();
        leap_cases += usize::from(
            spec.iter().any(|e| INSTANTS[e.at].contains(":60"))
                && spec
                    .iter()
                    .any(|e| INSTANTS[e.at].starts_with("2017-01-01T00:00:00")),
        );
        shared_ids += usize::from(
            content
                .keys()
                .any(|(p, id)| content.keys().any(|(q, id2)| p != q && id == id2)),
        );
        let shuffled = |seed: u64| {
            use rand::{SeedableRng, seq::SliceRandom};
            let mut v = all.clone();
            v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            v
        };

        // Rust: the domain's rules, in memory.
        let mut memory = Memory::default();
        for b in batches(shuffled(rust_seed), &rust_cuts) {
            OrderService
                .process_payment_webhooks(&mut memory, &b)
                .await
                .unwrap();
        }
        let micros = |t: OccurredAt| t.as_datetime().timestamp_micros();
        let rust_orders: Orders = memory
            .orders
            .iter()
            .map(|(order, r)| {
                (
                    order.clone(),
                    (
                        r.status.as_str().to_owned(),
                        micros(r.occurred_at),
                        r.provider_event_id.clone(),
                        r.provider.clone(),
                        r.pins.user_id.clone(),
                        r.pins.amount,
                        r.pins.currency.clone(),
                    ),
                )
            })
            .collect();
        let rust_payments: Payments = memory
            .payments
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    (
                        p.order_id.clone(),
                        p.status.as_str().to_owned(),
                        p.amount,
                        p.currency.clone(),
                        p.refunded,
                        micros(p.occurred_at),
                        p.provider_event_id.clone(),
                    ),
                )
            })
            .collect();
        refunded_by_parts += usize::from(memory.payments.values().any(|p| {
            p.status.as_str() == "succeeded" && p.amount.is_some_and(|a| p.refunded >= a)
        }));
        several_payments += usize::from(rust_payments.len() > memory.orders.len());

        // SQL: the real statements, one transaction per batch.
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
        let like = format!("c{case}-%");
        let sql_orders: Orders = env
            .db
            .query(
                "SELECT order_id, payment_status,
                        (extract(epoch FROM status_occurred_at) * 1000000)::int8,
                        last_provider_event_id, last_provider, user_id, amount, currency::text
                   FROM orders WHERE order_id LIKE $1",
                &[&like],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    (
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get(6),
                        r.get(7),
                    ),
                )
            })
            .collect();
        let sql_payments: Payments = env
            .db
            .query(
                "SELECT provider, payment_id, order_id, status, amount, currency::text,
                        refunded_amount,
                        (extract(epoch FROM status_occurred_at) * 1000000)::int8,
                        last_provider_event_id
                   FROM payments WHERE order_id LIKE $1",
                &[&like],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    (r.get(0), r.get(1)),
                    (
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get(6),
                        r.get(7),
                        r.get(8),
                    ),
                )
            })
            .collect();
        let shown = || {
            spec.iter()
                .map(|s| {
                    format!(
                        "{}:{} o{} p{} {} {}{}{}",
                        PROVIDERS[s.provider],
                        IDS[s.id],
                        s.order,
                        s.payment,
                        STATUSES[s.status],
                        INSTANTS[s.at],
                        if s.carries { " +facts" } else { "" },
                        s.refund
                            .map(|(k, a)| format!(" refund r{k}={}", REFUNDS[a]))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rust_payments,
            sql_payments,
            "case {case}: the payments disagree on {:#?}",
            shown()
        );
        assert_eq!(
            rust_orders,
            sql_orders,
            "case {case}: the orders disagree on {:#?}",
            shown()
        );
    }
    eprintln!(
        "event order: {cases} cases agree ({leap_cases} with a leap second and midnight, \
         {shared_ids} with an id text shared by providers, {several_payments} with an order of \
         several payments, {refunded_by_parts} refunded by parts)"
    );
    assert!(leap_cases > 0, "the cases reach the leap second");
    assert!(shared_ids > 0, "the cases share ids between providers");
    assert!(
        several_payments > 0,
        "the cases have orders of several payments"
    );
    assert!(refunded_by_parts > 0, "the cases refund by parts");
    env.cleanup().await;
}

#[test]
fn the_instants_collide_as_intended() {
    let at = |s: &str| OccurredAt::parse(s).unwrap();
    assert_eq!(at(INSTANTS[1]), at(INSTANTS[3]));
    assert_eq!(at(INSTANTS[4]), at(INSTANTS[5]));
    assert_eq!(at(INSTANTS[6]), at(INSTANTS[7]));
}
