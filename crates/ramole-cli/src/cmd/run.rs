//! `ramole run`: every input retrieves its LoRAs from the pool, is composed by the strategy, and runs
//! in heterogeneous batches; prints each answer with its routing.

use std::path::PathBuf;

use anyhow::Context;
use ramole_core::backend::{self, Selected};
use ramole_core::lora::ArrowParams;
use ramole_pipeline::{Job, Ramole, RouteConfig, Strategy, Weighting};

/// The pool, model and encoder a routed command serves with (shared by `run`, `eval` and
/// `generate --route`).
#[derive(Debug, Clone, clap::Args)]
pub struct PoolArgs {
    /// The LoRA pool [default: the zoo shipped with the project].
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct, fetched into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub model_weights: super::engine::ModelWeights,
    /// The retriever's sentence encoder [default: the trained retriever (all-MiniLM-L6-v2 + the project's LoRA);
    /// `base`: the untrained all-MiniLM-L6-v2; or a folder: a sentence-transformers encoder, or an encoder adapter
    /// from `ramole train-retriever`].
    #[arg(long)]
    pub encoder: Option<PathBuf>,
}

/// The RouterLoRA gate (shared by `run` and `eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct GateArgs {
    /// A RouterLoRA gate folder written by `ramole train-gate`, which `--strategy gate` needs.
    #[arg(long)]
    pub gate: Option<PathBuf>,
}

impl GateArgs {
    /// Refuses `--strategy gate` without `--gate`, before anything loads.
    pub fn check(&self, strategy: Strategy) -> anyhow::Result<()> {
        anyhow::ensure!(
            strategy != Strategy::Gate || self.gate.is_some(),
            "--strategy gate needs --gate DIR (a RouterLoRA gate trained by `ramole train-gate`)"
        );
        Ok(())
    }
}

/// How inputs are routed (shared by `run` and `generate --route`).
#[derive(Debug, Clone, clap::Args)]
pub struct RouteArgs {
    /// How the retrieved LoRAs are used.
    #[arg(long, value_enum, default_value_t = StrategyArg::Mixture)]
    pub strategy: StrategyArg,
    /// LoRAs retrieved per input (1–64).
    #[arg(long, default_value_t = 3, value_parser = super::args::usize_in(1, 64))]
    pub top_k: usize,
    /// Weights of a mixture or fusion: `uniform` (1/k, as LoraRetriever) or `softmax` of the cosine
    /// scores divided by --temperature.
    #[arg(long, value_enum, default_value_t = WeightsArg::Uniform)]
    pub weights: WeightsArg,
    /// Softmax temperature for `--weights softmax`.
    #[arg(long, default_value_t = 0.1, value_parser = super::args::positive_f64)]
    pub temperature: f64,
    /// `--strategy arrow`: LoRAs kept per token among the retrieved top-k (1–64).
    #[arg(long, default_value_t = 2, value_parser = super::args::usize_in(1, 64))]
    pub arrow_top_k: usize,
    /// `--strategy arrow`: softmax temperature of the kept scores.
    #[arg(long, default_value_t = 1.0, value_parser = super::args::positive_f64)]
    pub arrow_temperature: f64,
}

impl RouteArgs {
    /// The routing configuration.
    pub fn config(&self) -> RouteConfig {
        RouteConfig {
            strategy: self.strategy.into(),
            top_k: self.top_k,
            weighting: match self.weights {
                WeightsArg::Uniform => Weighting::Uniform,
                WeightsArg::Softmax => Weighting::Softmax { temperature: self.temperature as f32 },
            },
            arrow: ArrowParams { top_k: self.arrow_top_k, temperature: self.arrow_temperature as f32 },
        }
    }
}

/// `--strategy` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StrategyArg {
    /// The base model alone.
    Base,
    /// The top-1 retrieved LoRA.
    Selection,
    /// A weighted mixture of the top-k LoRAs' outputs.
    Mixture,
    /// The top-k LoRAs' parameters averaged.
    Fusion,
    /// Arrow: per token, the best --arrow-top-k of the top-k LoRAs, softmax-weighted (training-free).
    Arrow,
    /// RouterLoRA: per token and layer, the top-k LoRAs weighted by the trained gate of --gate.
    Gate,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Base => Strategy::Base,
            StrategyArg::Selection => Strategy::Selection,
            StrategyArg::Mixture => Strategy::Mixture,
            StrategyArg::Fusion => Strategy::Fusion,
            StrategyArg::Arrow => Strategy::Arrow,
            StrategyArg::Gate => Strategy::Gate,
        }
    }
}

/// `--weights` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WeightsArg {
    /// 1/k each.
    Uniform,
    /// Softmax of the cosine scores.
    Softmax,
}

/// Arguments of `ramole run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The inputs, JSONL: strings, or objects with `input` (and optionally `max_new_tokens`).
    #[arg(long)]
    pub requests: PathBuf,
    /// Pool, model, encoder.
    #[command(flatten)]
    pub pool: PoolArgs,
    /// The gate for `--strategy gate`.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Routing.
    #[command(flatten)]
    pub route: RouteArgs,
    /// Inputs per heterogeneous batch (1–256).
    #[arg(long, default_value_t = 16, value_parser = super::args::usize_in(1, 256))]
    pub batch_size: usize,
    /// Most tokens generated per input when the input does not say (0–4096).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(0, 4096))]
    pub max_new_tokens: usize,
    /// One JSON object per line: `{"input", "output", "strategy", "routing": [{"lora", "score", "weight"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// The shipped zoo's pool (`zoo/pool` of the repository).
pub fn shipped_pool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../zoo/pool")
}

/// Opens the pool, loads the model with the pool's adapters (and `gate`, if given) and the encoder;
/// warns about entries that cannot be served.
pub fn load(args: &PoolArgs, gate: Option<&std::path::Path>) -> anyhow::Result<Ramole<Selected>> {
    let dir = args.pool.clone().unwrap_or_else(shipped_pool);
    let (pool, skipped) =
        ramole_retriever::LoraPool::open(&dir).with_context(|| format!("opening the pool in {}", dir.display()))?;
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    let model = super::engine::model_path(args.model.clone())?;
    let mut engine = super::engine::load(&model, None, args.model_weights)?;
    if let Some(dir) = gate {
        let gate = ramole_mole::RouterGate::load(dir, engine.config(), &ramole_core::backend::device())
            .with_context(|| format!("loading the gate in {}", dir.display()))?;
        engine.set_gate(Some(gate));
    }
    let (_, encoder) = super::engine::load_encoder::<Selected>(args.encoder.as_deref())?;
    let (ramole, unservable) = Ramole::new(engine, encoder, pool)?;
    for u in &unservable {
        eprintln!("warning: LoRA `{}` is not served: {}", u.lora, u.reason);
    }
    Ok(ramole)
}

/// The routing of an answer as JSON.
pub fn routing_json(routing: &ramole_pipeline::Routing) -> serde_json::Value {
    serde_json::Value::Array(
        routing
            .loras
            .iter()
            .map(|l| serde_json::json!({"lora": l.lora, "score": l.score, "weight": l.weight}))
            .collect(),
    )
}

/// Prints an answer for people: the input, the output, the routing.
pub fn print_answer(input: &str, answer: &ramole_pipeline::Answer) {
    let shown: String = input.chars().take(120).collect();
    let more = if shown.len() < input.len() { "…" } else { "" };
    println!("> {}{more}", shown.replace('\n', " "));
    println!("  {}", answer.output.trim());
    let routing: Vec<String> = answer
        .routing
        .loras
        .iter()
        .map(|l| match l.score {
            Some(s) => format!("{} (cos {s:.3}, w {:.2})", l.lora, l.weight),
            None => format!("{} (w {:.2})", l.lora, l.weight),
        })
        .collect();
    let routing = if routing.is_empty() { "base model".to_string() } else { routing.join(", ") };
    println!("  [{}: {routing}]", answer.routing.strategy);
}

/// Runs `ramole run`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let jobs = Job::read_jsonl(&args.requests, args.max_new_tokens)?;
    let cfg = args.route.config();
    cfg.validate()?;
    args.gate.check(cfg.strategy)?;
    let ramole = load(&args.pool, args.gate.gate.as_deref())?;
    let start = std::time::Instant::now();
    let answers = ramole.run(&jobs, &cfg, args.batch_size)?;
    let secs = start.elapsed().as_secs_f64();
    let mut failed = 0;
    for (job, answer) in jobs.iter().zip(&answers) {
        match answer {
            Ok(a) if args.json => println!(
                "{}",
                serde_json::json!({"input": job.input, "output": a.output, "strategy": a.routing.strategy.name(),
                                   "routing": routing_json(&a.routing)})
            ),
            Ok(a) => print_answer(&job.input, a),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    let tokens: usize = answers.iter().flatten().map(|a| a.new_tokens.len()).sum();
    eprintln!(
        "{} input(s) routed ({}, top {} of the pool's {} LoRAs) and answered in {secs:.1} s ({tokens} tokens, backend {}); {failed} failed",
        jobs.len(),
        cfg.strategy,
        cfg.top_k,
        ramole.servable().len(),
        backend::NAME,
    );
    anyhow::ensure!(failed == 0, "{failed} input(s) failed");
    Ok(())
}
