//! Fleet: consume throughput with 1, 2 and 3 separate `payhook serve`
//! processes sharing one topic through their partition leases.
//!
//! The processes start on empty topics and are given time to share the
//! partitions (every lease owned); then a backlog of `n` envelopes is
//! written with the bulk producer (several times faster than consuming), and
//! the clock runs from the first record written until every partition's
//! stored offset reaches the log end. All processes, the broker and Postgres
//! share this machine.

use std::{
    process::{Child, Command},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    Profile,
    ceilings::produce_all,
    env::{BenchEnv, PARTITIONS, run_tag},
    report::Row,
};

/// Waits until every partition of the orders topic is leased and `k`
/// processes (at most one per partition) hold them.
async fn wait_shared(db: &tokio_postgres::Client, env: &BenchEnv, k: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = db
            .query_one(
                "SELECT count(*), count(DISTINCT owner) FROM partition_leases
                  WHERE topic = $1 AND owner IS NOT NULL AND expires_at > now()",
                &[&env.orders_topic],
            )
            .await
            .expect("read leases");
        let (owned, owners): (i64, i64) = (r.get(0), r.get(1));
        if owned == i64::from(PARTITIONS) && owners == k.min(i64::from(PARTITIONS)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the processes never shared the partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(profile: &Profile) -> Vec<Row> {
    let n = profile.fleet_n;
    let mut rows = Vec::new();
    let mut one = None;
    for k in 1..=3i64 {
        let env = BenchEnv::new("fleet").await;
        let db = env.client().await;
        let mut children: Vec<Child> = (0..k)
            .map(|_| crate::env::spawn_payhook(&env, profile, "127.0.0.1:0", &[]))
            .collect();
        wait_shared(&db, &env, k).await;
        let group = "payhook-orders";
        let t0 = Instant::now();
        produce_all(&env, &env.orders_topic, &run_tag(), n).await;
        let deadline = t0 + Duration::from_secs(600);
        while (env.stored_total(&db, group).await as u64) < n {
            assert!(Instant::now() < deadline, "the fleet did not catch up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = t0.elapsed();
        for c in &children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut children {
            let _ = c.wait();
        }
        let stored: i64 = db
            .query_one("SELECT count(*) FROM payment_events", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(stored as u64, n, "every event stored once");
        let rate = n as f64 / took.as_secs_f64();
        let base = *one.get_or_insert(rate);
        rows.push(
            Row::throughput(format!("processes={k}"), rate)
                .ratio_to(Some(base))
                .note(format!(
                    "{n} events, {:.1} s, {PARTITIONS} partitions; ratio to 1 process",
                    took.as_secs_f64()
                )),
        );
        drop(db);
        env.cleanup().await;
    }
    rows
}
