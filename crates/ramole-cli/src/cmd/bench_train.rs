//! `ramole bench-train`: LoRA training throughput, ours beside PEFT's on the same data and
//! configuration, measured one after the other in one run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use ramole_mole::train;

use super::train_lora::TrainOpts;

/// Arguments of `ramole bench-train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The suite folder written by `ramole tasks build` [default: `$RAMOLE_HOME/tasks`]; the task's
    /// `train.jsonl` is the training data.
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// The task to train on.
    #[arg(long, default_value = "plural")]
    pub task: String,
    /// The base model and the training configuration (default --steps here: 40).
    #[command(flatten)]
    pub train: TrainOpts,
    /// Also run PEFT's trainer first, on the same data and configuration: the Python of a venv with
    /// torch, transformers and peft (`../shared/peers/peft/setup.sh`).
    #[arg(long, requires_all = ["peer_script", "peer_base"])]
    pub peer_python: Option<PathBuf>,
    /// The peer's training script (`../shared/peers/peft/train_lora.py`).
    #[arg(long)]
    pub peer_script: Option<PathBuf>,
    /// The base model as an HF folder for the peer (the same weights as `--model`, dequantised).
    #[arg(long)]
    pub peer_base: Option<PathBuf>,
    /// Threads for the peer (PyTorch's intra-op threads; ours use every core).
    #[arg(long, default_value_t = 2, value_parser = super::args::usize_in(1, 1024))]
    pub peer_threads: usize,
}

/// Runs `ramole bench-train`.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    if args.train.steps.is_none() && args.train.epochs.is_none() {
        args.train.steps = Some(40);
    }
    let cfg = args.train.config();
    cfg.validate()?;
    let suite = super::tasks::open(args.tasks.as_deref())?;
    let data_path =
        suite.dir().join(&suite.task(&args.task)?.name).join(ramole_research::tasks::Split::Train.file_name());
    let data = train::read_train_jsonl(&data_path)?;
    let model = super::engine::model_path(args.train.model.clone())?;
    let peer = match (&args.peer_python, &args.peer_script, &args.peer_base) {
        (Some(py), Some(script), Some(base)) => {
            let steps = cfg.total_steps(data.records.len());
            let targets = cfg.targets.iter().map(|k| k.name()).collect::<Vec<_>>().join(",");
            eprintln!("peer: {} {} ({steps} steps)", py.display(), script.display());
            let out = Command::new(py)
                .arg(script)
                .arg(suite.dir())
                .arg(&args.task)
                .args(["--base".as_ref(), base.as_os_str()])
                .args(["--steps", &steps.to_string(), "--batch", &cfg.batch_size.to_string()])
                .args(["--max-len", &cfg.max_len.to_string(), "--rank", &cfg.rank.to_string()])
                .args(["--targets", &targets, "--lr", &cfg.lr.to_string(), "--eval", "1"])
                .args(["--threads", &args.peer_threads.to_string()])
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                anyhow::bail!(
                    "the peer failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
                );
            }
            Some(
                peer_tokens_per_sec(&text)
                    .with_context(|| format!("no training tok/s in the peer's output:\n{text}"))?,
            )
        }
        _ => None,
    };
    let (_, report) = super::train_lora::train_with_progress(&model, &data.records, &cfg)?;
    eprintln!("{}", super::train_lora::summary(&report));
    let ours = report.tokens_per_sec();
    println!("task {}: RAMoLE-rs {ours:.1} training tok/s ({} backend)", args.task, ramole_core::backend::NAME);
    if let Some(p) = peer {
        println!("task {}: PEFT {p:.1} training tok/s; ratio {:.2}×", args.task, ours / p);
    }
    Ok(())
}

/// The figure in the peer's summary line `… = N tok/s`.
fn peer_tokens_per_sec(stdout: &str) -> Option<f64> {
    let line = stdout.lines().rev().find(|l| l.contains("tok/s") && l.contains(" = "))?;
    let after = line.rsplit(" = ").next()?;
    after.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::peer_tokens_per_sec;

    #[test]
    fn reads_the_peers_summary_line() {
        let out = "plural: base EM 0.000\n  step 0 loss 8.980 (111 train tok/s)\n\
                   plural: LoRA EM 0.000 (base 0.000); training 40 steps x 8 in 49 s = 118 tok/s\n";
        assert_eq!(peer_tokens_per_sec(out), Some(118.0));
        assert_eq!(peer_tokens_per_sec("  step 0 loss 8.980 (111 train tok/s)\n"), None);
    }
}
