//! `--calibrate-out`: service-time estimates for the simulator (`sim::Model` keys), from
//! what a client can see: a single-session probe's median SMTP latency, saturation
//! throughput, and — when the server runs on this machine — the CPU the rest of the
//! machine spent (from `/proc/stat`, minus this process).
//!
//! Only keys that can be estimated are written; every one is explained under `notes`.
//! The simulator reads the file with `#[serde(default)]`, so the keys left out keep its
//! defaults and the extra keys (`notes`, `measured`) are ignored.

use serde_json::{Map, Value, json};

/// The simulator's default CPU split of one message on its path (µs): SMTP session,
/// placement, one stored copy. The estimate keeps these proportions.
const SIM_SPLIT_US: (f64, f64, f64) = (250.0, 20.0, 60.0);
/// `Measured::cpu_source` when the server processes were found.
pub const CPU_SOURCE_SERVER: &str = "server processes";
/// `Measured::cpu_source` when only the machine's total could be read.
pub const CPU_SOURCE_MACHINE: &str = "rest of the machine";

/// CPU time of the whole machine and of this process, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    machine_busy_ticks: u64,
    own_ticks: u64,
}

impl CpuSample {
    /// Read `/proc/stat` and `/proc/self/stat` (None where they are not there).
    pub fn now() -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
        let f: Vec<u64> = cpu
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy =
            f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0);
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = rest.get(11)?.parse().ok()?;
        let stime: u64 = rest.get(12)?.parse().ok()?;
        Some(CpuSample {
            machine_busy_ticks: busy,
            own_ticks: utime + stime,
        })
    }

    /// Microseconds of CPU the rest of the machine used between `self` and `later`.
    pub fn others_us(&self, later: &CpuSample) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tck = if tck > 0 { tck as f64 } else { 100.0 };
        let machine = later
            .machine_busy_ticks
            .saturating_sub(self.machine_busy_ticks);
        let own = later.own_ticks.saturating_sub(self.own_ticks);
        machine.saturating_sub(own) as f64 * 1e6 / tck
    }
}

/// Processes listening on these TCP ports of this machine (from `/proc/net/tcp{,6}`
/// and each process's fds); empty where that cannot be read.
pub fn listening_pids(ports: &[u16]) -> Vec<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && port.is_some_and(|p| ports.contains(&p)) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let mut pids = Vec::new();
    if inodes.is_empty() {
        return pids;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let listens = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str().map(|t| inodes.iter().any(|i| i == t)))
                .unwrap_or(false)
        });
        if listens && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

/// CPU time (user + system) of these processes, microseconds; `None` if one is gone.
pub fn process_cpu_us(pids: &[u32]) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        ticks += rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 * 1e6 / tck)
}

/// Measures the server's CPU over a phase: its processes' when known, else the rest
/// of the machine's.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
    server_us: Option<f64>,
    machine: Option<CpuSample>,
}

impl CpuMeter {
    /// Start measuring (`pids` empty: the machine minus this process).
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            server_us: if pids.is_empty() {
                None
            } else {
                process_cpu_us(pids)
            },
            machine: CpuSample::now(),
        }
    }

    /// CPU microseconds since `start`.
    pub fn stop(&self) -> Option<f64> {
        match self.server_us {
            Some(a) => process_cpu_us(&self.pids).map(|b| (b - a).max(0.0)),
            None => Some(self.machine?.others_us(&CpuSample::now()?)),
        }
    }
}

/// What the run measured that the estimates use.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Server cores (`--calibrate-cores` or this machine's).
    pub cores: u32,
    /// True when every server address is on loopback (its CPU is this machine's).
    pub server_local: bool,
    /// Single-session probe: median SMTP latency, µs.
    pub probe_smtp_p50_us: Option<f64>,
    /// Main send phase: acknowledged messages per second.
    pub send_msgs_per_s: Option<f64>,
    /// Main send phase: acknowledged messages.
    pub send_messages: u64,
    /// CPU of the server processes (found by their listening ports) during the main
    /// send phase, µs; else of the rest of the machine.
    pub send_server_cpu_us: Option<f64>,
    /// Where the CPU figures come from (`server processes` or `rest of the machine`).
    pub cpu_source: &'static str,
    /// Drain phases: messages retrieved per second.
    pub drain_msgs_per_s: Option<f64>,
    /// Drain phases: messages retrieved.
    pub drain_messages: u64,
    /// Drain phases: logins.
    pub drain_logins: u64,
    /// Drain phases: median login time (USER written → `+OK` to PASS), µs.
    pub drain_login_p50_us: Option<f64>,
    /// Single-session POP3 probe before any sending: median time of a session that
    /// logs in, STATs and QUITs, µs.
    pub probe_pop_p50_us: Option<f64>,
    /// CPU of the server (as for sending) during the drain phases, µs.
    pub drain_server_cpu_us: Option<f64>,
}

/// The calibration object: estimated `sim::Model` keys, `notes`, `measured`.
pub fn estimate(m: &Measured) -> Value {
    let mut out = Map::new();
    let mut notes = Map::new();
    out.insert("cores".into(), json!(m.cores));
    notes.insert(
        "cores".into(),
        json!("given by --calibrate-cores, else the cores of the machine the generator runs on"),
    );

    // Per-message CPU on the SMTP path.
    let cpu_msg = match (m.server_local, m.send_server_cpu_us, m.send_msgs_per_s) {
        (true, Some(cpu), _) if m.send_messages > 0 => Some((
            cpu / m.send_messages as f64,
            if m.cpu_source == CPU_SOURCE_SERVER {
                "CPU of the server processes (found by their listening ports, /proc/PID/stat) \
                 during the send phase per acknowledged message"
            } else {
                "CPU the rest of this machine used during the send phase (/proc/stat minus \
                 this process) per acknowledged message; counts any other load on the machine"
            },
        )),
        (_, _, Some(x)) if x > 0.0 => Some((
            m.cores as f64 * 1e6 / x,
            "cores x 1e6 / saturation msgs/s of the send phase: an upper bound, exact only if \
             the server was CPU-bound with every core busy",
        )),
        _ => None,
    };
    if let Some((cpu, how)) = cpu_msg {
        let (s, p, st) = SIM_SPLIT_US;
        let total = s + p + st;
        out.insert("smtp_cpu_us".into(), json!(round1(cpu * s / total)));
        out.insert("place_cpu_us".into(), json!(round1(cpu * p / total)));
        out.insert("store_cpu_us".into(), json!(round1(cpu * st / total)));
        let split = format!(
            "per-message CPU {:.1} us ({how}), split over smtp/place/store in the simulator's \
             default proportions {s}:{p}:{st}; assumes one node holding one copy",
            cpu
        );
        for k in ["smtp_cpu_us", "place_cpu_us", "store_cpu_us"] {
            notes.insert(k.into(), json!(split));
        }
        if let Some(p50) = m.probe_smtp_p50_us {
            out.insert("fsync_us".into(), json!(round1((p50 - cpu).max(0.0))));
            notes.insert(
                "fsync_us".into(),
                json!(format!(
                    "median SMTP latency of a single-session probe ({p50:.1} us, MAIL FROM → 250) \
                     minus the per-message CPU: an upper bound (it also holds the loopback round \
                     trips and any queueing)"
                )),
            );
        }
    }
    if let Some(p50) = m.probe_pop_p50_us {
        out.insert("pop_cpu_us".into(), json!(round1(p50)));
        notes.insert(
            "pop_cpu_us".into(),
            json!(
                "median time of a single-session POP3 probe before any sending (connect, USER, \
                 PASS, STAT, QUIT; up to 10 users, nothing deleted): an upper bound of one \
                 session's CPU (loopback round trips and the listing of whatever mail was \
                 there are included)"
            ),
        );
    }
    // A server well below its cores at saturation is limited elsewhere: on one
    // machine with one copy per message, by the store's serial write path (append
    // and group commit: every message's write waits its turn there).
    if let (true, Some(cpu), Some(x)) = (m.server_local, m.send_server_cpu_us, m.send_msgs_per_s)
        && m.send_messages > 0
        && x > 0.0
    {
        let used_cores = cpu / m.send_messages as f64 * x / 1e6;
        if used_cores < 0.75 * f64::from(m.cores.max(1)) {
            out.insert("write_us".into(), json!(round1(1e6 / x)));
            notes.insert(
                "write_us".into(),
                json!(format!(
                    "the server used {used_cores:.2} of {} cores at saturation, so the limit \
                     was not its CPU: 1e6 / saturation msgs/s, as the serial work of one write \
                     in the store (assumes one node holding one copy; includes whatever else \
                     serialises a delivery)",
                    m.cores
                )),
            );
        }
    }
    let read = match (m.server_local, m.drain_server_cpu_us, m.drain_msgs_per_s) {
        (true, Some(cpu), _) if m.drain_messages > 0 => Some((
            cpu / m.drain_messages as f64,
            "server CPU during the drain phase (measured as for smtp_cpu_us) per message \
             retrieved: an upper bound (logins, listings and deletes are included)",
        )),
        (_, _, Some(x)) if x > 0.0 => Some((
            m.cores as f64 * 1e6 / x,
            "cores x 1e6 / drain msgs/s: an upper bound (session costs included)",
        )),
        _ => None,
    };
    if let Some((r, how)) = read {
        out.insert("read_cpu_us".into(), json!(round1(r)));
        notes.insert("read_cpu_us".into(), json!(how));
    }
    notes.insert(
        "not_estimated".into(),
        json!(
            "disk_bytes_per_us, net_latency_us, net_bytes_per_us, list_cpu_us, dead_call_us: \
               not separable from outside the server; the simulator keeps its defaults"
        ),
    );
    out.insert("notes".into(), Value::Object(notes));
    out.insert(
        "measured".into(),
        json!({
            "server_local": m.server_local,
            "probe_smtp_p50_us": m.probe_smtp_p50_us,
            "send_msgs_per_s": m.send_msgs_per_s,
            "send_messages": m.send_messages,
            "cpu_source": m.cpu_source,
            "send_server_cpu_us": m.send_server_cpu_us,
            "drain_msgs_per_s": m.drain_msgs_per_s,
            "drain_messages": m.drain_messages,
            "drain_logins": m.drain_logins,
            "drain_login_p50_us": m.drain_login_p50_us,
            "probe_pop_p50_us": m.probe_pop_p50_us,
            "drain_server_cpu_us": m.drain_server_cpu_us,
        }),
    );
    Value::Object(out)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_from_saturation_and_probe() {
        let m = Measured {
            cores: 2,
            server_local: false,
            probe_smtp_p50_us: Some(3000.0),
            send_msgs_per_s: Some(2000.0),
            send_messages: 40_000,
            ..Measured::default()
        };
        let v = estimate(&m);
        // 2 cores / 2000 msgs/s = 1000 us per message, split 250:20:60.
        let smtp = v["smtp_cpu_us"].as_f64().unwrap();
        assert!((smtp - 757.6).abs() < 0.1, "{smtp}");
        assert_eq!(v["fsync_us"].as_f64(), Some(2000.0));
        assert_eq!(v["cores"].as_u64(), Some(2));
        assert!(v["notes"]["fsync_us"].is_string());
        assert!(v.get("pop_cpu_us").is_none(), "no drain, no POP estimate");
    }

    #[test]
    fn a_server_short_of_its_cores_is_limited_by_its_write_path() {
        let m = |cpu_us: f64| Measured {
            cores: 2,
            server_local: true,
            send_msgs_per_s: Some(2000.0),
            send_messages: 10_000,
            send_server_cpu_us: Some(cpu_us),
            cpu_source: CPU_SOURCE_SERVER,
            ..Measured::default()
        };
        // 400 us per message at 2000/s: 0.8 of 2 cores busy.
        let v = estimate(&m(4e6));
        assert_eq!(v["write_us"].as_f64(), Some(500.0));
        assert!(v["notes"]["write_us"].is_string());
        // 900 us per message: 1.8 cores, CPU-bound: no write-path figure.
        assert!(estimate(&m(9e6)).get("write_us").is_none());
    }

    #[test]
    fn local_cpu_is_preferred() {
        let m = Measured {
            cores: 2,
            server_local: true,
            send_msgs_per_s: Some(2000.0),
            send_messages: 1000,
            send_server_cpu_us: Some(330_000.0),
            cpu_source: CPU_SOURCE_SERVER,
            probe_pop_p50_us: Some(500.0),
            drain_messages: 1000,
            drain_logins: 10,
            drain_server_cpu_us: Some(100_000.0),
            drain_msgs_per_s: Some(5000.0),
            ..Measured::default()
        };
        let v = estimate(&m);
        assert_eq!(v["smtp_cpu_us"].as_f64(), Some(250.0));
        assert_eq!(v["store_cpu_us"].as_f64(), Some(60.0));
        assert_eq!(v["read_cpu_us"].as_f64(), Some(100.0));
        assert_eq!(v["pop_cpu_us"].as_f64(), Some(500.0));
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // This process itself is excluded: a server is never the generator.
        assert!(listening_pids(&[port]).is_empty());
        assert!(process_cpu_us(&[std::process::id()]).is_some());
    }

    #[test]
    fn cpu_sample_reads_proc() {
        if let (Some(a), Some(b)) = (CpuSample::now(), CpuSample::now()) {
            assert!(a.others_us(&b) >= 0.0);
        }
    }
}
