//! The figures of a run: per protocol and phase messages/s and latency percentiles
//! (HDR histograms), the integrity counts, the table on stdout and the JSON file.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::Mode;
use crate::error::LoadError;

/// A latency histogram in microseconds: 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a microsecond histogram (all 0 when empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Figures of one protocol in one phase (or summed over phases).
#[derive(Debug, Clone, Serialize)]
pub struct ProtoStats {
    /// Messages acknowledged (SMTP) or retrieved (POP3).
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Wall time of the phase(s), seconds.
    pub elapsed_s: f64,
    /// `messages / elapsed_s`.
    pub msgs_per_s: f64,
    /// SMTP: MAIL FROM written → `250` after DATA. POP3: RETR written → last line.
    pub latency_ms: Latency,
}

/// Accumulates one protocol's figures.
#[derive(Debug, Clone)]
pub struct ProtoAcc {
    /// Messages.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
    /// Seconds.
    pub elapsed_s: f64,
    /// Microseconds.
    pub latency_us: Histogram<u64>,
}

impl Default for ProtoAcc {
    fn default() -> Self {
        ProtoAcc {
            messages: 0,
            bytes: 0,
            elapsed_s: 0.0,
            latency_us: new_histogram(),
        }
    }
}

impl ProtoAcc {
    /// Add another accumulator (its time adds too: phases run one after another).
    pub fn add(&mut self, other: &ProtoAcc) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.elapsed_s += other.elapsed_s;
        // Same bounds on both sides: cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// The summary.
    pub fn stats(&self) -> ProtoStats {
        ProtoStats {
            messages: self.messages,
            bytes: self.bytes,
            elapsed_s: round3(self.elapsed_s),
            msgs_per_s: if self.elapsed_s > 0.0 {
                round3(self.messages as f64 / self.elapsed_s)
            } else {
                0.0
            },
            latency_ms: Latency::of(&self.latency_us),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// `probe`, `send`, `mixed`, `drain`.
    pub phase: String,
    /// SMTP figures if the phase sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<ProtoStats>,
    /// POP3 figures if the phase retrieved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pop: Option<ProtoStats>,
}

/// Everything a run measured. Serialized as the `--json` file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub mode: Mode,
    /// This run's id (hex, as in the load headers).
    pub run_id: String,
    /// SMTP sessions.
    pub sessions: usize,
    /// POP3 sessions.
    pub pop_sessions: usize,
    /// The size distribution.
    pub size: String,
    /// Open-loop rate, if any.
    pub rate_msgs_per_s: Option<f64>,
    /// SMTP over every phase that sent.
    pub smtp: ProtoStats,
    /// POP3 over every phase that retrieved.
    pub pop: ProtoStats,
    /// Each phase.
    pub phases: Vec<PhaseReport>,
    /// SMTP transactions started.
    pub sent: u64,
    /// `250` after DATA.
    pub acknowledged: u64,
    /// `4xx` answers (a transaction ended by `421` included).
    pub temp_failed: u64,
    /// `5xx` answers.
    pub perm_failed: u64,
    /// Transactions broken by a socket error, timeout or protocol violation.
    pub smtp_errors: u64,
    /// Failed SMTP connection attempts.
    pub smtp_connect_failures: u64,
    /// Open loop: transactions started > 10 ms after due (the sessions could not keep up).
    pub late: u64,
    /// Messages retrieved over POP3.
    pub retrieved: u64,
    /// Retrieved messages whose body does not match their load header.
    pub corrupt: u64,
    /// Acknowledged messages never retrieved (send-then-drain and mixed only).
    pub missing: u64,
    /// Retrievals of a message already retrieved.
    pub duplicate: u64,
    /// Retrieved messages with no load header.
    pub unmarked: u64,
    /// Retrieved intact messages of another run.
    pub other_run: u64,
    /// Retrieved intact messages of this run that had not been acknowledged.
    pub retrieved_unacknowledged: u64,
    /// RETR sizes that differ from LIST.
    pub size_mismatch: u64,
    /// POP3 logins.
    pub logins: u64,
    /// POP3 sessions broken (socket, timeout, refusal, protocol).
    pub pop_errors: u64,
    /// The first few distinct failure texts.
    pub errors: Vec<String>,
    /// Some corrupt message ids (`run-id`).
    pub corrupt_ids: Vec<String>,
    /// Some missing message ids.
    pub missing_ids: Vec<String>,
}

impl Report {
    /// The report as a table, for stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let rate = self.rate_msgs_per_s.map_or("closed loop".to_string(), |r| {
            format!("open loop {r} msgs/s")
        });
        let _ = writeln!(
            s,
            "porcupine load: mode {}, run {}, {} SMTP / {} POP3 sessions, size {}, {rate}",
            self.mode, self.run_id, self.sessions, self.pop_sessions, self.size
        );
        let _ = writeln!(
            s,
            "{:<10} {:<5} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "phase",
            "proto",
            "msgs",
            "secs",
            "msgs/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        let mut row = |phase: &str, proto: &str, p: &ProtoStats| {
            let l = &p.latency_ms;
            let _ = writeln!(
                s,
                "{phase:<10} {proto:<5} {:>9} {:>8.2} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
                p.messages, p.elapsed_s, p.msgs_per_s, l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        for ph in &self.phases {
            if let Some(p) = &ph.smtp {
                row(&ph.phase, "smtp", p);
            }
            if let Some(p) = &ph.pop {
                row(&ph.phase, "pop", p);
            }
        }
        if self.phases.len() > 1 {
            if self.mode.sends() {
                row("all", "smtp", &self.smtp);
            }
            if self.mode.drains() {
                row("all", "pop", &self.pop);
            }
        }
        let _ = writeln!(
            s,
            "smtp: sent {} acknowledged {} temp_failed {} perm_failed {} errors {} connect_failures {} late {}",
            self.sent,
            self.acknowledged,
            self.temp_failed,
            self.perm_failed,
            self.smtp_errors,
            self.smtp_connect_failures,
            self.late
        );
        let _ = writeln!(
            s,
            "pop:  retrieved {} corrupt {} missing {} duplicate {} unmarked {} other_run {} \
             unacknowledged {} size_mismatch {} logins {} errors {}",
            self.retrieved,
            self.corrupt,
            self.missing,
            self.duplicate,
            self.unmarked,
            self.other_run,
            self.retrieved_unacknowledged,
            self.size_mismatch,
            self.logins,
            self.pop_errors
        );
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        let _ = writeln!(
            s,
            "integrity: {}",
            match self.check() {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
        s
    }

    /// `Ok` unless a message was corrupt, missing or duplicated, nothing was
    /// acknowledged, or a drain could not finish.
    pub fn check(&self) -> Result<(), LoadError> {
        if self.corrupt > 0 || self.missing > 0 || self.duplicate > 0 {
            return Err(LoadError::Integrity {
                corrupt: self.corrupt,
                missing: self.missing,
                duplicate: self.duplicate,
                acknowledged: self.acknowledged,
                retrieved: self.retrieved,
            });
        }
        if self.mode.sends() && self.acknowledged == 0 {
            let why = self
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| "no transaction was started".into());
            return Err(LoadError::NothingAcknowledged(why));
        }
        if self.pop_errors > 0 {
            let why = self
                .errors
                .iter()
                .find(|e| e.starts_with("pop"))
                .cloned()
                .unwrap_or_default();
            return Err(LoadError::Incomplete(format!(
                "{} POP3 session(s) failed: {why}",
                self.pop_errors
            )));
        }
        Ok(())
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut smtp = ProtoAcc::default();
        for us in 1..=1000u64 {
            smtp.latency_us.record(us * 10).unwrap();
        }
        smtp.messages = 1000;
        smtp.elapsed_s = 2.0;
        let pop = ProtoAcc {
            messages: 1000,
            elapsed_s: 4.0,
            ..ProtoAcc::default()
        };
        Report {
            mode: Mode::SendThenDrain,
            run_id: "00ab".into(),
            sessions: 4,
            pop_sessions: 4,
            size: "fixed:4096".into(),
            rate_msgs_per_s: None,
            smtp: smtp.stats(),
            pop: pop.stats(),
            phases: vec![PhaseReport {
                phase: "send".into(),
                smtp: Some(smtp.stats()),
                pop: None,
            }],
            sent: 1000,
            acknowledged: 1000,
            temp_failed: 0,
            perm_failed: 0,
            smtp_errors: 0,
            smtp_connect_failures: 0,
            late: 0,
            retrieved: 1000,
            corrupt: 0,
            missing: 0,
            duplicate: 0,
            unmarked: 0,
            other_run: 0,
            retrieved_unacknowledged: 0,
            size_mismatch: 0,
            logins: 4,
            pop_errors: 0,
            errors: vec![],
            corrupt_ids: vec![],
            missing_ids: vec![],
        }
    }

    #[test]
    fn json_has_the_keys_later_checks_read() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        for path in [
            "/smtp/msgs_per_s",
            "/smtp/latency_ms/p50",
            "/smtp/latency_ms/p90",
            "/smtp/latency_ms/p99",
            "/smtp/latency_ms/p999",
            "/smtp/latency_ms/max",
            "/pop/msgs_per_s",
            "/pop/latency_ms/p99",
            "/sent",
            "/acknowledged",
            "/temp_failed",
            "/perm_failed",
            "/retrieved",
            "/corrupt",
            "/missing",
            "/duplicate",
        ] {
            assert!(
                v.pointer(path).is_some_and(|x| x.is_number()),
                "{path} missing"
            );
        }
        assert_eq!(v.pointer("/smtp/msgs_per_s").unwrap().as_f64(), Some(500.0));
        assert_eq!(v.pointer("/pop/msgs_per_s").unwrap().as_f64(), Some(250.0));
        let p50 = v.pointer("/smtp/latency_ms/p50").unwrap().as_f64().unwrap();
        assert!((p50 - 5.0).abs() < 0.01, "p50 {p50}");
        let max = v.pointer("/smtp/latency_ms/max").unwrap().as_f64().unwrap();
        assert!((max - 10.0).abs() < 0.01, "max {max}");
        assert_eq!(v.pointer("/mode").unwrap(), "send-then-drain");
    }

    #[test]
    fn check_fails_on_integrity_counts() {
        assert!(sample().check().is_ok());
        for f in [
            |r: &mut Report| r.corrupt = 1,
            |r: &mut Report| r.missing = 1,
            |r: &mut Report| r.duplicate = 1,
        ] {
            let mut r = sample();
            f(&mut r);
            assert!(matches!(r.check(), Err(LoadError::Integrity { .. })));
            assert!(r.table().contains("integrity: FAILED"));
        }
        let mut r = sample();
        r.acknowledged = 0;
        assert!(matches!(r.check(), Err(LoadError::NothingAcknowledged(_))));
    }

    #[test]
    fn empty_histogram_is_zeros() {
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }
}
