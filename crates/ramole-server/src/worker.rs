//! The engine's thread: it owns the pipeline (model, adapters, encoder, pool) and the continuous
//! batching scheduler, takes commands between steps, and sends each request its tokens.
//!
//! Everything that changes the pool or the engine happens here, between two steps, so a request
//! never sees an adapter half-loaded, and the HTTP side never touches a tensor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use ramole_batch::{Batching, Event, FinishReason, Request, RequestInput, Sampling, Scheduler, SequenceId};
use ramole_core::lora::Composition;
use ramole_pipeline::{PipelineError, Ramole, RouteConfig, RoutedLora, Routing, Strategy};
use ramole_retriever::RetrieverError;
use tokio::sync::{mpsc, oneshot};

use crate::{Metrics, ServerError};

/// Which adapters a request runs with.
#[derive(Debug, Clone)]
pub enum Target {
    /// The base model.
    Base,
    /// One adapter.
    Adapter(String),
    /// RAMoLE: retrieval over the pool, composed by the configuration's strategy.
    Route(RouteConfig),
    /// Adapters and weights chosen by the client.
    Explicit {
        /// `(name, weight)`.
        adapters: Vec<(String, f32)>,
        /// How they combine.
        composition: Composition,
    },
}

/// A generation request, ready for the engine.
#[derive(Debug)]
pub struct Job {
    /// The model's input as token ids (of the ChatML prompt for chat).
    pub prompt: Vec<u32>,
    /// What the retriever reads (the prompt, or the last user message).
    pub query: String,
    /// Which adapters.
    pub target: Target,
    /// Most new tokens.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampling: Sampling,
    /// When it must be done.
    pub deadline: Instant,
    /// When it arrived.
    pub arrived: Instant,
}

/// What the engine sends back for a generation request, in order: `Admitted`, then `Token`s, then
/// `Finished` (or an `Error` at any point).
#[derive(Debug)]
pub enum Reply {
    /// It joined the queue, with this routing and prompt length.
    Admitted {
        /// The LoRAs it uses.
        routing: Vec<RoutedLora>,
    },
    /// A generated token.
    Token(u32),
    /// Done.
    Finished(FinishReason),
    /// Failed.
    Error(ServerError),
}

/// A registered adapter, as `GET /v1/adapters` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterInfo {
    /// Its name (the `model` that selects it).
    pub name: String,
    /// Its adapter folder.
    pub path: Option<PathBuf>,
    /// Samples its embedding is the mean of.
    pub samples: usize,
}

/// A command for the engine's thread.
#[derive(Debug)]
pub enum Command {
    /// Generate.
    Generate {
        /// The request.
        job: Job,
        /// Where its tokens go; a closed channel (the client left) cancels it.
        reply: mpsc::UnboundedSender<Reply>,
    },
    /// Register an adapter.
    AddAdapter {
        /// Its name.
        name: String,
        /// Its folder on the server's disk.
        path: PathBuf,
        /// Whether `path` is a staged upload, to move into the pool's `adapters/` folder once valid
        /// (removed if not).
        staged: bool,
        /// Its samples.
        samples: Vec<String>,
        /// The samples' mean embedding, computed off this thread (`None`: embed them here).
        embedding: Option<Vec<f32>>,
        /// The outcome.
        reply: oneshot::Sender<Result<AdapterInfo, ServerError>>,
    },
    /// Unregister an adapter.
    RemoveAdapter {
        /// Its name.
        name: String,
        /// The outcome.
        reply: oneshot::Sender<Result<(), ServerError>>,
    },
}

/// What the engine's thread shares with the HTTP side.
#[derive(Debug)]
pub struct Shared {
    /// The registered adapters, refreshed after every change.
    pub adapters: RwLock<Vec<AdapterInfo>>,
    /// The quarantined adapters with why (see [`Ramole::make_resident`]), refreshed with `adapters`.
    pub quarantined: RwLock<Vec<(String, String)>>,
    /// The counters.
    pub metrics: Metrics,
}

/// A request in the scheduler, with where its tokens go.
struct Live {
    reply: mpsc::UnboundedSender<Reply>,
    deadline: Instant,
    arrived: Instant,
    first_token: bool,
}

/// How the engine's scheduler runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows in the running batch.
    pub max_batch: usize,
    /// Most prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// When requests join the batch.
    pub batching: Batching,
    /// Longest a request may take (what a timed-out request is told).
    pub timeout: Duration,
}

/// The engine's loop: runs until every command sender is gone and nothing is left to run.
pub fn run<B: Backend>(mut ramole: Ramole<B>, commands: Receiver<Command>, shared: Arc<Shared>, limits: Limits) {
    let timeout = limits.timeout;
    let mut scheduler =
        Scheduler::<B>::new(limits.max_batch).prefill_chunk(limits.prefill_chunk).batching(limits.batching);
    let mut live: HashMap<SequenceId, Live> = HashMap::new();
    let mut next_name = 0u64;
    let mut open = true;
    let mut refreshed = Instant::now();
    while open || !scheduler.is_idle() {
        // The pool's folder as other processes left it (`ramole pool add`, another server on the same pool):
        // read at most once a second, the index updated in place.
        if refreshed.elapsed() >= POOL_REFRESH {
            refreshed = Instant::now();
            if ramole.refresh_pool().unwrap_or(false) {
                refresh_adapters(&ramole, &shared);
            }
        }
        // Commands: wait for one when idle, else take what has arrived and go on stepping.
        let mut batch = Vec::new();
        if scheduler.is_idle() {
            match commands.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => batch.push(c),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(c) => batch.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        for command in batch {
            match command {
                Command::Generate { job, reply } => {
                    next_name += 1;
                    let deadline = job.deadline;
                    let arrived = job.arrived;
                    let quarantined = ramole.quarantined().count();
                    let admitted = admit(&mut ramole, &mut scheduler, job, next_name, MAX_REROUTES);
                    if ramole.quarantined().count() != quarantined {
                        // A LoRA stopped loading: the API lists it no more.
                        refresh_adapters(&ramole, &shared);
                    }
                    match admitted {
                        Ok((id, admitted)) => {
                            let _ = reply.send(admitted);
                            live.insert(id, Live { reply, deadline, arrived, first_token: false });
                        }
                        Err(e) => fail(&reply, e),
                    }
                }
                Command::AddAdapter { name, path, staged, samples, embedding, reply } => {
                    let result = add_adapter(&mut ramole, &name, &path, staged, &samples, embedding);
                    refresh_adapters(&ramole, &shared);
                    let _ = reply.send(result);
                }
                Command::RemoveAdapter { name, reply } => {
                    let result = remove_adapter(&mut ramole, &name);
                    refresh_adapters(&ramole, &shared);
                    let _ = reply.send(result);
                }
            }
        }
        // Admissions and adapter changes load and unload adapters: counted before any reply to them.
        let r = ramole.residency();
        shared.metrics.adapters(r.hits, r.misses, r.resident);
        // Requests past their deadline or whose client left leave the batch.
        let now = Instant::now();
        let gone: Vec<SequenceId> =
            live.iter().filter(|(_, l)| l.deadline <= now || l.reply.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            scheduler.cancel(id);
            if let Some(l) = live.remove(&id)
                && !l.reply.is_closed()
            {
                fail(&l.reply, ServerError::Timeout(timeout));
            }
        }
        if scheduler.is_idle() {
            shared.metrics.step(0, 0, 0, 0.0);
            continue;
        }
        let clock = Instant::now();
        let events = scheduler.step(ramole.engine());
        // Published before any reply of this step: a client reading /metrics after its answer sees it.
        shared.metrics.engine(scheduler.stats());
        let mut tokens = 0;
        for event in events {
            match event {
                Event::Token { id, token } => {
                    tokens += 1;
                    if let Some(l) = live.get_mut(&id) {
                        if !l.first_token {
                            l.first_token = true;
                            shared.metrics.first_token(l.arrived.elapsed().as_secs_f64());
                        }
                        // A client that left closed its channel: the row leaves before the next step.
                        let _ = l.reply.send(Reply::Token(token));
                    }
                }
                Event::Finished { id, reason, .. } => {
                    if let Some(l) = live.remove(&id) {
                        shared.metrics.finished(l.arrived.elapsed().as_secs_f64());
                        let _ = l.reply.send(Reply::Finished(reason));
                    }
                }
                Event::Failed { id, error } => {
                    if let Some(l) = live.remove(&id) {
                        fail(&l.reply, ServerError::Generation(error.to_string()));
                    }
                }
            }
        }
        shared.metrics.step(scheduler.waiting(), scheduler.running(), tokens, clock.elapsed().as_secs_f64());
    }
}

/// Sends a request its error. `/metrics` counts it where it reaches the client (the HTTP handler or the
/// stream), once.
fn fail(reply: &mpsc::UnboundedSender<Reply>, error: ServerError) {
    let _ = reply.send(Reply::Error(error));
}

/// How often the engine's thread reads the pool's folder for changes made by other processes.
const POOL_REFRESH: Duration = Duration::from_secs(1);

/// How many times a routed request is routed again when a LoRA of its routing turns out not to load.
const MAX_REROUTES: usize = 3;

/// Routes a job, loads its adapters if they are not resident, and queues it.
fn admit<B: Backend>(
    ramole: &mut Ramole<B>,
    scheduler: &mut Scheduler<B>,
    job: Job,
    n: u64,
    retries: usize,
) -> Result<(SequenceId, Reply), ServerError> {
    let invalid = |message: String| ServerError::Invalid { param: None, message };
    let routing = match &job.target {
        Target::Base => Routing { strategy: Strategy::Base, loras: Vec::new(), arrow: None },
        Target::Adapter(name) => Routing::single(name.clone()),
        Target::Route(cfg) => ramole
            .route(std::slice::from_ref(&job.query), cfg, &[])
            .map_err(|e| invalid(e.to_string()))?
            .pop()
            .ok_or_else(|| invalid("the retriever returned no routing".into()))?,
        Target::Explicit { adapters, composition } => Routing::explicit(adapters.clone(), *composition),
    };
    let names: Vec<&str> = routing.loras.iter().map(|l| l.lora.as_str()).collect();
    for name in &names {
        if let Some((_, reason)) = ramole.quarantined().find(|(n, _)| n == name) {
            return Err(ServerError::NotFound(format!("adapter `{name}` is quarantined: {reason}")));
        }
        if !ramole.is_servable(name) {
            return Err(ServerError::NotFound(format!("no adapter `{name}` in the pool")));
        }
    }
    match ramole.make_resident(&names) {
        Ok(()) => {}
        // A LoRA that stopped loading is quarantined now: routed traffic routes again, around it (at most
        // once per LoRA of the routing); a request that named it gets the reason.
        Err(PipelineError::Quarantined { lora, reason }) => {
            return match (&job.target, retries) {
                (Target::Route(_), 1..) => admit(ramole, scheduler, job, n, retries - 1),
                _ => Err(ServerError::NotFound(format!("adapter `{lora}` is quarantined: {reason}"))),
            };
        }
        Err(e) => return Err(ServerError::Generation(e.to_string())),
    }
    let request = Request {
        name: format!("request {n}"),
        input: RequestInput::Ids(job.prompt),
        row: routing.row_request(),
        max_new_tokens: job.max_tokens,
        sampling: job.sampling,
    };
    let id = scheduler.admit(ramole.engine(), request).map_err(|e| invalid(e.to_string()))?;
    Ok((id, Reply::Admitted { routing: routing.loras }))
}

/// The prefix of the folders an upload is staged in, inside the pool's `adapters/`.
pub(crate) const STAGING_PREFIX: &str = ".upload-";
/// The prefix of the folders a deleted upload is moved to before its files are removed.
const TRASH_PREFIX: &str = ".trash-";

/// Moves `dir` aside (a rename in the same folder: atomic) and removes its files; a crash in between leaves a
/// `.trash-*` folder that [`sweep`] removes at the next start.
fn discard(dir: &std::path::Path) -> std::io::Result<()> {
    let Some(parent) = dir.parent() else { return Ok(()) };
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let trash = parent.join(format!("{TRASH_PREFIX}{name}-{}-{nanos}", std::process::id()));
    std::fs::rename(dir, &trash)?;
    if std::fs::symlink_metadata(&trash)?.is_dir() {
        std::fs::remove_dir_all(&trash)
    } else {
        std::fs::remove_file(&trash)
    }
}

/// The id of the process that made a staging (`.upload-<pid>-<n>`) or trash (`.trash-<name>-<pid>-<t>`) folder.
fn owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
        return rest.split('-').next()?.parse().ok();
    }
    let mut parts = name.strip_prefix(TRASH_PREFIX)?.rsplit('-');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether process `pid` runs (on Linux; elsewhere every other process is taken for gone).
fn alive(pid: u32) -> bool {
    pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what a crash left in the pool's `adapters/` folder: upload staging folders and deleted uploads
/// not yet removed, of processes that no longer run (another server on the same pool keeps its own). Called
/// when the server starts, before it accepts uploads.
pub(crate) fn sweep(adapters: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(adapters)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX);
        if ours && entry.file_type()?.is_dir() && owner_pid(&name).is_none_or(|pid| !alive(pid)) {
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Unregisters an adapter; an uploaded one (its folder is `adapters/<name>` of the pool, which the pool owns)
/// is deleted from disk too, so the name can be uploaded again. An adapter registered by path stays where it is.
fn remove_adapter<B: Backend>(ramole: &mut Ramole<B>, name: &str) -> Result<(), ServerError> {
    ramole_retriever::pool::validate_name(name)
        .map_err(|e| ServerError::Invalid { param: Some("name".into()), message: e.to_string() })?;
    let owned = ramole.pool().dir().join("adapters").join(name);
    let dir = ramole.pool().get(name).and_then(|e| ramole.pool().adapter_dir(e));
    ramole.remove_lora(name).map_err(|e| match e {
        PipelineError::Retriever(RetrieverError::UnknownName { .. }) => {
            ServerError::NotFound(format!("no adapter `{name}` in the pool"))
        }
        e => ServerError::Generation(e.to_string()),
    })?;
    if dir.is_some_and(|d| d == owned) && owned.is_dir() {
        discard(&owned).map_err(|e| ServerError::Generation(format!("removing the files of `{name}`: {e}")))?;
    }
    Ok(())
}

/// Validates and registers an adapter; a staged upload moves into the pool's `adapters/` folder
/// once valid, and is removed when anything fails.
fn add_adapter<B: Backend>(
    ramole: &mut Ramole<B>,
    name: &str,
    path: &std::path::Path,
    staged: bool,
    samples: &[String],
    embedding: Option<Vec<f32>>,
) -> Result<AdapterInfo, ServerError> {
    let invalid = |message: String| ServerError::Invalid { param: None, message };
    let result = (|| {
        if samples.is_empty() || samples.iter().any(|s| s.trim().is_empty()) {
            return Err(ServerError::Invalid {
                param: Some("samples".into()),
                message: "an adapter needs at least one sample input, none of them empty".into(),
            });
        }
        let dir = if staged {
            // The name becomes a folder name: checked before it is joined to a path.
            ramole_retriever::pool::validate_name(name).map_err(|e| invalid(e.to_string()))?;
            let dest = ramole.pool().dir().join("adapters").join(name);
            if ramole.pool().get(name).is_some() {
                return Err(ServerError::Conflict(format!("adapter `{name}` already exists")));
            }
            // A folder no pool entry stands for (left by a server that deleted entries but not files, or by
            // a crash between the two) is an orphan: it gives way to the upload.
            if std::fs::symlink_metadata(&dest).is_ok() {
                discard(&dest)
                    .map_err(|e| ServerError::Generation(format!("removing an orphaned folder of `{name}`: {e}")))?;
            }
            std::fs::rename(path, &dest)
                .map_err(|e| ServerError::Generation(format!("moving the upload to {}: {e}", dest.display())))?;
            dest
        } else {
            path.to_path_buf()
        };
        // Checks the adapter in full against the base before the pool or the engine changes.
        let added = match embedding {
            Some(e) => ramole.add_lora_embedded(name, &dir, samples, e),
            None => ramole.add_lora(name, &dir, samples),
        };
        if let Err(e) = added {
            if staged {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(match e {
                PipelineError::Retriever(RetrieverError::DuplicateName { .. }) => ServerError::Conflict(e.to_string()),
                e => invalid(format!("adapter `{name}`: {e}")),
            });
        }
        Ok(AdapterInfo { name: name.into(), path: Some(dir), samples: samples.len() })
    })();
    if staged && path.exists() {
        let _ = std::fs::remove_dir_all(path);
    }
    result
}

/// Publishes the registered adapters to the HTTP side (the server does it once before it serves).
pub(crate) fn refresh_adapters<B: Backend>(ramole: &Ramole<B>, shared: &Shared) {
    let pool = ramole.pool();
    let list = pool
        .entries()
        .into_iter()
        .filter(|e| ramole.is_servable(&e.name))
        .map(|e| AdapterInfo { name: e.name.clone(), path: pool.adapter_dir(e), samples: e.n_samples })
        .collect();
    if let Ok(mut a) = shared.adapters.write() {
        *a = list;
    }
    if let Ok(mut q) = shared.quarantined.write() {
        *q = ramole.quarantined().map(|(n, r)| (n.to_string(), r.to_string())).collect();
    }
}
