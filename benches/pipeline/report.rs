//! Results: the table printed to the terminal and the JSON files under
//! `target/bench/`.

use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::procstat::CpuPer1k;

/// One measured setting.
#[derive(Clone, Debug)]
pub struct Row {
    /// The setting, e.g. `in_flight=64` or `rate=2000/s`.
    pub name: String,
    pub events_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    /// End to end, 202 → committed row (the `users` section).
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    /// CPU seconds per 1,000 accepted events, by process (`users`).
    pub cpu_s_per_1k: Option<CpuPer1k>,
    /// This row's ingest p99 over the no-op server's for the same load.
    pub p99_ratio_to_noop: Option<f64>,
    /// From the end of the load until the consumer had applied all of it.
    pub drain_s: Option<f64>,
    /// Anything else worth printing (errors, memory); kept out of the
    /// fixed JSON fields but written as `"note"`.
    pub note: String,
    /// When a case ran several times (`PAYHOOK_BENCH_REPEAT`): every run,
    /// this row being the median one by events/s.
    pub runs: Vec<Row>,
}

impl Row {
    pub fn throughput(name: impl Into<String>, events_per_s: f64) -> Self {
        Self {
            name: name.into(),
            events_per_s: Some(events_per_s),
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            ratio_to_ceiling: None,
            e2e_p50_ms: None,
            e2e_p99_ms: None,
            cpu_s_per_1k: None,
            p99_ratio_to_noop: None,
            drain_s: None,
            note: String::new(),
            runs: Vec::new(),
        }
    }

    /// The median of `runs` by events/s, carrying them all. Its ratios are
    /// set afterwards, against the no-op server's median.
    pub fn median_of(mut runs: Vec<Row>) -> Row {
        runs.sort_by(|a, b| {
            a.events_per_s
                .unwrap_or(0.0)
                .total_cmp(&b.events_per_s.unwrap_or(0.0))
        });
        let mut median = runs[runs.len() / 2].clone();
        if runs.len() > 1 {
            median.runs = runs;
        }
        median
    }

    /// `min–median–max` of one figure over the runs, for the terminal.
    pub fn spread(&self, figure: impl Fn(&Row) -> Option<f64>, digits: usize) -> String {
        let mut v: Vec<f64> = self.runs.iter().filter_map(&figure).collect();
        if v.is_empty() {
            return "-".into();
        }
        v.sort_by(f64::total_cmp);
        format!(
            "{:.digits$}–{:.digits$}–{:.digits$}",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        )
    }

    /// A row that only carries a note.
    pub fn info(name: impl Into<String>) -> Self {
        Self {
            events_per_s: None,
            ..Self::throughput(name, 0.0)
        }
    }

    /// Percentiles from a histogram of microseconds.
    pub fn with_latency(mut self, h: &Histogram<u64>) -> Self {
        if !h.is_empty() {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            self.p50_ms = Some(ms(0.50));
            self.p99_ms = Some(ms(0.99));
            self.p999_ms = Some(ms(0.999));
        }
        self
    }

    /// End-to-end percentiles from a histogram of microseconds.
    pub fn with_e2e(mut self, h: &Histogram<u64>) -> Self {
        if !h.is_empty() {
            self.e2e_p50_ms = Some(h.value_at_quantile(0.50) as f64 / 1000.0);
            self.e2e_p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
        }
        self
    }

    /// Whether any of the `users` figures is set (printed on a second line).
    fn has_extras(&self) -> bool {
        self.e2e_p50_ms.is_some()
            || self.cpu_s_per_1k.is_some()
            || self.p99_ratio_to_noop.is_some()
            || self.drain_s.is_some()
    }

    pub fn ratio_to(mut self, ceiling: Option<f64>) -> Self {
        self.ratio_to_ceiling = match (self.events_per_s, ceiling) {
            (Some(v), Some(c)) if c > 0.0 => Some(v / c),
            _ => None,
        };
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The machine, for the JSON files ([`crate::machine`]).
pub fn machine() -> Value {
    crate::machine::Machine::detect().json()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// Prints the table and writes `target/bench/<bench>.json`.
pub fn publish(bench: &str, profile: &str, rows: &[Row]) {
    println!();
    println!("{bench} ({profile} profile)");
    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>9} {:>8}  note",
        "name", "events/s", "p50 ms", "p99 ms", "p99.9 ms", "ratio"
    );
    for r in rows {
        println!(
            "{:<28} {:>12} {:>9} {:>9} {:>9} {:>8}  {}",
            r.name,
            opt(r.events_per_s, 0),
            opt(r.p50_ms, 2),
            opt(r.p99_ms, 2),
            opt(r.p999_ms, 2),
            opt(r.ratio_to_ceiling, 2),
            r.note
        );
        if r.has_extras() {
            let cpu = r.cpu_s_per_1k.unwrap_or_default();
            println!(
                "{:<28} e2e p50 {} p99 {} ms; p99/no-op {}; drain {} s; CPU s/1k: payhook {} broker {} postgres {} no-op {} load {}; {}",
                "",
                opt(r.e2e_p50_ms, 2),
                opt(r.e2e_p99_ms, 2),
                opt(r.p99_ratio_to_noop, 2),
                opt(r.drain_s, 2),
                opt(cpu.payhook, 3),
                opt(cpu.broker, 3),
                opt(cpu.postgres, 3),
                opt(cpu.noop, 3),
                opt(cpu.load, 3),
                cpu.machine.map_or_else(String::new, |m| m.note()),
            );
        }
        if !r.runs.is_empty() {
            let cpu = |f: fn(&CpuPer1k) -> Option<f64>| {
                move |r: &Row| r.cpu_s_per_1k.as_ref().and_then(f)
            };
            println!(
                "{:<28} {} runs, min–median–max: events/s {}; p99 ms {}; e2e p99 ms {}; CPU s/1k payhook {} broker {} postgres {}",
                "",
                r.runs.len(),
                r.spread(|r| r.events_per_s, 0),
                r.spread(|r| r.p99_ms, 2),
                r.spread(|r| r.e2e_p99_ms, 1),
                r.spread(cpu(|c| c.payhook), 3),
                r.spread(cpu(|c| c.broker), 3),
                r.spread(cpu(|c| c.postgres), 3),
            );
        }
    }
    let doc = json!({
        "bench": bench,
        "profile": profile,
        "when": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine(),
        "results": rows.iter().map(|r| json!({
            "name": r.name,
            "events_per_s": r.events_per_s,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "p999_ms": r.p999_ms,
            "ratio_to_ceiling": r.ratio_to_ceiling,
            "e2e_p50_ms": r.e2e_p50_ms,
            "e2e_p99_ms": r.e2e_p99_ms,
            "cpu_s_per_1k": r.cpu_s_per_1k.map(|c| json!({
                "payhook": c.payhook,
                "broker": c.broker,
                "postgres": c.postgres,
                "noop": c.noop,
                "load": c.load,
                "machine_busy": c.machine.map(|m| m.busy),
                "machine_steal": c.machine.map(|m| m.steal),
            })),
            "p99_ratio_to_noop": r.p99_ratio_to_noop,
            "drain_s": r.drain_s,
            "note": if r.note.is_empty() { Value::Null } else { json!(r.note) },
            "runs": r.runs.iter().map(|x| json!({
                "events_per_s": x.events_per_s,
                "p50_ms": x.p50_ms,
                "p99_ms": x.p99_ms,
                "e2e_p99_ms": x.e2e_p99_ms,
                "cpu_s_per_1k": x.cpu_s_per_1k.map(|c| json!({
                    "payhook": c.payhook, "broker": c.broker, "postgres": c.postgres,
                    "machine_steal": c.machine.map(|m| m.steal),
                })),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let dir = target_dir().join("bench");
    let path = dir.join(format!("{bench}.json"));
    match std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json")))
    {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// `target/` of this workspace (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// Resident memory of this process, in MiB: (current, peak).
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
