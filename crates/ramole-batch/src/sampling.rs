//! Picking the next token from logits.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// How a request picks generated tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    /// The most likely token (the first one on ties, as `torch.argmax`).
    #[default]
    Greedy,
    /// Sampling from `softmax(logits / temperature)` restricted to the smallest set of most likely
    /// tokens whose probability reaches `top_p`.
    TopP {
        /// Temperature (> 0).
        temperature: f32,
        /// Nucleus mass in (0, 1].
        top_p: f32,
        /// Seed of the request's random generator.
        seed: u64,
    },
}

impl Sampling {
    /// Checks the parameters: a temperature that is a finite number > 0 and a `top_p` in (0, 1].
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Sampling::Greedy => Ok(()),
            Sampling::TopP { temperature, top_p, .. } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(format!("sampling temperature {temperature} must be a finite number > 0"));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(format!("top_p {top_p} must be in (0, 1]"));
                }
                Ok(())
            }
        }
    }
}

/// A per-request token picker (owns the request's random generator).
#[derive(Debug, Clone)]
pub struct Sampler {
    mode: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A picker for `mode`.
    pub fn new(mode: Sampling) -> Self {
        let seed = match mode {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self { mode, rng: StdRng::seed_from_u64(seed) }
    }

    /// The next token for one row of logits. Parameters that [`Sampling::check`] refuses, and logits
    /// that give no probability distribution (NaN, infinities), fall back to greedy; an empty row
    /// gives 0.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        match self.mode {
            Sampling::TopP { .. } if self.mode.check().is_err() => argmax(logits),
            Sampling::Greedy => argmax(logits),
            Sampling::TopP { temperature, top_p, .. } => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut probs: Vec<(u32, f32)> =
                    logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / temperature).exp())).collect();
                probs.sort_by(|a, b| b.1.total_cmp(&a.1));
                let total: f32 = probs.iter().map(|p| p.1).sum();
                if !(total.is_finite() && total > 0.0) {
                    return argmax(logits);
                }
                let mut kept = 0;
                let mut mass = 0.0;
                for p in &probs {
                    kept += 1;
                    mass += p.1 / total;
                    if mass >= top_p {
                        break;
                    }
                }
                let probs = &probs[..kept];
                let kept_total: f32 = probs.iter().map(|p| p.1).sum();
                let mut x = self.rng.random::<f32>() * kept_total;
                for &(id, p) in probs {
                    if x < p {
                        return id;
                    }
                    x -= p;
                }
                probs.last().map_or(0, |p| p.0)
            }
        }
    }
}

/// Index of the largest value (the first on ties); 0 for an empty slice.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(Sampler::new(Sampling::Greedy).pick(&[0.0, 0.5, 0.2]), 1);
    }

    #[test]
    fn top_p_is_seeded_and_respects_the_nucleus() {
        let logits = [0.0, 5.0, 4.9, -10.0, 1.0];
        let mode = Sampling::TopP { temperature: 1.0, top_p: 0.9, seed: 7 };
        let draw = |mode| {
            let mut s = Sampler::new(mode);
            (0..200).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        let a = draw(mode);
        assert_eq!(a, draw(mode), "same seed, same tokens");
        assert!(a.iter().all(|&t| t == 1 || t == 2), "only the nucleus {{1, 2}} is sampled");
        assert!(a.contains(&1) && a.contains(&2));
        let tiny = Sampling::TopP { temperature: 1.0, top_p: 1e-6, seed: 1 };
        assert!(draw(tiny).iter().all(|&t| t == 1), "a tiny nucleus is greedy");
    }

    #[test]
    fn edge_parameters_and_logits_never_panic() {
        let logits = [0.0, 5.0, 4.9, -10.0, 1.0];
        for (temperature, top_p) in [
            (0.0, 1.0),
            (-1.0, 0.5),
            (f32::NAN, 0.5),
            (f32::INFINITY, 0.5),
            (1.0, 0.0),
            (1.0, -0.5),
            (1.0, 1.5),
            (1.0, f32::NAN),
        ] {
            let mode = Sampling::TopP { temperature, top_p, seed: 3 };
            assert!(mode.check().is_err(), "{temperature} {top_p}");
            assert_eq!(Sampler::new(mode).pick(&logits), 1, "invalid parameters fall back to greedy");
        }
        for (temperature, top_p) in [(1e-30, 1.0), (1e30, 1.0), (f32::MIN_POSITIVE, f32::MIN_POSITIVE)] {
            let mode = Sampling::TopP { temperature, top_p, seed: 3 };
            assert!(mode.check().is_ok());
            let t = Sampler::new(mode).pick(&logits);
            assert!((t as usize) < logits.len());
        }
        let mode = Sampling::TopP { temperature: 1.0, top_p: 0.9, seed: 3 };
        for bad in [&[][..], &[f32::NAN, 1.0], &[f32::INFINITY, 0.0], &[f32::NEG_INFINITY; 3], &[f32::MAX, f32::MIN]] {
            let t = Sampler::new(mode).pick(bad);
            assert!(bad.is_empty() && t == 0 || (t as usize) < bad.len(), "{bad:?}: {t}");
            let g = Sampler::new(Sampling::Greedy).pick(bad);
            assert!(bad.is_empty() && g == 0 || (g as usize) < bad.len(), "{bad:?}: {g}");
        }
    }
}
