//! Scenario 6: three payhook processes on one database and one set of
//! topics, under steady provider-like load spread over all three, while one
//! is killed (SIGKILL), one hangs (SIGSTOP for longer than the lease TTL,
//! then SIGCONT), and all three are restarted one by one (a rolling deploy).
//!
//! Besides the books of every scenario (every 202'd event stored, none
//! applied twice, orders in their final state, offsets at the log end):
//! - no partition was owned by two processes at once (lease history);
//! - no effect was written by a fenced owner (every effect's epoch was the
//!   partition's current one when it was written);
//! - failover, from the kill or the hang to the first commit by the new
//!   owner of every partition the process held, within the TTL + 5 s;
//! - no webhook failed during the rolling restart for a client that retries
//!   on another replica.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Books, Pacing, Payhook, Stage, audit, drive_paced_load, wait_progress};

const TTL: Duration = Duration::from_secs(4);
const REPLICAS: usize = 3;
const PARTITIONS: u32 = 12;

/// The member id of a process, from its `HOSTNAME:pid` name.
async fn member_of(db: &tokio_postgres::Client, n: usize, app: &Payhook) -> uuid::Uuid {
    let name = format!("replica{n}:{}", app.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = db
            .query_opt(
                "SELECT member_id FROM consumer_members WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap()
        {
            return r.get(0);
        }
        assert!(Instant::now() < deadline, "{name} never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The orders partitions a member holds, with their epochs.
async fn held(db: &tokio_postgres::Client, stage: &Stage, member: uuid::Uuid) -> Vec<(i32, i64)> {
    db.query(
        "SELECT partition, epoch FROM partition_leases
          WHERE topic = $1 AND owner = $2 AND expires_at > now() ORDER BY partition",
        &[&stage.orders_topic, &member],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until every partition of both topics is owned, each live member
/// holding exactly its share of each.
async fn wait_balanced(db: &tokio_postgres::Client, stage: &Stage, limit: Duration) -> Duration {
    let started = Instant::now();
    let share = i64::from(PARTITIONS) / REPLICAS as i64;
    loop {
        let rows = db
            .query(
                "SELECT topic, owner, count(*) FROM partition_leases
                  WHERE owner IS NOT NULL AND expires_at > now()
                    AND topic = ANY($1)
                  GROUP BY topic, owner",
                &[&vec![
                    stage.orders_topic.clone(),
                    stage.disputes_topic.clone(),
                ]],
            )
            .await
            .unwrap();
        let counts: Vec<i64> = rows.iter().map(|r| r.get(2)).collect();
        if counts.len() == 2 * REPLICAS && counts.iter().all(|c| *c == share) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "[fleet] not balanced within {limit:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time from `since` until every one of `partitions` has a commit by an
/// owner at a later epoch.
async fn wait_failover(
    db: &tokio_postgres::Client,
    stage: &Stage,
    partitions: &[(i32, i64)],
    since: Instant,
) -> Duration {
    loop {
        let mut done = 0;
        for (p, epoch) in partitions {
            let moved: bool = db
                .query_one(
                    "SELECT coalesce(max(lease_epoch), 0) > $3 FROM consumer_offsets
                      WHERE consumer_group = 'payhook-orders' AND topic = $1 AND partition = $2",
                    &[&stage.orders_topic, p, epoch],
                )
                .await
                .unwrap()
                .get(0);
            done += usize::from(moved);
        }
        if done == partitions.len() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "[fleet] no new owner committed on {partitions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn fleet() {
    let stage = Stage::with_partitions("fleet", PARTITIONS).await;
    let db = stage.db().await;
    let mut apps: Vec<Payhook> = (0..REPLICAS)
        .map(|n| {
            let mut app = Payhook::replica(&stage, n);
            app.env.push((
                "CONSUMER_LEASE_TTL",
                humantime::format_duration(TTL).to_string(),
            ));
            // A process frozen inside a transaction holds its lease row's
            // lock until the server ends its session: within the TTL here
            // (longer than KAFKA_PUBLISH_TIMEOUT, 2s in this suite).
            app.env
                .push(("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "3s".to_owned()));
            app
        })
        .collect();
    for app in &mut apps {
        app.start(&stage).await;
    }
    let balanced = wait_balanced(&db, &stage, Duration::from_secs(10)).await;

    // Steady load, about 200 webhooks/s over 32 orders at a time (so that
    // every partition keeps getting records), until told to stop.
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
                32,
                Pacing {
                    pause: Duration::from_millis(150),
                    // A hung replica must not hold the load (and so the
                    // failover measurement, which needs records on the
                    // taken-over partitions) for long: a load balancer's
                    // upstream timeout, then the next replica.
                    attempt_timeout: Duration::from_secs(2),
                    stop: Some(stop),
                },
            )
            .await
        }
    });
    wait_progress(&books, 500).await;

    // SIGKILL one process.
    let victim = member_of(&db, 0, &apps[0]).await;
    let lost = held(&db, &stage, victim).await;
    let t0 = Instant::now();
    apps[0].signal("KILL");
    apps[0].wait(Duration::from_secs(10)).await;
    let failover_kill = wait_failover(&db, &stage, &lost, t0).await;
    apps[0].start(&stage).await;
    wait_balanced(&db, &stage, TTL * 3).await;

    // SIGSTOP another for longer than the TTL, then SIGCONT.
    let hung = member_of(&db, 1, &apps[1]).await;
    let lost = held(&db, &stage, hung).await;
    let t0 = Instant::now();
    apps[1].signal("STOP");
    let failover_hang = wait_failover(&db, &stage, &lost, t0).await;
    tokio::time::sleep((TTL + Duration::from_secs(2)).saturating_sub(t0.elapsed())).await;
    apps[1].signal("CONT");
    wait_balanced(&db, &stage, TTL * 3).await;

    // Rolling restart, one process at a time, each back and balanced before
    // the next goes.
    books.watch_failures.store(true, Ordering::Relaxed);
    for (n, app) in apps.iter_mut().enumerate() {
        app.signal("TERM");
        let status = app.wait(Duration::from_secs(25)).await;
        assert!(status.success(), "[fleet] replica {n} exit: {status}");
        app.start(&stage).await;
        wait_balanced(&db, &stage, TTL * 3).await;
    }
    books.watch_failures.store(false, Ordering::Relaxed);
    let failed = books.failed_rounds.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let total = books.progress.load(Ordering::Relaxed);
    audit(&stage, &books, total, started).await;

    let overlaps: i64 = db
        .query_one(
            "SELECT count(*) FROM partition_lease_history a
               JOIN partition_lease_history b USING (consumer_group, topic, partition)
              WHERE a.epoch < b.epoch AND b.acquired_at < a.valid_until",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // An effect is a fenced owner's if its epoch had been superseded when
    // it was written, or never held the partition at all.
    let fenced: i64 = db
        .query_one(
            "SELECT count(*) FROM test_effects e
              WHERE NOT EXISTS (
                      SELECT 1 FROM partition_lease_history h
                       WHERE h.consumer_group = 'payhook-orders' AND h.topic = $1
                         AND h.partition = e.kafka_partition AND h.epoch = e.lease_epoch
                         AND h.acquired_at <= e.logged_at)
                 OR EXISTS (
                      SELECT 1 FROM partition_lease_history h
                       WHERE h.consumer_group = 'payhook-orders' AND h.topic = $1
                         AND h.partition = e.kafka_partition AND h.epoch > e.lease_epoch
                         AND h.acquired_at <= e.logged_at)",
            &[&stage.orders_topic],
        )
        .await
        .unwrap()
        .get(0);
    let epochs: i64 = db
        .query_one("SELECT count(*) FROM partition_lease_history", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "[fleet] 3 processes, {PARTITIONS} partitions per topic, lease TTL {TTL:?}: balanced {:.1}s \
         after start; failover after SIGKILL {:.1}s, after SIGSTOP {:.1}s; {epochs} lease epochs, \
         {overlaps} overlapping; {fenced} effects by a fenced owner; {failed} webhooks failed on \
         every replica during the rolling restart",
        balanced.as_secs_f64(),
        failover_kill.as_secs_f64(),
        failover_hang.as_secs_f64()
    );
    assert_eq!(overlaps, 0, "[fleet] a partition had two owners at once");
    assert_eq!(fenced, 0, "[fleet] a fenced owner wrote effects");
    let bound = TTL + Duration::from_secs(5);
    assert!(
        failover_kill <= bound,
        "[fleet] failover after SIGKILL {failover_kill:?}"
    );
    assert!(
        failover_hang <= bound,
        "[fleet] failover after SIGSTOP {failover_hang:?}"
    );
    assert_eq!(
        failed, 0,
        "[fleet] webhooks failed during the rolling restart"
    );
    drop(apps);
    stage.cleanup().await;
}
