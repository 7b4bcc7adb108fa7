//! `ramole`: the command-line front end of RAMoLE-rs (thin: parsing and printing only).

use clap::{Parser, Subcommand};

mod cmd;

/// Retrieval-augmented mixture of LoRA experts.
#[derive(Parser)]
#[command(name = "ramole", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch (and verify) the real models and data into the cache.
    Fetch(cmd::fetch::Args),
    /// Generate text with the base model (optionally with adapters).
    Generate(cmd::generate::Args),
    /// RAMoLE: route every input through the pool (retrieval + composition) and answer them in batches.
    Run(cmd::run::Args),
    /// The paper's comparison: base, perfect selection, selection, mixture, fusion, arrow (and the gate of --gate); IID and OOD.
    Eval(cmd::eval::Args),
    /// Run every request of a file in one heterogeneous batch; write logits and greedy tokens.
    Batch(cmd::batch::Args),
    /// Decode throughput of a batch without and with per-row adapters (figures, not a test).
    BenchDecode(cmd::bench_decode::Args),
    /// The server under load over loopback: throughput, latency and time to first token, continuous vs static batching (figures, not a test).
    BenchServe(cmd::bench_serve::Args),
    /// LoRA training throughput, ours beside PEFT's on the same data and configuration (figures, not a test).
    BenchTrain(cmd::bench_train::Args),
    /// The BIG-bench task suite (`ramole tasks build`).
    Tasks(cmd::tasks::Args),
    /// Retrieval accuracy on the task suite, IID and OOD.
    EvalRetrieval(cmd::eval_retrieval::Args),
    /// Contrastive fine-tuning of the retriever's encoder on the suite's training tasks.
    TrainRetriever(cmd::train_retriever::Args),
    /// RAMoLE's RouterLoRA gate, trained on the suite's training tasks over a pool's LoRAs.
    TrainGate(cmd::train_gate::Args),
    /// The LoRA zoo: one LoRA per suite task, registered in a pool (`ramole zoo build`).
    Zoo(cmd::zoo::Args),
    /// Train a LoRA adapter on `{input, target}` records (frozen base, burn autodiff); saves a PEFT folder.
    TrainLora(cmd::train_lora::Args),
    /// Sentence embeddings of texts (all-MiniLM-L6-v2), written as safetensors.
    Embed(cmd::embed::Args),
    /// The LoRA pool: add, remove, list.
    Pool(cmd::pool::Args),
    /// The top-k LoRAs of the pool for each input.
    Retrieve(cmd::retrieve::Args),
    /// OpenAI-compatible HTTP server: every request routed through the pool, continuous batching, adapters added while serving.
    Serve(cmd::serve::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Batch(a) => cmd::batch::run(a),
        Command::BenchDecode(a) => cmd::bench_decode::run(a),
        Command::BenchServe(a) => cmd::bench_serve::run(a),
        Command::BenchTrain(a) => cmd::bench_train::run(a),
        Command::Tasks(a) => cmd::tasks::run(a),
        Command::EvalRetrieval(a) => cmd::eval_retrieval::run(a),
        Command::TrainRetriever(a) => cmd::train_retriever::run(a),
        Command::TrainLora(a) => cmd::train_lora::run(a),
        Command::TrainGate(a) => cmd::train_gate::run(a),
        Command::Zoo(a) => cmd::zoo::run(a),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Pool(a) => cmd::pool::run(a),
        Command::Retrieve(a) => cmd::retrieve::run(a),
        Command::Serve(a) => cmd::serve::run(a),
    }
}
