//! The machine a figure came from: CPU model, cores, memory, kernel, and how
//! much of the CPU the hypervisor took away while a case ran (steal). A
//! figure from one box is not a claim about another; printed with every
//! run, and the steal beside every row, so a reader can tell a slow machine
//! from a noisy one.

use serde_json::{Value, json};

/// What this machine is.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_gib: mem_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "{}, {} cores, {:.0} GiB, Linux {}",
            self.cpu_model, self.cores, self.mem_gib, self.kernel
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "mem_gib": (self.mem_gib * 10.0).round() / 10.0,
            "kernel": self.kernel,
        })
    }
}

/// The whole machine's CPU time (all cores), by kind, from `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuTimes {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal guest guest_nice
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() < 8 {
            return None;
        }
        Some(Self {
            busy: f[0] + f[1] + f[2] + f[5] + f[6],
            idle: f[3] + f[4],
            steal: f[7],
        })
    }
}

/// The machine's CPU over a window: how busy it was and how much the
/// hypervisor stole.
pub struct MachineWindow {
    start: Option<CpuTimes>,
}

/// What a [`MachineWindow`] saw.
#[derive(Clone, Copy, Debug)]
pub struct MachineUse {
    /// Share of all cores' time spent running anything (0–1).
    pub busy: f64,
    /// Share of all cores' time the hypervisor ran someone else (0–1).
    pub steal: f64,
}

impl MachineWindow {
    pub fn start() -> Self {
        Self {
            start: CpuTimes::read(),
        }
    }

    pub fn end(&self) -> Option<MachineUse> {
        let (a, b) = (self.start?, CpuTimes::read()?);
        let busy = b.busy.saturating_sub(a.busy) as f64;
        let idle = b.idle.saturating_sub(a.idle) as f64;
        let steal = b.steal.saturating_sub(a.steal) as f64;
        let total = busy + idle + steal;
        (total > 0.0).then(|| MachineUse {
            busy: busy / total,
            steal: steal / total,
        })
    }
}

impl MachineUse {
    /// `busy 87%, steal 0.4%`.
    pub fn note(&self) -> String {
        format!(
            "machine busy {:.0}%, steal {:.1}%",
            self.busy * 100.0,
            self.steal * 100.0
        )
    }
}
