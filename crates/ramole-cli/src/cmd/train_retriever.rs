//! `ramole train-retriever`: contrastive fine-tuning of the retriever's encoder on the suite's training tasks.

use std::path::PathBuf;

use anyhow::Context;
use ramole_core::backend::{self, SelectedAutodiff};
use ramole_retriever::train::{self, Negatives, TrainConfig};

/// Arguments of `ramole train-retriever`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The suite, and the encoder to start from.
    #[command(flatten)]
    pub input: super::eval_retrieval::SuiteArgs,
    /// Where to write the trained encoder (a sentence-transformers folder, loadable by `--model`).
    #[arg(long)]
    pub out: PathBuf,
    /// Epochs (each draws fresh pairs).
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f64,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = TrainConfig::default().temperature)]
    pub temperature: f64,
    /// Pairs per optimisation step (in-batch negatives).
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Pairs drawn per training task and epoch.
    #[arg(long, default_value_t = TrainConfig::default().pairs_per_task)]
    pub pairs_per_task: usize,
    /// Tokens per text during training.
    #[arg(long, default_value_t = TrainConfig::default().max_seq_len)]
    pub max_seq_len: usize,
    /// Seed of the pair draws and batch order.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Instruction prepended to every text.
    #[arg(long, default_value = ramole_retriever::DEFAULT_INSTRUCTION)]
    pub instruction: String,
    /// In-batch negatives of a query: `other-domains` (tasks of another domain only) or `other-tasks`
    /// (every other task, LoraRetriever's setting).
    #[arg(long, default_value_t = TrainConfig::default().negatives)]
    pub negatives: Negatives,
}

/// Runs `ramole train-retriever`: prints one line per epoch, saves the encoder and `train_report.json`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let super::eval_retrieval::Loaded { suite, encoder, .. } = args.input.load::<SelectedAutodiff>()?;
    let cfg = TrainConfig {
        epochs: args.epochs,
        lr: args.lr,
        temperature: args.temperature,
        batch_size: args.batch_size,
        pairs_per_task: args.pairs_per_task,
        max_seq_len: args.max_seq_len,
        seed: args.seed,
        instruction: args.instruction,
        negatives: args.negatives,
    };
    let held_out: Vec<&str> = suite.meta().tasks.iter().filter(|t| t.held_out).map(|t| t.name.as_str()).collect();
    println!(
        "training on {} tasks, holding out {} ({}); negatives {}; backend {}",
        suite.meta().tasks.len() - held_out.len(),
        held_out.len(),
        held_out.join(", "),
        cfg.negatives,
        backend::NAME
    );
    let (trained, report) = train::train_retriever(&suite, encoder, &cfg, &mut |e| {
        println!(
            "epoch {}: {} pairs, {} steps, loss {:.4} (first {:.4}, last {:.4}), {:.1} s",
            e.epoch, e.pairs, e.steps, e.mean_loss, e.first_loss, e.last_loss, e.seconds
        );
    })
    .context("training the retriever")?;
    trained.save(&args.out).with_context(|| format!("saving the encoder to {}", args.out.display()))?;
    let report_path = args.out.join("train_report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!("saved to {} (evaluate with `ramole eval-retrieval --model {}`)", args.out.display(), args.out.display());
    Ok(())
}
