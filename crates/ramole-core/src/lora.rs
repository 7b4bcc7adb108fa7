//! Per-row LoRA composition for heterogeneous batches.
//!
//! For one linear layer `y = x Wᵀ`, a batch row `b` that uses adapters `i` with weights `wᵢ` computes
//!
//! - **single / mixture**: `y = x Wᵀ + Σᵢ wᵢ sᵢ (x Aᵢᵀ) Bᵢᵀ`
//! - **fusion**: `y = x Wᵀ + s (x (Σᵢ wᵢ Aᵢ)ᵀ) (Σᵢ wᵢ Bᵢ)ᵀ`
//!
//! where `Aᵢ` is `[r, d_in]`, `Bᵢ` is `[d_out, r]` (PEFT layout) and `sᵢ` the adapter's scale
//! (`alpha / r`, or `alpha / √r` with rsLoRA).
//!
//! The fast path never loops over adapters. The batch's unique adapters are stacked once per layer
//! ([`LoraStack`]: `a` `[U, r_max, d_in]`, `b` `[U, r_max, d_out]`, ranks zero-padded), and a
//! [`MixPlan`] (the mapping matrix `[rows × U]` of weights plus each row's composition) turns the stack
//! into the batch's per-row update ([`RowLora`]) in one of three layouts ([`RowLayout`]):
//!
//! - **gathered**, one low-rank pair per row: mixture rows `select` their slots from the stack, with
//!   weights and scales folded into the `b` side and slots laid along the rank axis
//!   (`[rows, K·r_max, d_in]`); fusion rows multiply their rows of the mapping matrix with the
//!   flattened stack. Applying it is two batched matmuls.
//! - **shared**, the stack itself plus the mapping matrix spread over the rank columns
//!   (`[rows, 1, U·r_max]`): two 2-D matmuls and a product. It reads each adapter once per step
//!   however many rows use it, which wins when rows mix adapters that other rows use too.
//! - **host** (the CPU backends, every composition): [`HostRows`], one kernel call per layer in
//!   which each token reads its row's adapters from the stack in place (as Punica's BGMV does on a
//!   GPU) and weighs them itself (Arrow's and the gate's per-token weights in the same pass): no
//!   per-row copies, no products with adapters a row does not use, and no tensor ops (a linear kept
//!   quantized adds the update to its product on the host).
//!
//! Either way the cost per layer does not grow with the number of adapters a row uses by a loop. The
//! update depends only on the batch's adapters, not on the tokens, so it is built once per batch and
//! reused by every decoding step. [`reference`](mod@reference) holds the plain implementation.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::CoreError;

mod host;
pub mod reference;

pub use host::HostRows;
use host::HostStack;

/// How a row combines the adapters it uses.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Composition {
    /// One adapter (or none: the base model): `y = Wx + w s B A x`.
    #[default]
    Single,
    /// Weighted sum of the adapters' outputs: `y = Wx + Σ wᵢ sᵢ Bᵢ Aᵢ x`.
    Mixture,
    /// Weighted average of the adapters' parameters: `y = Wx + s (Σ wᵢ Bᵢ)(Σ wᵢ Aᵢ) x`.
    /// The adapters must share rank, scale and target modules.
    Fusion,
    /// Arrow routing (PEFT's `ArrowConfig`), training-free and per token: in every adapted layer
    /// each token `x` scores the row's adapters by `|x · protoᵢ|` (protoᵢ: the top right singular
    /// vector of `Bᵢ Aᵢ`), keeps the `top_k` best and weights them by `softmax(score / T)`:
    /// `y = Wx + Σ coeffᵢ sᵢ Bᵢ Aᵢ x`. The row's adapter weights play no part.
    Arrow(ArrowParams),
    /// RouterLoRA, RAMoLE's gate, per token and per layer: with `vᵢ = sᵢ Bᵢ Aᵢ x` for the row's
    /// adapters, `q = A_g x` and `kᵢ = B_gᵀ vᵢ` (the layer's [`GateLayer`]),
    /// `αᵢ = softmax(⟨q, kᵢ⟩ / √r_g)` over the row's adapters and `y = Wx + Σ αᵢ vᵢ`. The gate has no
    /// per-adapter parameters, so it weighs adapters it never saw. The row's adapter weights play no part.
    Gate,
}

/// The settings of [`Composition::Arrow`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrowParams {
    /// Adapters kept per token (at least 1; all of the row's when it has fewer).
    #[serde(default = "ArrowParams::default_top_k")]
    pub top_k: usize,
    /// Softmax temperature of the kept scores (positive, finite).
    #[serde(default = "ArrowParams::default_temperature")]
    pub temperature: f32,
}

impl ArrowParams {
    fn default_top_k() -> usize {
        3
    }

    fn default_temperature() -> f32 {
        1.0
    }

    /// Whether the settings are usable: `top_k ≥ 1`, a positive finite temperature.
    pub fn validate(&self) -> Result<(), String> {
        if self.top_k == 0 {
            return Err("arrow top_k must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("arrow temperature must be a positive finite number, got {}", self.temperature));
        }
        Ok(())
    }
}

impl Default for ArrowParams {
    /// PEFT's defaults: top 3, temperature 1.
    fn default() -> Self {
        Self { top_k: Self::default_top_k(), temperature: Self::default_temperature() }
    }
}

impl Composition {
    /// Its name in request files (`single`, `mixture`, `fusion`, `arrow`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Mixture => "mixture",
            Self::Fusion => "fusion",
            Self::Arrow(_) => "arrow",
            Self::Gate => "gate",
        }
    }

    /// Whether the weights of a row's adapters depend on its tokens.
    pub fn is_routed(&self) -> bool {
        matches!(self, Self::Arrow(_) | Self::Gate)
    }
}

impl std::fmt::Display for Composition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of a batch: its composition and its adapters as `(index into the batch's unique
/// adapters, weight)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowMix {
    /// How the row's adapters are combined.
    pub composition: Composition,
    /// `(unique adapter index, weight)` pairs; an index appears at most once.
    pub entries: Vec<(usize, f32)>,
}

impl RowMix {
    /// The base model alone.
    pub fn base() -> Self {
        Self::default()
    }
}

/// The adapters of a batch as its rows use them: a mapping matrix `[rows × unique adapters]` of
/// weights and, per row, its [`Composition`]. Built with [`MixPlan::new`], which validates it.
#[derive(Debug, Clone, PartialEq)]
pub struct MixPlan {
    rows: Vec<RowMix>,
    n_unique: usize,
}

impl MixPlan {
    /// Validates `rows` against `n_unique` adapters: indices in range and not repeated within a row,
    /// finite weights, `single` rows with at most one adapter, fusion rows with at least one.
    pub fn new(rows: Vec<RowMix>, n_unique: usize) -> Result<Self, CoreError> {
        for (r, row) in rows.iter().enumerate() {
            let mut seen = vec![false; n_unique];
            for &(u, w) in &row.entries {
                if u >= n_unique {
                    return Err(CoreError::Composition(format!(
                        "row {r}: adapter index {u} out of range ({n_unique} unique adapters)"
                    )));
                }
                if std::mem::replace(&mut seen[u], true) {
                    return Err(CoreError::Composition(format!("row {r}: adapter {u} listed twice")));
                }
                if !w.is_finite() {
                    return Err(CoreError::Composition(format!("row {r}: weight {w} is not finite")));
                }
            }
            match row.composition {
                Composition::Single if row.entries.len() > 1 => {
                    return Err(CoreError::Composition(format!(
                        "row {r}: `single` takes at most one adapter, got {}",
                        row.entries.len()
                    )));
                }
                Composition::Fusion if row.entries.is_empty() => {
                    return Err(CoreError::Composition(format!("row {r}: `fusion` needs at least one adapter")));
                }
                Composition::Arrow(_) if row.entries.is_empty() => {
                    return Err(CoreError::Composition(format!("row {r}: `arrow` needs at least one adapter")));
                }
                Composition::Arrow(p) => p.validate().map_err(|m| CoreError::Composition(format!("row {r}: {m}")))?,
                Composition::Gate if row.entries.is_empty() => {
                    return Err(CoreError::Composition(format!("row {r}: `gate` needs at least one adapter")));
                }
                _ => {}
            }
        }
        Ok(Self { rows, n_unique })
    }

    /// The rows.
    pub fn rows(&self) -> &[RowMix] {
        &self.rows
    }

    /// Number of unique adapters (columns of the mapping matrix).
    pub fn n_unique(&self) -> usize {
        self.n_unique
    }

    /// The mapping matrix `[rows × unique adapters]`, row-major.
    pub fn mapping_matrix(&self) -> Vec<f32> {
        let mut m = vec![0.0; self.rows.len() * self.n_unique];
        for (r, row) in self.rows.iter().enumerate() {
            for &(u, w) in &row.entries {
                m[r * self.n_unique + u] = w;
            }
        }
        m
    }

    /// Whether some row rules out [`RowLayout::Shared`] (which then falls back to
    /// [`RowLayout::Gathered`]): a fusion row (its own averaged pair) or a routed row (Arrow or gate:
    /// per-token weights over its own slots). [`RowLayout::Host`] takes every row.
    pub fn needs_gathered(&self) -> bool {
        self.rows.iter().any(|r| r.composition == Composition::Fusion || r.composition.is_routed())
    }

    /// Whether no row uses any adapter.
    pub fn is_base_only(&self) -> bool {
        self.rows.iter().all(|r| r.entries.is_empty())
    }
}

/// One adapter's factors for one linear layer, in PEFT layout, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// `lora_A`, `[r, d_in]` row-major.
    pub a: Vec<f32>,
    /// `lora_B`, `[d_out, r]` row-major.
    pub b: Vec<f32>,
    /// The rank `r`.
    pub rank: usize,
    /// The scale `s` (`alpha / r`, or `alpha / √r` with rsLoRA).
    pub scale: f32,
    /// Arrow's prototype ([`LoraFactors::prototype`]), computed once when the adapter is loaded
    /// ([`LoraFactors::with_prototype`]); rows that route with [`Composition::Arrow`] need it.
    pub proto: Option<Vec<f32>>,
}

impl LoraFactors {
    /// The factors with their Arrow prototype computed.
    pub fn with_prototype(mut self) -> Self {
        self.proto = Some(self.prototype());
        self
    }

    /// Arrow's prototype of this adapter for this layer: the top right singular vector of `B A`
    /// (`[d_in]`, unit norm; its sign is irrelevant, Arrow scores `|x · proto|`). Exact, in f64,
    /// without forming the `d_out × d_in` delta: with `Aᵀ = Q R` (Gram–Schmidt, `Q` `[d_in, r]`),
    /// `B A = (B Rᵀ) Qᵀ`, so the vector is `Q u` for `u` the top eigenvector of the `r × r` matrix
    /// `R BᵀB Rᵀ` (cyclic Jacobi). Adapters compute it once when they are loaded.
    pub fn prototype(&self) -> Vec<f32> {
        let r = self.rank;
        if r == 0 || self.a.is_empty() || !self.a.len().is_multiple_of(r) || !self.b.len().is_multiple_of(r) {
            return Vec::new();
        }
        let d_in = self.a.len() / r;
        let d_out = self.b.len() / r;
        // Aᵀ = Q R: Q's columns are the orthonormalised rows of A (dropped when dependent).
        let mut q: Vec<Vec<f64>> = Vec::with_capacity(r);
        let mut rm = vec![0f64; r * r]; // R [r, r], R[i][k] = ⟨qᵢ, a_k⟩
        for k in 0..r {
            let mut v: Vec<f64> = self.a[k * d_in..(k + 1) * d_in].iter().map(|&x| f64::from(x)).collect();
            for _ in 0..2 {
                // twice: re-orthogonalisation keeps Q orthonormal in floating point
                for (i, qi) in q.iter().enumerate() {
                    let dot: f64 = qi.iter().zip(&v).map(|(a, b)| a * b).sum();
                    rm[i * r + k] += dot;
                    v.iter_mut().zip(qi).for_each(|(x, y)| *x -= dot * y);
                }
            }
            let n = normalise(&mut v);
            if n > 1e-12 {
                rm[q.len() * r + k] = n;
                q.push(v);
            }
        }
        let m = q.len();
        if m == 0 {
            return vec![0.0; d_in];
        }
        // C = B Rᵀ [d_out, m] with R restricted to its first m rows; S = Cᵀ C [m, m].
        let mut s = vec![0f64; m * m];
        for o in 0..d_out {
            let b = &self.b[o * r..(o + 1) * r];
            let c: Vec<f64> = (0..m).map(|i| (0..r).map(|k| f64::from(b[k]) * rm[i * r + k]).sum()).collect();
            for i in 0..m {
                for j in 0..m {
                    s[i * m + j] += c[i] * c[j];
                }
            }
        }
        let u = top_eigenvector(&mut s, m);
        (0..d_in).map(|j| q.iter().zip(&u).map(|(qi, ui)| qi[j] * ui).sum::<f64>() as f32).collect()
    }
}

/// The eigenvector of the largest eigenvalue of the symmetric `n × n` matrix `s` (destroyed), by
/// cyclic Jacobi rotations.
fn top_eigenvector(s: &mut [f64], n: usize) -> Vec<f64> {
    let mut v = vec![0f64; n * n]; // columns: eigenvectors
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| s[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| s[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = s[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (s[q * n + q] - s[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * c;
                for k in 0..n {
                    let (skp, skq) = (s[k * n + p], s[k * n + q]);
                    s[k * n + p] = c * skp - sn * skq;
                    s[k * n + q] = sn * skp + c * skq;
                }
                for k in 0..n {
                    let (spk, sqk) = (s[p * n + k], s[q * n + k]);
                    s[p * n + k] = c * spk - sn * sqk;
                    s[q * n + k] = sn * spk + c * sqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + c * vkq;
                }
            }
        }
    }
    let best = (0..n).max_by(|&a, &b| s[a * n + a].total_cmp(&s[b * n + b])).unwrap_or(0);
    (0..n).map(|k| v[k * n + best]).collect()
}

/// Scales `v` to unit norm; returns the norm it had.
fn normalise(v: &mut [f64]) -> f64 {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    n
}

/// A gate's factors for one linear layer ([`Composition::Gate`]), in the PEFT-like layout of the
/// adapters, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct GateFactors {
    /// `A_g`, `[r_g, d_in]` row-major.
    pub a: Vec<f32>,
    /// `B_g`, `[d_out, r_g]` row-major.
    pub b: Vec<f32>,
    /// The gate's rank `r_g`.
    pub rank: usize,
}

/// A gate for one linear layer on the device ([`Composition::Gate`]): its factors as tensors, which
/// may be trainable parameters (the gate is trained through the serving forward).
#[derive(Debug, Clone)]
pub struct GateLayer<B: Backend> {
    /// `A_g`: `[r_g, d_in]`.
    pub a: Tensor<B, 2>,
    /// `B_g`: `[d_out, r_g]`.
    pub b: Tensor<B, 2>,
}

impl<B: Backend> GateLayer<B> {
    /// The factors on `device`, shapes checked against a layer `[d_out, d_in]`.
    pub fn from_factors(f: &GateFactors, d_in: usize, d_out: usize, device: &B::Device) -> Result<Self, CoreError> {
        let r = f.rank;
        if r == 0 || f.a.len() != r * d_in || f.b.len() != d_out * r {
            return Err(CoreError::Shape {
                what: "gate factors".into(),
                expected: format!("A_g [{r}, {d_in}] and B_g [{d_out}, {r}], rank ≥ 1"),
                got: format!("{} and {} values", f.a.len(), f.b.len()),
            });
        }
        Ok(Self {
            a: Tensor::from_data(TensorData::new(f.a.clone(), [r, d_in]), device),
            b: Tensor::from_data(TensorData::new(f.b.clone(), [d_out, r]), device),
        })
    }

    /// The gate's rank `r_g`.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// Whether the gate fits a layer `[d_out, d_in]`.
    fn check(&self, d_in: usize, d_out: usize) -> Result<(), CoreError> {
        let [r_g, g_in] = self.a.dims();
        let [g_out, r_b] = self.b.dims();
        if g_in != d_in || g_out != d_out || r_b != r_g {
            return Err(CoreError::Shape {
                what: "gate factors".into(),
                expected: format!("A_g [r_g, {d_in}] and B_g [{d_out}, r_g]"),
                got: format!("A_g [{r_g}, {g_in}] and B_g [{g_out}, {r_b}]"),
            });
        }
        Ok(())
    }

    /// The factors on the host, checked against a layer `[d_out, d_in]`.
    fn to_host(&self, d_in: usize, d_out: usize) -> Result<GateFactors, CoreError> {
        self.check(d_in, d_out)?;
        let values = |t: &Tensor<B, 2>| {
            t.to_data().convert::<f32>().into_vec::<f32>().map_err(|e| CoreError::Shape {
                what: "gate factors".into(),
                expected: "f32 values".into(),
                got: format!("{e:?}"),
            })
        };
        Ok(GateFactors { a: values(&self.a)?, b: values(&self.b)?, rank: self.rank() })
    }
}

/// Stacks the factors of the batch's unique adapters for a layer of shape `[d_out, d_in]`
/// ([`LoraStack`]'s layout, on the host); `None` when no adapter targets the layer.
fn host_stack(adapters: &[Option<&LoraFactors>], d_in: usize, d_out: usize) -> Result<Option<HostStack>, CoreError> {
    let r_max = adapters.iter().flatten().map(|f| f.rank).max().unwrap_or(0);
    if r_max == 0 {
        return Ok(None);
    }
    let n = adapters.len() + 1;
    let mut a = vec![0f32; n * r_max * d_in];
    let mut bt = vec![0f32; n * r_max * d_out];
    let mut meta = Vec::with_capacity(adapters.len());
    for (i, f) in adapters.iter().enumerate() {
        let Some(f) = f else {
            meta.push(None);
            continue;
        };
        if f.proto.as_ref().is_some_and(|p| p.len() != d_in) {
            return Err(CoreError::Shape {
                what: format!("Arrow prototype of unique adapter {i}"),
                expected: format!("{d_in} values"),
                got: format!("{} values", f.proto.as_ref().map_or(0, Vec::len)),
            });
        }
        let r = f.rank;
        if f.a.len() != r * d_in || f.b.len() != d_out * r {
            return Err(CoreError::Shape {
                what: format!("LoRA factors of unique adapter {i}"),
                expected: format!("A [{r}, {d_in}] and B [{d_out}, {r}]"),
                got: format!("{} and {} values", f.a.len(), f.b.len()),
            });
        }
        // A [r, d_in] -> rows 0..r of [r_max, d_in]
        let base = i * r_max * d_in;
        a[base..base + r * d_in].copy_from_slice(&f.a);
        // B [d_out, r] -> Bᵀ [r_max, d_out]
        let base = i * r_max * d_out;
        for o in 0..d_out {
            for k in 0..r {
                bt[base + k * d_out + o] = f.b[o * r + k];
            }
        }
        meta.push(Some((r, f.scale)));
    }
    let protos = adapters.iter().map(|f| f.and_then(|f| f.proto.clone())).collect();
    Ok(Some(HostStack { a, bt, meta, protos, d_in, d_out, r_max }))
}

/// The unique adapters of a batch for one linear layer, stacked for batched ops: on the host
/// (`a` `[U + 1, r_max, d_in]` holding each `Aᵢ` in PEFT layout, `b` `[U + 1, r_max, d_out]` each
/// `Bᵢᵀ`, both zero-padded along the rank; the last entry all zeros, the slot that padding and
/// non-targeting adapters point to), copied to the device by the layouts that compute there.
#[derive(Debug, Clone)]
pub struct LoraStack<B: Backend> {
    host: Arc<HostStack>,
    device: B::Device,
}

impl<B: Backend> LoraStack<B> {
    /// Stacks the factors of the batch's unique adapters for a layer of shape `[d_out, d_in]`.
    /// `adapters[i]` is `None` where unique adapter `i` does not target the layer. Returns `None`
    /// when no adapter targets it (the layer then runs without LoRA).
    pub fn new(
        adapters: &[Option<&LoraFactors>],
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Option<Self>, CoreError> {
        let Some(host) = host_stack(adapters, d_in, d_out)? else { return Ok(None) };
        Ok(Some(Self { host: Arc::new(host), device: device.clone() }))
    }

    /// The stack on the device: `a` `[U + 1, r_max, d_in]`, `b` `[U + 1, r_max, d_out]`.
    fn tensors(&self) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let h = &self.host;
        let n = h.meta.len() + 1;
        let a = Tensor::from_data(TensorData::new(h.a.clone(), [n, h.r_max, h.d_in]), &self.device);
        let b = Tensor::from_data(TensorData::new(h.bt.clone(), [n, h.r_max, h.d_out]), &self.device);
        (a, b)
    }

    /// Number of unique adapters.
    pub fn n_unique(&self) -> usize {
        self.host.meta.len()
    }

    /// The per-row update of `plan` for this layer, in the layout [`RowLayout::for_backend`] picks.
    ///
    /// Fusion rows need all their adapters that target this layer to share rank and scale, and
    /// either all or none of them to target it.
    pub fn rows(&self, plan: &MixPlan) -> Result<RowLora<B>, CoreError> {
        self.rows_gated(plan, None)
    }

    /// [`Self::rows`] with the layer's gate, which [`Composition::Gate`] rows need.
    pub fn rows_gated(&self, plan: &MixPlan, gate: Option<&GateLayer<B>>) -> Result<RowLora<B>, CoreError> {
        self.rows_in(plan, RowLayout::for_backend::<B>(plan, self.n_unique()), gate)
    }

    /// The per-row update of `plan` for this layer, in the given layout. [`RowLayout::Shared`] takes
    /// only `single` and `mixture` rows: a plan with fusion or routed rows falls back to
    /// [`RowLayout::Gathered`] ([`MixPlan::needs_gathered`]), as does [`RowLayout::Host`] under
    /// autodiff (host values carry no gradients). `gate` is the layer's gate, which
    /// [`Composition::Gate`] rows need (others ignore it).
    pub fn rows_in(
        &self,
        plan: &MixPlan,
        layout: RowLayout,
        gate: Option<&GateLayer<B>>,
    ) -> Result<RowLora<B>, CoreError> {
        match layout {
            RowLayout::Shared if !plan.needs_gathered() => self.shared_rows(plan),
            // Host values carry no gradients: under autodiff the device layouts serve.
            RowLayout::Host if !B::ad_enabled(&self.device) => {
                self.check_columns(plan)?;
                // The gate's factors come to the host only when a gate row adapts this layer.
                let (d_in, d_out) = (self.host.d_in, self.host.d_out);
                let gate = || gate.map(|g| g.to_host(d_in, d_out)).transpose();
                Ok(RowLora::Host(HostRows::new(self.host.clone(), plan.rows(), gate)?))
            }
            _ => self.gathered_rows(plan, gate),
        }
    }

    /// Shared layout: the whole stack once, and per row a coefficient for every rank column of
    /// every unique adapter (the mapping matrix times the scales, repeated over each adapter's rank).
    fn shared_rows(&self, plan: &MixPlan) -> Result<RowLora<B>, CoreError> {
        self.check_columns(plan)?;
        let device = self.device.clone();
        let (u, r) = (self.n_unique(), self.host.r_max);
        let n = plan.rows().len();
        let mut coef = vec![0f32; n * u * r];
        for (row, mix) in plan.rows().iter().enumerate() {
            for &(j, w) in &mix.entries {
                if let Some((rank, s)) = self.host.meta[j] {
                    let at = row * u * r + j * r;
                    coef[at..at + rank].fill(w * s);
                }
            }
        }
        // The zero slot is not needed here: drop it.
        let (a, b) = self.tensors();
        let a_t = a.narrow(0, 0, u).reshape([u * r, self.host.d_in]).transpose(); // [d_in, U·r]
        let a_t = Tensor::from_data(a_t.into_data(), &device); // contiguous for the 2-D matmul
        let b = b.narrow(0, 0, u).reshape([u * r, self.host.d_out]);
        let coef = Tensor::from_data(TensorData::new(coef, [n, 1, u * r]), &device);
        Ok(RowLora::Shared { a_t, b, coef })
    }

    fn check_columns(&self, plan: &MixPlan) -> Result<(), CoreError> {
        if plan.n_unique() != self.n_unique() {
            return Err(CoreError::Shape {
                what: "mapping matrix".into(),
                expected: format!("{} columns", self.n_unique()),
                got: format!("{} columns", plan.n_unique()),
            });
        }
        Ok(())
    }

    /// The slots a single, mixture or routed row takes in the gathered layout: its adapters that adapt
    /// this layer, in order; a gate row keeps every adapter (one that does not adapt the layer has
    /// `vᵢ = 0` here, yet it is one of the row's adapters and takes its share of the softmax, as
    /// RouterLoRA is written: a fresh gate is then exactly the uniform mixture).
    fn slots(&self, row: &RowMix) -> Vec<(usize, f32)> {
        match row.composition {
            Composition::Gate => row.entries.clone(),
            _ => row.entries.iter().copied().filter(|(u, _)| self.host.meta[*u].is_some()).collect(),
        }
    }

    /// Gathered layout: one low-rank pair per row.
    fn gathered_rows(&self, plan: &MixPlan, gate: Option<&GateLayer<B>>) -> Result<RowLora<B>, CoreError> {
        self.check_columns(plan)?;
        let device = self.device.clone();
        let zero_slot = self.n_unique();
        let (stack_a, stack_b) = self.tensors();
        let (mut mix_rows, mut fusion_rows) = (Vec::new(), Vec::new());
        for (r, row) in plan.rows().iter().enumerate() {
            match row.composition {
                Composition::Fusion => fusion_rows.push(r),
                _ => mix_rows.push(r),
            }
        }
        // Mixture (and single) rows: K slots each, side by side along the rank.
        let k = mix_rows.iter().map(|&r| self.slots(&plan.rows()[r]).len()).max().unwrap_or(0).max(1);
        let rank =
            if fusion_rows.is_empty() { k * self.host.r_max } else { (k * self.host.r_max).max(self.host.r_max) };
        let mut parts: Vec<(Tensor<B, 3>, Tensor<B, 3>)> = Vec::new();
        if !mix_rows.is_empty() {
            let n = mix_rows.len();
            let mut ids = Vec::with_capacity(n * k);
            let mut coef = Vec::with_capacity(n * k);
            for &r in &mix_rows {
                let routed = plan.rows()[r].composition.is_routed();
                let slots = self.slots(&plan.rows()[r]);
                for &(u, w) in &slots {
                    match self.host.meta[u] {
                        Some((_, s)) => {
                            ids.push(u as i64);
                            // A routed row's weights come per token (TokenRoute), not from the plan.
                            coef.push(if routed { s } else { w * s });
                        }
                        None => {
                            ids.push(zero_slot as i64);
                            coef.push(0.0);
                        }
                    }
                }
                for _ in slots.len()..k {
                    ids.push(zero_slot as i64);
                    coef.push(0.0);
                }
            }
            let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n * k]), &device);
            let coef = Tensor::<B, 1>::from_data(TensorData::new(coef, [n * k]), &device);
            let a = stack_a
                .clone()
                .select(0, ids.clone()) // [n·K, r_max, d_in]
                .reshape([n, k * self.host.r_max, self.host.d_in]);
            let b = (stack_b.clone().select(0, ids) * coef.reshape([n * k, 1, 1])) // [n·K, r_max, d_out]
                .reshape([n, k * self.host.r_max, self.host.d_out]);
            parts.push(pad_rank(a, b, rank));
        }
        if !fusion_rows.is_empty() {
            let n = fusion_rows.len();
            let cols = self.n_unique() + 1; // + the zero slot
            let mut m = vec![0f32; n * cols];
            let mut scale = vec![0f32; n];
            for (i, &r) in fusion_rows.iter().enumerate() {
                // None: no adapter of this row touches this layer.
                let Some(fusion) = self.host.fusion_of(r, &plan.rows()[r].entries)? else { continue };
                scale[i] = fusion.scale;
                for (u, w) in fusion.entries {
                    m[i * cols + u] = w;
                }
            }
            let m = Tensor::<B, 2>::from_data(TensorData::new(m, [n, cols]), &device);
            let scale = Tensor::<B, 1>::from_data(TensorData::new(scale, [n]), &device);
            let a = m.clone().matmul(stack_a.reshape([cols, self.host.r_max * self.host.d_in])).reshape([
                n,
                self.host.r_max,
                self.host.d_in,
            ]);
            let b = (m * scale.reshape([n, 1]))
                .matmul(stack_b.reshape([cols, self.host.r_max * self.host.d_out]))
                .reshape([n, self.host.r_max, self.host.d_out]);
            parts.push(pad_rank(a, b, rank));
        }
        let order: Vec<usize> = mix_rows.iter().chain(&fusion_rows).copied().collect();
        let (a, b): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        let (mut a, mut b) = (Tensor::cat(a, 0), Tensor::cat(b, 0));
        if !fusion_rows.is_empty() && !mix_rows.is_empty() {
            // back to the plan's row order
            let mut inverse = vec![0i64; order.len()];
            for (pos, &r) in order.iter().enumerate() {
                inverse[r] = pos as i64;
            }
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [order.len()]), &device);
            a = a.select(0, idx.clone());
            b = b.select(0, idx);
        }
        let route = self.token_route(plan, k, &b, gate)?;
        Ok(RowLora::Gathered { a, b, route })
    }

    /// The per-token routing of the plan's routed rows over their `k` slots (in the order
    /// [`Self::gathered_rows`] lays them out), or `None` when no row routes. `b` is the rows' gathered
    /// `B` side (`[rows, K·r_max, d_out]`, scales folded in), which the gate's keys are computed from.
    fn token_route(
        &self,
        plan: &MixPlan,
        k: usize,
        b: &Tensor<B, 3>,
        gate: Option<&GateLayer<B>>,
    ) -> Result<Option<TokenRoute<B>>, CoreError> {
        if !plan.rows().iter().any(|r| r.composition.is_routed()) {
            return Ok(None);
        }
        let n = plan.rows().len();
        let d_in = self.host.d_in;
        let mut slot_bias = vec![ROUTE_OFF; n * k];
        let (mut arrow_rows, mut gate_rows) = (false, false);
        let mut protos = vec![0f32; n * k * d_in];
        let mut arrowed = vec![0f32; n];
        let mut gated = vec![0f32; n];
        let mut top_k = vec![0f32; n];
        let mut inv_temp = vec![1f32; n];
        for (r, row) in plan.rows().iter().enumerate() {
            if !row.composition.is_routed() {
                continue;
            }
            let slots = self.slots(row);
            for (j, &(u, _)) in slots.iter().enumerate() {
                slot_bias[r * k + j] = 0.0;
                if let Composition::Arrow(_) = row.composition {
                    let proto = self.host.protos[u].as_ref().ok_or_else(|| {
                        CoreError::Composition(format!(
                            "row {r}: unique adapter {u} has no Arrow prototype (load it with its prototypes)"
                        ))
                    })?;
                    protos[(r * k + j) * d_in..(r * k + j + 1) * d_in].copy_from_slice(proto);
                }
            }
            match row.composition {
                Composition::Arrow(p) => {
                    arrow_rows = true;
                    arrowed[r] = 1.0;
                    top_k[r] = p.top_k as f32;
                    inv_temp[r] = 1.0 / p.temperature;
                }
                _ => {
                    gated[r] = 1.0;
                    // A gate is needed here only if one of the row's adapters adapts this layer.
                    gate_rows |= slots.iter().any(|(u, _)| self.host.meta[*u].is_some());
                }
            }
        }
        let device = self.device.clone();
        let t3 = |v: Vec<f32>, shape: [usize; 3]| Tensor::<B, 3>::from_data(TensorData::new(v, shape), &device);
        let arrow = arrow_rows.then(|| ArrowRoute {
            protos_t: t3(protos, [n, k, d_in]).swap_dims(1, 2),
            routed: t3(arrowed, [n, 1, 1]),
            top_k: t3(top_k, [n, 1, 1]),
            inv_temp: t3(inv_temp, [n, 1, 1]),
        });
        let gate = match (gate_rows, gate) {
            // Without adapters here, gate rows add nothing whatever their weights.
            (false, _) => None,
            (true, None) => {
                return Err(CoreError::Composition(
                    "a `gate` row needs a gate for every layer its adapters adapt; this layer has none".into(),
                ));
            }
            (true, Some(g)) => {
                g.check(d_in, self.host.d_out)?;
                let r_g = g.rank();
                // P = B_row · B_g: slot i's key is kᵢ = B_gᵀ vᵢ = Σ_{c ∈ slot i} h_c P_c.
                let [rows, cols, _] = b.dims();
                let b_g = g.b.clone().unsqueeze_dim::<3>(0).expand([rows, self.host.d_out, r_g]);
                let p = b.clone().matmul(b_g); // [rows, K·r, r_g]
                Some(GateRoute {
                    a_t: g.a.clone().transpose(),
                    p_t: p.swap_dims(1, 2), // [rows, r_g, K·r]
                    gated: t3(gated, [n, 1, 1]),
                    inv_sqrt_rank: 1.0 / (r_g as f64).sqrt(),
                    cols,
                })
            }
        };
        Ok(Some(TokenRoute { slot_bias: t3(slot_bias, [n, 1, k]), arrow, gate, r_max: self.host.r_max }))
    }
}

/// The logit given to slots a row does not route over (and to tokens' dropped slots): finite, so no
/// `inf − inf`, and far below any score.
const ROUTE_OFF: f32 = -1e30;

/// Per-token weights of each row's slots (Arrow or the gate), applied between the two matmuls of
/// [`RowLora::Gathered`]. Rows that do not route get weight 1 on every slot.
#[derive(Debug, Clone)]
pub struct TokenRoute<B: Backend> {
    /// `[rows, 1, K]`: 0 where the row routes over the slot, [`ROUTE_OFF`] elsewhere.
    slot_bias: Tensor<B, 3>,
    /// Arrow's state, when some row routes with Arrow.
    arrow: Option<ArrowRoute<B>>,
    /// The gate's state, when some row routes with the gate.
    gate: Option<GateRoute<B>>,
    /// Rank columns per slot.
    r_max: usize,
}

/// What [`TokenRoute`] needs for Arrow rows.
#[derive(Debug, Clone)]
struct ArrowRoute<B: Backend> {
    /// `[rows, d_in, K]`: the prototypes of each row's slots, transposed (zeros where unused).
    protos_t: Tensor<B, 3>,
    /// `[rows, 1, 1]`: 1 for an Arrow row, 0 otherwise.
    routed: Tensor<B, 3>,
    /// `[rows, 1, 1]`: adapters kept per token.
    top_k: Tensor<B, 3>,
    /// `[rows, 1, 1]`: `1 / temperature`.
    inv_temp: Tensor<B, 3>,
}

/// What [`TokenRoute`] needs for gate rows.
#[derive(Debug, Clone)]
struct GateRoute<B: Backend> {
    /// `A_gᵀ`: `[d_in, r_g]`.
    a_t: Tensor<B, 2>,
    /// `(B_row · B_g)ᵀ`: `[rows, r_g, K·r_max]`.
    p_t: Tensor<B, 3>,
    /// `[rows, 1, 1]`: 1 for a gate row, 0 otherwise.
    gated: Tensor<B, 3>,
    /// `1 / √r_g`.
    inv_sqrt_rank: f64,
    /// `K·r_max`.
    cols: usize,
}

impl<B: Backend> TokenRoute<B> {
    /// The weight of every rank column for every token: `[rows, seq, K·r_max]`.
    ///
    /// Arrow rows: scores `|x · protoᵢ|`; a slot is kept when fewer than `top_k` slots of the row
    /// score higher (a rank count over the `K × K` pairs: no sort); kept slots get
    /// `softmax(score / T)`. Gate rows: with `h` the token's rank columns (`x · A_rowᵀ`, slot by slot)
    /// and `q = A_g x`, slot `i` scores `⟨q, B_gᵀ vᵢ⟩ = Σ_{c ∈ i} h_c (q · Pᵀ)_c` (`P = B_row B_g`, so no
    /// `vᵢ` is formed), weights `softmax(score / √r_g)` over the row's slots.
    ///
    /// # Shapes
    /// - `x`: `[rows, seq, d_in]`
    /// - `h`: `[rows, seq, K·r_max]`
    fn weights(&self, x: Tensor<B, 3>, h: &Tensor<B, 3>) -> Tensor<B, 3> {
        let [rows, seq, d_in] = x.dims();
        let k = self.slot_bias.dims()[2];
        let arrow = match &self.arrow {
            None => Tensor::<B, 3>::ones([rows, seq, k], &x.device()),
            Some(a) => {
                let scores = x.clone().matmul(a.protos_t.clone()).abs(); // [rows, seq, K]
                // Ranked with the unused slots pushed below every score.
                let ranked = scores.clone() + self.slot_bias.clone();
                let others = ranked.clone().reshape([rows, seq, 1, k]).expand([rows, seq, k, k]); // [.., i, j] = s_j
                let own = ranked.reshape([rows, seq, k, 1]).expand([rows, seq, k, k]); // [.., i, j] = s_i
                let higher = others.greater(own).float().sum_dim(3).reshape([rows, seq, k]); // slots above slot i
                let kept = higher.lower(a.top_k.clone().expand([rows, seq, k])).float(); // [rows, seq, K]
                // Dropped and unused slots get ROUTE_OFF added after the temperature, so no temperature
                // brings them back.
                let logits = scores * a.inv_temp.clone() + (kept - 1.0) * (-ROUTE_OFF) + self.slot_bias.clone();
                let coeff = burn::tensor::activation::softmax(logits, 2);
                coeff * a.routed.clone() + (a.routed.clone().neg() + 1.0)
            }
        };
        let w = match &self.gate {
            None => arrow,
            Some(g) => {
                let q = x.reshape([rows * seq, d_in]).matmul(g.a_t.clone()); // [rows·seq, r_g]
                let r_g = q.dims()[1];
                let u = q.reshape([rows, seq, r_g]).matmul(g.p_t.clone()); // [rows, seq, K·r]
                let scores = (h.clone() * u).reshape([rows, seq, k, g.cols / k]).sum_dim(3).reshape([rows, seq, k]);
                let logits = scores.mul_scalar(g.inv_sqrt_rank) + self.slot_bias.clone();
                let alpha = burn::tensor::activation::softmax(logits, 2); // [rows, seq, K]
                arrow * (alpha * g.gated.clone() + (g.gated.clone().neg() + 1.0))
            }
        };
        w.reshape([rows, seq, k, 1]).expand([rows, seq, k, self.r_max]).reshape([rows, seq, k * self.r_max])
    }

    fn select_rows(&self, rows: &[usize]) -> Self {
        Self {
            slot_bias: select_rows(self.slot_bias.clone(), rows),
            arrow: self.arrow.as_ref().map(|a| ArrowRoute {
                protos_t: select_rows(a.protos_t.clone(), rows),
                routed: select_rows(a.routed.clone(), rows),
                top_k: select_rows(a.top_k.clone(), rows),
                inv_temp: select_rows(a.inv_temp.clone(), rows),
            }),
            gate: self.gate.as_ref().map(|g| GateRoute {
                a_t: g.a_t.clone(),
                p_t: select_rows(g.p_t.clone(), rows),
                gated: select_rows(g.gated.clone(), rows),
                inv_sqrt_rank: g.inv_sqrt_rank,
                cols: g.cols,
            }),
            r_max: self.r_max,
        }
    }
}

/// Zero-pads the rank axis of a pair (`a` `[n, r, d_in]`, `b` `[n, r, d_out]`) to `rank`.
fn pad_rank<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>, rank: usize) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let [n, r, d_in] = a.dims();
    if r == rank {
        return (a, b);
    }
    let d_out = b.dims()[2];
    let device = a.device();
    let a = Tensor::cat(vec![a, Tensor::zeros([n, rank - r, d_in], &device)], 1);
    let b = Tensor::cat(vec![b, Tensor::zeros([n, rank - r, d_out], &device)], 1);
    (a, b)
}

/// How a batch's per-row update is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLayout {
    /// One low-rank pair per row, gathered from the stack: reads `rows × K × r` adapter rows per
    /// step and computes only what each row uses. Best when rows use different adapters.
    Gathered,
    /// The stack once, shared by all rows, with per-row coefficients (the mapping matrix): reads
    /// `U × r` adapter rows per step and computes all of them for every row. Best when rows mix
    /// adapters that other rows use too. Single and mixture rows only.
    Shared,
    /// On the host, one kernel call per layer that reads each row's adapters from the stack in place
    /// ([`HostRows`]): neither the per-row copies of [`RowLayout::Gathered`] nor the products with
    /// every adapter of [`RowLayout::Shared`]; routed rows' per-token weights computed in the same
    /// pass, fusion rows' averaged pairs built once. For the CPU backends (elsewhere the activations
    /// make a round trip to the host). Every composition; not under autodiff.
    Host,
}

impl RowLayout {
    /// The device layout that reads less memory per decoding step, within a compute bound: [`Shared`]
    /// when the batch has no fusion, Arrow or gate row, its unique adapters are at most half the slots its rows use, and
    /// there are at most 64 of them; [`Gathered`] otherwise.
    ///
    /// [`Shared`]: RowLayout::Shared
    /// [`Gathered`]: RowLayout::Gathered
    pub fn choose(plan: &MixPlan, n_unique: usize) -> Self {
        let slots: usize = plan.rows().iter().map(|r| r.entries.len()).sum();
        if !plan.needs_gathered() && n_unique <= 64 && 2 * n_unique <= slots { Self::Shared } else { Self::Gathered }
    }

    /// The layout for backend `B`: [`RowLayout::Host`] on the host CPU backends
    /// ([`crate::backend::runs_on_host`]), else [`RowLayout::choose`].
    pub fn for_backend<B: Backend>(plan: &MixPlan, n_unique: usize) -> Self {
        if crate::backend::runs_on_host::<B>() { Self::Host } else { Self::choose(plan, n_unique) }
    }
}

/// The low-rank update that each row of a batch applies to one linear layer, with the adapters'
/// weights and scales folded in.
#[derive(Debug, Clone)]
pub enum RowLora<B: Backend> {
    /// Row `b` adds `(x_b · a_bᵀ) · b_b`. `a` keeps the PEFT layout (`[rank, d_in]` per row):
    /// `a · xᵀ` is several times faster than `x · aᵀ` on the CPU backends for decode-shaped inputs.
    Gathered {
        /// `[rows, rank, d_in]`.
        a: Tensor<B, 3>,
        /// `[rows, rank, d_out]`.
        b: Tensor<B, 3>,
        /// Per-token weights of the rank columns, for batches with routed (Arrow or gate) rows.
        route: Option<TokenRoute<B>>,
    },
    /// Row `b` adds `((x_b · a_t) ⊙ coef_b) · b`: the unique adapters' factors side by side, shared by
    /// every row, and the mapping matrix spread over their rank columns.
    Shared {
        /// `[d_in, U·r]`.
        a_t: Tensor<B, 2>,
        /// `[U·r, d_out]`.
        b: Tensor<B, 2>,
        /// `[rows, 1, U·r]`.
        coef: Tensor<B, 3>,
    },
    /// Computed on the host ([`HostRows`]); the linear layers whose product runs on the host add it to
    /// their output there ([`HostRows::add_to`]).
    Host(HostRows),
}

impl<B: Backend> RowLora<B> {
    /// The update for `x`.
    ///
    /// # Shapes
    /// - `x`: `[rows, seq, d_in]`
    /// - output: `[rows, seq, d_out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Self::Gathered { a, b, route } => {
                let h = a.clone().matmul(x.clone().swap_dims(1, 2)).swap_dims(1, 2); // [rows, seq, rank]
                let h = match route {
                    Some(route) => {
                        let w = route.weights(x, &h);
                        h * w
                    }
                    None => h,
                };
                h.matmul(b.clone()) // [rows, seq, d_out]
            }
            Self::Shared { a_t, b, coef } => {
                let [rows, seq, d_in] = x.dims();
                let (r, d_out) = (a_t.dims()[1], b.dims()[1]);
                let h = x.reshape([rows * seq, d_in]).matmul(a_t.clone()).reshape([rows, seq, r]); // [rows, seq, U·r]
                (h * coef.clone()).reshape([rows * seq, r]).matmul(b.clone()).reshape([rows, seq, d_out])
            }
            Self::Host(host) => {
                let [rows, seq, _] = x.dims();
                let d_out = host.dims()[1];
                let device = x.device();
                let x = x.into_data().convert::<f32>().into_vec::<f32>().expect("activations as f32");
                let mut y = vec![0f32; rows * seq * d_out];
                host.add_to(&x, seq, &mut y);
                Tensor::from_data(TensorData::new(y, [rows, seq, d_out]), &device)
            }
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Self::Gathered { a, .. } => a.dims()[0],
            Self::Shared { coef, .. } => coef.dims()[0],
            Self::Host(host) => host.rows(),
        }
    }

    /// The update of the given rows, in that order (rows leave a batch as they finish).
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        match self {
            Self::Gathered { a, b, route } => Self::Gathered {
                a: select_rows(a.clone(), rows),
                b: select_rows(b.clone(), rows),
                route: route.as_ref().map(|r| r.select_rows(rows)),
            },
            Self::Shared { a_t, b, coef } => {
                Self::Shared { a_t: a_t.clone(), b: b.clone(), coef: select_rows(coef.clone(), rows) }
            }
            Self::Host(host) => Self::Host(host.select_rows(rows)),
        }
    }
}

/// The given rows (first dimension) of `t`, in that order. Slices and one concatenation, which every
/// backend supports on any memory layout (burn-candle's `select` needs contiguous input). No rows
/// give a tensor with a first dimension of 0 (a batch whose rows have all left).
pub fn select_rows<B: Backend, const D: usize>(t: Tensor<B, D>, rows: &[usize]) -> Tensor<B, D> {
    let n = t.dims()[0];
    if rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r) {
        return t;
    }
    if rows.is_empty() {
        let mut dims = t.dims();
        dims[0] = 0;
        return Tensor::empty(dims, &t.device());
    }
    Tensor::cat(rows.iter().map(|&r| t.clone().narrow(0, r, 1)).collect(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Selected, device};

    #[test]
    fn select_rows_keeps_the_given_rows_and_takes_an_empty_list() {
        let t = Tensor::<Selected, 3>::from_data(
            TensorData::new((0..12).map(|x| x as f32).collect::<Vec<_>>(), [3, 2, 2]),
            &device(),
        );
        let picked = select_rows(t.clone(), &[2, 0]);
        assert_eq!(picked.dims(), [2, 2, 2]);
        assert_eq!(picked.into_data().to_vec::<f32>().expect("f32"), vec![8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
        let none = select_rows(t, &[]);
        assert_eq!(none.dims(), [0, 2, 2]);
        assert!(none.into_data().to_vec::<f32>().expect("f32").is_empty());
    }
}
