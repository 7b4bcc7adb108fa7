//! Causal self-attention on the host, flash style: the scores are computed a tile of queries by a block
//! of keys at a time with a running (online) softmax, so no `[queries, keys]` score matrix is ever held,
//! memory stays linear in the sequence, and key blocks a tile's queries may not see are skipped.
//!
//! [`causal`] reads the keys and values where the KV cache keeps them (`[rows, kv_heads, capacity,
//! head_dim]`, positions `0..past + seq` written) and the queries after RoPE as the query projection
//! lays them out (`[rows, seq, heads, head_dim]`), and returns `[rows, seq, heads · head_dim]`, the
//! layout the output projection takes. Grouped-query attention reads each KV head once for the query
//! heads of its group. The mask is the left-padded causal one of the engine's batches: row `b` has
//! `pads[b]` padding slots at the start; a query at slot `s` sees the keys `pads[b]..=s`, and a padding
//! query (`s < pads[b]`) only itself.
//!
//! The products run as fused multiply-adds over 16 lanes on AVX-512F or AVX2+FMA when the CPU has them
//! (detected at run time), as plain arithmetic elsewhere; [`reference::causal`] is the plain f64
//! computation with an explicit mask that the tests hold the kernel to.

use rayon::prelude::*;

use crate::CoreError;
use crate::cpu::{Kernel, LANES, exp_lanes};

/// Query rows per tile: they share every pass over a block of keys.
const TILE: usize = 8;
/// Keys per block of the online softmax.
const BLOCK: usize = 64;
const _: () = assert!(BLOCK.is_multiple_of(LANES), "whole vectors per block");
/// Work (query rows × keys × head size) below which one thread does it all.
const PARALLEL_MIN: usize = 1 << 17;

/// The shape of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences in the batch.
    pub rows: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// New positions per row (the queries).
    pub seq: usize,
    /// Values per head (a multiple of 16).
    pub head_dim: usize,
    /// Positions cached before the new ones; the keys are `0..past + seq`.
    pub past: usize,
    /// Positions the key and value buffers hold per row and head (at least `past + seq`).
    pub capacity: usize,
}

impl AttentionShape {
    fn keys(&self) -> usize {
        self.past + self.seq
    }

    fn check(&self, q: &[f32], k: &[f32], v: &[f32], pads: &[usize]) -> Result<(), CoreError> {
        let shape = |what: &str, expected: String, got: String| CoreError::Shape { what: what.into(), expected, got };
        let s = self;
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
            return Err(shape(
                "attention heads",
                "a multiple of the kv heads".into(),
                format!("{} / {}", s.heads, s.kv_heads),
            ));
        }
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(LANES) {
            return Err(shape("attention head size", format!("a multiple of {LANES}"), s.head_dim.to_string()));
        }
        if s.keys() > s.capacity {
            return Err(shape("attention keys", format!("at most {}", s.capacity), s.keys().to_string()));
        }
        let q_len = s.rows * s.heads * s.seq * s.head_dim;
        if q.len() != q_len {
            return Err(shape("attention queries", q_len.to_string(), q.len().to_string()));
        }
        let kv_len = s.rows * s.kv_heads * s.capacity * s.head_dim;
        if k.len() < kv_len || v.len() < kv_len {
            return Err(shape(
                "attention keys/values",
                format!("{kv_len} values"),
                format!("{} / {}", k.len(), v.len()),
            ));
        }
        if pads.len() != s.rows {
            return Err(shape("attention padding", s.rows.to_string(), pads.len().to_string()));
        }
        Ok(())
    }
}

/// The keys a query at `slot` of a row with `pad` padding slots sees: `lo..=hi`.
fn visible(pad: usize, slot: usize) -> (usize, usize) {
    if slot < pad { (slot, slot) } else { (pad, slot) }
}

/// Causal attention of `q` over the cached keys `k` and values `v` (softmax scaled by
/// `1/√head_dim`).
///
/// # Shapes
/// - `q`: `[rows, seq, heads, head_dim]` (contiguous: the layout of the query projection's output)
/// - `k`, `v`: `[rows, kv_heads, capacity, head_dim]` (contiguous; positions `0..past + seq` read)
/// - `pads`: `[rows]`
/// - output: `[rows, seq, heads · head_dim]`
///
/// # Errors
/// [`CoreError::Shape`] when the slices or `pads` do not have the shape's lengths, the heads do not
/// group, the head size is not a multiple of 16 or the keys exceed the capacity.
pub fn causal(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, pads: &[usize]) -> Result<Vec<f32>, CoreError> {
    causal_with(Kernel::detect(), q, k, v, shape, pads)
}

/// [`causal`] on the given kernel.
fn causal_with(
    kernel: Kernel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape,
    pads: &[usize],
) -> Result<Vec<f32>, CoreError> {
    shape.check(q, k, v, pads)?;
    let s = *shape;
    let (hd, keys) = (s.head_dim, s.keys());
    let rep = s.heads / s.kv_heads;
    let group_rows = rep * s.seq; // query rows per (row, kv head): heads of the group × positions
    let mut out = vec![0.0f32; s.rows * s.seq * s.heads * hd];
    if out.is_empty() {
        return Ok(out);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    // Each (row, kv head)'s keys transposed once ([head_dim][ld]), shared by all its query tiles.
    let ld = keys.next_multiple_of(LANES) + BLOCK;
    let groups: Vec<(usize, usize)> = (0..s.rows).flat_map(|b| (0..s.kv_heads).map(move |g| (b, g))).collect();
    let transpose = |&(b, g): &(usize, usize)| {
        let base = (b * s.kv_heads + g) * s.capacity * hd;
        let mut kt = vec![0.0f32; hd * ld];
        // 16 keys at a time (their rows stay in cache), each dimension's 16 values written side by side.
        for (jb, block) in k[base..base + keys * hd].chunks(LANES * hd).enumerate() {
            for d in 0..hd {
                let dst = &mut kt[d * ld + jb * LANES..][..block.len() / hd];
                for (x, key) in dst.iter_mut().zip(block.chunks_exact(hd)) {
                    *x = key[d];
                }
            }
        }
        kt
    };
    let work = s.rows * s.heads * s.seq * keys * hd;
    let kts: Vec<Vec<f32>> = if work >= PARALLEL_MIN {
        groups.par_iter().map(transpose).collect()
    } else {
        groups.iter().map(transpose).collect()
    };
    let tiles: Vec<(usize, usize)> =
        (0..groups.len()).flat_map(|gi| (0..group_rows).step_by(TILE).map(move |r0| (gi, r0))).collect();
    let run = |&(gi, r0): &(usize, usize)| {
        let (b, g) = groups[gi];
        let n = TILE.min(group_rows - r0);
        let mut t = Tile { q: vec![0.0; TILE * hd], lo: [1; TILE], hi: [0; TILE], n };
        for i in 0..n {
            let (head, pos) = (g * rep + (r0 + i) / s.seq, (r0 + i) % s.seq);
            let src = ((b * s.seq + pos) * s.heads + head) * hd;
            for (d, &x) in q[src..src + hd].iter().enumerate() {
                t.q[d * TILE + i] = x * scale;
            }
            // A padding query sees only its own slot: its output is that value, written below. It takes no
            // part in the tile's pass, so the key blocks of the real queries start at their first key
            // (`pad`) whichever queries share the tile: a row's arithmetic is the same alone or padded,
            // in one pass or in chunks.
            if s.past + pos >= pads[b] {
                (t.lo[i], t.hi[i]) = visible(pads[b], s.past + pos);
            }
        }
        let values = &v[(b * s.kv_heads + g) * s.capacity * hd..][..keys * hd];
        kernel.tile(&t, &kts[gi], ld, values, hd)
    };
    let results: Vec<Vec<f32>> =
        if work >= PARALLEL_MIN { tiles.par_iter().map(run).collect() } else { tiles.iter().map(run).collect() };
    for (&(gi, r0), o) in tiles.iter().zip(&results) {
        let (b, g) = groups[gi];
        for (i, row) in o.chunks_exact(hd).take(TILE.min(group_rows - r0)).enumerate() {
            let (head, pos) = (g * rep + (r0 + i) / s.seq, (r0 + i) % s.seq);
            let dst = ((b * s.seq + pos) * s.heads + head) * hd;
            let slot = s.past + pos;
            if slot < pads[b] {
                // The softmax over one key is exactly 1: the output is the slot's value.
                let own = &v[((b * s.kv_heads + g) * s.capacity + slot) * hd..][..hd];
                out[dst..dst + hd].copy_from_slice(own);
            } else {
                out[dst..dst + hd].copy_from_slice(row);
            }
        }
    }
    Ok(out)
}

/// Up to [`TILE`] query rows (already scaled by `1/√head_dim`) and the keys each sees.
struct Tile {
    /// `[head_dim, TILE]` (transposed: the rows' values of one dimension side by side); rows `n..` are
    /// zero.
    q: Vec<f32>,
    /// Row `i` sees keys `lo[i]..=hi[i]` (an empty range for the rows `n..`).
    lo: [usize; TILE],
    hi: [usize; TILE],
    /// Rows in use.
    n: usize,
}

impl Kernel {
    /// The attention output of a tile's rows, `[TILE, head_dim]` (rows `n..` unused): `kt` holds the
    /// keys transposed (`[head_dim][ld]`), `values` the values `[keys, head_dim]`.
    fn tile(self, t: &Tile, kt: &[f32], ld: usize, values: &[f32], hd: usize) -> Vec<f32> {
        match self {
            Self::Plain => tile::<PLAIN>(t, kt, ld, values, hd),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel because the CPU has AVX2 and FMA.
            #[allow(unsafe_code)]
            Self::Avx2 => unsafe { tile_avx2(t, kt, ld, values, hd) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel because the CPU has AVX-512F, AVX2 and FMA.
            #[allow(unsafe_code)]
            Self::Avx512 => unsafe { tile_avx512(t, kt, ld, values, hd) },
        }
    }
}

/// [`tile`] compiled for AVX2+FMA.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(t: &Tile, kt: &[f32], ld: usize, values: &[f32], hd: usize) -> Vec<f32> {
    tile::<AVX2>(t, kt, ld, values, hd)
}

/// [`tile`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(t: &Tile, kt: &[f32], ld: usize, values: &[f32], hd: usize) -> Vec<f32> {
    tile::<AVX512>(t, kt, ld, values, hd)
}

/// [`tile`]'s instruction sets (a const parameter, so each wrapper compiles its own copy).
const PLAIN: u8 = 0;
const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// One tile's pass over its visible key blocks with an online softmax. `K` picks the products'
/// implementation; the SIMD ones may only run where the CPU has the features (the wrappers above).
#[inline(always)]
fn tile<const K: u8>(t: &Tile, kt: &[f32], ld: usize, values: &[f32], hd: usize) -> Vec<f32> {
    let fma = K != PLAIN;
    let mut o = vec![0.0f32; TILE * hd];
    // Blocks are anchored at the first key any row of the tile sees (rows with an empty range take no part).
    let live = || (0..t.n).filter(|&i| t.lo[i] <= t.hi[i]);
    let (Some(start), Some(end)) = (live().map(|i| t.lo[i]).min(), live().map(|i| t.hi[i]).max()) else { return o };
    let end = end + 1; // keys start..end
    assert!(
        t.q.len() == hd * TILE && kt.len() >= hd * ld && ld >= end + BLOCK && values.len() >= end * hd,
        "tile bounds"
    );
    let mut m = [f32::NEG_INFINITY; TILE]; // running maximum per row
    let mut l = [0.0f32; TILE]; // running sum of exponentials per row
    let mut p = [[0.0f32; BLOCK]; TILE];
    let mut j0 = start;
    while j0 < end {
        let width = BLOCK.min(end - j0);
        // p[i][j] = q_i · k_{j0 + j} over the whole block (keys past `end` read the zero padding).
        match K {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `K` is AVX512 only inside `tile_avx512` (CPU checked); bounds asserted above.
            #[allow(unsafe_code)]
            AVX512 => unsafe { simd::scores_avx512(&t.q, kt, ld, j0, hd, &mut p) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `K` is AVX2 only inside `tile_avx2` (CPU checked); bounds asserted above.
            #[allow(unsafe_code)]
            AVX2 => unsafe { simd::scores_avx2(&t.q, kt, ld, j0, hd, &mut p) },
            _ => {
                for (i, pr) in p.iter_mut().enumerate() {
                    for (j, x) in pr.iter_mut().enumerate() {
                        *x = (0..hd).map(|d| t.q[d * TILE + i] * kt[d * ld + j0 + j]).sum();
                    }
                }
            }
        }
        // Mask, running maximum and sum, and the rescaling of what was accumulated.
        for i in 0..TILE {
            let (lo, hi) = (t.lo[i], t.hi[i]);
            let row = &mut p[i];
            // Most blocks of a long prompt are wholly visible to a row: no mask to apply.
            if !(width == BLOCK && j0 >= lo && j0 + BLOCK - 1 <= hi) {
                for (j, x) in row.iter_mut().enumerate() {
                    let key = j0 + j;
                    *x = if j < width && key >= lo && key <= hi { *x } else { f32::NEG_INFINITY };
                }
            }
            // Maximum and sum lane by lane (a running scalar would chain every key's operation).
            let (chunks, _) = row.as_chunks_mut::<LANES>();
            let mut lanes = [f32::NEG_INFINITY; LANES];
            for chunk in chunks.iter() {
                for (a, &b) in lanes.iter_mut().zip(chunk) {
                    *a = a.max(b);
                }
            }
            let block_max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = m[i].max(block_max);
            if m_new == f32::NEG_INFINITY {
                row.fill(0.0); // nothing visible yet in this row
                continue;
            }
            let mut sums = [0.0f32; LANES];
            for chunk in chunks.iter_mut() {
                for x in chunk.iter_mut() {
                    *x -= m_new;
                }
                if fma {
                    exp_lanes::<true>(chunk)
                } else {
                    exp_lanes::<false>(chunk)
                }
                for (a, &b) in sums.iter_mut().zip(chunk.iter()) {
                    *a += b;
                }
            }
            let correction = (m[i] - m_new).exp(); // 0 on the first visible block
            l[i] = l[i] * correction + sums.iter().sum::<f32>();
            m[i] = m_new;
            if correction != 1.0 {
                for x in &mut o[i * hd..(i + 1) * hd] {
                    *x *= correction;
                }
            }
        }
        // o_i += Σ_j p_ij · v_{j0 + j}.
        match K {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for the scores.
            #[allow(unsafe_code)]
            AVX512 => unsafe { simd::values_avx512(&mut o, &p, values, j0, width, hd) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for the scores.
            #[allow(unsafe_code)]
            AVX2 => unsafe { simd::values_avx2(&mut o, &p, values, j0, width, hd) },
            _ => {
                for (orow, pr) in o.chunks_exact_mut(hd).zip(&p) {
                    for (j, &pj) in pr[..width].iter().enumerate() {
                        for (x, &vv) in orow.iter_mut().zip(&values[(j0 + j) * hd..][..hd]) {
                            *x += pj * vv;
                        }
                    }
                }
            }
        }
        j0 += BLOCK;
    }
    for (orow, &li) in o.chunks_exact_mut(hd).zip(&l) {
        if li > 0.0 {
            let inv = 1.0 / li;
            for x in orow {
                *x *= inv;
            }
        }
    }
    o
}

/// The two products of a tile, by intrinsics (LLVM's own vectorisation of the loops above gathers
/// across rows and keeps to 256 bits). Callers guarantee the CPU features and the bounds [`tile`]
/// asserts: `qt` `[hd, TILE]`, `kt` `[hd, ld]` with `j0 + BLOCK <= ld`, `values` past `j0 + width`
/// keys, `o` `[TILE, hd]`, `hd` a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::{BLOCK, TILE};

    /// A tile's two products for one vector width: `$vec` of `$lanes` lanes (`$load`, `$store`,
    /// `$fmadd`, `$set1`, `$zero` its intrinsics) under `$features`; the scores take `$per` vectors of
    /// keys per pass (8 · `$per` accumulators).
    macro_rules! products {
        ($scores:ident, $values:ident, $features:literal, $vec:ty, $lanes:literal, $per:literal,
         $load:ident, $store:ident, $fmadd:ident, $set1:ident, $zero:ident) => {
            /// `p[i][j] = Σ_d qt[d][i] · kt[d][j0 + j]`, TILE rows × `$per·$lanes` keys per pass.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $scores(
                qt: &[f32],
                kt: &[f32],
                ld: usize,
                j0: usize,
                hd: usize,
                p: &mut [[f32; BLOCK]; TILE],
            ) {
                for c in (0..BLOCK).step_by($per * $lanes) {
                    let mut acc = [[$zero(); $per]; TILE];
                    for d in 0..hd {
                        // SAFETY: `d·ld + j0 + c + $per·$lanes <= hd·ld` and `d·TILE + TILE <= qt.len()`
                        // (the caller's bounds).
                        let (k, qp): ([$vec; $per], _) = unsafe {
                            let kp = kt.as_ptr().add(d * ld + j0 + c);
                            (std::array::from_fn(|u| $load(kp.add(u * $lanes))), qt.as_ptr().add(d * TILE))
                        };
                        for (i, a) in acc.iter_mut().enumerate() {
                            // SAFETY: `i < TILE` (see above).
                            let q = $set1(unsafe { *qp.add(i) });
                            for (au, &ku) in a.iter_mut().zip(&k) {
                                *au = $fmadd(q, ku, *au);
                            }
                        }
                    }
                    for (pr, a) in p.iter_mut().zip(&acc) {
                        for (u, &au) in a.iter().enumerate() {
                            // SAFETY: `c + $per·$lanes <= BLOCK`.
                            unsafe { $store(pr.as_mut_ptr().add(c + u * $lanes), au) };
                        }
                    }
                }
            }

            /// `o[i] += Σ_{j < width} p[i][j] · values[j0 + j]`, TILE rows × `$lanes` values per pass.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $values(
                o: &mut [f32],
                p: &[[f32; BLOCK]; TILE],
                values: &[f32],
                j0: usize,
                width: usize,
                hd: usize,
            ) {
                for dc in (0..hd).step_by($lanes) {
                    // SAFETY: `i·hd + dc + $lanes <= TILE·hd = o.len()`.
                    let mut acc: [$vec; TILE] = std::array::from_fn(|i| unsafe { $load(o.as_ptr().add(i * hd + dc)) });
                    for j in 0..width {
                        // SAFETY: `(j0 + j)·hd + dc + $lanes <= (j0 + width)·hd <= values.len()`.
                        let v = unsafe { $load(values.as_ptr().add((j0 + j) * hd + dc)) };
                        for (a, pr) in acc.iter_mut().zip(p) {
                            *a = $fmadd($set1(pr[j]), v, *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        // SAFETY: as for the loads.
                        unsafe { $store(o.as_mut_ptr().add(i * hd + dc), *a) };
                    }
                }
            }
        };
    }

    products!(
        scores_avx512,
        values_avx512,
        "avx512f",
        __m512,
        16,
        2,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps,
        _mm512_setzero_ps
    );
    products!(
        scores_avx2,
        values_avx2,
        "avx2,fma",
        __m256,
        8,
        1,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_set1_ps,
        _mm256_setzero_ps
    );
}

/// The plain computation the kernel is held to.
pub mod reference {
    use super::{AttentionShape, visible};
    use crate::CoreError;

    /// [`super::causal`] in f64 with an explicit mask and a whole softmax per query.
    ///
    /// # Errors
    /// As [`super::causal`].
    pub fn causal(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: &AttentionShape,
        pads: &[usize],
    ) -> Result<Vec<f64>, CoreError> {
        shape.check(q, k, v, pads)?;
        let s = *shape;
        let (hd, rep) = (s.head_dim, s.heads / s.kv_heads);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0.0f64; s.rows * s.seq * s.heads * hd];
        for b in 0..s.rows {
            for h in 0..s.heads {
                let kv = (b * s.kv_heads + h / rep) * s.capacity * hd;
                for t in 0..s.seq {
                    let qr = &q[((b * s.seq + t) * s.heads + h) * hd..][..hd];
                    let (lo, hi) = visible(pads[b], s.past + t);
                    let scores: Vec<f64> = (lo..=hi)
                        .map(|j| {
                            let kr = &k[kv + j * hd..][..hd];
                            qr.iter().zip(kr).map(|(&a, &c)| f64::from(a) * f64::from(c)).sum::<f64>() * scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    let dst = &mut out[((b * s.seq + t) * s.heads + h) * hd..][..hd];
                    for (e, j) in exps.iter().zip(lo..=hi) {
                        for (o, &x) in dst.iter_mut().zip(&v[kv + j * hd..][..hd]) {
                            *o += e / sum * f64::from(x);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in `[-2, 2)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::cpu::test_values(n, seed).into_iter().map(|v| v * 4.0).collect()
    }

    /// Every kernel this CPU can run (an AVX-512 CPU runs the AVX2 one too).
    fn kernels() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Plain];
        #[cfg(target_arch = "x86_64")]
        if Kernel::detect() != Kernel::Plain {
            kernels.push(Kernel::Avx2);
            if Kernel::detect() == Kernel::Avx512 {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// Every available kernel against the reference on `shape` (keys and values random, capacity
    /// slots past the keys filled with garbage the kernel must not read).
    fn check(shape: AttentionShape, pads: &[usize]) {
        let s = shape;
        let q = values(s.rows * s.heads * s.seq * s.head_dim, 1);
        let kv_len = s.rows * s.kv_heads * s.capacity * s.head_dim;
        let mut k = values(kv_len, 2);
        let mut v = values(kv_len, 3);
        for b in 0..s.rows * s.kv_heads {
            for j in s.past + s.seq..s.capacity {
                let at = (b * s.capacity + j) * s.head_dim;
                k[at..at + s.head_dim].fill(f32::NAN);
                v[at..at + s.head_dim].fill(f32::NAN);
            }
        }
        let want = reference::causal(&q, &k, &v, &s, pads).expect("reference");
        for kernel in kernels() {
            let got = causal_with(kernel, &q, &k, &v, &s, pads).expect("attention");
            assert_eq!(got.len(), want.len());
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!((f64::from(g) - w).abs() <= 2e-5 * (1.0 + w.abs()), "{kernel:?} {s:?} at {i}: {g} vs {w}");
            }
        }
    }

    /// Issue 24: a row's attention output is bit-identical alone, left-padded beside a longer row, and
    /// prefilled in chunks (SmolLM2's 9 query / 3 key-value heads, a 45-token prompt: tiles span heads and
    /// the keys wrap the lanes), on every kernel this CPU runs.
    #[test]
    fn a_rows_output_is_the_same_alone_padded_and_in_chunks() {
        let (heads, kv_heads, hd, len, pad) = (9, 3, 64, 45, 15);
        let q = values(len * heads * hd, 11);
        let k = values(kv_heads * len * hd, 12);
        let v = values(kv_heads * len * hd, 13);
        let shape =
            |rows, seq, past, capacity| AttentionShape { rows, heads, kv_heads, seq, head_dim: hd, past, capacity };
        for kernel in kernels() {
            let alone = causal_with(kernel, &q, &k, &v, &shape(1, len, 0, len), &[0]).expect("alone");
            // Beside a row of `len + pad` tokens: this row left-padded by `pad` (its padding slots garbage).
            let (seq, cap) = (len + pad, len + pad);
            let mut q2 = values(2 * seq * heads * hd, 21);
            q2[pad * heads * hd..seq * heads * hd].copy_from_slice(&q);
            let mut k2 = values(2 * kv_heads * cap * hd, 22);
            let mut v2 = values(2 * kv_heads * cap * hd, 23);
            for g in 0..kv_heads {
                let (from, to) = (g * len * hd, (g * cap + pad) * hd);
                k2[to..to + len * hd].copy_from_slice(&k[from..from + len * hd]);
                v2[to..to + len * hd].copy_from_slice(&v[from..from + len * hd]);
            }
            let padded = causal_with(kernel, &q2, &k2, &v2, &shape(2, seq, 0, cap), &[pad, 0]).expect("padded");
            let row = heads * hd;
            for t in 0..len {
                let (a, b) = (&alone[t * row..][..row], &padded[(pad + t) * row..][..row]);
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?}: position {t} padded");
            }
            // In two chunks of 20 and 25 tokens over the same cache.
            let first = causal_with(kernel, &q[..20 * row], &k, &v, &shape(1, 20, 0, len), &[0]).expect("chunk 1");
            let second = causal_with(kernel, &q[20 * row..], &k, &v, &shape(1, 25, 20, len), &[0]).expect("chunk 2");
            let chunked: Vec<f32> = first.into_iter().chain(second).collect();
            assert!(alone.iter().zip(&chunked).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?}: chunked");
        }
    }

    #[test]
    fn prefill_decode_and_padding_match_the_reference() {
        let base = AttentionShape { rows: 1, heads: 4, kv_heads: 2, seq: 1, head_dim: 16, past: 0, capacity: 8 };
        // One new token over an empty cache; a decoding step over a past; a prompt over several blocks.
        check(base, &[0]);
        check(AttentionShape { past: 5, seq: 1, capacity: 9, ..base }, &[0]);
        check(AttentionShape { heads: 9, kv_heads: 3, head_dim: 64, seq: 150, capacity: 160, ..base }, &[0]);
        // Left-padded rows (padding queries see themselves), a chunk after a past, GQA and MHA.
        check(AttentionShape { rows: 3, seq: 70, past: 10, capacity: 90, ..base }, &[0, 3, 79]);
        check(
            AttentionShape { rows: 2, heads: 2, kv_heads: 2, head_dim: 32, seq: 1, past: 130, capacity: 200 },
            &[0, 40],
        );
    }

    #[test]
    fn the_threaded_entry_matches_the_reference() {
        let s = AttentionShape { rows: 2, heads: 6, kv_heads: 2, seq: 100, head_dim: 64, past: 30, capacity: 140 };
        let pads = [0, 7];
        let kv_len = s.rows * s.kv_heads * s.capacity * s.head_dim;
        let (q, k, v) = (values(s.rows * s.heads * s.seq * s.head_dim, 4), values(kv_len, 5), values(kv_len, 6));
        assert!(s.rows * s.heads * s.seq * s.keys() * s.head_dim >= PARALLEL_MIN, "large enough to thread");
        let got = causal(&q, &k, &v, &s, &pads).expect("attention");
        let want = reference::causal(&q, &k, &v, &s, &pads).expect("reference");
        for (&g, &w) in got.iter().zip(&want) {
            assert!((f64::from(g) - w).abs() <= 2e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    #[test]
    fn exp_lanes_is_close_to_exp() {
        let mut worst = 0.0f64;
        for kernel_fma in [false, true] {
            for start in (0..8680).step_by(LANES) {
                let mut x = [0.0f32; LANES];
                for (l, v) in x.iter_mut().enumerate() {
                    *v = -((start + l) as f32) * 0.01;
                }
                let want: Vec<f64> = x.iter().map(|&v| f64::from(v).exp()).collect();
                if kernel_fma {
                    exp_lanes::<true>(&mut x)
                } else {
                    exp_lanes::<false>(&mut x)
                }
                for (&g, &w) in x.iter().zip(&want) {
                    worst = worst.max((f64::from(g) - w).abs() / w);
                }
            }
        }
        assert!(worst < 4.0 * f64::from(f32::EPSILON), "relative error {worst}");
        let mut edge = [
            f32::NEG_INFINITY,
            -87.5,
            -1e30,
            0.0,
            -0.0,
            -1e-9,
            -86.9,
            -10.0,
            -20.0,
            -30.0,
            -40.0,
            -50.0,
            -60.0,
            -70.0,
            -80.0,
            -1.0,
        ];
        exp_lanes::<false>(&mut edge);
        assert_eq!(&edge[..3], &[0.0, 0.0, 0.0]);
        assert_eq!((edge[3], edge[4]), (1.0, 1.0));
        assert!(edge[6] > 0.0 && (f64::from(edge[6]) / (-86.9f64).exp() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let s = AttentionShape { rows: 1, heads: 2, kv_heads: 1, seq: 1, head_dim: 16, past: 0, capacity: 1 };
        let (q, kv) = (vec![0.0; 32], vec![0.0; 16]);
        assert!(causal(&q, &kv, &kv, &s, &[0]).is_ok());
        for (bad, pads) in [
            (AttentionShape { head_dim: 8, ..s }, 1),
            (AttentionShape { kv_heads: 3, ..s }, 1),
            (AttentionShape { past: 1, ..s }, 1),
            (s, 2),
        ] {
            let err = causal(&q, &kv, &kv, &bad, &vec![0; pads]).expect_err("refused");
            assert!(matches!(err, CoreError::Shape { .. }), "{err}");
        }
        assert!(causal(&q[..16], &kv, &kv, &s, &[0]).is_err());
        let empty = AttentionShape { rows: 0, ..s };
        assert_eq!(causal(&[], &[], &[], &empty, &[]).expect("empty"), Vec::<f32>::new());
    }
}
