//! The HTTP routes: OpenAI's completions, chat completions and models, the adapter registry, health
//! and metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::stream;
use ramole_batch::{FinishReason, Sampling};
use ramole_core::lora::Composition;
use ramole_models::tokenizer::PromptEncoder;
use ramole_pipeline::RoutedLora;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::api::{self, AdapterUpload, ChatRequest, Common, CompletionRequest, PromptInput};
use crate::text::TextStream;
use crate::worker::{Command, Job, Reply, Target};
use crate::{Inner, ROUTED_MODEL, ServerError};

type AppState = Arc<Inner>;

pub(crate) fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/adapters", get(list_adapters).post(add_adapter))
        .route("/v1/adapters/{name}", delete(remove_adapter))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), json_413))
        .with_state(state)
}

/// A body over the limit is refused by axum's extractors with a plain-text 413: answered as every other
/// error is (the JSON body, counted in `/metrics`).
async fn json_413(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return failed(&state, ServerError::TooLarge(state.config.max_body_bytes));
    }
    response
}

/// Bearer auth on every route but `/health`, when an API key is set.
async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return failed(&state, ServerError::Unauthorized);
        }
    }
    next.run(request).await
}

/// The response of a failed request, counted by kind in `/metrics`.
fn failed(state: &Inner, error: ServerError) -> Response {
    state.shared.metrics.error(error.kind());
    error.redact(&state.pool_dir, "<pool>").into_response()
}

/// The folder of an adapter registered by its path on the server (JSON `path`): only under one of the
/// configured adapter roots (none: registration by path is off), resolved with every symbolic link
/// followed, and so are its two files. Whatever the reason a path is refused, the answer is the same, so that
/// a client cannot probe which files exist on the server.
fn confine(roots: &[std::path::PathBuf], path: &std::path::Path) -> Result<std::path::PathBuf, ServerError> {
    if roots.is_empty() {
        return Err(ServerError::Invalid {
            param: Some("path".into()),
            message: "registering an adapter by a path on the server is off: upload its files (multipart), or \
                      start the server with --adapter-root DIR"
                .into(),
        });
    }
    let refused = || ServerError::Invalid {
        param: Some("path".into()),
        message: "not an adapter folder under the server's adapter roots".into(),
    };
    let dir = std::fs::canonicalize(path).map_err(|_| refused())?;
    let root = roots.iter().find(|r| dir.starts_with(r)).ok_or_else(refused)?;
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let real = std::fs::canonicalize(dir.join(file)).map_err(|_| refused())?;
        if !real.starts_with(root) || !real.is_file() {
            return Err(refused());
        }
    }
    Ok(dir)
}

async fn health(State(state): State<AppState>) -> Response {
    axum::Json(json!({"status": "ok", "in_flight": state.in_flight.load(Ordering::Relaxed)})).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.shared.metrics.render()).into_response()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn models(State(state): State<AppState>) -> Response {
    let created = now_secs();
    let base = &state.config.model_name;
    let mut data = vec![
        json!({"id": base, "object": "model", "created": created, "owned_by": "ramole", "weights": state.weights}),
        json!({"id": ROUTED_MODEL, "object": "model", "created": created, "owned_by": "ramole", "parent": base,
               "weights": state.weights}),
    ];
    if let Ok(adapters) = state.shared.adapters.read() {
        data.extend(adapters.iter().map(|a| {
            json!({"id": a.name, "object": "model", "created": created, "owned_by": "ramole", "parent": base,
                       "weights": state.weights})
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn list_adapters(State(state): State<AppState>) -> Response {
    let list = state.shared.adapters.read().map(|a| a.clone()).unwrap_or_default();
    axum::Json(json!({"object": "list", "data": list})).into_response()
}

/// Sends a command to the engine's thread and waits for its answer.
async fn ask<T>(state: &AppState, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ServerError> {
    let (tx, rx) = oneshot::channel();
    state.commands.send(make(tx)).map_err(|_| ServerError::Unavailable)?;
    rx.await.map_err(|_| ServerError::Unavailable)
}

/// `POST /v1/adapters`: JSON `{"name", "path", "samples"}` (a folder on the server), or multipart
/// with `name`, `samples` (a JSON list of strings) and the files `adapter_config.json` and
/// `adapter_model.safetensors`. Validated in full before it is visible; on error nothing changed.
async fn add_adapter(State(state): State<AppState>, request: Request) -> Response {
    let result = add_adapter_inner(&state, request).await;
    match result {
        Ok(info) => (StatusCode::CREATED, axum::Json(info)).into_response(),
        Err(e) => failed(&state, e),
    }
}

async fn add_adapter_inner(state: &AppState, request: Request) -> Result<crate::worker::AdapterInfo, ServerError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (name, path, staged, samples) = if multipart {
        let form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ServerError::Invalid { param: None, message: format!("multipart body: {e}") })?;
        let (name, dir, samples) = receive_upload(state, form).await?;
        (name, dir, true, samples)
    } else {
        let limit = state.config.max_body_bytes;
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| too_large_or_invalid(e.status(), &e.body_text(), limit))?;
        let upload: AdapterUpload = api::parse(&body)?;
        let dir = confine(&state.config.adapter_roots, &upload.path)?;
        (upload.name, dir, false, upload.samples)
    };
    let refused = |error: ServerError| {
        if staged {
            let _ = std::fs::remove_dir_all(&path);
        }
        Err(error)
    };
    // The API's own model names cannot be an adapter's: `model` could not tell them apart.
    if name == ROUTED_MODEL || name == state.config.model_name {
        let model = if name == ROUTED_MODEL { "routed" } else { "base" };
        return refused(ServerError::Invalid {
            param: Some("name".into()),
            message: format!("`{name}` is reserved: it names the {model} model"),
        });
    }
    let cap = state.config.max_samples_per_lora;
    if samples.len() > cap {
        return refused(ServerError::TooMany { what: "samples", count: samples.len(), limit: cap });
    }
    // Embedded here, off the engine's thread: running streams do not wait for an upload.
    let embedding = if samples.is_empty() {
        None
    } else {
        let (embed, texts) = (state.embedder.clone(), samples.clone());
        match tokio::task::spawn_blocking(move || embed(&texts)).await {
            Ok(Ok(e)) => Some(e),
            Ok(Err(e)) => return refused(ServerError::Invalid { param: Some("samples".into()), message: e }),
            Err(_) => return refused(ServerError::Unavailable),
        }
    };
    ask(state, |reply| Command::AddAdapter { name, path, staged, samples, embedding, reply }).await?
}

fn too_large_or_invalid(status: StatusCode, message: &str, limit: usize) -> ServerError {
    too_large_or(status, limit, || ServerError::Invalid { param: None, message: format!("request body: {message}") })
}

/// [`ServerError::TooLarge`] when a body read failed on the size limit, else `other`.
fn too_large_or(status: StatusCode, limit: usize, other: impl FnOnce() -> ServerError) -> ServerError {
    if status == StatusCode::PAYLOAD_TOO_LARGE { ServerError::TooLarge(limit) } else { other() }
}

/// The files of a multipart upload, written to a staging folder inside the pool's `adapters/`.
async fn receive_upload(
    state: &AppState,
    mut form: Multipart,
) -> Result<(String, std::path::PathBuf, Vec<String>), ServerError> {
    let invalid = |param: &str, message: String| ServerError::Invalid { param: Some(param.into()), message };
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let staging =
        state.pool_dir.join("adapters").join(format!("{}{}-{n}", crate::worker::STAGING_PREFIX, std::process::id()));
    let io = |e: std::io::Error| ServerError::Generation(format!("{}: {e}", staging.display()));
    std::fs::create_dir_all(&staging).map_err(io)?;
    let mut name = None;
    let mut samples = None;
    let mut files = Vec::new();
    let result: Result<(), ServerError> = async {
        while let Some(field) = form.next_field().await.map_err(|e| {
            too_large_or(e.status(), state.config.max_body_bytes, || {
                invalid("multipart", format!("reading the upload: {e}"))
            })
        })? {
            let field_name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let bytes = field.bytes().await.map_err(|e| {
                too_large_or(e.status(), state.config.max_body_bytes, || {
                    invalid(&field_name, format!("reading it: {e}"))
                })
            })?;
            match (field_name.as_str(), file_name) {
                ("name", None) => name = Some(String::from_utf8_lossy(&bytes).trim().to_string()),
                ("samples", None) => {
                    let list: Vec<String> = serde_json::from_slice(&bytes)
                        .map_err(|e| invalid("samples", format!("a JSON list of strings: {e}")))?;
                    samples = Some(list);
                }
                (_, Some(file)) => {
                    let file = std::path::Path::new(&file)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default()
                        .to_string();
                    if file != "adapter_config.json" && file != "adapter_model.safetensors" {
                        return Err(invalid(
                            &field_name,
                            format!("file `{file}`: expected adapter_config.json or adapter_model.safetensors"),
                        ));
                    }
                    std::fs::write(staging.join(&file), &bytes).map_err(io)?;
                    files.push(file);
                }
                (other, None) => return Err(invalid(other, "unknown field".into())),
            }
        }
        Ok(())
    }
    .await;
    let checked = result.and_then(|()| {
        for needed in ["adapter_config.json", "adapter_model.safetensors"] {
            if !files.iter().any(|f| f == needed) {
                return Err(invalid("files", format!("the upload has no {needed}")));
            }
        }
        let name = name.ok_or_else(|| invalid("name", "missing".into()))?;
        let samples = samples.ok_or_else(|| invalid("samples", "missing".into()))?;
        Ok((name, samples))
    });
    match checked {
        Ok((name, samples)) => Ok((name, staging, samples)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

async fn remove_adapter(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match ask(&state, |reply| Command::RemoveAdapter { name: name.clone(), reply }).await.and_then(|r| r) {
        Ok(()) => axum::Json(json!({"id": name, "object": "adapter", "deleted": true})).into_response(),
        Err(e) => failed(&state, e),
    }
}

/// Which API a generation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completion,
    Chat,
}

/// A request's prompt before tokenization.
enum Prompt {
    /// A completion prompt, written whole by the caller: control tokens in it are parsed.
    Raw(String),
    /// Chat turns `(role, text)`: the template adds the control tokens, the text never becomes one.
    Chat(Vec<(String, String)>),
    /// Token ids, as the client gave them (each checked against the vocabulary).
    Ids(Vec<u32>),
}

impl Prompt {
    /// The bytes of text to tokenize.
    fn bytes(&self) -> usize {
        match self {
            Self::Raw(p) => p.len(),
            Self::Chat(turns) => turns.iter().map(|(r, t)| r.len() + t.len()).sum(),
            // One token is at least one byte of text: the same bound holds.
            Self::Ids(ids) => ids.len(),
        }
    }

    fn encode(&self, encoder: &PromptEncoder) -> Result<Vec<u32>, ramole_models::ModelError> {
        match self {
            Self::Raw(p) => encoder.encode_raw(p),
            Self::Chat(turns) => encoder.chatml(turns),
            Self::Ids(ids) => {
                let vocab = encoder.tokenizer().get_vocab_size(true);
                match ids.iter().find(|&&id| id as usize >= vocab) {
                    Some(bad) => Err(ramole_models::ModelError::Tokenizer(format!(
                        "token id {bad} is not in the vocabulary of {vocab} tokens"
                    ))),
                    None => Ok(ids.clone()),
                }
            }
        }
    }
}

async fn completions(State(state): State<AppState>, body: Bytes) -> Response {
    state.shared.metrics.request();
    let prepared = api::parse::<CompletionRequest>(&body).and_then(|r| {
        Ok(match r.prompt()? {
            PromptInput::Text(text) => (r.common, Prompt::Raw(text.clone()), text),
            // The retriever reads the tokens' text, decoded with the prompt's other work (after the context
            // bound, off the async runtime): see `generate`.
            PromptInput::Tokens(ids) => (r.common, Prompt::Ids(ids), String::new()),
        })
    });
    respond(state, prepared, Api::Completion).await
}

async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Response {
    state.shared.metrics.request();
    let prepared = api::parse::<ChatRequest>(&body).and_then(|r| {
        let (turns, query) = r.turns()?;
        Ok((r.common, Prompt::Chat(turns), query))
    });
    respond(state, prepared, Api::Chat).await
}

async fn respond(state: AppState, prepared: Result<(Common, Prompt, String), ServerError>, api: Api) -> Response {
    let result = match prepared {
        Ok((common, prompt, query)) => generate(state.clone(), common, prompt, query, api).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| failed(&state, e))
}

/// Which adapters `common` asks for.
fn target(state: &Inner, common: &Common) -> Result<Target, ServerError> {
    let composition = common.composition()?;
    // Refused whatever the number of adapters (one adapter "gated" would otherwise quietly run alone).
    let gated = composition == Some(Composition::Gate) || common.strategy()? == Some(ramole_pipeline::Strategy::Gate);
    if gated && !state.has_gate {
        return Err(ServerError::Invalid {
            param: Some(if composition.is_some() { "composition" } else { "strategy" }.into()),
            message: "`gate` needs the server's RouterLoRA gate (ramole serve --gate DIR), and none is loaded".into(),
        });
    }
    if let Some(adapters) = &common.adapters {
        if adapters.is_empty() {
            return Err(ServerError::Invalid { param: Some("adapters".into()), message: "an empty list".into() });
        }
        let composition =
            composition.unwrap_or(if adapters.len() == 1 { Composition::Single } else { Composition::Mixture });
        let adapters = adapters.iter().map(|a| (a.name.clone(), a.weight)).collect();
        return Ok(Target::Explicit { adapters, composition });
    }
    if composition.is_some() {
        return Err(ServerError::Invalid {
            param: Some("composition".into()),
            message: "`composition` goes with `adapters` (for `model: \"ramole\"`, use `strategy`)".into(),
        });
    }
    let model = common.model.as_str();
    if model == ROUTED_MODEL {
        let mut cfg = state.config.route;
        if let Some(s) = common.strategy()? {
            cfg.strategy = s;
        }
        if let Some(k) = common.top_k {
            cfg.top_k = usize::try_from(k).ok().filter(|&k| (1..=64).contains(&k)).ok_or_else(|| {
                ServerError::Invalid { param: Some("top_k".into()), message: format!("{k}: expected 1 to 64") }
            })?;
        }
        cfg.validate().map_err(|e| ServerError::Invalid { param: None, message: e.to_string() })?;
        return Ok(Target::Route(cfg));
    }
    if common.strategy.is_some() || common.top_k.is_some() {
        return Err(ServerError::Invalid {
            param: Some("strategy".into()),
            message: format!("`strategy` and `top_k` go with `model: \"{ROUTED_MODEL}\"`"),
        });
    }
    if model == state.config.model_name {
        return Ok(Target::Base);
    }
    let known = state.shared.adapters.read().map(|a| a.iter().any(|a| a.name == model)).unwrap_or(false);
    let quarantined =
        state.shared.quarantined.read().ok().and_then(|q| q.iter().find(|(n, _)| n == model).map(|(_, r)| r.clone()));
    if known {
        Ok(Target::Adapter(model.to_string()))
    } else if let Some(reason) = quarantined {
        Err(ServerError::NotFound(format!("adapter `{model}` is quarantined: {reason}")))
    } else {
        Err(ServerError::NotFound(format!(
            "model `{model}` does not exist: use `{}` (the base model), `{ROUTED_MODEL}` (routing) or an adapter's name (GET /v1/models)",
            state.config.model_name
        )))
    }
}

fn sampling(common: &Common) -> Result<Sampling, ServerError> {
    let invalid = |param: &str, message: String| ServerError::Invalid { param: Some(param.into()), message };
    let temperature = common.temperature.unwrap_or(0.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(invalid("temperature", format!("{temperature}: expected 0 to 2")));
    }
    let top_p = common.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("top_p", format!("{top_p}: expected a number in (0, 1]")));
    }
    if temperature == 0.0 {
        return Ok(Sampling::Greedy);
    }
    let seed =
        common.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    Ok(Sampling::TopP { temperature, top_p, seed })
}

/// Counts a request as in flight until dropped.
struct InFlight(AppState);

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.shared.metrics.set_in_flight(n);
    }
}

fn routing_json(routing: &[RoutedLora]) -> Value {
    Value::Array(
        routing
            .iter()
            .map(|l| json!({"lora": l.lora, "score": l.score.map(short), "weight": short(l.weight)}))
            .collect(),
    )
}

/// An f32 as the shortest decimal that reads back as it (0.6, not 0.6000000238418579).
fn short(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
}

fn finish_name(reason: FinishReason, stopped: bool) -> &'static str {
    match reason {
        _ if stopped => "stop",
        FinishReason::Eos => "stop",
        FinishReason::Length => "length",
    }
}

async fn generate(
    state: AppState,
    common: Common,
    prompt: Prompt,
    query: String,
    api: Api,
) -> Result<Response, ServerError> {
    common.check_n()?;
    let target = target(&state, &common)?;
    let sampling = sampling(&common)?;
    let max_tokens = common.max_tokens()?;
    let stops = common.stops()?;
    // Back-pressure: at most max_batch running + max_queue waiting.
    let limit = state.config.max_batch + state.config.max_queue;
    let n = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    let guard = InFlight(state.clone());
    state.shared.metrics.set_in_flight(n);
    if n > limit {
        return Err(ServerError::Overloaded(limit));
    }
    // A prompt that cannot fit the context is refused before any tokenization (a text of n bytes has at
    // least n / (longest token) tokens); the rest is tokenized once, here, off the async runtime, so a long
    // prompt never stalls other connections. The engine takes the ids as they are.
    let least = state.prompts.min_tokens(prompt.bytes());
    if least >= state.context {
        return Err(ServerError::Invalid {
            param: Some(if api == Api::Chat { "messages" } else { "prompt" }.into()),
            message: format!(
                "{} bytes are at least {least} tokens, beyond the model's context of {} tokens",
                prompt.bytes(),
                state.context
            ),
        });
    }
    let encoder = state.prompts.clone();
    let (ids, query) = tokio::task::spawn_blocking(move || {
        let ids = prompt.encode(&encoder)?;
        // Token ids arrive without text: the retriever reads what they decode to.
        let query = match &prompt {
            Prompt::Ids(_) => encoder.tokenizer().decode(&ids, true).unwrap_or_default(),
            _ => query,
        };
        Ok::<_, ramole_models::ModelError>((ids, query))
    })
    .await
    .map_err(|_| ServerError::Unavailable)?
    .map_err(|e| ServerError::Invalid { param: None, message: format!("the prompt cannot be tokenized: {e}") })?;
    let prompt_tokens = ids.len();
    // Unless the request says, as many as the context leaves, up to the server's default.
    let max_tokens =
        max_tokens.unwrap_or_else(|| state.config.default_max_tokens.min(state.context.saturating_sub(prompt_tokens)));
    let arrived = Instant::now();
    let job = Job {
        prompt: ids,
        query,
        target,
        max_tokens,
        sampling,
        deadline: arrived + state.config.request_timeout,
        arrived,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    state.commands.send(Command::Generate { job, reply: tx }).map_err(|_| ServerError::Unavailable)?;
    let routing = match rx.recv().await {
        Some(Reply::Admitted { routing }) => routing,
        Some(Reply::Error(e)) => return Err(e),
        _ => return Err(ServerError::Unavailable),
    };
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{}-{n}", if api == Api::Chat { "chatcmpl" } else { "cmpl" }, now_secs());
    let model = common.model.clone();
    if common.stream {
        let include_usage = common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let meta = StreamMeta { id, model, created: now_secs(), api, include_usage, prompt_tokens };
        return Ok(stream_response(state.clone(), rx, routing, stops, meta, guard));
    }
    let mut text = TextStream::new(state.tokenizer.clone(), state.eos.clone(), stops);
    let reason = loop {
        match rx.recv().await {
            Some(Reply::Token(t)) => {
                text.push(t);
                if text.stopped() {
                    // Dropping the receiver takes the row out of the batch.
                    break FinishReason::Eos;
                }
            }
            Some(Reply::Finished(reason)) => break reason,
            Some(Reply::Error(e)) => return Err(e),
            Some(Reply::Admitted { .. }) | None => return Err(ServerError::Unavailable),
        }
    };
    drop(rx);
    let finish = finish_name(reason, text.stopped());
    let completion_tokens = text.tokens();
    let _ = text.finish();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens, "weights": state.weights});
    let choice = match api {
        Api::Completion => json!({"index": 0, "text": text.text(), "logprobs": null, "finish_reason": finish}),
        Api::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text.text()},
                            "logprobs": null, "finish_reason": finish}),
    };
    let object = if api == Api::Chat { "chat.completion" } else { "text_completion" };
    drop(guard);
    Ok(axum::Json(json!({"id": id, "object": object, "created": now_secs(), "model": model, "choices": [choice],
                         "usage": usage, "routing": routing_json(&routing)}))
    .into_response())
}

/// What every chunk of a stream repeats.
struct StreamMeta {
    id: String,
    model: String,
    created: u64,
    api: Api,
    include_usage: bool,
    prompt_tokens: usize,
}

impl StreamMeta {
    /// A chunk with one choice: `piece` of text (a `delta` for chat), and the finish reason once known.
    fn chunk(&self, piece: Option<&str>, finish: Option<&str>, first: bool) -> Value {
        let choice = match self.api {
            Api::Completion => {
                json!({"index": 0, "text": piece.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
            Api::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(p) = piece {
                    delta.insert("content".into(), json!(p));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        let object = if self.api == Api::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// The state a stream carries from one event to the next.
struct Streaming {
    state: AppState,
    rx: Option<mpsc::UnboundedReceiver<Reply>>,
    meta: StreamMeta,
    text: TextStream,
    routing: Option<Vec<RoutedLora>>,
    pending: std::collections::VecDeque<SseEvent>,
    done: bool,
    _guard: InFlight,
}

fn sse(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// Server-sent events: the first chunk carries the routing; text follows as it becomes certain; the
/// last chunk has the finish reason (then `usage` when asked for) and `[DONE]`. A client that leaves
/// drops the stream, which takes its row out of the batch.
fn stream_response(
    state: AppState,
    rx: mpsc::UnboundedReceiver<Reply>,
    routing: Vec<RoutedLora>,
    stops: Vec<String>,
    meta: StreamMeta,
    guard: InFlight,
) -> Response {
    let text = TextStream::new(state.tokenizer.clone(), state.eos.clone(), stops);
    let start = Streaming {
        state,
        rx: Some(rx),
        meta,
        text,
        routing: Some(routing),
        pending: Default::default(),
        done: false,
        _guard: guard,
    };
    let events = stream::unfold(start, |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            if s.done {
                return None;
            }
            next_events(&mut s).await;
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// Reads the engine's next reply and queues the events it makes.
async fn next_events(s: &mut Streaming) {
    if let Some(routing) = s.routing.take() {
        let mut first = s.meta.chunk(Some(""), None, true);
        first["routing"] = routing_json(&routing);
        s.pending.push_back(sse(&first));
        return;
    }
    let reply = match s.rx.as_mut() {
        Some(rx) => rx.recv().await,
        None => None,
    };
    let text = &mut s.text;
    let finish = match reply {
        Some(Reply::Token(t)) => {
            let piece = text.push(t);
            if !piece.is_empty() {
                s.pending.push_back(sse(&s.meta.chunk(Some(&piece), None, false)));
            }
            if !text.stopped() {
                return;
            }
            "stop"
        }
        Some(Reply::Finished(reason)) => {
            let rest = text.finish();
            if !rest.is_empty() {
                s.pending.push_back(sse(&s.meta.chunk(Some(&rest), None, false)));
            }
            finish_name(reason, false)
        }
        Some(Reply::Error(e)) => {
            s.state.shared.metrics.error(e.kind());
            s.pending.push_back(sse(&e.body()));
            s.pending.push_back(SseEvent::default().data("[DONE]"));
            s.done = true;
            s.rx = None;
            return;
        }
        Some(Reply::Admitted { .. }) | None => {
            s.pending.push_back(sse(&ServerError::Unavailable.body()));
            s.pending.push_back(SseEvent::default().data("[DONE]"));
            s.done = true;
            s.rx = None;
            return;
        }
    };
    // Over: the receiver is dropped (a stopped row leaves the batch), the last chunks queued.
    let completion = text.tokens();
    s.rx = None;
    s.pending.push_back(sse(&s.meta.chunk(None, Some(finish), false)));
    if s.meta.include_usage {
        let mut usage = s.meta.chunk(None, None, false);
        usage["choices"] = json!([]);
        usage["usage"] = json!({"prompt_tokens": s.meta.prompt_tokens, "completion_tokens": completion,
                                "total_tokens": s.meta.prompt_tokens + completion, "weights": s.state.weights});
        s.pending.push_back(sse(&usage));
    }
    s.pending.push_back(SseEvent::default().data("[DONE]"));
    s.done = true;
}
