//! `ramole train-retriever`: contrastive fine-tuning of the retriever's encoder on the suite's training tasks.

use std::path::PathBuf;

use anyhow::Context;
use ramole_core::backend::{self, SelectedAutodiff};
use ramole_research::train_retriever::{self as train, Negatives, TrainConfig, Tuning};
use ramole_retriever::EncoderAdapter;

/// The default learning rate of `--tuning full`.
const FULL_LR: f64 = 2e-5;
/// The default learning rate of `--tuning lora`.
const LORA_LR: f64 = 2e-4;

/// Arguments of `ramole train-retriever`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The suite, and the encoder to start from.
    #[command(flatten)]
    pub input: super::eval_retrieval::SuiteArgs,
    /// Where to write the result, loadable by `--model` of every command: an encoder adapter folder
    /// (`--tuning lora`, ~1.3 MB at rank 8) or a whole sentence-transformers folder (`--tuning full`).
    /// Training starts from `--model` [default here: `base`, the untrained all-MiniLM-L6-v2].
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
    /// What training changes: `lora` (a LoRA on every linear layer, the base frozen; what the
    /// project's default retriever is) or `full` (every weight).
    #[arg(long, default_value = "lora", value_parser = ["lora", "full"])]
    pub tuning: String,
    /// LoRA rank (1 to 256).
    #[arg(long, default_value_t = 8, value_parser = super::args::usize_in(1, 256))]
    pub rank: usize,
    /// LoRA alpha (scale alpha / rank; a finite number > 0).
    #[arg(long, default_value_t = 16.0, value_parser = super::args::positive_f64)]
    pub alpha: f64,
    /// Epochs (each draws fresh pairs; 1 to 1000).
    #[arg(long, default_value_t = TrainConfig::default().epochs, value_parser = super::args::usize_in(1, 1000))]
    pub epochs: usize,
    /// Adam's learning rate (a finite number > 0) [default: 2e-5 for `--tuning full`, 2e-4 for `lora`].
    #[arg(long, value_parser = super::args::positive_f64)]
    pub lr: Option<f64>,
    /// InfoNCE temperature (a finite number > 0).
    #[arg(long, default_value_t = TrainConfig::default().temperature, value_parser = super::args::positive_f64)]
    pub temperature: f64,
    /// Pairs per optimisation step (in-batch negatives; 2 to 512, and `--batch-size` × `--max-seq-len`
    /// at most 8192 to keep training activations within a few GB).
    #[arg(long, default_value_t = TrainConfig::default().batch_size, value_parser = super::args::usize_in(2, 512))]
    pub batch_size: usize,
    /// Pairs drawn per training task and epoch (1 to 10000).
    #[arg(
        long,
        default_value_t = TrainConfig::default().pairs_per_task,
        value_parser = super::args::usize_in(1, 10_000)
    )]
    pub pairs_per_task: usize,
    /// Tokens per text during training, `[CLS]` and `[SEP]` included (2 to 512, MiniLM's positions).
    #[arg(long, default_value_t = TrainConfig::default().max_seq_len, value_parser = super::args::usize_in(2, 512))]
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
    /// Share of each query's target on the in-batch positives of the other tasks of its domain
    /// (supervised contrastive by domain; 0 = plain InfoNCE; in [0, 1)).
    #[arg(long, default_value_t = TrainConfig::default().domain_weight, value_parser = super::args::unit_interval_f64)]
    pub domain_weight: f64,
}

/// The most tokens per side of a training step, `--batch-size` × `--max-seq-len` (the activations kept
/// for the backward pass of MiniLM then stay around 5 GB).
const MAX_BATCH_TOKENS: usize = 8192;

/// Runs `ramole train-retriever`: prints one line per epoch, saves the encoder and `train_report.json`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch_size * args.max_seq_len <= MAX_BATCH_TOKENS,
        "--batch-size {} × --max-seq-len {} = {} tokens per side of a step is more than {MAX_BATCH_TOKENS}",
        args.batch_size,
        args.max_seq_len,
        args.batch_size * args.max_seq_len
    );
    let lora = args.tuning == "lora";
    if let Some(m) = args.input.model.as_deref().filter(|m| lora && EncoderAdapter::is_adapter_dir(m)) {
        anyhow::bail!(
            "--model {} is an encoder adapter: a LoRA is trained on a whole encoder (`base`, or a \
             sentence-transformers folder), since an adapter records the encoder it was trained on",
            m.display()
        );
    }
    let mut input = args.input;
    input.model.get_or_insert_with(|| PathBuf::from(super::engine::BASE_ENCODER));
    let super::eval_retrieval::Loaded { suite, encoder, model_dir } = input.load::<SelectedAutodiff>()?;
    if std::fs::symlink_metadata(&args.out).is_ok() && !args.force && lora {
        anyhow::bail!("--out {} already exists (give --force to replace it)", args.out.display());
    }
    // The trained encoder must not replace the one it starts from, nor land inside the suite: checked
    // on a file of the output folder, before the training.
    ramole_core::fs::refuse_overwriting_inputs(&args.out.join("model.safetensors"), &[suite.dir(), &model_dir])
        .map_err(|e| anyhow::anyhow!("--out {}: a file of it {e}", args.out.display()))?;
    let cfg = TrainConfig {
        epochs: args.epochs,
        lr: args.lr.unwrap_or(if lora { LORA_LR } else { FULL_LR }),
        temperature: args.temperature,
        batch_size: args.batch_size,
        pairs_per_task: args.pairs_per_task,
        max_seq_len: args.max_seq_len,
        seed: args.seed,
        instruction: args.instruction,
        negatives: args.negatives,
        domain_weight: args.domain_weight,
        tuning: if lora { Tuning::Lora { rank: args.rank, alpha: args.alpha } } else { Tuning::Full },
    };
    let base_identity = encoder.identity().to_owned();
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
    let report_json = (serde_json::to_string_pretty(&report)? + "\n").into_bytes();
    match &trained.lora {
        Some(l) => EncoderAdapter::save(
            &args.out,
            l,
            args.alpha,
            &base_identity,
            &cfg.instruction,
            &[("train_report.json", report_json)],
            args.force,
        )
        .with_context(|| format!("saving the encoder adapter to {}", args.out.display()))?,
        None => {
            trained.encoder.save(&args.out).with_context(|| format!("saving the encoder to {}", args.out.display()))?;
            let report_path = args.out.join("train_report.json");
            ramole_core::fs::write_atomic(&report_path, &report_json)
                .with_context(|| format!("writing {}", report_path.display()))?;
        }
    }
    println!("saved to {} (evaluate with `ramole eval-retrieval --model {}`)", args.out.display(), args.out.display());
    Ok(())
}
