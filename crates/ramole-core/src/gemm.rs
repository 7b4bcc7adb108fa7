//! `y = x · Wᵀ` on the host for many rows of `x` (prefill), with `W` handed over a panel of rows at a
//! time (dequantised from [`crate::quant::QMatrix`] blocks on the fly): an AVX-512F register-blocked
//! kernel, 12 rows of `x` by 32 output columns per step.
//!
//! Each panel of 32 weight rows is dequantised once per call, packed `[cols][32]` (so a step loads
//! the 32 columns' values of one input position as two registers) and kept hot in cache while every
//! row of `x` passes over it; panels run on rayon's threads. Where the CPU lacks AVX-512F,
//! [`matmul_panels`] returns `None` and callers keep their other path (the backend's gemm on the
//! dequantised matrix). [`reference`] is the plain f64 product it is tested against.

use rayon::prelude::*;

/// Rows of `x` per step of the kernel.
const MR: usize = 12;
/// Output columns (weight rows) per panel.
const NR: usize = 32;

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
    // Whole blocks of MR rows: the last one zero-padded.
    let m_pad = m.next_multiple_of(MR);
    let padded;
    let xs: &[f32] = if m_pad == m {
        x
    } else {
        let mut p = vec![0.0f32; m_pad * k];
        p[..m * k].copy_from_slice(x);
        padded = p;
        &padded
    };
    let panel = |p: usize| -> Vec<f32> {
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
        let mut out = vec![0.0f32; m_pad * NR];
        for (a, c) in xs.chunks_exact(MR * k.max(1)).zip(out.chunks_exact_mut(MR * NR)) {
            let c: &mut [f32; MR * NR] = c.try_into().expect("MR·NR outputs");
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available()` checked AVX-512F above; `a` holds MR rows of `k`, `packed` `k`
            // rows of NR (the kernel's bounds).
            #[allow(unsafe_code)]
            unsafe {
                kernel_avx512(a, k, &packed, c)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (a, c);
        }
        out
    };
    Some(by_panels(m, n, NR, m * n * k >= 1 << 18, panel))
}

/// The `[m, n]` product assembled from panels of `nr` output columns: `panel(p)` returns columns
/// `p·nr..` of every row, `nr` values per row for at least `m` rows (columns past `n` are dropped).
/// Panels run on rayon's threads when `parallel`.
pub(crate) fn by_panels(
    m: usize,
    n: usize,
    nr: usize,
    parallel: bool,
    panel: impl Fn(usize) -> Vec<f32> + Sync + Send,
) -> Vec<f32> {
    let panels = n.div_ceil(nr);
    let results: Vec<Vec<f32>> = match parallel {
        true => (0..panels).into_par_iter().map(panel).collect(),
        false => (0..panels).map(panel).collect(),
    };
    let mut y = vec![0.0f32; m * n];
    for (p, out) in results.iter().enumerate() {
        let cols = nr.min(n - p * nr);
        for (yr, or) in y.chunks_exact_mut(n).zip(out.chunks_exact(nr)) {
            yr[p * nr..p * nr + cols].copy_from_slice(&or[..cols]);
        }
    }
    y
}

/// `c[i][j] = Σ_kk a[i][kk] · b[kk][j]` for MR rows of `a` (`[MR, k]`) and a packed panel `b`
/// (`[k, NR]`): 24 accumulators of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(a: &[f32], k: usize, b: &[f32], c: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= MR * k && b.len() >= k * NR, "kernel bounds");
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kk in 0..k {
        // SAFETY: `kk·NR + 32 <= k·NR <= b.len()` and `i·k + kk < MR·k <= a.len()` (asserted).
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(kk * NR));
            let b1 = _mm512_loadu_ps(bp.add(kk * NR + 16));
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i * k + kk));
                r[0] = _mm512_fmadd_ps(av, b0, r[0]);
                r[1] = _mm512_fmadd_ps(av, b1, r[1]);
            }
        }
    }
    for (i, r) in acc.iter().enumerate() {
        // SAFETY: `i·NR + 32 <= MR·NR`.
        unsafe {
            _mm512_storeu_ps(c.as_mut_ptr().add(i * NR), r[0]);
            _mm512_storeu_ps(c.as_mut_ptr().add(i * NR + 16), r[1]);
        }
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
