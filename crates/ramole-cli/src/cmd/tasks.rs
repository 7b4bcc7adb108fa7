//! `ramole tasks build` / `ramole tasks list`: the task suite, from the data vendored in ramole-research.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ramole_assets::AssetCache;
use ramole_research::tasks::{self, Suite, SuiteConfig, SuiteMeta};
use serde::Serialize;

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
    /// List the suite's tasks: name, domain, held-out flag, metric, source and split sizes.
    List(ListArgs),
}

/// How the splits are drawn (`build` and `list`).
#[derive(Debug, clap::Args)]
pub struct SplitArgs {
    /// Seed of the subsampling, the train/test splits and the choice of phrasings.
    #[arg(long, default_value_t = tasks::DEFAULT_SEED)]
    pub seed: u64,
    /// Examples kept per task, train and test together (larger tasks are subsampled; 2 to 1000000).
    #[arg(long, default_value_t = tasks::DEFAULT_MAX_EXAMPLES, value_parser = super::args::usize_in(2, 1_000_000))]
    pub max_examples: usize,
    /// Fraction of a task's kept examples in its test split, in (0, 1).
    #[arg(long, default_value_t = tasks::DEFAULT_TEST_FRACTION, value_parser = super::args::open_fraction_f64)]
    pub test_fraction: f64,
    /// Sample inputs per task (the pool's samples), taken from the train split (1 to 10000).
    #[arg(long, default_value_t = tasks::DEFAULT_SAMPLES_PER_TASK, value_parser = super::args::usize_in(1, 10_000))]
    pub samples: usize,
}

impl SplitArgs {
    fn config(&self) -> SuiteConfig {
        SuiteConfig {
            seed: self.seed,
            max_examples: self.max_examples,
            test_fraction: self.test_fraction,
            samples_per_task: self.samples,
            ..SuiteConfig::default()
        }
    }
}

/// Arguments of `ramole tasks build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Output folder [default: `$RAMOLE_HOME/tasks`, else `~/.cache/ramole/tasks`].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How the splits are drawn.
    #[command(flatten)]
    pub split: SplitArgs,
}

/// Arguments of `ramole tasks list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON: `[{"name", "domain", "held_out", "metric", "source", "files", "train", "test", "samples"}]`.
    #[arg(long)]
    pub json: bool,
    /// How the splits are drawn.
    #[command(flatten)]
    pub split: SplitArgs,
}

/// The suite folder used when none is given: `<asset cache root>/tasks`.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    Ok(AssetCache::from_env()?.root().join("tasks"))
}

/// The suite a command reads: the one in `dir` when given (as it is), else the default suite in the default
/// folder, built there from the vendored data when it is missing or stale (offline, well under a second).
pub fn open(dir: Option<&Path>) -> anyhow::Result<Suite> {
    match dir {
        Some(d) => Suite::load(d).with_context(|| {
            format!("reading the suite in {} (build one with `ramole tasks build --out DIR`)", d.display())
        }),
        None => {
            let d = default_dir()?;
            Suite::open_or_build(&d, &SuiteConfig::default())
                .with_context(|| format!("building the default suite in {}", d.display()))
        }
    }
}

/// Runs `ramole tasks`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Build(a) => build(a),
        Action::List(a) => list(a),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let out = match args.out {
        Some(o) => o,
        None => default_dir()?,
    };
    let start = std::time::Instant::now();
    let meta = tasks::build_suite(&out, &args.split.config())
        .with_context(|| format!("building the task suite into {}", out.display()))?;
    print_table(&meta);
    println!(
        "{} tasks in {} domains written to {} in {:.2} s (seed {}, digest {})",
        meta.tasks.len(),
        meta.domains.len(),
        out.display(),
        start.elapsed().as_secs_f64(),
        meta.seed,
        meta.digest
    );
    Ok(())
}

/// One task as `ramole tasks list --json` prints it.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    name: &'a str,
    domain: &'a str,
    held_out: bool,
    metric: &'a str,
    source: &'a str,
    files: &'a str,
    train: usize,
    test: usize,
    samples: usize,
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let meta = tasks::plan_suite(&args.split.config()).context("drawing the task suite")?;
    if args.json {
        let listed: Vec<Listed<'_>> = meta
            .tasks
            .iter()
            .map(|t| Listed {
                name: &t.name,
                domain: t.domain.as_str(),
                held_out: t.held_out,
                metric: t.metric.as_str(),
                source: t.source.as_str(),
                files: &t.files,
                train: t.train,
                test: t.test,
                samples: t.samples,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        print_table(&meta);
        let held_out = meta.tasks.iter().filter(|t| t.held_out).count();
        println!(
            "{} tasks in {} domains, {held_out} held out of retriever and gate training",
            meta.tasks.len(),
            meta.domains.len()
        );
    }
    Ok(())
}

fn print_table(meta: &SuiteMeta) {
    println!("| task | domain | held out | metric | source | examples | unique | train | test | samples |");
    println!("|---|---|---|---|---|---:|---:|---:|---:|---:|");
    for t in &meta.tasks {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            t.domain,
            if t.held_out { "yes" } else { "" },
            t.metric,
            t.source,
            t.examples,
            t.unique,
            t.train,
            t.test,
            t.samples
        );
    }
}
