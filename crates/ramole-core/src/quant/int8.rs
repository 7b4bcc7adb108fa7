//! Products with the activations rounded to 8 bits per block of 32 (llama.cpp's arithmetic: its
//! `Q8_0`/`Q8_1` activation blocks), so that the sums of products are integer ones.
//!
//! Each row of `x` is rounded per block of 32 values to `dx · xq`, `xq` a signed byte and
//! `dx = max|x| / 127`. A weight block then contributes `dw · dx · Σ q·xq` (the sum in 32-bit
//! integers) plus its offset times the block's sum of the rounded activations (`m·dx·Σxq` of Q4_1,
//! `−8·dw·dx·Σxq` of Q4_0). The result is exactly the product of the dequantised weights with the
//! rounded activations, up to f32 rounding of the per-block terms ([`super::reference::matmul_int8`]).
//!
//! With AVX-512 VNNI (`vpdpbusd`: 64 products of unsigned by signed bytes added into 16 sums per
//! instruction), up to 8 (`GEMM_MIN_ROWS`) rows of `x` take a row kernel: a group of four Q4 blocks
//! (64 bytes of nibbles) takes two products against the activations, stored per call in the order
//! the nibbles unpack to (the low nibbles of four blocks, then their high nibbles), for four weight
//! rows (or two) and up to four rows of `x` at a time. More rows take `gemm`, a register-blocked
//! product over panels of weight rows unpacked once per call. Q8_0's signed weights are biased by
//! 128 to be unsigned, the bias taken off with the block sums. Elsewhere a plain path computes the
//! same sums.

use super::{BLOCK, QMatrix, QuantFormat, dot};
use rayon::prelude::*;

/// Rows of activations from which [`Int8Rows::padded`] rounds on rayon's threads.
const PARALLEL_ROWS: usize = 64;

/// Activation values of one kernel group: 4 blocks of a Q4 format, 2 of Q8_0 (both: 64 bytes of
/// weights).
const GROUP_Q4: usize = 4 * BLOCK;
const GROUP_Q8: usize = 2 * BLOCK;

/// The rows of `x` rounded to 8 bits per block, laid out for weights of one format.
pub(super) struct Int8Rows {
    /// Blocks per row.
    nb: usize,
    /// Bytes per row of `q`: whole kernel groups, the last one padded with zeros.
    stride: usize,
    /// Blocks per kernel group (4 for Q4 formats, 2 for Q8_0).
    per_group: usize,
    /// The rounded values, `[m, stride]`, in the kernels' order ([`position`]).
    q: Vec<i8>,
    /// `dx` of every block, `[m, nb]`.
    scales: Vec<f32>,
    /// `dx` of every block repeated over its lanes of the kernel's 16 sums, `[m, groups · 16]`
    /// (zero for the padding).
    lane_scales: Vec<f32>,
    /// `dx · Σ xq` of every block, `[m, nb]`.
    sums: Vec<f32>,
}

impl Int8Rows {
    /// `x` (`[m, cols]`, `cols` a multiple of 32) rounded for weights in `format`.
    pub(super) fn new(format: QuantFormat, x: &[f32], cols: usize) -> Self {
        Self::padded(format, x, cols, x.len().checked_div(cols).unwrap_or(0))
    }

    /// [`Self::new`] over `rows` rows (at least `x`'s): the rows past `x`'s are zeros (they round to
    /// zeros). Many rows (prefill) are rounded on rayon's threads.
    pub(super) fn padded(format: QuantFormat, x: &[f32], cols: usize, rows: usize) -> Self {
        let simd = Self::vnni();
        let nb = cols / BLOCK;
        let per_group = if format == QuantFormat::Q8_0 { GROUP_Q8 / BLOCK } else { GROUP_Q4 / BLOCK };
        let groups = nb.div_ceil(per_group);
        let stride = groups * per_group * BLOCK;
        let m = x.len().checked_div(cols).unwrap_or(0);
        assert!(rows >= m, "{rows} rows for {m} rows of x");
        let mut out = Self {
            nb,
            stride,
            per_group,
            q: vec![0; rows * stride],
            scales: vec![0.0; rows * nb],
            lane_scales: vec![0.0; rows * groups * 16],
            sums: vec![0.0; rows * nb],
        };
        if nb == 0 || m == 0 {
            return out;
        }
        let lanes = 16 / per_group;
        // One row: its values, block scales, block sums, lane scales, and its activations.
        let round_row = |row: &mut [i8], scales: &mut [f32], sums: &mut [f32], lane_scales: &mut [f32], xr: &[f32]| {
            for (b, block) in xr.chunks_exact(BLOCK).enumerate() {
                let block: &[f32; BLOCK] = block.try_into().expect("a block of 32");
                #[cfg(target_arch = "x86_64")]
                let (d, r) = match simd {
                    // SAFETY: `vnni()` found AVX-512F and BW.
                    #[allow(unsafe_code)]
                    true => unsafe { vnni::round_block(block) },
                    false => round_block(block),
                };
                #[cfg(not(target_arch = "x86_64"))]
                let (_, (d, r)) = (simd, round_block(block));
                let (lo, hi) = r.split_at(16);
                let at = |j| position(per_group, b, j);
                if per_group == GROUP_Q8 / BLOCK {
                    row[at(0)..at(0) + BLOCK].copy_from_slice(&r);
                } else {
                    row[at(0)..at(0) + 16].copy_from_slice(lo);
                    row[at(16)..at(16) + 16].copy_from_slice(hi);
                }
                scales[b] = d;
                sums[b] = d * r.iter().map(|&v| i32::from(v)).sum::<i32>() as f32;
                let lane0 = (b / per_group) * 16 + (b % per_group) * lanes;
                lane_scales[lane0..lane0 + lanes].fill(d);
            }
        };
        let (q, sc, su, ls) = (&mut out.q, &mut out.scales, &mut out.sums, &mut out.lane_scales);
        if m >= PARALLEL_ROWS {
            q.par_chunks_mut(stride)
                .zip(sc.par_chunks_mut(nb))
                .zip(su.par_chunks_mut(nb))
                .zip(ls.par_chunks_mut(groups * 16).zip(x.par_chunks(cols)))
                .with_min_len(PARALLEL_ROWS / 2)
                .for_each(|(((row, sc), su), (ls, xr))| round_row(row, sc, su, ls, xr));
        } else {
            q.chunks_mut(stride)
                .zip(sc.chunks_mut(nb))
                .zip(su.chunks_mut(nb))
                .zip(ls.chunks_mut(groups * 16).zip(x.chunks(cols)))
                .for_each(|(((row, sc), su), (ls, xr))| round_row(row, sc, su, ls, xr));
        }
        out
    }

    /// Rows of `x`.
    pub(super) fn rows(&self) -> usize {
        self.scales.len().checked_div(self.nb).unwrap_or(0)
    }

    /// Whether the CPU runs the VNNI kernel.
    pub(super) fn vnni() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The dot products of weight rows `first..first + out.len() / m` with every row of `x` (`m` of
    /// them) into `out` (`[weight rows, m]`), on the VNNI kernel when `vnni` (the caller checked
    /// [`Int8Rows::vnni`]), else on the plain path.
    pub(super) fn dots(&self, q: &QMatrix, first: usize, vnni: bool, out: &mut [f32]) {
        let m = self.rows();
        let count = out.len().checked_div(m).unwrap_or(0);
        assert!(
            q.cols / BLOCK == self.nb && out.len() == count * m && first + count <= q.rows,
            "kernel bounds: weight rows {first}..{} of {q:?} for {m} rows of {} blocks",
            first + count,
            self.nb
        );
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: the caller checked the CPU's features (`vnni`); the bounds were asserted above
            // and `new` sized every array for `rows()` rows of `nb` blocks.
            #[allow(unsafe_code)]
            unsafe {
                vnni::dots(q, first, self, out)
            };
            return;
        }
        let _ = vnni;
        for (j, y) in out.chunks_exact_mut(m.max(1)).enumerate() {
            self.plain_row_dots(q, first + j, y);
        }
    }

    /// The dot products of weight row `r` with every row of `x` (`y`, one per row) in plain Rust:
    /// per block, the integer sum, then its scales and offset.
    fn plain_row_dots(&self, q: &QMatrix, r: usize, y: &mut [f32]) {
        let nb = self.nb;
        let qb = q.format.quant_bytes();
        let quants = &q.quants[r * nb * qb..(r + 1) * nb * qb];
        let dw = &q.scales[r * nb..(r + 1) * nb];
        for (i, out) in y.iter_mut().enumerate() {
            let xq = &self.q[i * self.stride..(i + 1) * self.stride];
            let mut acc = 0f32;
            for (b, qs) in quants.chunks_exact(qb).enumerate() {
                let at = |j: usize| i32::from(xq[position(self.per_group, b, j)]);
                let s: i32 = match q.format {
                    QuantFormat::Q8_0 => (0..BLOCK).map(|j| i32::from(qs[j] as i8) * at(j)).sum(),
                    QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                        (0..16).map(|j| i32::from(qs[j] & 0x0f) * at(j) + i32::from(qs[j] >> 4) * at(j + 16)).sum()
                    }
                };
                acc += dw[b] * self.scales[i * nb + b] * s as f32;
            }
            *out = acc + self.offset(q, r, i, 0.0);
        }
    }

    /// Weight row `r`'s block offsets times row `i`'s block sums (`m` of Q4_1, `−8·dw` of Q4_0),
    /// with `bias` (the unsigned kernel's `+128` on Q8_0 weights) taken off: `−bias·dw` per block.
    #[inline(always)]
    fn offset(&self, q: &QMatrix, r: usize, i: usize, bias: f32) -> f32 {
        let nb = self.nb;
        let sums = &self.sums[i * nb..(i + 1) * nb];
        let dw = &q.scales[r * nb..(r + 1) * nb];
        match q.format {
            QuantFormat::Q4_1 => dot(&q.mins[r * nb..(r + 1) * nb], sums),
            QuantFormat::Q4_0 => -8.0 * dot(dw, sums),
            QuantFormat::Q8_0 => -bias * dot(dw, sums),
        }
    }
}

/// Products over more rows of `x` than this take [`gemm`] (`benches/quant.rs`).
pub(super) const GEMM_MIN_ROWS: usize = 8;

/// Rows of `x` per step of [`gemm`]'s kernel.
const MR: usize = 6;
/// Output columns (weight rows) per panel of [`gemm`]: two vectors of 16.
const NR: usize = 32;

/// `y = x · Wᵀ` over many rows of `x` (prefill) with the activations rounded as [`Int8Rows`] rounds
/// them: a register-blocked product of [`MR`] rows of `x` by [`NR`] weight rows. Each panel of 32
/// weight rows is unpacked once per call to unsigned bytes (nibbles as they are, Q8_0's signed values
/// biased by 128) laid out so that one 64-byte load holds four consecutive values of 16 rows; then for
/// every four values of a row of `x` (one 32-bit broadcast), `vpdpbusd` adds 64 products into 16
/// integer sums per vector. Per block, the sums are scaled (`dw · dx`) and the block's offset added
/// (`c · dx·Σxq`: `m` of Q4_1, `−8·dw` of Q4_0, `−128·dw` for Q8_0's bias). Panels run on rayon's
/// threads. `None` where the CPU lacks AVX-512 VNNI.
pub(super) fn gemm(q: &QMatrix, x: &[f32], m: usize) -> Option<Vec<f32>> {
    let (n, k) = (q.rows, q.cols);
    assert_eq!(x.len(), m * k, "x of [{m}, {k}] for {q:?}");
    if !Int8Rows::vnni() {
        return None;
    }
    if m == 0 || n == 0 || k == 0 {
        return Some(vec![0.0; m * n]);
    }
    // Whole tiles of MR rows: the last one zero-padded (a row of zeros rounds to zeros).
    let m_pad = m.next_multiple_of(MR);
    let acts = Int8Rows::padded(q.format, x, k, m_pad);
    let panel = |p: usize, out: &mut [f32]| {
        let packed = Panel::new(q, p * NR);
        for (t, c) in out.chunks_exact_mut(MR * NR).enumerate() {
            let c: &mut [f32; MR * NR] = c.try_into().expect("MR·NR outputs");
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `vnni()` checked the CPU's features above; the kernel asserts its bounds (rows
            // t·MR..(t + 1)·MR of `acts` exist: m_pad rows).
            #[allow(unsafe_code)]
            unsafe {
                vnni::gemm_tile(&acts, t * MR, &packed, c)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (c, t);
        }
    };
    Some(crate::gemm::by_panels(m, n, NR, m_pad, m * n * k >= 1 << 18, panel))
}

/// [`NR`] weight rows laid out for [`gemm`]: per block, 8 groups of four values (values 4g..4g + 4),
/// each group two vectors (rows 0..16, 16..32) of four unsigned bytes per row: Q4's nibbles
/// unpacked, Q8_0's signed values biased by 128. The rows' scales and offsets per block. Rows past
/// the matrix's last are zeros.
struct Panel {
    /// `[nb][8][2][16]` four-byte groups.
    values: Vec<u32>,
    /// `dw` per block and row, `[nb][NR]`.
    scales: Vec<f32>,
    /// The offset per block and row (`m`, `−8·dw` or `−128·dw`), `[nb][NR]`.
    offsets: Vec<f32>,
}

impl Panel {
    fn new(q: &QMatrix, first: usize) -> Self {
        let nb = q.cols / BLOCK;
        let qb = q.format.quant_bytes();
        let mut panel = Self { values: vec![0; nb * 8 * NR], scales: vec![0.0; nb * NR], offsets: vec![0.0; nb * NR] };
        for c in 0..NR.min(q.rows - first) {
            let r = first + c;
            let quants = &q.quants[r * nb * qb..(r + 1) * nb * qb];
            for (b, qs) in quants.chunks_exact(qb).enumerate() {
                let d = q.scales[r * nb + b];
                panel.scales[b * NR + c] = d;
                panel.offsets[b * NR + c] = match q.format {
                    QuantFormat::Q4_1 => q.mins[r * nb + b],
                    QuantFormat::Q4_0 => -8.0 * d,
                    QuantFormat::Q8_0 => -128.0 * d,
                };
                let mut put = |g: usize, v: u32| panel.values[((b * 8 + g) * 2 + c / 16) * 16 + c % 16] = v;
                for (g, four) in qs.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
                    if q.format == QuantFormat::Q8_0 {
                        put(g, v ^ 0x8080_8080);
                    } else {
                        put(g, v & 0x0f0f_0f0f);
                        put(g + 4, (v >> 4) & 0x0f0f_0f0f);
                    }
                }
            }
        }
        panel
    }
}

/// A block of 32 activations as `d · r`: `d = max|x| / 127`, `r` the nearest integers to `x / d`
/// (ties to even; zeros when `d` is 0). A block holding a NaN or an infinity gets `d = NaN`, so that
/// every product over it is NaN, as in f32, and the engine's check of the logits sees it.
fn round_block(block: &[f32; BLOCK]) -> (f32, [i8; BLOCK]) {
    let amax = block.iter().fold(0f32, |a, &v| if v.abs() > a || v.is_nan() { v.abs() } else { a });
    let mut r = [0i8; BLOCK];
    if !amax.is_finite() {
        return (f32::NAN, r);
    }
    let d = amax / 127.0;
    if d > 0.0 {
        // Adding and taking off 1.5·2²³ rounds an f32 of magnitude below 2²² to the nearest
        // integer, ties to even (as `round_ties_even`, which is a call into libm on the baseline
        // target); |x / d| ≤ 127 up to rounding, and the clamp keeps a rounding up in range.
        const ROUND: f32 = 12_582_912.0;
        let inv = 1.0 / d;
        for (o, &v) in r.iter_mut().zip(block) {
            *o = ((v * inv + ROUND) - ROUND).clamp(-127.0, 127.0) as i32 as i8;
        }
    }
    (d, r)
}

/// Where value `j` of block `b` sits in a row of [`Int8Rows`]'s values laid out in groups of
/// `per_group` blocks: for Q8_0 (2) where it is; for a Q4 format (4), values 0..16 of the four blocks,
/// then values 16..32 of the four.
fn position(per_group: usize, b: usize, j: usize) -> usize {
    if per_group == GROUP_Q8 / BLOCK {
        b * BLOCK + j
    } else {
        (b / 4) * GROUP_Q4 + (j / 16) * 64 + (b % 4) * 16 + j % 16
    }
}

/// The AVX-512 VNNI kernel: per group of 64 weight bytes, `vpdpbusd` against the activations of
/// four rows of `x` at a time, the 16 integer sums converted and scaled per lane.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP_Q4, GROUP_Q8, Int8Rows, MR, NR, Panel, QMatrix, QuantFormat};

    const Q4: bool = false;
    const Q8: bool = true;

    /// [`super::round_block`] with AVX-512: the same values (`vcvtps2dq` rounds to nearest, ties to
    /// even, under the default rounding mode).
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_block(block: &[f32; BLOCK]) -> (f32, [i8; BLOCK]) {
        let mut r = [0i8; BLOCK];
        // SAFETY: 32 values are read from `block` and 32 bytes written to `r`.
        unsafe {
            let p = block.as_ptr();
            let (a, b) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let (aa, ab) = (_mm512_abs_ps(a), _mm512_abs_ps(b));
            // Not below infinity, or unordered: an infinity or a NaN.
            let inf = _mm512_set1_ps(f32::INFINITY);
            let bad = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(aa, inf) | _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(ab, inf);
            if bad != 0 {
                return (f32::NAN, r);
            }
            let d = _mm512_reduce_max_ps(_mm512_max_ps(aa, ab)) / 127.0;
            if d > 0.0 {
                let inv = _mm512_set1_ps(1.0 / d);
                let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
                let round =
                    |v: __m512| _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), lo), hi);
                let out = r.as_mut_ptr();
                _mm_storeu_si128(out.cast(), _mm512_cvtepi32_epi8(round(a)));
                _mm_storeu_si128(out.add(16).cast(), _mm512_cvtepi32_epi8(round(b)));
            }
            (d, r)
        }
    }

    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI; `x` rounded for `q`'s format and blocks; `out` is
    /// `[count, x.rows()]` with `first + count <= q.rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dots(q: &QMatrix, first: usize, x: &Int8Rows, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match q.format {
                QuantFormat::Q8_0 => weight_rows::<Q8>(q, first, x, out),
                QuantFormat::Q4_0 | QuantFormat::Q4_1 => weight_rows::<Q4>(q, first, x, out),
            }
        }
    }

    /// Weight rows in tiles of four (up to three rows of `x`: decoding a few sequences has too few
    /// rows of `x` to hide the latency of one weight row's chain of products) or two (four rows of
    /// `x` and more), then one at a time.
    #[inline(always)]
    unsafe fn weight_rows<const F: bool>(q: &QMatrix, first: usize, x: &Int8Rows, out: &mut [f32]) {
        let m = x.rows();
        let count = out.len() / m;
        let mut j = 0;
        // SAFETY: each call reads weight rows first + j.. first + j + R < first + count (caller).
        unsafe {
            if m < 4 {
                while j + 4 <= count {
                    x_rows::<4, F>(q, first, j, x, out);
                    j += 4;
                }
            } else {
                while j + 2 <= count {
                    x_rows::<2, F>(q, first, j, x, out);
                    j += 2;
                }
            }
            while j < count {
                x_rows::<1, F>(q, first, j, x, out);
                j += 1;
            }
        }
    }

    /// Weight rows `first + j..first + j + R` with the rows of `x`, four at a time, then the
    /// remaining one to three.
    #[inline(always)]
    unsafe fn x_rows<const R: usize, const F: bool>(
        q: &QMatrix,
        first: usize,
        j: usize,
        x: &Int8Rows,
        out: &mut [f32],
    ) {
        let m = x.rows();
        let mut i = 0;
        // SAFETY: each tile reads rows i..i + N < m of x (and the caller's weight rows).
        unsafe {
            while i + 4 <= m {
                tile::<R, 4, F>(q, first, j, x, i, out);
                i += 4;
            }
            match m - i {
                3 => tile::<R, 3, F>(q, first, j, x, i, out),
                2 => tile::<R, 2, F>(q, first, j, x, i, out),
                1 => tile::<R, 1, F>(q, first, j, x, i, out),
                _ => {}
            }
        }
    }

    /// The `R × N` dot products of weight rows `first + j..` with rows `i0..i0 + N` of `x`, into
    /// `out[(j + ·) · m + i0 + ·]`.
    #[inline(always)]
    unsafe fn tile<const R: usize, const N: usize, const F: bool>(
        q: &QMatrix,
        first: usize,
        j: usize,
        x: &Int8Rows,
        i0: usize,
        out: &mut [f32],
    ) {
        let (nb, per, m) = (x.nb, x.per_group, x.rows());
        let groups = nb.div_ceil(per);
        let group_values = if F == Q8 { GROUP_Q8 } else { GROUP_Q4 };
        let qb = if F == Q8 { BLOCK } else { BLOCK / 2 };
        let r0 = first + j;
        // SAFETY: weight rows r0..r0 + R and rows i0..i0 + N of x are in bounds (callers). Group g
        // reads 64 weight bytes at g·64 of a weight row's quants (the last group masked to the blocks
        // the row has) and `per` scales at g·per (masked likewise); of x, `group_values` bytes at
        // g·group_values of each row (rows are padded to whole groups) and 16 lane scales at g·16.
        unsafe {
            // Lane → block of the group: lanes 4k..4k+4 (Q4) or 8k..8k+8 (Q8_0) sum block k.
            let lane_block = if F == Q8 {
                _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
            } else {
                _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
            };
            let wq: [*const u8; R] = std::array::from_fn(|k| q.quants.as_ptr().add((r0 + k) * nb * qb));
            let dw: [*const f32; R] = std::array::from_fn(|k| q.scales.as_ptr().add((r0 + k) * nb));
            let xs: [*const i8; N] = std::array::from_fn(|k| x.q.as_ptr().add((i0 + k) * x.stride));
            let ls: [*const f32; N] = std::array::from_fn(|k| x.lane_scales.as_ptr().add((i0 + k) * groups * 16));
            let nibbles = _mm512_set1_epi8(0x0f);
            let bias = _mm512_set1_epi8(-128);
            let mut total = [[_mm512_setzero_ps(); N]; R];
            for g in 0..groups {
                let blocks = (nb - g * per).min(per);
                let wbytes = if blocks == per { u64::MAX } else { (1u64 << (blocks * qb)) - 1 };
                let wmask = (1u16 << blocks) - 1;
                for (t, (&wp, &dp)) in total.iter_mut().zip(wq.iter().zip(&dw)) {
                    let v = _mm512_maskz_loadu_epi8(wbytes, wp.add(g * 64).cast());
                    let d = _mm512_permutexvar_ps(lane_block, _mm512_maskz_loadu_ps(wmask, dp.add(g * per)));
                    let (w0, w1) = if F == Q8 {
                        (_mm512_xor_si512(v, bias), _mm512_setzero_si512())
                    } else {
                        (_mm512_and_si512(v, nibbles), _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibbles))
                    };
                    for k in 0..N {
                        let p = xs[k].add(g * group_values);
                        let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(p.cast()));
                        if F == Q4 {
                            s = _mm512_dpbusd_epi32(s, w1, _mm512_loadu_si512(p.add(64).cast()));
                        }
                        let scale = _mm512_mul_ps(d, _mm512_loadu_ps(ls[k].add(g * 16)));
                        t[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, t[k]);
                    }
                }
            }
            let bias = if F == Q8 { 128.0 } else { 0.0 };
            for (rk, t) in total.iter().enumerate() {
                for (k, &v) in t.iter().enumerate() {
                    out[(j + rk) * m + i0 + k] = _mm512_reduce_add_ps(v) + x.offset(q, r0 + rk, i0 + k, bias);
                }
            }
        }
    }

    /// [`super::gemm`]'s step: rows `i0..i0 + MR` of `x` by the panel's 32 weight rows into `c`
    /// (`[MR][NR]`).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn gemm_tile(x: &Int8Rows, i0: usize, panel: &Panel, c: &mut [f32; MR * NR]) {
        let nb = x.nb;
        assert!(
            x.rows() >= i0 + MR
                && panel.values.len() == nb * 8 * NR
                && panel.scales.len() == nb * NR
                && panel.offsets.len() == nb * NR,
            "kernel bounds"
        );
        // SAFETY: row i of x holds `x.stride` bytes and `nb` scales and sums, block b's 32 values at
        // the positions `position` gives (four consecutive values stay consecutive); the panel holds
        // 8 groups of 32 four-byte values and 32 scales and offsets per block (asserted above).
        unsafe {
            let xs: [*const i8; MR] = std::array::from_fn(|i| x.q.as_ptr().add((i0 + i) * x.stride));
            let dx: [*const f32; MR] = std::array::from_fn(|i| x.scales.as_ptr().add((i0 + i) * nb));
            let sx: [*const f32; MR] = std::array::from_fn(|i| x.sums.as_ptr().add((i0 + i) * nb));
            let (wp, dp, op) = (panel.values.as_ptr(), panel.scales.as_ptr(), panel.offsets.as_ptr());
            let mut total = [[_mm512_setzero_ps(); 2]; MR];
            for b in 0..nb {
                let mut sums = [[_mm512_setzero_si512(); 2]; MR];
                let pb = wp.add(b * 8 * NR);
                for g in 0..8 {
                    let at = super::position(x.per_group, b, 4 * g);
                    let w = [_mm512_loadu_si512(pb.add(g * NR).cast()), _mm512_loadu_si512(pb.add(g * NR + 16).cast())];
                    for (s, &xp) in sums.iter_mut().zip(&xs) {
                        let v = _mm512_set1_epi32(xp.add(at).cast::<i32>().read_unaligned());
                        s[0] = _mm512_dpbusd_epi32(s[0], w[0], v);
                        s[1] = _mm512_dpbusd_epi32(s[1], w[1], v);
                    }
                }
                let d = [_mm512_loadu_ps(dp.add(b * NR)), _mm512_loadu_ps(dp.add(b * NR + 16))];
                let o = [_mm512_loadu_ps(op.add(b * NR)), _mm512_loadu_ps(op.add(b * NR + 16))];
                for i in 0..MR {
                    let dxi = _mm512_set1_ps(*dx[i].add(b));
                    let sxi = _mm512_set1_ps(*sx[i].add(b));
                    for h in 0..2 {
                        let scaled =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[i][h]), _mm512_mul_ps(d[h], dxi), total[i][h]);
                        total[i][h] = _mm512_fmadd_ps(o[h], sxi, scaled);
                    }
                }
            }
            let cp = c.as_mut_ptr();
            for (i, t) in total.iter().enumerate() {
                _mm512_storeu_ps(cp.add(i * NR), t[0]);
                _mm512_storeu_ps(cp.add(i * NR + 16), t[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{FORMATS, random_ggml, xs};
    use super::super::{QMatrix, QuantFormat, reference};
    use super::*;

    /// Each output within f32 rounding of the reference's f64 sum: `4·(cols + 32)·ε` times the sum of
    /// the magnitudes of the terms (for Q8_0 on the VNNI kernel, the +128 bias's too).
    fn assert_close(q: &QMatrix, x: &[f32], m: usize, y: &[f32], what: &str) {
        let want = reference::matmul_int8(q, x, m);
        let (rows, cols) = (q.rows(), q.cols());
        let w = q.dequantize();
        assert_eq!(y.len(), want.len(), "{what}");
        for i in 0..m {
            for r in 0..rows {
                let mut mag = 0f64;
                for k in 0..cols {
                    let (xv, wv) = (f64::from(x[i * cols + k]).abs(), f64::from(w[r * cols + k]).abs());
                    let dw = f64::from(q.scales[r * cols / BLOCK + k / BLOCK]).abs();
                    mag += xv * (wv + 128.0 * dw);
                }
                let tol = 4.0 * (cols + BLOCK) as f64 * f64::from(f32::EPSILON) * mag + 1e-30;
                let (got, exp) = (f64::from(y[i * rows + r]), want[i * rows + r]);
                assert!((got - exp).abs() <= tol, "{what}: y[{i}, {r}] = {got}, reference {exp}, tolerance {tol}");
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_on_whole_and_partial_groups() {
        let mut kernels = vec![false];
        if Int8Rows::vnni() {
            kernels.push(true);
        }
        for format in FORMATS {
            // 3, 8 and 9 blocks: a partial group only, whole groups, whole groups and one block.
            for cols in [96, 256, 288] {
                let rows = 13;
                let q =
                    QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 7), "w").expect("valid");
                for m in [1, 2, 3, 4, 5, 7, 9] {
                    let mut x = xs(m, cols, 40 + m as u64);
                    x[cols / 2] = 0.0;
                    if m > 1 {
                        x[cols..cols + BLOCK].fill(0.0); // a block of zeros: dx = 0
                    }
                    let acts = Int8Rows::new(format, &x, cols);
                    for &vnni in &kernels {
                        // All weight rows in one call, and in two (5 rows: a tile and a tail).
                        for split in [0, 5] {
                            let mut yt = vec![0f32; rows * m];
                            let (head, tail) = yt.split_at_mut(split * m);
                            acts.dots(&q, 0, vnni, head);
                            acts.dots(&q, split, vnni, tail);
                            let mut y = vec![0f32; m * rows];
                            for (r, col) in yt.chunks_exact(m).enumerate() {
                                for (i, v) in col.iter().enumerate() {
                                    y[i * rows + r] = *v;
                                }
                            }
                            let what = format!("{format} cols {cols} m {m} vnni {vnni} split {split}");
                            assert_close(&q, &x, m, &y, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn large_products_split_over_threads_match_the_reference() {
        let (rows, cols) = (700, 1024);
        for format in FORMATS {
            let q = QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 5), "w").expect("valid");
            for m in [1, 6, 40] {
                let x = xs(m, cols, 3 + m as u64);
                assert_close(&q, &x, m, &q.matmul_int8(&x, m), &format!("{format} m {m}"));
            }
        }
    }

    #[test]
    fn the_gemm_matches_the_reference_on_ragged_shapes() {
        if !Int8Rows::vnni() {
            return; // the gemm needs AVX-512 VNNI; `matmul_int8` takes the row kernel elsewhere
        }
        for format in FORMATS {
            // Rows past a panel of 32, partial Q4 groups (3, 9 blocks), rows of x past a tile of 6 (and
            // enough of them, 67 and 130, that the rounding runs on rayon's threads).
            for (rows, cols) in [(37, 96), (70, 288), (32, 256)] {
                let q =
                    QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 4), "w").expect("valid");
                for m in [1, 6, 9, 13, 40, 67, 130] {
                    let mut x = xs(m, cols, 70 + m as u64);
                    x[..BLOCK].fill(0.0);
                    let y = gemm(&q, &x, m).expect("VNNI");
                    assert_close(&q, &x, m, &y, &format!("gemm {format} [{rows}, {cols}] m {m}"));
                }
            }
        }
    }

    /// The rounding moves each activation by at most half its block's step, so the product moves by at
    /// most `Σ |w|·dx/2` from the one on f32 activations.
    #[test]
    fn rounded_activations_stay_within_half_a_step_of_the_exact_product() {
        let (rows, cols, m) = (64, 576, 3);
        for format in FORMATS {
            let q = QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 8), "w").expect("valid");
            let x = xs(m, cols, 21);
            let (exact, y, w) = (reference::matmul(&q, &x, m), q.matmul_int8(&x, m), q.dequantize());
            for i in 0..m {
                for r in 0..rows {
                    let bound: f64 = (0..cols)
                        .map(|k| {
                            let block = &x[i * cols + k / BLOCK * BLOCK..][..BLOCK];
                            let dx = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                            f64::from(w[r * cols + k].abs()) * f64::from(dx) / 2.0
                        })
                        .sum();
                    let got = f64::from(y[i * rows + r]);
                    let err = (got - exact[i * rows + r]).abs();
                    assert!(err <= bound * 1.001 + 1e-6, "{format} y[{i}, {r}]: off by {err}, bound {bound}");
                }
            }
        }
    }

    /// The AVX-512 rounding gives the plain one's scale and values, ties included.
    #[test]
    fn simd_rounding_equals_the_plain_rounding() {
        if !Int8Rows::vnni() {
            return;
        }
        let mut blocks: Vec<[f32; BLOCK]> =
            xs(40, BLOCK, 9).chunks_exact(BLOCK).map(|b| b.try_into().expect("32")).collect();
        // Ties: max 127 → d = 1, values k + 0.5 round to even.
        blocks.push(std::array::from_fn(|j| if j == 0 { 127.0 } else { j as f32 - 15.5 }));
        blocks.push([0.0; BLOCK]);
        blocks.push(std::array::from_fn(|j| if j == 3 { f32::NEG_INFINITY } else { 1.0 }));
        for block in &blocks {
            #[allow(unsafe_code)]
            // SAFETY: `vnni()` found AVX-512F and BW.
            let (d, r) = unsafe { vnni::round_block(block) };
            let (pd, pr) = round_block(block);
            assert!(d == pd || (d.is_nan() && pd.is_nan()), "{d} {pd}");
            assert_eq!(r, pr, "{block:?}");
        }
    }

    /// A NaN or an infinity in a row of `x` makes that row's products NaN on every path (as in f32,
    /// so that the engine sees it in the logits), and leaves the other rows alone.
    #[test]
    fn non_finite_activations_give_nan_rows() {
        for format in FORMATS {
            let (rows, cols) = (40, 96);
            let q = QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 2), "w").expect("valid");
            for m in [3, 12] {
                let mut x = xs(m, cols, 5);
                x[cols + 40] = f32::NAN;
                x[2 * cols + 7] = f32::INFINITY;
                let y = q.matmul_int8(&x, m);
                for i in 0..m {
                    let row = &y[i * rows..(i + 1) * rows];
                    match i {
                        1 | 2 => assert!(row.iter().all(|v| v.is_nan()), "{format} m {m}: row {i} {row:?}"),
                        _ => assert!(row.iter().all(|v| v.is_finite()), "{format} m {m}: row {i}"),
                    }
                }
                let acts = Int8Rows::new(format, &x, cols);
                let mut yt = vec![0f32; rows * m];
                acts.dots(&q, 0, false, &mut yt);
                assert!(yt.chunks_exact(m).all(|col| col[1].is_nan() && col[2].is_nan() && col[0].is_finite()));
            }
        }
    }

    #[test]
    fn empty_products() {
        let q = QMatrix::from_ggml(QuantFormat::Q4_1, 3, 0, &[], "w").expect("no columns");
        assert_eq!(q.matmul_int8(&[], 2), vec![0.0; 6]);
        let q = QMatrix::from_ggml(QuantFormat::Q8_0, 0, 32, &[], "w").expect("no rows");
        assert!(q.matmul_int8(&[0.0; 64], 2).is_empty());
    }
}
