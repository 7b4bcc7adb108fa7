//! `ramole serve`: the OpenAI-compatible server (ramole-server) over a pool, a model and an encoder.

use std::time::Duration;

use anyhow::Context;
use ramole_server::{ServeConfig, Server};

use super::run::{GateArgs, PoolArgs, RouteArgs};

/// Arguments of `ramole serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pool, model, encoder.
    #[command(flatten)]
    pub pool: PoolArgs,
    /// The gate for the `gate` strategy and composition.
    #[command(flatten)]
    pub gate: GateArgs,
    /// How `model: "ramole"` routes, unless a request says otherwise.
    #[command(flatten)]
    pub route: RouteArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Most rows in the running batch (1–1024).
    #[arg(long, default_value_t = 32, value_parser = super::args::usize_in(1, 1024))]
    pub max_batch: usize,
    /// Most prompt tokens prefilled per step (1–65536): a longer prompt is prefilled over several
    /// steps, the running rows decoding between them.
    #[arg(long, default_value_t = ramole_batch::DEFAULT_PREFILL_CHUNK, value_parser = super::args::usize_in(1, 65_536))]
    pub prefill_chunk: usize,
    /// Most requests waiting for a row; more get 429 (0–100000).
    #[arg(long, default_value_t = 256, value_parser = super::args::usize_in(0, 100_000))]
    pub max_queue: usize,
    /// Most adapters kept loaded (least recently used unloaded first; the others load on demand).
    #[arg(long, value_parser = super::args::usize_in(1, 1_000_000))]
    pub max_resident_adapters: Option<usize>,
    /// Bearer token that every request but `/health` must carry [default: `$RAMOLE_API_KEY`]. A key on the
    /// command line is visible to other users of the machine (`ps`): prefer `--api-key-file` or the variable.
    #[arg(long, env = "RAMOLE_API_KEY", hide_env_values = true, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// A file holding the bearer token (its first line, surrounding whitespace removed).
    #[arg(long)]
    pub api_key_file: Option<std::path::PathBuf>,
    /// A folder under which `POST /v1/adapters {"path"}` may register adapters already on the server
    /// (repeatable; symbolic links may not lead out). Without one, registration by path is off and adapters
    /// arrive only as uploaded files.
    #[arg(long = "adapter-root")]
    pub adapter_roots: Vec<std::path::PathBuf>,
    /// Most samples an uploaded adapter may carry (1–1000000; more: 413). They are embedded off the engine's
    /// thread, but still take CPU time and memory.
    #[arg(long, default_value_t = ramole_server::DEFAULT_MAX_SAMPLES_PER_LORA, value_parser = super::args::usize_in(1, 1_000_000))]
    pub max_samples_per_lora: usize,
    /// Longest a request may take, queueing included, in seconds (1–86400).
    #[arg(long, default_value_t = 300, value_parser = super::args::usize_in(1, 86_400))]
    pub request_timeout: usize,
    /// Largest request body in MiB, adapter uploads included (1–4096).
    #[arg(long, default_value_t = 64, value_parser = super::args::usize_in(1, 4096))]
    pub max_body_mib: usize,
    /// `max_tokens` when a request does not say (1–32768).
    #[arg(long, default_value_t = 256, value_parser = super::args::usize_in(1, 32_768))]
    pub default_max_tokens: usize,
    /// The base model's name in the API [default: SmolLM2-135M-Instruct, or the --model file's or folder's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
}

/// Runs `ramole serve` until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let route = args.route.config();
    route.validate()?;
    args.gate.check(route.strategy)?;
    let model = super::engine::model_path(args.pool.model.clone())?;
    let model_name = match (&args.served_model_name, &args.pool.model) {
        (Some(name), _) => name.clone(),
        // The default model: its Hub name without the organisation.
        (None, None) => super::engine::DEFAULT_MODEL_ID.rsplit('/').next().unwrap_or("base").to_string(),
        (None, Some(_)) => model.file_stem().map_or_else(|| "base".into(), |s| s.to_string_lossy().into_owned()),
    };
    let api_key = match &args.api_key_file {
        Some(file) => {
            let text = ramole_core::fs::read_text(file, 64 << 10)
                .with_context(|| format!("--api-key-file {}", file.display()))?;
            let key = text.lines().next().unwrap_or_default().trim().to_string();
            anyhow::ensure!(!key.is_empty(), "--api-key-file {}: the file holds no key", file.display());
            Some(key)
        }
        None => args.api_key.clone().filter(|k| !k.is_empty()),
    };
    let loopback = args.host == "localhost" || args.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if api_key.is_none() && !loopback {
        eprintln!(
            "warning: serving on {} without an API key: anyone who reaches this address can generate and change \
             the adapter pool (give --api-key-file FILE or set RAMOLE_API_KEY)",
            args.host
        );
    }
    let mut ramole = super::run::load(&args.pool, args.gate.gate.as_deref())?;
    ramole.set_max_resident(args.max_resident_adapters);
    let config = ServeConfig {
        model_name: model_name.clone(),
        max_batch: args.max_batch,
        prefill_chunk: args.prefill_chunk,
        batching: ramole_server::Batching::Continuous,
        max_queue: args.max_queue,
        api_key: api_key.clone(),
        request_timeout: Duration::from_secs(args.request_timeout as u64),
        max_body_bytes: args.max_body_mib << 20,
        default_max_tokens: args.default_max_tokens,
        route,
        adapter_roots: args.adapter_roots.clone(),
        max_samples_per_lora: args.max_samples_per_lora,
    };
    let adapters = ramole.servable().len();
    let server = Server::new(ramole, config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving {model_name} with {adapters} LoRA(s) on http://{addr}/v1 (model \"ramole\": {} over the top {}; {})",
            route.strategy,
            route.top_k,
            if api_key.is_some() { "API key required" } else { "no API key" }
        );
        server.serve(listener, ramole_server::shutdown_signal()).await?;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}
