//! `cargo bench --bench pipeline [-- SECTION...]`: payhook against the real
//! broker and database.
//!
//! Sections (all by default):
//! - `ceilings`: raw produce to the broker and raw inserts into Postgres;
//! - `ingest`: HTTP in-process at fixed concurrencies and a fixed rate;
//! - `consume`: a pre-filled topic drained into Postgres;
//! - `e2e`: 202 → committed row at a fixed rate;
//! - `fleet`: consume throughput with 1, 2 and 3 `payhook serve` processes
//!   sharing the partitions;
//! - `users`: as a provider sees it: `payhook serve` as a child process
//!   (consumers on, then consumers idle) and a no-op HTTP server child (the
//!   ceiling) driven from this process over keep-alive HTTP at 1/16/64 in
//!   flight and 1,000/2,000/5,000 per second, with end to end, drain time,
//!   CPU seconds per 1,000 events of payhook, the broker, Postgres, the
//!   no-op server and the load generator, ratios to the no-op server, and a
//!   sustained-throughput search (see `users.rs` for the definitions).
//!
//! They run in this order: the per-record produce ceilings, ingest, the bulk
//! produce and insert ceilings (which build all their records up front, so
//! they come after ingest's memory figure), consume, e2e, fleet, users.
//!
//! `PAYHOOK_BENCH_PROFILE=full` for real figures; the default `short`
//! profile is a quick look. Results: a table per section and
//! `target/bench/{ceilings,ingest,consume,e2e,fleet,users}.json`.
//!
//! The services come from `./scripts/services up` (or
//! `PAYHOOK_TEST_DATABASE_URL` / `PAYHOOK_TEST_KAFKA_BROKERS`); without them
//! the bench says how to start them and exits 0 having measured nothing.

mod ceilings;
mod commits;
mod consume;
mod e2e;
mod env;
mod fleet;
mod ingest;
mod load;
mod machine;
mod noop;
mod procstat;
mod report;
mod scrape;
mod users;

use std::time::Duration;

use report::{Row, publish};

/// How long and how much each section runs.
pub struct Profile {
    pub name: &'static str,
    pub in_flight: Vec<usize>,
    pub warmup: Duration,
    pub measure: Duration,
    pub rate: u64,
    pub rate_conns: usize,
    /// Each step of the sustained-throughput search (`users`), after the
    /// warm-up.
    pub sustain: Duration,
    pub consume_n: u64,
    /// Backlog drained by 1, 2 and 3 processes in the fleet section.
    pub fleet_n: u64,
    pub produce_ceiling_n: u64,
    pub insert_ceiling_n: u64,
}

impl Profile {
    fn from_env() -> Self {
        let full = std::env::var("PAYHOOK_BENCH_PROFILE").is_ok_and(|v| v == "full");
        // For experiments: PAYHOOK_BENCH_IN_FLIGHT=64 (or "1,64").
        let in_flight = in_flight_from_env().unwrap_or_else(|| vec![1, 16, 64, 256]);
        let base = Self {
            name: "short",
            in_flight,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(4),
            rate: 2000,
            rate_conns: 128,
            sustain: Duration::from_secs(6),
            consume_n: 30_000,
            fleet_n: 60_000,
            produce_ceiling_n: 50_000,
            insert_ceiling_n: 30_000,
        };
        if full {
            Self {
                name: "full",
                warmup: Duration::from_secs(3),
                measure: Duration::from_secs(15),
                sustain: Duration::from_secs(30),
                consume_n: 200_000,
                fleet_n: 200_000,
                produce_ceiling_n: 200_000,
                insert_ceiling_n: 200_000,
                ..base
            }
        } else {
            base
        }
    }

    /// payhook settings the bench passes through from its own environment
    /// (`PAYHOOK_BENCH_SET="KAFKA_LINGER=2ms,CONSUMER_MAX_BATCH=5000"`), for
    /// trying settings without rebuilding.
    pub fn payhook_overrides(&self) -> Vec<(&'static str, &'static str)> {
        let Ok(set) = std::env::var("PAYHOOK_BENCH_SET") else {
            return Vec::new();
        };
        let set: &'static str = Box::leak(set.into_boxed_str());
        set.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect()
    }
}

/// `PAYHOOK_BENCH_IN_FLIGHT=64` (or `"1,64"`), for experiments: the
/// closed-loop settings of the sections that have them.
pub fn in_flight_from_env() -> Option<Vec<usize>> {
    std::env::var("PAYHOOK_BENCH_IN_FLIGHT")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
}

fn main() {
    // Started again as the no-op server by the `users` section.
    if let Ok(addr) = std::env::var(noop::ADDR_VAR) {
        noop::serve(&addr);
        return;
    }
    // `cargo test --all-targets` builds and runs this binary without
    // `--bench`: measure nothing then.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("pipeline bench: run it with `cargo bench`; nothing measured");
        return;
    }
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let on = |s: &str| wanted.is_empty() || wanted.contains(&s);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        if let Err(why) = env::services_reachable().await {
            println!("pipeline bench: the broker or the database is not reachable ({why}).");
            println!("Start them with `./scripts/services up`, then run `cargo bench` again.");
            println!("Nothing was measured.");
            return;
        }
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .try_init();
        }
        let profile = Profile::from_env();
        let machine = machine::Machine::detect();
        println!(
            "pipeline bench, {} profile, on {}; services shared with everything else on this machine",
            profile.name,
            machine.line()
        );

        let want_produce = on("ceilings") || on("ingest");
        let want_insert = on("ceilings") || on("consume");
        let mut ceiling_rows = Vec::new();
        let produce_ceilings = if want_produce {
            ceilings::produce_per_record_ceilings(&profile).await
        } else {
            Vec::new()
        };
        ceiling_rows.extend(produce_ceilings.iter().cloned());
        // Ingest runs before the ceilings that build all their records up
        // front, so its in-process memory figure does not carry them.
        let ingest_rows = if on("ingest") {
            Some(ingest::run(&profile, &produce_ceilings).await)
        } else {
            None
        };
        let mut bulk_ceiling = None;
        if want_produce {
            let bulk = ceilings::produce_ceiling(profile.produce_ceiling_n).await;
            bulk_ceiling = bulk.events_per_s;
            ceiling_rows.push(bulk);
        }
        let mut insert_ceiling = None;
        if want_insert {
            let r = ceilings::insert_ceilings(profile.insert_ceiling_n).await;
            // The ceiling is the fastest way in.
            insert_ceiling = r.iter().filter_map(|r| r.events_per_s).reduce(f64::max);
            ceiling_rows.extend(r);
        }
        if !ceiling_rows.is_empty() {
            publish("ceilings", profile.name, &ceiling_rows);
        }
        if let Some(rows) = ingest_rows {
            // Each concurrency setting against the bulk produce ceiling.
            let rows: Vec<Row> = rows
                .into_iter()
                .map(|r| {
                    if r.name.starts_with("in_flight=") {
                        r.ratio_to(bulk_ceiling)
                    } else {
                        r
                    }
                })
                .collect();
            publish("ingest", profile.name, &rows);
        }
        if on("consume") {
            let rows: Vec<Row> = consume::run(&profile, insert_ceiling).await;
            publish("consume", profile.name, &rows);
        }
        if on("e2e") {
            let rows = e2e::run(&profile).await;
            publish("e2e", profile.name, &rows);
        }
        if on("fleet") {
            let rows = fleet::run(&profile).await;
            publish("fleet", profile.name, &rows);
        }
        if on("users") {
            let rows = users::run(&profile).await;
            publish("users", profile.name, &rows);
        }
    });
}
