#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod api;
pub mod bench;
mod error;
mod metrics;
mod routes;
mod text;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use burn::tensor::backend::Backend;
pub use ramole_batch::Batching;
use ramole_batch::DEFAULT_PREFILL_CHUNK;
use ramole_models::tokenizer::PromptEncoder;
use ramole_pipeline::{Ramole, RouteConfig};
use tokenizers::Tokenizer;

pub use error::ServerError;
pub use metrics::{Metrics, ProcessMemory, process_memory};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The base model's name: `model` = this name is the base model without adapters.
    pub model_name: String,
    /// Most rows in the running batch.
    pub max_batch: usize,
    /// Most prompt tokens prefilled per engine step: a longer prompt is prefilled over several steps,
    /// the running rows decoding between them.
    pub prefill_chunk: usize,
    /// When requests join the running batch: continuous (any step), or static (only an empty batch;
    /// the baseline that `ramole bench-serve` compares with).
    pub batching: Batching,
    /// Most requests waiting for a row; beyond `max_batch + max_queue` accepted requests, 429.
    pub max_queue: usize,
    /// A bearer token every `/v1/*` and `/metrics` request must carry, if set.
    pub api_key: Option<String>,
    /// Longest a request may take, queueing included.
    pub request_timeout: Duration,
    /// Largest request body (bytes); adapter uploads included.
    pub max_body_bytes: usize,
    /// `max_tokens` when a request does not say (at most what the context leaves after the prompt).
    pub default_max_tokens: usize,
    /// How `model: "ramole"` routes (strategy, top-k, weights), unless the request says otherwise.
    pub route: RouteConfig,
    /// Most samples an adapter may be registered with (more: 413): embedding them takes time and memory.
    pub max_samples_per_lora: usize,
    /// Folders under which `POST /v1/adapters {"path"}` may register an adapter already on the server
    /// (symbolic links followed, none may lead out); empty: registration by path is off and adapters
    /// arrive only as uploaded files.
    pub adapter_roots: Vec<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model_name: "base".into(),
            max_batch: 32,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            batching: Batching::Continuous,
            max_queue: 256,
            api_key: None,
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 64 << 20,
            default_max_tokens: 256,
            route: RouteConfig::default(),
            adapter_roots: Vec::new(),
            max_samples_per_lora: DEFAULT_MAX_SAMPLES_PER_LORA,
        }
    }
}

/// [`ServeConfig::max_samples_per_lora`]'s default.
pub const DEFAULT_MAX_SAMPLES_PER_LORA: usize = 1000;

/// Embeds an upload's samples (their mean embedding, as the pool stores it), off the engine's thread.
pub(crate) type Embedder = dyn Fn(&[String]) -> Result<Vec<f32>, String> + Send + Sync;

/// The name of the routed model: `model: "ramole"` routes each request through the pool.
pub const ROUTED_MODEL: &str = "ramole";

/// What the HTTP handlers share.
struct Inner {
    commands: std::sync::mpsc::Sender<worker::Command>,
    shared: Arc<worker::Shared>,
    config: ServeConfig,
    tokenizer: Arc<Tokenizer>,
    /// Tokenizes prompts (user text never becomes a control token).
    prompts: Arc<PromptEncoder>,
    /// Embeds uploads' samples with the pool's encoder and instruction (a copy of the encoder, used by one
    /// upload at a time, so the engine never waits for an upload).
    embedder: Arc<Embedder>,
    eos: Arc<[u32]>,
    /// The model's context (prompt plus new tokens).
    context: usize,
    /// Whether a RouterLoRA gate is loaded (the `gate` composition and strategy need it).
    has_gate: bool,
    /// How the model's weights are held (`dense`, `quantized`, `quantized-int8`): reported in `/v1/models`
    /// and in every answer's usage, since it decides the answers' arithmetic.
    weights: &'static str,
    pool_dir: PathBuf,
    in_flight: AtomicUsize,
    /// Numbers request ids and upload folders.
    counter: AtomicUsize,
}

/// A server ready to accept connections: its routes and its engine's thread.
pub struct Server {
    router: axum::Router,
    worker: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Starts the engine's thread over `ramole` (model, adapters, encoder, pool) and builds the
    /// routes. Fails when the model has no tokenizer (the API speaks text) or the configuration
    /// cannot work.
    pub fn new<B: Backend>(ramole: Ramole<B>, config: ServeConfig) -> Result<Self, ServerError>
    where
        Ramole<B>: Send + 'static,
    {
        let mut config = config;
        config.route.validate().map_err(|e| ServerError::Setup(e.to_string()))?;
        for root in &mut config.adapter_roots {
            *root = std::fs::canonicalize(&*root)
                .map_err(|e| ServerError::Setup(format!("adapter root {}: {e}", root.display())))?;
        }
        if config.max_batch == 0 {
            return Err(ServerError::Setup("--max-batch must be at least 1".into()));
        }
        if config.model_name == ROUTED_MODEL {
            return Err(ServerError::Setup(format!("the base model cannot be called `{ROUTED_MODEL}`")));
        }
        let tokenizer = ramole
            .engine()
            .tokenizer()
            .cloned()
            .map(Arc::new)
            .ok_or_else(|| ServerError::Setup("the model has no tokenizer: the server needs one".into()))?;
        let prompts = Arc::new(PromptEncoder::new(&tokenizer));
        let encoder = std::sync::Mutex::new(ramole.encoder().clone());
        let instruction = ramole.pool().instruction().to_owned();
        let embedder: Arc<Embedder> = Arc::new(move |samples: &[String]| {
            let encoder = encoder.lock().map_err(|_| "the encoder's lock is poisoned".to_string())?;
            ramole_retriever::pool::mean_embedding(&encoder, &instruction, samples).map_err(|e| e.to_string())
        });
        let eos: Arc<[u32]> = ramole.engine().config().eos_token_ids.clone().into();
        let context = ramole.engine().config().max_position_embeddings;
        let weights = ramole.engine().weight_format().name();
        let has_gate = ramole.engine().gate().is_some();
        let pool_dir = ramole.pool().dir().to_path_buf();
        let adapters = pool_dir.join("adapters");
        std::fs::create_dir_all(&adapters).map_err(|e| ServerError::Setup(format!("{}: {e}", adapters.display())))?;
        // Uploads staged or deleted by a process that died before it finished.
        worker::sweep(&adapters).map_err(|e| ServerError::Setup(format!("{}: {e}", adapters.display())))?;
        let shared = Arc::new(worker::Shared {
            adapters: RwLock::new(Vec::new()),
            quarantined: RwLock::new(Vec::new()),
            metrics: Metrics::default(),
        });
        // Published before the first request can arrive.
        worker::refresh_adapters(&ramole, &shared);
        let (tx, rx) = std::sync::mpsc::channel();
        let limits = worker::Limits {
            max_batch: config.max_batch,
            prefill_chunk: config.prefill_chunk,
            batching: config.batching,
            timeout: config.request_timeout,
        };
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("ramole-engine".into())
            .spawn(move || worker::run(ramole, rx, worker_shared, limits))
            .map_err(|e| ServerError::Setup(format!("starting the engine thread: {e}")))?;
        let inner = Arc::new(Inner {
            commands: tx,
            shared,
            config,
            tokenizer,
            prompts,
            embedder,
            eos,
            context,
            has_gate,
            weights,
            pool_dir,
            in_flight: AtomicUsize::new(0),
            counter: AtomicUsize::new(0),
        });
        Ok(Self { router: routes::router(inner), worker })
    }

    /// The routes, for serving them another way (or testing them without a socket).
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then lets the requests in progress finish
    /// (graceful shutdown) and stops the engine's thread.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Self { router, worker } = self;
        let served = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
        // Every handler is done and the routes are dropped: the engine's command channel closes and
        // its thread ends once nothing is left to run.
        let joined = tokio::task::spawn_blocking(move || worker.join()).await;
        served.map_err(|e| ServerError::Setup(format!("serving: {e}")))?;
        match joined {
            Ok(Ok(())) => Ok(()),
            _ => Err(ServerError::Setup("the engine thread panicked".into())),
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
