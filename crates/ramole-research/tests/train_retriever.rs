//! Contrastive training of the retriever: the InfoNCE loss against hand-computed values, a tiny model
//! whose loss goes down, and a real one-step run on all-MiniLM-L6-v2 whose saved encoder loads back.

use std::path::Path;

use burn::optim::AdamConfig;
use burn::tensor::{Tensor, TensorData};
use ramole_core::backend::{Selected, SelectedAutodiff, device};
use ramole_models::bert::{BertConfig, BertModel};
use ramole_models::bert::{BertLinear, BertLora};
use ramole_research::tasks::{Domain, Suite, SuiteConfig, build_suite};
use ramole_research::train_retriever::{
    Negatives, Pair, TrainConfig, Tuning, batch_loss, domain_info_nce, info_nce, train_epoch, train_epoch_lora,
    train_retriever,
};
use ramole_retriever::SentenceEncoder;
use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::{Dtype, tensor::TensorView};

fn matrix(rows: &[[f32; 2]]) -> Tensor<Selected, 2> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 2]), &device())
}

fn scalar(t: Tensor<Selected, 1>) -> f64 {
    f64::from(t.into_data().iter::<f32>().next().expect("one value"))
}

#[test]
fn train_info_nce_matches_hand_computed_values() {
    let q = || matrix(&[[1.0, 0.0], [0.0, 1.0]]);
    let p = || matrix(&[[1.0, 0.0], [0.6, 0.8]]);
    // Row 0: logits [1, 0.6] -> ln(1 + e^-0.4); row 1: logits [0, 0.8] -> ln(1 + e^-0.8).
    let expected_t1 = ((1.0 + (-0.4f64).exp()).ln() + (1.0 + (-0.8f64).exp()).ln()) / 2.0;
    assert!((expected_t1 - 0.442_057_959).abs() < 1e-8);
    assert!((scalar(info_nce(q(), p(), None, 1.0)) - expected_t1).abs() < 1e-5);
    // Temperature 0.5 doubles the logits: ln(1 + e^-0.8) and ln(1 + e^-1.6).
    let expected_t05 = ((1.0 + (-0.8f64).exp()).ln() + (1.0 + (-1.6f64).exp()).ln()) / 2.0;
    assert!((scalar(info_nce(q(), p(), Some(&[0, 1]), 0.5)) - expected_t05).abs() < 1e-5);
    // Both pairs of one task: the other positive is no negative, each query only sees its own.
    assert!(scalar(info_nce(q(), p(), Some(&[3, 3]), 1.0)).abs() < 1e-5);
}

fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
    }
}

/// A random checkpoint (config.json + model.safetensors) in `dir`; LayerNorm weights are 1, biases 0.
fn random_checkpoint(dir: &Path, c: &BertConfig) {
    let shapes = c.weight_shapes();
    let mut seed = 7u64;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let u = (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5;
                    match () {
                        _ if n.ends_with("LayerNorm.weight") => 1.0,
                        _ if n.ends_with("bias") => 0.0,
                        _ => u * 0.4,
                    }
                })
                .collect();
            (n, s, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("view"))).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("weights");
    std::fs::write(dir.join("config.json"), serde_json::to_string(c).expect("json")).expect("config");
}

/// 4 tasks × 8 pairs; task k's texts use tokens 4 + 8k .. 4 + 8k + 8, between `[CLS]` = 1 and `[SEP]` = 2.
fn synthetic_pairs() -> Vec<Pair> {
    let mut pairs = Vec::new();
    for task in 0..4u32 {
        let base = 4 + 8 * task;
        for i in 0..8u32 {
            let query = vec![1, base + i % 8, base + (i + 3) % 8, base + (i + 5) % 8, 2];
            let positive = vec![1, base + (i + 1) % 8, base + (i + 6) % 8, 2];
            pairs.push(Pair { query, positive, task: task as usize, domain: Domain::ReadingComprehension });
        }
    }
    pairs
}

#[test]
fn train_tiny_model_loss_decreases() {
    let tmp = tempfile::tempdir().expect("tempdir");
    random_checkpoint(tmp.path(), &tiny_config());
    let dev = device();
    let mut model = BertModel::<SelectedAutodiff>::load(tmp.path(), &dev).expect("tiny model");
    let pairs = synthetic_pairs();
    let cfg = TrainConfig {
        lr: 1e-2,
        temperature: 0.1,
        batch_size: 8,
        negatives: Negatives::OtherTasks,
        domain_weight: 0.0,
        ..TrainConfig::default()
    };
    let full_loss = |m: &BertModel<SelectedAutodiff>| {
        f64::from(batch_loss(m, &pairs, &cfg, &dev).expect("loss").into_data().iter::<f32>().next().expect("loss"))
    };
    let before = full_loss(&model);
    let mut optim = AdamConfig::new().init::<SelectedAutodiff, BertModel<SelectedAutodiff>>();
    let mut rng = StdRng::seed_from_u64(1);
    let mut steps = 0;
    for _ in 0..6 {
        let (next, losses) = train_epoch(model, &mut optim, pairs.clone(), &cfg, &mut rng, &dev).expect("epoch");
        model = next;
        assert!(losses.iter().all(|l| l.is_finite()));
        steps += losses.len();
    }
    let after = full_loss(&model);
    assert_eq!(steps, 6 * 4, "32 pairs in batches of 8");
    eprintln!("tiny model: loss {before:.4} -> {after:.4} after {steps} steps");
    assert!(after < 0.5 * before, "loss {before} -> {after}");
}

/// The loss masks same-domain negatives under `Negatives::OtherDomains` (what `info_nce` gives with domain
/// groups, and lower than with every other task as a negative), and bad token ids are an error, not a panic.
#[test]
fn train_batch_loss_masks_negatives_by_domain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = tiny_config();
    random_checkpoint(tmp.path(), &c);
    let dev = device();
    let model = BertModel::<Selected>::load(tmp.path(), &dev).expect("tiny model");
    // Tasks 0 and 1 share a domain, tasks 2 and 3 another; two pairs of each task.
    let pairs: Vec<Pair> = synthetic_pairs()
        .into_iter()
        .filter(|p| p.query[1] % 8 < 2)
        .map(|p| Pair { domain: if p.task < 2 { Domain::ReadingComprehension } else { Domain::Arithmetic }, ..p })
        .collect();
    assert_eq!(pairs.len(), 8);
    let loss = |negatives| {
        let cfg = TrainConfig { temperature: 0.1, negatives, domain_weight: 0.0, ..TrainConfig::default() };
        scalar(batch_loss(&model, &pairs, &cfg, &dev).expect("loss"))
    };
    let (tasks, domains) = (loss(Negatives::OtherTasks), loss(Negatives::OtherDomains));
    let ids: Vec<Vec<u32>> =
        pairs.iter().map(|p| p.query.clone()).chain(pairs.iter().map(|p| p.positive.clone())).collect();
    let emb = ramole_retriever::encoder::mean_pool(&model, &ids, 64, &dev).expect("embed");
    let groups: Vec<usize> = pairs.iter().map(|p| p.domain as usize).collect();
    let expected = scalar(info_nce(emb.clone().narrow(0, 0, 8), emb.narrow(0, 8, 8), Some(&groups), 0.1));
    assert!((domains - expected).abs() < 1e-5, "{domains} vs {expected}");
    assert!(domains < tasks, "fewer negatives must lower the loss: {domains} vs {tasks}");
    assert_eq!("other-domains".parse::<Negatives>().expect("parse"), Negatives::OtherDomains);
    assert_eq!(Negatives::OtherTasks.to_string().parse::<Negatives>().expect("parse"), Negatives::OtherTasks);
    assert!("domains".parse::<Negatives>().is_err());
    // An id outside the 40-token vocabulary, or a text over `max_seq_len`, is refused.
    let bad = vec![Pair { query: vec![1, 40, 2], ..pairs[0].clone() }, pairs[1].clone()];
    assert!(batch_loss(&model, &bad, &TrainConfig::default(), &dev).is_err());
    let short = TrainConfig { max_seq_len: 4, ..TrainConfig::default() };
    assert!(batch_loss(&model, &pairs, &short, &dev).is_err(), "queries have 5 tokens");
}

/// One real step on all-MiniLM-L6-v2 (3 tasks, 2 pairs each); the saved folder loads back with the
/// trained weights.
#[test]
fn train_real_minilm_step_saves_a_loadable_encoder() {
    let cache = ramole_assets::AssetCache::from_env().expect("cache");
    let model_dir = cache.minilm_dir().expect("minilm");
    let tmp = tempfile::tempdir().expect("tempdir");
    let suite_dir = tmp.path().join("suite");
    let tasks = SuiteConfig::default()
        .tasks
        .into_iter()
        .filter(|t| ["addition", "plural", "second_letter", "qa_wikidata"].contains(&t.name.as_str()))
        .collect();
    build_suite(&suite_dir, &SuiteConfig { tasks, ..SuiteConfig::default() }).expect("suite");
    let suite = Suite::load(&suite_dir).expect("load suite");
    let encoder = SentenceEncoder::<SelectedAutodiff>::load(&model_dir, &device()).expect("encoder");
    let probe = ["What is 12 plus 30?", "This is a cat. Now there is another one. There are two"];
    let before: Vec<f32> = encoder.encode(&probe).expect("encode").into_data().iter::<f32>().collect();
    let cfg = TrainConfig {
        epochs: 1,
        pairs_per_task: 2,
        batch_size: 6,
        max_seq_len: 24,
        lr: 1e-4,
        ..TrainConfig::default()
    };
    let mut seen = Vec::new();
    let base_identity = encoder.identity().to_owned();
    let (trained, report) = train_retriever(&suite, encoder, &cfg, &mut |e| seen.push(e.clone())).expect("train");
    assert_eq!(cfg.tuning, Tuning::Lora { rank: 8, alpha: 16.0 }, "the default trains a LoRA");
    let lora = trained.lora.as_ref().expect("a LoRA");
    assert_eq!(lora.pairs.len(), 6 * 6, "every linear layer of the 6 layers");
    let trained_encoder = trained.encoder;
    assert_eq!(report.train_tasks, ["addition", "plural", "qa_wikidata"], "second_letter is held out");
    assert_eq!(report.held_out, ["second_letter"]);
    assert_eq!(seen, report.epochs);
    assert_eq!((report.epochs[0].pairs, report.epochs[0].steps), (6, 1));
    assert!(report.epochs[0].first_loss.is_finite());
    let after: Vec<f32> = trained_encoder.encode(&probe).expect("encode").into_data().iter::<f32>().collect();
    assert!(before.iter().zip(&after).any(|(a, b)| (a - b).abs() > 1e-6), "the step changed the encoder");

    let out = tmp.path().join("trained");
    ramole_retriever::EncoderAdapter::save(&out, lora, 16.0, &base_identity, &cfg.instruction, &[], false)
        .expect("save adapter");
    let adapter = ramole_retriever::EncoderAdapter::load(&out).expect("load adapter");
    let loaded = SentenceEncoder::<Selected>::load(&model_dir, &device())
        .expect("base")
        .with_adapter(&adapter)
        .expect("apply the trained adapter");
    let reloaded: Vec<f32> = loaded.encode(&probe).expect("encode").into_data().iter::<f32>().collect();
    let max_diff = after.iter().zip(&reloaded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "saved encoder differs from the trained one by {max_diff}");
}

#[test]
fn train_domain_info_nce_matches_hand_computed_values() {
    // Three unit queries and positives; tasks 0 and 1 share a domain, task 2 is alone in its own.
    let q = || matrix(&[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]);
    let p = || matrix(&[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]);
    let tasks = [(0, Domain::ReadingComprehension), (1, Domain::ReadingComprehension), (2, Domain::Arithmetic)];
    let logits = [[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.6, 0.8, 1.0]];
    let log_softmax = |row: [f64; 3], j: usize| row[j] - row.iter().map(|v| v.exp()).sum::<f64>().ln();
    // λ = 0.25: rows 0 and 1 put 0.75 on their own positive and 0.25 on each other's; row 2 all on its own.
    let expected = -((0.75 * log_softmax(logits[0], 0) + 0.25 * log_softmax(logits[0], 1))
        + (0.75 * log_softmax(logits[1], 1) + 0.25 * log_softmax(logits[1], 0))
        + log_softmax(logits[2], 2))
        / 3.0;
    let got = scalar(domain_info_nce(q(), p(), &tasks, 0.25, 1.0));
    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    // λ = 0 is InfoNCE with every other task as a negative.
    let plain = scalar(info_nce(q(), p(), Some(&[0, 1, 2]), 1.0));
    assert!((scalar(domain_info_nce(q(), p(), &tasks, 0.0, 1.0)) - plain).abs() < 1e-6);
    // Another pair of the query's own task is masked (neither negative nor target); no mate of another
    // task in the domain leaves the whole target on the own positive.
    let same = [(0, Domain::ReadingComprehension), (0, Domain::ReadingComprehension), (2, Domain::Arithmetic)];
    let two = |own: f64, other: f64| -(own - (own.exp() + other.exp()).ln());
    let expected_masked = (two(1.0, 0.6) + two(1.0, 0.8) - log_softmax(logits[2], 2)) / 3.0;
    let masked = scalar(domain_info_nce(q(), p(), &same, 0.25, 1.0));
    assert!((masked - expected_masked).abs() < 1e-5, "{masked} vs {expected_masked}");
    // A bad setting is refused by name.
    for (cfg, name) in [
        (TrainConfig { domain_weight: 1.0, ..TrainConfig::default() }, "domain weight"),
        (TrainConfig { tuning: Tuning::Lora { rank: 0, alpha: 16.0 }, ..TrainConfig::default() }, "rank"),
        (TrainConfig { tuning: Tuning::Lora { rank: 8, alpha: f64::NAN }, ..TrainConfig::default() }, "alpha"),
    ] {
        let err = cfg.validate().expect_err(name);
        assert!(err.to_string().contains(name), "{err}");
    }
}

/// A LoRA on a frozen tiny model: it starts as the identity update (B = 0), its loss goes down, and
/// the base's weights stay as they were.
#[test]
fn train_tiny_lora_loss_decreases_and_leaves_the_base_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = tiny_config();
    random_checkpoint(tmp.path(), &c);
    let dev = device();
    let base = BertModel::<SelectedAutodiff>::load(tmp.path(), &dev).expect("tiny model");
    let frozen: Vec<f32> =
        base.encoder.layer[0].attention.self_attention.query.weight.val().into_data().iter::<f32>().collect();
    let mut k = 0u64;
    let lora = BertLora::<SelectedAutodiff>::new(
        &c,
        &BertLinear::ALL,
        4,
        2.0,
        |d_in| {
            k = k.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((k >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 / (d_in as f32).sqrt()
        },
        &dev,
    );
    let pairs = synthetic_pairs();
    let cfg = TrainConfig {
        lr: 1e-2,
        temperature: 0.1,
        batch_size: 8,
        negatives: Negatives::OtherTasks,
        domain_weight: 0.0,
        ..TrainConfig::default()
    };
    let loss_of = |m: &BertModel<SelectedAutodiff>| {
        f64::from(batch_loss(m, &pairs, &cfg, &dev).expect("loss").into_data().iter::<f32>().next().expect("loss"))
    };
    let before = loss_of(&base);
    assert!((loss_of(&lora.merge(&base).expect("merge")) - before).abs() < 1e-6, "B = 0: the base's loss");
    let mut optim = AdamConfig::new().init::<SelectedAutodiff, BertLora<SelectedAutodiff>>();
    let mut rng = StdRng::seed_from_u64(1);
    let mut lora = lora;
    for _ in 0..20 {
        let (next, losses) =
            train_epoch_lora(lora, &base, &mut optim, pairs.clone(), &cfg, &mut rng, &dev).expect("epoch");
        lora = next;
        assert!(losses.iter().all(|l| l.is_finite()));
    }
    let after = loss_of(&lora.merge(&base).expect("merge"));
    eprintln!("tiny LoRA: loss {before:.4} -> {after:.4}");
    assert!(after < 0.7 * before, "loss {before} -> {after}");
    let still: Vec<f32> =
        base.encoder.layer[0].attention.self_attention.query.weight.val().into_data().iter::<f32>().collect();
    assert_eq!(frozen, still, "the base is frozen");
}
