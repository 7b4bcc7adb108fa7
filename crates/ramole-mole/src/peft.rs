//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ramole_core::lora::LoraFactors;
use ramole_models::llama::{LinearKind, LlamaConfig};
use ramole_models::weights::{SafetensorsWeights, WeightSource};
use serde_json::Value;

use crate::MoleError;

/// The largest `adapter_config.json` read.
const MAX_ADAPTER_CONFIG_BYTES: u64 = 16 << 20;
/// The largest LoRA rank accepted.
pub const MAX_RANK: usize = 1 << 16;

/// The largest scale `s` (`lora_alpha / r`, or `/ √r` with rsLoRA) accepted: LoRAs in use have scales of
/// about 0.1 to 64; beyond this the update cannot be a trained one and would only overflow activations.
pub const MAX_SCALE: f64 = 4096.0;

/// The largest Frobenius norm of one layer's update `s · B · A` accepted (bounded from the factors as
/// `|s| · ‖B‖ · ‖A‖`, which is at least the update's norm): trained LoRAs stay far below (tens at most), and
/// an update this large would turn every activation it touches into infinities.
pub const MAX_UPDATE_NORM: f64 = 1e5;

/// The parts of `adapter_config.json` that determine the computation.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// rsLoRA scaling (`alpha / √r` instead of `alpha / r`).
    pub use_rslora: bool,
    /// The modules named by `target_modules` (a list; a single string, a pattern, is not kept). The weights
    /// must adapt exactly these modules when the list is given ([`LoraAdapter::load`] checks it).
    pub target_modules: Vec<String>,
}

impl AdapterConfig {
    /// The scale `s` of the adapter's update.
    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        (if self.use_rslora { self.lora_alpha / r.sqrt() } else { self.lora_alpha / r }) as f32
    }

    /// Parses and validates `adapter_config.json`, refusing options this implementation does not
    /// compute (rather than silently ignoring them). Only a regular file of at most 16 MiB is read (a
    /// FIFO or a device is refused before it is opened).
    pub fn from_file(path: &Path) -> Result<Self, MoleError> {
        let text = ramole_core::fs::read_text(path, MAX_ADAPTER_CONFIG_BYTES)
            .map_err(|source| MoleError::Io { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates the text of an `adapter_config.json` (what [`Self::from_file`] does after
    /// reading it); `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, MoleError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| MoleError::Config { path: path.into(), message: format!("not valid JSON: {e}") })?;
        if !v.is_object() {
            return Err(MoleError::Config { path: path.into(), message: "not a JSON object".into() });
        }
        Self::from_json(&v, path)
    }

    fn from_json(v: &Value, path: &Path) -> Result<Self, MoleError> {
        let config = |message: String| MoleError::Config { path: path.into(), message };
        let unsupported =
            |option: &str, detail: String| MoleError::Unsupported { path: path.into(), option: option.into(), detail };
        match v.get("peft_type").and_then(Value::as_str) {
            Some("LORA") | None => {}
            Some(other) => return Err(unsupported("peft_type", format!("`{}` (only LORA)", short(other)))),
        }
        // Options that change the computation and that we do not implement.
        let flags = ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora", "use_bdlora"];
        for flag in flags {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(flag, "true".into()));
            }
        }
        if let Some(b) = v.get("bias").and_then(Value::as_str)
            && b != "none"
        {
            return Err(unsupported("bias", format!("`{}` (only `none`)", short(b))));
        }
        let non_empty = |x: &Value| match x {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        for opt in [
            "modules_to_save",
            "rank_pattern",
            "alpha_pattern",
            "layer_replication",
            "trainable_token_indices",
            "target_parameters",
            "alora_invocation_tokens",
            "arrow_config",
        ] {
            if let Some(x) = v.get(opt).filter(|x| non_empty(x)) {
                return Err(unsupported(opt, short(&x.to_string())));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| config("missing or invalid `r` (a positive integer)".into()))?;
        let r = usize::try_from(r)
            .ok()
            .filter(|&r| r <= MAX_RANK)
            .ok_or_else(|| config(format!("`r` {r} is over the limit of {MAX_RANK}")))?;
        let lora_alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .filter(|a| a.is_finite())
            .ok_or_else(|| config("missing or invalid `lora_alpha`".into()))?;
        let use_rslora = v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let scale = if use_rslora { lora_alpha / (r as f64).sqrt() } else { lora_alpha / r as f64 };
        if scale.abs() > MAX_SCALE {
            return Err(config(format!(
                "`lora_alpha` {lora_alpha} with `r` {r} gives the scale {scale:e}, beyond the limit of {MAX_SCALE}"
            )));
        }
        let target_modules = match v.get("target_modules") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => vec![],
        };
        Ok(Self { r, lora_alpha, use_rslora, target_modules })
    }
}

/// A LoRA adapter loaded on the host and checked against a base model.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    name: String,
    dir: PathBuf,
    config: AdapterConfig,
    layers: BTreeMap<(usize, LinearKind), LoraFactors>,
}

impl LoraAdapter {
    /// Loads the PEFT adapter in `dir` for a base model with configuration `base`.
    ///
    /// Every tensor must be the `lora_A` / `lora_B` of a Llama linear layer the base model has, with
    /// shapes `[r, d_in]` / `[d_out, r]`, finite values, and each A paired with its B.
    pub fn load(name: &str, dir: impl AsRef<Path>, base: &LlamaConfig) -> Result<Self, MoleError> {
        let dir = dir.as_ref();
        let config = AdapterConfig::from_file(&dir.join("adapter_config.json"))?;
        let path = dir.join("adapter_model.safetensors");
        let weights = SafetensorsWeights::open(&path)?;
        let tensor_err =
            |tensor: &str, message: String| MoleError::Tensor { path: path.clone(), tensor: tensor.into(), message };
        let mut halves: BTreeMap<(usize, LinearKind), [Option<Vec<f32>>; 2]> = BTreeMap::new();
        for key in weights.names() {
            let (module, side) = split_key(&key)
                .ok_or_else(|| tensor_err(&key, "not a lora_A/lora_B weight (unsupported adapter tensor)".into()))?;
            let (layer, kind) = LinearKind::parse_path(module)
                .ok_or_else(|| tensor_err(&key, format!("module `{module}` is not a linear layer of a Llama block")))?;
            if layer >= base.num_hidden_layers {
                return Err(tensor_err(
                    &key,
                    format!("layer {layer} does not exist (the base model has {})", base.num_hidden_layers),
                ));
            }
            let [d_out, d_in] = base.linear_shape(kind);
            let r = config.r;
            let shape = if side == 0 { [r, d_in] } else { [d_out, r] };
            // The shape is checked before the data is converted.
            let declared = weights.shape(&key).ok_or_else(|| tensor_err(&key, "unreadable".into()))?;
            if declared != shape {
                return Err(tensor_err(
                    &key,
                    format!("shape {declared:?} does not fit the base model's {} (expected {shape:?})", kind.name()),
                ));
            }
            let t = weights.get(&key)?.ok_or_else(|| tensor_err(&key, "unreadable".into()))?;
            if t.shape != shape {
                return Err(tensor_err(&key, format!("data of shape {:?}, expected {shape:?}", t.shape)));
            }
            if t.data.iter().any(|x| !x.is_finite()) {
                return Err(tensor_err(&key, "holds non-finite values (NaN or Inf)".into()));
            }
            halves.entry((layer, kind)).or_default()[side] = Some(t.data);
        }
        let mut layers = BTreeMap::new();
        let frobenius = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        for ((layer, kind), [a, b]) in halves {
            let module = format!("model.layers.{layer}.{}", kind.path());
            let (Some(a), Some(b)) = (a, b) else {
                return Err(tensor_err(&module, "lora_A and lora_B must both be present".into()));
            };
            let bound = f64::from(config.scale()).abs() * frobenius(&a) * frobenius(&b);
            if bound.is_nan() || bound > MAX_UPDATE_NORM {
                return Err(tensor_err(
                    &module,
                    format!("the update s·B·A may reach a norm of {bound:e}, beyond the limit of {MAX_UPDATE_NORM:e}"),
                ));
            }
            layers.insert(
                (layer, kind),
                LoraFactors { a, b, rank: config.r, scale: config.scale(), proto: None }.with_prototype(),
            );
        }
        if layers.is_empty() {
            return Err(tensor_err("*", "the adapter holds no LoRA weights".into()));
        }
        // `target_modules` and the weights must agree: a module listed without weights, or weights of a
        // module not listed, is an adapter saved wrongly (or edited by hand).
        if !config.target_modules.is_empty() {
            let adapted: std::collections::BTreeSet<&str> = layers.keys().map(|(_, k)| k.name()).collect();
            // PEFT names modules by their last component (`q_proj`) or by a longer path ending in it.
            let listed: std::collections::BTreeSet<&str> =
                config.target_modules.iter().map(|t| t.rsplit('.').next().unwrap_or(t)).collect();
            if adapted != listed && !listed.contains("all-linear") {
                let config_path = dir.join("adapter_config.json");
                return Err(MoleError::Config {
                    path: config_path,
                    message: format!("`target_modules` lists {listed:?} but the weights adapt {adapted:?}",),
                });
            }
        }
        Ok(Self { name: name.into(), dir: dir.into(), config, layers })
    }

    /// The adapter's name in the pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its configuration.
    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// Its factors for one linear layer, if it adapts that layer.
    pub fn factors(&self, layer: usize, kind: LinearKind) -> Option<&LoraFactors> {
        self.layers.get(&(layer, kind))
    }

    /// The linear layers it adapts.
    pub fn targets(&self) -> impl Iterator<Item = (usize, LinearKind)> + '_ {
        self.layers.keys().copied()
    }
}

/// The precision in which [`write_adapter`] stores the factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterDtype {
    /// 32-bit floats (exact).
    #[default]
    F32,
    /// 16-bit floats (half the size; what a shipped zoo uses).
    F16,
}

/// The PEFT key of one factor: `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`.
pub fn peft_key(layer: usize, kind: LinearKind, side: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{side}.weight", kind.path())
}

/// Writes a PEFT LoRA folder that `PeftModel.from_pretrained` loads: `adapter_config.json`
/// (`peft_type`, `task_type`, `base_model_name_or_path`, `r`, `lora_alpha`, `target_modules`, …) and
/// `adapter_model.safetensors` with PEFT's key names, plus `extra` files (name, bytes).
///
/// The folder appears whole or not at all: everything is written into a temporary sibling folder
/// that is renamed into place. An existing `dir` is refused unless `overwrite`, in which case it is
/// replaced (the old folder is moved aside first and removed after the new one is in place).
pub fn write_adapter(
    dir: &Path,
    config: &AdapterConfig,
    base_model: &str,
    factors: &BTreeMap<(usize, LinearKind), LoraFactors>,
    dtype: AdapterDtype,
    extra: &[(&str, Vec<u8>)],
    overwrite: bool,
) -> Result<(), MoleError> {
    // Refused before any work; `write_folder` checks again when it publishes.
    if std::fs::symlink_metadata(dir).is_ok() && !overwrite {
        return Err(MoleError::Io {
            path: dir.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists (give --force to replace it)",
            ),
        });
    }
    let mut targets: Vec<&str> = factors.keys().map(|(_, k)| k.name()).collect();
    targets.sort_unstable();
    targets.dedup();
    let json = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": config.use_rslora,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "peft_version": "0.21.2",
    });
    let config_bytes = serde_json::to_vec_pretty(&json).map_err(|e| MoleError::Training(e.to_string()))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(2 * factors.len());
    for (&(layer, kind), f) in factors {
        let d_in = f.a.len() / f.rank.max(1);
        let d_out = f.b.len() / f.rank.max(1);
        let bytes = |v: &[f32]| -> Vec<u8> {
            match dtype {
                AdapterDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                AdapterDtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            }
        };
        tensors.push((peft_key(layer, kind, 'A'), vec![f.rank, d_in], bytes(&f.a)));
        tensors.push((peft_key(layer, kind, 'B'), vec![d_out, f.rank], bytes(&f.b)));
    }
    let st_dtype = match dtype {
        AdapterDtype::F32 => safetensors::Dtype::F32,
        AdapterDtype::F16 => safetensors::Dtype::F16,
    };
    let views = tensors
        .iter()
        .map(|(k, shape, b)| safetensors::tensor::TensorView::new(st_dtype, shape.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MoleError::Training(format!("serialising the adapter: {e}")))?;
    let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    let weights = safetensors::serialize(views, metadata)
        .map_err(|e| MoleError::Training(format!("serialising the adapter: {e}")))?;
    let mut files: Vec<(&str, &[u8])> =
        vec![("adapter_config.json", &config_bytes), ("adapter_model.safetensors", &weights)];
    files.extend(extra.iter().map(|(n, b)| (*n, b.as_slice())));
    write_folder(dir, &files, overwrite)
}

/// [`ramole_core::fs::write_folder`], its error as [`MoleError::Io`].
pub(crate) fn write_folder(dir: &Path, files: &[(&str, &[u8])], overwrite: bool) -> Result<(), MoleError> {
    ramole_core::fs::write_folder(dir, files, overwrite).map_err(|(path, source)| MoleError::Io { path, source })
}

/// `text` cut to 200 bytes (at a character boundary) for an error message: values from a file may be huge.
fn short(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_string();
    }
    let cut = (0..=MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes)", text.get(..cut).unwrap_or_default(), text.len())
}

/// Splits `base_model.model.<module>.lora_A[.<adapter>].weight` into (`<module>`, 0 for A / 1 for B).
fn split_key(key: &str) -> Option<(&str, usize)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest.strip_suffix(".weight")?;
    for (marker, side) in [(".lora_A", 0), (".lora_B", 1)] {
        if let Some(pos) = rest.rfind(marker) {
            let tail = &rest[pos + marker.len()..];
            // `.lora_A` directly, or `.lora_A.<adapter name>` (older PEFT files)
            if tail.is_empty() || (tail.starts_with('.') && !tail[1..].contains('.')) {
                return Some((&rest[..pos], side));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_peft_keys() {
        assert_eq!(
            split_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj", 0))
        );
        assert_eq!(
            split_key("base_model.model.model.layers.3.mlp.down_proj.lora_B.default.weight"),
            Some(("model.layers.3.mlp.down_proj", 1))
        );
        assert_eq!(split_key("base_model.model.model.embed_tokens.lora_embedding_A"), None);
        assert_eq!(split_key("model.layers.0.self_attn.q_proj.lora_A.weight"), None);
    }

    #[test]
    fn scales() {
        let c = AdapterConfig { r: 4, lora_alpha: 8.0, use_rslora: false, target_modules: vec![] };
        assert_eq!(c.scale(), 2.0);
        let c = AdapterConfig { use_rslora: true, ..c };
        assert_eq!(c.scale(), 4.0);
    }

    #[test]
    fn refuses_unsupported_options() {
        let base = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "none"});
        let p = Path::new("adapter_config.json");
        assert!(AdapterConfig::from_json(&base, p).is_ok());
        for (k, v) in [
            ("use_dora", serde_json::json!(true)),
            ("modules_to_save", serde_json::json!(["lm_head"])),
            ("bias", serde_json::json!("all")),
            ("rank_pattern", serde_json::json!({"q_proj": 8})),
            ("alpha_pattern", serde_json::json!({"q_proj": 8})),
            ("fan_in_fan_out", serde_json::json!(true)),
            ("peft_type", serde_json::json!("IA3")),
        ] {
            let mut c = base.clone();
            c[k] = v;
            let err = AdapterConfig::from_json(&c, p).expect_err(k);
            assert!(matches!(&err, MoleError::Unsupported { option, .. } if option == k), "{k}: {err}");
        }
        let mut c = base.clone();
        c["r"] = serde_json::json!(0);
        assert!(matches!(AdapterConfig::from_json(&c, p), Err(MoleError::Config { .. })));
    }
}
