//! Users: payhook as a provider sees it. Every server is a separate process
//! and this bench process is the load generator (keep-alive HTTP/1.1,
//! signed webhooks of about 400 bytes over 50,000 orders).
//!
//! Three servers, one after the other, each driven with the same cases:
//! closed loop with 1, 16 and 64 requests in flight, open loop at 1,000/s,
//! 2,000/s and 5,000/s (latency from each request's due time):
//! - `noop`: a no-op HTTP server ([`crate::noop`]): the ceiling the load
//!   generator and the machine allow;
//! - `on`: `payhook serve` with its production defaults, consumers on. After
//!   each case the bench waits (bounded) until the consumer has applied
//!   everything in the log, so cases do not bleed into each other, and
//!   reports that drain time and end to end, 202 → committed row
//!   ([`crate::commits`]);
//! - `idle`: `payhook serve` with `CONSUMER_ENABLED=false` on a database and
//!   topics of its own where nobody consumes (closed loop only).
//! - `tls`: `payhook serve`, consumers on, as `on` but reaching the broker
//!   over TLS (`KAFKA_SECURITY_PROTOCOL=ssl`, the broker's SSL listener,
//!   through payhook's tunnel), at 64 in flight and 2,000/s; right after
//!   `on`, so the two are measured back to back. Rows `on-tls ...`; skipped
//!   with a note when there is no SSL listener and CA (`scripts/services`
//!   makes both; `PAYHOOK_TEST_KAFKA_SSL`, `PAYHOOK_TEST_TLS_DIR`).
//!
//! Per row besides events/s and ingest latency: CPU seconds per 1,000
//! accepted events for payhook, the broker, Postgres, the no-op server and
//! the load generator ([`crate::procstat`]), counted from just before the
//! load starts until the drain finished and divided by every accepted event
//! of the case, warm-up included. The broker and Postgres are shared with
//! anything else running on the machine; their figures include it. Each
//! payhook row is compared to the no-op row of the same case:
//! `ratio_to_ceiling` is its events/s over the no-op's, `p99_ratio_to_noop`
//! its ingest p99 over the no-op's.
//!
//! Each case runs `PAYHOOK_BENCH_REPEAT` times (3 by default), back to
//! back; its row is the median run by events/s, printed with the
//! min–median–max of events/s, p99, e2e p99 and CPU per 1,000 events over
//! the runs, the no-op server's median for the same load, and the machine's
//! busy and steal share ([`crate::machine`]). The ratios (events/s and p99
//! over the no-op's, CPU seconds per 1,000 events) are what to compare
//! between machines; absolute figures only with the machine they came from.
//!
//! Sustained throughput (consumers on): open loop at rate R for
//! `Profile::sustain` after the warm-up, sampling the orders topic's lag
//! (log end − stored next offsets, summed over the partitions) every
//! second. **R is bounded** when ingest kept pace (202s over the measured
//! window divided by the time until the last answer ≥ 97% of R, and no
//! error) and every lag sample in the last third of the measured window is
//! below R × 1 s (less than a second of arrivals behind). The search starts
//! at 2,000/s and multiplies by 1.25 until a rate is not bounded (at most
//! 25,000/s), then bisects twice between the last bounded and the first
//! unbounded rate; one row per step, drained before the next, and a
//! `sustained` row with the highest bounded rate.

use std::{
    future::Future,
    net::SocketAddr,
    process::{Child, Command},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    Profile,
    commits::{CommitLog, LogEnd, Matched},
    env::{BenchEnv, admin_url, brokers, free_addr, run_tag, spawn_payhook},
    load::{Outcome, closed_loop, open_loop},
    noop,
    procstat::{self, CpuPer1k, CpuWindow, Who},
    report::Row,
};

const IN_FLIGHT: [usize; 3] = [1, 16, 64];
const RATES: [u64; 3] = [1_000, 2_000, 5_000];
/// The cases of the `tls` part.
const TLS_CASES: [Load; 2] = [Load::Closed(64), Load::Open(2_000)];
/// The longest wait for the consumer to apply a case's events.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Closed(usize),
    Open(u64),
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Closed(n) => format!("in_flight={n}"),
            Load::Open(r) => format!("rate={r}/s"),
        }
    }

    async fn drive(
        self,
        addr: SocketAddr,
        run: &str,
        profile: &Profile,
        keep_acks: bool,
    ) -> Outcome {
        match self {
            Load::Closed(n) => {
                let seq = Arc::new(AtomicU64::new(0));
                closed_loop(
                    addr,
                    run,
                    seq,
                    n,
                    profile.warmup,
                    profile.measure,
                    keep_acks,
                )
                .await
            }
            Load::Open(rate) => {
                open_loop(
                    addr,
                    run,
                    0,
                    rate,
                    profile.rate_conns,
                    profile.warmup,
                    profile.measure,
                    keep_acks,
                )
                .await
            }
        }
    }
}

/// The machine's processes a case counts, found once.
struct Procs {
    tck: Option<f64>,
    broker: Option<u32>,
    postgres: Option<u32>,
}

impl Procs {
    fn find() -> Self {
        let tck = procstat::clock_ticks()
            .inspect_err(|why| println!("users: no CPU figures: {why}"))
            .ok();
        let broker_addr = brokers();
        let first = broker_addr.split(',').next().unwrap_or_default();
        let broker = procstat::listener_pid(procstat::port_of(first, 9092))
            .inspect_err(|why| println!("users: no broker CPU figures: {why}"))
            .ok();
        let postgres = procstat::listener_pid(procstat::port_of(&admin_url(), 5432))
            .inspect_err(|why| println!("users: no Postgres CPU figures: {why}"))
            .ok();
        Self {
            tck,
            broker,
            postgres,
        }
    }

    /// What a payhook case counts.
    fn payhook(&self, pid: u32) -> [Option<Who>; 5] {
        [
            Some(Who::Process(pid)),
            self.broker.map(Who::Process),
            self.postgres.map(Who::Postgres),
            None,
            Some(Who::Process(std::process::id())),
        ]
    }

    /// What a no-op case counts.
    fn noop(&self, pid: u32) -> [Option<Who>; 5] {
        [
            None,
            None,
            None,
            Some(Who::Process(pid)),
            Some(Who::Process(std::process::id())),
        ]
    }
}

/// A child process, stopped (SIGTERM, then waited for) when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Waits until `http://addr/readyz` answers with `want` (60 s at most).
async fn wait_ready(child: &mut Proc, addr: SocketAddr, want: reqwest::StatusCode) {
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == want
        {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the server on {addr} exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the consumer side of a consumers-on case needs.
struct Applied<'a> {
    env: &'a BenchEnv,
    db: &'a tokio_postgres::Client,
    log: &'a LogEnd,
}

/// One case's figures.
struct Measured {
    out: Outcome,
    cpu: Option<CpuPer1k>,
    /// `Some(None)`: the consumer did not catch up within [`DRAIN_LIMIT`].
    drain: Option<Option<Duration>>,
    e2e: Option<Matched>,
}

impl Measured {
    fn row(&self, name: String) -> Row {
        let mut r = Row::throughput(name, self.out.per_s()).with_latency(&self.out.latency);
        r.cpu_s_per_1k = self.cpu;
        r.drain_s = self.drain.flatten().map(|d| d.as_secs_f64());
        if let Some(m) = &self.e2e {
            r = r.with_e2e(&m.latency);
        }
        r.note(self.note())
    }

    fn note(&self) -> String {
        let mut note = format!(
            "{} accepted ({} with warm-up), {} errors",
            self.out.accepted, self.out.accepted_all, self.out.failed
        );
        if let Some(m) = &self.e2e {
            note += &format!(
                "; e2e: {} unmatched, {} committed before the 202 arrived",
                m.missing, m.early
            );
        }
        if self.drain == Some(None) {
            note += &format!("; NOT drained within {} s", DRAIN_LIMIT.as_secs());
        }
        note
    }
}

/// Runs `load`, counting CPU from just before it starts; with `applied`,
/// then waits for the consumer to apply it and matches end to end.
async fn measure(
    procs: &Procs,
    who: [Option<Who>; 5],
    run: &str,
    load: impl Future<Output = Outcome>,
    applied: Option<(&Applied<'_>, &mut CommitLog)>,
) -> Measured {
    let window = procs.tck.map(|t| CpuWindow::start(t, who));
    let out = load.await;
    let Some((a, commits)) = applied else {
        let cpu = window.as_ref().map(|w| w.finish(out.accepted_all));
        return Measured {
            out,
            cpu,
            drain: None,
            e2e: None,
        };
    };
    let drain = Some(a.log.wait_applied(a.env, a.db, DRAIN_LIMIT).await);
    // CPU up to the end of the drain, before the bench's own matching.
    let cpu = window.as_ref().map(|w| w.finish(out.accepted_all));
    let e2e = Some(commits.end_to_end(a.db, run, &out.acks).await);
    Measured {
        out,
        cpu,
        drain,
        e2e,
    }
}

fn cases() -> Vec<Load> {
    in_flight()
        .into_iter()
        .map(Load::Closed)
        .chain(RATES.map(Load::Open))
        .collect()
}

/// The closed-loop settings: [`IN_FLIGHT`], or for experiments
/// `PAYHOOK_BENCH_IN_FLIGHT=64` (or `"1,64"`).
fn in_flight() -> Vec<usize> {
    crate::in_flight_from_env().unwrap_or_else(|| IN_FLIGHT.to_vec())
}

/// How many times each case runs: `PAYHOOK_BENCH_REPEAT`, 3 by default.
/// Figures from one run of a few seconds on a shared machine wander; the
/// median of three, shown with its spread, says how much.
fn repeat() -> usize {
    std::env::var("PAYHOOK_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

/// Which parts run: all, or for experiments `PAYHOOK_BENCH_USERS=idle,on`
/// (of `noop`, `on`, `tls`, `sustain`, `idle`).
fn part(name: &str) -> bool {
    std::env::var("PAYHOOK_BENCH_USERS").map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

/// Runs `loads` one after the other against the server on `addr`, counting
/// the CPU of `who`; rows named `<label> <load>`. With `applied` (consumers
/// on), each case is drained and matched end to end.
async fn run_cases(
    profile: &Profile,
    procs: &Procs,
    (label, addr, who): (&str, SocketAddr, [Option<Who>; 5]),
    loads: Vec<Load>,
    mut applied: Option<(&Applied<'_>, &mut CommitLog)>,
) -> Vec<(Load, Row)> {
    let mut rows = Vec::new();
    for load in loads {
        // Each case `repeat` times, back to back; the row is the median run,
        // with the spread of all of them.
        let mut runs = Vec::new();
        for _ in 0..repeat() {
            let run = run_tag();
            let keep_acks = applied.is_some();
            // payhook's own producer figures (the no-op server has none).
            let before = crate::scrape::Producer::read(addr).await;
            let m = measure(
                procs,
                who,
                &run,
                load.drive(addr, &run, profile, keep_acks),
                applied.as_mut().map(|(a, c)| (*a, &mut **c)),
            )
            .await;
            let mut row = m.row(format!("{label} {}", load.name()));
            if let (Some(before), Some(after)) = (before, crate::scrape::Producer::read(addr).await)
            {
                row.note = format!("{}; {}", row.note, after.since(&before));
            }
            runs.push(row);
        }
        rows.push((load, Row::median_of(runs)));
    }
    rows
}

pub async fn run(profile: &Profile) -> Vec<Row> {
    let procs = Procs::find();

    // The ceiling.
    let noop_rows = if !part("noop") {
        Vec::new()
    } else {
        let addr = free_addr();
        let mut child = Proc(noop::spawn(addr));
        wait_ready(&mut child, addr, reqwest::StatusCode::ACCEPTED).await;
        let server = ("noop", addr, procs.noop(child.pid()));
        run_cases(profile, &procs, server, cases(), None).await
    };

    // payhook, consumers on, then the sustained-throughput search.
    let (on_rows, sustain_rows) = if !part("on") && !part("sustain") {
        (Vec::new(), Vec::new())
    } else {
        let loads = if part("on") { cases() } else { Vec::new() };
        consumers_on(profile, &procs, "on", &[], loads, part("sustain")).await
    };

    // The same over TLS, right after.
    let tls_rows = if !part("tls") {
        Vec::new()
    } else {
        match tls_settings() {
            Ok(settings) => {
                let settings: Vec<(&str, &str)> =
                    settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
                consumers_on(
                    profile,
                    &procs,
                    "on-tls",
                    &settings,
                    TLS_CASES.to_vec(),
                    false,
                )
                .await
                .0
            }
            Err(why) => {
                println!("users: no TLS rows: {why}");
                Vec::new()
            }
        }
    };

    // payhook, consumers idle.
    let idle_rows = if !part("idle") {
        Vec::new()
    } else {
        let env = BenchEnv::new("users-idle").await;
        let addr = free_addr();
        let mut child = Proc(spawn_payhook(
            &env,
            profile,
            &addr.to_string(),
            &[("CONSUMER_ENABLED", "false")],
        ));
        wait_ready(&mut child, addr, reqwest::StatusCode::OK).await;
        let server = ("idle", addr, procs.payhook(child.pid()));
        let loads = in_flight().into_iter().map(Load::Closed).collect();
        let rows = run_cases(profile, &procs, server, loads, None).await;
        drop(child);
        env.cleanup().await;
        rows.into_iter()
            .map(|(load, row)| {
                let note = format!("{}; nobody consumes", row.note);
                (load, row.note(note))
            })
            .collect::<Vec<_>>()
    };

    let against_noop = |(load, row): (Load, Row)| -> Row {
        let Some((_, base)) = noop_rows.iter().find(|(l, _)| *l == load) else {
            return row;
        };
        let mut row = row.ratio_to(base.events_per_s);
        row.p99_ratio_to_noop = match (row.p99_ms, base.p99_ms) {
            (Some(p), Some(b)) if b > 0.0 => Some(p / b),
            _ => None,
        };
        // The ceiling beside the row, so it can be read on its own.
        row.note = format!(
            "{}; no-op here: {:.0}/s, p99 {:.2} ms",
            row.note,
            base.events_per_s.unwrap_or(0.0),
            base.p99_ms.unwrap_or(0.0)
        );
        row
    };
    let mut rows: Vec<Row> = noop_rows.iter().map(|(_, r)| r.clone()).collect();
    rows.extend(on_rows.into_iter().map(against_noop));
    rows.extend(tls_rows.into_iter().map(against_noop));
    rows.extend(idle_rows.into_iter().map(against_noop));
    rows.extend(sustain_rows);
    rows
}

/// payhook with consumers on, started with `extra` settings on a database
/// and topics of its own: `loads` as rows named `<label> <load>`, then, with
/// `sustain`, the sustained-throughput search.
async fn consumers_on(
    profile: &Profile,
    procs: &Procs,
    label: &str,
    extra: &[(&str, &str)],
    loads: Vec<Load>,
    sustain: bool,
) -> (Vec<(Load, Row)>, Vec<Row>) {
    let env = BenchEnv::new(&format!("users-{label}")).await;
    let db = env.client().await;
    let mut commits = CommitLog::start(&env, &db).await;
    let log = LogEnd::new(&env).await;
    let applied = Applied {
        env: &env,
        db: &db,
        log: &log,
    };
    let addr = free_addr();
    let mut child = Proc(spawn_payhook(&env, profile, &addr.to_string(), extra));
    wait_ready(&mut child, addr, reqwest::StatusCode::OK).await;
    let server = (label, addr, procs.payhook(child.pid()));
    let rows = run_cases(
        profile,
        procs,
        server,
        loads,
        Some((&applied, &mut commits)),
    )
    .await;
    let sustain_rows = if sustain {
        Sustain {
            profile,
            procs,
            who: procs.payhook(child.pid()),
            addr,
            applied: &applied,
        }
        .search(&mut commits)
        .await
    } else {
        Vec::new()
    };
    drop(child);
    commits.stop();
    drop(db);
    env.cleanup().await;
    (rows, sustain_rows)
}

/// The settings that make payhook reach the broker over TLS: its SSL
/// listener and the CA of `scripts/services`, if both are there.
fn tls_settings() -> Result<Vec<(&'static str, String)>, String> {
    let listener =
        std::env::var("PAYHOOK_TEST_KAFKA_SSL").unwrap_or_else(|_| "127.0.0.1:9094".into());
    let dir = std::env::var("PAYHOOK_TEST_TLS_DIR").unwrap_or_else(|_| {
        match std::env::var("PAYHOOK_SERVICES_DIR") {
            Ok(d) => format!("{d}/tls"),
            Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/.services/tls").to_owned(),
        }
    });
    let ca = format!("{dir}/ca.pem");
    if !std::path::Path::new(&ca).is_file() {
        return Err(format!("no CA at {ca} (scripts/services up makes it)"));
    }
    std::net::TcpStream::connect(&listener)
        .map_err(|e| format!("no SSL listener at {listener}: {e}"))?;
    Ok(vec![
        ("KAFKA_BROKERS", listener),
        ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
        ("KAFKA_TLS_CA_FILE", ca),
    ])
}

/// The sustained-throughput search (see the module doc), against the
/// consumers-on payhook.
struct Sustain<'a> {
    profile: &'a Profile,
    procs: &'a Procs,
    who: [Option<Who>; 5],
    addr: SocketAddr,
    applied: &'a Applied<'a>,
}

impl Sustain<'_> {
    /// A row per step and the `sustained` row.
    async fn search(&self, commits: &mut CommitLog) -> Vec<Row> {
        const START: f64 = 2_000.0;
        const CAP: f64 = 25_000.0;
        let mut rows = Vec::new();
        let (mut best, mut worst) = (None::<u64>, None::<u64>);
        let mut rate = START;
        loop {
            let r = rate.round() as u64;
            let (bounded, row) = self.step(commits, r).await;
            rows.push(row);
            if !bounded {
                worst = Some(r);
                break;
            }
            best = Some(r);
            if rate >= CAP {
                break;
            }
            rate = (rate * 1.25).min(CAP);
        }
        if let (Some(mut lo), Some(mut hi)) = (best, worst) {
            for _ in 0..2 {
                let mid = (lo + hi) / 2;
                let (bounded, row) = self.step(commits, mid).await;
                rows.push(row);
                if bounded {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            best = Some(lo);
        }
        let definition = "bounded: ≥ 97% of due requests answered 202 in time, no error, \
                          every lag sample in the last third of the run below 1 s of arrivals";
        rows.push(match best {
            Some(r) => Row::throughput("sustained", r as f64).note(format!(
                "highest bounded rate, {} s runs; {definition}",
                self.profile.sustain.as_secs()
            )),
            None => Row::info("sustained")
                .note(format!("no rate bounded from {START}/s up; {definition}")),
        });
        rows
    }

    /// One step of the search: (bounded, its row).
    async fn step(&self, commits: &mut CommitLog, rate: u64) -> (bool, Row) {
        let Self {
            profile,
            procs,
            who,
            addr,
            applied,
        } = *self;
        let run = run_tag();
        let samples: Mutex<Vec<(Duration, i64)>> = Mutex::new(Vec::new());
        let done = std::sync::atomic::AtomicBool::new(false);
        let t0 = Instant::now();
        let load = async {
            let drive = async {
                let out = open_loop(
                    addr,
                    &run,
                    0,
                    rate,
                    profile.rate_conns,
                    profile.warmup,
                    profile.sustain,
                    true,
                )
                .await;
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                out
            };
            let sample = async {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    // Only while the load runs.
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let lag = applied.log.lag(applied.env, applied.db).await;
                    samples
                        .lock()
                        .expect("not poisoned")
                        .push((t0.elapsed(), lag));
                }
            };
            tokio::join!(drive, sample).0
        };
        let m = measure(procs, who, &run, load, Some((applied, commits))).await;

        let last_third = profile.warmup + profile.sustain * 2 / 3;
        let samples = samples.into_inner().expect("not poisoned");
        let tail: Vec<i64> = samples
            .iter()
            .filter(|(at, _)| *at >= last_third)
            .map(|s| s.1)
            .collect();
        let max_tail = tail.iter().copied().max();
        let kept_pace = m.out.failed == 0 && m.out.per_s() >= 0.97 * rate as f64;
        let lag_ok = max_tail.is_some_and(|l| l < rate as i64);
        let bounded = kept_pace && lag_ok;
        let verdict = match (kept_pace, lag_ok) {
            (true, true) => "bounded".to_owned(),
            (false, _) => format!(
                "NOT bounded: ingest answered {:.0}/s of {rate}/s with {} errors",
                m.out.per_s(),
                m.out.failed
            ),
            (true, false) => format!(
                "NOT bounded: lag reached {} records",
                max_tail.unwrap_or(-1)
            ),
        };
        let lags: Vec<String> = samples.iter().map(|s| s.1.to_string()).collect();
        let row = m.row(format!("sustain rate={rate}/s"));
        let note = format!(
            "{verdict}; lag each second: [{}]; {}",
            lags.join(" "),
            row.note
        );
        (bounded, row.note(note))
    }
}
