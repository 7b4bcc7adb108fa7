//! Int8 codes of unit vectors, for the index's first pass over large pools: a quarter of the f32
//! matrix's bytes to read, integer dot products, and a bound on how far a code's score can be from
//! the exact one, so that the exact top-k can be recovered by re-scoring only the rows that could be
//! in it.
//!
//! A vector `x` is coded as `x ≈ s·c` with `c` in `[-127, 127]ⁿ` and `s = max|xᵢ| / 127`; its residual
//! `|x − s·c|` is kept. For a query `q ≈ t·d` (coded the same way, residual `e`) and unit `q`, `x`:
//! `q·x − (t·s)(d·c) = q·(x − s·c) + (q − t·d)·(s·c)`, so `|q·x − (t·s)(d·c)| ≤ |x − s·c| + e·|s·c|`
//! by Cauchy–Schwarz, with `|s·c| ≤ 1 + |x − s·c|`.

/// A vector's code: `x ≈ scale · codes`, and `|x − scale · codes|`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Code {
    pub codes: Vec<i8>,
    pub scale: f32,
    pub residual: f32,
}

/// The symmetric int8 code of `x` (a zero vector gets scale 0 and residual 0).
pub(crate) fn quantize(x: &[f32]) -> Code {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        let residual = x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt() as f32;
        return Code { codes: vec![0; x.len()], scale: 0.0, residual };
    }
    let scale = max / 127.0;
    let codes: Vec<i8> = x.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8).collect();
    let residual = x
        .iter()
        .zip(&codes)
        .map(|(v, &c)| {
            let d = f64::from(*v) - f64::from(scale) * f64::from(c);
            d * d
        })
        .sum::<f64>()
        .sqrt() as f32;
    Code { codes, scale, residual }
}

/// The largest amount by which an f32 rounding of the exact and of the coded scores can move them
/// beyond the bound above (products of 384 unit-vector terms: ~1e-5 at most), with room to spare.
pub(crate) const ROUNDING_MARGIN: f32 = 1e-4;

/// How far the coded score of a row of residual `row_residual` can be from its exact score, for a
/// query whose code has residual `query_residual`.
pub(crate) fn bound(row_residual: f32, query_residual: f32) -> f32 {
    row_residual + query_residual * (1.0 + row_residual) + ROUNDING_MARGIN
}

/// `out[r] = codes[r] · query` for every row `r` of `codes` (`[out.len(), query.len()]`, row-major),
/// with AVX2 when the CPU has it (detected at run time), else plain code.
pub(crate) fn dots(codes: &[i8], query: &[i8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), all the function requires.
        #[allow(unsafe_code)]
        unsafe {
            dots_avx2(codes, query, out)
        };
        return;
    }
    dots_plain(codes, query, out);
}

/// [`dots_plain`] compiled with AVX2 (the compiler vectorises its loops with 256-bit integer ops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dots_avx2(codes: &[i8], query: &[i8], out: &mut [i32]) {
    dots_plain(codes, query, out);
}

/// The integer dot products, in a form the compiler vectorises (16-bit products summed in 32 lanes).
#[inline(always)]
pub(crate) fn dots_plain(codes: &[i8], query: &[i8], out: &mut [i32]) {
    let dim = query.len();
    if dim == 0 {
        out.fill(0);
        return;
    }
    for (row, o) in codes.chunks_exact(dim).zip(out.iter_mut()) {
        *o = dot(row, query);
    }
}

#[inline(always)]
fn dot(a: &[i8], b: &[i8]) -> i32 {
    let (ca, ta) = a.as_chunks::<32>();
    let (cb, tb) = b.as_chunks::<32>();
    let mut acc = [0i32; 32];
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..32 {
            acc[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    let tail: i32 = ta.iter().zip(tb).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
    acc.iter().sum::<i32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn dispatched_and_plain_dots_agree_and_are_exact() {
        for dim in [1, 31, 32, 33, 384, 1000] {
            let rows: Vec<i8> = lcg(dim as u64, 5 * dim).iter().map(|v| (v * 254.0) as i8).collect();
            let q: Vec<i8> = lcg(7, dim).iter().map(|v| (v * 254.0) as i8).collect();
            let (mut a, mut b) = (vec![0; 5], vec![0; 5]);
            dots(&rows, &q, &mut a);
            dots_plain(&rows, &q, &mut b);
            let exact: Vec<i32> = rows
                .chunks_exact(dim)
                .map(|r| r.iter().zip(&q).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum())
                .collect();
            assert_eq!(a, exact, "dim {dim}");
            assert_eq!(b, exact, "dim {dim}");
        }
        // Extremes do not overflow.
        let rows = vec![-127i8; 384 * 2];
        let mut out = [0; 2];
        dots(&rows, &[-127; 384], &mut out);
        assert_eq!(out, [127 * 127 * 384; 2]);
    }

    #[test]
    fn the_bound_holds() {
        for seed in 0..200 {
            let x = unit(lcg(seed, 384));
            let q = unit(lcg(seed + 1000, 384));
            let (cx, cq) = (quantize(&x), quantize(&q));
            let exact: f32 = x.iter().zip(&q).map(|(a, b)| a * b).sum();
            let mut d = [0];
            dots(&cx.codes, &cq.codes, &mut d);
            let coded = cx.scale * cq.scale * d[0] as f32;
            assert!((exact - coded).abs() <= bound(cx.residual, cq.residual), "seed {seed}");
            assert!(cx.residual < 0.02, "codes of unit vectors are close: {}", cx.residual);
        }
        let zero = quantize(&[0.0; 4]);
        assert_eq!((zero.scale, zero.residual), (0.0, 0.0));
    }
}
