//! `y = x · Wᵀ` on the host for many rows of `x` (prefill), with `W` handed over a panel of rows at a
//! time (dequantised from [`crate::quant::QMatrix`] blocks on the fly): an AVX-512F register-blocked
//! kernel, 12 rows of `x` by 32 output columns per step.
//!
//! Each panel of 32 weight rows is dequantised once per call, packed `[cols][32]` (so a step loads
//! the 32 columns' values of one input position as two registers) and kept hot in cache while every
//! row of `x` passes over it; panels run on rayon's threads. Where the CPU lacks AVX-512F,
//! [`matmul_panels`] returns `None` and callers keep their other path (the backend's gemm on the
//! dequantised matrix). [`reference`](mod@reference) is the plain f64 product it is tested against.
//!
//! [`PackedMatrix`] is an f32 weight packed that way once, when a model is loaded: its products (any
//! number of rows, decoding included) run the same kernel straight over the stored panels, in blocks of
//! 192 rows of `x` (a block stays in L2 while every panel passes over it) written straight into the
//! result. Either way the kernel takes the input 256 columns at a time, so that the slice of a panel it
//! reads (32 KiB) stays in L1.

use rayon::prelude::*;

/// Rows of `x` per step of the kernel.
const MR: usize = 12;
const _: () = assert!(MR == 12, "rows_times_panel's steps list 1..=12 rows");
/// Output columns (weight rows) per panel.
const NR: usize = 32;
/// Rows of `x` per block of [`PackedMatrix::matmul`] (16 steps of MR): with `k` up to about 2 500 (768
/// KiB of a 2 MiB L2 at `k` = 1 024), a block stays in L2 while every panel passes over it.
const MC: usize = 192;

/// Whether [`matmul_panels`] runs here (AVX-512F detected at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::Kernel::detect() == crate::cpu::Kernel::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = x · Wᵀ`, `x` `[m, k]` row-major, `W` `[n, k]` whose row `r` `weight_row(r, out)` writes into
/// `out` (`k` values); the result `[m, n]`. `None` where the CPU lacks AVX-512F ([`available`]).
///
/// # Panics
/// If `x` is not `m · k` long.
pub fn matmul_panels(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    weight_row: impl Fn(usize, &mut [f32]) + Sync,
) -> Option<Vec<f32>> {
    assert_eq!(x.len(), m * k, "x of [{m}, {k}]");
    if !available() {
        return None;
    }
    if m == 0 || n == 0 {
        return Some(Vec::new());
    }
    let panel = |p: usize, out: &mut [f32]| {
        // W's rows p·32.. dequantised side by side, then packed [k][32] (missing rows zero): the
        // writes run along the packed rows, the reads across 32 rows that stay in cache.
        let mut rows = vec![0.0f32; NR * k];
        for (c, row) in rows.chunks_exact_mut(k.max(1)).take(NR.min(n - p * NR)).enumerate() {
            weight_row(p * NR + c, row);
        }
        let mut packed = vec![0.0f32; k * NR];
        for (kk, dst) in packed.chunks_exact_mut(NR).enumerate() {
            for (c, w) in dst.iter_mut().enumerate() {
                *w = rows[c * k + kk];
            }
        }
        rows_times_panel(x, m, k, &packed, out);
    };
    Some(by_panels(m, n, NR, m, m * n * k >= 1 << 18, panel))
}

/// The `[m, n]` product assembled from panels of `nr` output columns: `panel(p, out)` writes columns
/// `p·nr..` of every row into `out`, `nr` values per row for `rows` rows (at least `m`; columns past
/// `n` and rows past `m` are dropped). Each thread reuses one such buffer and copies each panel it
/// computes into its columns of the result. Panels run on rayon's threads when `parallel`.
pub(crate) fn by_panels(
    m: usize,
    n: usize,
    nr: usize,
    rows: usize,
    parallel: bool,
    panel: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    assert!(rows >= m && nr > 0, "panels of {nr} columns over {rows} rows for {m}");
    let mut y = vec![0.0f32; m * n];
    let columns = Columns::new(&mut y, m, n);
    let run = |buffer: &mut Vec<f32>, p: usize| {
        panel(p, buffer);
        // SAFETY: panel `p` (columns p·nr..) is computed and written by this task alone.
        #[allow(unsafe_code)]
        unsafe {
            columns.write(p * nr, nr, buffer)
        };
    };
    let panels = n.div_ceil(nr);
    let buffer = || vec![0.0f32; rows * nr];
    match parallel {
        true => (0..panels).into_par_iter().for_each_init(buffer, run),
        false => {
            let mut b = buffer();
            (0..panels).for_each(|p| run(&mut b, p));
        }
    }
    y
}

/// The result of [`by_panels`] or [`PackedMatrix::matmul`] (`[m, n]`, borrowed for `'y`), written a
/// panel of columns at a time from several threads.
struct Columns<'y> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    _y: std::marker::PhantomData<&'y mut [f32]>,
}

// SAFETY: `Columns` hands out no references; its only accesses are `write` and `product` (a raw pointer
// to a panel's columns), whose callers guarantee that no two threads touch the same columns at once.
#[allow(unsafe_code)]
unsafe impl Sync for Columns<'_> {}

impl<'y> Columns<'y> {
    /// `y` as `m` rows of `n`.
    fn new(y: &'y mut [f32], m: usize, n: usize) -> Self {
        assert_eq!(y.len(), m * n, "a result of [{m}, {n}]");
        Self { ptr: y.as_mut_ptr(), m, n, _y: std::marker::PhantomData }
    }

    /// The spare capacity of the empty `y` as `m` rows of `n`, for a caller that writes every value
    /// and then sets the length.
    fn unwritten(y: &'y mut Vec<f32>, m: usize, n: usize) -> Self {
        assert!(y.is_empty() && y.capacity() >= m * n, "room for a result of [{m}, {n}]");
        Self { ptr: y.as_mut_ptr(), m, n, _y: std::marker::PhantomData }
    }

    /// Columns `first..first + nr` (those below `n`) of every row from `out` (`nr` values per row).
    ///
    /// # Safety
    /// No other thread writes any of these columns while this runs.
    #[allow(unsafe_code)]
    unsafe fn write(&self, first: usize, nr: usize, out: &[f32]) {
        assert!(first < self.n, "column {first} of {}", self.n);
        let cols = nr.min(self.n - first);
        assert!(out.len() >= self.m * nr, "a panel of {nr} columns for {} rows", self.m);
        for i in 0..self.m {
            let src = &out[i * nr..i * nr + cols];
            // SAFETY: `i·n + first + cols <= m·n`, the length of the slice `ptr` points to (borrowed
            // for `'y`); no other thread writes these columns (the caller's guarantee).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(i * self.n + first), cols) };
        }
    }

    /// Hands rows `row..row + rows`, columns `first..first + nr` (those below `n`, at most NR) to
    /// `write(c, ldc, cols)`: `c` points to the first of them, `ldc` is the row stride, `cols` the
    /// columns' count.
    ///
    /// # Safety
    /// No other thread touches these rows' columns while this runs, and `write` touches nothing but
    /// them.
    #[allow(unsafe_code)]
    unsafe fn product(&self, row: usize, rows: usize, first: usize, write: impl FnOnce(*mut f32, usize, usize)) {
        assert!(first < self.n && row + rows <= self.m, "rows {row}.. and column {first} of [{}, {}]", self.m, self.n);
        let cols = NR.min(self.n - first);
        // SAFETY: `row·n + first < m·n`, inside the slice `ptr` points to.
        write(unsafe { self.ptr.add(row * self.n + first) }, self.n, cols)
    }
}

/// `out[i][j] = Σ_kk x[i][kk] · panel[kk][j]` for the `m` rows of `x` (`[m, k]`) and a packed panel
/// (`[k, NR]`) into `out` (`[m, NR]`). Only where [`available`] (the caller checks).
fn rows_times_panel(x: &[f32], m: usize, k: usize, panel: &[f32], out: &mut [f32]) {
    assert!(x.len() >= m * k && panel.len() >= k * NR && out.len() >= m * NR, "panel product bounds");
    assert!(available(), "the panel kernel needs AVX-512F");
    // SAFETY: `out` holds `m` rows of NR (asserted) and is borrowed mutably here.
    #[allow(unsafe_code)]
    unsafe {
        panel_product(x, m, k, panel, out.as_mut_ptr(), NR, NR)
    };
}

/// Columns of the input per block of the kernel: a block's `KC × NR` panel slice (32 KiB) stays in L1
/// while every row step passes over it.
const KC: usize = 256;

/// `c[i][j] = Σ_kk x[i][kk] · panel[kk][j]` for the `m` rows of `x` (`[m, k]`), a packed panel
/// (`[k, NR]`) and `cols ≤ NR` columns of the result, written through `c` at a row stride of `ldc`:
/// the input in blocks of [`KC`] columns (the first block stores, the others add), MR rows per step
/// and the last `m % MR` in one smaller step.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `c` points to `m` rows of `ldc ≥ cols` values that nothing
/// else reads or writes while this runs (columns `cols..ldc` of each row are not touched).
#[allow(unsafe_code)]
unsafe fn panel_product(x: &[f32], m: usize, k: usize, panel: &[f32], c: *mut f32, ldc: usize, cols: usize) {
    assert!(x.len() >= m * k && panel.len() >= k * NR && cols <= NR && cols <= ldc, "panel product bounds");
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! step {
            ($rows:expr, $($r:literal)*) => {
                match $rows {
                    $($r => kernel_avx512::<$r> as unsafe fn(Block<'_>),)*
                    _ => unreachable!("1..=MR rows per step"),
                }
            };
        }
        if k == 0 {
            for i in 0..m {
                // SAFETY: row `i < m` of `c` holds `cols` values (the caller's guarantee).
                unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, cols) };
            }
            return;
        }
        let mut i = 0;
        while i < m {
            let rows = MR.min(m - i);
            let kernel = step!(rows, 1 2 3 4 5 6 7 8 9 10 11 12);
            for first in (0..k).step_by(KC) {
                let kc = KC.min(k - first);
                let block = Block {
                    a: &x[i * k + first..(i + rows - 1) * k + first + kc],
                    lda: k,
                    kc,
                    b: &panel[first * NR..(first + kc) * NR],
                    // SAFETY: row `i < m` of `c` (the caller's guarantee).
                    c: unsafe { c.add(i * ldc) },
                    ldc,
                    cols,
                    accumulate: first > 0,
                };
                // SAFETY: AVX-512F (the caller's guarantee); `a` holds `rows` rows of `kc` at stride
                // `k`, `b` `kc` rows of NR, and `c` `rows` rows of `cols` at stride `ldc` that only
                // this call touches (the caller's guarantee).
                unsafe { kernel(block) };
            }
            i += rows;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, m, k, panel, c, ldc, cols);
}

/// One call of the kernel: `R` rows of `a` (`kc` values each at a row stride of `lda`), a panel slice
/// `b` (`[kc, NR]`), and `cols` columns of `R` result rows at `c` (row stride `ldc`), stored or, with
/// `accumulate`, added to.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Block<'a> {
    a: &'a [f32],
    lda: usize,
    kc: usize,
    b: &'a [f32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

/// `c[i][j] (+)= Σ_kk a[i][kk] · b[kk][j]` for `R ≤ MR` rows: 2·R accumulators of 16 lanes, the
/// result's columns past `cols` masked off.
///
/// # Safety
/// AVX-512F; `c` points to `R` rows of at least `cols` values at stride `ldc` that nothing else
/// touches meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const R: usize>(blk: Block<'_>) {
    use std::arch::x86_64::*;
    let Block { a, lda, kc, b, c, ldc, cols, accumulate } = blk;
    assert!(a.len() >= (R - 1) * lda + kc && b.len() >= kc * NR && cols <= NR, "kernel bounds");
    let mask = |from: usize| -> __mmask16 {
        let n = cols.saturating_sub(from).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let (m0, m1) = (mask(0), mask(16));
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if accumulate {
        for (i, r) in acc.iter_mut().enumerate() {
            // SAFETY: row `i < R` of `c`, its first `cols` values (the masks), the caller's guarantee.
            // The second half's address is formed only when it holds columns (`cols > 16`), so that
            // no pointer leaves the result.
            unsafe {
                r[0] = _mm512_maskz_loadu_ps(m0, c.add(i * ldc));
                if cols > 16 {
                    r[1] = _mm512_maskz_loadu_ps(m1, c.add(i * ldc + 16));
                }
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kk in 0..kc {
        // SAFETY: `kk·NR + 32 <= kc·NR <= b.len()` and `i·lda + kk < (R − 1)·lda + kc <= a.len()`
        // (asserted).
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(kk * NR));
            let b1 = _mm512_loadu_ps(bp.add(kk * NR + 16));
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i * lda + kk));
                r[0] = _mm512_fmadd_ps(av, b0, r[0]);
                r[1] = _mm512_fmadd_ps(av, b1, r[1]);
            }
        }
    }
    for (i, r) in acc.iter().enumerate() {
        // SAFETY: as for the loads.
        unsafe {
            _mm512_mask_storeu_ps(c.add(i * ldc), m0, r[0]);
            if cols > 16 {
                _mm512_mask_storeu_ps(c.add(i * ldc + 16), m1, r[1]);
            }
        }
    }
}

/// An f32 weight `W` (`[n, k]`, PyTorch's layout) packed once into panels of 32 rows stored `[k][32]`,
/// the layout [`matmul_panels`]' kernel reads; products of any number of rows run straight over them.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    /// `[n.div_ceil(32)][k][32]`, rows past `n` zero.
    panels: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedMatrix {
    /// Packs `w` (`[n, k]` row-major); `None` where the CPU lacks AVX-512F ([`available`]), so that
    /// callers keep the weight as it was.
    ///
    /// # Panics
    /// If `w` is not `n · k` long.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k, "W of [{n}, {k}]");
        if !available() {
            return None;
        }
        let mut panels = vec![0.0f32; n.div_ceil(NR) * k * NR];
        for (p, panel) in panels.chunks_exact_mut((k * NR).max(1)).enumerate() {
            for (c, row) in w.chunks_exact(k.max(1)).skip(p * NR).take(NR).enumerate() {
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + c] = v;
                }
            }
        }
        Some(Self { panels, n, k })
    }

    /// Rows of `W` (outputs).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Columns of `W` (inputs).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// `y = x · Wᵀ`, `x` `[m, k]` row-major; the result `[m, n]`.
    ///
    /// # Panics
    /// If `x` is not `m · k` long.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "x of [{m}, {k}]");
        if m == 0 || n == 0 || k == 0 {
            return vec![0.0; m * n];
        }
        assert!(available(), "a PackedMatrix exists only where AVX-512F does");
        // Blocks of MC rows, one after the other (a block of x stays in L2 while the panels pass);
        // within a block the panels run on rayon's threads, each writing its own columns of y. Every
        // value of y is stored once by the first block of input columns, so y starts unwritten (no
        // pass zeroing it first).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let columns = Columns::unwritten(&mut y, m, n);
        let parallel = m * n * k >= 1 << 18;
        for first in (0..m).step_by(MC) {
            let rows = MC.min(m - first);
            let task = |p: usize| {
                let panel = &self.panels[p * k * NR..(p + 1) * k * NR];
                // SAFETY: AVX-512F (asserted); rows `first..first + rows`, columns `p·NR..` of y,
                // which only this task writes.
                #[allow(unsafe_code)]
                unsafe {
                    columns.product(first, rows, p * NR, |c, ldc, cols| {
                        panel_product(&x[first * k..(first + rows) * k], rows, k, panel, c, ldc, cols)
                    })
                };
            };
            match parallel {
                true => (0..n.div_ceil(NR)).into_par_iter().for_each(task),
                false => (0..n.div_ceil(NR)).for_each(task),
            }
        }
        // SAFETY: the capacity is m·n (asserted by `unwritten`), and every value is written: each row
        // block's panels cover columns 0..n of its rows (the last panel's `cols` = n − p·NR, the
        // kernel's masks store exactly `cols` columns), the row blocks cover rows 0..m, and the first
        // block of input columns stores (k > 0 here).
        #[allow(unsafe_code)]
        unsafe {
            y.set_len(m * n)
        };
        y
    }
}

/// The plain product [`matmul_panels`] is held to.
pub mod reference {
    /// `x · Wᵀ` in f64 (`x` `[m, k]`, `w` `[n, k]`).
    pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|kk| f64::from(x[i * k + kk]) * f64::from(w[j * k + kk])).sum();
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5)
            .collect()
    }

    #[test]
    fn packed_matrices_match_the_reference_at_every_row_count() {
        for (k, n) in [(64, 70), (37, 33), (1, 5), (512, 32), (0, 3), (600, 70)] {
            let w = values(n * k, 7);
            let Some(packed) = PackedMatrix::pack(&w, n, k) else {
                assert!(!available(), "None only without AVX-512F");
                return;
            };
            assert_eq!((packed.rows(), packed.cols()), (n, k));
            for m in [0, 1, 2, 5, 11, 12, 13, 16, 25, 40, 200, 397] {
                let x = values(m * k, m as u32 + 1);
                let got = packed.matmul(&x, m);
                let want = reference::matmul(&x, m, k, &w, n);
                assert_eq!(got.len(), want.len(), "{m}×{k}×{n}");
                for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                    let bound = 2.0 * k as f64 * f64::from(f32::EPSILON) * 0.25 * k as f64;
                    assert!((f64::from(g) - r).abs() <= bound, "{m}×{k}×{n} at {i}: {g} vs {r}");
                }
            }
        }
    }

    #[test]
    fn panels_match_the_reference_on_ragged_shapes() {
        for (m, k, n) in [(1, 32, 1), (13, 64, 70), (40, 576, 33), (100, 96, 192), (12, 0, 5), (0, 32, 4)] {
            let (x, w) = (values(m * k, 1), values(n * k, 7));
            let got = matmul_panels(&x, m, k, n, |r, out| out.copy_from_slice(&w[r * k..(r + 1) * k]));
            let Some(got) = got else {
                assert!(!available(), "None only without AVX-512F");
                continue;
            };
            let want = reference::matmul(&x, m, k, &w, n);
            assert_eq!(got.len(), want.len(), "{m}×{k}×{n}");
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                // Each |x·w| term is at most 0.25: f32 rounding bound 2·k·ε·Σ|x·w|.
                let bound = 2.0 * k as f64 * f64::from(f32::EPSILON) * 0.25 * k as f64;
                assert!((f64::from(g) - r).abs() <= bound, "{m}×{k}×{n} at {i}: {g} vs {r}");
            }
        }
    }
}
