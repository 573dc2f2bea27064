//! End to end: from the 202 to the committed row, at a fixed arrival rate,
//! with payhook in-process. How the commit instant is taken: [`crate::commits`].

use std::time::Duration;

use payhook::app::Application;
use tokio_util::sync::CancellationToken;

use crate::{
    Profile,
    commits::{CommitLog, LogEnd},
    env::{BenchEnv, run_tag},
    load::open_loop,
    report::Row,
};

pub async fn run(profile: &Profile) -> Vec<Row> {
    let env = BenchEnv::new("e2e").await;
    let db = env.client().await;
    let mut commits = CommitLog::start(&env, &db).await;

    let app = Application::build(env.config(&profile.payhook_overrides()))
        .await
        .expect("build payhook");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let run = run_tag();
    let out = open_loop(
        addr,
        &run,
        0,
        profile.rate,
        profile.rate_conns,
        profile.warmup,
        profile.measure,
        true,
    )
    .await;

    // Wait for the consumer to apply everything in the log; what is not
    // applied by then shows as unmatched.
    let log = LogEnd::new(&env).await;
    let _ = log.wait_applied(&env, &db, Duration::from_secs(120)).await;
    let m = commits.end_to_end(&db, &run, &out.acks).await;

    shutdown.cancel();
    let _ = task.await;
    commits.stop();
    drop(db);
    env.cleanup().await;
    vec![
        Row::throughput(format!("rate={}/s", profile.rate), out.per_s())
            .with_latency(&m.latency)
            .note(format!(
                "202 → commit; {} accepted, {} errors, {} unmatched, {} committed before the 202 arrived; ingest p99 {:.2} ms",
                out.accepted,
                out.failed,
                m.missing,
                m.early,
                out.latency.value_at_quantile(0.99) as f64 / 1000.0
            )),
    ]
}
