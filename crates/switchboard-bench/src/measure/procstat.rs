//! CPU time and memory of a process, read from `/proc` (Linux only).
//!
//! A benchmark of a gateway is only half told by throughput: the figure that says how many
//! connections a core can carry is CPU time per delivery. We read it from `/proc/PID/stat`
//! (utime + stime, in clock ticks) at the start and the end of the measure window, for each
//! node and for the generator itself, so a run also shows when the generator, not the node,
//! was the bottleneck. utime is kept apart too: on loopback the kernel part includes the
//! receiving side's TCP work (see the README), so the user part is the cleaner figure of what
//! the process's own code costs.

use std::fs;
use std::io;

/// Where a process's CPU time and memory are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// The generator itself (`/proc/self`).
    Me,
    /// Another process, e.g. a node.
    Pid(u32),
}

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// utime alone, in clock ticks (so stime = `cpu_ticks - user_ticks`).
    pub user_ticks: u64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kb: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub peak_rss_kb: u64,
}

/// `AT_CLKTCK` in the ELF auxiliary vector: the kernel's `sysconf(_SC_CLK_TCK)`.
const AT_CLKTCK: u64 = 17;
/// The value of `CLK_TCK` on every mainstream Linux architecture.
const DEFAULT_CLK_TCK: u64 = 100;

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Me => "/proc/self".to_owned(),
            Proc::Pid(pid) => format!("/proc/{pid}"),
        }
    }

    /// Reads CPU time and memory now. Fails when the process is gone.
    pub fn sample(self) -> io::Result<Sample> {
        let dir = self.dir();
        let stat = fs::read_to_string(format!("{dir}/stat"))?;
        let status = fs::read_to_string(format!("{dir}/status"))?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}/{what}"));
        let (utime, stime) = parse_stat_times(&stat).ok_or_else(|| bad("stat"))?;
        Ok(Sample {
            cpu_ticks: utime + stime,
            user_ticks: utime,
            rss_kb: parse_status_kb(&status, "VmRSS").ok_or_else(|| bad("status VmRSS"))?,
            peak_rss_kb: parse_status_kb(&status, "VmHWM").unwrap_or(0),
        })
    }
}

/// Clock ticks per second, and whether it was read (`true`) or assumed to be 100 (`false`).
///
/// Read from the auxiliary vector (`/proc/self/auxv`) rather than `sysconf`, which would need
/// libc and `unsafe`.
pub fn clock_ticks_per_sec() -> (u64, bool) {
    match fs::read("/proc/self/auxv")
        .ok()
        .and_then(|a| parse_auxv(&a, AT_CLKTCK))
    {
        Some(t) if t > 0 => (t, true),
        _ => (DEFAULT_CLK_TCK, false),
    }
}

/// CPU time of the whole machine so far, in clock ticks: all CPUs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// Time spent running anything (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// Busy plus idle and iowait.
    pub total: u64,
}

/// Reads the machine's CPU time from `/proc/stat`, to tell how busy the machine was
/// during a run, and how much of that was other processes.
pub fn machine_ticks() -> io::Result<MachineTicks> {
    let stat = fs::read_to_string("/proc/stat")?;
    parse_proc_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: no cpu line"))
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal
/// (guest time is already counted in user).
fn parse_proc_stat(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    if f.len() < 4 {
        return None;
    }
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(MachineTicks {
        busy,
        total: busy + at(3) + at(4),
    })
}

/// The soft limit on open files (`/proc/self/limits`), `None` if unlimited or unreadable.
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (utime, stime) in clock ticks from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and `)`, so
/// fields are counted from the last `)`: after it come state (field 3) ... utime (14), stime (15).
fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// A `kB` value such as `VmRSS:     1234 kB` from the text of `/proc/PID/status`.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The value of `key` in an auxiliary vector of native-endian `u64` (key, value) pairs.
fn parse_auxv(auxv: &[u8], key: u64) -> Option<u64> {
    auxv.chunks_exact(16).find_map(|pair| {
        let (k, v) = pair.split_at(8);
        let k = u64::from_ne_bytes(k.try_into().ok()?);
        let v = u64::from_ne_bytes(v.try_into().ok()?);
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_survive_odd_command_names() {
        let stat = "4242 (sw (b) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 0 0 20 0 5 0 \
                    99 123456 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_times(stat), Some((731, 269)));
        assert_eq!(parse_stat_times("12 (x) S 1"), None);
        // Fields 14 and 15 only: the children's times (16, 17) are not ours.
        let stat = "7 (a) R 1 7 7 0 -1 0 0 0 0 0 5 9 100 200 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_times(stat), Some((5, 9)));
        assert_eq!(parse_stat_times("7 (a) R 1 7 7 0 -1 0 0 0 0 0 5 x"), None);
        assert_eq!(parse_stat_times("7 (a) R 1 7 7 0 -1 0 0 0 0 0 5"), None);
    }

    #[test]
    fn status_kb_lines() {
        let status = "Name:\tswitchboard\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(40960));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(51200));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn proc_stat_cpu_line() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 3 0\nintr 1 2\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(MachineTicks {
                busy: 161,
                total: 1181
            })
        );
        assert_eq!(parse_proc_stat("cpu  1 2\n"), None);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        assert!(machine_ticks().unwrap().total > 0);
    }

    #[test]
    fn auxv_lookup() {
        let mut auxv = Vec::new();
        for (k, v) in [(6u64, 4096u64), (AT_CLKTCK, 250), (0, 0)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&auxv, AT_CLKTCK), Some(250));
        assert_eq!(parse_auxv(&auxv, 99), None);
    }

    #[test]
    fn reads_this_process() {
        let me = Proc::Me.sample().unwrap();
        assert!(me.rss_kb > 0);
        assert!(me.user_ticks <= me.cpu_ticks);
        assert!(clock_ticks_per_sec().0 > 0);
    }
}
