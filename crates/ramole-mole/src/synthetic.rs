//! Random PEFT adapters, for benchmarks and tests that need many adapters for a real base model.

use std::path::Path;

use ramole_models::llama::{LinearKind, LlamaConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, tensor::TensorView};

use crate::MoleError;

/// What a synthetic adapter looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticAdapter {
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Adapted linear layers (in every block).
    pub targets: Vec<LinearKind>,
    /// Standard deviation-like amplitude of the uniform random factors.
    pub amplitude: f32,
    /// Random seed.
    pub seed: u64,
}

impl SyntheticAdapter {
    /// Writes the adapter as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`, f32)
    /// for the base model `base`.
    pub fn write(&self, dir: &Path, base: &LlamaConfig) -> Result<(), MoleError> {
        let io = |path: &Path, source| MoleError::Io { path: path.into(), source };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for layer in 0..base.num_hidden_layers {
            for &kind in &self.targets {
                let [d_out, d_in] = base.linear_shape(kind);
                let module = format!("base_model.model.model.layers.{layer}.{}", kind.path());
                for (side, shape) in [("lora_A", vec![self.r, d_in]), ("lora_B", vec![d_out, self.r])] {
                    let n: usize = shape.iter().product();
                    let bytes = (0..n)
                        .flat_map(|_| (self.amplitude * (rng.random::<f32>() * 2.0 - 1.0)).to_le_bytes())
                        .collect();
                    tensors.push((format!("{module}.{side}.weight"), shape, bytes));
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(k, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MoleError::Config { path: dir.into(), message: e.to_string() })?;
        let weights = dir.join("adapter_model.safetensors");
        safetensors::serialize_to_file(views, None, &weights)
            .map_err(|e| MoleError::Config { path: weights.clone(), message: e.to_string() })?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "fan_in_fan_out": false,
            "target_modules": self.targets.iter().map(|k| k.name()).collect::<Vec<_>>(),
        });
        let path = dir.join("adapter_config.json");
        std::fs::write(&path, config.to_string()).map_err(|e| io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LoraAdapter;

    #[test]
    fn synthetic_adapters_load_back() {
        let base = LlamaConfig::from_hf_file(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/base/config.json"),
        )
        .expect("config");
        let dir = tempfile::tempdir().expect("tmp");
        let spec = SyntheticAdapter {
            r: 3,
            alpha: 6.0,
            targets: vec![LinearKind::K, LinearKind::Down],
            amplitude: 0.1,
            seed: 9,
        };
        spec.write(dir.path(), &base).expect("write");
        let a = LoraAdapter::load("x", dir.path(), &base).expect("load");
        assert_eq!(a.targets().count(), 2 * base.num_hidden_layers);
        let f = a.factors(1, LinearKind::Down).expect("down_proj of layer 1");
        assert_eq!((f.rank, f.scale), (3, 2.0));
        assert_eq!(f.a.len(), 3 * base.intermediate_size);
        assert!(f.a.iter().all(|v| v.abs() <= 0.1));
        assert!(a.factors(0, LinearKind::Q).is_none());
    }
}
