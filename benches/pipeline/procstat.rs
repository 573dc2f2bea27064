//! CPU time of the processes a case involves, from `/proc`.
//!
//! Each process's `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`,
//! in clock ticks; `getconf CLK_TCK` says how many a second). The broker is
//! the process owning the listening socket of its port; Postgres is the
//! postmaster owning the listening socket of the database port, plus every
//! process whose parent it is, plus the postmaster's `cutime + cstime`:
//! backends that exit during a case are reaped by the postmaster, so their
//! time lands there. A process that cannot be found is reported with the
//! reason and its figures stay empty; nothing is estimated.

use std::{collections::HashSet, fs};

/// Clock ticks per second, from `getconf CLK_TCK` (read once).
pub fn clock_ticks() -> Result<f64, String> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|e| format!("getconf CLK_TCK: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|t| *t > 0.0)
        .ok_or_else(|| "getconf CLK_TCK printed no positive number".to_owned())
}

/// The fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 1..];
    // Field 3 (state) is not a number: keep its place with 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

// Indexes into `stat_fields` (field number - 3).
const PPID: usize = 1;
const UTIME: usize = 11;
const STIME: usize = 12;
const CUTIME: usize = 13;
const CSTIME: usize = 14;

/// `utime + stime` of `pid`, in ticks; `with_children` adds the time of
/// its children that have exited and been waited for.
pub fn ticks(pid: u32, with_children: bool) -> Option<u64> {
    let f = stat_fields(pid)?;
    let own = f.get(UTIME)? + f.get(STIME)?;
    Some(if with_children {
        own + f.get(CUTIME)? + f.get(CSTIME)?
    } else {
        own
    })
}

/// Ticks of the postmaster (with its reaped children) and every live
/// child of it.
pub fn tree_ticks(root: u32) -> Option<u64> {
    let mut total = ticks(root, true)?;
    for pid in all_pids() {
        if let Some(f) = stat_fields(pid)
            && f.get(PPID).copied() == Some(u64::from(root))
        {
            total += f.get(UTIME).copied().unwrap_or(0) + f.get(STIME).copied().unwrap_or(0);
        }
    }
    Some(total)
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process that owns the socket listening on TCP `port` (any address,
/// IPv4 or IPv6), or why it was not found.
pub fn listener_pid(port: u16) -> Result<u32, String> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st, ..., inode (field 9).
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) && *inode != "0" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return Err(format!(
            "no socket listens on port {port} in /proc/net/tcp{{,6}}"
        ));
    }
    let mut unreadable = 0;
    for pid in all_pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            unreadable += 1;
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && inodes.contains(target.to_string_lossy().as_ref())
            {
                return Ok(pid);
            }
        }
    }
    Err(format!(
        "port {port} listens, but no readable /proc/<pid>/fd holds its socket \
         ({unreadable} processes' fds not readable: another user's?)"
    ))
}

/// The TCP port of a `host:port` or `postgres://user@host:port/db` address.
pub fn port_of(addr: &str, default: u16) -> u16 {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?', ',']).next().unwrap_or(rest);
    host_port
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(default)
}

/// Which process's CPU a case counts.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    /// One process (payhook, the no-op server, the broker, the bench).
    Process(u32),
    /// A postmaster, its live children and its reaped ones.
    Postgres(u32),
}

impl Who {
    fn read(self) -> Option<u64> {
        match self {
            Who::Process(pid) => ticks(pid, false),
            Who::Postgres(pid) => tree_ticks(pid),
        }
    }
}

/// CPU seconds per 1,000 accepted events, by process; `None` where the
/// process is not part of the case or could not be read.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPer1k {
    pub payhook: Option<f64>,
    pub broker: Option<f64>,
    pub postgres: Option<f64>,
    pub noop: Option<f64>,
    pub load: Option<f64>,
    /// The whole machine over the same window: how busy, how much stolen.
    pub machine: Option<crate::machine::MachineUse>,
}

/// The processes of a case and their tick counts at its start.
pub struct CpuWindow {
    tck: f64,
    slots: [(Option<Who>, Option<u64>); 5],
    machine: crate::machine::MachineWindow,
}

impl CpuWindow {
    /// Starts counting. Order of `who`: payhook, broker, postgres, no-op,
    /// load generator.
    pub fn start(tck: f64, who: [Option<Who>; 5]) -> Self {
        Self {
            tck,
            slots: who.map(|w| (w, w.and_then(Who::read))),
            machine: crate::machine::MachineWindow::start(),
        }
    }

    /// CPU seconds per 1,000 of `events` since [`Self::start`].
    pub fn finish(&self, events: u64) -> CpuPer1k {
        let per_1k = |(who, before): (Option<Who>, Option<u64>)| -> Option<f64> {
            let after = who?.read()?;
            let d = after.checked_sub(before?)?;
            (events > 0).then(|| d as f64 / self.tck / events as f64 * 1000.0)
        };
        let [p, b, g, n, l] = self.slots.map(per_1k);
        CpuPer1k {
            payhook: p,
            broker: b,
            postgres: g,
            noop: n,
            load: l,
            machine: self.machine.end(),
        }
    }
}
