//! `ramole generate`: text generation with the base model (and optionally adapters).

use std::path::PathBuf;

use anyhow::Context;
use ramole_batch::{Request, RequestInput, RunOptions, Sampling};
use ramole_core::lora::Composition;
use ramole_models::tokenizer::chatml_prompt;
use ramole_mole::RowRequest;

/// Arguments of `ramole generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub model_weights: super::engine::ModelWeights,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the ChatML template (`<|im_start|>user … <|im_start|>assistant`).
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (generation also stops at end-of-sequence); 1 to 65536, and the
    /// prompt plus these must fit the model's context.
    #[arg(long, default_value_t = 128, value_parser = super::args::usize_in(1, 65536))]
    pub max_new_tokens: usize,
    /// Sampling temperature, a finite number ≥ 0; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0, value_parser = super::args::non_negative_f32)]
    pub temperature: f32,
    /// Nucleus (top-p) mass for sampling, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = super::args::unit_f32)]
    pub top_p: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder of PEFT adapters (one per sub-folder).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Adapter to apply, as NAME or NAME:WEIGHT (repeat for a mixture).
    #[arg(long = "use", value_name = "NAME[:WEIGHT]")]
    pub use_adapters: Vec<String>,
    /// How several adapters combine.
    #[arg(long, value_enum, default_value_t = CompositionArg::Mixture)]
    pub composition: CompositionArg,
    /// RAMoLE: retrieve the prompt's LoRAs from the pool and compose them by --strategy (instead of
    /// --adapters/--use).
    #[arg(long, conflicts_with_all = ["adapters", "use_adapters"])]
    pub route: bool,
    /// The LoRA pool for --route [default: the zoo shipped with the project].
    #[arg(long, requires = "route")]
    pub pool: Option<PathBuf>,
    /// The retriever's sentence encoder for --route [default: the trained retriever (all-MiniLM-L6-v2 + the project's
    /// LoRA); `base`: the untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder
    /// adapter from `ramole train-retriever`].
    #[arg(long, requires = "route")]
    pub encoder: Option<PathBuf>,
    /// A RouterLoRA gate folder (`ramole train-gate`), which `--route --strategy gate` needs.
    #[arg(long, requires = "route")]
    pub gate: Option<PathBuf>,
    /// How --route uses the retrieved LoRAs.
    #[arg(long, value_enum, default_value_t = super::run::StrategyArg::Mixture)]
    pub strategy: super::run::StrategyArg,
    /// LoRAs retrieved by --route (1–64).
    #[arg(long, default_value_t = 3, value_parser = super::args::usize_in(1, 64))]
    pub top_k: usize,
    /// Weights of a routed mixture or fusion: uniform (1/k) or a softmax of the cosine scores.
    #[arg(long, value_enum, default_value_t = super::run::WeightsArg::Uniform)]
    pub weights: super::run::WeightsArg,
    /// Softmax temperature of `--weights softmax`.
    #[arg(long, default_value_t = 0.1, value_parser = super::args::positive_f64)]
    pub weight_temperature: f64,
    /// With --route --strategy arrow: LoRAs kept per token among the retrieved top-k (1–64).
    #[arg(long, default_value_t = 2, value_parser = super::args::usize_in(1, 64))]
    pub arrow_top_k: usize,
    /// With --route --strategy arrow: softmax temperature of the kept scores.
    #[arg(long, default_value_t = 1.0, value_parser = super::args::positive_f64)]
    pub arrow_temperature: f64,
}

/// `--composition` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompositionArg {
    /// Weighted sum of adapter outputs.
    Mixture,
    /// Weighted average of adapter parameters.
    Fusion,
}

/// Parses `NAME[:WEIGHT]`.
pub fn parse_use(spec: &str) -> anyhow::Result<(String, f32)> {
    match spec.rsplit_once(':') {
        Some((name, w)) => Ok((name.to_string(), w.parse().with_context(|| format!("weight of `{spec}`"))?)),
        None => Ok((spec.to_string(), 1.0)),
    }
}

/// Runs `ramole generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.temperature >= 0.0, "--temperature must be >= 0");
    anyhow::ensure!(args.top_p > 0.0 && args.top_p <= 1.0, "--top-p must be in (0, 1]");
    let prompt = if args.chat { chatml_prompt(&args.prompt) } else { args.prompt.clone() };
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP { temperature: args.temperature, top_p: args.top_p, seed: args.seed }
    };
    if args.route {
        // The retriever sees the user's text; the model sees the (possibly templated) prompt.
        let pool = super::run::PoolArgs {
            pool: args.pool.clone(),
            model: args.model.clone(),
            model_weights: args.model_weights,
            encoder: args.encoder.clone(),
        };
        let gate = super::run::GateArgs { gate: args.gate.clone() };
        let route = super::run::RouteArgs {
            strategy: args.strategy,
            top_k: args.top_k,
            weights: args.weights,
            temperature: args.weight_temperature,
            arrow_top_k: args.arrow_top_k,
            arrow_temperature: args.arrow_temperature,
        }
        .config();
        route.validate()?;
        gate.check(route.strategy)?;
        let ramole = super::run::load(&pool, gate.gate.as_deref())?;
        let routing =
            ramole.route(std::slice::from_ref(&args.prompt), &route, &[])?.into_iter().next().context("no routing")?;
        let request = Request {
            name: "prompt".into(),
            input: RequestInput::Prompt(prompt),
            row: routing.row_request(),
            max_new_tokens: args.max_new_tokens,
            sampling,
        };
        let answer = generate(ramole.engine(), &request)?;
        let routing: Vec<String> = routing
            .loras
            .iter()
            .map(|l| format!("{} (cos {:.3}, w {:.2})", l.lora, l.score.unwrap_or(f32::NAN), l.weight))
            .collect();
        eprintln!(
            "[{}: {}]",
            route.strategy,
            if routing.is_empty() { "base model".into() } else { routing.join(", ") }
        );
        println!("{answer}");
        return Ok(());
    }
    let model = super::engine::model_path(args.model)?;
    let engine = super::engine::load(&model, args.adapters.as_deref(), args.model_weights)?;
    let adapters = args.use_adapters.iter().map(|s| parse_use(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let composition = match (adapters.len(), args.composition) {
        (0 | 1, _) => Composition::Single,
        (_, CompositionArg::Mixture) => Composition::Mixture,
        (_, CompositionArg::Fusion) => Composition::Fusion,
    };
    let request = Request {
        name: "prompt".into(),
        input: RequestInput::Prompt(prompt),
        row: RowRequest { adapters, composition },
        max_new_tokens: args.max_new_tokens,
        sampling,
    };
    println!("{}", generate(&engine, &request)?);
    Ok(())
}

/// Runs one request; returns its text and reports the speed on stderr.
fn generate(
    engine: &ramole_batch::Engine<ramole_core::backend::Selected>,
    request: &Request,
) -> anyhow::Result<String> {
    let start = std::time::Instant::now();
    let out = engine.run(std::slice::from_ref(request), RunOptions::default());
    let out = out.into_iter().next().context("no output")??;
    let secs = start.elapsed().as_secs_f64();
    let text = engine.decode(&out.new_tokens)?.trim_end().to_string();
    eprintln!(
        "[{} prompt + {} new tokens in {secs:.2} s, {:.1} tok/s, backend {}]",
        out.prompt_ids.len(),
        out.new_tokens.len(),
        out.new_tokens.len() as f64 / secs,
        ramole_core::backend::NAME
    );
    Ok(text)
}
