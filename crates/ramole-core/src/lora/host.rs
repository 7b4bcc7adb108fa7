//! [`RowLayout::Host`](super::RowLayout::Host): the per-row update of single and mixture rows computed
//! on the host in one call per linear layer, reading each row's adapters from the batch's stack in
//! place (as Punica's BGMV kernel does on a GPU): no per-row copy of any adapter, no product with the
//! adapters a row does not use.
//!
//! For every token `t` of row `b`, with `(u, c)` the row's slots (unique adapter, weight × scale):
//! `y_t += Σ_(u, c) c · (A_u x_t) · B_uᵀ`: first every slot's `rank` dot products with `x_t` (four stack
//! rows per pass over `x_t`), then one pass over `y_t` adding every slot's rank columns of `Bᵀ`. The
//! tokens are split over rayon's threads; each thread's tokens share the stack through its cache. The
//! products use AVX-512F or AVX2+FMA where the CPU has them (picked at run time), plain Rust elsewhere.

use std::sync::Arc;

use rayon::prelude::*;

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
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
    pub(crate) r_max: usize,
}

/// One adapter a row applies to this layer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    /// Index into the stack.
    unique: usize,
    /// Rank of the adapter.
    rank: usize,
    /// The row's weight times the adapter's scale.
    coef: f32,
}

/// The per-row update of a batch's single and mixture rows for one linear layer, applied on the host.
#[derive(Debug, Clone)]
pub struct HostRows {
    stack: Arc<HostStack>,
    /// Per row, the adapters it applies here (those that target the layer, with a non-zero weight).
    rows: Vec<Vec<Slot>>,
}

impl HostRows {
    /// The rows `slots[b]` = row `b`'s `(unique adapter, weight)` pairs (single and mixture rows).
    pub(crate) fn new(stack: Arc<HostStack>, slots: impl IntoIterator<Item = Vec<(usize, f32)>>) -> Self {
        let rows = slots
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .filter_map(|(unique, w)| {
                        let (rank, scale) = stack.meta[unique]?;
                        let coef = w * scale;
                        (coef != 0.0).then_some(Slot { unique, rank, coef })
                    })
                    .collect()
            })
            .collect();
        Self { stack, rows }
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
        Self { stack: self.stack.clone(), rows: rows.iter().map(|&r| self.rows[r].clone()).collect() }
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
        let per_token =
            self.rows.iter().map(|r| r.iter().map(|s| s.rank).sum::<usize>()).max().unwrap_or(0) * (d_in + d_out);
        if per_token == 0 {
            return;
        }
        let min_len = (50_000 / per_token).max(1);
        let kernel = Kernel::detect();
        y.par_chunks_mut(d_out).zip(x.par_chunks(d_in.max(1))).enumerate().with_min_len(min_len).for_each_init(
            || Scratch { h: Vec::new(), cols: Vec::new() },
            |scratch, (t, (y_t, x_t))| {
                let slots = &self.rows[t / seq];
                if !slots.is_empty() {
                    kernel.token(&self.stack, slots, x_t, y_t, scratch);
                }
            },
        );
    }
}

/// A thread's buffers: the rank columns of a token (`h`) and the `Bᵀ` rows they scale (`cols`, as
/// offsets into the stack).
struct Scratch {
    h: Vec<f32>,
    cols: Vec<usize>,
}

impl Kernel {
    fn token(self, stack: &HostStack, slots: &[Slot], x: &[f32], y: &mut [f32], s: &mut Scratch) {
        match self {
            Self::Plain => token_plain(stack, slots, x, y, s),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel because the CPU has AVX2 and FMA.
            #[allow(unsafe_code)]
            Self::Avx2 => unsafe { simd::token_avx2(stack, slots, x, y, s) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel because the CPU has AVX-512F.
            #[allow(unsafe_code)]
            Self::Avx512 => unsafe { simd::token_avx512(stack, slots, x, y, s) },
        }
    }
}

/// One slot's stack rows: `A` (`rank` rows of `d_in`) and the offset of its `Bᵀ` rows in the stack.
fn slot_rows<'s>(stack: &'s HostStack, slot: &Slot) -> (&'s [f32], usize) {
    let a = &stack.a[slot.unique * stack.r_max * stack.d_in..][..slot.rank * stack.d_in];
    (a, slot.unique * stack.r_max * stack.d_out)
}

/// One token, plain Rust: `y += Σ_slots coef · (A x) · Bᵀ`.
fn token_plain(stack: &HostStack, slots: &[Slot], x: &[f32], y: &mut [f32], s: &mut Scratch) {
    let d_out = stack.d_out;
    s.h.clear();
    s.cols.clear();
    for slot in slots {
        let (a, b0) = slot_rows(stack, slot);
        for r in a.chunks_exact(stack.d_in.max(1)) {
            s.h.push(slot.coef * r.iter().zip(x).map(|(a, x)| a * x).sum::<f32>());
        }
        s.cols.extend((0..slot.rank).map(|k| b0 + k * d_out));
    }
    for (&c, &at) in s.h.iter().zip(&s.cols) {
        for (y, b) in y.iter_mut().zip(&stack.bt[at..at + d_out]) {
            *y += c * b;
        }
    }
}

/// [`token_plain`] with AVX-512F and AVX2+FMA intrinsics.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::{HostStack, Scratch, Slot, slot_rows};

    /// The token kernel for one vector width: `$vec` of `$lanes` lanes (`$load`, `$store`, `$fmadd`,
    /// `$set1`, `$zero` its intrinsics) under `$features`.
    macro_rules! token_kernel {
        ($name:ident, $features:literal, $vec:ty, $lanes:literal,
         $load:ident, $store:ident, $fmadd:ident, $set1:ident, $zero:ident) => {
            /// `y += Σ_slots coef · (A x) · Bᵀ`: the dot products four `A` rows per pass over `x` (four
            /// independent accumulators), then `y` a vector at a time over every rank column.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(stack: &HostStack, slots: &[Slot], x: &[f32], y: &mut [f32], s: &mut Scratch) {
                let (d_in, d_out) = (stack.d_in, stack.d_out);
                assert!(x.len() == d_in && y.len() == d_out, "token of [{d_in}] into [{d_out}]");
                let sum = |v: $vec| -> f32 {
                    let mut lanes = [0f32; $lanes];
                    // SAFETY: `lanes` holds one vector.
                    unsafe { $store(lanes.as_mut_ptr(), v) };
                    lanes.iter().sum()
                };
                let whole_in = d_in - d_in % $lanes;
                s.h.clear();
                s.cols.clear();
                for slot in slots {
                    let (a, b0) = slot_rows(stack, slot);
                    let mut k = 0;
                    while k < slot.rank {
                        let group = (slot.rank - k).min(4);
                        let mut acc = [$zero(); 4];
                        for j in (0..whole_in).step_by($lanes) {
                            // SAFETY: `j + $lanes <= d_in = x.len()`; row `k + g < rank` of `a` is
                            // `d_in` long.
                            let xv = unsafe { $load(x.as_ptr().add(j)) };
                            for (g, acc) in acc.iter_mut().enumerate().take(group) {
                                let rv = unsafe { $load(a.as_ptr().add((k + g) * d_in + j)) };
                                *acc = $fmadd(xv, rv, *acc);
                            }
                        }
                        for (g, &acc) in acc.iter().enumerate().take(group) {
                            let row = &a[(k + g) * d_in..][..d_in];
                            let mut v = sum(acc);
                            for j in whole_in..d_in {
                                v += x[j] * row[j];
                            }
                            s.h.push(v * slot.coef);
                        }
                        k += group;
                    }
                    s.cols.extend((0..slot.rank).map(|k| b0 + k * d_out));
                }
                assert!(s.cols.iter().all(|&at| at + d_out <= stack.bt.len()), "Bᵀ rows in the stack");
                let whole_out = d_out - d_out % $lanes;
                for j in (0..whole_out).step_by($lanes) {
                    // SAFETY: `j + $lanes <= d_out = y.len()`, and every `Bᵀ` row is `d_out` long
                    // inside the stack (checked above).
                    unsafe {
                        let mut acc = $load(y.as_ptr().add(j));
                        for (&c, &at) in s.h.iter().zip(&s.cols) {
                            acc = $fmadd($set1(c), $load(stack.bt.as_ptr().add(at + j)), acc);
                        }
                        $store(y.as_mut_ptr().add(j), acc);
                    }
                }
                for j in whole_out..d_out {
                    for (&c, &at) in s.h.iter().zip(&s.cols) {
                        y[j] += c * stack.bt[at + j];
                    }
                }
            }
        };
    }

    token_kernel!(
        token_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps,
        _mm512_setzero_ps
    );
    token_kernel!(
        token_avx2,
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
    use crate::lora::{Composition, LoraFactors, MixPlan, RowMix, reference};

    fn factors(rank: usize, d_in: usize, d_out: usize, seed: u64) -> LoraFactors {
        LoraFactors {
            a: values(rank * d_in, seed),
            b: values(d_out * rank, seed + 100),
            rank,
            scale: 0.5 + seed as f32 * 0.25,
            proto: None,
        }
    }

    /// Shapes past the kernels' lanes (and ragged ones), ranks of 1 to 9 (the 4-row passes and the
    /// single rows), an adapter that does not target the layer, a base row, several tokens per row and
    /// every instruction set this CPU runs, against the dense reference.
    #[test]
    fn every_kernel_matches_the_reference() {
        let mut kernels = vec![Kernel::Plain];
        #[cfg(target_arch = "x86_64")]
        match Kernel::detect() {
            Kernel::Avx512 => kernels.extend([Kernel::Avx2, Kernel::Avx512]),
            Kernel::Avx2 => kernels.push(Kernel::Avx2),
            Kernel::Plain => {}
        }
        for (d_in, d_out, seq) in [(64, 48, 1), (37, 71, 3), (5, 3, 2), (130, 17, 2)] {
            let adapters: Vec<Option<LoraFactors>> = [Some(8), Some(1), None, Some(9), Some(4), Some(3)]
                .iter()
                .enumerate()
                .map(|(i, r)| r.map(|r| factors(r, d_in, d_out, i as u64)))
                .collect();
            let refs: Vec<Option<&LoraFactors>> = adapters.iter().map(Option::as_ref).collect();
            let mix = |entries: Vec<(usize, f32)>| RowMix { composition: Composition::Mixture, entries };
            let rows = vec![
                mix(vec![(0, 1.0)]),
                mix(vec![(1, 0.3), (3, 0.5), (4, 0.2)]),
                RowMix::base(),
                mix(vec![(2, 1.0), (5, -0.7)]),
                mix(vec![(0, 0.25), (1, 0.25), (3, 0.25), (4, 0.25), (5, 0.25)]),
            ];
            let plan = MixPlan::new(rows, refs.len()).expect("plan");
            let stack = super::super::host_stack(&refs, d_in, d_out).expect("stack").expect("targets");
            let host = HostRows::new(Arc::new(stack), plan.rows().iter().map(|r| r.entries.clone()));
            let n = plan.rows().len();
            let x = values(n * seq * d_in, 7);
            let zero_w = vec![0f32; d_out * d_in];
            for kernel in &kernels {
                let mut y = values(n * seq * d_out, 9);
                let y0 = y.clone();
                // The kernel alone, token by token (`add_to` picks the detected one).
                let mut scratch = Scratch { h: Vec::new(), cols: Vec::new() };
                for t in 0..n * seq {
                    let slots = &host.rows[t / seq];
                    let (x_t, y_t) = (&x[t * d_in..][..d_in], &mut y[t * d_out..][..d_out]);
                    kernel.token(&host.stack, slots, x_t, y_t, &mut scratch);
                }
                let mut threaded = y0.clone();
                host.add_to(&x, seq, &mut threaded);
                for r in 0..n {
                    let xr = &x[r * seq * d_in..(r + 1) * seq * d_in];
                    let want = reference::row_forward(&plan, r, &refs, xr, &zero_w, d_in, d_out).expect("reference");
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
            // Rows leave the batch: the remaining ones keep their adapters.
            let kept = host.select_rows(&[3, 1]);
            assert_eq!(kept.rows(), 2);
            assert_eq!(kept.rows[0], host.rows[3]);
            assert_eq!(kept.rows[1], host.rows[1]);
        }
    }

    #[test]
    fn no_rows_and_base_rows_leave_the_output_alone() {
        let f = factors(2, 20, 18, 1);
        let stack = super::super::host_stack(&[Some(&f)], 20, 18).expect("stack").expect("targets");
        let host = HostRows::new(Arc::new(stack), [vec![], vec![(0, 0.0)]]);
        let mut y = values(2 * 18, 3);
        let y0 = y.clone();
        host.add_to(&values(2 * 20, 4), 1, &mut y);
        assert_eq!(y, y0);
        let none = host.select_rows(&[]);
        none.add_to(&[], 5, &mut []);
    }
}
