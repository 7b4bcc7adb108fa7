//! The plain reference for [`super`]: per row, build the dense weight delta the way
//! `make_fixtures.py` does (`ΔW = Σ wᵢ sᵢ BᵢAᵢ`, or `s (Σ wᵢBᵢ)(Σ wᵢAᵢ)` for fusion), then compute
//! `x (W + ΔW)ᵀ` with loops. Slow and obvious on purpose: the batched path is tested against it.

use super::{Composition, LoraFactors, MixPlan};
use crate::CoreError;

/// The dense delta `ΔW` (`[d_out, d_in]`, row-major) of one row for one layer.
/// `adapters[i]` is `None` where unique adapter `i` does not target the layer.
pub fn row_delta(
    plan: &MixPlan,
    row: usize,
    adapters: &[Option<&LoraFactors>],
    d_in: usize,
    d_out: usize,
) -> Result<Vec<f32>, CoreError> {
    let mut delta = vec![0f32; d_out * d_in];
    let Some(mix) = plan.rows().get(row) else {
        return Err(CoreError::Composition(format!("row {row} is not in the plan")));
    };
    let used: Vec<(&LoraFactors, f32)> =
        mix.entries.iter().filter_map(|&(u, w)| adapters.get(u).copied().flatten().map(|f| (f, w))).collect();
    let dims = Dims { d_in, d_out };
    match mix.composition {
        Composition::Single | Composition::Mixture => {
            for (f, w) in used {
                dims.add_product(&mut delta, &f.b, &f.a, f.rank, w * f.scale);
            }
        }
        Composition::Fusion => {
            let Some((first, _)) = used.first() else { return Ok(delta) };
            let (r, s) = (first.rank, first.scale);
            if used.iter().any(|(f, _)| f.rank != r || f.scale != s) {
                return Err(CoreError::Composition(format!("row {row}: fusion needs equal ranks and scales")));
            }
            let mut a = vec![0f32; r * d_in];
            let mut b = vec![0f32; d_out * r];
            for (f, w) in &used {
                a.iter_mut().zip(&f.a).for_each(|(x, y)| *x += w * y);
                b.iter_mut().zip(&f.b).for_each(|(x, y)| *x += w * y);
            }
            dims.add_product(&mut delta, &b, &a, r, s);
        }
    }
    Ok(delta)
}

/// The shape `[d_out, d_in]` of a linear layer.
#[derive(Clone, Copy)]
struct Dims {
    d_in: usize,
    d_out: usize,
}

impl Dims {
    /// `delta += c · B A` with `B` `[d_out, r]` and `A` `[r, d_in]`.
    fn add_product(self, delta: &mut [f32], b: &[f32], a: &[f32], r: usize, c: f32) {
        let Self { d_in, d_out } = self;
        for o in 0..d_out {
            for j in 0..d_in {
                let dot: f32 = (0..r).map(|k| b[o * r + k] * a[k * d_in + j]).sum();
                delta[o * d_in + j] += c * dot;
            }
        }
    }
}

/// `y = x (W + ΔW)ᵀ` for one row: `x` `[seq, d_in]`, `w` and `delta` `[d_out, d_in]`; returns
/// `[seq, d_out]`.
pub fn linear(x: &[f32], w: &[f32], delta: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    let seq = x.len() / d_in;
    let mut y = vec![0f32; seq * d_out];
    for t in 0..seq {
        for o in 0..d_out {
            y[t * d_out + o] = (0..d_in).map(|j| x[t * d_in + j] * (w[o * d_in + j] + delta[o * d_in + j])).sum();
        }
    }
    y
}
