//! `ramole batch`: every request of a file in ONE heterogeneous batch.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use ramole_batch::{RequestFile, RunOptions};
use safetensors::{Dtype, tensor::TensorView};

/// Arguments of `ramole batch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Folder of PEFT adapters, one per sub-folder, named by the folder.
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Request file (`cases[]`: name, input_ids or prompt, adapters, composition, greedy_new_tokens).
    #[arg(long)]
    pub requests: PathBuf,
    /// Output safetensors: `logits.<name>` (f32, [prompt length, vocab]) and `greedy.<name>` (i64).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `ramole batch`. Requests that fail get their error on stderr (and no output tensors); the
/// others are written. Exits with an error if any request failed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let file = RequestFile::from_file(&args.requests)?;
    let model = super::engine::model_path(args.model)?;
    let engine = super::engine::load(&model, args.adapters.as_deref())?;
    let vocab = engine.config().vocab_size;
    let start = std::time::Instant::now();
    let results = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
    let secs = start.elapsed().as_secs_f64();

    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut failed = 0;
    for result in results {
        match result {
            Ok(out) => {
                let logits = out.prompt_logits.unwrap_or_default();
                let rows = logits.len() / vocab.max(1);
                let bytes = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((format!("logits.{}", out.name), Dtype::F32, vec![rows, vocab], bytes));
                let request = file.requests.iter().find(|r| r.name == out.name);
                if request.is_some_and(|r| r.max_new_tokens > 0) {
                    let bytes = out.new_tokens.iter().flat_map(|&t| i64::from(t).to_le_bytes()).collect();
                    tensors.push((format!("greedy.{}", out.name), Dtype::I64, vec![out.new_tokens.len()], bytes));
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let tmp = args.out.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(&views, None, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} request(s) in one batch in {secs:.2} s ({} failed), written to {}",
        file.requests.len(),
        failed,
        args.out.display()
    );
    anyhow::ensure!(failed == 0, "{failed} request(s) failed");
    Ok(())
}
