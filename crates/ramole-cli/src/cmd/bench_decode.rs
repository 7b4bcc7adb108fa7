//! `ramole bench-decode`: decode throughput of a heterogeneous batch, without and with adapters.

use std::path::PathBuf;

use anyhow::Context;
use ramole_batch::bench::{DecodeBench, run_scenario};

/// Arguments of `ramole bench-decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub model_weights: super::engine::ModelWeights,
    /// Rows in the batch (1 to 256).
    #[arg(long, default_value_t = 16, value_parser = super::args::usize_in(1, 256))]
    pub batch: usize,
    /// Distinct synthetic adapters (rank `--rank` on q/k/v/o; 1 to 256, and `--adapters` × `--rank`
    /// at most 4096).
    #[arg(long, default_value_t = 16, value_parser = super::args::usize_in(1, 256))]
    pub adapters: usize,
    /// Adapters each row mixes in the mixture scenario (1 to 16, at most `--adapters`).
    #[arg(long, default_value_t = 3, value_parser = super::args::usize_in(1, 16))]
    pub mix: usize,
    /// Adapter rank (1 to 256).
    #[arg(long, default_value_t = 8, value_parser = super::args::usize_in(1, 256))]
    pub rank: usize,
    /// Prompt tokens per row (1 to 4096; `--batch` × `--prompt-len`² at most 2²⁶).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(1, 4096))]
    pub prompt_len: usize,
    /// New tokens per row (1 to 4096; `--batch` × (`--prompt-len` + `--new-tokens`) at most 65536).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(1, 4096))]
    pub new_tokens: usize,
    /// Rounds; each round runs the five scenarios back to back (ratios are taken within a round; 1 to 100).
    #[arg(long, default_value_t = 3, value_parser = super::args::usize_in(1, 100))]
    pub rounds: usize,
}

/// The most adapter parameters per layer and linear, `--adapters` × `--rank`: the synthetic adapters
/// of SmolLM2-135M then take about 2 GB, and their per-batch stacks as much again.
const MAX_ADAPTER_RANKS: usize = 4096;
/// The most tokens of KV cache, `--batch` × (`--prompt-len` + `--new-tokens`) (about 3 GB for SmolLM2-135M).
const MAX_BATCH_TOKENS: usize = 1 << 16;
/// The most prefill attention scores per head, `--batch` × `--prompt-len`² (2.4 GB over SmolLM2-135M's
/// 9 heads in f32).
const MAX_PREFILL_SCORES: usize = 1 << 26;

impl Args {
    /// The checks that involve several arguments (each one alone is range-checked by clap). The
    /// bounds keep the benchmark of SmolLM2-135M well inside 24 GB of memory.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.mix <= self.adapters,
            "--mix {} is more than the {} adapters (--adapters)",
            self.mix,
            self.adapters
        );
        anyhow::ensure!(
            self.adapters * self.rank <= MAX_ADAPTER_RANKS,
            "--adapters {} × --rank {} = {} is more than {MAX_ADAPTER_RANKS}: lower one of them",
            self.adapters,
            self.rank,
            self.adapters * self.rank
        );
        let tokens = self.batch * (self.prompt_len + self.new_tokens);
        anyhow::ensure!(
            tokens <= MAX_BATCH_TOKENS,
            "--batch {} × (--prompt-len {} + --new-tokens {}) = {tokens} tokens is more than {MAX_BATCH_TOKENS}",
            self.batch,
            self.prompt_len,
            self.new_tokens
        );
        let scores = self.batch * self.prompt_len * self.prompt_len;
        anyhow::ensure!(
            scores <= MAX_PREFILL_SCORES,
            "--batch {} × --prompt-len {}² = {scores} prefill attention scores is more than {MAX_PREFILL_SCORES}",
            self.batch,
            self.prompt_len
        );
        Ok(())
    }
}

/// Runs `ramole bench-decode`: prints decode tokens/s of (a) no adapters, (b) one distinct adapter per
/// row, (c) a mixture per row, and the ratios (b)/(a) and (c)/(a), per round and as medians.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let model = super::engine::model_path(args.model)?;
    let mut engine = super::engine::load(&model, None, args.model_weights)?;
    let bench = DecodeBench {
        batch: args.batch,
        adapters: args.adapters,
        mix: args.mix,
        prompt_len: args.prompt_len,
        new_tokens: args.new_tokens,
        rank: args.rank,
        ..DecodeBench::default()
    };
    let dir = tempfile::tempdir().context("temporary folder for the synthetic adapters")?;
    bench.load_adapters(&mut engine, dir.path())?;
    let scenarios = bench.scenarios(engine.config().vocab_size);
    println!(
        "model {} | backend {} | batch {} | {} adapters r={} on q,k,v,o | mixture of {} | prompt {} + {} new tokens",
        model.display(),
        ramole_core::backend::NAME,
        bench.batch,
        bench.adapters,
        bench.rank,
        bench.mix,
        bench.prompt_len,
        bench.new_tokens
    );
    // Warm-up round (allocations, caches), not reported.
    for s in &scenarios {
        run_scenario(&engine, s)?;
    }
    let mut ratios: Vec<[f64; 4]> = Vec::new();
    let mut rates: Vec<[f64; 5]> = Vec::new();
    for round in 1..=args.rounds {
        let mut tps = [0.0; 5];
        for (i, s) in scenarios.iter().enumerate() {
            let stats = run_scenario(&engine, s)?;
            tps[i] = stats.decode_tokens_per_sec();
            println!(
                "round {round} {:>8}: decode {:7.1} tok/s ({} steps, {:.2} s) | prefill {:.3} s | LoRA build {:.3} s",
                s.label, tps[i], stats.decode_steps, stats.decode_secs, stats.prefill_secs, stats.lora_secs
            );
        }
        ratios.push([tps[1] / tps[0], tps[2] / tps[0], tps[3] / tps[2], tps[4] / tps[2]]);
        rates.push(tps);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = |i: usize| median(rates.iter().map(|r| r[i]).collect());
    println!(
        "median decode tok/s: base {:.1} | distinct {:.1} | mixture {:.1} | arrow {:.1} | gate {:.1}",
        m(0),
        m(1),
        m(2),
        m(3),
        m(4)
    );
    println!(
        "median ratio to base: distinct {:.3} | mixture {:.3}; to mixture: arrow {:.3} | gate {:.3}",
        median(ratios.iter().map(|r| r[0]).collect()),
        median(ratios.iter().map(|r| r[1]).collect()),
        median(ratios.iter().map(|r| r[2]).collect()),
        median(ratios.iter().map(|r| r[3]).collect())
    );
    Ok(())
}
