//! `ramole train-gate`: RAMoLE's RouterLoRA gate, trained on the suite's training tasks over a pool.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ramole_core::backend::{self, SelectedAutodiff, device};
use ramole_models::llama::LinearKind;
use ramole_mole::gate::GateTrainConfig;
use ramole_research::gate::{GateDataConfig, train_gate_on_suite};

/// Arguments of `ramole train-gate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the gate (a folder: `gate_config.json`, `gate.safetensors`, `train_gate_report.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
    /// The pool whose LoRAs the gate learns to weigh, the model, the retriever's encoder.
    #[command(flatten)]
    pub pool: super::run::PoolArgs,
    /// The suite folder written by `ramole tasks build` [default: `$RAMOLE_HOME/tasks`]; the gate trains
    /// on its training tasks only, never on a held-out one.
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// Train examples per training task (1 to 10000).
    #[arg(long, default_value_t = GateDataConfig::default().per_task, value_parser = super::args::usize_in(1, 10_000))]
    pub per_task: usize,
    /// LoRAs retrieved per example: the set the gate weighs (1 to 64).
    #[arg(long, default_value_t = GateDataConfig::default().top_k, value_parser = super::args::usize_in(1, 64))]
    pub top_k: usize,
    /// Tokens per example at most (2 to 8192; longer inputs are cut from the left).
    #[arg(long, default_value_t = GateDataConfig::default().max_len, value_parser = super::args::usize_in(2, 8192))]
    pub max_len: usize,
    /// The gate's rank r_g (1 to 1024).
    #[arg(long, default_value_t = GateTrainConfig::default().rank, value_parser = super::args::usize_in(1, 1024))]
    pub rank: usize,
    /// The gated linear layers, comma-separated (every layer the pool's LoRAs adapt).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub targets: Vec<String>,
    /// Optimisation steps (1 to 100000).
    #[arg(long, default_value_t = GateTrainConfig::default().steps, value_parser = super::args::usize_in(1, 100_000))]
    pub steps: usize,
    /// Examples per step (1 to 256).
    #[arg(long, default_value_t = GateTrainConfig::default().batch_size, value_parser = super::args::usize_in(1, 256))]
    pub batch_size: usize,
    /// AdamW's learning rate (a finite number > 0).
    #[arg(long, default_value_t = GateTrainConfig::default().lr, value_parser = super::args::positive_f64)]
    pub lr: f64,
    /// LoRA dropout: each retrieved LoRA of an example is dropped with this probability (in [0, 1)).
    #[arg(long, default_value_t = GateTrainConfig::default().dropout, value_parser = super::args::unit_interval_f64)]
    pub dropout: f64,
    /// LoRAs kept per example whatever the dropout (1 to 64).
    #[arg(long, default_value_t = GateTrainConfig::default().min_kept, value_parser = super::args::usize_in(1, 64))]
    pub min_kept: usize,
    /// Seed of the examples, the initialisation, the batch order and the dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `ramole train-gate`: a progress bar, then the gate folder.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for t in &args.targets {
        targets.push(LinearKind::from_name(t).with_context(|| format!("--targets: `{t}` is not a linear layer"))?);
    }
    let cfg = GateTrainConfig {
        rank: args.rank,
        targets,
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        dropout: args.dropout,
        min_kept: args.min_kept,
        seed: args.seed,
        ..GateTrainConfig::default()
    };
    cfg.validate()?;
    if !args.force && std::fs::symlink_metadata(&args.out).is_ok() {
        anyhow::bail!("{} already exists: give --force to replace it", args.out.display());
    }
    let data = GateDataConfig { per_task: args.per_task, top_k: args.top_k, max_len: args.max_len, seed: args.seed };
    let suite = super::tasks::open(args.tasks.as_deref())?;
    let ramole = super::run::load(&args.pool, None)?;
    let model = super::engine::model_path(args.pool.model.clone())?;
    eprintln!(
        "training a rank-{} gate on {} over the {} LoRAs of the pool: {} steps of {}, top {}, dropout {}, backend {}",
        cfg.rank,
        args.targets.join(","),
        ramole.servable().len(),
        cfg.steps,
        cfg.batch_size,
        data.top_k,
        cfg.dropout,
        backend::NAME
    );
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let (gate, report) =
        train_gate_on_suite::<_, SelectedAutodiff>(&suite, &ramole, &model, &data, &cfg, &device(), &mut |s| {
            bar.set_position(s.step as u64);
            bar.set_message(format!("loss {:.4} | {:.0} tok/s", s.loss, s.tokens_per_sec));
        })
        .context("training the gate")?;
    bar.finish_and_clear();
    gate.save(&args.out, ramole.engine().config(), args.force)
        .with_context(|| format!("saving the gate to {}", args.out.display()))?;
    let report_path = args.out.join("train_gate_report.json");
    ramole_core::fs::write_atomic(&report_path, (serde_json::to_string_pretty(&report)? + "\n").as_bytes())
        .with_context(|| format!("writing {}", report_path.display()))?;
    let losses = &report.training.losses;
    let k = 10.min(losses.len() / 2).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    eprintln!(
        "{} examples from {} tasks, {} steps in {:.1} s; loss {:.4} → {:.4} (mean of the first / last {k} steps)",
        report.training.examples,
        report.tasks.len(),
        losses.len(),
        report.training.seconds,
        mean(&losses[..k.min(losses.len())]),
        mean(&losses[losses.len().saturating_sub(k)..])
    );
    println!("{}", args.out.display());
    Ok(())
}
