//! `ramole eval-retrieval`: top-1 / top-3 retrieval accuracy on the task suite, IID and OOD.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use ramole_core::backend::{self, Selected};
use ramole_research::retrieval_eval::{self as eval, EvalConfig, EvalReport};
use ramole_research::tasks::Suite;
use ramole_retriever::SentenceEncoder;

/// The suite and the encoder, shared by `eval-retrieval` and `train-retriever`.
#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// The suite folder written by `ramole tasks build` [default: `$RAMOLE_HOME/tasks`].
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// The sentence encoder [default: the trained retriever (all-MiniLM-L6-v2 + the project's LoRA); `base`: the
    /// untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder adapter from `ramole
    /// train-retriever`].
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// What [`SuiteArgs::load`] reads: the suite, the encoder and its folder.
pub struct Loaded<B: Backend> {
    /// The suite.
    pub suite: Suite,
    /// The encoder folder.
    pub model_dir: PathBuf,
    /// The encoder.
    pub encoder: SentenceEncoder<B>,
}

impl SuiteArgs {
    /// Reads the suite (default folder unless `--tasks`) and loads the encoder (cached MiniLM unless
    /// `--model`).
    pub fn load<B: Backend>(&self) -> anyhow::Result<Loaded<B>> {
        let suite = super::tasks::open(self.tasks.as_deref())?;
        let (model_dir, encoder) = super::engine::load_encoder(self.model.as_deref())?;
        Ok(Loaded { suite, model_dir, encoder })
    }
}

/// Arguments of `ramole eval-retrieval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The suite and the encoder.
    #[command(flatten)]
    pub input: SuiteArgs,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Test inputs evaluated per task (the first ones of its `test.jsonl`, a seeded random subset;
    /// 1 to 10000).
    #[arg(long, default_value_t = eval::DEFAULT_PER_TASK, value_parser = super::args::usize_in(1, 10_000))]
    pub per_task: usize,
    /// Texts embedded at a time (1 to 1024).
    #[arg(long, default_value_t = eval::DEFAULT_BATCH_SIZE, value_parser = super::args::usize_in(1, 1024))]
    pub batch_size: usize,
    /// A report written earlier with `--json` (e.g. of the base encoder): also print a before/after table
    /// of the averages (held-out tasks, trained-on tasks, all).
    #[arg(long)]
    pub before: Option<PathBuf>,
    /// Do not also evaluate the untrained all-MiniLM-L6-v2 (`--model base`) for the side-by-side table
    /// that is printed otherwise when the encoder is another one and no `--before` is given.
    #[arg(long)]
    pub no_baseline: bool,
    /// Instruction prepended to samples and inputs before embedding.
    #[arg(long, default_value = ramole_retriever::DEFAULT_INSTRUCTION)]
    pub instruction: String,
}

/// Runs `ramole eval-retrieval`: prints the markdown table and a timing line; writes `--json`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    // `--json` must not replace an input (`--before`, a file of the suite or of the encoder).
    if let Some(json) = &args.json {
        let mut inputs: Vec<&std::path::Path> = Vec::new();
        inputs.extend(args.before.as_deref());
        inputs.extend(args.input.tasks.as_deref());
        inputs.extend(args.input.model.as_deref());
        super::output::check("--json", json, &inputs)?;
    }
    // Read first: a bad `--before` fails before minutes of embedding.
    let before: Option<(PathBuf, EvalReport)> = match args.before {
        Some(path) => {
            let text = ramole_core::fs::read_text(&path, ramole_core::fs::MAX_TEXT_BYTES)
                .with_context(|| format!("reading {}", path.display()))?;
            let report = serde_json::from_str(&text)
                .with_context(|| format!("{}: not an eval-retrieval report", path.display()))?;
            Some((path, report))
        }
        None => None,
    };
    let Loaded { suite, model_dir: model, encoder } = args.input.load::<Selected>()?;
    let dir = suite.dir().to_path_buf();
    if let Some(json) = &args.json {
        super::output::check("--json", json, &[&dir, &model])?;
    }
    let cfg = EvalConfig { instruction: args.instruction, per_task: args.per_task, batch_size: args.batch_size };
    let is_base = args.input.model.as_deref() == Some(std::path::Path::new(super::engine::BASE_ENCODER));
    let before = match before {
        None if !(args.no_baseline || is_base) => {
            eprintln!(
                "evaluating the untrained all-MiniLM-L6-v2 too, for the side-by-side table (--no-baseline skips it)"
            );
            let (_, base) =
                super::engine::load_encoder::<Selected>(Some(std::path::Path::new(super::engine::BASE_ENCODER)))?;
            let report = eval::evaluate(&suite, &base, &cfg).context("evaluating retrieval with the base encoder")?;
            Some((PathBuf::from("all-MiniLM-L6-v2 (`--model base`)"), report))
        }
        b => b,
    };
    let report = eval::evaluate(&suite, &encoder, &cfg).context("evaluating retrieval")?;
    print!("{}", report.to_markdown());
    println!(
        "\nencoder {}, suite {}, {} LoRAs, ≤ {} test inputs per task, backend {}: embedding {:.1} s, total {:.1} s",
        match &args.input.model {
            None => "the default trained retriever (all-MiniLM-L6-v2 + the shipped LoRA)".to_string(),
            Some(p) => p.display().to_string(),
        },
        dir.display(),
        report.pool_size,
        cfg.per_task,
        backend::NAME,
        report.embed_seconds,
        start.elapsed().as_secs_f64()
    );
    if let Some((path, before)) = &before {
        println!("\nbefore: {} → after: this encoder\n", path.display());
        print!("{}", report.comparison_markdown(before));
    }
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report)?;
        ramole_core::fs::write_atomic(&path, (text + "\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
