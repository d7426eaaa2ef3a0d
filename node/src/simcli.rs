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
    /// Closed loop: this many SMTP clients, each sending its next message when the
    /// previous one is answered (`--rate` is then unused); 0: open loop at `--rate`.
    #[arg(long, default_value_t = 0)]
    pub sessions: u32,
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
    /// Nodes a user's mail may spread over (the node's default).
    #[arg(long, default_value_t = 4)]
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
    /// Seconds between repair passes (the node's `repair_interval_secs`; passes run
    /// while membership does).
    #[arg(long, default_value_t = 30.0)]
    pub repair_interval_secs: f64,
    /// Hardware model as JSON (service times; missing keys keep their defaults).
    #[arg(long)]
    pub calibrate: Option<PathBuf>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG plots (throughput over time, load spread) into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
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
            sessions: self.sessions,
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
            repair_interval_s: self.repair_interval_secs,
            ..sim::SimConfig::default()
        })
    }
}

/// Run this very command again with glibc's malloc asked for transparent huge pages
/// (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, read only at process start), unless
/// `GLIBC_TUNABLES` is set already. At 10,000 nodes the simulator touches hundreds
/// of megabytes of records at random, so with 4 KiB pages nearly every touch also
/// misses the TLB; huge pages took about a tenth off a `ten-billion` slice. Returns
/// (and the run goes on with small pages) only if the program cannot be run again.
pub fn reexec_with_huge_pages() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        .exec();
    eprintln!("porcupine sim: running on without huge pages ({err})");
}

/// Run one experiment: table on stdout, JSON to `--json`, plots to `--plots`.
pub fn run(args: &SimRunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let pb = bar(1000, "simulating");
    let mut progress = |done: f64| pb.set_position((done * 1000.0) as u64);
    let report = sim::run(&config, &mut progress)?;
    pb.finish_and_clear();
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        use sim::plot::{Series, line_chart};
        let t = |f: &dyn Fn(&sim::report::Sample) -> f64| {
            report
                .timeline
                .iter()
                .map(|s| (s.t_s, f(s)))
                .collect::<Vec<_>>()
        };
        let plots = vec![
            (
                "throughput.svg".to_string(),
                line_chart(
                    "Messages per second",
                    "time s",
                    "msgs/s",
                    &[
                        Series {
                            name: "acknowledged".into(),
                            points: t(&|s| s.acked_per_s),
                        },
                        Series {
                            name: "4xx".into(),
                            points: t(&|s| s.temp_per_s),
                        },
                    ],
                    false,
                ),
            ),
            (
                "load-spread.svg".to_string(),
                line_chart(
                    "Busiest node's new copies over the mean",
                    "time s",
                    "max/mean",
                    &[Series {
                        name: "load max/mean".into(),
                        points: t(&|s| s.load_max_over_mean),
                    }],
                    false,
                ),
            ),
        ];
        write_plots(dir, &plots)?;
    }
    Ok(())
}

/// `porcupine sim scenario`: a named experiment.
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// scaling, skew, hetero, failover, billion or ten-billion.
    pub name: String,
    /// The short form (seconds, for CI).
    #[arg(long)]
    pub quick: bool,
    /// The seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG plots into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

/// `porcupine sim vopr`: random fault schedules with invariant checks.
#[derive(Debug, Args)]
pub struct VoprArgs {
    /// How many seeds.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed (seeds are first..first+seeds).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Replay exactly this seed (prints its schedule and every figure).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Largest cluster a seed may draw (at least 3).
    #[arg(long, default_value_t = 50)]
    pub nodes_max: u64,
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>28} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn write_plots(dir: &std::path::Path, plots: &[(String, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, svg) in plots {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// Run a named scenario: table on stdout, JSON and plots on request.
pub fn scenario(args: &ScenarioArgs) -> anyhow::Result<()> {
    let pb = bar(1000, &args.name);
    let mut progress = |what: &str, done: f64| {
        pb.set_message(what.to_string());
        pb.set_position((done * 1000.0) as u64);
    };
    let out = sim::scenario::run(&args.name, args.quick, args.seed, &mut progress)?;
    pb.finish_and_clear();
    println!(
        "scenario {}{}",
        out.name,
        if args.quick { " (quick)" } else { "" }
    );
    print!("{}", out.table);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&out.json)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        write_plots(dir, &out.plots)?;
    }
    Ok(())
}

/// Run seeds of random fault schedules; fails listing every seed that broke an
/// invariant (replay one with `--seed S`).
pub fn vopr(args: &VoprArgs) -> anyhow::Result<()> {
    if let Some(seed) = args.seed {
        let o = sim::vopr::run_seed(seed, args.nodes_max)?;
        println!("seed {seed}: {} nodes, faults:", o.config.nodes);
        for f in &o.config.faults {
            println!("  {:>7.1} s  {:?}", f.at_ms as f64 / 1e3, f.kind);
        }
        print!("{}", o.report.table());
        for v in &o.report.violations {
            println!("VIOLATION: {v}");
        }
        anyhow::ensure!(
            o.report.violations.is_empty(),
            "seed {seed} broke {} invariants",
            o.report.violations.len()
        );
        return Ok(());
    }
    let pb = bar(args.seeds, "vopr");
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for seed in args.first..args.first + args.seeds {
        let o = sim::vopr::run_seed(seed, args.nodes_max)?;
        if let Some(first) = o.report.violations.first() {
            // Printed whether or not the bar is drawn (a hidden bar drops println).
            pb.suspend(|| println!("seed {seed} ({} nodes): {first}", o.config.nodes));
            failed.push(seed);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "vopr: {} seeds from {} in {:.1} s, {} failed{}",
        args.seeds,
        args.first,
        started.elapsed().as_secs_f64(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                ": {failed:?} (replay: porcupine sim vopr --nodes-max {} --seed S)",
                args.nodes_max
            )
        }
    );
    anyhow::ensure!(
        failed.is_empty(),
        "{} seeds broke an invariant",
        failed.len()
    );
    Ok(())
}
