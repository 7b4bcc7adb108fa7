//! Element-wise activations on host values, for the CPU backends' host block.
//!
//! [`silu_mul`] is the Llama MLP's `silu(gate) · up` in one pass: `e^{−|g|}` over 16 lanes at a time
//! (Cephes' `expf` in arithmetic that vectorises, a few ulp, shared with the attention kernel's
//! softmax), then `σ(g) = 1 / (1 + e^{−g})` for `g ≥ 0` and `e^{g} / (1 + e^{g})` below (so no
//! exponential overflows), compiled for AVX2+FMA where the CPU has them (detected at run time) and as
//! plain arithmetic elsewhere.

use rayon::prelude::*;

use crate::cpu::{Kernel, LANES, exp_lanes};

/// `gate ← silu(gate) · up` (`g · σ(g) · u`), element by element; long inputs on rayon's threads.
///
/// # Panics
/// If `gate` and `up` differ in length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu(gate) · up of equal lengths");
    const CHUNK: usize = 1 << 14;
    let fma = Kernel::detect() != Kernel::Plain;
    let pass = |(g, u): (&mut [f32], &[f32])| {
        if fma {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found AVX2 and FMA.
            #[allow(unsafe_code)]
            unsafe {
                silu_mul_fma(g, u)
            }
        } else {
            silu_mul_lanes::<false>(g, u)
        }
    };
    if gate.len() > CHUNK {
        gate.par_chunks_mut(CHUNK).zip(up.par_chunks(CHUNK)).for_each(pass);
    } else {
        pass((gate, up));
    }
}

/// [`silu_mul_lanes`] compiled for AVX2+FMA.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_fma(gate: &mut [f32], up: &[f32]) {
    silu_mul_lanes::<true>(gate, up)
}

/// `silu(g) · u` a vector of [`LANES`] at a time, the tail one value at a time.
#[inline(always)]
fn silu_mul_lanes<const FMA: bool>(gate: &mut [f32], up: &[f32]) {
    let (chunks, tail) = gate.as_chunks_mut::<LANES>();
    let (up_chunks, up_tail) = up.as_chunks::<LANES>();
    let mut e = [0.0f32; LANES];
    for (g, u) in chunks.iter_mut().zip(up_chunks) {
        for (e, &g) in e.iter_mut().zip(g.iter()) {
            *e = -g.abs();
        }
        exp_lanes::<FMA>(&mut e);
        for ((g, &u), &e) in g.iter_mut().zip(u).zip(&e) {
            let sigmoid = if *g >= 0.0 { 1.0 } else { e } / (1.0 + e);
            *g *= sigmoid * u;
        }
    }
    for (g, &u) in tail.iter_mut().zip(up_tail) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_the_formula_in_f64() {
        // Whole vectors, a tail, large magnitudes both ways, zeros, and the parallel split.
        for n in [0usize, 5, 16, 37, 40_000] {
            let g: Vec<f32> = (0..n).map(|i| ((i * 7919) % 4001) as f32 / 40.0 - 50.0).collect();
            let u: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 1001) as f32 / 500.0 - 1.0).collect();
            let mut got = g.clone();
            silu_mul(&mut got, &u);
            for (i, ((&got, &g), &u)) in got.iter().zip(&g).zip(&u).enumerate() {
                let (g, u) = (f64::from(g), f64::from(u));
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (f64::from(got) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{n} values, at {i}: {got} vs {want}"
                );
            }
        }
        let mut edge = [f32::INFINITY, -1e30, 100.0, -100.0, 0.0, -0.0, 1e-30, -1e-30];
        let edge_up = [1.0; 8];
        silu_mul(&mut edge, &edge_up);
        assert_eq!(edge[..4], [f32::INFINITY, 0.0, 100.0, 0.0]);
        assert!(edge[4..].iter().all(|v| v.abs() < 1e-29), "{edge:?}");
    }
}
