//! `ramole eval-retrieval`: top-1 / top-3 retrieval accuracy on the task suite, IID and OOD.

use std::path::PathBuf;

use anyhow::Context;
use ramole_core::backend::{self, Selected};
use ramole_retriever::SentenceEncoder;
use ramole_retriever::eval::{self, EvalConfig, EvalReport};
use ramole_retriever::tasks::Suite;

/// Arguments of `ramole eval-retrieval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The suite folder written by `ramole tasks build` [default: `$RAMOLE_HOME/tasks`].
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// A sentence-transformers folder (e.g. written by `ramole train-retriever`) [default: the cached
    /// all-MiniLM-L6-v2].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Test inputs evaluated per task (the first ones of its `test.jsonl`, a seeded random subset).
    #[arg(long, default_value_t = eval::DEFAULT_PER_TASK)]
    pub per_task: usize,
    /// Texts embedded at a time.
    #[arg(long, default_value_t = eval::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// A report written earlier with `--json` (e.g. of the base encoder): also print a before/after table
    /// of the averages (held-out tasks, trained-on tasks, all).
    #[arg(long)]
    pub before: Option<PathBuf>,
    /// Instruction prepended to samples and inputs before embedding.
    #[arg(long, default_value = ramole_retriever::DEFAULT_INSTRUCTION)]
    pub instruction: String,
}

/// The suite folder asked for, else the default one.
pub fn suite_dir(tasks: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match tasks {
        Some(t) => Ok(t),
        None => super::tasks::default_dir(),
    }
}

/// Runs `ramole eval-retrieval`: prints the markdown table and a timing line; writes `--json`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    // Read first: a bad `--before` fails before minutes of embedding.
    let before: Option<(PathBuf, EvalReport)> = match args.before {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let report = serde_json::from_str(&text)
                .with_context(|| format!("{}: not an eval-retrieval report", path.display()))?;
            Some((path, report))
        }
        None => None,
    };
    let dir = suite_dir(args.tasks)?;
    let suite = Suite::load(&dir).context("reading the suite (build it with `ramole tasks build`)")?;
    let model = super::engine::encoder_path(args.model)?;
    let encoder = SentenceEncoder::<Selected>::load(&model, &backend::device())
        .with_context(|| format!("loading the encoder from {}", model.display()))?;
    let cfg = EvalConfig { instruction: args.instruction, per_task: args.per_task, batch_size: args.batch_size };
    let report = eval::evaluate(&suite, &encoder, &cfg).context("evaluating retrieval")?;
    print!("{}", report.to_markdown());
    println!(
        "\nmodel {}, suite {}, {} LoRAs, ≤ {} test inputs per task, backend {}: embedding {:.1} s, total {:.1} s",
        model.display(),
        dir.display(),
        report.pool_size,
        cfg.per_task,
        backend::NAME,
        report.embed_seconds,
        start.elapsed().as_secs_f64()
    );
    if let Some((path, before)) = &before {
        println!("\nbefore ({}) → after (this run):\n", path.display());
        print!("{}", report.comparison_markdown(before));
    }
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
