//! The plain reference for [`super`]: per row, build the dense weight delta the way
//! `make_fixtures.py` does (`ΔW = Σ wᵢ sᵢ BᵢAᵢ`, or `s (Σ wᵢBᵢ)(Σ wᵢAᵢ)` for fusion), then compute
//! `x (W + ΔW)ᵀ` with loops; Arrow rows (per token) as PEFT's `ArrowLoraLinearLayer` does, with
//! each prototype taken from the dense `BᵢAᵢ` ([`dense_prototype`]), not from the factors; gate rows
//! per token as RouterLoRA is written (each adapter's output, its key, a softmax), never through the
//! rank-space shortcut the batched path takes. Slow and obvious on purpose: the batched path is
//! tested against it.

use super::{ArrowParams, Composition, GateFactors, LoraFactors, MixPlan};
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
        Composition::Arrow(_) | Composition::Gate => {
            return Err(CoreError::Composition(format!(
                "row {row}: a routed row has no fixed delta (its weights depend on each token): use row_forward"
            )));
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

/// `y` `[seq, d_out]` of one row for `x` `[seq, d_in]` and the base weight `w` `[d_out, d_in]`, for
/// every composition but the gate (Arrow per token, the others through [`row_delta`]).
pub fn row_forward(
    plan: &MixPlan,
    row: usize,
    adapters: &[Option<&LoraFactors>],
    x: &[f32],
    w: &[f32],
    d_in: usize,
    d_out: usize,
) -> Result<Vec<f32>, CoreError> {
    row_forward_gated(plan, row, adapters, None, x, w, d_in, d_out)
}

/// [`row_forward`] with the layer's gate, for every composition. A gate row computes, per token,
/// each adapter's output `vᵢ = sᵢ BᵢAᵢ x` from its dense delta, `q = A_g x`, `kᵢ = B_gᵀ vᵢ`,
/// `αᵢ = softmax(q · kᵢ / √r_g)` and adds `Σ αᵢ vᵢ`, as RAMoLE's RouterLoRA is written.
#[allow(clippy::too_many_arguments)]
pub fn row_forward_gated(
    plan: &MixPlan,
    row: usize,
    adapters: &[Option<&LoraFactors>],
    gate: Option<&GateFactors>,
    x: &[f32],
    w: &[f32],
    d_in: usize,
    d_out: usize,
) -> Result<Vec<f32>, CoreError> {
    let Some(mix) = plan.rows().get(row) else {
        return Err(CoreError::Composition(format!("row {row} is not in the plan")));
    };
    if !mix.composition.is_routed() {
        let delta = row_delta(plan, row, adapters, d_in, d_out)?;
        return Ok(linear(x, w, &delta, d_in, d_out));
    }
    let dims = Dims { d_in, d_out };
    // The row's adapters that target this layer, each with its dense delta sᵢ BᵢAᵢ and prototype.
    // A gate row keeps an adapter that does not adapt the layer (its output is 0, its share of the
    // softmax is not); Arrow routes over the adapters that do.
    let gate_row = mix.composition == Composition::Gate;
    let experts: Vec<(Vec<f32>, Vec<f32>)> = mix
        .entries
        .iter()
        .map(|&(u, _)| adapters.get(u).copied().flatten())
        .filter(|f| gate_row || f.is_some())
        .map(|f| {
            let mut d = vec![0f32; d_out * d_in];
            let Some(f) = f else { return (d, vec![0f32; d_in]) };
            dims.add_product(&mut d, &f.b, &f.a, f.rank, 1.0);
            let proto = dense_prototype(&d, d_in, d_out);
            d.iter_mut().for_each(|v| *v *= f.scale);
            (d, proto)
        })
        .collect();
    let zero = vec![0f32; d_out * d_in];
    let mut y = linear(x, w, &zero, d_in, d_out);
    let adapts = mix.entries.iter().any(|&(u, _)| adapters.get(u).copied().flatten().is_some());
    if experts.is_empty() || !adapts {
        return Ok(y);
    }
    let seq = x.len() / d_in;
    for t in 0..seq {
        let xt = &x[t * d_in..(t + 1) * d_in];
        let outputs: Vec<Vec<f32>> = experts
            .iter()
            .map(|(delta, _)| (0..d_out).map(|o| (0..d_in).map(|j| xt[j] * delta[o * d_in + j]).sum()).collect())
            .collect();
        let coeff = match mix.composition {
            Composition::Arrow(params) => {
                arrow_coefficients(xt, &experts.iter().map(|(_, p)| p.as_slice()).collect::<Vec<_>>(), params)
            }
            _ => {
                let Some(g) = gate else {
                    return Err(CoreError::Composition(format!("row {row}: a gate row needs the layer's gate")));
                };
                gate_coefficients(xt, &outputs, g, d_in, d_out)
            }
        };
        for (v, c) in outputs.iter().zip(coeff) {
            for o in 0..d_out {
                y[t * d_out + o] += c * v[o];
            }
        }
    }
    Ok(y)
}

/// RouterLoRA's weights of one token over the outputs `vᵢ` (`[d_out]` each) of its adapters:
/// `softmax((A_g x) · (B_gᵀ vᵢ) / √r_g)`.
pub fn gate_coefficients(x: &[f32], outputs: &[Vec<f32>], gate: &GateFactors, d_in: usize, d_out: usize) -> Vec<f32> {
    let r = gate.rank;
    let q: Vec<f32> = (0..r).map(|g| (0..d_in).map(|j| gate.a[g * d_in + j] * x[j]).sum()).collect();
    let scores: Vec<f32> = outputs
        .iter()
        .map(|v| {
            let k: Vec<f32> = (0..r).map(|g| (0..d_out).map(|o| gate.b[o * r + g] * v[o]).sum()).collect();
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>() / (r as f32).sqrt()
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// Arrow's weights of one token over its experts: scores `|x · protoᵢ|`, the `top_k` highest kept
/// (ties keep every tied expert), `softmax(score / T)` over them, 0 for the others.
pub fn arrow_coefficients(x: &[f32], protos: &[&[f32]], params: ArrowParams) -> Vec<f32> {
    let scores: Vec<f32> = protos.iter().map(|p| p.iter().zip(x).map(|(a, b)| a * b).sum::<f32>().abs()).collect();
    let kept: Vec<bool> = scores.iter().map(|s| scores.iter().filter(|o| *o > s).count() < params.top_k).collect();
    let max = scores.iter().zip(&kept).filter(|(_, k)| **k).map(|(s, _)| *s).fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> =
        scores.iter().zip(&kept).map(|(s, &k)| if k { ((s - max) / params.temperature).exp() } else { 0.0 }).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// The top right singular vector (unit norm) of a dense `[d_out, d_in]` matrix, by power iteration
/// on `Mᵀ M` from the all-ones vector.
pub fn dense_prototype(m: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    let mut v = vec![1.0f64 / (d_in as f64).sqrt(); d_in];
    for _ in 0..2000 {
        let mv: Vec<f64> =
            (0..d_out).map(|o| (0..d_in).map(|j| f64::from(m[o * d_in + j]) * v[j]).sum::<f64>()).collect();
        let mut next: Vec<f64> =
            (0..d_in).map(|j| (0..d_out).map(|o| f64::from(m[o * d_in + j]) * mv[o]).sum::<f64>()).collect();
        let n = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n == 0.0 {
            break;
        }
        next.iter_mut().for_each(|x| *x /= n);
        let diff: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        v = next;
        if diff < 1e-12 {
            break;
        }
    }
    v.iter().map(|&x| x as f32).collect()
}
