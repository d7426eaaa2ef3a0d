//! One run: the phases a mode asks for (probe, send, mixed, drain), the tally of what
//! every session did, the integrity verdict, the progress bar, the output files.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::{LoadArgs, Mode, Plan, User};
use crate::calibrate::{self, CpuMeter, Measured};
use crate::error::LoadError;
use crate::message::{LoadId, TextBlock};
use crate::pop_client::{self, DrainJob, DrainOutcome, UserOrder};
use crate::report::{PhaseReport, ProtoAcc, Report};
use crate::rng::Rng;
use crate::schedule::{Live, Schedule};
use crate::smtp_client::{self, SendJob, SendOutcome};

/// Messages the single-session calibration probe sends at most.
const PROBE_MESSAGES_MAX: u64 = 100;
/// Longest calibration probe.
const PROBE_DURATION: Duration = Duration::from_secs(2);
/// Ids listed in the report for corrupt and missing messages.
const IDS_SHOWN_MAX: usize = 20;
/// Distinct error texts kept for the report.
const ERRORS_SHOWN_MAX: usize = 10;

/// What a run produced: the report and, with `--calibrate-out`, the estimates.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every figure.
    pub report: Report,
    /// The `--calibrate-out` object, if asked for.
    pub calibration: Option<serde_json::Value>,
}

/// The whole command: plan, run, print the table, write the files, judge.
pub async fn run(args: LoadArgs) -> Result<Report, LoadError> {
    let plan = args.plan()?;
    let outcome = execute(&plan).await;
    print!("{}", outcome.report.table());
    if let Some(path) = &plan.json {
        write_file(path, outcome.report.to_json())?;
    }
    if let (Some(path), Some(cal)) = (&plan.calibrate_out, &outcome.calibration) {
        let text = serde_json::to_string_pretty(cal).expect("a JSON value always serializes");
        write_file(path, text)?;
    }
    outcome.report.check()?;
    Ok(outcome.report)
}

fn write_file(path: &std::path::Path, text: String) -> Result<(), LoadError> {
    std::fs::write(path, text + "\n").map_err(|source| LoadError::File {
        verb: "writing",
        path: path.display().to_string(),
        source,
    })
}

/// Shared by every phase of a run.
struct Shared<'a> {
    plan: &'a Plan,
    users: Arc<Vec<User>>,
    text: Arc<TextBlock>,
    run_id: u64,
    live: Arc<Live>,
}

/// What the sessions of every phase did, added up.
#[derive(Default)]
struct Tally {
    phases: Vec<PhaseReport>,
    smtp_all: ProtoAcc,
    pop_all: ProtoAcc,
    next_id: u64,
    sent: u64,
    acknowledged: u64,
    temp_failed: u64,
    perm_failed: u64,
    smtp_errors: u64,
    connect_failures: u64,
    late: u64,
    acked_ids: Vec<u64>,
    retrieved: u64,
    corrupt: u64,
    unmarked: u64,
    size_mismatch: u64,
    logins: u64,
    pop_errors: u64,
    intact: Vec<LoadId>,
    corrupt_ids: Vec<LoadId>,
    errors: Vec<String>,
    drain_login_us: Option<hdrhistogram::Histogram<u64>>,
}

impl Tally {
    fn note(&mut self, samples: Vec<String>) {
        for e in samples {
            if self.errors.len() < ERRORS_SHOWN_MAX && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
    }

    fn add_send(&mut self, mut o: SendOutcome, acc: &mut ProtoAcc) {
        self.sent += o.sent;
        self.acknowledged += o.acknowledged;
        self.temp_failed += o.temp_failed;
        self.perm_failed += o.perm_failed;
        self.smtp_errors += o.errors;
        self.connect_failures += o.connect_failures;
        self.late += o.late;
        self.acked_ids.append(&mut o.acked_ids);
        acc.messages += o.acknowledged;
        acc.bytes += o.acknowledged_bytes;
        let _ = acc.latency_us.add(&o.latency_us);
        self.note(o.error_samples);
    }

    fn add_drain(&mut self, mut o: DrainOutcome, acc: &mut ProtoAcc) {
        self.retrieved += o.retrieved;
        self.corrupt += o.corrupt;
        self.unmarked += o.unmarked;
        self.size_mismatch += o.size_mismatch;
        self.logins += o.logins;
        self.pop_errors += o.errors;
        self.intact.append(&mut o.intact);
        self.corrupt_ids.append(&mut o.corrupt_ids);
        acc.messages += o.retrieved;
        acc.bytes += o.retrieved_bytes;
        let _ = acc.latency_us.add(&o.latency_us);
        match &mut self.drain_login_us {
            Some(h) => {
                let _ = h.add(&o.login_us);
            }
            None => self.drain_login_us = Some(o.login_us),
        }
        self.note(o.error_samples);
    }

    fn phase(&mut self, name: &str, smtp: Option<ProtoAcc>, pop: Option<ProtoAcc>) {
        if let Some(s) = &smtp {
            self.smtp_all.add(s);
        }
        if let Some(p) = &pop {
            self.pop_all.add(p);
        }
        self.phases.push(PhaseReport {
            phase: name.to_string(),
            smtp: smtp.map(|s| s.stats()),
            pop: pop.map(|p| p.stats()),
        });
    }
}

async fn join_all<T>(tasks: Vec<JoinHandle<T>>, tally: &mut Tally, errors: &mut u64) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(o) => out.push(o),
            Err(e) => {
                *errors += 1;
                tally.note(vec![format!("a session task failed: {e}")]);
            }
        }
    }
    out
}

/// Spawn an SMTP phase's sessions.
fn start_send(
    shared: &Shared<'_>,
    sessions: usize,
    first_id: u64,
    messages_max: Option<u64>,
    duration: Option<Duration>,
    rate_msgs_per_s: Option<f64>,
) -> (Arc<SendJob>, Vec<JoinHandle<SendOutcome>>) {
    let p = shared.plan;
    let job = Arc::new(SendJob {
        smtp: p.smtp.clone(),
        users: shared.users.clone(),
        from: p.from.clone(),
        size: p.size,
        messages_per_connection: p.messages_per_connection,
        pipelining: p.pipelining,
        timeout: p.timeout,
        text: shared.text.clone(),
        run_id: shared.run_id,
        seed: p.seed ^ first_id,
        schedule: Schedule::new(first_id, messages_max, duration, rate_msgs_per_s),
        live: shared.live.clone(),
    });
    let tasks = (0..sessions)
        .map(|i| tokio::spawn(smtp_client::run_session(job.clone(), i)))
        .collect();
    (job, tasks)
}

async fn finish_send(
    job: Arc<SendJob>,
    tasks: Vec<JoinHandle<SendOutcome>>,
    tally: &mut Tally,
) -> ProtoAcc {
    let mut errors = 0;
    let outcomes = join_all(tasks, tally, &mut errors).await;
    tally.smtp_errors += errors;
    let mut acc = ProtoAcc {
        elapsed_s: job.schedule.start().elapsed().as_secs_f64(),
        ..ProtoAcc::default()
    };
    for o in outcomes {
        tally.add_send(o, &mut acc);
    }
    tally.next_id = tally.next_id.max(job.schedule.next_id());
    acc
}

fn start_drain(shared: &Shared<'_>, order: Arc<UserOrder>) -> Vec<JoinHandle<DrainOutcome>> {
    let job = Arc::new(DrainJob {
        pop: shared.plan.pop.clone(),
        users: shared.users.clone(),
        timeout: shared.plan.timeout,
        live: shared.live.clone(),
    });
    (0..shared.plan.pop_sessions)
        .map(|i| tokio::spawn(pop_client::run_session(job.clone(), i, order.clone())))
        .collect()
}

async fn finish_drain(
    tasks: Vec<JoinHandle<DrainOutcome>>,
    started: Instant,
    tally: &mut Tally,
) -> ProtoAcc {
    let mut errors = 0;
    let outcomes = join_all(tasks, tally, &mut errors).await;
    tally.pop_errors += errors;
    let mut acc = ProtoAcc {
        elapsed_s: started.elapsed().as_secs_f64(),
        ..ProtoAcc::default()
    };
    for o in outcomes {
        tally.add_drain(o, &mut acc);
    }
    acc
}

/// Users the single-session POP3 probe logs in as.
const PROBE_POP_USERS_MAX: usize = 10;

/// Median time of POP3 sessions that log in, STAT and QUIT, one at a time.
async fn pop_probe(plan: &Plan) -> Option<f64> {
    let mut h = crate::report::new_histogram();
    for user in plan.users.iter().take(PROBE_POP_USERS_MAX) {
        if let Some(us) = pop_client::probe_session(plan.pop[0], user, plan.timeout).await {
            h.saturating_record(us.max(1));
        }
    }
    (!h.is_empty()).then(|| h.value_at_quantile(0.5) as f64)
}

fn new_run_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ ((std::process::id() as u64) << 32)).next_u64()
}

fn progress_bar(plan: &Plan, live: Arc<Live>) -> Option<(ProgressBar, JoinHandle<()>)> {
    if !plan.progress {
        return None;
    }
    let total = plan
        .messages_max
        .map(|m| m * (1 + u64::from(plan.mode.drains() && plan.mode.sends())));
    let bar = match total {
        Some(n) if plan.mode.sends() => {
            let b = ProgressBar::new(n);
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        }
        _ => {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        }
    };
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let (sent, acked) = (Live::get(&live.sent), Live::get(&live.acknowledged));
            let (failed, got) = (Live::get(&live.failed), Live::get(&live.retrieved));
            b.set_position(sent + got);
            b.set_message(format!(
                "sent {sent} acked {acked} failed {failed} retrieved {got} corrupt {}",
                Live::get(&live.corrupt)
            ));
            b.tick();
        }
    });
    Some((bar, ticker))
}

/// Run every phase of `plan` and tally the figures (no output, no verdict).
pub async fn execute(plan: &Plan) -> Outcome {
    let shared = Shared {
        plan,
        users: Arc::new(plan.users.clone()),
        text: Arc::new(TextBlock::new(plan.seed)),
        run_id: new_run_id(),
        live: Arc::new(Live::default()),
    };
    let progress = progress_bar(plan, shared.live.clone());
    let mut tally = Tally::default();
    let mut measured = Measured {
        cores: plan.calibrate_cores,
        server_local: plan
            .smtp
            .iter()
            .chain(&plan.pop)
            .all(|a| a.ip().is_loopback()),
        ..Measured::default()
    };
    let calibrating = plan.calibrate_out.is_some();
    let server_pids = if calibrating && measured.server_local {
        let mut ports: Vec<u16> = plan
            .smtp
            .iter()
            .chain(&plan.pop)
            .map(|a| a.port())
            .collect();
        ports.dedup();
        calibrate::listening_pids(&ports)
    } else {
        Vec::new()
    };
    measured.cpu_source = if server_pids.is_empty() {
        calibrate::CPU_SOURCE_MACHINE
    } else {
        calibrate::CPU_SOURCE_SERVER
    };

    if calibrating && plan.mode.drains() {
        measured.probe_pop_p50_us = pop_probe(plan).await;
    }
    if plan.mode.sends() {
        let mut messages_left = plan.messages_max;
        if calibrating {
            let probe_max =
                messages_left.map_or(PROBE_MESSAGES_MAX, |m| (m / 5).clamp(1, PROBE_MESSAGES_MAX));
            let (job, tasks) =
                start_send(&shared, 1, 0, Some(probe_max), Some(PROBE_DURATION), None);
            let acc = finish_send(job, tasks, &mut tally).await;
            if !acc.latency_us.is_empty() {
                measured.probe_smtp_p50_us = Some(acc.latency_us.value_at_quantile(0.5) as f64);
            }
            tally.phase("probe", Some(acc), None);
            messages_left = messages_left.map(|m| m.saturating_sub(tally.next_id));
        }
        let first_id = tally.next_id;
        if plan.mode == Mode::Mixed {
            let stop = Arc::new(AtomicBool::new(false));
            let order = Arc::new(UserOrder::Owned {
                sessions: plan.pop_sessions,
                stop: stop.clone(),
            });
            let drain_start = Instant::now();
            let drains = start_drain(&shared, order);
            let (job, tasks) = start_send(
                &shared,
                plan.sessions,
                first_id,
                messages_left,
                plan.duration,
                plan.rate_msgs_per_s,
            );
            let smtp = finish_send(job, tasks, &mut tally).await;
            stop.store(true, Ordering::Relaxed);
            let pop = finish_drain(drains, drain_start, &mut tally).await;
            measured.send_msgs_per_s = Some(smtp.stats().msgs_per_s);
            measured.send_messages = smtp.messages;
            tally.phase("mixed", Some(smtp), Some(pop));
        } else {
            let cpu = CpuMeter::start(&server_pids);
            let (job, tasks) = start_send(
                &shared,
                plan.sessions,
                first_id,
                messages_left,
                plan.duration,
                plan.rate_msgs_per_s,
            );
            let smtp = finish_send(job, tasks, &mut tally).await;
            measured.send_server_cpu_us = cpu.stop();
            measured.send_msgs_per_s = Some(smtp.stats().msgs_per_s);
            measured.send_messages = smtp.messages;
            tally.phase("send", Some(smtp), None);
        }
    }
    if plan.mode.drains() {
        let cpu = CpuMeter::start(&server_pids);
        let started = Instant::now();
        let order = Arc::new(UserOrder::Shared(AtomicUsize::new(0)));
        let drains = start_drain(&shared, order);
        let logins_before = tally.logins;
        let pop = finish_drain(drains, started, &mut tally).await;
        measured.drain_server_cpu_us = cpu.stop();
        measured.drain_msgs_per_s = Some(pop.stats().msgs_per_s);
        measured.drain_messages = pop.messages;
        measured.drain_logins = tally.logins - logins_before;
        let name = if plan.mode == Mode::Mixed {
            "drain-rest"
        } else {
            "drain"
        };
        tally.phase(name, None, Some(pop));
    }
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    if let Some(h) = &tally.drain_login_us
        && !h.is_empty()
    {
        measured.drain_login_p50_us = Some(h.value_at_quantile(0.5) as f64);
    }
    let calibration = calibrating.then(|| calibrate::estimate(&measured));
    Outcome {
        report: judge(plan, &shared, tally),
        calibration,
    }
}

/// Match retrievals against acknowledgements and build the report.
fn judge(plan: &Plan, shared: &Shared<'_>, t: Tally) -> Report {
    let n = t.next_id as usize;
    let mut acked = vec![false; n];
    for &id in &t.acked_ids {
        if let Some(a) = acked.get_mut(id as usize) {
            *a = true;
        }
    }
    let mut seen = vec![0u8; n];
    let mut others = HashSet::new();
    let (mut duplicate, mut other_run, mut unacked) = (0u64, 0u64, 0u64);
    let ours = |id: &LoadId| id.run == shared.run_id && (id.id as usize) < n;
    for (id, intact) in t
        .intact
        .iter()
        .map(|i| (i, true))
        .chain(t.corrupt_ids.iter().map(|i| (i, false)))
    {
        if ours(id) {
            let s = &mut seen[id.id as usize];
            *s = s.saturating_add(1);
            if *s > 1 {
                duplicate += 1;
            } else if intact && !acked[id.id as usize] {
                unacked += 1;
            }
        } else {
            if !others.insert(*id) {
                duplicate += 1;
            }
            if intact {
                other_run += 1;
            }
        }
    }
    let checks_missing = matches!(plan.mode, Mode::SendThenDrain | Mode::Mixed);
    let missing_ids: Vec<u64> = if checks_missing {
        (0..n)
            .filter(|&i| acked[i] && seen[i] == 0)
            .map(|i| i as u64)
            .collect()
    } else {
        Vec::new()
    };
    let fmt = |id: u64| format!("{:016x}-{id}", shared.run_id);
    Report {
        mode: plan.mode,
        run_id: format!("{:016x}", shared.run_id),
        sessions: if plan.mode.sends() { plan.sessions } else { 0 },
        pop_sessions: if plan.mode.drains() {
            plan.pop_sessions
        } else {
            0
        },
        size: plan.size.to_string(),
        rate_msgs_per_s: plan.rate_msgs_per_s,
        smtp: t.smtp_all.stats(),
        pop: t.pop_all.stats(),
        phases: t.phases,
        sent: t.sent,
        acknowledged: t.acknowledged,
        temp_failed: t.temp_failed,
        perm_failed: t.perm_failed,
        smtp_errors: t.smtp_errors,
        smtp_connect_failures: t.connect_failures,
        late: t.late,
        retrieved: t.retrieved,
        corrupt: t.corrupt,
        missing: missing_ids.len() as u64,
        duplicate,
        unmarked: t.unmarked,
        other_run,
        retrieved_unacknowledged: unacked,
        size_mismatch: t.size_mismatch,
        logins: t.logins,
        pop_errors: t.pop_errors,
        errors: t.errors,
        corrupt_ids: t
            .corrupt_ids
            .iter()
            .take(IDS_SHOWN_MAX)
            .map(|i| format!("{:016x}-{}", i.run, i.id))
            .collect(),
        missing_ids: missing_ids
            .iter()
            .take(IDS_SHOWN_MAX)
            .map(|&i| fmt(i))
            .collect(),
    }
}
