//! `ramole zoo build`: one LoRA per suite task, trained with one documented configuration and
//! registered in the zoo's pool under the task's name with the task's samples.

use std::path::PathBuf;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use ramole_core::backend::{self, Selected, device};
use ramole_mole::peft::AdapterDtype;
use ramole_research::zoo::{self, ZooConfig, ZooEvent};

/// Arguments of `ramole zoo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// `ramole zoo` actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Train the missing or outdated LoRAs and register them in the zoo's pool (resumable).
    Build(BuildArgs),
}

/// Arguments of `ramole zoo build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The zoo's folder (its pool is `<out>/pool`) [default: the zoo shipped with the project].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The suite folder written by `ramole tasks build` [default: `$RAMOLE_HOME/tasks`].
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// Only these tasks (comma-separated) [default: all 24].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The retriever's sentence encoder for the pool's embeddings [default: the trained retriever (all-MiniLM-L6-v2 +
    /// the project's LoRA); `base`: the untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or
    /// an encoder adapter from `ramole train-retriever`].
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Optimisation steps per LoRA (1–100,000) [default: 150, the documented zoo configuration].
    #[arg(long, value_parser = super::args::usize_in(1, 100_000))]
    pub steps: Option<usize>,
    /// Store the factors in f32 instead of f16.
    #[arg(long)]
    pub f32: bool,
}

/// The zoo shipped with the project (`zoo/` of the repository).
pub fn shipped_zoo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../zoo")
}

/// Runs `ramole zoo`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Action::Build(args) = args.action;
    let out = args.out.unwrap_or_else(shipped_zoo);
    let suite = super::tasks::open(args.tasks.as_deref())?;
    let mut cfg = ZooConfig::default();
    if let Some(steps) = args.steps {
        cfg.train.length = ramole_mole::train::TrainLength::Steps(steps);
    }
    if args.f32 {
        cfg.dtype = AdapterDtype::F32;
    }
    if !args.only.is_empty() {
        cfg.tasks = Some(args.only);
    }
    let model = super::engine::model_path(args.model.clone())?;
    cfg.base_name = Some(super::engine::base_model_name(args.model.as_deref(), &model));
    let (_, encoder) = super::engine::load_encoder::<Selected>(args.encoder.as_deref())?;
    let n_tasks = cfg.tasks.as_ref().map_or(suite.meta().tasks.len(), Vec::len);
    eprintln!(
        "zoo in {}: {n_tasks} task(s), rank {} alpha {} on {}, {:?}, batch {}, lr {}, seed {}, backend {}",
        out.display(),
        cfg.train.rank,
        cfg.train.alpha,
        cfg.train.targets.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        cfg.train.length,
        cfg.train.batch_size,
        cfg.train.lr,
        cfg.train.seed,
        backend::NAME
    );
    let bars = MultiProgress::new();
    let overall = bars.add(ProgressBar::new(n_tasks as u64));
    overall.set_style(
        ProgressStyle::with_template("zoo  {bar:30} {pos}/{len} tasks [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let task_bar = bars.add(ProgressBar::new(0));
    task_bar.set_style(
        ProgressStyle::with_template("task {bar:30} {pos}/{len} steps [{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    // Progress bars are hidden when stderr is not a terminal (a log file): progress is printed as lines there.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = zoo::build_zoo(&suite, &model, &out, &cfg, &encoder, &device(), &mut |event| match event {
        ZooEvent::Task { name, steps, index, total } => {
            overall.set_message(name.to_string());
            task_bar.reset();
            task_bar.set_length(steps as u64);
            if !terminal && steps > 0 {
                eprintln!("[{index}/{total}] {name}: {steps} steps ({:.0} s so far)", start.elapsed().as_secs_f64());
            }
        }
        ZooEvent::Step(s) => {
            task_bar.set_position(s.step as u64);
            task_bar.set_message(format!("loss {:.3} | {:.0} tok/s", s.loss, s.tokens_per_sec));
            if !terminal && s.step % 25 == 0 {
                eprintln!("  step {}/{}: loss {:.3}, {:.0} tok/s", s.step, s.steps, s.loss, s.tokens_per_sec);
            }
        }
        ZooEvent::Done { name, trained } => {
            overall.inc(1);
            let line = match trained {
                Some(r) => {
                    let (first, last) = r.loss_ends(10.min(r.steps / 2));
                    format!(
                        "{name}: trained in {:.0} s ({:.0} tok/s), loss {first:.3} → {last:.3}",
                        r.seconds,
                        r.tokens_per_sec()
                    )
                }
                None => format!("{name}: up to date"),
            };
            if terminal {
                let _ = bars.println(line);
            } else {
                eprintln!("{line}");
            }
        }
    })?;
    overall.finish_and_clear();
    task_bar.finish_and_clear();
    eprintln!(
        "{} trained, {} up to date, in {:.0} s; pool: {}",
        report.trained.len(),
        report.up_to_date.len(),
        start.elapsed().as_secs_f64(),
        report.pool.display()
    );
    Ok(())
}
