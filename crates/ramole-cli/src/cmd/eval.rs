//! `ramole eval`: the paper's comparison on the suite's test inputs (base, perfect selection,
//! selection, mixture, fusion; IID and OOD), as a markdown table and optionally JSON records.

use std::path::PathBuf;

use anyhow::Context;
use ramole_core::backend;
use ramole_research::comparison::{self, ComparisonConfig};

/// Arguments of `ramole eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pool, model, encoder.
    #[command(flatten)]
    pub pool: super::run::PoolArgs,
    /// A gate: adds its rows (`gate`, IID and OOD) to the comparison.
    #[command(flatten)]
    pub gate: super::run::GateArgs,
    /// The suite folder written by `ramole tasks build` [default: `$RAMOLE_HOME/tasks`].
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// Only these tasks (comma-separated) [default: every task of the suite].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Test inputs per task, drawn with --seed (1–10,000).
    #[arg(long, default_value_t = 20, value_parser = super::args::usize_in(1, 10_000))]
    pub per_task: usize,
    /// Seed of the draws and of the mixing of tasks into batches.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Routing of mixture and fusion (the strategy itself is ignored: every one is run).
    #[command(flatten)]
    pub route: super::run::RouteArgs,
    /// Inputs per heterogeneous batch (1–256).
    #[arg(long, default_value_t = 16, value_parser = super::args::usize_in(1, 256))]
    pub batch_size: usize,
    /// Write the records as JSON: `{"records": [{"strategy", "setting", "task", "domain", "metric",
    /// "value", "n"}]}`.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `ramole eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    if let Some(json) = &args.json {
        let mut inputs: Vec<&std::path::Path> = Vec::new();
        inputs.extend(args.tasks.as_deref());
        inputs.extend(args.pool.pool.as_deref());
        super::output::check("--json", json, &inputs)?;
    }
    let suite = super::tasks::open(args.tasks.as_deref())?;
    let ramole = super::run::load(&args.pool, args.gate.gate.as_deref())?;
    let route = args.route.config();
    let mut methods = ComparisonConfig::default().methods;
    if args.gate.gate.is_some() {
        methods.push(comparison::Method::Routed(ramole_pipeline::Strategy::Gate));
    }
    let cfg = ComparisonConfig {
        per_task: args.per_task,
        seed: args.seed,
        top_k: route.top_k,
        weighting: route.weighting,
        arrow: route.arrow,
        batch_size: args.batch_size,
        tasks: (!args.only.is_empty()).then(|| args.only.clone()),
        methods,
    };
    let records = comparison::compare(&ramole, &suite, &cfg, &mut |r| {
        eprintln!(
            "[{}/{}] {} {}: {} inputs ({:.0} s so far)",
            r.index,
            r.total,
            r.method.name(),
            r.setting.name(),
            r.inputs,
            start.elapsed().as_secs_f64()
        );
    })?;
    println!("{}", comparison::to_markdown(&records));
    if let Some(json) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "records": records }))? + "\n";
        ramole_core::fs::write_atomic(json, text.as_bytes()).with_context(|| format!("writing {}", json.display()))?;
    }
    eprintln!(
        "{} records in {:.0} s (per task {}, top-k {}, batch {}, backend {})",
        records.len(),
        start.elapsed().as_secs_f64(),
        args.per_task,
        route.top_k,
        args.batch_size,
        backend::NAME
    );
    Ok(())
}
