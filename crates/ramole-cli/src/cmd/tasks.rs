//! `ramole tasks build`: extract the 24-task suite from the BIG-bench sdist.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ramole_assets::AssetCache;
use ramole_research::tasks::{self, SuiteConfig};

/// Arguments of `ramole tasks`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// `ramole tasks` actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Build the suite: per task `train.jsonl`, `test.jsonl`, `samples.jsonl`, and `suite.json`.
    Build(BuildArgs),
}

/// Arguments of `ramole tasks build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Output folder [default: `$RAMOLE_HOME/tasks`, else `~/.cache/ramole/tasks`].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The `bigbench-1.0.0.tar.gz` sdist [default: fetched and verified by the asset cache].
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Seed of the subsampling and of the train/test splits.
    #[arg(long, default_value_t = tasks::DEFAULT_SEED)]
    pub seed: u64,
    /// Examples kept per task (larger tasks are subsampled; 2 to 1000000).
    #[arg(long, default_value_t = tasks::DEFAULT_MAX_EXAMPLES, value_parser = super::args::usize_in(2, 1_000_000))]
    pub max_examples: usize,
    /// Fraction of a task's kept examples in its test split, in (0, 1).
    #[arg(long, default_value_t = tasks::DEFAULT_TEST_FRACTION, value_parser = super::args::open_fraction_f64)]
    pub test_fraction: f64,
    /// Sample inputs per task (the pool's samples), taken from the train split (1 to 10000).
    #[arg(long, default_value_t = tasks::DEFAULT_SAMPLES_PER_TASK, value_parser = super::args::usize_in(1, 10_000))]
    pub samples: usize,
}

/// The suite folder used when none is given: `<asset cache root>/tasks`.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    Ok(AssetCache::from_env()?.root().join("tasks"))
}

/// Runs `ramole tasks`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Build(a) => build(a),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let out = match args.out {
        Some(o) => o,
        None => default_dir()?,
    };
    let archive = match args.archive {
        Some(a) => a,
        None => AssetCache::from_env()?.bigbench_sdist().context("fetching the BIG-bench sdist")?,
    };
    let len = std::fs::metadata(&archive).with_context(|| format!("{}", archive.display()))?.len();
    let bar = ProgressBar::new(len).with_message("reading the BIG-bench archive");
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .context("progress template")?,
    );
    let cfg = SuiteConfig {
        seed: args.seed,
        max_examples: args.max_examples,
        test_fraction: args.test_fraction,
        samples_per_task: args.samples,
        ..SuiteConfig::default()
    };
    let start = std::time::Instant::now();
    let meta = tasks::build_suite(&archive, &out, &cfg, &mut |n| bar.set_position(n))
        .with_context(|| format!("building the task suite from {}", archive.display()))?;
    bar.finish_and_clear();
    println!("| task | domain | held out | examples | unique | train | test | samples |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for t in &meta.tasks {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            t.domain,
            if t.held_out { "yes" } else { "" },
            t.examples,
            t.unique,
            t.train,
            t.test,
            t.samples
        );
    }
    println!(
        "{} tasks written to {} in {:.1} s (seed {}, source sha256 {})",
        meta.tasks.len(),
        out.display(),
        start.elapsed().as_secs_f64(),
        meta.seed,
        meta.source.sha256
    );
    Ok(())
}
