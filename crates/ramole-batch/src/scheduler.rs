//! Continuous batching: a running batch that admits requests at any step and retires each row as soon
//! as it finishes, so that nobody waits for a batch to drain.
//!
//! A [`Scheduler`] owns the running batch: its [`Sequence`]s (each owning its request state: prompt,
//! sampler, tokens so far, padding, and its adapters, held so that an adapter removed from the engine
//! while the row runs stays with it), the batch's KV cache and its per-row LoRA state, row `i` of both
//! belonging to `running[i]`. [`Scheduler::step`] first starts the prefill of the requests waiting for
//! a place (in groups of similar prompt lengths, each left-padded to its longest prompt) and moves the
//! prefills forward by at most [`Scheduler::prefill_chunk`] tokens, in passes of their own, so that a
//! long prompt is prefilled over several steps and never stalls the decoding rows for long; a group
//! whose prompts are done samples its first tokens and merges into the running batch (the shorter side
//! is left-padded and masked). Then every running row produces its next token in ONE
//! forward pass, whatever adapters and composition each row has. Rows leave as they finish (end of
//! sequence, budget, a numerical failure, or [`Scheduler::cancel`]); padding that no remaining row
//! needs is trimmed from the cache.
//!
//! Greedy outputs equal [`crate::Engine::run`]'s on the same requests whatever the arrival order and
//! the chunk size: every row is masked to its own tokens and RoPE positions count from its own first
//! token. [`Batching::Static`] admits requests only into an empty batch (which then drains), the
//! baseline that continuous batching is measured against.

use std::collections::VecDeque;
use std::time::Instant;

use burn::tensor::backend::Backend;
use ramole_models::llama::{KvCache, LlamaLora};
use ramole_mole::ResolvedRow;

use crate::engine::{Prefill, logits_problem, numerical_message};
use crate::sampling::Sampler;
use crate::{BatchError, Engine, Request};

/// The identity of a sequence within its scheduler.
pub type SequenceId = u64;

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced an end-of-sequence token (the last of its tokens).
    Eos,
    /// It reached its token budget.
    Length,
}

/// What a [`Scheduler::step`] produced, in order.
#[derive(Debug)]
pub enum Event {
    /// A sequence produced a token.
    Token {
        /// The sequence.
        id: SequenceId,
        /// The token.
        token: u32,
    },
    /// A sequence finished and left the batch.
    Finished {
        /// The sequence.
        id: SequenceId,
        /// Why.
        reason: FinishReason,
        /// Every token it produced (an end-of-sequence token included when it produced one).
        new_tokens: Vec<u32>,
    },
    /// A sequence failed and left the batch (the others go on).
    Failed {
        /// The sequence.
        id: SequenceId,
        /// Why.
        error: BatchError,
    },
}

/// A request admitted to a scheduler, with all of its state.
#[derive(Debug)]
struct Sequence {
    id: SequenceId,
    /// The request's name (errors name it).
    name: String,
    prompt: Vec<u32>,
    max_new_tokens: usize,
    sampler: Sampler,
    new_tokens: Vec<u32>,
    /// Padding slots before its first token in the batch's cache.
    pad: usize,
    /// Its adapters, held.
    row: ResolvedRow,
}

impl Sequence {
    /// Why it is done, if it is.
    fn finished(&self, eos: &[u32], ignore_eos: bool) -> Option<FinishReason> {
        match self.new_tokens.last() {
            Some(t) if !ignore_eos && eos.contains(t) => Some(FinishReason::Eos),
            _ if self.new_tokens.len() >= self.max_new_tokens => Some(FinishReason::Length),
            _ => None,
        }
    }

    fn finish_event(&mut self, reason: FinishReason) -> Event {
        Event::Finished { id: self.id, reason, new_tokens: std::mem::take(&mut self.new_tokens) }
    }
}

/// When waiting requests may join the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batching {
    /// At any step, as rows free up (continuous batching).
    #[default]
    Continuous,
    /// Only when the batch is empty: a batch runs until its last row finishes (static batching, the
    /// baseline of `ramole bench-serve`).
    Static,
}

/// Prompt tokens prefilled per step by default (padding included).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Where a scheduler's time went, since it was made: wall-clock time of the calls, which on the CPU
/// backends is the work itself (on a GPU backend, work queued by a prefill chunk that does not end its
/// group may be counted in the decoding step that follows it).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SchedulerStats {
    /// Prefill forward passes (chunks).
    pub prefill_passes: u64,
    /// Prompt tokens prefilled (padding excluded).
    pub prefill_tokens: u64,
    /// Seconds in prefill passes (the first tokens' logits included).
    pub prefill_secs: f64,
    /// Decoding steps.
    pub decode_steps: u64,
    /// Rows of all decoding steps together (each produced a token unless it failed).
    pub decode_rows: u64,
    /// Seconds in decoding steps.
    pub decode_secs: f64,
    /// Seconds building per-row LoRA states (a group's, and the batch's when a group joins it).
    pub lora_secs: f64,
}

/// A group of admitted sequences whose prompts are being prefilled, with their own cache and LoRA
/// state: row `i` of both belongs to `sequences[i]`.
#[derive(Debug)]
struct Prefilling<B: Backend> {
    sequences: Vec<Sequence>,
    prefill: Prefill<B>,
    lora: LlamaLora<B>,
}

impl<B: Backend> Prefilling<B> {
    /// Takes sequence `i` (one of several) out of the group: its row of the cache and LoRA state too.
    fn remove(&mut self, i: usize) {
        let keep: Vec<usize> = (0..self.sequences.len()).filter(|&k| k != i).collect();
        self.sequences.remove(i);
        self.prefill.keep_rows(&keep);
        self.lora = self.lora.select_rows(&keep);
    }
}

/// The running batch's tensors: row `i` of each belongs to `Scheduler::running[i]`.
#[derive(Debug)]
struct BatchState<B: Backend> {
    cache: KvCache<B>,
    lora: LlamaLora<B>,
}

/// A continuous-batching scheduler over an [`Engine`]: admits, steps and retires sequences.
///
/// The engine is passed to every call rather than held, so that its adapters can change between
/// steps (an adapter added is usable by the next request; one removed stays with the rows using it).
#[derive(Debug)]
pub struct Scheduler<B: Backend> {
    max_rows: usize,
    ignore_eos: bool,
    batching: Batching,
    prefill_chunk: usize,
    waiting: VecDeque<Sequence>,
    /// Groups being prefilled, oldest first.
    prefilling: VecDeque<Prefilling<B>>,
    running: Vec<Sequence>,
    state: Option<BatchState<B>>,
    next_id: SequenceId,
    stats: SchedulerStats,
}

impl<B: Backend> Scheduler<B> {
    /// A scheduler running at most `max_rows` rows at once (at least 1).
    pub fn new(max_rows: usize) -> Self {
        Self {
            max_rows: max_rows.max(1),
            ignore_eos: false,
            batching: Batching::Continuous,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            waiting: VecDeque::new(),
            prefilling: VecDeque::new(),
            running: Vec::new(),
            state: None,
            next_id: 0,
            stats: SchedulerStats::default(),
        }
    }

    /// Keep generating after end-of-sequence tokens (benchmarks: every row runs to its budget).
    pub fn ignore_eos(mut self, ignore: bool) -> Self {
        self.ignore_eos = ignore;
        self
    }

    /// When waiting requests join (continuous by default).
    pub fn batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// Most prompt tokens (padding included) prefilled per step, at least one column of the oldest
    /// group's padded prompts: a longer prefill is split over several steps, each followed by a
    /// decoding step of the running rows ([`DEFAULT_PREFILL_CHUNK`] by default; 0 counts as 1).
    pub fn prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// Checks `request` against `engine` (prompt, context, sampling, adapters and composition, as
    /// [`Engine::run`] does) and queues it; it joins the running batch at the next [`Self::step`]
    /// with a free row. Its adapters are held from now on.
    pub fn admit(&mut self, engine: &Engine<B>, request: Request) -> Result<SequenceId, BatchError> {
        let prepared = engine.prepare(&request)?;
        let (prompt, row) = (prepared.ids, prepared.row);
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence {
            id,
            name: request.name,
            prompt,
            max_new_tokens: request.max_new_tokens,
            sampler: Sampler::new(request.sampling),
            new_tokens: Vec::new(),
            pad: 0,
            row,
        });
        Ok(id)
    }

    /// Removes a sequence, waiting, being prefilled or running (its row leaves the batch at once);
    /// false when there is no such sequence (it finished or failed already).
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some((g, i)) = self
            .prefilling
            .iter()
            .enumerate()
            .find_map(|(g, group)| group.sequences.iter().position(|s| s.id == id).map(|i| (g, i)))
        {
            let group = &mut self.prefilling[g];
            if group.sequences.len() == 1 {
                self.prefilling.remove(g);
            } else {
                group.remove(i);
            }
            return true;
        }
        let Some(i) = self.running.iter().position(|s| s.id == id) else { return false };
        let keep: Vec<usize> = (0..self.running.len()).filter(|&k| k != i).collect();
        self.keep_rows(&keep);
        true
    }

    /// Where the time went so far.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// Sequences queued for a row.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences holding a row: decoding, or with their prompt being prefilled.
    pub fn running(&self) -> usize {
        self.running.len() + self.prefilling.iter().map(|g| g.sequences.len()).sum::<usize>()
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running() == 0
    }

    /// Names of the adapters the queued and running sequences hold (with repeats).
    pub fn adapters_in_use(&self) -> impl Iterator<Item = &str> {
        let prefilling = self.prefilling.iter().flat_map(|g| g.sequences.iter());
        self.waiting.iter().chain(prefilling).chain(&self.running).flat_map(|s| s.row.names())
    }

    /// One step: the sequences waiting for a row that fit start their prefill (in groups of similar
    /// prompt lengths, so that little of a pass is padding); prefill passes then feed at most
    /// [`Self::prefill_chunk`] tokens of the groups, oldest first (a group whose prompts are done
    /// produces its first tokens and joins the batch); then every running row produces its next
    /// token in one forward pass. Returns the tokens, finished and failed sequences of this step.
    pub fn step(&mut self, engine: &Engine<B>) -> Vec<Event> {
        ramole_core::backend::on_compute_threads(|| self.step_here(engine))
    }

    /// [`Scheduler::step`] on the calling thread.
    fn step_here(&mut self, engine: &Engine<B>) -> Vec<Event> {
        let mut events = Vec::new();
        let admits = match self.batching {
            Batching::Continuous => true,
            Batching::Static => self.running() == 0,
        };
        let room = self.max_rows.saturating_sub(self.running());
        if admits && room > 0 && !self.waiting.is_empty() {
            let newcomers: Vec<Sequence> = self.waiting.drain(..room.min(self.waiting.len())).collect();
            for group in by_length(newcomers) {
                self.begin(engine, group, &mut events);
            }
        }
        // The step's prefill budget is shared: the shortest remaining prefills first, so that a short prompt
        // behind a long one is answered between the long one's chunks instead of after it; half of the budget
        // stays for the oldest group, so that a stream of short prompts cannot starve it. Every group fed
        // gets at least one column; a group left unfed keeps its place.
        let mut budget = self.prefill_chunk;
        let mut groups: Vec<(usize, Prefilling<B>)> = self.prefilling.drain(..).enumerate().collect();
        let oldest = (!groups.is_empty()).then(|| groups.remove(0));
        let reserve = oldest.as_ref().map_or(0, |(_, g)| (budget / 2).min(g.prefill.remaining()));
        groups.sort_by_key(|(_, g)| g.prefill.remaining());
        let mut waiting: Vec<(usize, Prefilling<B>)> = Vec::new();
        for (index, mut group) in groups.into_iter().chain(oldest) {
            let rows = group.prefill.rows().max(1);
            let is_oldest = index == 0;
            let usable = if is_oldest { budget } else { budget.saturating_sub(reserve) };
            if !is_oldest && usable < rows {
                waiting.push((index, group));
                continue;
            }
            let clock = Instant::now();
            let columns = (usable / rows).max(1);
            let before = group.prefill.done();
            let hidden = engine.prefill_columns(&mut group.prefill, columns, &group.lora);
            let fed = group.prefill.done() - before;
            budget = budget.saturating_sub(fed * rows);
            let last = group.prefill.is_complete().then(|| engine.last_logits(hidden));
            self.stats.prefill_passes += 1;
            self.stats.prefill_tokens += group.prefill.real_tokens(before, fed) as u64;
            self.stats.prefill_secs += clock.elapsed().as_secs_f64();
            match last {
                Some(last) => self.join(engine, group, &last, &mut events),
                None => waiting.push((index, group)),
            }
        }
        // The groups still prefilling, in their order of arrival.
        waiting.sort_by_key(|(index, _)| *index);
        self.prefilling.extend(waiting.into_iter().map(|(_, g)| g));
        if !self.running.is_empty() {
            let clock = Instant::now();
            let rows = self.running.len();
            self.decode(engine, &mut events);
            self.stats.decode_steps += 1;
            self.stats.decode_rows += rows as u64;
            self.stats.decode_secs += clock.elapsed().as_secs_f64();
        }
        events
    }

    /// Starts the prefill of `newcomers` as one group.
    fn begin(&mut self, engine: &Engine<B>, newcomers: Vec<Sequence>, events: &mut Vec<Event>) {
        let lora = match lora_of(engine, &newcomers, &mut self.stats) {
            Ok(lora) => lora,
            Err(e) => return fail_all(newcomers, &e, events),
        };
        let prompts: Vec<&[u32]> = newcomers.iter().map(|s| s.prompt.as_slice()).collect();
        let longest = newcomers.iter().map(|s| s.max_new_tokens).max().unwrap_or(0);
        let prefill = engine.begin_prefill(&prompts, longest);
        self.prefilling.push_back(Prefilling { sequences: newcomers, prefill, lora });
    }

    /// A prefilled group (`last`: the logits of each row's last prompt position) samples its first
    /// tokens; the survivors merge into the running batch.
    fn join(&mut self, engine: &Engine<B>, group: Prefilling<B>, last: &[f32], events: &mut Vec<Event>) {
        let vocab = engine.config().vocab_size;
        let Prefilling { sequences: newcomers, prefill, lora } = group;
        let Prefill { mut cache, pads, .. } = prefill;
        let n = newcomers.len();
        let eos = &engine.config().eos_token_ids;
        let mut keep = Vec::with_capacity(n);
        let mut joining = Vec::with_capacity(n);
        for (line, (mut s, pad)) in newcomers.into_iter().zip(pads).enumerate() {
            s.pad = pad;
            let logits = &last[line * vocab..(line + 1) * vocab];
            if let Some(problem) = logits_problem(logits, vocab) {
                let error =
                    BatchError::Numerical { request: s.name, message: numerical_message(problem, "the prefill") };
                events.push(Event::Failed { id: s.id, error });
                continue;
            }
            if s.max_new_tokens == 0 {
                events.push(s.finish_event(FinishReason::Length));
                continue;
            }
            let token = s.sampler.pick(logits);
            s.new_tokens.push(token);
            events.push(Event::Token { id: s.id, token });
            if let Some(reason) = s.finished(eos, self.ignore_eos) {
                events.push(s.finish_event(reason));
                continue;
            }
            keep.push(line);
            joining.push(s);
        }
        if joining.is_empty() {
            return;
        }
        if keep.len() < n {
            cache.select_rows(&keep);
        }
        // Padding that every joining row has (its longest prompt left the group) is not kept.
        let trim = joining.iter().map(|s| s.pad).min().unwrap_or(0);
        if trim > 0 {
            cache.trim_front(trim);
            joining.iter_mut().for_each(|s| s.pad -= trim);
        }
        match self.state.take() {
            Some(mut state) if !self.running.is_empty() => {
                let (pad_running, pad_joining) = state.cache.merge(cache);
                self.running.iter_mut().for_each(|s| s.pad += pad_running);
                joining.iter_mut().for_each(|s| s.pad += pad_joining);
                self.running.extend(joining);
                // The LoRA state of the whole batch, rebuilt from the rows' held adapters. Every row
                // resolved on its own before: a failure here is the batch's.
                match lora_of(engine, &self.running, &mut self.stats) {
                    Ok(lora) => self.state = Some(BatchState { cache: state.cache, lora }),
                    Err(e) => fail_all(std::mem::take(&mut self.running), &e, events),
                }
            }
            _ => {
                let lora = if keep.len() < n { lora.select_rows(&keep) } else { lora };
                self.running = joining;
                self.state = Some(BatchState { cache, lora });
            }
        }
    }

    /// Every running row feeds its last token and samples the next one, in one forward pass.
    fn decode(&mut self, engine: &Engine<B>, events: &mut Vec<Event>) {
        let Some(state) = self.state.as_mut() else { return };
        let vocab = engine.config().vocab_size;
        let m = self.running.len();
        let next: Vec<i64> = self.running.iter().map(|s| s.new_tokens.last().map_or(0, |&t| i64::from(t))).collect();
        let pads: Vec<usize> = self.running.iter().map(|s| s.pad).collect();
        let logits = engine.decode_step(next, &pads, &mut state.cache, &state.lora);

        let eos = &engine.config().eos_token_ids;
        let mut keep = Vec::with_capacity(m);
        for (line, s) in self.running.iter_mut().enumerate() {
            let row = &logits[line * vocab..(line + 1) * vocab];
            if let Some(problem) = logits_problem(row, vocab) {
                let when = format!("decoding step {}", s.new_tokens.len());
                let error =
                    BatchError::Numerical { request: s.name.clone(), message: numerical_message(problem, &when) };
                events.push(Event::Failed { id: s.id, error });
                continue;
            }
            let token = s.sampler.pick(row);
            s.new_tokens.push(token);
            events.push(Event::Token { id: s.id, token });
            match s.finished(eos, self.ignore_eos) {
                Some(reason) => events.push(s.finish_event(reason)),
                None => keep.push(line),
            }
        }
        if keep.len() < m {
            self.keep_rows(&keep);
        }
    }

    /// Keeps only the running rows `keep` (in that order) and trims the cache positions that are
    /// padding for every remaining row.
    fn keep_rows(&mut self, keep: &[usize]) {
        if keep.is_empty() {
            self.running.clear();
            self.state = None;
            return;
        }
        let mut kept: Vec<Option<Sequence>> = std::mem::take(&mut self.running).into_iter().map(Some).collect();
        self.running = keep.iter().filter_map(|&k| kept.get_mut(k).and_then(Option::take)).collect();
        if let Some(state) = self.state.as_mut() {
            state.cache.select_rows(keep);
            state.lora = state.lora.select_rows(keep);
            let trim = self.running.iter().map(|s| s.pad).min().unwrap_or(0);
            if trim > 0 {
                state.cache.trim_front(trim);
                self.running.iter_mut().for_each(|s| s.pad -= trim);
            }
        }
    }
}

/// Padded positions a prefill group may have for each prompt token: above it, a longer prompt starts a
/// group of its own.
const MAX_PADDED_PER_TOKEN: f64 = 1.25;

/// `sequences` in groups of similar prompt lengths (shortest first), each padded to its longest prompt
/// with at most [`MAX_PADDED_PER_TOKEN`] positions per prompt token.
fn by_length(mut sequences: Vec<Sequence>) -> Vec<Vec<Sequence>> {
    sequences.sort_by_key(|s| s.prompt.len());
    let mut groups: Vec<Vec<Sequence>> = Vec::new();
    let mut real = 0usize;
    for s in sequences {
        let len = s.prompt.len();
        let fits = groups.last().is_some_and(|g| {
            let padded = (g.len() + 1) * len; // sorted: this prompt is the group's longest
            padded as f64 <= MAX_PADDED_PER_TOKEN * (real + len) as f64
        });
        if fits {
            real += len;
            if let Some(g) = groups.last_mut() {
                g.push(s);
            }
        } else {
            real = len;
            groups.push(vec![s]);
        }
    }
    groups
}

/// Every sequence of `sequences` fails with `error`'s message.
fn fail_all(sequences: Vec<Sequence>, error: &BatchError, events: &mut Vec<Event>) {
    let message = error.to_string();
    for s in sequences {
        events
            .push(Event::Failed { id: s.id, error: BatchError::Request { request: s.name, message: message.clone() } });
    }
}

/// The per-row LoRA state of `sequences`, from the adapters they hold; the time it took is counted in
/// `stats`.
fn lora_of<B: Backend>(
    engine: &Engine<B>,
    sequences: &[Sequence],
    stats: &mut SchedulerStats,
) -> Result<LlamaLora<B>, BatchError> {
    let clock = Instant::now();
    let rows: Vec<ResolvedRow> = sequences.iter().map(|s| s.row.clone()).collect();
    let names: Vec<&str> = sequences.iter().map(|s| s.name.as_str()).collect();
    let lora = engine.lora_state(&rows, &names);
    stats.lora_secs += clock.elapsed().as_secs_f64();
    lora
}
