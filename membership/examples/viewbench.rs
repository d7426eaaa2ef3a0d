//! View-change cost at scale: `cargo run --release -p membership --example viewbench -- [N...]`
//! (default N = 100 1000 10000).
//!
//! For each N, starts N nodes already agreed on one view (instant, lossless
//! network: every delay 0 ms), lets them ping for a second, then
//!
//! 1. kills one node (a middle id) and runs until the N − 1 others agree
//!    on a view without it;
//! 2. starts one new node (id N + 1, seeded with node 1) and runs until all N
//!    agree on a view with it.
//!
//! Per change it prints the view-change traffic (every message but pings:
//! probes, proposals, accepts, rejects, commits, view requests) counted from
//! the fault until one second after agreement, its bytes, bytes per member,
//! the failure-detector pings sent meanwhile (background traffic, the same
//! with or without a change), and the CPU seconds the whole in-process
//! cluster spent from the fault to agreement (detection included).
//!
//! Bytes are what the node puts in an RPC body: the postcard encoding of
//! `Request::Membership(message)` (node/src/rpc/proto.rs), i.e. one byte of
//! enum tag plus the postcard encoding of the message; HTTP/2 framing is not
//! counted.
//!
//! Each scenario runs twice with the same seed: once counting (the counter
//! serializes every message) and once timed without the counter, so the CPU
//! figure is the protocol's and the simulator's, not the serializer's.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use membership::sim::{Cluster, NetConfig, addr};
use membership::{MembershipConfig, Message, NodeId};

/// Virtual time one change may take before the bench gives up on it.
const CHANGE_MS_MAX: u64 = 30_000;
/// Traffic after agreement still counted (late answers, view requests).
const TAIL_MS: u64 = 1_000;

#[derive(Default, Clone, Debug)]
struct Traffic {
    by_kind: BTreeMap<&'static str, (u64, u64)>,
}

impl Traffic {
    fn change(&self) -> (u64, u64) {
        self.by_kind
            .iter()
            .filter(|(k, _)| !matches!(**k, "ping" | "ping_ack"))
            .fold((0, 0), |(m, b), (_, (km, kb))| (m + km, b + kb))
    }

    fn pings(&self) -> (u64, u64) {
        self.by_kind
            .iter()
            .filter(|(k, _)| matches!(**k, "ping" | "ping_ack"))
            .fold((0, 0), |(m, b), (_, (km, kb))| (m + km, b + kb))
    }
}

struct Row {
    change: &'static str,
    members: usize,
    virtual_ms: u64,
    cpu_s: f64,
    traffic: Traffic,
    pings: (u64, u64),
}

/// CPU time of this thread, in seconds (`CLOCK_THREAD_CPUTIME_ID`: exact,
/// unlike /proc's tick-granular counters).
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The size of `msg` in the node's RPC body: `Request::Membership` is
/// variant 0 of `Request`, one varint byte, followed by the message.
fn wire_bytes(msg: &Message) -> u64 {
    postcard::to_allocvec(msg).map_or(0, |v| v.len() as u64 + 1)
}

/// Cheap agreement check run after every instant: same epoch and size
/// everywhere, and the expected size.
fn agreed(cluster: &Cluster, expected: &BTreeSet<NodeId>) -> bool {
    let mut epoch = None;
    for id in expected {
        let Some(m) = cluster.machine(*id) else {
            return false;
        };
        let view = m.view();
        if view.members.len() != expected.len() {
            return false;
        }
        match epoch {
            None => epoch = Some(view.epoch),
            Some(e) if e != view.epoch => return false,
            Some(_) => {}
        }
    }
    true
}

fn instant_net() -> NetConfig {
    NetConfig {
        delay_ms_min: 0,
        delay_ms_max: 0,
        drop_per_mille: 0,
        rpc_timeout_ms: 1_000,
        refused_ms: 0,
    }
}

/// Runs the two changes at size `n`; counts traffic when `count` is set.
fn scenario(n: u64, count: bool) -> Result<Vec<Row>, String> {
    let traffic = Rc::new(RefCell::new(Traffic::default()));
    let mut cluster = Cluster::new(n, instant_net(), MembershipConfig::default());
    let mut ids: BTreeSet<NodeId> = (1..=n).collect();
    cluster.start_in_view(&ids, vec![addr(1)]);
    cluster.run_for(1_000);
    if count {
        let sink = traffic.clone();
        cluster.set_observer(move |_, _, msg| {
            let bytes = wire_bytes(msg);
            let mut t = sink.borrow_mut();
            let entry = t.by_kind.entry(msg.kind()).or_default();
            entry.0 += 1;
            entry.1 += bytes;
        });
    }
    let mut rows = Vec::new();
    let victim = n / 2 + 1;
    let newcomer = n + 1;
    for change in ["remove 1", "add 1"] {
        *traffic.borrow_mut() = Traffic::default();
        let start = cluster.now();
        let cpu_start = cpu_s();
        if change == "remove 1" {
            ids.remove(&victim);
            cluster.kill(victim);
        } else {
            ids.insert(newcomer);
            cluster.start(newcomer, vec![addr(1)]);
        }
        let done = cluster.run_until(start.plus_ms(CHANGE_MS_MAX), |c| agreed(c, &ids));
        let cpu = cpu_s() - cpu_start;
        let Some(done) = done else {
            return Err(format!(
                "n={n} {change}: no agreement: {}",
                cluster.describe()
            ));
        };
        cluster.agreement(&ids)?;
        let pings = traffic.borrow().pings();
        cluster.run_until(done.plus_ms(TAIL_MS), |_| false);
        if !cluster.violations().is_empty() {
            return Err(format!("n={n}: safety: {:?}", cluster.violations()));
        }
        rows.push(Row {
            change,
            members: ids.len(),
            virtual_ms: done.since_ms(start),
            cpu_s: cpu,
            traffic: traffic.borrow().clone(),
            pings,
        });
    }
    Ok(rows)
}

fn main() {
    let sizes: Vec<u64> = {
        let args: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.replace([',', '_'], "").parse().ok())
            .collect();
        if args.is_empty() {
            vec![100, 1_000, 10_000]
        } else {
            args
        }
    };
    println!(
        "{:>6} {:<9} {:>8} {:>14} {:>12} {:>9} {:>12} {:>8} {:>8}",
        "N", "change", "msgs", "bytes", "bytes/memb", "ping_msgs", "ping_bytes", "cpu_s", "virt_ms"
    );
    for n in sizes {
        let counted = match scenario(n, true) {
            Ok(rows) => rows,
            Err(err) => {
                println!("{err}");
                std::process::exit(1);
            }
        };
        let timed = match scenario(n, false) {
            Ok(rows) => rows,
            Err(err) => {
                println!("{err}");
                std::process::exit(1);
            }
        };
        for (row, timing) in counted.iter().zip(&timed) {
            let (msgs, bytes) = row.traffic.change();
            println!(
                "{:>6} {:<9} {:>8} {:>14} {:>12.0} {:>9} {:>12} {:>8.4} {:>8}",
                n,
                row.change,
                msgs,
                bytes,
                bytes as f64 / row.members as f64,
                row.pings.0,
                row.pings.1,
                timing.cpu_s,
                row.virtual_ms
            );
            let kinds: Vec<String> = row
                .traffic
                .by_kind
                .iter()
                .filter(|(k, _)| !matches!(**k, "ping" | "ping_ack"))
                .map(|(k, (m, b))| format!("{k}={m}/{b}B"))
                .collect();
            println!("{:>6} {:<9}   {}", "", "", kinds.join(" "));
        }
    }
}
