//! Regression tests for adapter folders holding files that are not what they claim to be: a FIFO or
//! a link to `/dev/zero` in place of `adapter_config.json` or `adapter_model.safetensors` (refused
//! before it is opened, so loading a pool neither blocks nor grows, even for an adapter no request
//! uses), a huge declared header, truncated data, and absurd dimensions. The bad adapter is reported
//! with a typed error naming its file; the others load.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ramole_models::ModelError;
use ramole_models::llama::LlamaConfig;
use ramole_mole::peft::AdapterConfig;
use ramole_mole::pool::LoadReport;
use ramole_mole::{AdapterPool, LoraAdapter, MoleError};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama")
}

fn base() -> LlamaConfig {
    LlamaConfig::from_hf_file(fixtures().join("base/config.json")).expect("base config")
}

/// A pool folder with copies of the fixture adapters `a0` and `a1`.
fn pool_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["a0", "a1"] {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).expect("mkdir");
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixtures().join("adapters").join(name).join(file), to.join(file)).expect("copy");
        }
    }
    dir
}

/// Loads the pool in `dir` on another thread; fails the test instead of hanging.
fn load_pool(dir: &Path) -> LoadReport {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut pool = AdapterPool::new(base());
        let _ = tx.send(pool.load_dir(&dir).expect("the pool folder is readable"));
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("loading the pool blocked or looped on a bad file")
}

/// `a1` failed with an error that names `file`, and `a0` loaded.
fn assert_only_a1_failed(report: &LoadReport, file: &Path, check: impl Fn(&MoleError) -> bool) {
    assert_eq!(report.loaded, vec!["a0".to_string()], "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let (sub, err) = &report.failed[0];
    assert!(sub.ends_with("a1"), "{sub:?}");
    assert!(err.to_string().contains(&file.display().to_string()), "`{err}` does not name {}", file.display());
    assert!(check(err), "unexpected error: {err:?}");
}

fn io_says(needle: &'static str) -> impl Fn(&MoleError) -> bool {
    move |e| match e {
        MoleError::Io { source, .. } | MoleError::Model(ModelError::Io { source, .. }) => {
            source.to_string().contains(needle)
        }
        _ => false,
    }
}

fn format_says(needle: &'static str) -> impl Fn(&MoleError) -> bool {
    move |e| matches!(e, MoleError::Model(ModelError::Format { message, .. }) if message.contains(needle))
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_an_adapter_file_is_refused_and_the_others_load() {
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let dir = pool_dir();
        let path = dir.path().join("a1").join(file);
        std::fs::remove_file(&path).expect("rm");
        if !std::process::Command::new("mkfifo").arg(&path).status().is_ok_and(|s| s.success()) {
            eprintln!("mkfifo unavailable: skipped");
            return;
        }
        assert_only_a1_failed(&load_pool(dir.path()), &path, io_says("FIFO"));
    }
}

#[cfg(unix)]
#[test]
fn a_link_to_dev_zero_in_place_of_an_adapter_file_is_refused_and_the_others_load() {
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let dir = pool_dir();
        let path = dir.path().join("a1").join(file);
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink("/dev/zero", &path).expect("symlink");
        assert_only_a1_failed(&load_pool(dir.path()), &path, io_says("character device"));
    }
}

#[test]
fn an_adapter_with_a_huge_declared_header_is_refused() {
    let dir = pool_dir();
    let path = dir.path().join("a1/adapter_model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read");
    for (n, needle) in [(u64::MAX, "over the"), (bytes.len() as u64, "runs past the end")] {
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        assert_only_a1_failed(&load_pool(dir.path()), &path, format_says(needle));
    }
}

#[test]
fn an_adapter_with_truncated_data_is_refused() {
    let dir = pool_dir();
    let path = dir.path().join("a1/adapter_model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("write");
    assert_only_a1_failed(&load_pool(dir.path()), &path, format_says("truncated"));
    std::fs::write(&path, &bytes[..20]).expect("write");
    assert_only_a1_failed(&load_pool(dir.path()), &path, format_says("safetensors"));
}

#[test]
fn an_adapter_with_absurd_dims_is_refused() {
    // A rank far beyond any model.
    let dir = pool_dir();
    let path = dir.path().join("a1/adapter_config.json");
    let text = std::fs::read_to_string(&path).expect("read");
    for r in ["1000000000000", "18446744073709551615", "-4", "4.5"] {
        std::fs::write(&path, text.replace("\"r\": 4", &format!("\"r\": {r}"))).expect("write");
        assert_only_a1_failed(
            &load_pool(dir.path()),
            &path,
            |e| matches!(e, MoleError::Config { message, .. } if message.contains("`r`")),
        );
    }
    // A tensor whose declared shape overflows or does not fit the base model.
    let dir = pool_dir();
    let path = dir.path().join("a1/adapter_model.safetensors");
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let header = format!(r#"{{"{key}":{{"dtype":"F32","shape":[4294967296,4294967296,1024],"data_offsets":[0,16]}}}}"#);
    let mut h = header.into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    std::fs::write(&path, [&(h.len() as u64).to_le_bytes()[..], &h, &[0u8; 16]].concat()).expect("write");
    assert_only_a1_failed(&load_pool(dir.path()), &path, format_says("overflows"));
    let views = [(key.to_string(), [7f32; 12].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())];
    let st: Vec<(String, safetensors::tensor::TensorView<'_>)> = views
        .iter()
        .map(|(k, b)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4], b).expect("view"))
        })
        .collect();
    safetensors::serialize_to_file(st, None, &path).expect("write");
    let err = LoraAdapter::load("a1", dir.path().join("a1"), &base()).expect_err("shape");
    assert!(
        matches!(&err, MoleError::Tensor { tensor, message, .. } if tensor == key && message.contains("[3, 4]")),
        "{err}"
    );
}

#[test]
fn adapter_config_that_is_not_an_object_or_too_big_is_a_config_error() {
    let p = Path::new("adapter_config.json");
    for text in ["[]", "4", "null", "{\"r\": 4}"] {
        let err = AdapterConfig::parse(text, p).expect_err(text);
        assert!(matches!(&err, MoleError::Config { path, .. } if path == p), "{text}: {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("adapter_config.json");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(64 << 20).expect("sparse file"); // 64 MiB of zeros, never read
    let err = AdapterConfig::from_file(&big).expect_err("too big");
    assert!(matches!(&err, MoleError::Io { source, .. } if source.to_string().contains("more than")), "{err}");
}

/// Issue 25, 3: an adapter that could only poison the answers that route through it is refused when it
/// loads (so at upload), naming the file: a scale far beyond any trained LoRA's, factors whose update would
/// overflow (max-f16 weights), and a `target_modules` that disagrees with the weights.
#[test]
fn adapters_with_absurd_scales_huge_updates_or_mismatched_targets_are_refused() {
    let good = LoraAdapter::load("a1", fixtures().join("adapters/a1"), &base()).expect("the fixture loads");
    let tmp = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, edit: &dyn Fn(&mut serde_json::Value), weight: f32| -> PathBuf {
        let dir = tmp.path().join(name);
        let mut config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("adapters/a1/adapter_config.json")).expect("read"),
        )
        .expect("json");
        edit(&mut config);
        let factors = good
            .targets()
            .map(|(layer, kind)| {
                let f = good.factors(layer, kind).expect("factors").clone();
                let scaled = |v: &[f32]| v.iter().map(|&x| if weight == 1.0 { x } else { weight }).collect();
                ((layer, kind), ramole_core::lora::LoraFactors { a: scaled(&f.a), b: scaled(&f.b), ..f })
            })
            .collect();
        let cfg = AdapterConfig::parse(&config.to_string(), &dir).expect("a config that parses");
        ramole_mole::peft::write_adapter(
            &dir,
            &cfg,
            "base",
            &factors,
            ramole_mole::peft::AdapterDtype::F32,
            &[],
            false,
        )
        .expect("write");
        // `write_adapter` writes its own config: put the edited one back.
        std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("write config");
        dir
    };
    // Scale: alpha 1e308 is refused when the config is read.
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("adapters/a1/adapter_config.json")).expect("read"),
    )
    .expect("json");
    config["lora_alpha"] = serde_json::json!(1e308);
    let err = AdapterConfig::parse(&config.to_string(), Path::new("x/adapter_config.json")).expect_err("1e308");
    assert!(matches!(&err, MoleError::Config { .. }) && err.to_string().contains("scale"), "{err}");

    // Max-f16 weights: every factor 65504, a finite tensor whose update would overflow.
    let huge = write("huge", &|_| {}, 65504.0);
    let err = LoraAdapter::load("huge", &huge, &base()).expect_err("huge update");
    assert!(matches!(&err, MoleError::Tensor { .. }) && err.to_string().contains("norm"), "{err}");
    assert!(err.to_string().contains("adapter_model.safetensors"), "{err}");

    // target_modules naming a module the weights do not adapt, or leaving one out.
    for targets in [serde_json::json!(["q_proj", "k_proj", "v_proj"]), serde_json::json!(["q_proj"])] {
        let t = targets.clone();
        let dir = write(
            &format!("t{}", targets.as_array().map_or(0, Vec::len)),
            &move |c| c["target_modules"] = t.clone(),
            1.0,
        );
        let err = LoraAdapter::load("t", &dir, &base()).expect_err("targets disagree");
        assert!(err.to_string().contains("target_modules") && err.to_string().contains("adapter_config.json"), "{err}");
    }
    // The same weights with the right list (and PEFT's longer module names) load.
    let right = write("right", &|c| c["target_modules"] = serde_json::json!(["self_attn.q_proj", "v_proj"]), 1.0);
    LoraAdapter::load("right", &right, &base()).expect("a consistent adapter loads");
}
