//! `ramole bench-serve`: the server under closed-loop load over loopback (throughput, latency and time
//! to first token at several client counts), continuous batching beside static batching.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ramole_core::backend::Selected;
use ramole_models::llama::LinearKind;
use ramole_mole::synthetic::SyntheticAdapter;
use ramole_pipeline::Ramole;
use ramole_retriever::LoraPool;
use ramole_server::bench::{Background, Load, LoadReport, LoadRequest, fetch_metrics, metric, run_load};
use ramole_server::{Batching, ServeConfig, Server, process_memory};

/// Arguments of `ramole bench-serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub model_weights: super::engine::ModelWeights,
    /// The retriever's encoder that embeds the adapters' samples [default: the trained retriever].
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Distinct synthetic adapters (rank `--rank` on q/k/v/o), each request using one (1 to 256).
    #[arg(long, default_value_t = 16, value_parser = super::args::usize_in(1, 256))]
    pub adapters: usize,
    /// Adapter rank (1 to 64).
    #[arg(long, default_value_t = 8, value_parser = super::args::usize_in(1, 64))]
    pub rank: usize,
    /// Concurrent clients of each round, comma-separated (each 1 to 1024).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32], value_parser = super::args::usize_in(1, 1024))]
    pub clients: Vec<usize>,
    /// Requests each client sends, one after the other (1 to 100).
    #[arg(long, default_value_t = 4, value_parser = super::args::usize_in(1, 100))]
    pub requests_per_client: usize,
    /// The longest `max_tokens` of a request; requests ask for ¼, ½, ¾ or all of it (4 to 1024).
    #[arg(long, default_value_t = 48, value_parser = super::args::usize_in(4, 1024))]
    pub max_tokens: usize,
    /// Most rows in the running batch (1 to 1024).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(1, 1024))]
    pub max_batch: usize,
    /// Most prompt tokens prefilled per step (1 to 65536).
    #[arg(long, default_value_t = ramole_batch::DEFAULT_PREFILL_CHUNK, value_parser = super::args::usize_in(1, 65_536))]
    pub prefill_chunk: usize,
    /// Which batching to measure.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    pub batching: Modes,
}

/// The batching modes `bench-serve` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Modes {
    /// Continuous, then static.
    Both,
    /// Continuous batching only.
    Continuous,
    /// Static batching only.
    Static,
}

/// Prompts of different lengths (5 to 68 tokens with SmolLM2's tokenizer), so that prefills differ too.
const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "Explain in simple words why the sky is blue during the day and red at sunset.",
    "List three things a beginner should know before learning to play the guitar, and say why each matters.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "Translate to French: The weather is nice today, so we are going to walk along the river after lunch.",
    "A train leaves the station at 3 pm travelling at 60 miles per hour. A second train leaves the same station \
     one hour later travelling at 80 miles per hour on a parallel track. At what time does the second train \
     catch up with the first one? Think step by step and give the answer with a short explanation.",
    "Summarise the following paragraph in one sentence: Large language models are trained on large amounts of \
     text to predict the next word. Low-rank adapters add a small number of trainable parameters to a frozen \
     model, so that one base model can serve many tasks, each with an adapter of a few megabytes.",
];

/// Runs the benchmark and prints one line per batching mode and client count.
pub fn run(args: Args) -> anyhow::Result<()> {
    let model = super::engine::model_path(args.model.clone())?;
    let tmp = tempfile::tempdir().context("a temporary folder for the pool")?;
    let pool_dir = tmp.path().join("pool");
    // The first round serves the pipeline that wrote the pool; later rounds load it again.
    let mut written = Some(write_pool(&args, &model, &pool_dir)?);
    let names: Vec<String> = (0..args.adapters).map(adapter_name).collect();
    // Request i: adapter i mod n, prompt i mod 8, ¼ to all of --max-tokens.
    let count = names.len().max(PROMPTS.len()) * 4;
    let requests: Vec<LoadRequest> = (0..count)
        .map(|i| LoadRequest {
            model: names[i % names.len()].clone(),
            prompt: PROMPTS[i % PROMPTS.len()].to_string(),
            max_tokens: (args.max_tokens * (1 + (i / 2) % 4) / 4).max(1),
        })
        .collect();
    let modes: &[Batching] = match args.batching {
        Modes::Both => &[Batching::Continuous, Batching::Static],
        Modes::Continuous => &[Batching::Continuous],
        Modes::Static => &[Batching::Static],
    };
    println!(
        "bench-serve: {} on {} adapters (rank {}), max batch {}, prefill chunk {}, {} request(s) per client, \
         max_tokens {}..{}",
        model.display(),
        args.adapters,
        args.rank,
        args.max_batch,
        args.prefill_chunk,
        args.requests_per_client,
        (args.max_tokens / 4).max(1),
        args.max_tokens
    );
    println!(
        "{:<10} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "batching",
        "clients",
        "requests",
        "tokens",
        "wall s",
        "tok/s",
        "p50 s",
        "p99 s",
        "ttft p50",
        "ttft p99",
        "RSS MiB"
    );
    let mut table: Vec<(Batching, usize, f64)> = Vec::new();
    let mut engine_rows: Vec<(Batching, usize, Vec<f64>)> = Vec::new();
    for &batching in modes {
        let config = ServeConfig {
            model_name: "base".into(),
            max_batch: args.max_batch,
            prefill_chunk: args.prefill_chunk,
            batching,
            max_queue: 4096,
            ..ServeConfig::default()
        };
        let ramole = match written.take() {
            Some(ramole) => ramole,
            None => load_ramole(&args, &model, &pool_dir)?,
        };
        let server = Background::start(Server::new(ramole, config)?)?;
        // One request first: the first forward pass allocates what the others reuse.
        let warm = Load { clients: 1, requests_per_client: 1, requests: requests[..1].to_vec(), api_key: None };
        check(&run_load(server.addr(), &warm))?;
        for &clients in &args.clients {
            let load = Load {
                clients,
                requests_per_client: args.requests_per_client,
                requests: requests.clone(),
                api_key: None,
            };
            reset_peak_memory();
            let before = engine_time(&fetch_metrics(server.addr(), None)?);
            let report = run_load(server.addr(), &load);
            check(&report)?;
            let after = engine_time(&fetch_metrics(server.addr(), None)?);
            let spent: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let rss = process_memory().map_or_else(|| "-".into(), |m| format!("{:.0}", m.peak as f64 / 1048576.0));
            let q = |v: Option<f64>| v.map_or_else(|| "-".into(), |s| format!("{s:.2}"));
            println!(
                "{:<10} {:>7} {:>8} {:>7} {:>8.1} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>9}",
                mode_name(batching),
                clients,
                report.samples.len(),
                report.completion_tokens(),
                report.wall_secs,
                report.tokens_per_sec(),
                q(report.latency(0.5)),
                q(report.latency(0.99)),
                q(report.ttft(0.5)),
                q(report.ttft(0.99)),
                rss
            );
            table.push((batching, clients, report.tokens_per_sec()));
            engine_rows.push((batching, clients, spent));
        }
        server.stop()?;
    }
    for &clients in &args.clients {
        let of = |b: Batching| table.iter().find(|(m, c, _)| *m == b && *c == clients).map(|t| t.2);
        if let (Some(c), Some(s)) = (of(Batching::Continuous), of(Batching::Static))
            && s > 0.0
        {
            println!("{clients} client(s): continuous / static throughput = {:.2}", c / s);
        }
    }
    println!(
        "RSS MiB: the process's peak resident memory during the round (server, model, clients), from /proc/self/status"
    );
    println!("\nwhere the engine's time went (from /metrics):");
    println!(
        "{:<10} {:>7} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>8}",
        "batching", "clients", "prefills", "prompt tok", "prefill s", "steps", "rows/step", "decode s", "lora s"
    );
    for (batching, clients, t) in &engine_rows {
        let [passes, tokens, prefill, steps, rows, decode, lora] = [0, 1, 2, 3, 4, 5, 6].map(|i| t[i]);
        println!(
            "{:<10} {:>7} {:>9} {:>10} {:>10.1} {:>9} {:>10.1} {:>10.1} {:>8.2}",
            mode_name(*batching),
            clients,
            passes,
            tokens,
            prefill,
            steps,
            if steps > 0.0 { rows / steps } else { 0.0 },
            decode,
            lora
        );
    }
    Ok(())
}

/// The engine's cumulative counters: prefill passes, prompt tokens, prefill seconds, decoding steps,
/// decoded rows, decoding seconds, LoRA-state seconds.
fn engine_time(metrics: &str) -> Vec<f64> {
    [
        "ramole_prefill_passes_total",
        "ramole_prefill_tokens_total",
        "ramole_prefill_seconds_total",
        "ramole_decode_steps_total",
        "ramole_decode_rows_total",
        "ramole_decode_seconds_total",
        "ramole_lora_state_seconds_total",
    ]
    .iter()
    .map(|name| metric(metrics, name).unwrap_or(0.0))
    .collect()
}

/// Restarts the peak of the process's resident memory (Linux: `/proc/self/clear_refs`), so that each
/// round reports its own; elsewhere the peak is the process's so far.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mode_name(b: Batching) -> &'static str {
    match b {
        Batching::Continuous => "continuous",
        Batching::Static => "static",
    }
}

/// Fails on the first failed request of a load.
fn check(report: &LoadReport) -> anyhow::Result<()> {
    match report.failures.first() {
        Some((client, k, e)) => anyhow::bail!("client {client}, request {k} failed: {e}"),
        None => Ok(()),
    }
}

fn adapter_name(i: usize) -> String {
    format!("bench_{i:02}")
}

/// Writes `--adapters` synthetic adapters into a new pool in `dir`, each with one sample, and returns
/// the pipeline over it (the model and encoder that wrote it, loaded once).
fn write_pool(args: &Args, model: &Path, dir: &Path) -> anyhow::Result<Ramole<Selected>> {
    let engine = super::engine::load(model, None, args.model_weights)?;
    let (_, encoder) = super::engine::load_encoder::<Selected>(args.encoder.as_deref())?;
    let (mut pool, _) = LoraPool::create(dir).with_context(|| format!("creating a pool in {}", dir.display()))?;
    for i in 0..args.adapters {
        let name = adapter_name(i);
        let path = dir.join("adapters").join(&name);
        let spec = SyntheticAdapter {
            r: args.rank,
            alpha: 2.0 * args.rank as f64,
            targets: vec![LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O],
            amplitude: 0.02,
            seed: i as u64,
        };
        spec.write(&path, engine.config()).with_context(|| format!("writing adapter {}", path.display()))?;
        pool.add(&name, Some(&path), &[format!("benchmark task {i}")], &encoder)
            .with_context(|| format!("adding {name} to the pool"))?;
    }
    servable(engine, encoder, pool)
}

/// The pipeline over the benchmark's pool, loaded again (a server consumes the one it serves).
fn load_ramole(args: &Args, model: &Path, pool_dir: &Path) -> anyhow::Result<Ramole<Selected>> {
    let engine = super::engine::load(model, None, args.model_weights)?;
    let (_, encoder) = super::engine::load_encoder::<Selected>(args.encoder.as_deref())?;
    let (pool, skipped) = LoraPool::open(pool_dir).with_context(|| format!("opening {}", pool_dir.display()))?;
    anyhow::ensure!(skipped.is_empty(), "pool entries skipped: {skipped:?}");
    servable(engine, encoder, pool)
}

/// The pipeline, every adapter of the pool served.
fn servable(
    engine: ramole_batch::Engine<Selected>,
    encoder: ramole_retriever::SentenceEncoder<Selected>,
    pool: LoraPool,
) -> anyhow::Result<Ramole<Selected>> {
    let (ramole, unservable) = Ramole::new(engine, encoder, pool)?;
    anyhow::ensure!(unservable.is_empty(), "adapters not servable: {unservable:?}");
    Ok(ramole)
}
