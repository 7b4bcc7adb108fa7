//! Where the models come from: the LLM engine for `generate`, `batch` and `bench-decode`, and the
//! retriever's encoder folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use burn::tensor::backend::Backend;
use ramole_assets::AssetCache;
use ramole_batch::Engine;
use ramole_core::backend::{Selected, device};
use ramole_models::linear::WeightFormat;
use ramole_retriever::{EncoderAdapter, SentenceEncoder};

/// The model to load: the given path, or SmolLM2-135M-Instruct from the asset cache.
pub fn model_path(model: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match model {
        Some(p) => Ok(p),
        None => AssetCache::from_env()?.smollm2_gguf().context("fetching SmolLM2-135M-Instruct"),
    }
}

/// The Hub id of the default base model, SmolLM2-135M-Instruct (what trained adapters record as their
/// `base_model_name_or_path` when trained on it).
pub const DEFAULT_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// The name a trained adapter records for its base: the Hub id of the default model when no
/// `--model` was given, else the given path made absolute.
pub fn base_model_name(given: Option<&Path>, resolved: &Path) -> String {
    match given {
        None => DEFAULT_MODEL_ID.to_string(),
        Some(_) => std::fs::canonicalize(resolved).unwrap_or_else(|_| resolved.to_path_buf()).display().to_string(),
    }
}

/// The `--model` value that names the untrained all-MiniLM-L6-v2 (a folder called `base` is `./base`).
pub const BASE_ENCODER: &str = "base";

/// Loads the retriever's encoder that `model` names and returns its folder too (for reports and for
/// checks that outputs do not overwrite it):
/// - none: the default, the trained retriever (all-MiniLM-L6-v2 from the asset cache with the
///   project's LoRA merged, `ramole_retriever::default_encoder`);
/// - [`BASE_ENCODER`]: the untrained all-MiniLM-L6-v2 from the asset cache;
/// - an encoder adapter folder (`ramole train-retriever`'s LoRA): applied to the cached all-MiniLM-L6-v2;
/// - any other folder: a whole sentence-transformers encoder.
pub fn load_encoder<B: Backend>(model: Option<&Path>) -> anyhow::Result<(PathBuf, SentenceEncoder<B>)> {
    let minilm =
        || -> anyhow::Result<PathBuf> { AssetCache::from_env()?.minilm_dir().context("fetching all-MiniLM-L6-v2") };
    let load = |dir: &Path| {
        SentenceEncoder::<B>::load(dir, &Default::default())
            .with_context(|| format!("loading the encoder in {}", dir.display()))
    };
    let adapted = |adapter: &EncoderAdapter| -> anyhow::Result<SentenceEncoder<B>> {
        let base = load(&minilm()?)?;
        base.with_adapter(adapter)
            .with_context(|| format!("applying the encoder adapter {}", adapter.origin().display()))
    };
    match model {
        None => {
            let adapter = ramole_retriever::default_encoder::adapter().context("reading the shipped retriever LoRA")?;
            Ok((minilm()?, adapted(&adapter)?))
        }
        Some(p) if p == Path::new(BASE_ENCODER) => {
            let dir = minilm()?;
            let encoder = load(&dir)?;
            Ok((dir, encoder))
        }
        Some(p) if EncoderAdapter::is_adapter_dir(p) => {
            let adapter =
                EncoderAdapter::load(p).with_context(|| format!("reading the encoder adapter {}", p.display()))?;
            Ok((p.to_path_buf(), adapted(&adapter)?))
        }
        Some(p) => Ok((p.to_path_buf(), load(p)?)),
    }
}

/// `--model-weights`, for every subcommand that loads a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct ModelWeights {
    /// How the model's weights are held: `auto` keeps a GGUF file's Q4_0/Q4_1/Q8_0 matrices quantized
    /// on the CPU backends (with 8-bit activations where the CPU has AVX-512 VNNI) and f32 linear
    /// weights packed on the host where the CPU has AVX-512F, everything dense on a GPU; `quantized`
    /// the same with f32 activations always; `quantized-int8` with 8-bit activations (llama.cpp's
    /// arithmetic); `dense` every weight f32 on the backend's device (the exact reference).
    #[arg(long = "model-weights", value_enum, default_value_t)]
    pub model_weights: Weights,
}

/// How the base model's weights are held (`--model-weights`; `ramole_models::linear::WeightFormat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    /// Quantized (and f32 weights packed) on the CPU backends, with 8-bit activations where the CPU
    /// has AVX-512 VNNI; dense on a GPU.
    #[default]
    Auto,
    /// A GGUF file's Q4_0/Q4_1/Q8_0 matrices kept quantized, f32 linear weights packed on the host.
    Quantized,
    /// Kept quantized, and decoding rounds the activations to 8 bits per block (llama.cpp's arithmetic).
    QuantizedInt8,
    /// Everything f32 on the device.
    Dense,
}

impl From<Weights> for WeightFormat {
    fn from(w: Weights) -> Self {
        match w {
            Weights::Auto => WeightFormat::Auto,
            Weights::Quantized => WeightFormat::Quantized,
            Weights::QuantizedInt8 => WeightFormat::QuantizedInt8,
            Weights::Dense => WeightFormat::Dense,
        }
    }
}

/// Loads the model (with a spinner) and the adapters of `adapters` (each sub-folder is one, named by
/// the folder; a folder holding `adapter_config.json` is one adapter, named by the folder). Adapters
/// that fail to load are reported and left out (a request naming one is told why); a folder with no
/// adapter at all is an error.
pub fn load(model: &Path, adapters: Option<&Path>, weights: ModelWeights) -> anyhow::Result<Engine<Selected>> {
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", model.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let loaded = Engine::<Selected>::load_with(model, &device(), weights.model_weights.into());
    spinner.finish_and_clear();
    let mut engine = loaded.with_context(|| format!("loading model {}", model.display()))?;
    if let Some(dir) = adapters {
        let report = engine.adapters_mut().load_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for (path, err) in &report.failed {
            eprintln!("warning: adapter {} not loaded: {err}", path.display());
        }
        let mut names = report.loaded.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        if report.loaded.len() > 8 {
            names.push_str(", …");
        }
        eprintln!("loaded {} adapter(s) from {}: {names}", report.loaded.len(), dir.display());
    }
    Ok(engine)
}
