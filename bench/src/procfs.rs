//! What the kernel says about a process and a socket, read from `/proc`.
//!
//! Owns: a process's resident memory (`VmRSS`, `VmHWM`) and CPU time
//! (`utime + stime`), one loopback TCP connection's state and queues from
//! `/proc/net/tcp`, a one-line description of the machine, and raising the
//! open-files limit. The parsers are pure and tested on captured lines; the
//! readers around them only open files. Linux only.

use std::fs;

/// One side of a TCP connection as `/proc/net/tcp` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    /// The kernel's state number: 1 established, 4 fin-wait-1, 8 close-wait, ...
    pub state: u8,
    /// Bytes written by the owner and not yet acknowledged by the peer.
    pub tx_queue: u64,
    /// Bytes received and not yet read by the owner.
    pub rx_queue: u64,
    /// The socket's inode; 0 once no process holds the socket (orphaned).
    pub inode: u64,
}

/// The state number of an established connection.
pub const TCP_ESTABLISHED: u8 = 1;

/// A short name for a TCP state number.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident memory of `pid` since it started, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_kib_field(&text, field).ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

/// The number of a `Name:   1234 kB` line.
fn parse_kib_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

/// CPU seconds (user + system) `pid` has used since it started.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    // SAFETY: sysconf only reads a constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(ticks as f64 / per_sec as f64)
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name sits in
/// parentheses and may hold spaces, so fields are counted after the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the full line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The IPv4 loopback entry whose local port is `local` and remote port `remote`.
pub fn loopback_tcp(local: u16, remote: u16) -> Option<TcpEntry> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| parse_tcp_line(l, local, remote))
}

/// One `/proc/net/tcp` line, when it is 127.0.0.1:`local` -> 127.0.0.1:`remote`.
fn parse_tcp_line(line: &str, local: u16, remote: u16) -> Option<TcpEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[1] != loopback_hex(local) || f[2] != loopback_hex(remote) {
        return None;
    }
    let (tx, rx) = f[4].split_once(':')?;
    Some(TcpEntry {
        state: u8::from_str_radix(f[3], 16).ok()?,
        tx_queue: u64::from_str_radix(tx, 16).ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
        inode: f[9].parse().ok()?,
    })
}

/// 127.0.0.1:`port` as the kernel prints it (address in host byte order).
fn loopback_hex(port: u16) -> String {
    format!("0100007F:{port:04X}")
}

/// Cores, memory, CPU model, kernel and open-files limit, on one line.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = fs::read_to_string("/proc/meminfo").ok().and_then(|m| parse_kib_field(&m, "MemTotal:")).unwrap_or(0);
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).trim())
        .unwrap_or("unknown CPU");
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (soft, hard) = nofile_limit();
    format!(
        "{cores} cores ({model}), {:.1} GiB memory, Linux {}, open files {soft} (hard {hard})",
        mem as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn nofile_limit() -> (u64, u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_cur, limit.rlim_max)
}

/// Raises this process's open-files soft limit to its hard limit, so one
/// process can hold thousands of sockets. Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let (_, hard) = nofile_limit();
    let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads only the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    nofile_limit().0
}

/// Makes this process `SCHED_BATCH`: it still gets its share of the CPU,
/// but waking it (a frame arrived on one of its sockets) no longer preempts
/// the gateway mid-fan-out. Client processes stand in for browsers on other
/// machines; without this, each of the gateway's sends on loopback could
/// switch its core over to a client. Best effort: a refusal changes nothing
/// but the figures.
pub fn stand_aside() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads only the struct we pass; pid 0 is this process.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_its_status_line() {
        let status = "Name:\trowcast\nVmHWM:\t  90000 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n";
        assert_eq!(parse_kib_field(status, "VmRSS:"), Some(51234));
        assert_eq!(parse_kib_field(status, "VmHWM:"), Some(90000));
        assert_eq!(parse_kib_field(status, "VmSwap:"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_a_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (tokio (runtime) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
    }

    #[test]
    fn a_loopback_connection_is_found_by_its_two_ports() {
        let line = "  12: 0100007F:1F90 0100007F:C350 01 0003A980:00000000 01:00000014 00000000     0        0 98765 1 0000000000000000 20 4 30 10 -1";
        let entry = parse_tcp_line(line, 8080, 50000).expect("the entry");
        assert_eq!(entry, TcpEntry { state: TCP_ESTABLISHED, tx_queue: 240_000, rx_queue: 0, inode: 98765 });
        assert_eq!(parse_tcp_line(line, 50000, 8080), None, "the other direction is another entry");
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs(me).unwrap() >= 0.0);
    }
}
