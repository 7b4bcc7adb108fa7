//! LoRA training on the tiny Llama fixture: gradients against finite differences, the loss going
//! down, determinism for a seed, and the saved PEFT folder loading back into the serving path with
//! the same outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use ramole_core::backend::{Selected, SelectedAutodiff, device};
use ramole_core::lora::LoraFactors;
use ramole_models::CausalLm;
use ramole_models::llama::{AttentionInput, KvCache, LinearKind, LlamaConfig, LlamaForCausalLM};
use ramole_mole::peft::AdapterDtype;
use ramole_mole::train::{self, LoraTrainConfig, TokenizedExample, TrainLength, TrainableLora};
use ramole_mole::{AdapterPool, BatchAdapters, LoraAdapter, MoleError, RowRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/base")
}

/// Examples of a learnable task on the tiny vocabulary: the target repeats the input's last token
/// shifted by one.
fn examples(n: usize, seed: u64) -> Vec<TokenizedExample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(3..9);
            let input: Vec<u32> = (0..len).map(|_| rng.random_range(10..200)).collect();
            let last = input[input.len() - 1];
            let (e, _) = TokenizedExample::new(&input, &[last + 1, last + 2], 2, 32).expect("fits");
            e
        })
        .collect()
}

/// Random factors for every q and v layer (B non-zero, so that every gradient is informative).
fn random_factors(config: &LlamaConfig, rank: usize, seed: u64) -> BTreeMap<(usize, LinearKind), LoraFactors> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for layer in 0..config.num_hidden_layers {
        for kind in [LinearKind::Q, LinearKind::V] {
            let [d_out, d_in] = config.linear_shape(kind);
            let mut v = |n: usize| (0..n).map(|_| rng.random_range(-0.3f32..0.3)).collect::<Vec<_>>();
            out.insert(
                (layer, kind),
                LoraFactors { a: v(rank * d_in), b: v(d_out * rank), rank, scale: 2.0, proto: None },
            );
        }
    }
    out
}

#[test]
fn lora_gradients_match_finite_differences() {
    let dev = device();
    let lm = CausalLm::<SelectedAutodiff>::load(tiny(), &dev).expect("tiny llama");
    let model = lm.model.no_grad();
    let factors = random_factors(&lm.config, 4, 7);
    let data = examples(4, 11);
    let batch: Vec<&TokenizedExample> = data.iter().collect();
    let lora = TrainableLora::<SelectedAutodiff>::from_factors(&factors, 2.0, &dev);
    let out = train::batch_loss(&model, &lora, &batch, &dev);
    let grads = out.loss.backward();
    // The base is frozen: no gradient for any of its weights.
    for layer in &model.model.layers {
        for w in [&layer.self_attn.q_proj, &layer.self_attn.v_proj, &layer.mlp.down_proj] {
            let w = w.dense().expect("training loads dense weights");
            assert!(w.grad(&grads).is_none(), "a frozen base weight got a gradient");
        }
    }
    let head = model.lm_head.dense().expect("dense");
    let embed = model.model.embed_tokens.dense().expect("dense");
    assert!(head.grad(&grads).is_none() && embed.grad(&grads).is_none());

    // The loss on the plain backend for perturbed factors.
    let plain: LlamaForCausalLM<Selected> = CausalLm::<Selected>::load(tiny(), &dev).expect("tiny llama").model;
    let loss_at = |f: &BTreeMap<(usize, LinearKind), LoraFactors>| -> f64 {
        let l = TrainableLora::<Selected>::from_factors(f, 2.0, &dev);
        let v: Vec<f32> = train::batch_loss(&plain, &l, &batch, &dev).loss.into_data().iter::<f32>().collect();
        f64::from(v[0])
    };
    let mut checked = 0;
    for (i, lin) in lora.linears.iter().enumerate() {
        let key = (lin.layer, lin.kind());
        for (side, param) in [(0, &lin.lora_a), (1, &lin.lora_b)] {
            let g: Vec<f32> =
                param.grad(&grads).expect("a gradient for every factor").into_data().iter::<f32>().collect();
            // The entry with the largest gradient, where a finite difference is well above f32 noise.
            let (j, &gj) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).expect("non-empty");
            assert!(gj.abs() > 1e-4, "linear {i} side {side}: gradient {gj} too small to check");
            let eps = 1e-2f32;
            let plus = perturbed(&factors, key, side, j, eps);
            let minus = perturbed(&factors, key, side, j, -eps);
            let fd = (loss_at(&plus) - loss_at(&minus)) / (2.0 * f64::from(eps));
            let rel = (fd - f64::from(gj)).abs() / f64::from(gj.abs());
            assert!(rel < 0.03, "linear {i} side {side} entry {j}: autodiff {gj}, finite difference {fd} (rel {rel})");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * lora.linears.len());
}

/// `factors` with entry `j` of side `side` (0: A, 1: B) of layer `key` moved by `d`.
fn perturbed(
    factors: &BTreeMap<(usize, LinearKind), LoraFactors>,
    key: (usize, LinearKind),
    side: usize,
    j: usize,
    d: f32,
) -> BTreeMap<(usize, LinearKind), LoraFactors> {
    let mut out = factors.clone();
    if let Some(f) = out.get_mut(&key) {
        if side == 0 {
            f.a[j] += d;
        } else {
            f.b[j] += d;
        }
    }
    out
}

fn quick_config(steps: usize) -> LoraTrainConfig {
    LoraTrainConfig {
        rank: 4,
        alpha: 8.0,
        length: TrainLength::Steps(steps),
        batch_size: 4,
        lr: 1e-2,
        max_len: 32,
        seed: 3,
        ..LoraTrainConfig::default()
    }
}

#[test]
fn training_lowers_the_loss_is_deterministic_and_round_trips_through_peft() {
    let dev = device();
    let lm = CausalLm::<SelectedAutodiff>::load(tiny(), &dev).expect("tiny llama");
    let data = examples(24, 5);
    let cfg = quick_config(40);
    let mut seen = 0;
    let (lora, report) =
        train::train_lora(lm.model.clone(), &lm.config, &data, 0, &cfg, &dev, &mut |s| seen = s.step).expect("trains");
    assert_eq!((seen, report.steps, report.losses.len()), (40, 40, 40));
    let (first, last) = report.loss_ends(5);
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(report.tokens > 0 && report.tokens_per_sec() > 0.0);

    // Same seed, same adapter, bit for bit.
    let (again, _) =
        train::train_lora(lm.model.clone(), &lm.config, &data, 0, &cfg, &dev, &mut |_| {}).expect("trains");
    assert_eq!(lora.factors(), again.factors());
    // Another seed, another adapter.
    let other_cfg = LoraTrainConfig { seed: 4, ..cfg.clone() };
    let (other, _) =
        train::train_lora(lm.model.clone(), &lm.config, &data, 0, &other_cfg, &dev, &mut |_| {}).expect("trains");
    assert_ne!(lora.factors(), other.factors());

    // Saved as PEFT, loaded by the serving loader: same factors, and the serving path computes what
    // the training forward computes.
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("adapter");
    lora.save(&out, &cfg, "tiny-llama", AdapterDtype::F32, &[], false).expect("saved");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).expect("config")).expect("json");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["base_model_name_or_path"], "tiny-llama");
    let loaded = LoraAdapter::load("trained", &out, &lm.config).expect("loads");
    for (&(layer, kind), f) in &lora.factors() {
        // Loading also computes each layer's Arrow prototype.
        assert_eq!(loaded.factors(layer, kind), Some(&f.clone().with_prototype()), "layer {layer} {kind}");
    }
    assert_eq!(loaded.targets().count(), 2 * lm.config.num_hidden_layers);

    let plain = CausalLm::<Selected>::load(tiny(), &dev).expect("tiny llama");
    let mut pool = AdapterPool::new(plain.config.clone());
    pool.add("trained", &out).expect("pool");
    let rows = [RowRequest { adapters: vec![("trained".into(), 1.0)], ..Default::default() }];
    let serving = BatchAdapters::resolve(&pool, &rows, &["r"])
        .expect("resolve")
        .llama_lora::<Selected>(&plain.config, &dev)
        .expect("lora");
    let ids: Vec<i64> = data[0].ids.iter().map(|&t| i64::from(t)).collect();
    let t = ids.len();
    let hidden = |lora: &ramole_models::llama::LlamaLora<Selected>| -> Vec<f32> {
        let tokens = Tensor::<Selected, 2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), &dev);
        let attn = AttentionInput::left_padded(&[0], 0, t, &dev);
        plain
            .model
            .forward(tokens, &attn, &mut KvCache::new(plain.model.n_layers()), Some(lora))
            .into_data()
            .iter::<f32>()
            .collect()
    };
    let a = hidden(&serving);
    let b = hidden(&lora.llama_lora(plain.model.n_layers(), 1));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max < 1e-5, "serving vs training forward differ by {max}");

    // The f16 form loads too, within f16 rounding.
    let out16 = dir.path().join("adapter16");
    lora.save(&out16, &cfg, "tiny-llama", AdapterDtype::F16, &[], false).expect("saved");
    let loaded16 = LoraAdapter::load("t16", &out16, &lm.config).expect("loads");
    let (f32s, f16s) = (loaded.factors(0, LinearKind::Q).expect("q"), loaded16.factors(0, LinearKind::Q).expect("q"));
    let max = f32s.a.iter().zip(&f16s.a).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max > 0.0 && max < 1e-3, "f16 rounding {max}");

    // An existing folder is refused unless asked to overwrite; nothing is changed by the refusal.
    let before = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    let err = other.save(&out, &cfg, "tiny-llama", AdapterDtype::F32, &[], false).expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).expect("read"), before);
    other.save(&out, &cfg, "tiny-llama", AdapterDtype::F32, &[], true).expect("overwrite");
    assert_ne!(std::fs::read(out.join("adapter_model.safetensors")).expect("read"), before);
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).expect("ls").filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary folder left: {leftovers:?}");
}

#[test]
fn a_diverging_run_is_an_error_and_bad_input_is_refused() {
    let dev = device();
    let lm = CausalLm::<SelectedAutodiff>::load(tiny(), &dev).expect("tiny llama");
    let data = examples(8, 1);
    let cfg = LoraTrainConfig { lr: 1e30, ..quick_config(20) };
    let err = train::train_lora(lm.model.clone(), &lm.config, &data, 0, &cfg, &dev, &mut |_| {}).expect_err("diverges");
    assert!(matches!(err, MoleError::Training(ref m) if m.contains("nothing was written")), "{err}");

    let out_of_vocab = vec![TokenizedExample { ids: vec![1, 600, 2], prompt_len: 1 }];
    let err = train::train_lora(lm.model.clone(), &lm.config, &out_of_vocab, 0, &quick_config(1), &dev, &mut |_| {})
        .expect_err("vocab");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = train::train_lora(lm.model, &lm.config, &[], 0, &quick_config(1), &dev, &mut |_| {}).expect_err("empty");
    assert!(err.to_string().contains("no training example"), "{err}");
}

#[test]
fn training_files_with_bad_records_are_refused_with_their_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("{\"input\": \"a\", \"target\": \"\"}\n", "line 1: empty `target`"),
        ("{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": \"a\"}\n", "line 2"),
        ("\n\n", "no training record"),
        ("[1, 2]\n", "line 1"),
    ];
    for (text, expected) in cases {
        let p = dir.path().join("data.jsonl");
        std::fs::write(&p, text).expect("write");
        let err = train::read_train_jsonl(&p).expect_err(text);
        assert!(err.to_string().contains(expected) && err.to_string().contains("data.jsonl"), "{text:?}: {err}");
    }
    let p = dir.path().join("ok.jsonl");
    std::fs::write(&p, "\u{feff}{\"input\": \"Plural of mouse:\", \"target\": \"mice\", \"extra\": 1}\n")
        .expect("write");
    let data = train::read_train_jsonl(&p).expect("BOM and extra fields are fine");
    assert_eq!(data.records.len(), 1);
    assert_eq!(data.sha256.len(), 64);
}
