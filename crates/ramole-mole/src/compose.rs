//! From a batch's rows to the per-layer, per-row LoRA state of one forward pass.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use ramole_core::lora::{Composition, LoraStack, MixPlan, RowMix};
use ramole_models::llama::{LinearKind, LlamaConfig, LlamaLora};

use crate::{AdapterPool, LoraAdapter, MoleError, RouterGate};

/// What one row of a batch asks for: named adapters with weights, and how to combine them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowRequest {
    /// `(adapter name, weight)` pairs; empty for the base model.
    pub adapters: Vec<(String, f32)>,
    /// How they are combined.
    pub composition: Composition,
}

/// The adapters of a batch: its unique adapters and the mapping matrix `[rows × unique]` of weights
/// (with each row's composition), validated against the pool.
#[derive(Debug, Clone)]
pub struct BatchAdapters {
    unique: Vec<Arc<LoraAdapter>>,
    plan: MixPlan,
}

/// One row's adapters resolved to the loaded adapters themselves (held, so the row keeps them even
/// when they leave the pool while it runs: continuous batching pins a running row's adapters this way).
#[derive(Debug, Clone, Default)]
pub struct ResolvedRow {
    /// `(adapter, weight)` pairs; empty for the base model.
    pub adapters: Vec<(Arc<LoraAdapter>, f32)>,
    /// How they are combined.
    pub composition: Composition,
}

impl ResolvedRow {
    /// Resolves `row` against `pool`: every adapter loaded, none listed twice, every weight (times its
    /// adapter's scale) a finite number. `request` names the row in errors.
    pub fn resolve(pool: &AdapterPool, row: &RowRequest, request: &str) -> Result<Self, MoleError> {
        let mut adapters = Vec::with_capacity(row.adapters.len());
        let mut seen = std::collections::HashSet::with_capacity(row.adapters.len());
        for (name, w) in &row.adapters {
            // By name, so the error names the adapter (the mapping matrix only knows indices).
            if !seen.insert(name.as_str()) {
                return Err(MoleError::Request {
                    request: request.into(),
                    message: format!("adapter `{name}` is listed twice"),
                });
            }
            let adapter = pool.get(name).ok_or_else(|| match pool.load_error(name) {
                Some(reason) => MoleError::AdapterNotLoaded {
                    request: request.into(),
                    adapter: name.clone(),
                    reason: reason.to_string(),
                },
                None => MoleError::UnknownAdapter { request: request.into(), adapter: name.clone() },
            })?;
            // The weight is folded into the adapter's B with its scale: both must stay numbers.
            let scale = adapter.config().scale();
            if !w.is_finite() || !(w * scale).is_finite() {
                return Err(MoleError::Request {
                    request: request.into(),
                    message: format!(
                        "weight {w} of adapter `{name}` is not usable: times the adapter's scale {scale} it is not a finite number"
                    ),
                });
            }
            adapters.push((adapter.clone(), *w));
        }
        Ok(Self { adapters, composition: row.composition })
    }

    /// The names of the row's adapters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.iter().map(|(a, _)| a.name())
    }
}

impl BatchAdapters {
    /// Resolves `rows` against `pool`. `names[i]` names row `i` in errors (e.g. the request name).
    pub fn resolve(pool: &AdapterPool, rows: &[RowRequest], names: &[&str]) -> Result<Self, MoleError> {
        let resolved = rows
            .iter()
            .enumerate()
            .map(|(i, row)| ResolvedRow::resolve(pool, row, &row_name(names, i)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_resolved(&resolved, names)
    }

    /// The batch of rows already resolved ([`ResolvedRow::resolve`]): the unique adapters (by
    /// identity, so two rows naming one adapter share its column) and the mapping matrix, each row
    /// checked on its own first so that an error names it.
    pub fn from_resolved(rows: &[ResolvedRow], names: &[&str]) -> Result<Self, MoleError> {
        let mut unique: Vec<Arc<LoraAdapter>> = Vec::new();
        let mut mixes = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let mut entries = Vec::with_capacity(row.adapters.len());
            for (adapter, w) in &row.adapters {
                let u = match unique.iter().position(|a| Arc::ptr_eq(a, adapter)) {
                    Some(u) => u,
                    None => {
                        unique.push(adapter.clone());
                        unique.len() - 1
                    }
                };
                entries.push((u, *w));
            }
            let mix = RowMix { composition: row.composition, entries };
            // Validate the row alone first, so the error names the request.
            MixPlan::new(vec![mix.clone()], unique.len())
                .map_err(|e| MoleError::Request { request: row_name(names, i), message: e.to_string() })?;
            if row.composition == Composition::Fusion {
                check_fusion(&row_name(names, i), &mix, &unique)?;
            }
            mixes.push(mix);
        }
        let plan = MixPlan::new(mixes, unique.len())?;
        Ok(Self { unique, plan })
    }

    /// The batch's unique adapters (columns of the mapping matrix).
    pub fn unique(&self) -> &[Arc<LoraAdapter>] {
        &self.unique
    }

    /// The mapping matrix and compositions.
    pub fn plan(&self) -> &MixPlan {
        &self.plan
    }

    /// The per-layer, per-row LoRA state for a Llama model, built with batched ops: for each linear
    /// layer that some adapter targets, the unique adapters' factors are stacked and the mapping
    /// matrix turns the stack into one low-rank pair per row.
    pub fn llama_lora<B: Backend>(&self, config: &LlamaConfig, device: &B::Device) -> Result<LlamaLora<B>, MoleError> {
        self.llama_lora_gated(config, None, device)
    }

    /// [`Self::llama_lora`] with a RouterLoRA gate, which [`Composition::Gate`] rows need: every
    /// layer an adapter of a gate row adapts must have a gate, else the error names the layer.
    pub fn llama_lora_gated<B: Backend>(
        &self,
        config: &LlamaConfig,
        gate: Option<&RouterGate<B>>,
        device: &B::Device,
    ) -> Result<LlamaLora<B>, MoleError> {
        let mut lora = LlamaLora::none(config.num_hidden_layers);
        if self.plan.is_base_only() {
            return Ok(lora);
        }
        for (layer, slots) in lora.layers.iter_mut().enumerate() {
            for kind in LinearKind::ALL {
                let factors: Vec<_> = self.unique.iter().map(|a| a.factors(layer, kind)).collect();
                let [d_out, d_in] = config.linear_shape(kind);
                if let Some(stack) = LoraStack::new(&factors, d_in, d_out, device)? {
                    let gate_layer = gate.and_then(|g| g.layer(layer, kind));
                    let rows = stack
                        .rows_gated(&self.plan, gate_layer.as_ref())
                        .map_err(|e| MoleError::Training(format!("block {layer}, {}: {e}", kind.path())))?;
                    slots[kind.slot()] = Some(rows);
                }
            }
        }
        Ok(lora)
    }
}

/// How errors name row `i`: `names[i]`, or `row i`.
fn row_name(names: &[&str], i: usize) -> String {
    names.get(i).map_or_else(|| format!("row {i}"), |n| n.to_string())
}

/// Fusion averages parameters: the adapters must share rank, scale and target modules.
fn check_fusion(request: &str, mix: &RowMix, unique: &[Arc<LoraAdapter>]) -> Result<(), MoleError> {
    let mut adapters = mix.entries.iter().map(|&(u, _)| &unique[u]);
    let Some(first) = adapters.next() else { return Ok(()) };
    for other in adapters {
        let (a, b) = (first.config(), other.config());
        let same_targets = first.targets().eq(other.targets());
        if a.r != b.r || a.scale() != b.scale() || !same_targets {
            return Err(MoleError::Request {
                request: request.into(),
                message: format!(
                    "fusion needs adapters of equal rank, scale and target modules: `{}` (r={}, s={}) and `{}` (r={}, s={}){}",
                    first.name(),
                    a.r,
                    a.scale(),
                    other.name(),
                    b.r,
                    b.scale(),
                    if same_targets { "" } else { " target different modules" }
                ),
            });
        }
    }
    Ok(())
}
