//! CPU time per process, from `/proc`: where each phase's time goes on the shared cores.

use super::*;

/// CPU time per item of processes over one phase, from /proc: where a stage's time goes.
pub(crate) struct CpuMeter {
    processes: Vec<(&'static str, u32, f64)>,
}

impl CpuMeter {
    pub(crate) fn start(processes: &[(&'static str, u32)]) -> CpuMeter {
        let mut meter = CpuMeter { processes: Vec::new() };
        for &(name, pid) in processes {
            meter.add(name, pid);
        }
        meter
    }

    pub(crate) fn add(&mut self, name: &'static str, pid: u32) {
        self.processes.push((name, pid, cpu_seconds(pid)));
    }

    /// Reports the CPU time per item (entry or request) of each process since the start.
    pub(crate) fn report(self, phase: &str, items: f64, report: &mut Report) {
        for (name, pid, start) in self.processes {
            let micros = (cpu_seconds(pid) - start) / items * 1e6;
            report.add(&format!("{phase}: CPU per item, {name}"), micros, "µs");
        }
    }
}

/// CPU seconds (user and system) of a process, the children it reaped and its live descendants,
/// except those of this process: the stages it launched are measured as themselves, and this
/// process as the client (with `cashflow loadgen`, a child it reaps).
pub(crate) fn cpu_seconds(root: u32) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    // (pid, parent, ticks): fields 4 and 14-17 of /proc/<pid>/stat, counted after the `(comm)`.
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = [11, 12, 13, 14].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
            Some((pid, fields.get(1)?.parse().ok()?, ticks))
        })
        .collect();
    let (mut todo, mut total) = (vec![root], 0);
    while let Some(pid) = todo.pop() {
        for &(p, parent, ticks) in &procs {
            if p == pid {
                total += ticks;
            } else if parent == pid && pid != std::process::id() {
                todo.push(p);
            }
        }
    }
    total as f64 / ticks
}
