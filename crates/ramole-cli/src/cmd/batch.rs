//! `ramole batch`: every request of a file in ONE heterogeneous batch.

use std::path::{Path, PathBuf};

use ramole_batch::{RequestFile, RunOptions};

use super::output::{Data, OutTensor};

/// Arguments of `ramole batch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub model_weights: super::engine::ModelWeights,
    /// Folder of PEFT adapters, one per sub-folder, named by the folder.
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Request file (`cases[]`: name, input_ids or prompt, adapters, composition, greedy_new_tokens).
    #[arg(long)]
    pub requests: PathBuf,
    /// A RouterLoRA gate folder (`ramole train-gate`), which requests with `"composition": "gate"` need.
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// Output safetensors: `logits.<name>` (f32, [prompt length, vocab]) and `greedy.<name>` (i64).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `ramole batch`. `--out` is checked before any work (not the request file, the model or a
/// file in the model or adapters folder). Requests that fail get their error on stderr (and no output
/// tensors); the others are written, atomically. Exits with an error if any request failed; when every
/// request failed nothing is written (an earlier `--out` stays as it was).
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut inputs: Vec<&Path> = vec![&args.requests];
    inputs.extend(args.model.as_deref());
    inputs.extend(args.adapters.as_deref());
    inputs.extend(args.gate.as_deref());
    super::output::check("--out", &args.out, &inputs)?;
    let file = RequestFile::from_file(&args.requests)?;
    let model = super::engine::model_path(args.model.clone())?;
    super::output::check("--out", &args.out, &[&model])?;
    let mut engine = super::engine::load(&model, args.adapters.as_deref(), args.model_weights)?;
    if let Some(dir) = &args.gate {
        let gate = ramole_mole::RouterGate::load(dir, engine.config(), &ramole_core::backend::device())
            .map_err(|e| anyhow::anyhow!("loading the gate in {}: {e}", dir.display()))?;
        engine.set_gate(Some(gate));
    }
    let vocab = engine.config().vocab_size;
    let start = std::time::Instant::now();
    let results = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
    let secs = start.elapsed().as_secs_f64();

    let mut outputs = Vec::with_capacity(results.len());
    let mut failed = 0;
    for (request, result) in file.requests.iter().zip(results) {
        match result {
            Ok(out) => outputs.push((request, out)),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    let n = file.requests.len();
    anyhow::ensure!(!outputs.is_empty(), "all {n} request(s) failed: {} not written", args.out.display());
    let mut tensors: Vec<(String, OutTensor<'_>)> = Vec::with_capacity(2 * outputs.len());
    for (request, out) in &outputs {
        let logits = out.prompt_logits.as_deref().unwrap_or_default();
        let rows = logits.len() / vocab.max(1);
        tensors.push((format!("logits.{}", out.name), OutTensor { shape: vec![rows, vocab], data: Data::F32(logits) }));
        if request.max_new_tokens > 0 {
            let shape = vec![out.new_tokens.len()];
            tensors.push((format!("greedy.{}", out.name), OutTensor { shape, data: Data::I64(&out.new_tokens) }));
        }
    }
    super::output::write_safetensors(&args.out, tensors)?;
    eprintln!("{n} request(s) in one batch in {secs:.2} s ({failed} failed), written to {}", args.out.display());
    anyhow::ensure!(failed == 0, "{failed} of {n} request(s) failed");
    Ok(())
}
