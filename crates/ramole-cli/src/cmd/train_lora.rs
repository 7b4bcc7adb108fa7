//! `ramole train-lora`: train a LoRA on `{input, target}` records over the frozen base model and save
//! it as a PEFT folder.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ramole_core::backend::{self, Selected, SelectedAutodiff, device};
use ramole_models::CausalLm;
use ramole_models::llama::LinearKind;
use ramole_mole::peft::AdapterDtype;
use ramole_mole::train::{self, LoraTrainConfig, LoraTrainReport, TrainLength, TrainableLora};

/// Arguments of `ramole train-lora`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training records, JSONL: `{"input": …, "target": …}` per line (the suite's `train.jsonl`).
    #[arg(long)]
    pub data: PathBuf,
    /// The PEFT folder to write (`adapter_config.json`, `adapter_model.safetensors`,
    /// `ramole_training.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing `--out`.
    #[arg(long)]
    pub force: bool,
    /// The base model and the training configuration.
    #[command(flatten)]
    pub train: TrainOpts,
    /// Precision of the saved factors.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
}

/// The base model and how a LoRA is trained (shared by `train-lora` and `bench-train`).
#[derive(Debug, clap::Args)]
pub struct TrainOpts {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// LoRA rank r (1–256).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub rank: u16,
    /// lora_alpha (the update is scaled by alpha / r) [default: 2·rank].
    #[arg(long, value_parser = super::args::positive_f64)]
    pub alpha: Option<f64>,
    /// Adapted linear layers of every block, comma-separated (q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub targets: Vec<LinearKind>,
    /// Optimisation steps (1–1,000,000) [default: 150 unless --epochs is given].
    #[arg(long, conflicts_with = "epochs", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub steps: Option<u32>,
    /// Passes over the data (1–10,000), instead of --steps.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub epochs: Option<u32>,
    /// Examples per step (1–1024).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = super::args::positive_f64)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01, value_parser = super::args::non_negative_f64)]
    pub weight_decay: f64,
    /// Tokens per example, input + target + EOS (2–8192); longer inputs lose their beginning.
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u16).range(2..=8192))]
    pub max_len: u16,
    /// Seed of the initialisation and of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (half the size).
    F16,
}

impl TrainOpts {
    /// The training configuration these arguments describe.
    pub fn config(&self) -> LoraTrainConfig {
        let rank = usize::from(self.rank);
        let length = match (self.steps, self.epochs) {
            (_, Some(e)) => TrainLength::Epochs(e as usize),
            (Some(s), None) => TrainLength::Steps(s as usize),
            (None, None) => LoraTrainConfig::default().length,
        };
        LoraTrainConfig {
            rank,
            alpha: self.alpha.unwrap_or(2.0 * rank as f64),
            targets: self.targets.clone(),
            length,
            batch_size: usize::from(self.batch_size),
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_len: usize::from(self.max_len),
            seed: self.seed,
        }
    }
}

/// Runs `ramole train-lora`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.train.config();
    cfg.validate()?;
    // Cheap checks first: the output, then the data, then the model.
    let model = super::engine::model_path(args.train.model.clone())?;
    ramole_core::fs::refuse_folder_over_inputs(&args.out, &[&model, &args.data])
        .map_err(|e| anyhow::anyhow!("--out {}: {e}", args.out.display()))?;
    if !args.force && std::fs::symlink_metadata(&args.out).is_ok() {
        anyhow::bail!("{} already exists: give --force to replace it", args.out.display());
    }
    let data = train::read_train_jsonl(&args.data)?;
    let (lora, report) = train_with_progress(&model, &data.records, &cfg)?;
    let meta = serde_json::json!({
        "format": "ramole-training/1",
        "base_model": super::engine::base_model_name(args.train.model.as_deref(), &model),
        "data": args.data,
        "data_sha256": data.sha256,
        "report": report,
    });
    let dtype = match args.dtype {
        DtypeArg::F32 => AdapterDtype::F32,
        DtypeArg::F16 => AdapterDtype::F16,
    };
    let base_name = super::engine::base_model_name(args.train.model.as_deref(), &model);
    lora.save(
        &args.out,
        &cfg,
        &base_name,
        dtype,
        &[("ramole_training.json", serde_json::to_vec_pretty(&meta)?)],
        args.force,
    )
    .with_context(|| format!("saving the adapter to {}", args.out.display()))?;
    eprintln!("{}", summary(&report));
    println!("{}", args.out.display());
    Ok(())
}

/// Loads the base model and trains a LoRA on `records` with a progress bar (loss, tokens/s).
pub fn train_with_progress(
    model: &std::path::Path,
    records: &[train::TrainRecord],
    cfg: &LoraTrainConfig,
) -> anyhow::Result<(TrainableLora<Selected>, LoraTrainReport)> {
    let dev = device();
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", model.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let lm = CausalLm::<SelectedAutodiff>::load(model, &dev);
    spinner.finish_and_clear();
    let lm = lm.with_context(|| format!("loading model {}", model.display()))?;
    let steps = cfg.total_steps(records.len());
    eprintln!(
        "training a rank-{} LoRA (alpha {}) on {} of {} over {} records: {steps} steps of {}, lr {}, backend {}",
        cfg.rank,
        cfg.alpha,
        cfg.targets.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        model.display(),
        records.len(),
        cfg.batch_size,
        cfg.lr,
        backend::NAME
    );
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let out = train::train_on_records(lm, records, cfg, &dev, &mut |s| {
        bar.set_position(s.step as u64);
        bar.set_message(format!("loss {:.4} | {:.0} tok/s", s.loss, s.tokens_per_sec));
    })
    .context("training")?;
    bar.finish_and_clear();
    Ok(out)
}

/// One line on a finished run: steps, time, tokens/s and its split, the loss at both ends.
pub fn summary(report: &LoraTrainReport) -> String {
    let cfg = &report.config;
    let (first, last) = report.loss_ends(10.min(report.steps / 2));
    format!(
        "{} steps in {:.1} s ({:.0} training tok/s; forward {:.1} s, backward {:.1} s, optimiser {:.1} s); \
         loss {first:.4} → {last:.4} (mean of the first / last 10 steps); {} of {} examples truncated to {} tokens",
        report.steps,
        report.seconds,
        report.tokens_per_sec(),
        report.split_secs[0],
        report.split_secs[1],
        report.split_secs[2],
        report.truncated,
        report.examples,
        cfg.max_len
    )
}
