//! [`RowLayout::Host`](super::RowLayout::Host): the per-row update of every composition computed on
//! the host in one call per linear layer, reading each row's adapters from the batch's stack in place
//! (as Punica's BGMV kernel does on a GPU): no per-row copy of any adapter, no product with the
//! adapters a row does not use.
//!
//! For every token `t` of row `b`, with `(u, c)` the row's slots (unique adapter, coefficient):
//! `y_t += Σ_(u, c) c · w_u(t) · (A_u x_t) · B_uᵀ`: first every slot's `rank` dot products with `x_t`
//! (four stack rows per pass over `x_t`), then the slots' per-token weights `w_u(t)`, then one pass
//! over `y_t` adding every slot's rank columns of `Bᵀ`. The weights are 1 for single and mixture rows
//! (`c` = weight × scale); Arrow rows weigh their slots by `|x_t · proto_u|` (top-k, softmax with a
//! temperature) and gate rows by RouterLoRA's `softmax((A_g x_t) · (B_gᵀ v_u) / √r_g)`, with `c` the
//! scale; a fusion row has one slot, its averaged pair, built when the rows are. The tokens are split
//! over rayon's threads; each thread's tokens share the stack through its cache. The products use
//! AVX-512F or AVX2+FMA where the CPU has them (picked at run time), plain Rust elsewhere.

use std::sync::Arc;

use rayon::prelude::*;

use super::{ArrowParams, Composition, GateFactors, RowMix};
use crate::CoreError;
use crate::cpu::Kernel;

/// The unique adapters of a batch for one linear layer, on the host.
#[derive(Debug)]
pub(crate) struct HostStack {
    /// `[U, r_max, d_in]`: `Aᵢ` (PEFT layout), zero-padded along the rank.
    pub(crate) a: Vec<f32>,
    /// `[U, r_max, d_out]`: `Bᵢᵀ`, zero-padded along the rank.
    pub(crate) bt: Vec<f32>,
    /// Per adapter: `Some((rank, scale))`, or `None` where it does not target this layer.
    pub(crate) meta: Vec<Option<(usize, f32)>>,
    /// Per adapter: its Arrow prototype `[d_in]` for this layer, when it has one.
    pub(crate) protos: Vec<Option<Vec<f32>>>,
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
    pub(crate) r_max: usize,
}

impl HostStack {
    /// The adapters a fusion row averages here, with their shared rank and scale: `None` when none of
    /// them adapts this layer; an error when only some do, or when their ranks or scales differ.
    pub(crate) fn fusion_of(&self, row: usize, entries: &[(usize, f32)]) -> Result<Option<Fusion>, CoreError> {
        let targeting: Vec<_> = entries.iter().filter_map(|&(u, w)| self.meta[u].map(|meta| (u, w, meta))).collect();
        let Some(&(_, _, (r0, s0))) = targeting.first() else { return Ok(None) };
        if targeting.len() != entries.len() {
            return Err(CoreError::Composition(format!("row {row}: fusion of adapters with different target modules")));
        }
        if let Some((_, _, (rk, sk))) = targeting.iter().find(|(_, _, (rk, sk))| *rk != r0 || *sk != s0) {
            return Err(CoreError::Composition(format!(
                "row {row}: fusion needs equal ranks and scales, got rank {r0} scale {s0} and rank {rk} scale {sk}"
            )));
        }
        Ok(Some(Fusion { entries: targeting.into_iter().map(|(u, w, _)| (u, w)).collect(), rank: r0, scale: s0 }))
    }
}

/// What a fusion row averages in one layer ([`HostStack::fusion_of`]).
pub(crate) struct Fusion {
    /// `(unique adapter, weight)`, every one adapting the layer.
    pub(crate) entries: Vec<(usize, f32)>,
    /// Their shared rank.
    pub(crate) rank: usize,
    /// Their shared scale.
    pub(crate) scale: f32,
}

/// One adapter a row applies to this layer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    /// Index into the stack (into the rows' own pairs for a fusion row).
    unique: usize,
    /// Rank of the adapter.
    rank: usize,
    /// Single and mixture rows: the row's weight times the adapter's scale; routed and fusion rows:
    /// the scale.
    coef: f32,
}

/// How a row weighs its slots.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    /// Single and mixture rows: the weights are in the slots' coefficients.
    Fixed,
    /// A fusion row: one slot, the row's averaged pair in [`HostRows::fused`].
    Fused,
    /// Arrow, per token ([`ArrowParams`]).
    Arrow(ArrowParams),
    /// The gate, per token; `silent` counts the row's adapters that do not adapt this layer (each
    /// takes its share of the softmax with a score of 0, as in the gathered layout).
    Gate { silent: usize },
}

/// One row of the batch: its slots and how it weighs them.
#[derive(Debug, Clone, PartialEq)]
struct HostRow {
    slots: Vec<Slot>,
    route: Route,
}

/// A gate for one linear layer, on the host, with what its gate rows' slots need.
#[derive(Debug)]
struct HostGate {
    /// `A_g`, `[r_g, d_in]`.
    a: Vec<f32>,
    /// `r_g`.
    rank: usize,
    /// `[U, r_max, r_g]`: per adapter `sᵤ Bᵤᵀ B_g`, so that a slot's score is `hᵤ · (Gᵤ q)` with
    /// `hᵤ = Aᵤ x` and `q = A_g x` (no `d_out`-long output per slot is formed).
    keys: Vec<f32>,
}

/// The rows' own low-rank pairs (the fusion rows' averages), in the stack's layout.
#[derive(Debug, Default)]
struct Pairs {
    /// `[n, r_max, d_in]`.
    a: Vec<f32>,
    /// `[n, r_max, d_out]`.
    bt: Vec<f32>,
}

/// The per-row update of a batch for one linear layer, applied on the host.
#[derive(Debug, Clone)]
pub struct HostRows {
    stack: Arc<HostStack>,
    /// The fusion rows' averaged pairs.
    fused: Arc<Pairs>,
    /// The layer's gate, when some gate row has an adapter that adapts the layer.
    gate: Option<Arc<HostGate>>,
    /// Per row, the adapters it applies here and how it weighs them.
    rows: Vec<HostRow>,
}

impl HostRows {
    /// The update of `rows` (a validated [`MixPlan`](super::MixPlan)'s rows) for this layer. `gate`
    /// gives the layer's gate on the host; it is called only when a gate row has an adapter that
    /// adapts the layer. Errors as the gathered layout's: a fusion row whose adapters differ in rank,
    /// scale or target modules, an Arrow row's adapter without a prototype, a gate row without a
    /// fitting gate.
    pub(crate) fn new(
        stack: Arc<HostStack>,
        rows: &[RowMix],
        gate: impl FnOnce() -> Result<Option<GateFactors>, CoreError>,
    ) -> Result<Self, CoreError> {
        let (d_in, d_out, r_max) = (stack.d_in, stack.d_out, stack.r_max);
        let mut fused = Pairs::default();
        let mut n_fused = 0;
        let mut host_rows = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            // The row's adapters that adapt this layer, with `coef(weight, scale)`.
            let slots = |coef: fn(f32, f32) -> f32| -> Vec<Slot> {
                row.entries
                    .iter()
                    .filter_map(|&(unique, w)| {
                        let (rank, scale) = stack.meta[unique]?;
                        Some(Slot { unique, rank, coef: coef(w, scale) })
                    })
                    .collect()
            };
            let scale_only = |_: f32, s: f32| s;
            host_rows.push(match row.composition {
                Composition::Single | Composition::Mixture => HostRow {
                    slots: slots(|w, s| w * s).into_iter().filter(|s| s.coef != 0.0).collect(),
                    route: Route::Fixed,
                },
                Composition::Fusion => {
                    let slots = match stack.fusion_of(r, &row.entries)? {
                        None => Vec::new(),
                        Some(Fusion { entries, rank, scale }) => {
                            let n = n_fused;
                            n_fused += 1;
                            fused.a.resize((n + 1) * r_max * d_in, 0.0);
                            fused.bt.resize((n + 1) * r_max * d_out, 0.0);
                            let (a, bt) = (&mut fused.a[n * r_max * d_in..], &mut fused.bt[n * r_max * d_out..]);
                            for (u, w) in entries {
                                let (au, btu) = (&stack.a[u * r_max * d_in..], &stack.bt[u * r_max * d_out..]);
                                a.iter_mut().zip(&au[..rank * d_in]).for_each(|(a, x)| *a += w * x);
                                bt.iter_mut().zip(&btu[..rank * d_out]).for_each(|(b, x)| *b += w * x);
                            }
                            vec![Slot { unique: n, rank, coef: scale }]
                        }
                    };
                    HostRow { slots, route: Route::Fused }
                }
                Composition::Arrow(params) => {
                    let slots = slots(scale_only);
                    if let Some(s) = slots.iter().find(|s| stack.protos[s.unique].is_none()) {
                        return Err(CoreError::Composition(format!(
                            "row {r}: unique adapter {} has no Arrow prototype (load it with its prototypes)",
                            s.unique
                        )));
                    }
                    HostRow { slots, route: Route::Arrow(params) }
                }
                Composition::Gate => {
                    let slots = slots(scale_only);
                    HostRow { route: Route::Gate { silent: row.entries.len() - slots.len() }, slots }
                }
            });
        }
        let gated = |row: &HostRow| matches!(row.route, Route::Gate { .. }) && !row.slots.is_empty();
        // Without adapters here, gate rows add nothing whatever their weights: no gate is needed.
        let gate = match host_rows.iter().any(gated) {
            false => None,
            true => {
                let Some(g) = gate()? else {
                    return Err(CoreError::Composition(
                        "a `gate` row needs a gate for every layer its adapters adapt; this layer has none".into(),
                    ));
                };
                let used = host_rows.iter().filter(|r| gated(r)).flat_map(|r| r.slots.iter().map(|s| s.unique));
                Some(Arc::new(HostGate::new(&stack, &g, used)?))
            }
        };
        Ok(Self { stack, fused: Arc::new(fused), gate, rows: host_rows })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// `[d_in, d_out]` of the layer.
    pub fn dims(&self) -> [usize; 2] {
        [self.stack.d_in, self.stack.d_out]
    }

    /// The given rows, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        Self {
            stack: self.stack.clone(),
            fused: self.fused.clone(),
            gate: self.gate.clone(),
            rows: rows.iter().map(|&r| self.rows[r].clone()).collect(),
        }
    }

    /// Adds the rows' updates to `y`: `x` is `[rows·seq, d_in]` and `y` `[rows·seq, d_out]`, row-major,
    /// row `b`'s tokens `b·seq..(b+1)·seq`.
    ///
    /// # Panics
    /// If `x` or `y` do not have those lengths for this batch's rows.
    pub fn add_to(&self, x: &[f32], seq: usize, y: &mut [f32]) {
        let (d_in, d_out) = (self.stack.d_in, self.stack.d_out);
        let tokens = self.rows.len() * seq;
        assert!(
            x.len() == tokens * d_in && y.len() == tokens * d_out,
            "LoRA input [{tokens}, {d_in}] and output [{tokens}, {d_out}], got {} and {} values",
            x.len(),
            y.len()
        );
        if tokens == 0 || d_out == 0 {
            return;
        }
        // Enough tokens per task that a task's work (about 50 k multiply-adds) outweighs handing it out.
        let per_token = self.rows.iter().map(|r| self.work(r)).max().unwrap_or(0);
        if per_token == 0 {
            return;
        }
        let min_len = (50_000 / per_token).max(1);
        let kernel = Kernel::detect();
        y.par_chunks_mut(d_out)
            .zip(x.par_chunks(d_in.max(1)))
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(Scratch::default, |scratch, (t, (y_t, x_t))| {
                self.token(kernel, &self.rows[t / seq], x_t, y_t, scratch)
            });
    }

    /// Multiply-adds of one token of `row`, about.
    fn work(&self, row: &HostRow) -> usize {
        let rank: usize = row.slots.iter().map(|s| s.rank).sum();
        let (d_in, d_out) = (self.stack.d_in, self.stack.d_out);
        let route = match row.route {
            Route::Arrow(_) => row.slots.len() * d_in,
            Route::Gate { .. } if !row.slots.is_empty() => self.gate.as_ref().map_or(0, |g| g.rank * d_in),
            _ => 0,
        };
        rank * (d_in + d_out) + route
    }

    /// One token of `row`: `y += Σ_slots coef · weight · (A x) · Bᵀ`.
    fn token(&self, kernel: Kernel, row: &HostRow, x: &[f32], y: &mut [f32], s: &mut Scratch) {
        if row.slots.is_empty() {
            return;
        }
        let stack = &*self.stack;
        let (d_in, d_out, r_max) = (stack.d_in, stack.d_out, stack.r_max);
        let (a, bt) = match row.route {
            Route::Fused => (&self.fused.a, &self.fused.bt),
            _ => (&stack.a, &stack.bt),
        };
        s.h.clear();
        s.cols.clear();
        for slot in &row.slots {
            let at = slot.unique * r_max;
            kernel.dots(&a[at * d_in..][..slot.rank * d_in], slot.rank, x, &mut s.h);
            s.cols.extend((0..slot.rank).map(|k| (at + k) * d_out));
        }
        s.w.clear();
        match row.route {
            Route::Fixed | Route::Fused => s.w.extend(row.slots.iter().map(|s| s.coef)),
            Route::Arrow(params) => {
                for slot in &row.slots {
                    match &stack.protos[slot.unique] {
                        Some(p) => kernel.dots(p, 1, x, &mut s.w),
                        None => s.w.push(0.0), // refused by `new`
                    }
                }
                arrow_weights(&mut s.w, params, &mut s.kept);
                s.w.iter_mut().zip(&row.slots).for_each(|(w, slot)| *w *= slot.coef);
            }
            Route::Gate { silent } => {
                let Some(gate) = &self.gate else { return }; // `new` refuses gate rows without one
                s.q.clear();
                kernel.dots(&gate.a, gate.rank, x, &mut s.q);
                let mut h = s.h.as_slice();
                for slot in &row.slots {
                    // hᵤ · (Gᵤ q), with Gᵤ = sᵤ Bᵤᵀ B_g
                    let keys = &gate.keys[slot.unique * r_max * gate.rank..];
                    let score: f32 = h[..slot.rank]
                        .iter()
                        .zip(keys.chunks_exact(gate.rank))
                        .map(|(h, g)| h * g.iter().zip(&s.q).map(|(g, q)| g * q).sum::<f32>())
                        .sum();
                    s.w.push(score / (gate.rank as f32).sqrt());
                    h = &h[slot.rank..];
                }
                softmax_with_zeros(&mut s.w, silent);
                s.w.iter_mut().zip(&row.slots).for_each(|(w, slot)| *w *= slot.coef);
            }
        }
        let mut h = s.h.as_mut_slice();
        for (slot, &w) in row.slots.iter().zip(&s.w) {
            let (these, rest) = h.split_at_mut(slot.rank);
            these.iter_mut().for_each(|h| *h *= w);
            h = rest;
        }
        kernel.add_rows(bt, &s.h, &s.cols, y);
    }
}

impl HostGate {
    /// The gate's factors with `Gᵤ = sᵤ Bᵤᵀ B_g` for the adapters in `used`, shapes checked.
    fn new(stack: &HostStack, g: &GateFactors, used: impl Iterator<Item = usize>) -> Result<Self, CoreError> {
        let (d_in, d_out, r_max, r_g) = (stack.d_in, stack.d_out, stack.r_max, g.rank);
        if r_g == 0 || g.a.len() != r_g * d_in || g.b.len() != d_out * r_g {
            return Err(CoreError::Shape {
                what: "gate factors".into(),
                expected: format!("A_g [r_g, {d_in}] and B_g [{d_out}, r_g], r_g ≥ 1"),
                got: format!("{} and {} values for r_g = {r_g}", g.a.len(), g.b.len()),
            });
        }
        let mut keys = vec![0f32; stack.meta.len() * r_max * r_g];
        let mut done = vec![false; stack.meta.len()];
        for u in used {
            let Some((rank, scale)) = stack.meta[u] else { continue };
            if std::mem::replace(&mut done[u], true) {
                continue;
            }
            for k in 0..rank {
                let key = &mut keys[(u * r_max + k) * r_g..][..r_g];
                for (o, &b) in stack.bt[(u * r_max + k) * d_out..][..d_out].iter().enumerate() {
                    let b = b * scale;
                    key.iter_mut().zip(&g.b[o * r_g..][..r_g]).for_each(|(k, g)| *k += b * g);
                }
            }
        }
        Ok(Self { a: g.a.clone(), rank: r_g, keys })
    }
}

/// Arrow's weights of one token, in place: `scores` are `|x · protoᵢ|` on entry; a slot is kept when
/// fewer than `top_k` slots score higher (ties keep every tied slot), and the kept ones get
/// `softmax(score / T)`, the others 0.
fn arrow_weights(scores: &mut [f32], params: ArrowParams, kept: &mut Vec<bool>) {
    scores.iter_mut().for_each(|s| *s = s.abs());
    kept.clear();
    kept.extend(scores.iter().map(|s| scores.iter().filter(|o| *o > s).count() < params.top_k));
    let max = scores.iter().zip(kept.iter()).filter(|(_, k)| **k).map(|(s, _)| *s).fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for (s, &k) in scores.iter_mut().zip(kept.iter()) {
        *s = if k { ((*s - max) / params.temperature).exp() } else { 0.0 };
        total += *s;
    }
    scores.iter_mut().for_each(|s| *s /= total);
}

/// The softmax of `scores` and `zeros` more scores of 0, in place (the zeros' shares are dropped).
fn softmax_with_zeros(scores: &mut [f32], zeros: usize) {
    let max = scores.iter().copied().fold(if zeros > 0 { 0.0 } else { f32::NEG_INFINITY }, f32::max);
    // With zeros, max ≥ 0 and each zero's share is e^(−max) ≤ 1; without, none is added (0 · e^(−max)
    // would be 0 · ∞ for a very negative max).
    let mut total = if zeros > 0 { zeros as f32 * (-max).exp() } else { 0.0 };
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    scores.iter_mut().for_each(|s| *s /= total);
}

/// A thread's buffers for one token: the rank columns (`h`), the `Bᵀ` rows they scale (`cols`, as
/// offsets), the slots' weights (`w`), the gate's query (`q`) and Arrow's kept slots.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    cols: Vec<usize>,
    w: Vec<f32>,
    q: Vec<f32>,
    kept: Vec<bool>,
}

impl Kernel {
    /// Pushes the `n` dot products of `x` with the rows of `rows` (`[n, x.len()]`) onto `out`.
    fn dots(self, rows: &[f32], n: usize, x: &[f32], out: &mut Vec<f32>) {
        match self {
            Self::Plain => dots_plain(rows, n, x, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel because the CPU has AVX2 and FMA.
            #[allow(unsafe_code)]
            Self::Avx2 => unsafe { simd::dots_avx2(rows, n, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel because the CPU has AVX-512F.
            #[allow(unsafe_code)]
            Self::Avx512 => unsafe { simd::dots_avx512(rows, n, x, out) },
        }
    }

    /// `y += Σᵢ h[i] · bt[cols[i]..cols[i] + y.len()]`.
    fn add_rows(self, bt: &[f32], h: &[f32], cols: &[usize], y: &mut [f32]) {
        match self {
            Self::Plain => add_rows_plain(bt, h, cols, y),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `dots`.
            #[allow(unsafe_code)]
            Self::Avx2 => unsafe { simd::add_rows_avx2(bt, h, cols, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `dots`.
            #[allow(unsafe_code)]
            Self::Avx512 => unsafe { simd::add_rows_avx512(bt, h, cols, y) },
        }
    }
}

/// [`Kernel::dots`] in plain Rust.
fn dots_plain(rows: &[f32], n: usize, x: &[f32], out: &mut Vec<f32>) {
    let d = x.len();
    out.extend((0..n).map(|i| rows[i * d..][..d].iter().zip(x).map(|(a, x)| a * x).sum::<f32>()));
}

/// [`Kernel::add_rows`] in plain Rust.
fn add_rows_plain(bt: &[f32], h: &[f32], cols: &[usize], y: &mut [f32]) {
    let d_out = y.len();
    for (&c, &at) in h.iter().zip(cols) {
        for (y, b) in y.iter_mut().zip(&bt[at..at + d_out]) {
            *y += c * b;
        }
    }
}

/// [`dots_plain`] and [`add_rows_plain`] with AVX-512F and AVX2+FMA intrinsics.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    /// The two kernels for one vector width: `$vec` of `$lanes` lanes (`$load`, `$store`, `$fmadd`,
    /// `$set1`, `$zero` its intrinsics) under `$features`.
    macro_rules! token_kernels {
        ($dots:ident, $add_rows:ident, $features:literal, $vec:ty, $lanes:literal,
         $load:ident, $store:ident, $fmadd:ident, $set1:ident, $zero:ident) => {
            /// The dot products, four rows per pass over `x` (four independent accumulators).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $dots(rows: &[f32], n: usize, x: &[f32], out: &mut Vec<f32>) {
                let d = x.len();
                assert!(rows.len() >= n * d, "{n} rows of {d} values in {}", rows.len());
                let sum = |v: $vec| -> f32 {
                    let mut lanes = [0f32; $lanes];
                    // SAFETY: `lanes` holds one vector.
                    unsafe { $store(lanes.as_mut_ptr(), v) };
                    lanes.iter().sum()
                };
                let whole = d - d % $lanes;
                let mut k = 0;
                while k < n {
                    let group = (n - k).min(4);
                    let mut acc = [$zero(); 4];
                    for j in (0..whole).step_by($lanes) {
                        // SAFETY: `j + $lanes <= d = x.len()`; row `k + g < n` of `rows` is `d` long
                        // (checked above).
                        let xv = unsafe { $load(x.as_ptr().add(j)) };
                        for (g, acc) in acc.iter_mut().enumerate().take(group) {
                            let rv = unsafe { $load(rows.as_ptr().add((k + g) * d + j)) };
                            *acc = $fmadd(xv, rv, *acc);
                        }
                    }
                    for (g, &acc) in acc.iter().enumerate().take(group) {
                        let row = &rows[(k + g) * d..][..d];
                        let mut v = sum(acc);
                        for j in whole..d {
                            v += x[j] * row[j];
                        }
                        out.push(v);
                    }
                    k += group;
                }
            }

            /// `y` a vector at a time over every rank column.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $add_rows(bt: &[f32], h: &[f32], cols: &[usize], y: &mut [f32]) {
                let d_out = y.len();
                assert!(h.len() == cols.len() && cols.iter().all(|&at| at + d_out <= bt.len()), "Bᵀ rows in the stack");
                let whole = d_out - d_out % $lanes;
                for j in (0..whole).step_by($lanes) {
                    // SAFETY: `j + $lanes <= d_out = y.len()`, and every `Bᵀ` row is `d_out` long
                    // inside `bt` (checked above).
                    unsafe {
                        let mut acc = $load(y.as_ptr().add(j));
                        for (&c, &at) in h.iter().zip(cols) {
                            acc = $fmadd($set1(c), $load(bt.as_ptr().add(at + j)), acc);
                        }
                        $store(y.as_mut_ptr().add(j), acc);
                    }
                }
                for j in whole..d_out {
                    for (&c, &at) in h.iter().zip(cols) {
                        y[j] += c * bt[at + j];
                    }
                }
            }
        };
    }

    token_kernels!(
        dots_avx512,
        add_rows_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps,
        _mm512_setzero_ps
    );
    token_kernels!(
        dots_avx2,
        add_rows_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_set1_ps,
        _mm256_setzero_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values as values;
    use crate::lora::{LoraFactors, MixPlan, reference};

    fn factors(rank: usize, d_in: usize, d_out: usize, seed: u64) -> LoraFactors {
        LoraFactors {
            a: values(rank * d_in, seed),
            b: values(d_out * rank, seed + 100),
            rank,
            scale: 0.5 + seed as f32 * 0.25,
            proto: None,
        }
        .with_prototype()
    }

    fn kernels() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Plain];
        #[cfg(target_arch = "x86_64")]
        match Kernel::detect() {
            Kernel::Avx512 => kernels.extend([Kernel::Avx2, Kernel::Avx512]),
            Kernel::Avx2 => kernels.push(Kernel::Avx2),
            Kernel::Plain => {}
        }
        kernels
    }

    /// Every composition in one batch (single, mixture, fusion, Arrow, the gate, a base row, rows whose
    /// adapters do not all adapt the layer), shapes past the kernels' lanes (and ragged ones), ranks of
    /// 1 to 9 (the 4-row passes and the single rows), several tokens per row and every instruction set
    /// this CPU runs, against the dense reference.
    #[test]
    fn every_kernel_matches_the_reference() {
        for (d_in, d_out, seq) in [(64, 48, 1), (37, 71, 3), (5, 3, 2), (130, 17, 2)] {
            let mut adapters: Vec<Option<LoraFactors>> = [Some(8), Some(1), None, Some(9), Some(4), Some(3), Some(4)]
                .iter()
                .enumerate()
                .map(|(i, r)| r.map(|r| factors(r, d_in, d_out, i as u64)))
                .collect();
            // 4 and 6 can be fused: the same rank and scale.
            if let (Some(Some(four)), Some(Some(six))) = (adapters.get(4).cloned(), adapters.get_mut(6)) {
                six.scale = four.scale;
            }
            let refs: Vec<Option<&LoraFactors>> = adapters.iter().map(Option::as_ref).collect();
            let row = |composition: Composition, entries: Vec<(usize, f32)>| RowMix { composition, entries };
            let arrow = |top_k, temperature| Composition::Arrow(ArrowParams { top_k, temperature });
            let rows = vec![
                row(Composition::Single, vec![(0, 1.0)]),
                row(Composition::Mixture, vec![(1, 0.3), (3, 0.5), (4, 0.2)]),
                RowMix::base(),
                row(Composition::Mixture, vec![(2, 1.0), (5, -0.7)]),
                row(Composition::Mixture, vec![(0, 0.25), (1, 0.25), (3, 0.25), (4, 0.25), (5, 0.25)]),
                row(Composition::Fusion, vec![(4, 0.6), (6, 0.4)]),
                row(Composition::Fusion, vec![(2, 1.0)]),
                row(arrow(2, 0.7), vec![(0, 1.0), (1, 0.0), (3, 1.0), (4, 1.0)]),
                row(arrow(1, 1.0), vec![(2, 1.0), (5, 1.0), (6, 1.0)]),
                row(arrow(3, 2.0), vec![(2, 1.0)]),
                row(Composition::Gate, vec![(1, 1.0), (2, 0.5), (3, 0.2)]),
                row(Composition::Gate, vec![(0, 1.0), (5, 1.0), (6, 0.0)]),
                row(Composition::Gate, vec![(2, 1.0)]),
            ];
            let gate = GateFactors { a: values(3 * d_in, 11), b: values(d_out * 3, 12), rank: 3 };
            let plan = MixPlan::new(rows, refs.len()).expect("plan");
            let stack = super::super::host_stack(&refs, d_in, d_out).expect("stack").expect("targets");
            let host = HostRows::new(Arc::new(stack), plan.rows(), || Ok(Some(gate.clone()))).expect("rows");
            let n = plan.rows().len();
            let x = values(n * seq * d_in, 7);
            let zero_w = vec![0f32; d_out * d_in];
            let want: Vec<Vec<f32>> = (0..n)
                .map(|r| {
                    let xr = &x[r * seq * d_in..(r + 1) * seq * d_in];
                    reference::row_forward_gated(&plan, r, &refs, Some(&gate), xr, &zero_w, d_in, d_out)
                        .expect("reference")
                })
                .collect();
            for kernel in kernels() {
                let mut y = values(n * seq * d_out, 9);
                let y0 = y.clone();
                // The kernel alone, token by token (`add_to` picks the detected one).
                let mut scratch = Scratch::default();
                for t in 0..n * seq {
                    let (x_t, y_t) = (&x[t * d_in..][..d_in], &mut y[t * d_out..][..d_out]);
                    host.token(kernel, &host.rows[t / seq], x_t, y_t, &mut scratch);
                }
                let mut threaded = y0.clone();
                host.add_to(&x, seq, &mut threaded);
                for (r, want) in want.iter().enumerate() {
                    for (i, w) in want.iter().enumerate() {
                        let at = r * seq * d_out + i;
                        let w = w + y0[at];
                        for (what, got) in [("kernel", y[at]), ("add_to", threaded[at])] {
                            assert!(
                                (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                "{kernel:?} {what} [{d_in}, {d_out}] row {r} value {i}: {got} vs {w}"
                            );
                        }
                    }
                }
            }
            // Rows leave the batch: the remaining ones keep their adapters and routes.
            let kept = host.select_rows(&[11, 5, 1]);
            assert_eq!(kept.rows(), 3);
            assert_eq!(kept.rows, [host.rows[11].clone(), host.rows[5].clone(), host.rows[1].clone()]);
            let mut y = vec![0f32; 3 * seq * d_out];
            let picked: Vec<f32> =
                [11, 5, 1].iter().flat_map(|&r| x[r * seq * d_in..][..seq * d_in].to_vec()).collect();
            kept.add_to(&picked, seq, &mut y);
            for (i, &r) in [11, 5, 1].iter().enumerate() {
                for (got, w) in y[i * seq * d_out..][..seq * d_out].iter().zip(&want[r]) {
                    assert!((got - w).abs() <= 1e-4 * (1.0 + w.abs()), "selected row {r}: {got} vs {w}");
                }
            }
        }
    }

    #[test]
    fn weights_stay_finite_for_scores_far_from_zero() {
        let mut one = [-200.0];
        softmax_with_zeros(&mut one, 0);
        assert_eq!(one, [1.0]);
        let mut two = [-300.0, -300.0 + 2f32.ln()];
        softmax_with_zeros(&mut two, 0);
        assert!((two[0] - 1.0 / 3.0).abs() < 1e-6 && (two[1] - 2.0 / 3.0).abs() < 1e-6, "{two:?}");
        let mut silent = [-200.0, 300.0];
        softmax_with_zeros(&mut silent, 2);
        assert_eq!(silent, [0.0, 1.0]);
        let mut scores = [-1e30, 3.0, -2.0];
        arrow_weights(&mut scores, ArrowParams { top_k: 2, temperature: 0.5 }, &mut Vec::new());
        assert_eq!(scores, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn no_rows_and_base_rows_leave_the_output_alone() {
        let f = factors(2, 20, 18, 1);
        let stack = super::super::host_stack(&[Some(&f)], 20, 18).expect("stack").expect("targets");
        let mix = |entries| RowMix { composition: Composition::Mixture, entries };
        let host = HostRows::new(Arc::new(stack), &[mix(vec![]), mix(vec![(0, 0.0)])], || Ok(None)).expect("rows");
        let mut y = values(2 * 18, 3);
        let y0 = y.clone();
        host.add_to(&values(2 * 20, 4), 1, &mut y);
        assert_eq!(y, y0);
        let none = host.select_rows(&[]);
        none.add_to(&[], 5, &mut []);
    }

    #[test]
    fn routed_and_fused_rows_are_checked_when_built() {
        let (d_in, d_out) = (6, 5);
        let bare = LoraFactors { proto: None, ..factors(2, d_in, d_out, 1) };
        let other = factors(3, d_in, d_out, 2);
        let refs = [Some(&bare), Some(&other), None];
        let stack = Arc::new(super::super::host_stack(&refs, d_in, d_out).expect("stack").expect("targets"));
        let row = |composition, entries| vec![RowMix { composition, entries }];
        let build = |rows: &[RowMix], gate: Option<&GateFactors>| {
            HostRows::new(stack.clone(), rows, || Ok(gate.cloned())).map(|_| ()).map_err(|e| e.to_string())
        };
        let arrow = Composition::Arrow(ArrowParams::default());
        assert!(build(&row(arrow, vec![(0, 1.0)]), None).is_err_and(|e| e.contains("no Arrow prototype")));
        assert!(build(&row(arrow, vec![(1, 1.0)]), None).is_ok());
        assert!(
            build(&row(Composition::Fusion, vec![(0, 0.5), (1, 0.5)]), None).is_err_and(|e| e.contains("equal ranks"))
        );
        assert!(
            build(&row(Composition::Fusion, vec![(1, 0.5), (2, 0.5)]), None)
                .is_err_and(|e| e.contains("target modules"))
        );
        assert!(build(&row(Composition::Gate, vec![(1, 1.0)]), None).is_err_and(|e| e.contains("needs a gate")));
        // A gate row none of whose adapters adapts the layer needs no gate here.
        assert!(build(&row(Composition::Gate, vec![(2, 1.0)]), None).is_ok());
        let wrong = GateFactors { a: vec![0.1; 2 * (d_in + 1)], b: vec![0.1; 2 * d_out], rank: 2 };
        assert!(
            build(&row(Composition::Gate, vec![(1, 1.0)]), Some(&wrong)).is_err_and(|e| e.contains("gate factors"))
        );
    }
}
