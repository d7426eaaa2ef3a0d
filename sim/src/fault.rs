//! Faults at given virtual times: `kill 17 at 10m`, `restart 17 at 20m`,
//! `pause 4 at 1m`, `resume 4 at 2m` (SIGSTOP / SIGCONT),
//! `slow 3 cpu 4 at 5m` (CPU ×4 slower), `slow 3 disk 2 at 5m`, `unslow 3 at 9m`,
//! `partition 1-5 at 10m` (nodes 1..=5 on one side), `heal at 12m`,
//! `remove 17 at 15m` (the operator's `porcupine node remove`: gone for good).

use serde::{Deserialize, Serialize};

use crate::SimError;

/// What happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// The process dies (its disk survives).
    Kill(u64),
    /// A killed node starts again (new incarnation, empty soft state).
    Restart(u64),
    /// The operator removes the node for good (`porcupine node remove`; killed first
    /// if it still runs): its copies no longer count, so repair may re-replicate.
    Remove(u64),
    /// The node's CPU (`cpu`) or disk (`disk`) becomes `factor` times slower.
    Slow {
        /// Which node.
        node: u64,
        /// `cpu` or `disk`.
        what: String,
        /// Service-time multiplier.
        factor: f64,
    },
    /// Back to normal speed.
    Unslow(u64),
    /// The process stops (SIGSTOP): it neither serves nor answers.
    Pause(u64),
    /// A paused process goes on.
    Resume(u64),
    /// Nodes `from..=to` can talk only among themselves.
    Partition(u64, u64),
    /// Every partition ends.
    Heal,
}

/// One fault and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Virtual time, milliseconds from the start.
    pub at_ms: u64,
    /// What.
    pub kind: FaultKind,
}

/// Parse a duration: `500ms`, `30s`, `10m`, `1h`, or bare seconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return None,
    };
    (ms.is_finite() && ms >= 0.0).then_some(ms as u64)
}

impl Fault {
    /// Parse one `--fault` text.
    pub fn parse(spec: &str) -> Result<Fault, SimError> {
        let err = |why: &str| SimError::Fault {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let words: Vec<&str> = spec.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "at")
            .ok_or_else(|| err("missing `at TIME`"))?;
        let at_ms = words
            .get(at + 1)
            .and_then(|w| parse_duration_ms(w))
            .ok_or_else(|| err("bad time after `at` (e.g. 10m, 30s, 500ms)"))?;
        if words.len() != at + 2 {
            return Err(err("nothing may follow the time"));
        }
        let args = &words[..at];
        let node = |i: usize| -> Result<u64, SimError> {
            args.get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| err("bad node id"))
        };
        let kind = match args.first().copied() {
            Some("kill") if args.len() == 2 => FaultKind::Kill(node(1)?),
            Some("restart") if args.len() == 2 => FaultKind::Restart(node(1)?),
            Some("remove") if args.len() == 2 => FaultKind::Remove(node(1)?),
            Some("unslow") if args.len() == 2 => FaultKind::Unslow(node(1)?),
            Some("pause") if args.len() == 2 => FaultKind::Pause(node(1)?),
            Some("resume") if args.len() == 2 => FaultKind::Resume(node(1)?),
            Some("slow") if args.len() == 4 => {
                let what = args[2].to_string();
                if what != "cpu" && what != "disk" {
                    return Err(err("slow what? `cpu` or `disk`"));
                }
                let factor: f64 = args[3]
                    .trim_start_matches('x')
                    .parse()
                    .map_err(|_| err("bad slow factor"))?;
                if !(factor >= 1.0 && factor.is_finite()) {
                    return Err(err("slow factor must be at least 1"));
                }
                FaultKind::Slow {
                    node: node(1)?,
                    what,
                    factor,
                }
            }
            Some("partition") if args.len() == 2 => {
                let (a, b) = args[1]
                    .split_once('-')
                    .ok_or_else(|| err("partition A-B"))?;
                let (a, b): (u64, u64) = (
                    a.parse().map_err(|_| err("bad node id"))?,
                    b.parse().map_err(|_| err("bad node id"))?,
                );
                if a > b {
                    return Err(err("partition A-B with A <= B"));
                }
                FaultKind::Partition(a, b)
            }
            Some("heal") if args.len() == 1 => FaultKind::Heal,
            _ => {
                return Err(err(
                    "want kill N | restart N | remove N | pause N | resume N | slow N cpu|disk K | unslow N | partition A-B | heal, then `at TIME`",
                ));
            }
        };
        Ok(Fault { at_ms, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_with_their_times() {
        assert_eq!(
            Fault::parse("kill 17 at 10m").unwrap(),
            Fault {
                at_ms: 600_000,
                kind: FaultKind::Kill(17)
            }
        );
        assert_eq!(
            Fault::parse("slow 3 disk x2.5 at 500ms").unwrap().kind,
            FaultKind::Slow {
                node: 3,
                what: "disk".into(),
                factor: 2.5
            }
        );
        assert_eq!(
            Fault::parse("partition 1-5 at 1h").unwrap(),
            Fault {
                at_ms: 3_600_000,
                kind: FaultKind::Partition(1, 5)
            }
        );
        assert_eq!(Fault::parse("heal at 30").unwrap().at_ms, 30_000);
        for bad in [
            "kill at 1m",
            "kill x at 1m",
            "kill 1",
            "slow 1 net 2 at 1s",
            "kill 1 at 1m extra",
            "heal at soon",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
    }
}
