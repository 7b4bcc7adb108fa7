//! `ramole pool add|remove|list|reembed`: the LoRA pool on disk.

use std::path::PathBuf;

use anyhow::Context;
use ramole_assets::AssetCache;
use ramole_retriever::{DEFAULT_INSTRUCTION, LoraPool, read_jsonl_texts};

/// Arguments of `ramole pool`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pool folder [default: `$RAMOLE_HOME/pool`, else `~/.cache/ramole/pool`].
    #[arg(long, global = true)]
    pub pool: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// `ramole pool` actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Add a LoRA: its embedding is the mean of the embeddings of `instruction + sample`.
    Add(AddArgs),
    /// Remove a LoRA.
    Remove {
        /// The LoRA's name.
        name: String,
    },
    /// List the LoRAs.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Re-embed every LoRA from its stored samples with another encoder, atomically (a crash leaves
    /// the old pool intact), and record that encoder as the pool's.
    Reembed {
        /// The sentence encoder [default: the trained retriever (all-MiniLM-L6-v2 + the project's LoRA); `base`: the
        /// untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder adapter from
        /// `ramole train-retriever`].
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

/// Arguments of `ramole pool add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The LoRA's name (letters, digits, `-`, `_`, `.`; at most 128 bytes).
    pub name: String,
    /// The PEFT adapter folder (optional: a LoRA may be represented by its samples only).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL samples of the LoRA's task: strings or objects with `input` (at least one).
    #[arg(long)]
    pub samples: PathBuf,
    /// The sentence encoder [default: the trained retriever (all-MiniLM-L6-v2 + the project's LoRA); `base`: the
    /// untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder adapter from `ramole
    /// train-retriever`].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The instruction prepended to each sample.
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub instruction: String,
}

/// The pool folder used when none is given: `<asset cache root>/pool`.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    Ok(AssetCache::from_env()?.root().join("pool"))
}

/// Opens the pool named by `--pool`, or the default one; with `create`, creates it if absent (only
/// `pool add` does), else a missing pool is an error and nothing is created. Entries that cannot be
/// used are skipped with a warning on stderr.
pub fn open(pool: Option<PathBuf>, create: bool) -> anyhow::Result<LoraPool> {
    let dir = match pool {
        Some(d) => d,
        None => default_dir()?,
    };
    let opened = if create { LoraPool::create(&dir) } else { LoraPool::open(&dir) };
    let (pool, skipped) = opened.with_context(|| format!("opening the pool in {}", dir.display()))?;
    for s in &skipped {
        eprintln!("warning: skipping pool entry {s} (`ramole pool remove {}` deletes it)", s.name);
    }
    Ok(pool)
}

/// Runs `ramole pool`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Add(a) => {
            // Cheap checks (name, adapter, samples) come before creating the pool and loading the model.
            ramole_retriever::pool::validate_name(&a.name)?;
            if let Some(adapter) = &a.adapter {
                ramole_retriever::pool::validate_adapter(adapter)?;
            }
            let samples = read_jsonl_texts(&a.samples)?;
            let mut pool = open(args.pool, true)?;
            anyhow::ensure!(
                pool.get(&a.name).is_none(),
                "{}: a LoRA named `{}` already exists",
                pool.dir().display(),
                a.name
            );
            let encoder = super::embed::load_encoder(a.model.as_deref())?;
            pool.set_instruction(a.instruction);
            pool.add(&a.name, a.adapter.as_deref(), &samples, &encoder)?;
            eprintln!(
                "added `{}` ({} samples) to {} ({} LoRAs)",
                a.name,
                samples.len(),
                pool.dir().display(),
                pool.len()
            );
        }
        Action::Remove { name } => {
            let mut pool = open(args.pool, false)?;
            pool.remove(&name)?;
            eprintln!("removed `{name}` from {} ({} LoRAs)", pool.dir().display(), pool.len());
        }
        Action::List { json } => list(&open(args.pool, false)?, json)?,
        Action::Reembed { model } => {
            let mut pool = open(args.pool, false)?;
            let encoder = super::embed::load_encoder(model.as_deref())?;
            let before = pool.encoder_identity().map(str::to_string);
            let n = pool.reembed(&encoder)?;
            eprintln!(
                "re-embedded {n} LoRAs in {} with the encoder {} (was {})",
                pool.dir().display(),
                encoder.identity(),
                before.as_deref().unwrap_or("unrecorded")
            );
        }
    }
    Ok(())
}

fn list(pool: &LoraPool, json: bool) -> anyhow::Result<()> {
    let entries = pool.entries();
    if json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "n_samples": e.n_samples,
                    "dim": e.embedding.len(),
                    "adapter": e.adapter,
                    "instruction": e.instruction,
                    "encoder": pool.encoder_identity(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{} LoRAs in {}", entries.len(), pool.dir().display());
    println!("encoder: {}", pool.encoder_identity().unwrap_or("unrecorded (the next `pool add` records it)"));
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(4).max(4);
    if !entries.is_empty() {
        println!("{:width$}  {:>7}  adapter", "name", "samples");
    }
    for e in entries {
        let adapter = e.adapter.as_ref().map_or_else(|| "-".to_string(), |p| p.display().to_string());
        println!("{:width$}  {:>7}  {adapter}", e.name, e.n_samples);
    }
    Ok(())
}
