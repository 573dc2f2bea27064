//! Scenario 7: lease renewal under load. Three processes share 32
//! partitions per topic with a short lease (2 s, renewed every 0.5 s) while
//! steady load keeps every partition committing, many of them in shared
//! transactions, for 60 s.
//!
//! Renewal, fencing and shared transactions all lock lease rows; taken in
//! different orders they deadlock (40P01), and a renewal that keeps losing
//! lets leases expire. So: no deadlock in the stage's database
//! (`pg_stat_database.deadlocks`), and no lease changed hands while all
//! three members were alive (the lease history has no new epoch), besides
//! the usual books.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Books, Pacing, Payhook, Stage, audit, drive_paced_load, wait_progress};

const TTL: Duration = Duration::from_secs(2);
const REPLICAS: usize = 3;
const PARTITIONS: u32 = 32;

const LOAD_TIME: Duration = Duration::from_secs(60);

async fn deadlocks(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Every lease epoch ever taken, over both topics.
async fn epochs(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM partition_lease_history", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until all 64 partitions are owned, the live members holding
/// ⌊32/3⌋ or ⌈32/3⌉ of each topic.
async fn wait_balanced(db: &tokio_postgres::Client, limit: Duration) {
    let started = Instant::now();
    let (lo, hi) = (
        i64::from(PARTITIONS) / REPLICAS as i64,
        (i64::from(PARTITIONS) + REPLICAS as i64 - 1) / REPLICAS as i64,
    );
    loop {
        let rows = db
            .query(
                "SELECT topic, owner, count(*) FROM partition_leases
                  WHERE owner IS NOT NULL AND expires_at > now()
                  GROUP BY topic, owner",
                &[],
            )
            .await
            .unwrap();
        let counts: Vec<i64> = rows.iter().map(|r| r.get(2)).collect();
        let owned: i64 = counts.iter().sum();
        if counts.len() == 2 * REPLICAS
            && owned == 2 * i64::from(PARTITIONS)
            && counts.iter().all(|c| (lo..=hi).contains(c))
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "[leases] not balanced within {limit:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn renewal_under_load() {
    let stage = Stage::with_partitions("lease renewal", PARTITIONS).await;
    let db = stage.db().await;
    let mut apps: Vec<Payhook> = (0..REPLICAS)
        .map(|n| {
            let mut app = Payhook::replica(&stage, n);
            app.env.push((
                "CONSUMER_LEASE_TTL",
                humantime::format_duration(TTL).to_string(),
            ));
            app
        })
        .collect();
    for app in &mut apps {
        app.start(&stage).await;
    }
    wait_balanced(&db, Duration::from_secs(20)).await;
    let (deadlocks_before, epochs_before) = (deadlocks(&db).await, epochs(&db).await);

    let books = Arc::new(Books::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = tokio::spawn({
        let urls: Vec<String> = apps
            .iter()
            .map(|a| a.url("/webhooks/payments/orders"))
            .collect();
        let (books, stop, id) = (books.clone(), stop.clone(), stage.id.clone());
        async move {
            drive_paced_load(
                &id,
                urls,
                books,
                usize::MAX / 2,
                64,
                Pacing {
                    pause: Duration::from_millis(20),
                    attempt_timeout: Duration::from_secs(5),
                    stop: Some(stop),
                },
            )
            .await
        }
    });
    wait_progress(&books, 200).await;
    tokio::time::sleep(LOAD_TIME).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let total = books.progress.load(Ordering::Relaxed);
    audit(&stage, &books, total, started).await;

    let (new_deadlocks, new_epochs) = (
        deadlocks(&db).await - deadlocks_before,
        epochs(&db).await - epochs_before,
    );
    println!(
        "[leases] {total} webhooks over {:?} on {} partitions, TTL {TTL:?}: \
         {new_deadlocks} deadlock(s), {new_epochs} lease(s) changed hands",
        LOAD_TIME,
        2 * PARTITIONS
    );
    assert_eq!(new_deadlocks, 0, "deadlocks in the database");
    assert_eq!(new_epochs, 0, "a live member lost a lease");
    drop(apps);
    stage.cleanup().await;
}
