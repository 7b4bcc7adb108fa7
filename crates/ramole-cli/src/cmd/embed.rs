//! `ramole embed`: sentence embeddings (all-MiniLM-L6-v2 as sentence-transformers computes them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use ramole_core::backend::{self, Selected};
use ramole_retriever::{SentenceEncoder, read_jsonl_texts};

use super::output::{Data, OutTensor};

/// Arguments of `ramole embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sentence encoder [default: the trained retriever (all-MiniLM-L6-v2 + the project's LoRA); `base`: the
    /// untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder adapter from `ramole
    /// train-retriever`].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The texts: a JSON object with `sentences` (the fixture format), a JSON array of strings, or
    /// JSONL (strings or objects with `input`).
    #[arg(long)]
    pub requests: PathBuf,
    /// Output `.safetensors` file: `embeddings`, f32, `[n, hidden]`.
    #[arg(long)]
    pub out: PathBuf,
    /// Texts per forward pass (1 to 1024).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(1, 1024))]
    pub batch_size: usize,
}

/// Loads the encoder `model` names (see `engine::load_encoder`; none: the default trained retriever).
pub fn load_encoder(model: Option<&Path>) -> anyhow::Result<SentenceEncoder<Selected>> {
    Ok(super::engine::load_encoder(model)?.1)
}

/// Reads the texts of a requests file (see [`Args::requests`]).
pub fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = ramole_core::fs::read_text(path, ramole_core::fs::MAX_TEXT_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(o)) => {
            let sentences = o.get("sentences").with_context(|| format!("{}: no `sentences` array", path.display()))?;
            serde_json::from_value(sentences.clone())
                .with_context(|| format!("{}: `sentences` must be an array of strings", path.display()))
        }
        Ok(v @ serde_json::Value::Array(_)) => {
            serde_json::from_value(v).with_context(|| format!("{}: must be an array of strings", path.display()))
        }
        _ => Ok(read_jsonl_texts(path)?),
    }
}

/// Runs `ramole embed`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    let mut inputs: Vec<&Path> = vec![&args.requests];
    inputs.extend(args.model.as_deref());
    super::output::check("--out", &args.out, &inputs)?;
    let texts = read_texts(&args.requests)?;
    let (model, encoder) = super::engine::load_encoder::<Selected>(args.model.as_deref())?;
    super::output::check("--out", &args.out, &[&model])?;
    let start = Instant::now();
    let rows = encoder.embed(&texts, args.batch_size)?;
    let secs = start.elapsed().as_secs_f64();
    let dim = encoder.dim();
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    let tensor = OutTensor { shape: vec![rows.len(), dim], data: Data::F32(&values) };
    super::output::write_safetensors(&args.out, vec![("embeddings".to_string(), tensor)])?;
    eprintln!(
        "embedded {} texts in {secs:.2} s ({:.1} texts/s, {}) -> {} [embeddings: {} x {dim} f32]",
        rows.len(),
        rows.len() as f64 / secs.max(1e-9),
        backend::NAME,
        args.out.display(),
        rows.len()
    );
    Ok(())
}
