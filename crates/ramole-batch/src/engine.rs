//! The engine: a base model, its adapters, and one heterogeneous batch at a time.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use ramole_models::linear::WeightFormat;
use ramole_models::llama::{AttentionInput, KvCache, LlamaConfig, LlamaForCausalLM, LlamaLora};
use ramole_mole::{AdapterPool, BatchAdapters, Composition, ResolvedRow, RouterGate};
use tokenizers::Tokenizer;

use crate::sampling::Sampler;
use crate::{BatchError, Request, RequestInput};

/// What a request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    /// The request's name.
    pub name: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Logits of every prompt position, `[prompt length, vocab]` row-major, when asked for.
    pub prompt_logits: Option<Vec<f32>>,
    /// Generated tokens (ending with an end-of-sequence token if one was produced).
    pub new_tokens: Vec<u32>,
}

/// Options of [`Engine::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Return the logits of every prompt position (otherwise only generation runs the LM head, on the
    /// last position).
    pub prompt_logits: bool,
    /// Keep generating after an end-of-sequence token (benchmarks: every row runs to its budget).
    pub ignore_eos: bool,
    /// Positions per prefill pass when prompt logits are not asked for ([`PREFILL_COLUMNS`] when
    /// `None`; 0 counts as 1).
    pub prefill_columns: Option<usize>,
}

/// Where the time of one [`Engine::run_with_stats`] went.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunStats {
    /// Rows that ran.
    pub rows: usize,
    /// Seconds building the batch's LoRA state (unique adapters + mapping matrix → per-row pairs).
    pub lora_secs: f64,
    /// Prompt tokens of all rows (padding excluded).
    pub prefill_tokens: usize,
    /// Seconds of the prefill forward pass (logits included).
    pub prefill_secs: f64,
    /// Decoding steps (forward passes after the prefill).
    pub decode_steps: usize,
    /// Tokens produced by decoding steps, all rows together.
    pub decode_tokens: usize,
    /// Seconds of the decoding steps.
    pub decode_secs: f64,
}

impl RunStats {
    /// Decoding throughput, tokens per second over all rows.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        if self.decode_secs > 0.0 { self.decode_tokens as f64 / self.decode_secs } else { 0.0 }
    }
}

/// A base model with its tokenizer and adapter pool.
#[derive(Debug)]
pub struct Engine<B: Backend> {
    model: LlamaForCausalLM<B>,
    config: LlamaConfig,
    tokenizer: Option<Tokenizer>,
    adapters: AdapterPool,
    /// The RouterLoRA gate that `gate` rows use, if one is loaded.
    gate: Option<RouterGate<B>>,
    device: B::Device,
    /// How the weights are held (resolved: never [`WeightFormat::Auto`]).
    weights: WeightFormat,
}

/// A request that passed validation, with its prompt's token ids and its adapters resolved.
pub(crate) struct Prepared<'a> {
    request: &'a Request,
    pub(crate) ids: Vec<u32>,
    pub(crate) row: ResolvedRow,
}

/// Positions per prefill pass of [`Engine::run`] when prompt logits are not asked for: longer prompts
/// take several passes (the same cache and last hidden states; attention memory linear in the prompt).
pub const PREFILL_COLUMNS: usize = 512;

/// A prefill in progress: a group of rows' prompts, left-padded to the longest, fed to the model a
/// number of columns at a time ([`Engine::prefill_columns`]) into the group's KV cache.
#[derive(Debug)]
pub(crate) struct Prefill<B: Backend> {
    /// The padded prompts, `[rows, len]` row-major.
    tokens: Vec<i64>,
    rows: usize,
    len: usize,
    /// Each row's padding before its first token.
    pub(crate) pads: Vec<usize>,
    /// Keys and values of the columns fed so far.
    pub(crate) cache: KvCache<B>,
}

impl<B: Backend> Prefill<B> {
    /// Columns fed so far.
    pub(crate) fn done(&self) -> usize {
        self.cache.len()
    }

    /// Prompt positions still to feed, over all rows (padding included).
    pub(crate) fn remaining(&self) -> usize {
        self.rows * self.len.saturating_sub(self.done())
    }

    /// Whether every column has been fed.
    pub(crate) fn is_complete(&self) -> bool {
        self.done() >= self.len
    }

    /// Rows in the group.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Prompt tokens (padding excluded) among the `count` columns from `start`.
    pub(crate) fn real_tokens(&self, start: usize, count: usize) -> usize {
        let end = start + count;
        self.pads.iter().map(|&pad| end.saturating_sub(start.max(pad))).sum()
    }

    /// Keeps only the rows `keep` (in that order).
    pub(crate) fn keep_rows(&mut self, keep: &[usize]) {
        let len = self.len;
        self.tokens = keep.iter().flat_map(|&k| self.tokens[k * len..(k + 1) * len].iter().copied()).collect();
        self.pads = keep.iter().map(|&k| self.pads[k]).collect();
        self.rows = keep.len();
        self.cache.select_rows(keep);
    }
}

impl<B: Backend> Engine<B> {
    /// Loads a model from a GGUF file (block-quantized matrices kept quantized on CPU backends,
    /// [`WeightFormat::Auto`]; tokenizer rebuilt from the metadata) or an HF folder (`config.json`,
    /// `model.safetensors` in f32/f16/bf16, optional `tokenizer.json`).
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self, BatchError> {
        Self::load_with(path, device, WeightFormat::Auto)
    }

    /// [`Engine::load`] with the weights held as `format` says ([`WeightFormat::Dense`]: everything
    /// dequantised to f32, the exact reference).
    pub fn load_with(path: impl AsRef<Path>, device: &B::Device, format: WeightFormat) -> Result<Self, BatchError> {
        let lm = ramole_models::CausalLm::load_with(path, device, format)?;
        Ok(Self::new(lm.model, lm.config, lm.tokenizer, device, format.resolve::<B>()))
    }

    /// An engine from parts; `weights` says how the model's weights are held.
    pub fn new(
        model: LlamaForCausalLM<B>,
        config: LlamaConfig,
        tokenizer: Option<Tokenizer>,
        device: &B::Device,
        weights: WeightFormat,
    ) -> Self {
        let adapters = AdapterPool::new(config.clone());
        Self { model, config, tokenizer, adapters, gate: None, device: device.clone(), weights: weights.resolve::<B>() }
    }

    /// How the model's weights are held: [`WeightFormat::Dense`], [`WeightFormat::Quantized`] or
    /// [`WeightFormat::QuantizedInt8`] (what `auto` amounted to on this backend and CPU).
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// The model.
    pub fn model(&self) -> &LlamaForCausalLM<B> {
        &self.model
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer, if the model came with one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The adapter pool.
    pub fn adapters(&self) -> &AdapterPool {
        &self.adapters
    }

    /// The adapter pool, to add or remove adapters.
    pub fn adapters_mut(&mut self) -> &mut AdapterPool {
        &mut self.adapters
    }

    /// Sets (or removes) the RouterLoRA gate that rows with the `gate` composition use.
    pub fn set_gate(&mut self, gate: Option<RouterGate<B>>) {
        self.gate = gate;
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The RouterLoRA gate, if one is loaded.
    pub fn gate(&self) -> Option<&RouterGate<B>> {
        self.gate.as_ref()
    }

    /// Tokenizes `text` (special tokens parsed, nothing added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BatchError> {
        self.encode_text(text).map_err(|message| BatchError::Request { request: "-".into(), message })
    }

    fn encode_text(&self, text: &str) -> Result<Vec<u32>, String> {
        let tok = self.tokenizer.as_ref().ok_or("the model has no tokenizer: give token ids")?;
        tok.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| format!("tokenizer: {e}"))
    }

    /// Decodes token ids to text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, BatchError> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| BatchError::Request { request: "-".into(), message: "the model has no tokenizer".into() })?;
        tok.decode(ids, true)
            .map_err(|e| BatchError::Request { request: "-".into(), message: format!("tokenizer: {e}") })
    }

    /// Checks one request on its own: prompt tokens, context length, sampling, adapters.
    pub(crate) fn prepare<'a>(&self, request: &'a Request) -> Result<Prepared<'a>, BatchError> {
        let err = |message: String| BatchError::Request { request: request.name.clone(), message };
        let ids = match &request.input {
            RequestInput::Ids(ids) => ids.clone(),
            RequestInput::Prompt(p) => self.encode_text(p).map_err(err)?,
        };
        if ids.is_empty() {
            return Err(err("empty prompt".into()));
        }
        let vocab = self.config.vocab_size;
        if let Some(t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(err(format!("token id {t} is outside the vocabulary (size {vocab})")));
        }
        // Checked: a budget near usize::MAX must not wrap around and pass.
        let ctx = self.config.max_position_embeddings;
        if ids.len().checked_add(request.max_new_tokens).is_none_or(|total| total > ctx) {
            return Err(err(format!(
                "prompt of {} tokens plus {} new tokens exceeds the context of {ctx}",
                ids.len(),
                request.max_new_tokens
            )));
        }
        request.sampling.check().map_err(err)?;
        let row = ResolvedRow::resolve(&self.adapters, &request.row, &request.name)?;
        BatchAdapters::from_resolved(std::slice::from_ref(&row), &[&request.name])?;
        if request.row.composition == Composition::Gate {
            let gate = self
                .gate
                .as_ref()
                .ok_or_else(|| err("the `gate` composition needs a RouterLoRA gate, and none is loaded".into()))?;
            let gated = gate.targets();
            for (name, _) in &request.row.adapters {
                let uncovered =
                    self.adapters.get(name).and_then(|a| a.targets().map(|(_, k)| k).find(|k| !gated.contains(k)));
                if let Some(kind) = uncovered {
                    return Err(err(format!(
                        "adapter `{name}` adapts `{}`, which the gate has no parameters for",
                        kind.name()
                    )));
                }
            }
        }
        Ok(Prepared { request, ids, row })
    }

    /// Runs `requests` as ONE heterogeneous batch: each row with its own adapters, weights and
    /// composition, rows of different lengths left-padded and masked. A request that fails validation
    /// gets its own error; the others run as if it were absent. A row whose logits stop being usable
    /// numbers gets [`BatchError::Numerical`] and leaves the batch; the others go on unaffected.
    pub fn run(&self, requests: &[Request], options: RunOptions) -> Vec<Result<RequestOutput, BatchError>> {
        self.run_with_stats(requests, options).0
    }

    /// [`Engine::run`], with where the time went.
    pub fn run_with_stats(
        &self,
        requests: &[Request],
        options: RunOptions,
    ) -> (Vec<Result<RequestOutput, BatchError>>, RunStats) {
        ramole_core::backend::on_compute_threads(|| self.run_here(requests, options))
    }

    /// [`Engine::run_with_stats`] on the calling thread.
    fn run_here(
        &self,
        requests: &[Request],
        options: RunOptions,
    ) -> (Vec<Result<RequestOutput, BatchError>>, RunStats) {
        let mut stats = RunStats::default();
        let mut results: Vec<Option<Result<RequestOutput, BatchError>>> = Vec::with_capacity(requests.len());
        let mut rows = Vec::new();
        let mut slots = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match self.prepare(r) {
                Ok(p) => {
                    rows.push(p);
                    slots.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !rows.is_empty() {
            match self.run_rows(&rows, options, &mut stats) {
                Ok(outputs) => {
                    for (slot, out) in slots.iter().zip(outputs) {
                        results[*slot] = Some(out);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (slot, p) in slots.iter().zip(&rows) {
                        results[*slot] =
                            Some(Err(BatchError::Request { request: p.request.name.clone(), message: msg.clone() }));
                    }
                }
            }
        }
        let results = results
            .into_iter()
            .zip(requests)
            .map(|(res, req)| {
                res.unwrap_or_else(|| Err(BatchError::Request { request: req.name.clone(), message: "not run".into() }))
            })
            .collect();
        (results, stats)
    }

    /// Prefill + decode for validated rows: one result per row (a row whose logits are not usable
    /// numbers fails alone), or an error of the whole batch.
    fn run_rows(
        &self,
        rows: &[Prepared<'_>],
        options: RunOptions,
        stats: &mut RunStats,
    ) -> Result<Vec<Result<RequestOutput, BatchError>>, BatchError> {
        let clock = Instant::now();
        let n = rows.len();
        let vocab = self.config.vocab_size;
        let resolved: Vec<ResolvedRow> = rows.iter().map(|p| p.row.clone()).collect();
        let names: Vec<&str> = rows.iter().map(|p| p.request.name.as_str()).collect();
        let mut lora = self.lora_state(&resolved, &names)?;
        stats.rows = n;
        stats.lora_secs = clock.elapsed().as_secs_f64();
        let clock = Instant::now();

        let prompts: Vec<&[u32]> = rows.iter().map(|p| p.ids.as_slice()).collect();
        let longest = rows.iter().map(|p| p.request.max_new_tokens).max().unwrap_or(0);
        let mut prefill = self.begin_prefill(&prompts, longest);
        // Long prompts are prefilled PREFILL_COLUMNS positions at a time, so that attention never holds
        // more than `[PREFILL_COLUMNS, T]` scores per head; every position's logits need one pass.
        let columns =
            if options.prompt_logits { usize::MAX } else { options.prefill_columns.unwrap_or(PREFILL_COLUMNS) };
        let mut hidden = self.prefill_columns(&mut prefill, columns, &lora);
        while !prefill.is_complete() {
            hidden = self.prefill_columns(&mut prefill, columns, &lora);
        }
        let Prefill { mut cache, mut pads, .. } = prefill;
        let t = hidden.dims()[1];

        let mut outputs: Vec<RequestOutput> = rows
            .iter()
            .map(|p| RequestOutput {
                name: p.request.name.clone(),
                prompt_ids: p.ids.clone(),
                prompt_logits: None,
                new_tokens: Vec::new(),
            })
            .collect();
        // Logits of the last prompt position of every row, [n, vocab].
        let last: Vec<f32> = if options.prompt_logits {
            let all = to_vec(self.model.logits(hidden));
            let mut last = Vec::with_capacity(n * vocab);
            for (i, (out, &pad)) in outputs.iter_mut().zip(&pads).enumerate() {
                let row = &all[i * t * vocab..(i + 1) * t * vocab];
                out.prompt_logits = Some(row[pad * vocab..].to_vec());
                last.extend_from_slice(&row[(t - 1) * vocab..]);
            }
            last
        } else {
            self.last_logits(hidden)
        };
        // A row whose prompt logits are not usable numbers fails here, whether it decodes or not.
        let mut failed: Vec<Option<BatchError>> = (0..n).map(|_| None).collect();
        for (i, out) in outputs.iter().enumerate() {
            let checked = out.prompt_logits.as_deref().unwrap_or(&last[i * vocab..(i + 1) * vocab]);
            if let Some(problem) = logits_problem(checked, vocab) {
                failed[i] = Some(numerical(rows[i].request, problem, "the prefill"));
            }
        }

        stats.prefill_tokens = rows.iter().map(|p| p.ids.len()).sum();
        stats.prefill_secs = clock.elapsed().as_secs_f64();
        let clock = Instant::now();

        // Decode: all unfinished rows advance together; finished (or failed) rows leave the batch. Line
        // `i` of `logits` (and row `i` of the cache, the LoRA state and `pads`) belongs to `active[i]`.
        let mut samplers: Vec<Sampler> = rows.iter().map(|p| Sampler::new(p.request.sampling)).collect();
        let mut active: Vec<usize> =
            (0..n).filter(|&i| failed[i].is_none() && rows[i].request.max_new_tokens > 0).collect();
        let mut logits: Vec<f32> = active.iter().flat_map(|&i| &last[i * vocab..(i + 1) * vocab]).copied().collect();
        if !active.is_empty() && active.len() < n {
            // Drop the rows that generate nothing before the first decode step (when no row decodes,
            // there is nothing to select: the loop below does not run).
            cache.select_rows(&active);
            lora = lora.select_rows(&active);
            pads = active.iter().map(|&i| pads[i]).collect();
        }
        while !active.is_empty() {
            let mut keep = Vec::with_capacity(active.len()); // lines whose row goes on
            let mut next = Vec::with_capacity(active.len());
            for (line, &row) in active.iter().enumerate() {
                let line_logits = &logits[line * vocab..(line + 1) * vocab];
                let out = &mut outputs[row];
                if !out.new_tokens.is_empty()
                    && let Some(problem) = logits_problem(line_logits, vocab)
                {
                    let when = format!("decoding step {}", out.new_tokens.len());
                    failed[row] = Some(numerical(rows[row].request, problem, &when));
                    continue;
                }
                let tok = samplers[row].pick(line_logits);
                out.new_tokens.push(tok);
                let eos = !options.ignore_eos && self.config.eos_token_ids.contains(&tok);
                if !eos && out.new_tokens.len() < rows[row].request.max_new_tokens {
                    keep.push(line);
                    next.push(i64::from(tok));
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache.select_rows(&keep);
                lora = lora.select_rows(&keep);
                pads = keep.iter().map(|&k| pads[k]).collect();
                active = keep.iter().map(|&k| active[k]).collect();
            }
            logits = self.decode_step(next, &pads, &mut cache, &lora);
            stats.decode_steps += 1;
            stats.decode_tokens += active.len();
        }
        stats.decode_secs = clock.elapsed().as_secs_f64();
        Ok(outputs.into_iter().zip(failed).map(|(out, failed)| failed.map_or(Ok(out), Err)).collect())
    }
}

impl<B: Backend> Engine<B> {
    /// The per-layer, per-row LoRA state of a batch of resolved rows (`names[i]` names row `i` in
    /// errors), with the engine's gate for `gate` rows.
    pub(crate) fn lora_state(&self, rows: &[ResolvedRow], names: &[&str]) -> Result<LlamaLora<B>, BatchError> {
        let batch = BatchAdapters::from_resolved(rows, names)?;
        Ok(batch.llama_lora_gated(&self.config, self.gate.as_ref(), &self.device)?)
    }

    /// A prefill of `prompts`, left-padded to the longest, whose KV cache has room for `budget` more
    /// positions after them; [`Self::prefill_columns`] feeds it to the model.
    pub(crate) fn begin_prefill(&self, prompts: &[&[u32]], budget: usize) -> Prefill<B> {
        let rows = prompts.len();
        let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| len - p.len()).collect();
        let mut tokens = Vec::with_capacity(rows * len);
        for (p, &pad) in prompts.iter().zip(&pads) {
            tokens.extend(std::iter::repeat_n(0i64, pad));
            tokens.extend(p.iter().map(|&x| i64::from(x)));
        }
        let cache = KvCache::with_capacity(self.model.n_layers(), len + budget);
        Prefill { tokens, rows, len, pads, cache }
    }

    /// Feeds the next `columns` columns of `prefill`'s padded prompts (at most those left) to the
    /// model, writing their keys and values into its cache; their hidden states `[rows, columns, d]`.
    /// Fed in one call or in several, the cache and the last hidden states are the same.
    pub(crate) fn prefill_columns(
        &self,
        prefill: &mut Prefill<B>,
        columns: usize,
        lora: &LlamaLora<B>,
    ) -> Tensor<B, 3> {
        let past = prefill.done();
        // At least one column: callers feed a prefill until it is complete, not after.
        let seq = columns.max(1).min(prefill.len - past);
        let n = prefill.rows;
        let mut tokens = Vec::with_capacity(n * seq);
        for row in prefill.tokens.chunks(prefill.len.max(1)) {
            tokens.extend_from_slice(&row[past..past + seq]);
        }
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [n, seq]), &self.device);
        let attn = AttentionInput::left_padded(&prefill.pads, past, seq, &self.device);
        self.model.forward(tokens, &attn, &mut prefill.cache, Some(lora))
    }

    /// The logits of the last position of every row of `hidden` (`[rows, seq, d]`), `[rows × vocab]`.
    pub(crate) fn last_logits(&self, hidden: Tensor<B, 3>) -> Vec<f32> {
        let [n, t, d] = hidden.dims();
        to_vec(self.model.logits(hidden.slice([0..n, t - 1..t, 0..d])))
    }

    /// One decoding step: row `i` of the cache is fed `next[i]` (with `pads[i]` padding slots before
    /// its first token); the logits `[rows × vocab]`.
    pub(crate) fn decode_step(
        &self,
        next: Vec<i64>,
        pads: &[usize],
        cache: &mut KvCache<B>,
        lora: &LlamaLora<B>,
    ) -> Vec<f32> {
        let m = next.len();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [m, 1]), &self.device);
        let attn = AttentionInput::left_padded(pads, cache.len(), 1, &self.device);
        let hidden = self.model.forward(tokens, &attn, cache, Some(lora));
        to_vec(self.model.logits(hidden))
    }
}

/// What makes a row of logits unusable, if anything: a NaN or an infinity, or all `vocab` values
/// equal — the final RMSNorm zeroes a hidden state whose mean square overflowed f32 (activations
/// beyond ~1e19), and the LM head then gives the same logit to every token.
pub(crate) fn logits_problem(logits: &[f32], vocab: usize) -> Option<&'static str> {
    if logits.iter().any(|v| !v.is_finite()) {
        return Some("its logits are not finite (NaN or infinity)");
    }
    for row in logits.chunks(vocab.max(1)) {
        if row.len() > 1 && row.iter().all(|&v| v == row[0]) {
            return Some("its logits are all equal (its activations overflowed f32)");
        }
    }
    None
}

fn numerical(request: &Request, problem: &str, when: &str) -> BatchError {
    BatchError::Numerical { request: request.name.clone(), message: numerical_message(problem, when) }
}

/// What [`BatchError::Numerical`] says of a row whose logits show `problem` after `when`.
pub(crate) fn numerical_message(problem: &str, when: &str) -> String {
    format!("{problem} after {when}: its adapters or adapter weights make the model diverge; the row left the batch")
}

/// Reads a float tensor back to the host.
pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}
