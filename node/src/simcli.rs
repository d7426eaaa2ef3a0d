//! `porcupine sim`: the cluster simulator behind the CLI (flags, files, output).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

/// Placement policy flag.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Affinity, spread, least loaded (the node's default).
    Porcupine,
    /// Random live nodes.
    Random,
    /// The user's manager and its successors only.
    Static,
}

/// `porcupine sim run`: one experiment.
#[derive(Debug, Args)]
pub struct SimRunArgs {
    /// Nodes.
    #[arg(long, default_value_t = 10)]
    pub nodes: u64,
    /// Users u0..u{N-1}.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Messages offered per second (Poisson).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Simulated time (e.g. 30s, 10m, 1h).
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// The seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Zipf exponent of user popularity (0 = uniform).
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    /// Message sizes: N, fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "lognormal:4000,1")]
    pub size: String,
    /// POP3 sessions per message offered.
    #[arg(long, default_value_t = 0.1)]
    pub pop_per_msg: f64,
    /// Copies per message.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Nodes a user's mail may spread over.
    #[arg(long, default_value_t = 2)]
    pub spread: usize,
    /// Placement policy.
    #[arg(long, value_enum, default_value_t = PolicyArg::Porcupine)]
    pub policy: PolicyArg,
    /// A fault, e.g. "kill 3 at 10s" (repeatable; see `sim::fault`).
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Run the membership protocol even without faults.
    #[arg(long)]
    pub membership: bool,
    /// Hardware model as JSON (service times; missing keys keep their defaults).
    #[arg(long)]
    pub calibrate: Option<PathBuf>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl SimRunArgs {
    /// The experiment these flags describe.
    pub fn config(&self) -> anyhow::Result<sim::SimConfig> {
        let duration_ms = sim::fault::parse_duration_ms(&self.duration)
            .with_context(|| format!("--duration {:?}: want e.g. 30s, 10m, 1h", self.duration))?;
        let size = sim::SizeDist::parse(&self.size).map_err(anyhow::Error::msg)?;
        let faults = self
            .faults
            .iter()
            .map(|f| sim::Fault::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let model = match &self.calibrate {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {} as a model", path.display()))?
            }
            None => sim::Model::default(),
        };
        Ok(sim::SimConfig {
            nodes: self.nodes,
            users: self.users,
            rate_msgs_per_s: self.rate,
            duration_s: duration_ms as f64 / 1e3,
            seed: self.seed,
            zipf: self.zipf,
            size,
            pop_per_msg: self.pop_per_msg,
            replicas: self.replicas,
            spread: self.spread,
            policy: match self.policy {
                PolicyArg::Porcupine => sim::Policy::Porcupine,
                PolicyArg::Random => sim::Policy::Random,
                PolicyArg::Static => sim::Policy::Static,
            },
            model,
            faults,
            membership: self.membership,
            ..sim::SimConfig::default()
        })
    }
}

/// Run one experiment: table on stdout, JSON to `--json`.
pub fn run(args: &SimRunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = -1i64;
    let mut progress = |done: f64| {
        let pct = (done * 100.0) as i64;
        if tty && pct / 10 != last / 10 {
            eprint!("\rsimulating: {pct:>3} %");
            last = pct;
        }
    };
    let report = sim::run(&config, &mut progress)?;
    if tty {
        eprintln!("\rsimulating: done   ");
    }
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
