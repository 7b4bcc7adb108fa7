//! Weight matrices kept quantized in memory, in GGML's blocks of 32 values (`Q4_0`, `Q4_1`, `Q8_0`, as
//! GGUF files store them), and the matrix product that reads them: `y = x · Wᵀ` for activations `x` in
//! f32.
//!
//! A decoding step reads every weight once; kept as 4-bit blocks, SmolLM2-135M is about 0.1 GB to read
//! per step instead of 0.54 GB in f32. For a few rows of `x` (up to 32: decoding) the AVX2 + FMA
//! kernel never forms the f32 weights: per block it converts the quantized values to f32, takes
//! `d · Σ q·x` with fused multiply-adds, and adds the block's offset (`m` of Q4_1, `−8·d` of Q4_0) times
//! the block's sum of `x`, computed once per call; four rows of `x` share each pass over the weights.
//! Output rows are split over rayon's threads. AVX2 and FMA are detected at run time (a build for the
//! baseline target still uses them), AVX-512F too (the same kernel on vectors of 16); other CPUs take a
//! plain path: each weight row dequantised, then f32 dot products. Products over many rows (prefill)
//! are better served by dequantising and a blocked gemm ([`QMatrix::matmul`]).
//!
//! [`QMatrix::matmul`] keeps the activations in f32, so the quantized model computes what the
//! dequantised one computes up to f32 rounding: [`reference::matmul`] (the plain product in f64) is
//! what every path is tested against, and SmolLM2 kept quantized stays within 5e-3 of transformers'
//! logits. [`QMatrix::matmul_int8`] rounds them to 8 bits per block as llama.cpp does and sums integer
//! products (AVX-512 VNNI; [`int8`]): 1.2–1.8× faster at one row, each activation moved by up to half
//! its block's step ([`reference::matmul_int8`] is what it is tested against).

use std::fmt;

use half::f16;
use rayon::prelude::*;

use crate::CoreError;
use crate::cpu::Kernel;

pub mod int8;

/// Values per block, in every supported format.
pub const BLOCK: usize = 32;

/// Products of fewer multiply-adds than this run on the calling thread: splitting them over threads
/// costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// A block format of GGML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuantFormat {
    /// `d · (q − 8)`, `q` 4 bits; 18 bytes per block (f16 `d`, 16 bytes of nibbles).
    Q4_0,
    /// `d · q + m`, `q` 4 bits; 20 bytes per block (f16 `d`, f16 `m`, 16 bytes of nibbles).
    Q4_1,
    /// `d · q`, `q` a signed byte; 34 bytes per block (f16 `d`, 32 bytes).
    Q8_0,
}

impl QuantFormat {
    /// Bytes of one block as GGML stores it.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of quantized values in one block (what [`QMatrix`] keeps besides the scales).
    fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        })
    }
}

/// A `[rows, cols]` matrix (row-major, a weight `[d_out, d_in]` in PyTorch's layout) kept in blocks of
/// [`BLOCK`] values along its rows.
///
/// The f16 scales of GGML's blocks are widened to f32 once, at construction (exactly: every f16 is an
/// f32), and kept apart from the quantized values, so the product never converts them again.
#[derive(Clone)]
pub struct QMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// `d` of every block, `[rows, cols / 32]`.
    scales: Vec<f32>,
    /// `m` of every block for `Q4_1`; empty for the other formats.
    mins: Vec<f32>,
    /// The quantized values of every block, [`QuantFormat::quant_bytes`] each: nibbles in GGML's order
    /// (low nibbles are values 0..16 of the block, high nibbles 16..32) or signed bytes.
    quants: Vec<u8>,
}

impl fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QMatrix")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl QMatrix {
    /// A matrix from GGML's bytes: `rows · cols / 32` blocks, row after row. `what` names the tensor
    /// in errors. Fails if `cols` is not a multiple of 32, the bytes are not exactly that many blocks,
    /// or a scale is not finite.
    pub fn from_ggml(format: QuantFormat, rows: usize, cols: usize, raw: &[u8], what: &str) -> Result<Self, CoreError> {
        let shape_error = |expected: String| CoreError::Shape {
            what: format!("{format} tensor {what}"),
            expected,
            got: format!("[{rows}, {cols}] in {} bytes", raw.len()),
        };
        if !cols.is_multiple_of(BLOCK) {
            return Err(shape_error(format!("a row length that is a multiple of {BLOCK}")));
        }
        let blocks = rows.checked_mul(cols / BLOCK).ok_or_else(|| shape_error("a size that fits memory".into()))?;
        let bytes = blocks.checked_mul(format.block_bytes());
        if bytes != Some(raw.len()) {
            return Err(shape_error(format!("{blocks} blocks of {} bytes", format.block_bytes())));
        }
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut scales = Vec::with_capacity(blocks);
        let mut mins = Vec::with_capacity(if format == QuantFormat::Q4_1 { blocks } else { 0 });
        let mut quants = Vec::with_capacity(blocks * format.quant_bytes());
        for block in raw.chunks_exact(format.block_bytes()) {
            scales.push(half(&block[..2]));
            if format == QuantFormat::Q4_1 {
                mins.push(half(&block[2..4]));
            }
            quants.extend_from_slice(&block[format.block_bytes() - format.quant_bytes()..]);
        }
        if scales.iter().chain(&mins).any(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite { what: format!("{format} tensor {what}") });
        }
        Ok(Self { format, rows, cols, scales, mins, quants })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Rows (`d_out` of a weight).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`d_in` of a weight).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        (self.scales.len() + self.mins.len()) * 4 + self.quants.len()
    }

    /// The matrix with its rows reordered: row `i` of the result is row `order[i]` of `self`.
    ///
    /// # Panics
    /// If `order` is not as long as the matrix has rows or names a row it does not have.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        assert_eq!(order.len(), self.rows, "a row order for every row");
        let nb = self.cols / BLOCK;
        let qb = self.format.quant_bytes();
        let take =
            |v: &[f32], per: usize| order.iter().flat_map(|&r| v[r * per..(r + 1) * per].iter().copied()).collect();
        let quants = order.iter().flat_map(|&r| self.quants[r * nb * qb..(r + 1) * nb * qb].iter().copied()).collect();
        Self {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            scales: take(&self.scales, nb),
            mins: if self.mins.is_empty() { Vec::new() } else { take(&self.mins, nb) },
            quants,
        }
    }

    /// Row `r` in f32, into `out` (`cols` long), with the arithmetic of GGML's reference dequantisation
    /// (`d·(q − 8)`, `d·q + m`, `d·q`).
    ///
    /// # Panics
    /// If `r` is out of range or `out` is not `cols` long.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {self:?} into {} values", out.len());
        dequantize_row(self, r, out);
    }

    /// The whole matrix in f32, `[rows, cols]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            out.par_chunks_mut(self.cols).enumerate().for_each(|(r, row)| dequantize_row(self, r, row));
        }
        out
    }

    /// `y = x · Wᵀ` for many rows of `x` (prefill): [`crate::gemm::matmul_panels`], each panel of 32
    /// weight rows dequantised once per call. `None` where the CPU lacks AVX-512F.
    ///
    /// # Panics
    /// If `x` is not `m · cols` long.
    pub fn matmul_dequantized(&self, x: &[f32], m: usize) -> Option<Vec<f32>> {
        assert_eq!(x.len(), m * self.cols, "x of [{m}, {}] for {self:?}", self.cols);
        crate::gemm::matmul_panels(x, m, self.cols, self.rows, |r, out| dequantize_row(self, r, out))
    }

    /// `y = x · Wᵀ`: `x` is `[m, cols]` row-major, the result `[m, rows]`.
    ///
    /// Made for a few rows of `x` (decoding): it reads the weights once, and its cost grows with `m`
    /// as a dot product's does. For many rows (prefill), dequantising the matrix and calling a
    /// blocked gemm is faster (`benches/quant.rs`: from about 32 rows on SmolLM2's shapes), which is
    /// what `ramole_models::linear::LinearWeight` does.
    ///
    /// # Panics
    /// If `x` is not `m · cols` long.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "x of [{m}, {}] for {self:?}", self.cols);
        let kernel = Kernel::detect();
        let acts = Activations::new(x);
        self.product(m, |first, out, w| {
            w.resize(self.cols, 0.0);
            for (j, y) in out.chunks_exact_mut(m).enumerate() {
                kernel.row_dots(self, first + j, &acts, w, y);
            }
        })
    }

    /// `y = x · Wᵀ` with the activations rounded to 8 bits per block of 32 (`dx · xq`,
    /// `dx = max|x| / 127`), as llama.cpp multiplies its quantized weights: integer sums of products
    /// ([`int8`]'s module docs). Faster than [`QMatrix::matmul`] where the CPU has AVX-512 VNNI
    /// ([`QMatrix::int8_kernel`]); elsewhere a plain path computes the same. The result is the product
    /// of the dequantised weights with the rounded activations ([`reference::matmul_int8`]): the
    /// rounding moves each activation by up to `dx / 2`.
    ///
    /// # Panics
    /// If `x` is not `m · cols` long.
    pub fn matmul_int8(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "x of [{m}, {}] for {self:?}", self.cols);
        if m > int8::GEMM_MIN_ROWS
            && let Some(y) = int8::gemm(self, x, m)
        {
            return y;
        }
        let vnni = Self::int8_kernel();
        let acts = int8::Int8Rows::new(self.format, x, self.cols);
        self.product(m, |first, out, _| acts.dots(self, first, vnni, out))
    }

    /// Whether [`QMatrix::matmul_int8`] runs its SIMD kernel here (x86-64 with AVX-512 VNNI).
    pub fn int8_kernel() -> bool {
        int8::Int8Rows::vnni()
    }

    /// The `[m, rows]` product, computed transposed (`[rows, m]`) by `dots(first, out, scratch)`, which
    /// writes the dot products of weight rows `first..first + out.len() / m` with the `m` rows of `x`
    /// into `out`: the weights are read once, the weight rows split over rayon's threads when the
    /// product is large.
    fn product(&self, m: usize, dots: impl Fn(usize, &mut [f32], &mut Vec<f32>) + Sync) -> Vec<f32> {
        if m == 0 || self.rows == 0 {
            return Vec::new();
        }
        if self.cols == 0 {
            return vec![0.0; m * self.rows];
        }
        let mut yt = vec![0f32; self.rows * m];
        if self.rows * self.cols * m < PARALLEL_MIN_WORK {
            dots(0, &mut yt, &mut Vec::new());
        } else {
            let per_task = (65_536 / self.cols).clamp(1, 256);
            yt.par_chunks_mut(per_task * m)
                .enumerate()
                .for_each_init(Vec::new, |w, (t, out)| dots(t * per_task, out, w));
        }
        if m == 1 {
            return yt;
        }
        let mut y = vec![0f32; m * self.rows];
        for (r, col) in yt.chunks_exact(m).enumerate() {
            for (i, v) in col.iter().enumerate() {
                y[i * self.rows + r] = *v;
            }
        }
        y
    }
}

/// The rows of `x` as the kernels read them: in f32, with the sum of every block of 32 (for the
/// blocks' offsets, `m` of Q4_1 and `−8·d` of Q4_0, applied once per block instead of per value).
struct Activations<'a> {
    x: &'a [f32],
    /// Σ of every block, `[rows, cols / 32]`.
    sums: Vec<f32>,
}

impl<'a> Activations<'a> {
    fn new(x: &'a [f32]) -> Self {
        Self { x, sums: x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect() }
    }
}

impl Kernel {
    /// The dot products of weight row `r` with every row of the activations (`[y.len(), cols]`) into
    /// `y`; `w` is scratch of `cols` values.
    fn row_dots(self, q: &QMatrix, r: usize, acts: &Activations<'_>, w: &mut [f32], y: &mut [f32]) {
        match self {
            Self::Plain => {
                assert!(r < q.rows && w.len() == q.cols && acts.x.len() == y.len() * q.cols, "kernel bounds");
                dequantize_row(q, r, w);
                for (xr, o) in acts.x.chunks_exact(q.cols.max(1)).zip(y.iter_mut()) {
                    *o = xr.iter().zip(w.iter()).map(|(a, b)| a * b).sum();
                }
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 | Self::Avx512 => {
                let nb = q.cols / BLOCK;
                let rows = y.len();
                assert!(r < q.rows && acts.x.len() == rows * q.cols && acts.sums.len() == rows * nb, "kernel bounds");
                // SAFETY: `detect` chose this kernel because the CPU has AVX2 and FMA (and AVX-512F for
                // `Avx512`); the bounds were asserted just above.
                #[allow(unsafe_code)]
                unsafe {
                    match self {
                        Self::Avx512 => avx512::fused_row(q, r, acts.x, &acts.sums, y),
                        _ => avx2::fused_row(q, r, acts.x, &acts.sums, y),
                    }
                }
            }
        }
    }
}

/// The offsets of weight row `r`'s blocks times the sums of a row of `x` over them (`sums`, one per
/// block): `Σ m·s` for Q4_1, `−8·Σ d·s` for Q4_0, nothing for Q8_0. Inlined into the SIMD kernels, so
/// it compiles for their features.
#[inline(always)]
fn offset(q: &QMatrix, r: usize, sums: &[f32]) -> f32 {
    let nb = q.cols / BLOCK;
    match q.format {
        QuantFormat::Q4_1 => dot(&q.mins[r * nb..(r + 1) * nb], sums),
        QuantFormat::Q4_0 => -8.0 * dot(&q.scales[r * nb..(r + 1) * nb], sums),
        QuantFormat::Q8_0 => 0.0,
    }
}

/// `Σ a·b` over eight lane-wise partial sums (so it vectorises; a single running sum cannot be
/// reordered by the compiler).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0f32; 8];
    for (x, y) in ac.zip(bc) {
        for ((s, &xv), &yv) in acc.iter_mut().zip(x).zip(y) {
            *s += xv * yv;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A SIMD module's fused product for the target features `$features` and vectors `$v`
/// (`$zero`, `$set1`, `$fmadd`, `$add` their intrinsics; the module defines `unpack::<F>`, a block's
/// values as vectors, `block_dot`, `Σ w·x` over a block as one vector, and `hsum`): `fused_row`
/// dispatches on the format (as a const parameter, so each format gets its own loop) and runs
/// `tile::<N, F>` over the rows of `x` four at a time, then the remaining one to three.
#[cfg(target_arch = "x86_64")]
macro_rules! fused_entry {
    ($features:literal, $v:ty, $zero:ident, $set1:ident, $fmadd:ident, $add:ident) => {
        const Q4_0: u8 = 0;
        const Q4_1: u8 = 1;
        const Q8_0: u8 = 2;

        /// # Safety
        /// The CPU has the module's features; `r < q.rows`, `x.len() == y.len() * q.cols`,
        /// `sums.len() == y.len() * q.cols / 32`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn fused_row(q: &QMatrix, r: usize, x: &[f32], sums: &[f32], y: &mut [f32]) {
            // SAFETY: the caller's guarantees, passed on.
            unsafe {
                match q.format {
                    QuantFormat::Q4_0 => fused_rows::<Q4_0>(q, r, x, sums, y),
                    QuantFormat::Q4_1 => fused_rows::<Q4_1>(q, r, x, sums, y),
                    QuantFormat::Q8_0 => fused_rows::<Q8_0>(q, r, x, sums, y),
                }
            }
        }

        #[inline(always)]
        unsafe fn fused_rows<const F: u8>(q: &QMatrix, r: usize, x: &[f32], sums: &[f32], y: &mut [f32]) {
            let m = y.len();
            let mut i = 0;
            // SAFETY: each tile reads rows i..i + N < m of x and sums, as the caller guarantees.
            unsafe {
                while i + 4 <= m {
                    tile::<4, F>(q, r, x, sums, i, y);
                    i += 4;
                }
                match m - i {
                    3 => tile::<3, F>(q, r, x, sums, i, y),
                    2 => tile::<2, F>(q, r, x, sums, i, y),
                    1 => tile::<1, F>(q, r, x, sums, i, y),
                    _ => {}
                }
            }
        }
        /// The dot products of weight row `r` with rows `i0..i0 + N` of `x` without forming the f32
        /// row: per block, `d · Σ q·x` (the values converted to f32, multiplied by `x` in f32), plus
        /// the blocks' offsets times the blocks' sums of `x` (`offset`).
        #[inline(always)]
        unsafe fn tile<const N: usize, const F: u8>(
            q: &QMatrix,
            r: usize,
            x: &[f32],
            sums: &[f32],
            i0: usize,
            y: &mut [f32],
        ) {
            let cols = q.cols;
            let nb = cols / BLOCK;
            let qb = if F == Q8_0 { 32 } else { 16 };
            let scales = &q.scales[r * nb..(r + 1) * nb];
            let qp = q.quants[r * nb * qb..(r + 1) * nb * qb].as_ptr();
            // SAFETY: rows i0..i0 + N of x are in bounds (caller); block b reads qb bytes at b·qb of
            // the row's quants and 32 values at b·32 of each row of x.
            unsafe {
                let xs: [*const f32; N] = std::array::from_fn(|k| x.as_ptr().add((i0 + k) * cols));
                // Two accumulators per row (even and odd blocks): the sum across blocks is the only
                // dependency carried from block to block.
                let mut total: [[$v; 2]; N] = [[$zero(); 2]; N];
                let mut b = 0;
                while b + 2 <= nb {
                    let w0 = unpack::<F>(qp.add(b * qb));
                    let w1 = unpack::<F>(qp.add((b + 1) * qb));
                    let d0 = $set1(*scales.get_unchecked(b));
                    let d1 = $set1(*scales.get_unchecked(b + 1));
                    for k in 0..N {
                        let p = xs[k].add(b * BLOCK);
                        total[k][0] = $fmadd(d0, block_dot(&w0, p), total[k][0]);
                        total[k][1] = $fmadd(d1, block_dot(&w1, p.add(BLOCK)), total[k][1]);
                    }
                    b += 2;
                }
                if b < nb {
                    let w0 = unpack::<F>(qp.add(b * qb));
                    let d0 = $set1(*scales.get_unchecked(b));
                    for k in 0..N {
                        total[k][0] = $fmadd(d0, block_dot(&w0, xs[k].add(b * BLOCK)), total[k][0]);
                    }
                }
                for (k, t) in total.into_iter().enumerate() {
                    let s = &sums[(i0 + k) * nb..(i0 + k + 1) * nb];
                    y[i0 + k] = hsum($add(t[0], t[1])) + offset(q, r, s);
                }
            }
        }
    };
}

/// The AVX2 + FMA kernel: the fused product of a few rows (`fused_row`), four rows of `x` at a time
/// sharing each pass over a weight row.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, QMatrix, QuantFormat, offset};

    fused_entry!("avx2,fma", __m256, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps);

    /// The 32 quantized values of a block as f32, in four vectors of 8 (values 0..8, 8..16, 16..24,
    /// 24..32).
    #[inline(always)]
    unsafe fn unpack<const F: u8>(base: *const u8) -> [__m256; 4] {
        // SAFETY: the caller passes a block's 16 (Q4) or 32 (Q8) bytes.
        unsafe {
            if F == Q8_0 {
                let a = _mm_loadu_si128(base.cast());
                let c = _mm_loadu_si128(base.add(16).cast());
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(a))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(c))),
                ]
            } else {
                let mask = _mm_set1_epi8(0x0f);
                let v = _mm_loadu_si128(base.cast());
                let lo = _mm_and_si128(v, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo))),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi))),
                ]
            }
        }
    }

    /// `Σ w·x` over one block as a vector of 8 partial sums, as two independent chains.
    #[inline(always)]
    unsafe fn block_dot(w: &[__m256; 4], p: *const f32) -> __m256 {
        // SAFETY: the caller passes 32 readable values.
        unsafe {
            let a = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(p.add(8)), _mm256_mul_ps(w[0], _mm256_loadu_ps(p)));
            let b = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(p.add(24)), _mm256_mul_ps(w[2], _mm256_loadu_ps(p.add(16))));
            _mm256_add_ps(a, b)
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
}

/// The fused product of a few rows with AVX-512F: a block of 32 values is two vectors of 16, so a
/// block takes half the conversions and multiply-adds of the AVX2 kernel (same arithmetic).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, QMatrix, QuantFormat, offset};

    fused_entry!("avx512f,avx2,fma", __m512, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps);

    /// The 32 quantized values of a block as f32: values 0..16 and 16..32.
    #[inline(always)]
    unsafe fn unpack<const F: u8>(base: *const u8) -> [__m512; 2] {
        // SAFETY: the caller passes a block's 16 (Q4) or 32 (Q8) bytes.
        unsafe {
            if F == Q8_0 {
                let a = _mm_loadu_si128(base.cast());
                let c = _mm_loadu_si128(base.add(16).cast());
                [_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c))]
            } else {
                let mask = _mm_set1_epi8(0x0f);
                let v = _mm_loadu_si128(base.cast());
                let lo = _mm_and_si128(v, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
                [_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi))]
            }
        }
    }

    /// `Σ w·x` over one block as a vector of 16 partial sums.
    #[inline(always)]
    unsafe fn block_dot(w: &[__m512; 2], p: *const f32) -> __m512 {
        // SAFETY: the caller passes 32 readable values.
        unsafe { _mm512_fmadd_ps(w[1], _mm512_loadu_ps(p.add(16)), _mm512_mul_ps(w[0], _mm512_loadu_ps(p))) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        // SAFETY: called from the module's kernels, compiled with AVX-512F.
        unsafe { _mm512_reduce_add_ps(v) }
    }
}

/// Row `r` of `q` in f32 into `out` (callers check the bounds).
fn dequantize_row(q: &QMatrix, r: usize, out: &mut [f32]) {
    let nb = q.cols / BLOCK;
    let qb = q.format.quant_bytes();
    let scales = &q.scales[r * nb..(r + 1) * nb];
    let quants = &q.quants[r * nb * qb..(r + 1) * nb * qb];
    let (blocks, _) = out.as_chunks_mut::<BLOCK>();
    match q.format {
        QuantFormat::Q4_0 => {
            for ((o, &d), qs) in blocks.iter_mut().zip(scales).zip(quants.chunks_exact(16)) {
                for i in 0..16 {
                    o[i] = d * (f32::from(qs[i] & 0x0f) - 8.0);
                    o[i + 16] = d * (f32::from(qs[i] >> 4) - 8.0);
                }
            }
        }
        QuantFormat::Q4_1 => {
            let mins = &q.mins[r * nb..(r + 1) * nb];
            for (((o, &d), &m), qs) in blocks.iter_mut().zip(scales).zip(mins).zip(quants.chunks_exact(16)) {
                for i in 0..16 {
                    o[i] = d * f32::from(qs[i] & 0x0f) + m;
                    o[i + 16] = d * f32::from(qs[i] >> 4) + m;
                }
            }
        }
        QuantFormat::Q8_0 => {
            for ((o, &d), qs) in blocks.iter_mut().zip(scales).zip(quants.chunks_exact(32)) {
                for i in 0..32 {
                    o[i] = d * f32::from(qs[i] as i8);
                }
            }
        }
    }
}

/// The plain implementation the fast path is tested against: the whole matrix dequantised, then one
/// sum after the other in f64.
pub mod reference {
    use super::QMatrix;

    /// `y = x · Wᵀ` (`x` `[m, cols]`, result `[m, rows]`), each dot product summed in f64 in column order.
    pub fn matmul(q: &QMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let w = q.dequantize();
        let cols = q.cols();
        let mut y = Vec::with_capacity(m * q.rows());
        for xr in x.chunks_exact(cols.max(1)).take(m) {
            for wr in w.chunks_exact(cols.max(1)).take(q.rows()) {
                y.push(xr.iter().zip(wr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum());
            }
        }
        y
    }

    /// [`QMatrix::matmul_int8`]'s result: each block of 32 values of `x` rounded to `dx · xq`
    /// (`dx = max|x| / 127`, `xq` the nearest integer to `x · (1 / dx)`, ties to even), then
    /// [`matmul`] in f64 on the rounded activations.
    pub fn matmul_int8(q: &QMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let rounded: Vec<f32> = x
            .chunks(super::BLOCK)
            .flat_map(|block| {
                let d = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                block.iter().map(move |&v| if d > 0.0 { d * (v * (1.0 / d)).round_ties_even() } else { 0.0 })
            })
            .collect();
        matmul(q, &rounded, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    /// GGML bytes of `rows × cols` random blocks (scales in [-0.1, 0.1], some negative).
    pub(super) fn random_ggml(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut next = lcg(seed);
        let mut raw = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let scale = |n: u64| f16::from_f32((n % 2001) as f32 / 10_000.0 - 0.1).to_le_bytes();
            raw.extend(scale(next()));
            if format == QuantFormat::Q4_1 {
                raw.extend(scale(next()));
            }
            for _ in 0..format.quant_bytes() {
                raw.push(next() as u8);
            }
        }
        raw
    }

    pub(super) fn xs(m: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut next = lcg(seed);
        (0..m * cols).map(|_| (next() % 20_001) as f32 / 10_000.0 - 1.0).collect()
    }

    pub(super) const FORMATS: [QuantFormat; 3] = [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0];

    #[test]
    fn dequantisation_follows_ggml_block_layout() {
        // One Q4_1 block: d = 0.5, m = -1, nibbles 0x21 → values 1 (low) and 2 (high).
        let mut raw = f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend(f16::from_f32(-1.0).to_le_bytes());
        raw.extend([0x21u8; 16]);
        let q = QMatrix::from_ggml(QuantFormat::Q4_1, 1, 32, &raw, "t").expect("one block");
        let w = q.dequantize();
        assert_eq!(&w[..16], &[0.5 * 1.0 - 1.0; 16]);
        assert_eq!(&w[16..], &[0.5 * 2.0 - 1.0; 16]);
        // Q4_0: d · (q − 8); Q8_0: d · signed byte.
        let mut raw = f16::from_f32(2.0).to_le_bytes().to_vec();
        raw.extend([0xf0u8; 16]);
        let w = QMatrix::from_ggml(QuantFormat::Q4_0, 1, 32, &raw, "t").expect("one block").dequantize();
        assert_eq!((w[0], w[16]), (-16.0, 14.0));
        let mut raw = f16::from_f32(0.25).to_le_bytes().to_vec();
        raw.extend((0..32).map(|i: i8| (i - 16) as u8));
        let w = QMatrix::from_ggml(QuantFormat::Q8_0, 1, 32, &raw, "t").expect("one block").dequantize();
        assert_eq!((w[0], w[31]), (-4.0, 3.75));
    }

    #[test]
    fn product_matches_the_reference_for_every_kernel_and_row_count() {
        for format in FORMATS {
            let (rows, cols) = (37, 96);
            let q = QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 3), "w").expect("valid");
            for m in [1, 2, 3, 4, 5, 8, 9] {
                let x = xs(m, cols, m as u64);
                let want = reference::matmul(&q, &x, m);
                let w = q.dequantize();
                let mut kernels = vec![Kernel::Plain];
                #[cfg(target_arch = "x86_64")]
                if Kernel::detect() != Kernel::Plain {
                    kernels.push(Kernel::Avx2);
                }
                kernels.push(Kernel::detect());
                kernels.dedup();
                for kernel in kernels {
                    let mut y = vec![0f32; m * rows];
                    let mut buf = vec![0f32; cols];
                    let mut col = vec![0f32; m];
                    for r in 0..rows {
                        kernel.row_dots(&q, r, &Activations::new(&x), &mut buf, &mut col);
                        for i in 0..m {
                            y[i * rows + r] = col[i];
                        }
                    }
                    assert_close(&y, &want, &x, &w, m, cols, &format!("{format} m {m} {kernel:?}"));
                }
                let y = q.matmul(&x, m);
                assert_close(&y, &want, &x, &w, m, cols, &format!("{format} m {m} matmul"));
            }
        }
    }

    /// Each output within f32 rounding of the f64 sum: 2·cols·ε·Σ|xᵢwᵢ|.
    fn assert_close(y: &[f32], want: &[f64], x: &[f32], w: &[f32], m: usize, cols: usize, what: &str) {
        let rows = w.len() / cols;
        assert_eq!(y.len(), want.len(), "{what}");
        for i in 0..m {
            for r in 0..rows {
                let mag: f64 = (0..cols).map(|k| f64::from((x[i * cols + k] * w[r * cols + k]).abs())).sum();
                let tol = 2.0 * cols as f64 * f64::from(f32::EPSILON) * mag + 1e-30;
                let (got, exp) = (f64::from(y[i * rows + r]), want[i * rows + r]);
                assert!((got - exp).abs() <= tol, "{what}: y[{i}, {r}] = {got}, reference {exp}, tolerance {tol}");
            }
        }
    }

    #[test]
    fn large_products_split_over_threads_match_the_reference() {
        // Above PARALLEL_MIN_WORK: split over threads, with a last, shorter task.
        let (rows, cols) = (1100, 1024);
        for format in FORMATS {
            let q = QMatrix::from_ggml(format, rows, cols, &random_ggml(format, rows, cols, 5), "w").expect("valid");
            let w = q.dequantize();
            for m in [1, 3, 4, 5, 40] {
                let x = xs(m, cols, 11 + m as u64);
                assert_close(
                    &q.matmul(&x, m),
                    &reference::matmul(&q, &x, m),
                    &x,
                    &w,
                    m,
                    cols,
                    &format!("{format} m {m}"),
                );
            }
        }
    }

    #[test]
    fn permuted_rows_move_scales_and_values_together() {
        let format = QuantFormat::Q4_1;
        let q = QMatrix::from_ggml(format, 4, 64, &random_ggml(format, 4, 64, 9), "w").expect("valid");
        let p = q.permute_rows(&[2, 0, 3, 1]);
        let (w, pw) = (q.dequantize(), p.dequantize());
        for (i, src) in [2, 0, 3, 1].into_iter().enumerate() {
            assert_eq!(pw[i * 64..(i + 1) * 64], w[src * 64..(src + 1) * 64]);
        }
    }

    #[test]
    fn bad_shapes_and_scales_are_refused() {
        let raw = random_ggml(QuantFormat::Q8_0, 2, 64, 1);
        assert!(matches!(QMatrix::from_ggml(QuantFormat::Q8_0, 2, 48, &raw, "w"), Err(CoreError::Shape { .. })));
        assert!(matches!(QMatrix::from_ggml(QuantFormat::Q8_0, 3, 64, &raw, "w"), Err(CoreError::Shape { .. })));
        let mut bad = raw.clone();
        bad[..2].copy_from_slice(&f16::INFINITY.to_le_bytes());
        let err = QMatrix::from_ggml(QuantFormat::Q8_0, 2, 64, &bad, "blk.0.attn_q").expect_err("inf scale");
        assert!(err.to_string().contains("blk.0.attn_q"), "{err}");
        assert_eq!(QMatrix::from_ggml(QuantFormat::Q8_0, 2, 64, &raw, "w").expect("valid").bytes(), 2 * 2 * (4 + 32));
    }

    #[test]
    fn empty_products() {
        let q = QMatrix::from_ggml(QuantFormat::Q4_0, 3, 0, &[], "w").expect("no columns");
        assert_eq!(q.matmul(&[], 2), vec![0.0; 6]);
        let q = QMatrix::from_ggml(QuantFormat::Q4_0, 0, 32, &[], "w").expect("no rows");
        assert!(q.matmul(&[0.0; 64], 2).is_empty());
    }
}
