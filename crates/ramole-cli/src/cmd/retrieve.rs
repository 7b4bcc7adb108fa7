//! `ramole retrieve`: the top-k LoRAs of the pool for each input.

use std::path::PathBuf;

use ramole_retriever::{DEFAULT_INSTRUCTION, read_jsonl_texts};

/// Arguments of `ramole retrieve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The inputs (each one query); use `--input` for a file.
    pub texts: Vec<String>,
    /// JSONL inputs: strings or objects with `input`.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The pool folder [default: `$RAMOLE_HOME/pool`, else `~/.cache/ramole/pool`].
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// How many LoRAs to return per input (1 to 10000; all of them when the pool has fewer).
    #[arg(long, default_value_t = 3, value_parser = super::args::usize_in(1, 10_000))]
    pub top_k: usize,
    /// The sentence encoder [default: the trained retriever (all-MiniLM-L6-v2 + the project's LoRA); `base`: the
    /// untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder adapter from `ramole
    /// train-retriever`].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The instruction prepended to each input (as to the pool's samples).
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub instruction: String,
    /// Inputs embedded per forward pass (1 to 1024).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(1, 1024))]
    pub batch_size: usize,
    /// Machine-readable output (one JSON document).
    #[arg(long)]
    pub json: bool,
}

/// Runs `ramole retrieve`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    let mut queries = args.texts.clone();
    if let Some(path) = &args.input {
        queries.extend(read_jsonl_texts(path)?);
    }
    anyhow::ensure!(!queries.is_empty(), "no input: give texts or --input FILE.jsonl");
    let pool = super::pool::open(args.pool, false)?;
    anyhow::ensure!(
        !pool.is_empty(),
        "the pool in {} is empty (add LoRAs with `ramole pool add`)",
        pool.dir().display()
    );
    let encoder = super::embed::load_encoder(args.model.as_deref())?;
    anyhow::ensure!(
        encoder.dim() == pool.index().dim(),
        "the encoder makes {}-dim embeddings, the pool holds {}-dim ones",
        encoder.dim(),
        pool.index().dim()
    );
    pool.check_encoder(&encoder)?;
    let instructed: Vec<String> = queries.iter().map(|q| format!("{}{q}", args.instruction)).collect();
    let embeddings = encoder.embed(&instructed, args.batch_size)?;
    let results = pool.index().search(&embeddings, args.top_k)?;
    if args.json {
        let rows: Vec<serde_json::Value> = queries
            .iter()
            .zip(&results)
            .map(|(q, hits)| {
                let hits: Vec<serde_json::Value> = hits
                    .iter()
                    .map(|(name, score)| {
                        let adapter = pool.get(name).and_then(|e| e.adapter.clone());
                        serde_json::json!({ "name": name, "cosine": score, "adapter": adapter })
                    })
                    .collect();
                serde_json::json!({ "input": q, "hits": hits })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "top_k": args.top_k, "results": rows }))?);
        return Ok(());
    }
    for (q, hits) in queries.iter().zip(&results) {
        let shown: String = q.chars().take(100).collect();
        println!("{shown}{}", if shown.len() < q.len() { "…" } else { "" });
        for (rank, (name, score)) in hits.iter().enumerate() {
            println!("  {:>2}. {score:.4}  {name}", rank + 1);
        }
    }
    Ok(())
}
